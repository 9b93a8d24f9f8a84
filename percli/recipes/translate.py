"""Translate sentences with a `percli pretrain ummt` run (`percli translate`), with or without an image.

Sentences come as arguments or one per line of ``--input``; ``--image`` gives the image's features (a ``.npy``
file of region or grid features [R, D], as ``features/<id>.npy`` of the training data) for every sentence. The
translations are printed one per line (``--json``: with the sources) and written to ``translations.txt``.

Examples:
  percli translate "a small red circle on the left" --checkpoint runs/pretrain-ummt-X --from en --to de
  percli translate --input captions.en --checkpoint runs/pretrain-ummt-X --from en --to de --beam 4 --json
  percli translate "ein großer blauer Stern" --checkpoint runs/pretrain-ummt-X --from de --to en \\
      --image features/test_00003.npy
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.images import BadSample
from percli.core.rundir import write_text_atomic
from percli.grounding.multi30k import FeatureStore
from percli.recipes.translation_eval import load_ummt, translate


@dataclasses.dataclass
class Config:
    texts: list[str] = dataclasses.field(default_factory=list)
    """Sentences to translate."""
    input: str | None = None
    """A text file, one sentence per line (empty lines skipped)."""
    checkpoint: str | None = None
    """A `percli pretrain ummt` run dir, checkpoint dir or .safetensors file."""
    source: str = "en"
    """Language of the sentences."""
    target: str = "de"
    """Language to translate into."""
    image: str | None = None
    """Features [R, D] of the image every sentence describes (.npy); none: text only."""
    beam: int = 1
    max_len: int = 48


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; give a `percli pretrain ummt` run (--checkpoint runs/pretrain-ummt-X)")
    if not cfg.texts and not cfg.input:
        raise ConfigError("texts: not set; give sentences as arguments or --input FILE")
    if cfg.input and not Path(cfg.input).expanduser().is_file():
        raise ConfigError(f"input: {cfg.input} is not a file")
    if cfg.source == cfg.target:
        raise ConfigError(f"source and target are both {cfg.source!r}: give two languages (--from en --to de)")
    if cfg.beam < 1:
        raise ConfigError(f"beam={cfg.beam}: give at least 1")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_ummt(cfg.checkpoint)
    for key, lang in (("source", cfg.source), ("target", cfg.target)):
        if lang not in meta["languages"]:
            raise ConfigError(f"{key}={lang!r}: the run translates between {', '.join(meta['languages'])}")
    texts = list(cfg.texts)
    if cfg.input:
        texts += [line.strip() for line in Path(cfg.input).expanduser().read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    regions = None
    if cfg.image:
        path = Path(cfg.image).expanduser()
        try:
            features = FeatureStore(path.parent, dim=int(meta["kwargs"]["region_dim"])).get(path.stem)
        except BadSample as e:
            raise ConfigError(f"image: {e.path}: {e.reason}; give a .npy of float features [R, "
                              f"{meta['kwargs']['region_dim']}]") from None
        regions = [features] * len(texts)
    out = translate(model.to(device), tokenizer, texts, cfg.source, cfg.target, cfg.max_len, device, regions,
                    cfg.beam)
    write_text_atomic(ctx.run_dir / "translations.txt", "".join(t + "\n" for t in out))
    return {"status": "completed", "checkpoint": cfg.checkpoint, "source": cfg.source, "target": cfg.target,
            "with_image": bool(cfg.image),
            "translations": [{"source": s, "translation": t} for s, t in zip(texts, out, strict=True)]}


def show_result(summary: dict[str, Any]) -> None:
    """The translations alone, one per line."""
    for row in summary["translations"]:
        print(row["translation"])
