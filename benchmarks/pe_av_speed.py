"""PE-AV embedding throughput: percli against the modules the official code runs, and against HF's PE-AV port.

Peers, each given percli's weights and checked equal (max |diff| printed, non-zero exit above ``--tol``)
before it is timed (items per second, median of interleaved timed calls, ``percli/HF`` > 1 = percli faster):

* ``codec``: the DAC-VAE encoder on ``--seconds`` of 48 kHz audio against ``transformers`` ``DacEncoder`` (the
  official code imports it), release config (strides 2*8*10*12).
* ``text``: captions of ``--tokens`` tokens through ModernBERT-large (``--text-layers``, the release: 28)
  against ``ModernBertModel`` (SDPA), which the official code also imports.
* ``audio`` / ``video`` / ``av``: embeddings (tower pooled [cls] -> contrastive head) against Hugging Face's
  port of PE-AV, ``transformers.models.pe_audio_video.PeAudioVideoModel`` (with its ``PeAudioEncoder`` /
  ``PeVideoEncoder``; the official package is not installable). ``audio`` starts from the same precomputed
  codec latents [B, ``--seconds`` * 25, 128] on both sides, so the codec (its own workload) is not timed twice:
  the port's encoder only takes a waveform, so its embedder is swapped for its own ``data_proj``
  (`_CodecLatents`) and the rest of its forward runs unchanged (the waveform path, DAC-VAE included, is
  checked equal on a short clip first). ``video`` is the PE frame encoder (``--pe-encoder``; the port runs
  it as timm's ``vit_pe_core_*`` through ``TimmWrapperForImageClassification``) plus the temporal tower on
  ``--frames`` frames; ``av`` is audio latents + frames -> audio, video and audio+video towers -> the
  audio+video embedding. The towers have the official ``TransformerConfig`` sizes (``--tower official``:
  1024 wide, 8 heads, SwiGLU 2752, 16 layers) or the port's pe-av-large defaults (``--tower hf-large``:
  1792 wide, 14 heads, 4800, 6 layers); ``--tower-layers`` overrides the depth. The text tower of these
  models is one layer (it is not timed here).

percli's state dict goes into the port by `percli_to_hf` (`HF_PREFIXES`, `TOWER_RENAMES`; timm's own
official-PE -> timm conversion for the frame encoder; the DAC-VAE bottleneck keeps its mean half), written
against the port's module names, since transformers' ``convert_pe_audio_video_to_hf.py`` (not shipped in the
wheel) predates the port's current layout; its renames (cls_token -> class_embedding, modality_aligner.conv
-> video_proj, modality_aligner.layer_norm -> video_norm, bottleneck.in_proj -> bottleneck, q/k without
RoPE permutation) are the ones used. Nothing percli computes is left out; the port's extra tensors are its
logit scales / biases (unused by embeddings).

What the port does not run as the official code does (none of it is on the timed path, whose outputs
matched to the last bit in fp32 on CPU):

* padding masks: the official ``AlignModalities`` keeps the video as is only when every clip has as many
  valid video frames as valid audio steps; the port's ``_align_video_hidden_state`` compares the padded
  lengths, so a batch with equal padded lengths but a clip whose valid counts differ is not aligned (20
  audio steps, 20 and 12 valid; 20 frames, 15 valid each: the audio+video embeddings differ by 0.2 and
  0.02). Masked audio, masked video, and audio+video with different padded lengths matched;
* ``PeVideoModel`` has no ``get_video_embeds`` (its ``get_video_features`` is nested inside ``__init__``),
  so ``PeAudioVideoModel.get_video_embeds`` raises AttributeError, as do ``get_text_audio_embeds`` /
  ``get_text_video_embeds`` (they call a ``get_text_embeds`` neither sub-model has); the ``video`` workload
  runs ``video_model.video_head(video_model.video_encoder(frames).pooler_output)``, as its ``forward`` does;
* ``PeVideoEncoderConfig``'s default ``vision_config`` sets ``num_classes`` (1024), which ``TimmWrapperConfig``
  ignores (``num_labels`` stays 2), so the default config builds a 2-wide frame head (set ``num_labels``).

Example (CPU, small towers and frame encoder; add ``--only audio video av`` to skip the slow codec):
    python benchmarks/pe_av_speed.py --batch-size 2 --steps 5 --warmup 2 --seconds 2 --tower-layers 2 \\
        --pe-encoder PE-Core-T16-384 --frames 4 --threads 2
GPU (release-size towers and frame encoder):
    python benchmarks/pe_av_speed.py --device cuda --dtype bf16 --batch-size 16 --steps 10 --warmup 3 \\
        --seconds 10 --frames 16 --pe-encoder PE-Core-L14-336 --tower official
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from percli.models.dac_vae import DacEncoder
from percli.models.modernbert import ModernBert
from percli.models.pe import VISION_CONFIGS
from percli.models.pe_av import DEFAULT_DAC, DEFAULT_TEXT, PEAudioVisual

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hiera_speed import DTYPES, _autocast, _infer_step, _time_pair, parse_timing_args  # noqa: E402  (shared helpers)

TEXT = {**DEFAULT_TEXT, "vocab_size": 50368, "intermediate_size": 2624, "max_position_embeddings": 8192,
        "local_attention": 128, "pad_token_id": 50283}
WORKLOADS = ("codec", "text", "audio", "video", "av")

# the PE frame encoders timm (hence the port's TimmWrapper) builds, by official name
PE_TIMM = {"PE-Core-T16-384": "vit_pe_core_tiny_patch16_384", "PE-Core-S16-384": "vit_pe_core_small_patch16_384",
           "PE-Core-B16-224": "vit_pe_core_base_patch16_224", "PE-Core-L14-336": "vit_pe_core_large_patch14_336",
           "PE-Core-G14-448": "vit_pe_core_gigantic_patch14_448"}
# tower sizes: the official TransformerConfig defaults (percli's) and transformers' pe-av-large defaults
TOWERS = {"official": {"hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 16,
                       "num_attention_heads": 8},
          "hf-large": {"hidden_size": 1792, "intermediate_size": 4800, "num_hidden_layers": 6,
                       "num_attention_heads": 14}}

# percli (= official) names -> the port's, first matching prefix wins
HF_PREFIXES = [
    ("audio_visual_model.audio_model.dac_vae_encoder.encoder.", "audio_model.audio_encoder.embedder.dac_encoder."),
    ("audio_visual_model.audio_model.dac_vae_encoder.bottleneck.in_proj.",
     "audio_model.audio_encoder.embedder.bottleneck."),  # (mean, log-scale) conv: the port keeps the mean rows
    ("audio_visual_model.audio_model.data_proj.", "audio_model.audio_encoder.embedder.data_proj."),
    ("audio_visual_model.audio_model.audio_transformer.", "audio_model.audio_encoder."),
    ("audio_visual_model.visual_model.pe_encoder.", "video_model.video_encoder.embedder.vision_model.timm_model."),
    ("audio_visual_model.visual_model.proj.", "video_model.video_encoder.embedder.proj."),
    ("audio_visual_model.visual_model.data_proj.", "video_model.video_encoder.embedder.data_proj."),
    ("audio_visual_model.visual_model.visual_transformer.", "video_model.video_encoder."),
    ("audio_visual_model.audio_visual_transformer.modality_aligner.conv.", "audio_video_encoder.embedder.video_proj."),
    ("audio_visual_model.audio_visual_transformer.modality_aligner.layer_norm.",
     "audio_video_encoder.embedder.video_norm."),
    ("audio_visual_model.audio_visual_transformer.concat_modality_proj.",
     "audio_video_encoder.embedder.concat_modality_proj."),
    ("audio_visual_model.audio_visual_transformer.data_proj.", "audio_video_encoder.embedder.data_proj."),
    ("audio_visual_model.audio_visual_transformer.", "audio_video_encoder."),
    ("audio_head.", "audio_model.audio_head."),
    ("audio_text_head.", "audio_model.text_audio_head."),
    ("visual_head.", "video_model.video_head."),
    ("visual_text_head.", "video_model.text_video_head."),
    ("audio_visual_head.", "audio_video_head."),
    ("audio_visual_text_head.", "text_audio_video_head."),
    ("audio_plus_text_head.", "audio_plus_text_head."),
    ("visual_plus_text_head.", "video_plus_text_head."),
    ("text_model.", "text_model."),
]
# inside a tower (after its prefix): the [cls] and conv block live in the port's patch_embedder;
# layers.*, norm.*, output.* keep their names (q/k need no RoPE permutation: both rotate interleaved pairs)
TOWER_RENAMES = [("embeddings.cls_token", "patch_embedder.class_embedding"),
                 ("embeddings.resnet_block.", "patch_embedder.resnet_block.")]
DROPPED = ("audio_visual_model.audio_model.dac_vae_encoder.bottleneck.out_proj.",)  # DAC-VAE decoder side
# the port's tied copies (PeAudioVideoModel._tied_weights_keys): alias prefix -> the prefix it shares tensors with
HF_TIED = {"audio_video_encoder.embedder.audio_encoder.": "audio_model.audio_encoder.",
           "audio_video_encoder.embedder.video_encoder.": "video_model.video_encoder.",
           "audio_model.text_model.": "text_model.", "video_model.text_model.": "text_model."}
HF_ONLY = ("logit_scale", "logit_bias")  # the port's pair temperatures: not used by embeddings


def _codec_pair(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import DacConfig
    from transformers.models.dac.modeling_dac import DacEncoder as HFDacEncoder

    ratios, width = DEFAULT_DAC["downsampling_ratios"], DEFAULT_DAC["encoder_hidden_size"]
    ours = DacEncoder(width, ratios, width * 2 ** len(ratios)).to(device).eval()
    ref = HFDacEncoder(DacConfig(encoder_hidden_size=width, downsampling_ratios=ratios,
                                 hidden_size=width * 2 ** len(ratios))).to(device).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def _text_pair(device: torch.device, layers: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import ModernBertConfig, ModernBertModel

    cfg = {**TEXT, "num_hidden_layers": layers}
    ours = ModernBert(**cfg).to(device).eval()
    ref = ModernBertModel(ModernBertConfig(**{k: v for k, v in cfg.items() if k != "model_type"},
                                           attn_implementation="sdpa")).to(device).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def percli_to_hf(state: dict[str, torch.Tensor], hf_model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """percli's `PEAudioVisual` state dict in the port's names (tied aliases filled in), and the percli keys
    with no counterpart there (the DAC-VAE decoder-side projection)."""
    from timm.models.eva import checkpoint_filter_fn

    out, dropped, pe = {}, [], {}
    pe_prefix = "audio_visual_model.visual_model.pe_encoder."
    for key, value in state.items():
        if key.startswith(DROPPED):
            dropped.append(key)
            continue
        if key.startswith(pe_prefix):
            pe[key[len(pe_prefix):]] = value
            continue
        src, dst = next((s, d) for s, d in HF_PREFIXES if key.startswith(s))
        name = key[len(src):]
        if src.endswith("_transformer."):
            for old, new in TOWER_RENAMES:
                if name.startswith(old):
                    name = new + name[len(old):]
        if src.endswith("bottleneck.in_proj."):
            value = value[: value.shape[0] // 2]
        out[dst + name] = value
    timm_model = hf_model.video_model.video_encoder.embedder.vision_model.timm_model
    timm_prefix = "video_model.video_encoder.embedder.vision_model.timm_model."
    out.update({timm_prefix + k: v for k, v in checkpoint_filter_fn(pe, timm_model).items()})
    for alias, canonical in HF_TIED.items():
        out.update({alias + k[len(canonical):]: v for k, v in list(out.items()) if k.startswith(canonical)})
    return out, dropped


def _tower_kwargs(args: argparse.Namespace) -> dict:
    tower = dict(TOWERS[args.tower], max_position_embeddings=10_000)
    if args.tower_layers:
        tower["num_hidden_layers"] = args.tower_layers
    return tower


def _pe_av_pair(args: argparse.Namespace, device: torch.device) -> tuple[PEAudioVisual, nn.Module, dict]:
    """percli's PE-AV and the port's PeAudioVideoModel at the same configuration, percli's weights in both."""
    from transformers import PeAudioVideoConfig, PeAudioVideoModel

    tower = _tower_kwargs(args)
    text = {**TEXT, "num_hidden_layers": 1}
    pe = VISION_CONFIGS[args.pe_encoder]
    with torch.device(device):
        ours = PEAudioVisual(audio_visual_model={
            "audio_model": {"dac_vae_encoder": DEFAULT_DAC, "audio_transformer": tower},
            "visual_model": {"pe_encoder": args.pe_encoder, "visual_transformer": tower},
            "audio_visual_transformer": tower}, text_model=text, output_dim=text["hidden_size"], nth_text_layer=None)
        hf_tower = {**tower, "head_dim": tower["hidden_size"] // tower["num_attention_heads"], "rms_norm_eps": 1e-5,
                    "rope_parameters": {"rope_type": "default",  # the official base: max(10000, 2 * max positions)
                                        "rope_theta": float(max(10_000, 2 * tower["max_position_embeddings"]))}}
        dac = {k: DEFAULT_DAC[k] for k in ("encoder_hidden_size", "downsampling_ratios", "codebook_dim",
                                            "sampling_rate")}
        vision = {"architecture": PE_TIMM[args.pe_encoder], "num_labels": pe["output_dim"]}
        config = PeAudioVideoConfig(text_config=text, audio_video_config={
            **hf_tower, "audio_config": {**hf_tower, "dac_config": dac},
            "video_config": {**hf_tower, "vision_config": vision}})
        with contextlib.redirect_stdout(sys.stderr):  # PeVideoModel.__init__ prints auto_docstring complaints
            ref = PeAudioVideoModel(config)
    mapped, dropped = percli_to_hf(ours.state_dict(), ref)
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    wrong = [k for k in missing if not k.endswith(HF_ONLY)] + list(unexpected)
    if wrong:
        raise SystemExit(f"the key mapping does not fit the port: {wrong[:8]} ({len(wrong)} keys)")
    info = {"tower": tower, "pe_encoder": args.pe_encoder, "timm_frame_encoder": PE_TIMM[args.pe_encoder],
            "frames": args.frames, "hf_attn_implementation": ref.config._attn_implementation,
            "percli_keys_without_hf_counterpart": dropped, "hf_keys_not_from_percli": sorted(missing)}
    return ours.eval(), ref.eval(), info


class _CodecLatents(nn.Module):
    """The port's audio embedder from codec latents on: its own ``data_proj`` on [B, La, D] (mask as given)."""

    def __init__(self, embedder: nn.Module):
        super().__init__()
        self.data_proj = embedder.data_proj

    def forward(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None = None):
        return self.data_proj(input_values), padding_mask


def _from_latents(ref: nn.Module) -> None:
    """Make the port's audio encoders (its own and the one inside the audio+video encoder) take latents."""
    for encoder in (ref.audio_model.audio_encoder, ref.audio_video_encoder.embedder.audio_encoder):
        encoder.embedder = _CodecLatents(encoder.embedder)


def _embed_step(fn: Callable[[], torch.Tensor], device: torch.device, dtype: torch.dtype | None) -> Callable[[], None]:
    def step():
        with torch.inference_mode(), _autocast(device, dtype):
            fn()

    return step


@contextlib.contextmanager
def _exact() -> Iterator[None]:
    """No grad, and full fp32 matmuls / convolutions on GPU (no TF32), for the equality checks."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _checked(name: str, diff: float, scale: float, tol: float) -> None:
    """Stop before timing when the two sides do not compute the same thing."""
    if not diff <= tol * max(1.0, scale):
        raise SystemExit(f"{name}: percli and the reference differ (max |diff| {diff:.3g}, output scale {scale:.3g}, "
                         f"tolerance {tol:g} x max(1, scale)); not timing it")


def run(args: argparse.Namespace) -> dict:
    import transformers

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    B = args.batch_size
    only = set(args.only or WORKLOADS)
    results, diffs, config = {}, {}, {}

    def check(name: str, ours_out: torch.Tensor, ref_out: torch.Tensor) -> None:
        diffs[name] = _max_diff(ours_out, ref_out)
        _checked(name, diffs[name], ref_out.abs().max().item(), args.tol)

    def time_pair(name: str, ours_fn: Callable[[], None], ref_fn: Callable[[], None]) -> None:
        results[name] = _time_pair({"percli": ours_fn, "ref": ref_fn}, args.steps, args.warmup, device)

    if "codec" in only:
        ours, ref = _codec_pair(device)
        wav = 0.1 * torch.randn(B, 1, int(args.seconds * DEFAULT_DAC["sampling_rate"]), device=device)
        with _exact():
            check("codec", ours(wav), ref(wav))
        time_pair("codec", _infer_step(ours, wav, device, dtype, {}), _infer_step(ref, wav, device, dtype, {}))
        del ours, ref
    if "text" in only:
        ours, ref = _text_pair(device, args.text_layers)
        ids = torch.randint(5, 50000, (B, args.tokens), device=device)
        with _exact():
            check("text", ours(ids)[0], ref(input_ids=ids).last_hidden_state)
        time_pair("text", _infer_step(ours, ids, device, dtype, {}), _infer_step(ref, ids, device, dtype, {}))
        del ours, ref
    if only & {"audio", "video", "av"}:
        ours, ref, config = _pe_av_pair(args, device)
        hop = ours.hop_length
        steps = int(args.seconds * ours.sampling_rate) // hop
        latents = torch.randn(B, steps, DEFAULT_DAC["codebook_dim"], device=device)  # stand-in codec output
        size = VISION_CONFIGS[args.pe_encoder]["image_size"]
        frames = torch.randn(B, args.frames, 3, size, size, device=device)
        with _exact():
            if "audio" in only or "av" in only:  # the waveform path, codec included, on a short clip
                wav = 0.1 * torch.randn(B, 1, 4 * hop, device=device)
                check("audio_from_waveform", ours.encode_audio(wav), ref.get_audio_embeds(wav))
        _from_latents(ref)
        audio = {"percli": lambda: ours.encode_audio(None, input_features=latents),
                 "ref": lambda: ref.get_audio_embeds(latents)}
        video = {"percli": lambda: ours.encode_video(frames),  # PeAudioVideoModel.get_video_embeds is broken:
                 "ref": lambda: ref.video_model.video_head(ref.video_model.video_encoder(frames).pooler_output)}
        av = {"percli": lambda: ours.encode_audio_video(None, frames, input_features=latents),
              "ref": lambda: ref.get_audio_video_embeds(latents, frames).audio_video_embeds}
        for name, fns in (("audio", audio), ("video", video), ("av", av)):
            if name not in only:
                continue
            with _exact():
                check(name, fns["percli"](), fns["ref"]())
            time_pair(name, _embed_step(fns["percli"], device, dtype), _embed_step(fns["ref"], device, dtype))
    table = {name: {"percli_items_s": B / s["percli"], "ref_items_s": B / s["ref"],
                    "ratio_percli_over_ref": s["ref"] / s["percli"]} for name, s in results.items()}
    return {"batch_size": B, "seconds": args.seconds, "tokens": args.tokens, "text_layers": args.text_layers,
            "pe_av": config, "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "max_abs_diff": diffs,
            "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per clip (codec, audio, av)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per caption (text workload)")
    parser.add_argument("--text-layers", type=int, default=28, help="ModernBERT layers (the release: 28)")
    parser.add_argument("--frames", type=int, default=8, help="video frames per clip (video, av)")
    parser.add_argument("--pe-encoder", default="PE-Core-L14-336", choices=sorted(PE_TIMM),
                        help="PE frame encoder (the official default: PE-Core-L14-336)")
    parser.add_argument("--tower", default="official", choices=sorted(TOWERS),
                        help="audio / video / audio+video tower sizes")
    parser.add_argument("--tower-layers", type=int, default=0, help="layers per tower (0 = the --tower preset's)")
    parser.add_argument("--tol", type=float, default=1e-4,
                        help="largest max |diff| accepted, times max(1, the output's largest magnitude)")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=None, help="run these workloads only")
    args = parse_timing_args(parser)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"batch {out['batch_size']}  {out['device']} {out['dtype']}  threads {out['threads']}  torch {out['torch']}"
          f"  transformers {out['transformers']}")
    if out["pe_av"]:
        cfg = out["pe_av"]
        print(f"PE-AV towers {cfg['tower']}  frame encoder {cfg['pe_encoder']} (HF: timm {cfg['timm_frame_encoder']})"
              f"  {cfg['frames']} frames  {out['seconds']} s audio  HF attention {cfg['hf_attn_implementation']}")
    print("max |diff| " + "  ".join(f"{k} {v:.2e}" for k, v in out["max_abs_diff"].items()))
    print(f"{'workload':<10}{'percli /s':>11}{'HF /s':>9}{'percli/HF':>11}")
    for name, row in out["results"].items():
        print(f"{name:<10}{row['percli_items_s']:>11.2f}{row['ref_items_s']:>9.2f}{row['ratio_percli_over_ref']:>11.2f}")


if __name__ == "__main__":
    main()
