"""Every image of the inputs is captioned from the image and its alt-text.

Inputs (--images, repeatable): a folder with records.jsonl, or .jsonl/.parquet/.tar shards (braces and
globs expand; quote them). Writes captions.jsonl ({key, alt_text, altogether} per image, input order),
parts/ (one file per chunk of --chunk-size records: the unit a --resume skips) and summary.json; with
--write-shards also shards/ (every input record plus its caption, in the input's format: JSONL field /
Parquet column `altogether`, tar member <key>.altogether.txt). Images that do not decode are counted
and listed, not fatal. Sampling is seeded per chunk, so a resumed run writes what an uninterrupted one
would; a --resume with other inputs, alt-text field, chunking or generation settings is refused.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from percli.captioning.batch_caption import GenerationOptions
from percli.core.config import ConfigError
from percli.core.context import RunContext

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class Config:
    images: list[str] = field(default_factory=list)
    """Folders with records.jsonl, or .jsonl/.parquet/.tar shards (brace and glob patterns expand)."""
    alt_text: str = "alt_text"
    """Record field / tar member extension of the alt-text (a tar sample without it falls back to .txt)."""
    checkpoint: str | None = None
    """A `percli finetune altogether` run dir, one of its checkpoints, or a .safetensors file."""
    batch_size: int = 32
    """Images captioned at a time."""
    chunk_size: int = 512
    """Records per part file: the unit a --resume skips."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """fp16 needs a GPU."""
    write_shards: bool = False
    """Also write each input with its captions into <output>/shards/."""
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    """Decoding: sample (official: temperature 0.2, top-p 0.7) | greedy | beam; max_new_tokens null = the
    checkpoint's max_target_len; the seed is combined with the chunk's position."""


def validate(cfg: Config) -> None:
    g = cfg.generation
    if not cfg.images:
        raise ConfigError("images: not set; pass --images with a folder holding records.jsonl or .jsonl/.parquet/"
                          ".tar shards")
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; pass --checkpoint with a `percli finetune altogether` run dir or "
                          "checkpoint")
    if not Path(cfg.checkpoint).exists():
        raise ConfigError(f"checkpoint: {cfg.checkpoint}: no such file or directory")
    for key, value in (("batch_size", cfg.batch_size), ("chunk_size", cfg.chunk_size),
                       ("generation.num_beams", g.num_beams), ("generation.max_new_tokens", g.max_new_tokens or 1)):
        if value < 1:
            raise ConfigError(f"{key}: got {value}; expected an integer >= 1")
    if g.strategy == "sample" and not (g.temperature > 0 and 0 < g.top_p <= 1):
        raise ConfigError(f"generation.temperature / generation.top_p: got {g.temperature} / {g.top_p}; sampling "
                          "needs temperature > 0 and 0 < top_p <= 1")
    from percli.captioning.batch_caption import resolve_inputs

    resolve_inputs(cfg.images)  # FileNotFoundError / ValueError naming the input


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch

    from percli.captioning.batch_caption import caption_shards, caption_transform, load_captioner, resolve_inputs

    if ctx.world > 1:
        raise ValueError("caption altogether runs as one process; start it without accelerate launch / torchrun")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.precision == "fp16" and device.type == "cpu":
        raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    inputs = resolve_inputs(cfg.images)
    model, meta = load_captioner(cfg.checkpoint)
    dtype = getattr(torch, PRECISIONS[cfg.precision])
    model = model.to(device, dtype)
    options = dataclasses.replace(cfg.generation, max_new_tokens=cfg.generation.max_new_tokens or model.max_target_len)
    started = time.time()
    summary = caption_shards(model, caption_transform(meta["preprocess"]), inputs, ctx.run_dir, cfg.alt_text,
                             cfg.batch_size, cfg.chunk_size, options, ctx.resume, device, dtype, log=ctx.log,
                             run_meta={"checkpoint": str(Path(cfg.checkpoint)), "precision": cfg.precision},
                             shards=cfg.write_shards, progress=ctx.progress)
    return {"status": "completed", **summary, "elapsed_s": round(time.time() - started, 2)}
