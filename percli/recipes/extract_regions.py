"""Grid features of images with a frozen percli image encoder (`percli extract regions`): the region input of the
grounding recipes (MHA-VSE, UMMT) when no detector's region features are at hand.

Each image goes through the encoder's evaluation preprocessing (resize + centre crop, its normalisation) and
forward; a hook reads the output tokens of block ``layer`` (default the last: CLIP / PE's `visual` blocks,
DINOv2's; Hiera is refused: its tokens are in mask-unit order). The patch tokens, laid out on their grid, are
average-pooled to ``grid`` x ``grid`` cells (0 keeps the model's own grid), and one global row follows (the
class token where the tower has one, else the patch mean): ``OUT/features/<image id>.npy``, float32
[grid * grid + 1, C], what `percli.grounding.multi30k.FeatureStore` reads (the image id is the file stem, as
Multi30K's image lists name them). Each file is written under a temporary name and renamed; ``--resume``
skips the files already there; under ``accelerate launch`` each process takes every N-th image. Unreadable
images are skipped and counted.

Examples:
  percli extract regions /data/flickr30k-images --checkpoint runs/pe-core-B16 --grid 7 -o /data/multi30k
  accelerate launch --num_processes 4 -m percli.cli extract regions /data/flickr30k-images \\
      --checkpoint runs/dinov2-vitb14 -o /data/multi30k --resume
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from percli.core import dist
from percli.core.checkpoint import run_weights
from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data import IMAGE_EXTENSIONS, BadSample
from percli.core.data.images import load_rgb
from percli.recipes.classification import eval_preprocess
from percli.recipes.common import DataSection, ModelSection
from percli.recipes.inpaint import media_files
from percli.recipes.knn_eval import FeatureSection, build_encoder, encode
from percli.recipes.layer_features import encoder_blocks, parse_layers, pool_tokens, prefix_tokens, tapped


@dataclasses.dataclass
class Config:
    inputs: list[str] = dataclasses.field(default_factory=list)
    """Image files and/or folders."""
    checkpoint: str | None = None
    """The frozen encoder: a percli run dir, checkpoint or .safetensors of a ViT image model (CLIP / PE, DINOv2),
    or an hf-hub: release."""
    grid: int = 7
    """Cells per side of the pooled grid (7: 49 regions, as ResNet grid features); 0 keeps the model's grid."""
    layer: int = -1
    """Block whose output tokens are read (negative counts from the end)."""
    batch_size: int = 32


def grid_regions(tokens: torch.Tensor, prefix: int, grid: int) -> torch.Tensor:
    """A block's output [B, N, C] (or [B, ..., C]) -> [B, cells + 1, C]: the patch tokens on their square grid,
    pooled to `grid` x `grid` (0: as they are), then the global row (`pool_tokens`'s ``auto``)."""
    flat = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
    patches = flat[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid: this encoder's tokens cannot "
                         "be laid out as an image")
    cells = patches
    if grid:
        square = patches.transpose(1, 2).reshape(len(patches), -1, side, side)  # [B, C, side, side]
        cells = F.adaptive_avg_pool2d(square, grid).flatten(2).transpose(1, 2)  # [B, grid*grid, C]
    return torch.cat([cells, pool_tokens(flat, prefix, "auto")[:, None]], dim=1)


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; give the frozen image encoder (--checkpoint runs/clip-X)")
    if not cfg.inputs:
        raise ConfigError("inputs: not set; give image files or folders")
    if cfg.grid < 0 or cfg.batch_size < 1:
        raise ConfigError(f"grid={cfg.grid}, batch_size={cfg.batch_size}: need grid >= 0 and batch_size >= 1")


def _written(path: Path) -> bool:
    try:
        np.load(path, mmap_mode="r", allow_pickle=False)
        return True
    except (OSError, ValueError):
        return False


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local = Path(cfg.checkpoint).expanduser()
    weights = str(run_weights(local)) if local.exists() else cfg.checkpoint  # a run dir: its latest checkpoint
    model, meta = build_encoder(ModelSection(name=None, checkpoint=weights))
    model.to(device)
    transform = eval_preprocess(model.preprocess, DataSection(), meta).eval_transform()
    try:
        layer = parse_layers(str(cfg.layer), len(encoder_blocks(model)))[0]
    except ValueError as e:
        raise ConfigError(f"layer: {e}") from None
    if type(model).__name__.startswith("Hiera"):
        raise ConfigError("checkpoint: an image Hiera keeps its tokens in mask-unit order, not on the image grid; "
                          "give a ViT (CLIP / PE, DINOv2)")
    prefix = prefix_tokens(model)
    files = media_files(cfg.inputs, IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"inputs: no image file in {cfg.inputs}")
    out = ctx.run_dir / "features"
    out.mkdir(parents=True, exist_ok=True)
    mine = files[ctx.rank::ctx.world]
    todo = [f for f in mine if not (ctx.resume and _written(out / f"{f.stem}.npy"))]
    bad: list[dict[str, str]] = []
    written = 0
    with ctx.progress("extract regions", len(todo), "images") as bar, torch.no_grad():
        for start in range(0, len(todo), cfg.batch_size):
            batch, names = [], []
            for path in todo[start:start + cfg.batch_size]:
                try:
                    batch.append(transform(load_rgb(str(path))))
                    names.append(path.stem)
                except BadSample as e:
                    bad.append({"file": str(path), "reason": e.reason})
                bar.advance(1)
            if not batch:
                continue
            with tapped(model, [layer]) as seen:
                encode(model, torch.stack(batch).to(device), FeatureSection())
            regions = grid_regions(seen[layer], prefix, cfg.grid).float().cpu().numpy()
            for name, rows in zip(names, regions, strict=True):
                tmp = out / f".{name}.tmp.npy"
                np.save(tmp, np.ascontiguousarray(rows, dtype=np.float32), allow_pickle=False)
                tmp.replace(out / f"{name}.npy")
                written += 1
    totals = dist.all_reduce_sum(np.array([written, len(mine) - len(todo)]), ctx.world).tolist()
    bad = [b for rank_bad in dist.all_gather(bad, ctx.world) for b in rank_bad]
    return {"status": "completed", "checkpoint": cfg.checkpoint, "encoder": meta.get("name"), "layer": layer,
            "grid": cfg.grid, "images": len(files), "written": int(totals[0]), "resumed": int(totals[1]),
            "features": str(out), "run_dir": str(ctx.run_dir), "bad_inputs": {"count": len(bad), "files": bad}}
