"""Golden parity with the official implementations, driven by the case folders on disk.

Every folder under ``$PERCLI_GOLDEN_DIR`` (default ``<repo>/../shared/golden``) holding a
``config.json`` is one case: the official model's state, inputs and outputs (see the README
there). A case runs through the runner registered for its official file and class in `RUNNERS`;
a family percli does not implement yet is skipped with its name. Adding a family = writing one
runner that builds the percli model, replays the case's "calls" and returns every output by name.

Runners replay what the case records, not a fixed copy of the public cases: a `CallBook`
(tests/golden_replay.py, whose docstring is the convention) parses every recorded call with `ast` and calls
the percli method with the recorded positional and keyword arguments (a structured record -- function, positional
inputs, kwargs, seed -- is called as recorded after the official seeding); an entry it cannot replay is
implemented by hand only if pinned to the verbatim text it implements, and anything else fails, naming the
case, the entry and the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import GOLDEN_DIR
from tests.golden_mmpt import MMPT_RUNNERS
from tests.golden_plm import PLM_RUNNERS
from tests.golden_replay import CallBook, GoldenReplayError, extract_calls, output_names
from tests.golden_speech import SPEECH_RUNNERS


@dataclass(frozen=True)
class Case:
    """One golden case folder."""

    name: str
    path: Path
    config: dict

    def inputs(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "inputs.safetensors"))

    def state(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / "state.safetensors"))


def discover_cases(root: Path) -> list[Case]:
    """Case folders under `root` (skipping `full_configs` and folders without config.json)."""
    if not root.is_dir():
        return []
    cases = []
    for folder in sorted(root.iterdir()):
        config_file = folder / "config.json"
        if folder.name == "full_configs" or not config_file.is_file():
            continue
        cases.append(Case(folder.name, folder, json.loads(config_file.read_text())))
    return cases


# --------------------------------------------------------------------------- runners
#
# A runner builds the percli model from config.json and hands the case's recorded `calls` to a `CallBook`
# (tests/golden_replay.py), which replays every recorded call with the arguments it records and names the
# outputs from the entry keys. What a runner adds by hand is listed in it: the saved RNG draws that replace the
# official draws (`extra`), names the case's prose uses (`names`), official -> percli method names (`aliases`),
# and entries that record no replayable call, pinned to the verbatim fragments of their text they implement.

Runner = Callable[[Case], dict[str, torch.Tensor]]


def _build_strict(cls: type[torch.nn.Module], case: Case) -> torch.nn.Module:
    model = cls(**case.config["constructor_kwargs"])
    # strict: every official tensor must be consumed and every percli tensor provided
    model.load_state_dict(case.state(), strict=True)
    return model.eval()


def _book(case: Case, model: torch.nn.Module, inputs: dict[str, torch.Tensor] | None = None, **kwargs) -> CallBook:
    return CallBook(case.name, case.config, case.inputs() if inputs is None else inputs, model, **kwargs)


@torch.no_grad()
def run_hiera(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.hiera import Hiera

    # every entry is "model.eval()/train(); model(x, ...)" with literal arguments and the saved `mask`; the
    # official head applies a softmax in eval mode, percli's returns logits unless asked for probabilities
    eval_mode = {key: {"model": {"return_probs": True}} for key, text in case.config["calls"].items()
                 if isinstance(text, str) and "model.eval()" in text}
    return _book(case, _build_strict(Hiera, case)).replay_all(extra=eval_mode)


@torch.no_grad()
def run_hiera_mae(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.hiera import MaskedAutoencoderHiera

    # `mask_ratio` is config.json's number; the mask drawn by the official get_random_mask is the input `mask`
    return _book(case, _build_strict(MaskedAutoencoderHiera, case)).replay_all()


def _audiomae_kwargs(case: Case) -> dict:
    kwargs = dict(case.config["constructor_kwargs"])
    # the cases record the official norm factory as text; percli's default is that same LayerNorm
    norm = kwargs.pop("norm_layer", "")
    assert "LayerNorm" in norm and "eps=1e-6" in norm, f"unexpected official norm_layer {norm!r}"
    return kwargs


@torch.no_grad()
def run_audiomae_mae(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.audio_mae import AudioMaskedAutoencoderViT

    model = AudioMaskedAutoencoderViT(**_audiomae_kwargs(case))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    book = _book(case, model, inputs)
    x = inputs["x"]

    def forward(_: dict) -> dict[str, torch.Tensor]:
        # the recorded statements (enc, mask, ids_restore, _ = model.forward_encoder(...); pred, _, _ = ...;
        # loss = ...), with the saved draw of torch.rand inside random_masking instead of torch.manual_seed
        env = book.execute("forward", extra={"model.forward_encoder": {"noise": inputs["noise"]}}).env
        return {"encoder_out": env["enc"], "mask": env["mask"], "ids_restore": env["ids_restore"],
                "pred": env["pred"], "loss": env["loss"]}

    def mask2d(_: dict) -> dict[str, torch.Tensor]:
        latent, mask, ids_restore = model.forward_encoder(x, case.config["mask_ratio"], mask_2d=True,
                                                          noise_t=inputs["mask2d_noise_t"],
                                                          noise_f=inputs["mask2d_noise_f"])
        pred = model.forward_decoder(latent, ids_restore)
        loss = model.forward_loss(x, pred, mask, norm_pix_loss=model.norm_pix_loss)
        return {"mask2d_encoder_out": latent, "mask2d_mask": mask, "mask2d_ids_restore": ids_restore,
                "mask2d_pred": pred, "mask2d_loss": loss}

    return book.replay_all(
        custom={"forward": ((), forward),
                "mask2d_*": (("forward_encoder(x, mask_ratio, mask_2d=True) using model.mask_t_prob/mask_f_prob",
                              "mask2d_noise_t = torch.rand(N, 64) then mask2d_noise_f = torch.rand(N, 8)",
                              "then decoder and loss as above"), mask2d)},
        pins={"noise": ("inputs['noise'] is the exact torch.rand(N, L) drawn inside random_masking",)})


@torch.no_grad()
def run_audiomae_vit(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.audio_mae import AudioViT

    model = AudioViT(**_audiomae_kwargs(case))  # 1024x128, 1 channel: the fine-tune patch embed
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    # masked_logits: "model(x, mask_t_prob, mask_f_prob)" with the saved draws of the official masking
    draws = {"noise_t": inputs["masked_noise_t"], "noise_f": inputs["masked_noise_f"]}
    return _book(case, model, inputs).replay_all(extra={"masked_logits": {"model": draws}})


def _pe_grids(visual: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """The patch grids the PE cases' prose names: gh, gw of `x` and gh2, gw2 of `x_res2`."""
    p = visual.patch_size
    (H, W), (H2, W2) = inputs["x"].shape[2:], inputs["x_res2"].shape[2:]
    return {"gh": H // p, "gw": W // p, "gh2": H2 // p, "gw2": W2 // p}


def _pe_vision_custom(book: CallBook, visual: torch.nn.Module, inputs: dict[str, torch.Tensor], res2_key: str,
                      res2_forward: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict:
    """Entries both PE cases record in prose: the RoPE table and the second-resolution path."""
    g = _pe_grids(visual, inputs)

    def res2(_: dict) -> dict[str, torch.Tensor]:
        # "same at x_res2 ... = <receiver>._sample_abs_posemb(gh2, gw2)": the recorded call is replayed
        (abs_posemb,) = book.execute(res2_key).values
        out = {f"res2_{name}": value for name, value in res2_forward(inputs["x_res2"]).items()}
        return {**out, "res2_rope_freq": visual.rope_angles(g["gh2"], g["gw2"]), "res2_abs_posemb": abs_posemb}

    def rope(_: dict) -> dict[str, torch.Tensor]:
        return {"rope_freq": visual.rope_angles(g["gh"], g["gw"])}

    return {"rope_freq": (("rope.freq after running x",), rope), res2_key: (("same at x_res2",), res2)}


@torch.no_grad()
def run_pe_clip(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.pe import PECLIP

    kwargs = dict(case.config["constructor_kwargs"])
    scale = kwargs.pop("init_logit_scale", None)  # the state holds the value; only a recorded default is ignored
    assert scale is None or "(default)" in str(scale), f"unexpected init_logit_scale {scale!r}"
    model = PECLIP(kwargs.pop("vision_cfg"), kwargs.pop("text_cfg"), **kwargs)
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs, visual = case.inputs(), model.visual
    book = _book(case, model, inputs, names=_pe_grids(visual, inputs),
                 aliases={"_pool": "pool", "_sample_abs_posemb": "sample_abs_posemb"})
    x, text = inputs["x"], inputs["text"]

    def encode_image(_: dict) -> dict[str, torch.Tensor]:
        # "model.encode_image(x) = model.visual(x)": both replayed, the record says they are one value
        first, second = book.execute("encode_image").values
        torch.testing.assert_close(second, first, atol=0, rtol=0)
        return {"encode_image": first}

    res2_key = "res2_encode_image / res2_ff_norm / res2_rope_freq / res2_abs_posemb"
    custom = _pe_vision_custom(book, visual, inputs, res2_key,
                               lambda x2: {"encode_image": model.encode_image(x2),
                                           "ff_norm": visual.forward_features(x2, norm=True)})
    custom.update({
        "logits_per_image": (("logit_scale.exp() * image_features @ text_features.T",),
                             lambda out: {"logits_per_image": out["logit_scale"] * out["image_features"]
                                          @ out["text_features"].T}),
        "encode_image": ((), encode_image),
        "ff_norm / ff_prenorm": (("model.visual.forward_features(x, norm=True / False)",),
                                 lambda _: {"ff_norm": visual.forward_features(x, norm=True),
                                            "ff_prenorm": visual.forward_features(x, norm=False)}),
        "text_tokens_ln_final": (("model.output_tokens = True; TextTransformer.forward(model, text)[1]",),
                                 lambda _: {"text_tokens_ln_final": model.text_tokens(text)}),
    })
    return book.replay_all(custom=custom, loops={"layer_i": {"i": range(len(visual.transformer.resblocks))}})


@torch.no_grad()
def run_pe_vision(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.pe import PEVisionTransformer

    model = _build_strict(PEVisionTransformer, case)
    inputs = case.inputs()
    book = _book(case, model, inputs, receivers=("v",), names=_pe_grids(model, inputs),
                 aliases={"_sample_abs_posemb": "sample_abs_posemb"})
    custom = _pe_vision_custom(book, model, inputs, "res2_forward / res2_rope_freq / res2_abs_posemb",
                               lambda x2: {"forward": model(x2)})
    return book.replay_all(custom=custom, loops={"layer_i": {"i": range(len(model.transformer.resblocks))}})


@torch.no_grad()
def run_openclip(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.clip import CLIP

    model = _build_strict(CLIP, case)
    image, text = case.inputs()["image"], case.inputs()["text"]
    fields = {"image_intermediate_i": "image_intermediates", "text_intermediate_i": "text_intermediates",
              "image_intermediate_prefix_i": "image_intermediates_prefix", "fi_image_logits": "image_logits"}

    def last_normalized(_: dict) -> dict[str, torch.Tensor]:
        # recorded with its inputs elided ("...") and one `indices=[last]` for both towers
        last = model.forward_intermediates(image, text, image_indices=[-1], text_indices=[-1],
                                           normalize_intermediates=True, intermediates_only=True,
                                           image_output_fmt="NLC", image_output_extra_tokens=True)
        return {"image_patch_tokens_ln_post": last["image_intermediates"][0],
                "image_cls_token_ln_post": last["image_intermediates_prefix"][0],
                "text_tokens_ln_final": last["text_intermediates"][0]}

    return _book(case, model).replay_all(
        fields={"image_intermediate_i / image_intermediate_prefix_i / text_intermediate_i / fi_image_logits": fields},
        custom={"image_patch_tokens_ln_post / image_cls_token_ln_post / text_tokens_ln_final": (
            ("model.forward_intermediates(..., indices=[last], normalize_intermediates=True, intermediates_only=True, "
             "image_output_fmt='NLC', image_output_extra_tokens=True)",), last_normalized)})


@torch.no_grad()
def run_dinov2(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.dinov2 import DinoVisionTransformer

    kwargs = dict(case.config["constructor_kwargs"])
    # the official block/attention classes are recorded as text, and block_chunks only groups blocks for FSDP:
    # percli's one block type is the SDPA path those name (XFORMERS_DISABLED), and 0 keeps the flat names
    assert "NestedTensorBlock" in kwargs.pop("block_fn") and kwargs.pop("block_chunks") == 0
    model = DinoVisionTransformer(**kwargs)
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    # the names of "model.interpolate_pos_encoding(zeros(1, 1+h2*w2, C), H2, W2)": x_res2's size and grid
    H2, W2 = inputs["x_res2"].shape[2:]
    names = {"H2": H2, "W2": W2, "h2": H2 // model.patch_size, "w2": W2 // model.patch_size, "C": model.embed_dim}
    return _book(case, model, inputs, names=names, functions={"zeros": torch.zeros}).replay_all()


class _AVSuperbCalls:
    """MAViL's official calling convention around the percli model: ``model(source)`` takes AV-SUPERB's list of
    (audio, video) pairs and returns two tensors ((logits, logits.detach()) with fusion); the other methods are the
    percli model's."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, source: list, mask_t_prob: float = 0.0, mask_f_prob: float = 0.0, mask_v_prob: float = 0.0,
                 **noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, v = (torch.stack(items) for items in zip(*source))
        out = self.model(x, v, mask_t_prob, mask_f_prob, mask_v_prob, **noise)
        return out if isinstance(out, tuple) else (out, out.detach())

    def __getattr__(self, name: str):
        return getattr(self.model, name)


@torch.no_grad()
def run_mavil(case: Case) -> dict[str, torch.Tensor]:
    import re

    from percli.models.mavil import VisionTransformerMM, mask_keep_ids

    # the expert replaces the audio patch embedding for the fbank size it names (1024 x 128 there)
    built = re.search(r"PatchEmbed_new\(img_size=\((\d+), (\d+)\)", case.config["post_construction"])
    assert built, "post_construction no longer names the audio patch embedding's img_size"
    model = VisionTransformerMM(img_size=(int(built[1]), int(built[2])), **_audiomae_kwargs(case))
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    inputs = case.inputs()
    x, v, cfg = inputs["x"], inputs["v"], case.config
    source = [(x[i], v[i]) for i in range(x.shape[0])]
    clip = v[:, :, :model.n_frm]
    noise = {k: inputs[k] for k in ("mask_noise_t", "mask_noise_f", "mask_noise_v") if k in inputs}
    book = _book(case, _AVSuperbCalls(model), inputs, names={"source": source})

    def expert(_: dict) -> dict[str, torch.Tensor]:
        lists = model.avsuperb_features(x, v, fc_norm_last=True)
        return {f"{key}_{i}": t for key, values in lists.items() for i, t in enumerate(values)}

    def masked_ids(_: dict) -> dict[str, torch.Tensor]:
        rates = {"t": cfg["mask_t_prob"], "f": cfg["mask_f_prob"], "v": cfg["mask_v_prob"]}
        return {f"mask_ids_keep_{s}": mask_keep_ids(noise[f"mask_noise_{s}"], p) for s, p in rates.items()}

    masks = (cfg.get("mask_t_prob"), cfg.get("mask_f_prob"), cfg.get("mask_v_prob"))
    custom = {
        "expert_lists": (("ex.ft = True", "d = ex([(x[i], v[i]) for i in range(B)])", "<key>_<i> = d[<key>][i]"),
                         expert),
        "fusion_feats_3_ft_false": (("same expert call with ex.ft = False",), lambda _: {
            "fusion_feats_3_ft_false": model.avsuperb_features(x, v, fc_norm_last=False)["fusion_feats"][-1]}),
        "logits": (("logits, logits_detached = model([(x[i], v[i]) for i in range(B)])",),
                   lambda _: {"logits": book.model(source)[0]}),
        "features_av": (("model.forward_features_av(x, v[:, :, :n_frm]) -> (outcome_av, outcome_av)",),
                        lambda _: {"features_av": model.forward_features_av(x, clip)}),
        "masked_features_av": (("model.forward_features_av_mask(x, v[:, :, :n_frm], mt, mf, mv)[0] (same draws)",),
                               lambda _: {"masked_features_av": model.forward_features_av_mask(x, clip, *masks,
                                                                                               **noise)}),
        "mask_ids_keep_t/f/v": (("torch.argsort(noise, dim=1)[:, :len_keep]",), masked_ids),
        "features_av_a / features_av_v": (("fa, fv = model.forward_features_av(x, v[:, :, :n_frm])",), lambda _: dict(
            zip(("features_av_a", "features_av_v"), model.forward_features_av(x, clip)))),
        "logits_a / logits_v": (("model([(x[i], v[i]) for i in range(B)]) -> (head_a(fa), head_v(fv))",),
                                lambda _: dict(zip(("logits_a", "logits_v"), book.model(source)))),
    }
    return book.replay_all(
        custom={k: c for k, c in custom.items() if k in cfg["calls"]},
        pins={"not_available": ("the expert (UpstreamExpert.forward) needs av_fusion=True",
                                "masking needs the 1024x128 fbank")},
        extra={"masked_logits": {"model": noise}})


class _Hooks:
    """Forward-hook recorder: `with _Hooks({name: module}) as seen:` -> seen[name] = the module's (first) output."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.modules, self.seen, self.handles = modules, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        def hook(name: str):
            def record(_module, _args, output):
                self.seen[name] = output[0] if isinstance(output, tuple) else output
            return record
        self.handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]
        return self.seen

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _pe_audio_towers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The PE-AV case names of a model's towers: audio, visual, av (whichever it has)."""
    if hasattr(model, "audio_visual_model"):
        avm = model.audio_visual_model
        return {"audio": avm.audio_model, "visual": avm.visual_model, "av": avm}
    return {"audio": model.audio_model}


def _pe_tower_hooks(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.nn.Module]:
    """The modules the PE-AV cases hook: codec encoder, tower embeddings and layers, PE frame encoder, aligner."""
    modules = {}
    for name, encoder in _pe_audio_towers(model).items():
        tower = {"audio": lambda e: e.audio_transformer, "visual": lambda e: e.visual_transformer,
                 "av": lambda e: e.audio_visual_transformer}[name](encoder)
        modules[f"{prefix}{name}_embeddings_out"] = tower.embeddings
        modules.update({f"{prefix}{name}_layer_{i}": layer for i, layer in enumerate(tower.layers)})
    audio = _pe_audio_towers(model)["audio"]
    modules[f"{prefix}audio_dac_encoder_out"] = audio.dac_vae_encoder.encoder
    if hasattr(model, "audio_visual_model"):
        modules[f"{prefix}visual_pe_encoder_out"] = model.audio_visual_model.visual_model.pe_encoder
        modules[f"{prefix}av_aligned_video"] = model.audio_visual_model.audio_visual_transformer.modality_aligner
    return modules


def _pe_tower_outputs(out: dict, text: tuple | None) -> dict[str, torch.Tensor]:
    """Tower outputs of one percli PE-AV / PE-A-Frame forward under the cases' names."""
    found = {}
    for case_name, key in (("audio", "audio"), ("visual", "video"), ("av", "audio_visual")):
        tower = out.get(key)
        if tower is not None:
            found[f"{case_name}_last_hidden_state"] = tower.last_hidden_state
            found[f"{case_name}_pooler_output"] = tower.pooler_output
    if out.get("audio") is not None:
        found["audio_codec_features"] = out["audio"].features
        found["audio_feature_padding_mask"] = out["audio"].mask
    if out.get("video") is not None:
        found["visual_pe_features"] = out["video"].features
    if text is not None:
        found["text_nth_layer_hidden_state"], found["text_pooler_output"] = text
    return found


def _pe_rope(model: torch.nn.Module, outputs: dict) -> dict[str, torch.Tensor]:
    """"<tower>.rope_embeddings(seqlen=1+L)" for every tower, L = its recorded token count."""
    towers = {"audio": "audio_transformer", "visual": "visual_transformer", "av": "audio_visual_transformer"}
    found = {}
    for name, encoder in _pe_audio_towers(model).items():
        seqlen = 1 + outputs[f"{name}_last_hidden_state"].shape[1]
        found[f"{name}_rope_freqs_cis"] = getattr(encoder, towers[name]).rope_embeddings(seqlen)
    return found


_PE_AUDIO_PINS = {
    "audio_codec_features": ("dac_vae_features [B, La, codebook_dim]",),
    "audio_dac_encoder_out": ("forward hook on dac_vae_encoder.encoder (DacEncoder) output",),
    "audio_feature_padding_mask": ("padding_mask[:, ::hop_length]",),
    "{audio,visual,av}_embeddings_out": ("forward hook on <tower>.embeddings output[0]",),
    "{audio,visual,av}_layer_i": ("forward hook on <tower>.layers[i] (DecoderLayer) output",),
    "{audio,visual,av}_last_hidden_state / _pooler_output": ("[:,1:] / [:,0]",),
    "visual_pe_encoder_out": ("forward hook on visual_model.pe_encoder",),
    "visual_pe_features": ("F.normalize(pe_encoder_out).view(B,N,-1)",),
    "av_aligned_video": ("forward hook on audio_visual_transformer.modality_aligner output[0]",),
    "av_* (AV transformer)": ("attention mask = the AUDIO frame mask",),
    "text_pooler_output / text_nth_layer_hidden_state": ("hidden_states[nth_text_layer] and its [:,0] (CLS)",),
    "audio_*": ("as in peav_tiny_cfg",),
    "text_*": ("as in peav_tiny_cfg",),
}


def _pe_audio_book(case: Case, cls_name: str) -> tuple[torch.nn.Module, CallBook]:
    import copy

    from percli.models import pe_av

    kwargs = copy.deepcopy(case.config["constructor_kwargs"])
    if cls_name == "PEAudioVisual":
        # the case registers a tiny PE vision config under a new name; percli takes the config itself
        visual = kwargs["audio_visual_model"]["visual_model"]
        registered = case.config["registered_pe_encoder"]
        assert visual["pe_encoder"] == registered["name"], "the case builds a PE encoder it does not register"
        visual["pe_encoder"] = registered["vision_cfg"]
    model = getattr(pe_av, cls_name)(**kwargs)
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    return model, _book(case, model)


def _pe_text_states(book: CallBook, key: str) -> dict[str, torch.Tensor]:
    # "model.text_model(input_ids, attention_mask, output_hidden_states=True)": percli returns (last, states)
    last, states = book._single(key, book.execute(key))
    return {**{f"text_hidden_states_{i}": s for i, s in enumerate(states)}, "text_final_norm_last_hidden_state": last}


@torch.no_grad()
def run_pe_audio_visual(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.pe_av import EMBEDDINGS

    model, book = _pe_audio_book(case, "PEAudioVisual")
    first = next(iter(case.config["calls"]))  # "audio_embeds ... (8 keys)": `out = model(...)`

    def forward(_: dict) -> dict[str, torch.Tensor]:
        with _Hooks(_pe_tower_hooks(model)) as seen:
            out = book.execute(first).env["out"]
        return {**{k: out[k] for k in EMBEDDINGS}, **_pe_tower_outputs(out, out["text"]), **seen}

    def single(_: dict) -> dict[str, torch.Tensor]:
        hooks = {k: m for k, m in _pe_tower_hooks(model, "single_").items()
                 if k in ("single_audio_dac_encoder_out", "single_av_aligned_video")}
        with _Hooks(hooks) as seen:
            out = book._single("single_*", book.execute("single_*"))
        found = {f"single_{k}": out[k] for k in EMBEDDINGS}
        return {**found, **seen, "single_audio_codec_features": out["audio"].features,
                "single_av_pooler_output": out["audio_visual"].pooler_output}

    return book.replay_all(
        custom={first: ((), forward), "single_*": ((), single),
                "text_hidden_states_i / text_final_norm_last_hidden_state": (
                    (), lambda _: _pe_text_states(book, "text_hidden_states_i / text_final_norm_last_hidden_state")),
                "{audio,visual,av}_rope_freqs_cis": (("<tower>.rope_embeddings(seqlen=1+L)",),
                                                     lambda outputs: _pe_rope(model, outputs))},
        pins={k: v for k, v in _PE_AUDIO_PINS.items() if k in case.config["calls"]})


@torch.no_grad()
def run_pe_audio_frame(case: Case) -> dict[str, torch.Tensor]:
    model, book = _pe_audio_book(case, "PEAudioFrame")
    inputs = book.inputs
    text_args = (inputs["input_ids"], inputs["attention_mask"])

    def forward(_: dict) -> dict[str, torch.Tensor]:
        with _Hooks(_pe_tower_hooks(model)) as seen:
            out = book.execute("audio_embeds").env["out"]
        last, states = model.text_model(*text_args, output_hidden_states=True)  # "text_*: as in peav_tiny_cfg"
        texts = {**{f"text_hidden_states_{i}": s for i, s in enumerate(states)},
                 "text_final_norm_last_hidden_state": last}
        return {"audio_embeds": out["audio_embeds"], "text_embeds": out["text_embeds"], "frame_logits": out["logits"],
                "frame_probs": out["probs"], **_pe_tower_outputs(out, out["text"]), **seen, **texts}

    def spans(outputs: dict) -> dict[str, torch.Tensor]:
        threshold = case.config["threshold"]
        out = model(inputs["input_ids"], input_values=inputs["input_values"], attention_mask=inputs["attention_mask"],
                    padding_mask=inputs["padding_mask"], threshold=threshold, return_spans=True)
        rows = [[b, start, end] for b, found in enumerate(out["spans"]) for start, end in found]
        return {"spans": torch.tensor(rows, dtype=torch.float32).reshape(-1, 3),
                "frame_preds": outputs["frame_probs"] > threshold}

    def from_features(outputs: dict) -> dict[str, torch.Tensor]:
        out = model(inputs["input_ids"], input_values=None, input_features=outputs["audio_codec_features"],
                    attention_mask=inputs["attention_mask"], padding_mask=inputs["feature_padding_mask"])
        return {"audio_embeds_from_input_features": out["audio_embeds"]}

    def single(_: dict) -> dict[str, torch.Tensor]:
        out = book._single("single_*", book.execute("single_*"))
        return {"single_audio_embeds": out["audio_embeds"], "single_text_embeds": out["text_embeds"],
                "single_audio_codec_features": out["audio"].features}

    return book.replay_all(
        custom={"audio_embeds": ((), forward),
                "spans / frame_preds": (("model(..., threshold=", "return_spans=True).spans flattened to rows "
                                         "[batch_index, start_seconds, end_seconds] (float32)",
                                         "frame_preds = frame_probs > threshold"), spans),
                "audio_embeds_from_input_features": (("model(input_ids, input_values=None, input_features="
                                                      "audio_codec_features, attention_mask, padding_mask="
                                                      "feature_padding_mask).audio_embeds",), from_features),
                "single_*": ((), single),
                "audio_rope_freqs_cis": (("as in peav_tiny_cfg",), lambda outputs: _pe_rope(model, outputs))},
        pins={"text_embeds": ("text_head(text pooler_output)",),
              "frame_logits / frame_probs": ("* logit_scale + logit_bias, and its sigmoid",),
              **{k: v for k, v in _PE_AUDIO_PINS.items() if k in case.config["calls"]}})


@torch.no_grad()
def run_stmt(case: Case) -> dict[str, torch.Tensor]:
    from percli.models.stmt import STMT

    kwargs = case.config["constructor_kwargs"]  # the official opt and the width shim's widths
    widths, opt = kwargs["widths"], kwargs["opt"]
    assert 16 * widths["c1"] == kwargs["feature_dim_D"]
    model = STMT(num_classes=opt["Num_Class"], framenum=opt["framenum"], **widths)
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    book = _book(case, model)
    inputs = book.inputs

    def forward(_: dict) -> dict[str, torch.Tensor]:  # every stage of the one call, the saved FPS draws passed in
        return model(inputs["points4DV_T"], inputs["geodist"], fps_start_level1=inputs["fps_start_level1"],
                     fps_start_level2=inputs["fps_start_level2"], return_intermediates=True)

    return book.replay_all(
        custom={"logits": (("model(points4DV_T, geodist)", "saved as inputs fps_start_level1 / fps_start_level2 "
                                                           "and a reimplementation should take them as arguments"),
                           forward)},
        pins={"fps_idx_level1 / fps_idx_level2": ("util.farthest_point_sample results",),
              "geo_knn_idx_level1_sorted / geo_knn_idx_level2_sorted": ("the 8 smallest GEODESIC distances",
                                                                         "sorted along the last dim here"),
              "spa_knn_idx_level1_sorted / spa_knn_idx_level2_sorted": ("for the SAME centres as geo", "sorted"),
              "geo_global_feature, geo_pt_last, geo_new_xyz_1, geo_new_xyz_2, geo_new_feature_1, geo_new_feature_2":
                  ("the 6 outputs of model.geo (GeodesicModel.forward)",),
              "spa_global_feature, spa_pt_last": ("the 2 outputs of model.spa (SpatialModel.forward)",),
              "channel_attention": ("model.ca_T1 output [B, D, 1, 1]",),
              "transformer_input / transformer_output": ("tokens into / out of model.transformer",),
              "pooled_max": ("input of mlp_head = max over tokens of transformer_output",)})


_PE_AUDIO_FILE = ("core/audio_visual_encoder/pe.py (+ transformer.py, patcher.py, aligner.py, audio_codec.py, "
                  "config.py; {vision}text tower = transformers ModernBertModel; codec = transformers DacEncoder)")

# (official_file, official_class) -> runner. Families not listed are skipped, not failed.
RUNNERS: dict[tuple[str, str], Runner] = {
    ("hiera/hiera.py", "Hiera"): run_hiera,
    ("hiera/hiera_mae.py", "MaskedAutoencoderHiera"): run_hiera_mae,
    ("models_mae.py", "MaskedAutoencoderViT"): run_audiomae_mae,
    ("models_vit.py", "VisionTransformer"): run_audiomae_vit,
    ("src/open_clip/model.py (towers: src/open_clip/transformer.py VisionTransformer / TextTransformer)", "CLIP"):
        run_openclip,
    ("core/vision_encoder/pe.py", "CLIP"): run_pe_clip,
    ("core/vision_encoder/pe.py", "VisionTransformer"): run_pe_vision,
    ("dinov2/models/vision_transformer.py", "DinoVisionTransformer"): run_dinov2,
    ("upstream_models/mavil/models_vitmm.py (+ upstream_models/mavil/expert.py, util/patch_embed.py, "
     "util/pos_embed.py)", "VisionTransformerMM"): run_mavil,
    (_PE_AUDIO_FILE.format(vision="vision tower core/vision_encoder/pe.py; "), "PEAudioVisual"): run_pe_audio_visual,
    (_PE_AUDIO_FILE.format(vision=""), "PEAudioFrame"): run_pe_audio_frame,
    ("src/model/stmt_model.py", "STMT"): run_stmt,
    **MMPT_RUNNERS,
    **PLM_RUNNERS,
    **SPEECH_RUNNERS,
}


# --------------------------------------------------------------------------- the test

CASES = discover_cases(GOLDEN_DIR)


def _assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: dict) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != {list(expected.shape)}"
    if expected.dtype == torch.bool or not expected.dtype.is_floating_point:
        assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
        assert torch.equal(actual, expected), f"{name}: integer/bool tensor differs"
        return
    torch.testing.assert_close(actual, expected, atol=tol["atol"], rtol=tol["rtol"], msg=lambda m: f"{name}: {m}")


def runner_for(case: Case) -> Runner | None:
    """The runner registered for the case's official file and class, or None (a family not built yet)."""
    # a class may carry a note after its name, e.g. "VisionTransformer (models_vit.py, subclass of ...)"
    key = (case.config.get("official_file", "?"), case.config.get("official_class", "?").split(" ")[0])
    return RUNNERS.get(key)


@pytest.mark.skipif(not CASES, reason=f"no golden cases found in {GOLDEN_DIR} (set PERCLI_GOLDEN_DIR)")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_case_matches_official_outputs(case: Case) -> None:
    runner = runner_for(case)
    if runner is None:
        family = case.config.get("official_repo", "unknown repo")
        official = f"{case.config.get('official_file', '?')}::{case.config.get('official_class', '?').split(' ')[0]}"
        pytest.skip(f"family not implemented in percli yet: {family} {official}")
    expected = load_file(str(case.path / "outputs.safetensors"))
    actual = runner(case)
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"runner produced no value for {missing}"
    tol = case.config["recommended_tolerance"]
    for name, want in expected.items():
        _assert_matches(name, actual[name], want, tol)


# --------------------------------------------------------------------------- the replay itself


def test_recorded_calls_are_parsed_from_the_text_not_evaluated() -> None:
    text = ("model.eval(); the official forward() ends with torch.FloatTensor([0.0]).cuda(): torch.manual_seed(s); "
            "enc, mask, _ = model.forward_encoder(x, 0.5, ids=[1, -2], fmt='N(C)')[0]  -> (tokens, [reroll'd maps]); "
            "model.visual._pool(ff_norm)")
    calls = extract_calls(text)
    assert [c.text for c in calls] == ["model.eval()", "model.forward_encoder(x, 0.5, ids=[1, -2], fmt='N(C)')[0]",
                                       "model.visual._pool(ff_norm)"]
    assert [c.targets for c in calls] == [(), ("enc", "mask", "_"), ()]
    assert all(c.error is None for c in calls)
    assert [c.text for c in extract_calls("v.eval(); v(x); model(x)", receivers=("v",))] == ["v.eval()", "v(x)"]
    assert output_names("interm_i_patch_bchw / interm_i_cls") == ["interm_i_patch_bchw", "interm_i_cls"]
    assert output_names("probs_eval + intermediate_i") == ["probs_eval", "intermediate_i"]
    assert output_names("loss, pred, label, mask_out") == ["loss", "pred", "label", "mask_out"]


def _case_copy(tmp_path: Path, name: str, edits: list[tuple[str, str | None, object]]) -> Case:
    """A copy of public case `name` (same folder name; tensors linked) whose `calls` entries are edited:
    (key, old, new) replaces the text `old` by `new` in entry `key`; old None adds or overwrites the entry. In a
    structured entry `old` names a field: `new` is merged into it (a dict) or replaces it."""
    source = GOLDEN_DIR / name
    if not (source / "config.json").is_file():
        pytest.skip(f"golden case {name} not found in {GOLDEN_DIR}")
    (tmp_path / name).mkdir()
    for item in source.iterdir():
        if item.name != "config.json":
            (tmp_path / name / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text())
    for key, old, new in edits:
        entry = config["calls"].get(key)
        if isinstance(entry, dict) and old is not None:
            entry[old] = {**entry[old], **new} if isinstance(new, dict) and old in entry else new
            continue
        if old is not None:
            assert old in config["calls"][key], f"{name}: {old!r} is not in calls[{key!r}]"
            new = config["calls"][key].replace(old, new)
        config["calls"][key] = new
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    (case,) = discover_cases(tmp_path)
    return case


_DINO_INTERM = ["interm_i_patch_bchw / interm_i_cls", "interm_i_patch_prenorm"]
_VOICECRAFT_TRACE = ("res", "gen", "logits_raw", "logits_adjusted", "draws", "step_tokens", "y_input_len")

# (case, edits of its calls, {output of the edited case: output of the public case it must equal}, outputs that
# must be absent): each expectation follows from the official outputs, so honouring the edit is checked against them
CHANGED_CALLS = {
    "dinov2_n1": ("dinov2_tiny_cfg", [(k, "n=2", "n=1") for k in _DINO_INTERM],
                  {f"interm_0_{s}": f"interm_1_{s}" for s in ("patch_bchw", "cls", "patch_prenorm")},
                  ["interm_1_patch_bchw", "interm_1_cls", "interm_1_patch_prenorm"]),
    "dinov2_list": ("dinov2_reg_swiglu_tiny_cfg", [(k, "n=2", "n=[0]") for k in _DINO_INTERM],
                    {f"interm_0_{s}": f"interm_0_{s}" for s in ("patch_bchw", "cls", "patch_prenorm")},
                    ["interm_1_patch_bchw", "interm_1_cls", "interm_1_patch_prenorm"]),
    "openclip_indices": (
        "openclip_vit_tiny_cfg",
        [("image_intermediate_i / image_intermediate_prefix_i / text_intermediate_i / fi_image_logits",
          "image_indices=None, text_indices=None", "image_indices=[1], text_indices=[0]")],
        {"image_intermediate_0": "image_intermediate_1", "image_intermediate_prefix_0": "image_intermediate_prefix_1",
         "text_intermediate_0": "text_intermediate_0", "fi_image_logits": "fi_image_logits"},
        ["image_intermediate_1", "image_intermediate_prefix_1", "text_intermediate_1"]),
    "pe_norm": ("pe_core_tiny_cfg", [("layer_i", "norm=False, layer_idx=i", "norm=True, layer_idx=i")],
                {"layer_2": "ff_norm"}, []),
    "hiera_unmasked": ("hiera_tiny_cfg", [("masked_tokens_out + masked_intermediate_i",
                                           "model(x, mask=mask, return_intermediates=True)",
                                           "model(x, return_intermediates=True)")],
                       {"masked_tokens_out": "probs_eval", "masked_intermediate_3": "intermediate_3"}, []),
    "audiomae_no_masking": ("audiomae_vit_ft_tiny_cfg", [("masked_logits", "model(x, mask_t_prob, mask_f_prob)",
                                                          "model(x)")],
                            {"masked_logits": "logits"}, []),
    "videoclip_full_clip": ("videoclip_tiny_cfg", [("short_pooled_video / short_video_position_ids",
                                                    "model.forward_video(vfeats_short, vmasks_short, caps, cmasks)",
                                                    "model.forward_video(vfeats, vmasks, caps, cmasks)")],
                            {"short_pooled_video": "pooled_video", "short_video_position_ids": "video_position_ids"},
                            []),
    "voicecraft_batched_function": ("voicecraft_infer_tiny_cfg",
                                    [("tts_greedy_kv1", "function", "VoiceCraft.inference_tts_batch"),
                                     ("tts_greedy_kv1", "kwargs", {"batch_size": 3})],
                                    {f"tts_greedy_kv1_{n}": f"tts_batch3_greedy_kv1_{n}" for n in _VOICECRAFT_TRACE},
                                    []),
    "voicecraft_sampled_seed_and_kwargs": ("voicecraft_infer_tiny_cfg",
                                           [("tts_greedy_kv1", "seed", 2),
                                            ("tts_greedy_kv1", "kwargs", {"top_k": 20, "top_p": 0.9, "temperature": 0.8,
                                                                          "stop_repetition": 3})],
                                           {f"tts_greedy_kv1_{n}": f"tts_sampled_kv1_{n}" for n in _VOICECRAFT_TRACE},
                                           []),
}


@pytest.mark.parametrize("name", list(CHANGED_CALLS))
def test_runner_replays_a_changed_recorded_argument(tmp_path: Path, name: str) -> None:
    case_name, edits, equal, absent = CHANGED_CALLS[name]
    case = _case_copy(tmp_path, case_name, edits)
    public = load_file(str(GOLDEN_DIR / case_name / "outputs.safetensors"))
    actual = runner_for(case)(case)
    tol = case.config["recommended_tolerance"]
    for new, old in equal.items():
        _assert_matches(f"{new} (= public {old})", actual[new], public[old], tol)
    assert not set(absent) & set(actual), f"the edited call still produced {sorted(set(absent) & set(actual))}"
    if name == "pe_norm":  # and the other layers changed too (layer_0 is not the public, unnormed one)
        assert not torch.allclose(actual["layer_0"], public["layer_0"], atol=1e-3)


# (case, edits, what the error must say): a call the runner cannot replay as recorded fails, naming the case
UNREPLAYABLE = {
    "unknown_name": ("dinov2_tiny_cfg", [(_DINO_INTERM[0], "n=2", "n=depth")], "cannot resolve the name 'depth'"),
    "unknown_method": ("dinov2_tiny_cfg", [(_DINO_INTERM[1], "get_intermediate_layers", "get_intermediate_layerz")],
                       "has no method 'get_intermediate_layerz'"),
    "unknown_argument": ("dinov2_tiny_cfg", [(_DINO_INTERM[1], "norm=False)", "norm=False, chunked=True)")],
                         "cannot take the recorded arguments"),
    "elided_argument": ("dinov2_tiny_cfg", [("ff_*", "forward_features(x)", "forward_features(...)")],
                        "an elided argument"),
    "unknown_attribute": ("audiomae_mae_globaldec_small_input_cfg", [("forward", "model.mask_2d", "model.mask_3d")],
                          "has no attribute 'mask_3d'"),
    "changed_pinned_call": ("openclip_vit_tiny_cfg",
                            [("image_patch_tokens_ln_post / image_cls_token_ln_post / text_tokens_ln_final",
                              "indices=[last]", "indices=[0]")], "no longer says"),
    "prose_only_entry": ("hiera_tiny_cfg", [("pooled_features", None, "the pooled features, before the head")],
                         "records no call on the model"),
    "rng_override": ("audiomae_vit_ft_tiny_cfg", [("masked_logits", "mask_f_prob)", "mask_f_prob, noise_t=x)")],
                     "would override recorded ones"),
    "more_names_than_values": ("hiera_mae_tiny_cfg", [("latent, pred, mask", None,
                                                       "model.forward_decoder(encoder_latent, mask)")],
                               "3 output names ['latent', 'pred', 'mask'], but the replayed call gives 2 values"),
    "changed_pinned_prose": ("encodec_tiny_cfg", [("decoded", "(NOT trimmed;", "(trimmed to the input;")],
                             "no longer says"),
    "structured_unknown_function": ("voicecraft_infer_tiny_cfg",
                                    [("tts_greedy_kv1", "function", "VoiceCraft.inference_tts_beam")],
                                    "has no method 'inference_tts_beam'"),
    "structured_unknown_input": ("voicecraft_infer_tiny_cfg",
                                 [("tts_greedy_kv1", "positional_inputs", ["tts_x", "tts_x_lens", "tts_prompt"])],
                                 "cannot resolve the name 'tts_prompt'"),
    "structured_unknown_argument": ("voicecraft_infer_tiny_cfg", [("tts_greedy_kv1", "kwargs", {"eog_coef": 0.5})],
                                    "cannot take the recorded arguments"),
    "structured_unknown_field": ("voicecraft_infer_tiny_cfg", [("tts_greedy_kv1", "generator_seed", 3)],
                                 "does not know how to honour"),
    "structured_override": ("voicecraft_infer_tiny_cfg", [("tts_greedy_kv1", "kwargs", {"return_trace": False})],
                            "would override recorded ones"),
}


@pytest.mark.parametrize("name", list(UNREPLAYABLE))
def test_unreplayable_recorded_call_fails_loudly(tmp_path: Path, name: str) -> None:
    case_name, edits, says = UNREPLAYABLE[name]
    case = _case_copy(tmp_path, case_name, edits)
    with pytest.raises(GoldenReplayError, match=f"golden case {case_name}") as err:
        runner_for(case)(case)
    assert says in str(err.value)
