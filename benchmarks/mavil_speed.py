"""MAViL embedding throughput: percli's encoder against the official structure built from timm's modules.

The public MAViL encoder is AV-SUPERB's ``upstream_models/mavil/models_vitmm.py::VisionTransformerMM``
(roger-tseng/av-superb@696e269), a timm ``VisionTransformer`` subclass; it is not an installable package.
What it runs is timm ``Block``s (LayerNorm eps 1e-6, biased qkv), a Conv2d audio patch embedding
(``PatchEmbed_new``, 16x16 stride 16), a Conv3d video tubelet embedding (``PatchEmbed3D_new``, (2, 16, 16))
and fixed sin-cos tables. The peer here ("ref") rebuilds that from timm's own modules --
``timm.layers.PatchEmbed`` (audio), a plain ``torch.nn.Conv3d`` (video),
``timm.models.vision_transformer.Block`` for ``blocks`` / ``blocks_v`` / ``blocks_av`` -- and runs the
official forward order: audio tower (patch embed, + pos_embed, CLS, blocks), video tower (same with
``*_v``), concatenation [audio tokens, video tokens] (both CLS kept), fusion blocks, pooled as
[mean audio patches, mean video patches]. It loads percli's state dict strictly (same names: ``cls_token``,
``pos_embed``, ``patch_embed.proj``, ``blocks.N.*``, ``cls_token_v``, ``pos_embed_v``, ``patch_embed_v.proj``,
``blocks_v.N.*``, ``blocks_av.N.*``), and its pooled features must equal percli's ``forward_features_av``
within 1e-5 (fp32 with TF32 off, max abs) before anything is timed.

Pooling: with the pretrained layout (2 fusion blocks, no ``fc_norm_av``) the official ``forward_features_av``
cannot run (it calls the missing ``fc_norm_av``); the pooled vector is then the expert's last
``fusion_feats`` entry, which is what percli returns. ``--fine-tuned`` builds the fine-tuned layout
(3 fusion blocks + ``fc_norm_av``), where both apply ``fc_norm_av`` as the official ``forward_features_av``.

Attention: timm 1.x blocks call ``F.scaled_dot_product_attention`` (``--ref-attn sdpa``, the default);
the official code pins timm 0.4.5, whose blocks compute ``softmax(q @ k^T * scale) @ v`` explicitly:
``--ref-attn eager`` sets timm's ``fused_attn = False`` to run that math instead.

Workloads (clips per second, median of interleaved timed calls, eval forward under ``inference_mode``):

* ``av``     audio fbank [B, 1, 1024, 128] + video [B, 3, 8, 224, 224] -> fused pooled features [B, 2E];
* ``audio``  audio tower only -> mean of audio patch tokens [B, E];
* ``video``  video tower only -> mean of video patch tokens [B, E].

timm is not a dependency of percli (it is in the ``dev`` extra): ``pip install timm``.

Example:
    python benchmarks/mavil_speed.py --model small --batch-size 1 --steps 2 --warmup 1
    python benchmarks/mavil_speed.py --device cuda --dtype bf16 --batch-size 32 --steps 20 --warmup 5   # GPU
    python benchmarks/mavil_speed.py --device cuda --dtype bf16 --batch-size 32 --steps 20 --warmup 5 --ref-attn eager
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from percli.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hiera_speed import DTYPES, _infer_step, _time_pair, parse_timing_args  # noqa: E402  (shared timing helpers)

SIZES = ("small", "base", "large", "huge")
WORKLOADS = ("av", "audio", "video")
TOLERANCE = 1e-5


def _import_timm():
    try:
        import timm
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block
    except ImportError:
        sys.exit("mavil_speed.py needs timm for its reference modules (not a percli dependency): "
                 "pip install timm   (or pip install -e '.[dev]')")
    return timm, PatchEmbed, Block


class _Tubelets(nn.Module):
    """Video -> tokens with a plain Conv3d over (2, p, p) tubelets (official ``PatchEmbed3D_new``)."""

    def __init__(self, dim: int, patch: int, tubelet: int = 2):
        super().__init__()
        kernel = (tubelet, patch, patch)
        self.proj = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.proj(v).flatten(2).transpose(1, 2)


class TimmMAViL(nn.Module):
    """The official ``VisionTransformerMM`` forward on timm 1.x modules (weights loaded from percli)."""

    def __init__(self, cfg: dict, eager_attn: bool = False):
        super().__init__()
        _, PatchEmbed, Block = _import_timm()
        dim, heads, patch = cfg["embed_dim"], cfg["num_heads"], cfg["patch_size"]
        norm = partial(nn.LayerNorm, eps=1e-6)  # official vitmm_*: norm_layer=partial(nn.LayerNorm, eps=1e-6)
        img = tuple(cfg["img_size"])
        self.n_frm, self.ft = cfg["n_frm"], cfg["ft"]

        def blocks(n: int) -> nn.ModuleList:
            out = nn.ModuleList([Block(dim, heads, mlp_ratio=cfg["mlp_ratio"], qkv_bias=cfg["qkv_bias"],
                                       norm_layer=norm) for _ in range(n)])
            for blk in out:
                if eager_attn:
                    blk.attn.fused_attn = False  # timm 0.4.5's explicit softmax(q k^T * scale) v
            return out

        grid = (img[0] // patch) * (img[1] // patch)
        grid_v = (cfg["n_frm"] // 2) * (cfg["video_size"] // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid + 1, dim), requires_grad=False)
        self.cls_token_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_v = nn.Parameter(torch.zeros(1, grid_v + 1, dim), requires_grad=False)
        self.patch_embed = PatchEmbed(img, patch, in_chans=1, embed_dim=dim)  # NCHW -> NLC, time-major
        self.blocks = blocks(cfg["depth"])
        self.patch_embed_v = _Tubelets(dim, patch)
        self.blocks_v = blocks(cfg["depth"])
        self.blocks_av = blocks(cfg["depth_av"])
        if self.ft:
            self.fc_norm_av = norm(2 * dim)

    def audio_tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x

    def video_tokens(self, v: torch.Tensor) -> torch.Tensor:
        v = self.patch_embed_v(v[:, :, :self.n_frm]) + self.pos_embed_v[:, 1:, :]
        cls = (self.cls_token_v + self.pos_embed_v[:, :1, :]).expand(v.shape[0], -1, -1)
        v = torch.cat((cls, v), dim=1)
        for blk in self.blocks_v:
            v = blk(v)
        return v

    def forward(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x, v = self.audio_tokens(x), self.video_tokens(v)
        xv = torch.cat((x, v), dim=1)
        for blk in self.blocks_av:
            xv = blk(xv)
        n = x.shape[1]
        pooled = torch.cat((xv[:, 1:n, :].mean(dim=1), xv[:, n + 1:, :].mean(dim=1)), dim=1)
        return self.fc_norm_av(pooled) if self.ft else pooled


class _AV(nn.Module):
    """(audio, video) -> fused pooled features: percli's ``forward_features_av`` or the reference's forward."""

    def __init__(self, model: nn.Module, percli: bool):
        super().__init__()
        self.model, self.percli = model, percli

    def forward(self, xv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model.forward_features_av(*xv) if self.percli else self.model(*xv)


class _PercliTower(nn.Module):
    """One tower of percli's model -> mean of its patch tokens (CLS dropped)."""

    def __init__(self, model: nn.Module, audio: bool):
        super().__init__()
        self.model, self.audio = model, audio

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        m = self.model
        x, blocks = (m.embed_audio(inp), m.blocks) if self.audio else (m.embed_video(inp), m.blocks_v)
        for blk in blocks:
            x = blk(x)
        return x[:, 1:].mean(dim=1)


class _RefTower(nn.Module):
    def __init__(self, model: TimmMAViL, audio: bool):
        super().__init__()
        self.model, self.audio = model, audio

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.model.audio_tokens(inp) if self.audio else self.model.video_tokens(inp)
        return x[:, 1:].mean(dim=1)


def build_pair(name: str, device: torch.device, fine_tuned: bool, eager_attn: bool):
    overrides = {"depth_av": 3, "ft": True} if fine_tuned else {}
    ours = create_model(name, **overrides).to(device).eval()
    if not ours.av_fusion:
        raise ValueError("the benchmark compares the fusion layout (av_fusion=True)")
    ref = TimmMAViL(ours.config, eager_attn).to(device).eval()
    ours_state = ours.state_dict()
    if fine_tuned:  # percli's classifier has no counterpart in the feature extractor
        ours_state = {k: v for k, v in ours_state.items() if not k.startswith("head_av.")}
    ref.load_state_dict(ours_state, strict=True)  # every name lines up: no mapping
    return ours, ref


def _max_diff(mine: nn.Module, theirs: nn.Module, inp) -> float:
    """Max |percli - reference| of one forward in fp32 (TF32 off on CUDA), before any timing."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.inference_mode():
            return (mine(inp) - theirs(inp)).abs().max().item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def run(args: argparse.Namespace) -> dict:
    timm, _, _ = _import_timm()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    name = f"mavil_vit_{args.model}_patch16" if args.model in SIZES else args.model
    torch.manual_seed(0)
    ours, ref = build_pair(name, device, args.fine_tuned, args.ref_attn == "eager")
    B, cfg = args.batch_size, ours.config
    audio = torch.randn(B, 1, *cfg["img_size"], device=device)
    video = torch.randn(B, 3, cfg["n_frm"], cfg["video_size"], cfg["video_size"], device=device)
    pairs = {"av": (_AV(ours, True), _AV(ref, False), (audio, video)),
             "audio": (_PercliTower(ours, True), _RefTower(ref, True), audio),
             "video": (_PercliTower(ours, False), _RefTower(ref, False), video)}
    results, diffs = {}, {}
    for wl in WORKLOADS:
        if args.only not in (None, wl):
            continue
        mine, theirs, inp = pairs[wl]
        diffs[wl] = _max_diff(mine, theirs, inp)
        if not diffs[wl] <= TOLERANCE:
            raise SystemExit(f"{wl}: percli and the timm reference differ by {diffs[wl]:.3g} > {TOLERANCE}")
        results[wl] = _time_pair({"percli": _infer_step(mine, inp, device, dtype, {}),
                                  "ref": _infer_step(theirs, inp, device, dtype, {})},
                                 args.steps, args.warmup, device)
    table = {wl: {"percli_clips_s": B / s["percli"], "ref_clips_s": B / s["ref"],
                  "ratio_percli_over_ref": s["ref"] / s["percli"]} for wl, s in results.items()}
    return {"model": name, "fine_tuned": args.fine_tuned, "ref_attn": args.ref_attn, "batch_size": B,
            "steps": args.steps, "warmup": args.warmup, "device": str(device), "dtype": args.dtype,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": timm.__version__,
            "max_abs_diff": diffs, "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base",
                        help=f"one of {', '.join(SIZES)} (mavil_vit_<size>_patch16) or a registered MAViL name")
    parser.add_argument("--fine-tuned", action="store_true",
                        help="fine-tuned layout: 3 fusion blocks + fc_norm_av (default: the pretrained one, 2 blocks)")
    parser.add_argument("--ref-attn", choices=["sdpa", "eager"], default="sdpa",
                        help="reference attention: timm 1.x fused SDPA, or timm 0.4.5's explicit softmax")
    parser.add_argument("--only", choices=WORKLOADS, default=None, help="run one workload")
    args = parse_timing_args(parser)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['model']}{' (fine-tuned)' if out['fine_tuned'] else ''}  batch {out['batch_size']}  "
          f"{out['device']} {out['dtype']}  threads {out['threads']}  torch {out['torch']}  timm {out['timm']} "
          f"({out['ref_attn']} attention)  (max |diff| {out['max_abs_diff']})")
    print(f"{'workload':<10}{'percli clips/s':>16}{'ref clips/s':>13}{'percli/ref':>12}")
    for wl, row in out["results"].items():
        print(f"{wl:<10}{row['percli_clips_s']:>16.2f}{row['ref_clips_s']:>13.2f}"
              f"{row['ratio_percli_over_ref']:>12.3f}")


if __name__ == "__main__":
    main()
