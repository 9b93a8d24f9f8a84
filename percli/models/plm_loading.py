"""PerceptionLM checkpoints: the perception_models consolidated layout and the Hugging Face ``perception_lm``
layout, and the converter between them (`percli.models.plm` holds the model).

* `official_to_hf_state` / `hf_to_official_state` rename every tensor (the Llama decoder, the projector, PE under
  timm's Eva names) and reorder the q/k rows between the release's interleaved RoPE and Hugging Face's halves;
  `hf_config` / `kwargs_from_hf_config` convert the configs.
* `load_official_state` (the family loader) takes a release folder (``params.json`` + ``consolidated*.pth``, read
  with ``weights_only``, or ``config.json`` + ``model*.safetensors``), a file or a state dict in either naming
  (`percli.models.plm.from_folder` builds the model a folder describes and fills it);
* `load_towers`: the release's stage-1 start from a Llama-3 checkpoint and a PE checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from percli.models.common import LoadReport, check_fit, read_state
from percli.models.plm_llama import BOS_ID, END_OF_TEXT_ID, EOT_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, ffn_hidden_dim

# --------------------------------------------------------------------------- Hugging Face layout

# (official name, Hugging Face `perception_lm` name); {i} is a layer / block index
_LM = "model.language_model."
_PE = "model.vision_tower.timm_model."
_NAME_PAIRS = [
    ("tok_embeddings.weight", _LM + "embed_tokens.weight"),
    ("norm.weight", _LM + "norm.weight"),
    ("output.weight", "lm_head.weight"),
    *[(f"layers.{{i}}.{a}.weight", f"{_LM}layers.{{i}}.{b}.weight") for a, b in (
        ("attention.wq", "self_attn.q_proj"), ("attention.wk", "self_attn.k_proj"),
        ("attention.wv", "self_attn.v_proj"), ("attention.wo", "self_attn.o_proj"),
        ("feed_forward.w1", "mlp.gate_proj"), ("feed_forward.w3", "mlp.up_proj"),
        ("feed_forward.w2", "mlp.down_proj"), ("attention_norm", "input_layernorm"),
        ("ffn_norm", "post_attention_layernorm"))],
    *[(f"vision_projector.projector.{a}.{p}", f"model.multi_modal_projector.linear_{b}.{p}")
      for a, b in ((0, 1), (2, 2)) for p in ("weight", "bias")],
    # timm's Eva names of PE (timm.models.eva._convert_pe)
    ("vision_model.class_embedding", _PE + "cls_token"),
    ("vision_model.positional_embedding", _PE + "pos_embed"),
    ("vision_model.conv1.weight", _PE + "patch_embed.proj.weight"),
    *[(f"vision_model.{a}.{p}", f"{_PE}{b}.{p}") for a, b in (("ln_pre", "norm_pre"), ("ln_post", "norm"))
      for p in ("weight", "bias")],
    *[(f"vision_model.transformer.resblocks.{{i}}.{a}", f"{_PE}blocks.{{i}}.{b}") for a, b in (
        ("ln_1.weight", "norm1.weight"), ("ln_1.bias", "norm1.bias"), ("ln_2.weight", "norm2.weight"),
        ("ln_2.bias", "norm2.bias"), ("attn.in_proj_weight", "attn.qkv.weight"), ("attn.in_proj_bias", "attn.qkv.bias"),
        ("attn.out_proj.weight", "attn.proj.weight"), ("attn.out_proj.bias", "attn.proj.bias"),
        ("ls_1.gamma", "gamma_1"), ("ls_2.gamma", "gamma_2"), ("mlp.c_fc.weight", "mlp.fc1.weight"),
        ("mlp.c_fc.bias", "mlp.fc1.bias"), ("mlp.c_proj.weight", "mlp.fc2.weight"),
        ("mlp.c_proj.bias", "mlp.fc2.bias"))],
]
# older transformers releases nested the language model the other way round
_LEGACY_HF_PREFIXES = (("language_model.model.", _LM), ("language_model.lm_head.", "lm_head."),
                       ("vision_tower.", "model.vision_tower."),
                       ("multi_modal_projector.", "model.multi_modal_projector."))
_HF_BUFFERS = re.compile(r"rotary_emb\.inv_freq$|timm_model\.rope\.")


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)"))


_TO_HF = [(_pattern(a), b) for a, b in _NAME_PAIRS]
_FROM_HF = [(_pattern(b), a) for a, b in _NAME_PAIRS]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        found = pattern.fullmatch(name)
        if found:
            return template.replace("{i}", found.group(1)) if found.groups() else template
    return None


def _rotary_permute(w: torch.Tensor, heads: int, to_hf: bool) -> torch.Tensor:
    """Reorder q/k projection rows between interleaved RoPE pairs (official) and rotate-half (Hugging Face).

    Official rows of a head are (pair p, component c) -> (c, p) for Hugging Face; ``to_hf=False`` undoes it.
    """
    rows, cols = w.shape
    half = rows // heads // 2
    if to_hf:
        return w.view(heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)
    return w.view(heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def is_hf_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the Hugging Face ``perception_lm`` names."""
    heads = ("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.", "lm_head.",
             "language_model.", "vision_tower.", "multi_modal_projector.")
    return any(k.startswith(heads) for k in state)


def official_to_hf_state(state: Mapping[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """Official names -> Hugging Face ``PerceptionLMForConditionalGeneration`` names (as its conversion script).

    q/k rows are permuted to rotate-half RoPE; the cls token and position embedding get timm's leading dims;
    a tied ``output.tied_module.weight`` is left out (the port ties ``lm_head`` itself). Unknown names raise.
    """
    out = {}
    for name, value in state.items():
        if name == "output.tied_module.weight":
            continue
        new = _rename(name, _TO_HF)
        if new is None:
            raise KeyError(f"no Hugging Face name for the official tensor {name!r}")
        if name.endswith(("attention.wq.weight", "attention.wk.weight")):
            value = _rotary_permute(value, n_heads if ".wq." in name else n_kv_heads, to_hf=True)
        elif name == "vision_model.class_embedding":
            value = value.view(1, 1, -1)
        elif name == "vision_model.positional_embedding":
            value = value.unsqueeze(0)
        out[new] = value
    return out


def hf_to_official_state(state: Mapping[str, torch.Tensor], n_heads: int, n_kv_heads: int,
                         weight_tying: bool | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hugging Face ``perception_lm`` names -> official names, and the names left out.

    Left out: RoPE buffers (``inv_freq``, timm's rope tables) and, with ``weight_tying``, a stored ``lm_head.weight``.
    Names without an official counterpart are kept as they are (a strict load then names them).
    """
    out, dropped = {}, []
    for name, value in state.items():
        for old, new in _LEGACY_HF_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        if _HF_BUFFERS.search(name) or (weight_tying and name == "lm_head.weight"):
            dropped.append(name)
            continue
        official = _rename(name, _FROM_HF)
        if official is None:
            out[name] = value
            continue
        if official.endswith(("attention.wq.weight", "attention.wk.weight")):
            value = _rotary_permute(value, n_heads if ".wq." in official else n_kv_heads, to_hf=False)
        elif official in ("vision_model.class_embedding", "vision_model.positional_embedding"):
            value = value.reshape(-1) if official.endswith("class_embedding") else value.reshape(value.shape[-2:])
        out[official] = value
    return out, dropped


# timm architectures of the port's vision tower (its conversion script picks one by size) and their geometry
_TIMM_PE = {"vit_pe_core_large_patch14_336": dict(patch_size=14, num_heads=16, mlp_ratio=4.0, class_token=True),
            "vit_pe_core_gigantic_patch14_448": dict(patch_size=14, num_heads=16, mlp_ratio=8960 / 1536,
                                                     class_token=False)}


def hf_config(kwargs: Mapping[str, Any], image_token_id: int = IMAGE_TOKEN_ID, video_token_id: int = VIDEO_TOKEN_ID,
              bos_token_id: int = BOS_ID, eos_token_id: Sequence[int] = (END_OF_TEXT_ID, EOT_ID)) -> dict[str, Any]:
    """The Hugging Face ``config.json`` of a model built with the official keywords ``kwargs`` (as the port's
    conversion script writes it: Llama text config, timm PE vision config; token ids of the Llama-3 tokenizer)."""
    dim, vision = kwargs["dim"], dict(kwargs["vision_model"])
    n_heads = kwargs.get("n_heads") or dim // kwargs["head_dim"]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(kwargs.get("rope_theta", 10000.0))}
    if kwargs.get("rope_scale_factor", 1) != 1:
        rope.update(rope_type="llama3", factor=float(kwargs["rope_scale_factor"]),
                    low_freq_factor=float(kwargs.get("low_freq_factor", 1)),
                    high_freq_factor=float(kwargs.get("high_freq_factor", 32)),
                    original_max_position_embeddings=int(kwargs.get("old_context_len", 8192)))
    tied = bool(kwargs.get("weight_tying", False))
    text = {"model_type": "llama", "hidden_size": dim, "num_hidden_layers": kwargs["n_layers"],
            "num_attention_heads": n_heads, "num_key_value_heads": kwargs.get("n_kv_heads") or n_heads,
            "head_dim": kwargs.get("head_dim") or dim // n_heads, "vocab_size": kwargs["vocab_size"],
            "intermediate_size": ffn_hidden_dim(dim, kwargs.get("multiple_of", 256), kwargs.get("ffn_dim_multiplier")),
            "rms_norm_eps": kwargs.get("norm_eps", 1e-5), "max_position_embeddings": kwargs.get("max_seqlen", 1024),
            "rope_theta": rope["rope_theta"], "rope_parameters": rope, "tie_word_embeddings": tied,
            "bos_token_id": bos_token_id, "eos_token_id": list(eos_token_id)}
    cls = bool(vision.get("use_cls_token", False))
    grid = vision["image_size"] // vision["patch_size"]
    model_args = {"embed_dim": vision["width"], "depth": vision["layers"], "num_heads": vision["heads"],
                  "patch_size": vision["patch_size"], "mlp_ratio": vision.get("mlp_ratio", 4.0), "class_token": cls,
                  "img_size": [vision["image_size"]] * 2, "global_pool": "",
                  "use_post_transformer_norm": bool(vision.get("use_ln_post", True)),
                  "init_values": vision.get("ls_init_value"), "ref_feat_shape": [grid, grid]}
    architecture = "vit_pe_core_large_patch14_336" if cls else "vit_pe_core_gigantic_patch14_448"
    return {"model_type": "perception_lm", "architectures": ["PerceptionLMForConditionalGeneration"],
            "text_config": text, "vision_config": {"model_type": "timm_wrapper", "architecture": architecture,
                                                   "model_args": model_args},
            "projector_pooling_ratio": kwargs.get("pooling_ratio", 1), "vision_use_cls_token": cls,
            "image_token_id": image_token_id, "video_token_id": video_token_id, "tie_word_embeddings": tied}


def kwargs_from_hf_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Official keywords of the model a Hugging Face ``perception_lm`` ``config.json`` describes.

    The SwiGLU width is kept exactly by taking ``multiple_of`` = intermediate_size (with no multiplier), which
    the width rule maps back to it whenever intermediate_size >= 8 * dim / 3 (every Llama-3).
    """
    text, vision = config["text_config"], config["vision_config"]
    dim, hidden = text["hidden_size"], text["intermediate_size"]
    if int(8 * dim / 3) > hidden:
        raise ValueError(f"intermediate_size {hidden} < 8/3 * hidden_size {dim}: not a Llama-3 width percli maps")
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    kwargs: dict[str, Any] = {
        "dim": dim, "n_layers": text["num_hidden_layers"], "n_heads": text["num_attention_heads"],
        "n_kv_heads": text.get("num_key_value_heads") or text["num_attention_heads"],
        "vocab_size": text["vocab_size"], "multiple_of": hidden, "ffn_dim_multiplier": None,
        "norm_eps": text.get("rms_norm_eps", 1e-5), "rope_theta": float(rope.get("rope_theta") or text.get(
            "rope_theta", 10000.0)), "max_seqlen": text.get("max_position_embeddings", 1024),
        "weight_tying": bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        "pooling_ratio": config.get("projector_pooling_ratio", 1)}
    if text.get("head_dim") and text["head_dim"] != dim // text["num_attention_heads"]:
        kwargs["head_dim"] = text["head_dim"]
    if rope.get("rope_type", rope.get("type")) == "llama3":
        kwargs.update(rope_scale_factor=rope["factor"], low_freq_factor=rope.get("low_freq_factor", 1),
                      high_freq_factor=rope.get("high_freq_factor", 4),
                      old_context_len=rope.get("original_max_position_embeddings", 8192))
    args = {**_TIMM_PE.get(vision.get("architecture"), {}), **vision.get("model_args", {})}
    size = args["img_size"]
    kwargs["vision_model"] = {
        "image_size": size[0] if isinstance(size, list | tuple) else size, "patch_size": args["patch_size"],
        "width": args["embed_dim"], "layers": args["depth"], "heads": args["num_heads"],
        "mlp_ratio": args.get("mlp_ratio", 4.0), "use_cls_token": bool(config.get("vision_use_cls_token", True)),
        "use_abs_posemb": True, "ls_init_value": args.get("init_values"),
        "use_ln_post": bool(args.get("use_post_transformer_norm", False)), "pool_type": "none"}
    return kwargs


# --------------------------------------------------------------------------- checkpoints


def kwargs_from_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Model keywords of a release ``params.json`` (its ``model`` section), keeping those this class takes.

    The release's other ``LMTransformerArgs`` (seed, attention kernel, init scaling, sliding window that SDPA
    ignores) do not change the forward and are left out, as ``dataclass_from_dict(strict=False)`` does.
    """
    model = dict(params.get("model", params))
    known = {"dim", "n_layers", "head_dim", "n_heads", "n_kv_heads", "ffn_dim_multiplier", "multiple_of", "norm_eps",
             "rope_theta", "old_context_len", "rope_scale_factor", "low_freq_factor", "high_freq_factor", "max_seqlen",
             "vocab_size", "weight_tying", "vision_model", "pooling_ratio", "freeze_language_model",
             "freeze_vision_model", "mlp_init"}
    return {k: v for k, v in model.items() if k in known}


def _folder_layout(folder: Path) -> str:
    if (folder / "params.json").is_file():
        return "consolidated"
    if (folder / "config.json").is_file():
        return "huggingface"
    raise ValueError(f"{folder} is neither a perception_models consolidated folder (params.json + consolidated.pth) "
                     "nor a Hugging Face perception_lm folder (config.json + model*.safetensors)")


def _read_folder_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a release folder: consolidated*.pth / *.safetensors (consolidated) or model*.safetensors."""
    if _folder_layout(folder) == "consolidated":
        files = sorted(folder.glob("consolidated*.pth")) or sorted(folder.glob("consolidated*.safetensors"))
    else:
        files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no weights (consolidated*.pth, consolidated*.safetensors or "
                                "model*.safetensors)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_state(file))
    return state


def read_folder_kwargs(folder: str | Path) -> dict[str, Any]:
    """The official keywords a release folder's params.json or config.json describes."""
    folder = Path(folder)
    config_file = folder / ("params.json" if _folder_layout(folder) == "consolidated" else "config.json")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    return kwargs_from_params(config) if config_file.name == "params.json" else kwargs_from_hf_config(config)


def load_official_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load released PLM weights: a release folder (either layout), a consolidated ``.pth`` (``weights_only``), a
    ``.safetensors`` file, or a state dict, with official or Hugging Face names.

    Consolidated checkpoints omit the tied ``output.tied_module.weight`` (it is ``tok_embeddings.weight``); anything
    else that does not fit raises, naming the keys.
    """
    if isinstance(state_or_path, str | Path) and Path(state_or_path).is_dir():
        state = _read_folder_state(Path(state_or_path))
    else:
        state = read_state(state_or_path)
    report = LoadReport()
    if is_hf_state(state):
        state, report.dropped = hf_to_official_state(state, model.n_heads, model.n_kv_heads, model.weight_tying)
        report.source_format = "huggingface"
    tied = ("output.tied_module.",) if model.weight_tying else ()
    check_fit(model, state, model.arch, tolerated=tied, hint="build the PLM size the checkpoint was trained as "
              "(from_folder reads it from params.json / config.json)")
    model.load_state_dict(state, strict=not tied)
    return report


def _consolidated_state(path: Path) -> dict[str, torch.Tensor]:
    """A Llama ``original/`` folder (params.json + consolidated.pth or consolidated.NN.pth parts), or one file."""
    return _read_folder_state(path) if path.is_dir() else read_state(path)


def load_towers(model: nn.Module, language_model: str | Path | None = None,
                vision_model: str | Path | None = None) -> LoadReport:
    """The release's stage-1 start: the decoder from a Llama-3 consolidated checkpoint (``init_ckpt_path``, e.g.
    ``Llama-3.2-1B-Instruct/original``: the same names as PLM's decoder) and PE from its checkpoint
    (``vision_model_path``: ``visual.*`` / ``module.*`` prefixes removed, as PE's ``load_ckpt`` does).

    Every decoder tensor must be in the Llama file (the tied output may be absent). PE keys the truncated tower does
    not have (its last blocks, ``ln_post``, ``proj``, the attention pool) are reported as dropped; a PE key of the
    tower that the file lacks, or a shape that differs, raises naming it.
    """
    report = LoadReport()
    own = model.state_dict()
    if language_model is not None:
        state = {k: v for k, v in _consolidated_state(Path(language_model)).items()
                 if not k.startswith(("vision_model.", "vision_projector."))}
        wanted = [k for k in own if not k.startswith(("vision_model.", "vision_projector.", "output.tied_module."))
                  and "rope" not in k]
        missing = [k for k in wanted if k not in state]
        wrong = [f"{k} {list(state[k].shape)} != {list(own[k].shape)}" for k in wanted if k in state
                 and state[k].shape != own[k].shape]
        if missing or wrong:
            raise RuntimeError(f"{language_model} does not fit the decoder: missing {missing[:6]}, wrong shape "
                               f"{wrong[:4]}; build the PLM size whose decoder it is (plm_1b: Llama-3.2-1B)")
        model.load_state_dict({k: state[k] for k in wanted}, strict=False)
        report.dropped += sorted(set(state) - set(wanted))
    if vision_model is not None:
        if model.vision_model is None:
            raise RuntimeError("this PerceptionLM has no vision_model to load a PE checkpoint into")
        raw = read_state(vision_model)
        raw = {k.replace("module.", ""): v for k, v in raw.items()}
        if any(k.startswith("visual.") for k in raw):
            raw = {k.removeprefix("visual."): v for k, v in raw.items() if k.startswith("visual.")}
        tower = model.vision_model.state_dict()
        missing = [k for k in tower if k not in raw]
        wrong = [f"{k} {list(raw[k].shape)} != {list(tower[k].shape)}" for k in tower if k in raw
                 and raw[k].shape != tower[k].shape]
        if missing or wrong:
            raise RuntimeError(f"{vision_model} does not fit the vision tower: missing {missing[:6]}, wrong shape "
                               f"{wrong[:4]} (PLM-1B/3B use PE-Core-L14-336 interpolated to 448 px, PLM-8B "
                               "PE-Core-G14-448)")
        model.vision_model.load_state_dict({k: raw[k] for k in tower})
        report.dropped += sorted(f"vision_model.{k}" for k in set(raw) - set(tower))
    return report
