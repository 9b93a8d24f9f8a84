"""Known releases of every registered family, by model name and tag (as timm's pretrained configs).

``create_model("hiera_base_224", pretrained=True)`` (the first tag) or ``pretrained="mae"`` (or the
name ``"hiera_base_224.mae"``) finds the `Release` here and resolves its hub file through
`percli.models.hub` into the Hugging Face cache; ``percli download NAME[.TAG]`` fetches it ahead.

Each entry says where the official weights live on the Hugging Face hub (repo, file, revision), in
which layout (official, timm, open_clip, or Hugging Face ``transformers``), and whether percli's
family loader reads that layout. Where it does not (the ``transformers`` ports such as
``facebook/dinov2-small``), or where the release is not on the hub, `url` points at the official file
to download by hand and pass as ``model.checkpoint``.

`verified` says how the repo id and filename were checked (the timm or official source that names
them, or the repo's file listing); an empty `verified` marks an entry inferred from its family's
naming pattern and not checked: it may be wrong, and `percli download` then fails with the hub's
"not found".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    hub: str | None
    """Hugging Face repo id, or None when the release is not on the hub."""
    filename: str | None = None
    """File in the repo; None = the repo's default (see `percli.models.hub.DEFAULT_FILES`)."""
    revision: str | None = None
    layout: str = "official"
    """official | timm | open_clip | transformers."""
    loadable: bool = True
    """percli's family loader reads this file (`transformers` layouts: no)."""
    url: str | None = None
    """The official download, for releases not on the hub or not loadable."""
    verified: str = ""
    """How the repo id and file were checked; empty = inferred from the naming pattern, unverified."""
    note: str = ""

    @property
    def spec(self) -> str | None:
        """The ``hf-hub:`` spec of this release, or None when it is not on the hub."""
        if self.hub is None:
            return None
        return f"hf-hub:{self.hub}{'/' + self.filename if self.filename else ''}" \
               f"{'@' + self.revision if self.revision else ''}"


_TIMM_HIERA = "timm's hiera.py pretrained cfgs (hf_hub_id='timm/')"
_PE = "perception_models fetch_pe_checkpoint: hf://facebook/{name}:{name}.pt"
_VOICECRAFT = "file listing of huggingface.co/pyp1/VoiceCraft"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{arch}_pretrain.pth"

PRETRAINED: dict[str, dict[str, Release]] = {}


def _add(model: str, tag: str, release: Release) -> None:
    PRETRAINED.setdefault(model, {})[tag] = release


# --- Hiera (Ryali et al. 2023): timm's hub copies (timm layout; percli's loader converts them) ----------------
for _size in ("tiny", "small", "base", "base_plus", "large", "huge"):
    _add(f"hiera_{_size}_224", "mae_in1k_ft_in1k", Release(
        f"timm/hiera_{_size}_224.mae_in1k_ft_in1k", "model.safetensors", layout="timm",
        url=f"https://dl.fbaipublicfiles.com/hiera/hiera_{_size}_224.pth", verified=_TIMM_HIERA))
    _add(f"hiera_{_size}_224", "mae", Release(
        f"timm/hiera_{_size}_224.mae", "model.safetensors", layout="timm",
        url=f"https://dl.fbaipublicfiles.com/hiera/mae_hiera_{_size}_224.pth", verified=_TIMM_HIERA,
        note="MAE encoder without a head: the classifier head stays at init"))
    _add(f"mae_hiera_{_size}_224", "mae_in1k", Release(
        None, url=f"https://dl.fbaipublicfiles.com/hiera/mae_hiera_{_size}_224.pth",
        verified="timm's earlier hiera.py cfg urls",
        note="with its decoder only as the official .pth; timm's hub copy (hiera_*_224.mae) has no decoder"))
_add("hiera_base_224", "mae_in1k_ft_in1k.fb", Release(
    "facebook/hiera_base_224.mae_in1k_ft_in1k", "model.safetensors", layout="official",
    verified="file listing of huggingface.co/facebook/hiera_base_224.mae_in1k_ft_in1k (config.json + "
             "model.safetensors, PyTorchModelHubMixin)"))
for _size in ("base", "base_plus", "large", "huge"):
    _add(f"hiera_{_size}_16x224", "mae_k400_ft_k400", Release(
        None, url=f"https://dl.fbaipublicfiles.com/hiera/hiera_{_size}_16x224.pth"))
    _add(f"mae_hiera_{_size}_16x224", "mae_k400", Release(
        None, url=f"https://dl.fbaipublicfiles.com/hiera/mae_hiera_{_size}_16x224.pth"))

# --- DINOv2 (Oquab et al. 2023): timm's hub copies; facebook/dinov2-* are transformers ports ------------------
for _short, _timm, _hf in (("s", "small", "small"), ("b", "base", "base"), ("l", "large", "large"),
                           ("g", "giant", "giant")):
    for _reg in (False, True):
        _arch = f"dinov2_vit{_short}14{'_reg4' if _reg else ''}"
        _model = f"dinov2_vit{_short}14{'_reg' if _reg else ''}"
        _checked = {"s": "file listing of huggingface.co/timm/vit_small_patch14_dinov2.lvd142m",
                    "b": "huggingface.co/timm/vit_base_patch14_dinov2.lvd142m",
                    "l": "huggingface.co/timm/vit_large_patch14_dinov2.lvd142m"}
        _add(_model, "lvd142m", Release(
            f"timm/vit_{_timm}_patch14{'_reg4' if _reg else ''}_dinov2.lvd142m", "model.safetensors", layout="timm",
            url=_DINOV2_URL.format(arch=_arch),
            verified=(f"file listing of huggingface.co/timm/vit_{_timm}_patch14_reg4_dinov2.lvd142m"
                      if _reg and _short in "sl" else "" if _reg else _checked.get(_short, ""))))
        if not _reg:
            _add(_model, "lvd142m.hf", Release(
                f"facebook/dinov2-{_hf}", "model.safetensors", layout="transformers", loadable=False,
                url=_DINOV2_URL.format(arch=_arch), verified="transformers docs (AutoModel facebook/dinov2-*)",
                note="Hugging Face transformers names, which percli's loader does not read: use the lvd142m tag "
                     "(timm) or the official .pth url"))

# --- CLIP as trained by MetaCLIP (Xu et al. 2024): timm's hub copies of the open_clip files -------------------
for _model, _timm, _tags in (
        ("clip_vit_b32_quickgelu", "vit_base_patch32_clip_224", ("metaclip_400m", "metaclip_2pt5b")),
        ("clip_vit_b16_quickgelu", "vit_base_patch16_clip_224", ("metaclip_400m", "metaclip_2pt5b")),
        ("clip_vit_l14_quickgelu", "vit_large_patch14_clip_224", ("metaclip_400m", "metaclip_2pt5b")),
        ("clip_vit_h14_quickgelu", "vit_huge_patch14_clip_224", ("metaclip_2pt5b",)),
        ("clip_vit_bigg14_quickgelu", "vit_gigantic_patch14_clip_224", ("metaclip_2pt5b",))):
    for _tag in _tags:
        _repo = f"timm/{_timm}.{_tag}"
        _checked = {"timm/vit_base_patch16_clip_224.metaclip_400m": "file listing (open_clip_model.safetensors)",
                    "timm/vit_base_patch32_clip_224.metaclip_2pt5b": "repo listed on the hub; file by the timm "
                                                                      "CLIP layout",
                    "timm/vit_large_patch14_clip_224.metaclip_2pt5b": "timm's vision_transformer.py cfg "
                                                                       "(hf_hub_id='timm/')"}
        _add(_model, _tag, Release(_repo, "open_clip_model.safetensors", layout="open_clip",
                                   verified=_checked.get(_repo, "")))
_add("clip_vit_b32_quickgelu", "metaclip_400m.hf", Release(
    "facebook/metaclip-b32-400m", layout="transformers", loadable=False,
    url="https://github.com/facebookresearch/MetaCLIP (open_clip checkpoints listed in its README)",
    verified="MetaCLIP README (transformers AutoModel)",
    note="transformers names, not read by percli: use the metaclip_400m tag (open_clip layout)"))

# --- Perception Encoder (Bolya et al. 2025): the official .pt files on the hub --------------------------------
for _model, _name in (("pe_core_t16_384", "PE-Core-T16-384"), ("pe_core_s16_384", "PE-Core-S16-384"),
                      ("pe_core_b16_224", "PE-Core-B16-224"), ("pe_core_l14_336", "PE-Core-L14-336"),
                      ("pe_core_g14_448", "PE-Core-G14-448"), ("pe_lang_l14_448", "PE-Lang-L14-448"),
                      ("pe_lang_g14_448", "PE-Lang-G14-448"), ("pe_spatial_t16_512", "PE-Spatial-T16-512"),
                      ("pe_spatial_s16_512", "PE-Spatial-S16-512"), ("pe_spatial_b16_512", "PE-Spatial-B16-512"),
                      ("pe_spatial_l14_448", "PE-Spatial-L14-448"), ("pe_spatial_g14_448", "PE-Spatial-G14-448")):
    _add(_model, "fb", Release(f"facebook/{_name}", f"{_name}.pt", verified=_PE))

# --- VoiceCraft (Peng et al. 2024) and its Encodec ------------------------------------------------------------
_add("voicecraft_830m", "giga830m", Release("pyp1/VoiceCraft", "giga830M.pth", verified=_VOICECRAFT))
_add("voicecraft_830m", "tts_enhanced", Release(
    "pyp1/VoiceCraft_830M_TTSEnhanced", note="PyTorchModelHubMixin folder (config.json + model.safetensors)"))
_add("voicecraft_330m", "giga330m", Release("pyp1/VoiceCraft", "giga330M.pth", verified=_VOICECRAFT))
_add("encodec_16khz_4cb2048", "giga", Release("pyp1/VoiceCraft", "encodec_4cb2048_giga.th", verified=_VOICECRAFT))

# --- Audio-MAE (Huang et al. 2022): the official weights are on Google Drive; no hub port was found ------------
_AUDIOMAE = "https://github.com/facebookresearch/AudioMAE (Google Drive links in its README)"
_add("audiomae_mae_vit_base_patch16", "as2m", Release(None, url=_AUDIOMAE))
_add("audiomae_vit_base_patch16", "as2m_ft_as2m", Release(None, url=_AUDIOMAE))
_add("audiomae_vit_base_patch16", "as2m_ft_as20k", Release(None, url=_AUDIOMAE))


def release(model: str, tag: str | None = None) -> Release:
    """The release of `model` under `tag` (None: its first tag); KeyError names the known tags."""
    tags = PRETRAINED.get(model)
    if not tags:
        raise KeyError(f"{model} has no known release; train it or pass a weights file (model.checkpoint=...)")
    if tag is None:
        return next(iter(tags.values()))
    if tag not in tags:
        raise KeyError(f"{model} has no release tagged {tag!r}; known: {', '.join(tags)}")
    return tags[tag]


def split_name(name: str) -> tuple[str, str | None]:
    """``"hiera_base_224.mae"`` -> ``("hiera_base_224", "mae")``: timm's ``model.tag`` names (tags may hold dots)."""
    if name in PRETRAINED or "." not in name:
        return name, None
    model, tag = name.split(".", 1)
    return model, tag


def hub_filename(repo_id: str) -> str | None:
    """The file the table names for `repo_id` (the first entry holding it), or None."""
    for tags in PRETRAINED.values():
        for entry in tags.values():
            if entry.hub == repo_id and entry.filename:
                return entry.filename
    return None


def list_pretrained() -> list[str]:
    """Every ``model.tag`` with a known release, sorted."""
    return sorted(f"{model}.{tag}" for model, tags in PRETRAINED.items() for tag in tags)
