"""Methods by name: each recipe pairs a typed config with the task the engine runs.

A recipe module defines a config dataclass (defaults = the paper's recipe), presets (YAML files
under `percli/recipes/presets/<verb>-<method>/`) and a task class. Registering it here makes it a
command (`percli <verb> <method>`), a row of `percli ls recipes` and a `show-config` target.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError, apply_overrides, check_values, load_yaml, merge

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Recipe:
    verb: str
    method: str
    module: str
    summary: str
    default_preset: str | None = None
    """Preset applied when the user gives neither --preset nor --config."""

    def load(self) -> Any:
        return importlib.import_module(self.module)

    @property
    def preset_dir(self) -> Path:
        return PRESET_DIR / f"{self.verb}-{self.method}"

    def presets(self) -> list[str]:
        folder = self.preset_dir
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def resolve_config(self, preset: str | None = None, config_file: str | None = None,
                       overrides: list[str] | None = None, base: dict | None = None) -> Any:
        """Defaults -> preset -> `base` (e.g. a resumed run's config) -> --config FILE -> overrides."""
        cfg = self.load().Config()
        if preset is None and config_file is None and base is None:
            preset = self.default_preset
        if preset and preset != "none":
            path = self.preset_dir / f"{preset}.yaml"
            if not path.is_file():
                raise ConfigError(f"--preset {preset!r}: unknown for {self.method}; choose from "
                                  f"{', '.join(self.presets() + ['none'])}")
            cfg = merge(cfg, load_yaml(path))
        if base:
            cfg = merge(cfg, base)
        if config_file:
            cfg = merge(cfg, load_yaml(config_file))
        cfg = apply_overrides(cfg, overrides or [])
        check_values(cfg)
        return cfg


RECIPES: list[Recipe] = [
    Recipe("pretrain", "hiera-mae", "percli.recipes.hiera_mae",
           "Hiera masked-autoencoder pretraining, image or video (Ryali et al., ICML 2023)", "tiny"),
    Recipe("finetune", "hiera", "percli.recipes.hiera_classify",
           "Hiera image/video classification from an MAE checkpoint or from scratch", "tiny"),
    Recipe("pretrain", "audio-mae", "percli.recipes.audio_mae",
           "Audio-MAE pretraining on fbank spectrograms (Huang et al., NeurIPS 2022)", "tiny"),
    Recipe("finetune", "audio-mae", "percli.recipes.audio_classify",
           "Audio-MAE classification: multi-label (mAP, d-prime) or single-label (accuracy)", "tiny"),
    Recipe("pretrain", "voicecraft", "percli.recipes.voicecraft",
           "VoiceCraft codec-LM pretraining by token infilling on (audio, transcript) pairs (Peng et al., ACL 2024)",
           default_preset="tiny"),
    Recipe("pretrain", "clip", "percli.recipes.clip",
           "CLIP contrastive image-text pretraining, MetaCLIP recipe (Radford et al. 2021; Xu et al., ICLR 2024)",
           "tiny"),
    Recipe("pretrain", "dinov2", "percli.recipes.dinov2",
           "DINOv2 self-distillation pretraining: DINO + iBOT + KoLeo, multi-crop, EMA teacher (Oquab et al. 2023)",
           "tiny"),
    Recipe("finetune", "dinov2", "percli.recipes.dinov2_classify",
           "DINOv2 classification finetuning (linear head on cls + mean patch), any resolution by interpolation",
           "tiny"),
    Recipe("finetune", "altogether", "percli.recipes.altogether",
           "Altogether captioner: image + alt-text -> re-aligned caption, CLIP prefix + OPT (Xu et al., EMNLP 2024)",
           "tiny"),
    Recipe("eval", "zero-shot", "percli.recipes.zero_shot",
           "Zero-shot top-1/top-5 classification and image-text retrieval R@1/5/10 of a CLIP checkpoint", None),
    Recipe("eval", "classify", "percli.recipes.classify_eval",
           "Top-1/top-5 (or multi-label mAP) of a Hiera or Audio-MAE classifier checkpoint on a dataset", None),
    Recipe("eval", "knn", "percli.recipes.knn_eval",
           "Temperature-weighted k-NN top-1/top-5 of an image encoder's frozen features (DINO/DINOv2 eval)", None),
    Recipe("eval", "linear-probe", "percli.recipes.linear_probe",
           "Linear classifier on an image encoder's frozen features, best of a learning-rate sweep", None),
]


def get_recipe(verb: str, method: str) -> Recipe:
    for r in RECIPES:
        if r.verb == verb and r.method == method:
            return r
    known = ", ".join(f"{r.verb} {r.method}" for r in RECIPES)
    raise KeyError(f"no recipe {verb} {method}; available: {known}")


def find_method(method: str, verb: str | None = None) -> Recipe:
    """The recipe for a method name (for `show-config`); `verb` picks one when several verbs share it."""
    matches = [r for r in RECIPES if r.method == method and verb in (None, r.verb)]
    if not matches:
        known = ", ".join(sorted({r.method for r in RECIPES}))
        raise KeyError(f"unknown method {method!r}{f' for {verb}' if verb else ''}; available: {known}")
    if len(matches) > 1:
        verbs = " or ".join(f"--verb {r.verb}" for r in matches)
        raise KeyError(f"{method} is a method of several verbs; add {verbs}")
    return matches[0]
