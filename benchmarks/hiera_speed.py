"""Throughput of percli's Hiera against timm's `hiera_*` (same config, same weights, same process).

Workloads (images per second, median over timed steps, percli and reference interleaved so
frequency drift and caches hit both alike):

* ``infer``        eval forward under ``torch.inference_mode`` (logits).
* ``train_cls``    supervised step: forward, cross-entropy, backward, AdamW step.
* ``train_masked`` sparse encoder step as in MAE: 60% of mask units dropped, forward to the last
                   block, a squared loss, backward, AdamW step (timm's ``forward_features(x, mask)``).
* ``train_mae``    percli's full MAE step (encoder + fusion + decoder + loss); compared with the
                   official ``hiera`` package only when it is importable (it is not vendored here).

Example:
    python benchmarks/hiera_speed.py --model hiera_tiny_224 --batch-size 8 --steps 10 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from percli.models import create_model
from percli.models.hiera import convert_official_to_timm

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pair(steps: dict[str, Callable[[], None]], n: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call for each callable, calls interleaved round by round."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _infer_step(model, x, device, dtype, logits_kw):
    def step():
        with torch.inference_mode(), _autocast(device, dtype):
            model(x, **logits_kw)

    return step


def _train_step(model, loss_fn, device, dtype):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with _autocast(device, dtype):
            loss = loss_fn(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _official_mae(name: str):
    try:
        import hiera  # the official package, only if the user installed it
    except ImportError:
        return None
    factory = getattr(hiera, name, None)
    return factory() if factory is not None else None


def parse_timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Add the options every speed script shares (batch size, timed and warm-up steps, device, dtype,
    CPU threads, --json), parse the command line and apply --threads."""
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per workload")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def run(args: argparse.Namespace) -> dict:
    import timm

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    ours = create_model(args.model).to(device)
    ref = None
    if args.model in timm.list_models("hiera_*"):  # timm has the image variants only
        ref = timm.create_model(args.model, pretrained=False).to(device)
        ref.load_state_dict(convert_official_to_timm(ours.state_dict()), strict=True)
    B = args.batch_size
    x = torch.randn(B, 3, *ours.input_size, device=device)
    labels = torch.randint(0, ours.config["num_classes"], (B,), device=device)
    mask = ours.get_random_mask(x, 0.6, generator=torch.Generator(device=device).manual_seed(0))
    results: dict[str, dict[str, float]] = {}

    def pair(ours_step, ref_step) -> dict[str, Callable[[], None]]:
        return {"percli": ours_step} if ref is None else {"percli": ours_step, "ref": ref_step()}

    for model in (ours, ref):
        if model is not None:
            model.eval()
    diff = None
    if ref is not None:
        with torch.inference_mode():
            diff = (ours(x, return_logits=True) - ref(x)).abs().max().item()
    results["infer"] = _time_pair(pair(_infer_step(ours, x, device, dtype, {"return_logits": True}),
                                       lambda: _infer_step(ref, x, device, dtype, {})), args.steps, args.warmup, device)

    for model in (ours, ref):
        if model is not None:
            model.train()
    results["train_cls"] = _time_pair(pair(
        _train_step(ours, lambda m: F.cross_entropy(m(x, return_logits=True).float(), labels), device, dtype),
        lambda: _train_step(ref, lambda m: F.cross_entropy(m(x).float(), labels), device, dtype),
    ), args.steps, args.warmup, device)
    results["train_masked"] = _time_pair(pair(
        _train_step(ours, lambda m: m(x, mask=mask).float().pow(2).mean(), device, dtype),
        lambda: _train_step(ref, lambda m: m.forward_features(x, mask=mask).float().pow(2).mean(), device, dtype),
    ), args.steps, args.warmup, device)

    mae = create_model("mae_" + args.model).to(device).train()
    mae_steps = {"percli": _train_step(mae, lambda m: m(x, mask=mask)[0], device, dtype)}
    official = _official_mae("mae_" + args.model)
    if official is not None:
        official.load_state_dict(mae.state_dict(), strict=True)
        official = official.to(device).train()
        mae_steps["ref"] = _train_step(official, lambda m: m(x, mask=mask)[0], device, dtype)
    results["train_mae"] = _time_pair(mae_steps, args.steps, args.warmup, device)

    table = {}
    for workload, secs in results.items():
        row = {f"{k}_im_s": B / v for k, v in secs.items()}
        if "ref" in secs:
            row["ratio_percli_over_ref"] = secs["ref"] / secs["percli"]
        table[workload] = row
    return {"model": args.model, "batch_size": B, "steps": args.steps, "device": str(device),
            "dtype": args.dtype, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "max_abs_logit_diff_vs_timm": diff,
            "reference": {**dict.fromkeys(["infer", "train_cls", "train_masked"], "timm" if ref else "none"),
                          "train_mae": "official hiera" if official is not None else "none"},
            "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hiera_tiny_224", help="image variant known to both percli and timm")
    args = parse_timing_args(parser)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['model']}  batch {out['batch_size']}  {out['device']} {out['dtype']}  threads {out['threads']}  "
          f"torch {out['torch']}  timm {out['timm']}  "
          f"(max |logit diff| vs timm {out['max_abs_logit_diff_vs_timm']})")
    print(f"{'workload':<14}{'percli im/s':>12}{'ref im/s':>10}{'percli/ref':>12}  reference")
    for name, row in out["results"].items():
        ref = row.get("ref_im_s")
        ratio = row.get("ratio_percli_over_ref")
        print(f"{name:<14}{row['percli_im_s']:>12.1f}{(f'{ref:.1f}' if ref else '-'):>10}"
              f"{(f'{ratio:.3f}' if ratio else '-'):>12}  {out['reference'][name]}")


if __name__ == "__main__":
    main()
