"""`percli eval stylize --checkpoint RUN`: a soundscape model on held-out cross-scene items.

Each item's input is a held-out utterance recorded in one held-out scene and enhanced as the run trained; its hint
is another utterance in a second scene; its target is the input utterance recorded in the hint's scene. Scores
(`percli.tts.stylize`): RT60 error against the hint scene for the input, the stylized speech and the same model
with the hint zeroed; mel distance to the target; hint-match R@1. The scenes and utterances are the run's own
held-out ones: the data section is read from the run's ``config.yaml`` (defaults when the checkpoint is a bare
file). The RT60 estimator is trained on the run's training utterances (``rt60_estimator.safetensors`` in the run
dir), or read from ``--estimator``. ``summary.json`` holds the figures; ``stylize.png`` and ``samples/`` the
first items.

Examples:
  percli eval stylize --checkpoint runs/pretrain-soundscape-X --json
  percli eval stylize --checkpoint runs/pretrain-soundscape-X --guidance 1 --steps 100 \\
      --estimator runs/pretrain-soundscape-X/rt60_estimator.safetensors
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.recipes.soundscape import (
    SceneDataSection,
    StylizeSection,
    check_stylize,
    estimator_for,
    pairs,
    prepare_scenes,
)


@dataclasses.dataclass
class Config:
    checkpoint: str | None = None
    """A `percli pretrain soundscape` run dir, checkpoint dir or .safetensors."""
    stylize: StylizeSection = dataclasses.field(default_factory=StylizeSection)
    device: str | None = None
    """cuda / cpu (default: cuda when available)."""


def run_data_section(checkpoint: str) -> tuple[SceneDataSection, Path | None]:
    """The training run's data section (its config.yaml above the checkpoint), and that run dir."""
    path = Path(checkpoint).expanduser().resolve()
    for folder in (path, *path.parents)[:4]:
        config = folder / "config.yaml"
        if config.is_file():
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
            known = {f.name for f in dataclasses.fields(SceneDataSection)}
            section = SceneDataSection(**{k: v for k, v in data.items() if k in known})
            if not section.cache_dir:
                section.cache_dir = str(folder / "cache")
            return section, folder
    return SceneDataSection(), None


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; pass --checkpoint with a `percli pretrain soundscape` run")
    if not Path(cfg.checkpoint).expanduser().exists():
        raise ConfigError(f"checkpoint: {cfg.checkpoint} does not exist")
    if cfg.stylize.items < 2:
        raise ConfigError(f"stylize.items={cfg.stylize.items}: give at least 2 items (hint match ranks them)")
    check_stylize(cfg.stylize)


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    import torch

    from percli.tts.stylize import load_vocoder, score_and_save
    from percli.tts.stylize_job import load_model, run_towers

    model, meta = load_model(cfg.checkpoint)
    data, run_dir = run_data_section(cfg.checkpoint)
    scene_data = prepare_scenes(data, ctx.run_dir, None)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    s = cfg.stylize
    estimator = estimator_for(s, scene_data, ctx.run_dir)
    ctx.log(f"stylizing {s.items} held-out cross-scene items ({s.steps} DDIM steps, guidance {s.guidance_scale:g})")
    figures = score_and_save(model.to(device), pairs(data, scene_data, "val", s.items, cross=True), estimator,
                             ctx.run_dir, steps=s.steps, guidance_scale=s.guidance_scale, seed=s.seed, device=device,
                             vocoder=load_vocoder(s.vocoder), towers=run_towers(meta))
    return {"status": "completed", "checkpoint": cfg.checkpoint, "training_run": str(run_dir) if run_dir else None,
            **figures}
