"""Frozen features of any block of an image encoder, and the layer-vs-accuracy sweep (the Perception Encoder
paper's layer analysis: the best general features often sit in the middle of the network).

The image tower's blocks are its repeated blocks outside a decoder (Hiera's `blocks`, DINOv2's, CLIP/PE's
`visual.transformer.resblocks`, Audio-MAE's encoder `blocks`). A forward hook reads each chosen block's
output tokens [B, N, C] during the encoder's usual forward; a layer's feature is then pooled:
`cls` takes the class token (token 0), `mean` averages the other tokens (patch tokens; DINOv2's registers
left out), `auto` is `cls` where the tower has a class token and `mean` otherwise (Hiera, PE-G). No final
norm is applied to an intermediate block's tokens (PE's `forward_features(norm=False)` default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from percli.core import chart


def image_tower(model: nn.Module) -> nn.Module:
    """The image encoder of a model (a CLIP/PE model's `visual`, else the model itself)."""
    return getattr(model, "visual", None) or model


def encoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The image tower's blocks in order (ModuleList members with submodules, decoders left out)."""
    blocks = []
    for name, module in image_tower(model).named_modules():
        if isinstance(module, nn.ModuleList) and "decoder" not in name:
            blocks += [b for b in module if not isinstance(b, nn.ModuleList) and any(True for _ in b.children())]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no encoder blocks to read features from")
    return blocks


def prefix_tokens(model: nn.Module) -> int:
    """How many tokens precede the patch tokens in a block's output (class token, registers)."""
    tower = image_tower(model)
    if hasattr(tower, "num_prefix_tokens"):  # DINOv2: cls + registers
        return int(tower.num_prefix_tokens)
    if getattr(tower, "use_cls_token", None) is not None:  # PE: G has none
        return int(bool(tower.use_cls_token))
    return int(hasattr(tower, "cls_token") or hasattr(tower, "class_embedding"))


def parse_layers(spec: str, depth: int) -> list[int]:
    """`all`, or comma-separated block indices (0-based; negative counts from the end) -> sorted indices."""
    if spec.strip() == "all":
        return list(range(depth))
    try:
        chosen = {int(part) for part in spec.split(",") if part.strip()}
    except ValueError:
        raise ValueError(f"layers={spec!r}: give `all` or comma-separated block indices, e.g. 0,4,8,-1") from None
    wrong = sorted(k for k in chosen if not -depth <= k < depth)
    if wrong or not chosen:
        raise ValueError(f"layers={spec!r}: the encoder has {depth} blocks (indices 0..{depth - 1}, or -1..-{depth})")
    return sorted({k % depth for k in chosen})


def pool_tokens(tokens: torch.Tensor, prefix: int, pool: str) -> torch.Tensor:
    """[B, ..., C] block output -> [B, C] (see the module docstring for `pool`)."""
    tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
    if pool == "auto":
        pool = "cls" if prefix else "mean"
    if pool == "cls":
        if not prefix:
            raise ValueError("features.pool=cls: this encoder has no class token; use mean (or auto)")
        return tokens[:, 0]
    return tokens[:, prefix:].mean(dim=1)


@contextmanager
def tapped(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """While open, each forward of the model fills {layer: that block's output tokens}."""
    blocks = encoder_blocks(model)
    seen: dict[int, torch.Tensor] = {}
    hooks = [blocks[k].register_forward_hook(
        lambda _m, _i, out, k=k: seen.__setitem__(k, out[0] if isinstance(out, tuple) else out)) for k in layers]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def layer_features(model: nn.Module, forward: Callable[[], Any], layers: Sequence[int],
                   pool: str) -> dict[int, torch.Tensor]:
    """{layer: pooled features [B, C]} of one batch; `forward()` runs the encoder on it."""
    prefix = prefix_tokens(model)
    with tapped(model, layers) as seen:
        forward()
    return {k: pool_tokens(seen[k], prefix, pool) for k in layers}


def layer_chart(rows: Sequence[dict[str, Any]], metric: str, title: str, path: Path) -> Path:
    """Top-1 (%) per block index: the layer analysis figure."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = chart.line_chart(title, "encoder block (0 = first)", f"{metric.replace('top1', 'top-1')} (%)")
    ax.plot([r["layer"] for r in rows], [100 * r[metric] for r in rows], marker="o", color=chart.PALETTE[0])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.15)  # room for the label above the best point
    best = max(rows, key=lambda r: r[metric])
    ax.annotate(f"best: block {best['layer']}", (best["layer"], 100 * best[metric]), textcoords="offset points",
                xytext=(0, 8), ha="center")
    return chart.save_png(fig, path)


def sweep(f: dict[str, Any], score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]], metric: str,
          title: str, run_dir: Path, draw: bool = True) -> dict[str, Any]:
    """Score every swept layer's features (`f` from `frozen_features(..., layers=...)`): the table rows,
    flat metrics (`layer<K>/<name>`, `best_layer`, `best/<name>`) and the chart `layers.png`."""
    rows = [{"layer": k, **score(f["train_x"][k], f["val_x"][k])} for k in f["layers"]]
    best = max(rows, key=lambda r: r[metric])
    metrics: dict[str, Any] = {f"layer{r['layer']}/{name}": v for r in rows for name, v in r.items() if name != "layer"}
    metrics.update({"best_layer": best["layer"], **{f"best/{n}": v for n, v in best.items() if n != "layer"}})
    out: dict[str, Any] = {"layers": rows, "metrics": metrics}
    if draw:
        out["chart"] = str(layer_chart(rows, metric, title, run_dir / "layers.png"))
    return out
