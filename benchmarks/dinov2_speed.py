"""Throughput of percli's DINOv2 backbone against timm's `vit_*_patch14_dinov2` (same weights, same process).

Workloads (images per second, median over timed steps, percli and timm interleaved):

* ``infer``       backbone forward under ``torch.inference_mode`` (the normalised class token).
* ``train_bb``    backbone forward + backward of a squared loss on all output tokens, AdamW step
                  (the issue's "backbone forward+backward" figure).

The official DINOv2 code is not installable here (it is a repository, not a package; it also pulls
xFormers), so timm, which carries the released weights under its own names, is the peer; the
script first checks both give the same class token. Issue target: ViT-L/14 at 224 px in bf16 on an
H200, where the official code does about 2,080 im/s inference (batch 256) and 656 im/s
forward+backward (batch 64); percli aims at 1.2x.

Examples:
    python benchmarks/dinov2_speed.py --model dinov2_vits14 --img-size 112 --batch-size 8 --steps 5
    python benchmarks/dinov2_speed.py --model dinov2_vitl14 --device cuda --dtype bf16 --batch-size 256
    python benchmarks/dinov2_speed.py --model dinov2_vitl14 --device cuda --dtype bf16 --batch-size 64 --only train_bb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from percli.models import create_model
from percli.models.dinov2 import convert_official_to_timm

sys.path.insert(0, str(Path(__file__).parent))
from hiera_speed import DTYPES, _autocast, _time_pair, _train_step, parse_timing_args  # noqa: E402  (shared timing helpers)

TIMM_NAMES = {"dinov2_vits14": "vit_small_patch14_dinov2", "dinov2_vitb14": "vit_base_patch14_dinov2",
              "dinov2_vitl14": "vit_large_patch14_dinov2", "dinov2_vitg14": "vit_giant_patch14_dinov2",
              "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2", "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
              "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2",
              "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2"}


def _infer(model, x, device, dtype, fn):
    def step():
        with torch.inference_mode(), _autocast(device, dtype):
            fn(model, x)

    return step


def _normed_tokens(out: dict) -> torch.Tensor:
    """percli's output dict -> all normalised tokens [B, 1 + R + L, C], as timm's forward_features."""
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], dim=1)


def run(args: argparse.Namespace) -> dict:
    import timm

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    ours = create_model(args.model, img_size=args.img_size).to(device).eval()
    ref = timm.create_model(TIMM_NAMES[args.model], pretrained=False, img_size=args.img_size).to(device).eval()
    ref.load_state_dict(convert_official_to_timm(ours.state_dict()), strict=True)
    B = args.batch_size
    x = torch.randn(B, 3, args.img_size, args.img_size, device=device)
    with torch.inference_mode():
        cls_ours = ours.forward_features(x)["x_norm_clstoken"]
        cls_ref = ref.forward_features(x)[:, 0]
    diff = (cls_ours - cls_ref).abs().max().item()

    def ours_cls(m, inp):
        return m.forward_features(inp)["x_norm_clstoken"]

    def ref_cls(m, inp):
        return m.forward_features(inp)[:, 0]

    results: dict[str, dict[str, float]] = {}
    if args.only in (None, "infer"):
        results["infer"] = _time_pair({"percli": _infer(ours, x, device, dtype, ours_cls),
                                       "ref": _infer(ref, x, device, dtype, ref_cls)},
                                      args.steps, args.warmup, device)
    if args.only in (None, "train_bb"):
        ours.train()
        ref.train()
        results["train_bb"] = _time_pair({
            "percli": _train_step(ours, lambda m: _normed_tokens(m.forward_features(x)).float().pow(2).mean(),
                                  device, dtype),
            "ref": _train_step(ref, lambda m: m.forward_features(x).float().pow(2).mean(), device, dtype),
        }, args.steps, args.warmup, device)
    table = {name: {"percli_im_s": B / secs["percli"], "ref_im_s": B / secs["ref"],
                    "ratio_percli_over_ref": secs["ref"] / secs["percli"]} for name, secs in results.items()}
    return {"model": args.model, "img_size": args.img_size, "batch_size": B, "device": str(device),
            "dtype": args.dtype, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "max_abs_cls_diff_vs_timm": diff, "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov2_vits14", choices=sorted(TIMM_NAMES))
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--only", choices=["infer", "train_bb"], default=None, help="run one workload")
    args = parse_timing_args(parser)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['model']} {out['img_size']} px  batch {out['batch_size']}  {out['device']} {out['dtype']}  "
          f"threads {out['threads']}  torch {out['torch']}  timm {out['timm']}  "
          f"(max |cls diff| vs timm {out['max_abs_cls_diff_vs_timm']:.2e})")
    print(f"{'workload':<10}{'percli im/s':>12}{'timm im/s':>11}{'percli/timm':>13}")
    for name, row in out["results"].items():
        print(f"{name:<10}{row['percli_im_s']:>12.1f}{row['ref_im_s']:>11.1f}{row['ratio_percli_over_ref']:>13.3f}")


if __name__ == "__main__":
    main()
