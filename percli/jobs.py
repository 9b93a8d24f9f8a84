"""Every runnable job by name: the registry the CLI is generated from.

A job is a verb and a method (`percli pretrain hiera-mae`, `percli curate cit`), a module holding a
typed `Config` dataclass (defaults = the paper's recipe) and `run(cfg, ctx) -> summary`, presets
(YAML under `percli/presets/<verb>-<method>/`), and how its positional arguments and documented
flags map onto config keys. Everything else a run needs (presets, `--config`, dotted overrides,
`--dry-run`, `show-config`, the run dir, `config.yaml`/`env.json`/`summary.json`, `--json`,
`--resume`, the lock, exit codes) is the same for every job (see `percli.commands.run`).

This module imports no job module and no torch: `percli --help` and `percli ls` read only it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError, apply_overrides, check_values, load_yaml, merge

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Arg:
    """A command-line argument of a job and the config key it sets.

    Positional when `flags` is empty (`many`: any number of values, a list key). Otherwise an option
    (`flags` like ("--metadata", "-m")): a value, a switch (`switch`: true when given) or, with
    `many`, repeatable.
    """

    key: str
    flags: tuple[str, ...] = ()
    help: str = ""
    switch: bool = False
    many: bool = False
    metavar: str | None = None

    @property
    def positional(self) -> bool:
        return not self.flags


@dataclass(frozen=True)
class Job:
    verb: str
    method: str
    module: str
    summary: str
    default_preset: str | None = None
    """Preset applied when the user gives neither --preset nor --config."""
    args: tuple[Arg, ...] = ()
    engine: bool = False
    """Runs on the training engine (one Accelerator for the run) rather than as a data job."""
    output_flag: bool = False
    """Writes a data product: the run dir is `--output/-o` (as data tools name it), not `--run-dir`."""
    resumable: bool = True
    """Has a --resume (continues an interrupted run in its run dir)."""
    examples: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.verb} {self.method}".strip()

    def load(self) -> Any:
        return importlib.import_module(self.module)

    def doc(self) -> str:
        """The module's docstring, read without importing it (no torch for --help)."""
        spec = importlib.util.find_spec(self.module)
        source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
        return (ast.get_docstring(ast.parse(source)) or "") if source else ""

    @property
    def preset_dir(self) -> Path:
        return PRESET_DIR / f"{self.verb}-{self.method}"

    def presets(self) -> list[str]:
        folder = self.preset_dir
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def resolve_config(self, preset: str | None = None, config_file: str | None = None,
                       overrides: list[str] | None = None, base: dict | None = None,
                       given: dict[str, Any] | None = None) -> Any:
        """Defaults -> preset -> `base` (a resumed run's config) -> --config FILE -> the job's own
        arguments (`given`, a nested mapping) -> dotted overrides."""
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
        if given:
            cfg = merge(cfg, given, overlay=True)
        cfg = apply_overrides(cfg, overrides or [])
        check_values(cfg)
        return cfg


def _engine(verb: str, method: str, module: str, summary: str, default_preset: str | None = "tiny") -> Job:
    return Job(verb, method, f"percli.recipes.{module}", summary, default_preset, engine=True,
               resumable=verb != "eval")


JOBS: list[Job] = [
    _engine("pretrain", "hiera-mae", "hiera_mae",
            "Hiera masked-autoencoder pretraining, image or video (Ryali et al., ICML 2023)"),
    _engine("finetune", "hiera", "hiera_classify",
            "Hiera image/video classification from an MAE checkpoint or from scratch"),
    _engine("pretrain", "audio-mae", "audio_mae",
            "Audio-MAE pretraining on fbank spectrograms (Huang et al., NeurIPS 2022)"),
    _engine("finetune", "audio-mae", "audio_classify",
            "Audio-MAE classification: multi-label (mAP, d-prime) or single-label (accuracy)"),
    _engine("pretrain", "voicecraft", "voicecraft",
            "VoiceCraft codec-LM pretraining by token infilling on (audio, transcript) pairs (Peng et al., ACL 2024)"),
    _engine("pretrain", "clip", "clip",
            "CLIP contrastive image-text pretraining, MetaCLIP recipe (Radford et al. 2021; Xu et al., ICLR 2024)"),
    _engine("pretrain", "dinov2", "dinov2",
            "DINOv2 self-distillation pretraining: DINO + iBOT + KoLeo, multi-crop, EMA teacher (Oquab et al. 2023)"),
    _engine("finetune", "dinov2", "dinov2_classify",
            "DINOv2 classification finetuning (linear head on cls + mean patch), any resolution by interpolation"),
    _engine("finetune", "altogether", "altogether",
            "Altogether captioner: image + alt-text -> re-aligned caption, CLIP prefix + OPT (Xu et al., EMNLP 2024)"),
    _engine("eval", "zero-shot", "zero_shot",
            "Zero-shot top-1/top-5 classification and image-text retrieval R@1/5/10 of a CLIP checkpoint", None),
    _engine("eval", "classify", "classify_eval",
            "Top-1/top-5 (or multi-label mAP) of a Hiera or Audio-MAE classifier checkpoint on a dataset", None),
    _engine("eval", "knn", "knn_eval",
            "Temperature-weighted k-NN top-1/top-5 of an image encoder's frozen features (DINO/DINOv2 eval)", None),
    _engine("eval", "linear-probe", "linear_probe",
            "Linear classifier on an image encoder's frozen features, best of a learning-rate sweep", None),
]

JOBS += [
    Job("pretrain", "rwr-gae", "percli.graph.job",
        "GAE, VGAE and their random-walk-regularised versions RWR-GAE/RWR-VGAE (Vaibhav et al., arXiv 1908.04003)",
        resumable=False, args=(
            Arg("graph", ("--graph",), "cora, a .npz in the cora layout, or an edge-list text file."),
            Arg("features", ("--features",), "Node features for an edge list (.npz)."),
            Arg("labels", ("--labels",), "Classes for the clustering metrics: one integer per line."),
            Arg("model", ("--model",), "gae | vgae | rwr-gae | rwr-vgae | all."),
            Arg("seeds", ("--seeds",), "Number of seeds (split, weights, walks, k-means)."),
            Arg("seed", ("--seed",), "First seed; the runs use seed, seed+1, ..."),
            Arg("train.epochs", ("--epochs",), "Training epochs (full-batch)."),
            Arg("train.walk_length", ("--walk-length",), "Nodes per random walk."),
            Arg("train.window_size", ("--window-size",), "Skip-gram window within a walk; 0 = the start node with "
                "every later node (the early RWR-GAE code's default)."),
            Arg("train.number_walks", ("--number-walks",), "Walks per epoch."),
            Arg("train.lr_dw", ("--lr-dw",), "Adam learning rate of the skip-gram context vectors."),
            Arg("train.negative", ("--negative",), "Negative samples per pair; 0 = full softmax (the paper)."),
            Arg("train.walk_weight", ("--walk-weight",), "Scale of the walk loss's gradient (0 = plain GAE)."),
            Arg("save_embeddings", ("--save-embeddings",), "Save mu of every model and seed.", switch=True),
        ), examples=("percli pretrain rwr-gae --graph cora --model all --seeds 5",)),
]

# --- curation jobs (curate metaclip run|match|count|balance|build-metadata, cit, mode, text-quality) ---
JOBS += []

# --- captioning and speech jobs (caption altogether, eval caption, tts edit|synthesize) ---
JOBS += []

# --- selection, search, conversion and AV-SUPERB jobs (select run|simulate, search-arch, convert, eval av-superb) ---
JOBS += []

VERB_HELP = {
    "pretrain": "Self-supervised pretraining (MAE, ...).",
    "finetune": "Supervised finetuning of pretrained encoders.",
    "eval": "Evaluate checkpoints.",
    "curate": "Curate image-text data (MetaCLIP, CiT, MoDE, text quality).",
}


def get_job(verb: str, method: str) -> Job:
    for job in JOBS:
        if job.verb == verb and job.method == method:
            return job
    known = ", ".join(job.name for job in JOBS)
    raise KeyError(f"no job {verb} {method}; available: {known}")


def find_method(method: str, verb: str | None = None) -> Job:
    """The job of a method name (for `show-config`); `verb` picks one when several verbs share it."""
    wanted = method.replace(" ", "-")  # `metaclip run` or `metaclip-run`; a top-level job by its verb
    matches = [job for job in JOBS if (job.method or job.verb).replace(" ", "-") == wanted and verb in (None, job.verb)]
    if not matches:
        known = ", ".join(sorted({job.method for job in JOBS}))
        raise KeyError(f"unknown method {method!r}{f' for {verb}' if verb else ''}; available: {known}")
    if len(matches) > 1:
        verbs = " or ".join(f"--verb {job.verb}" for job in matches)
        raise KeyError(f"{method} is a method of several verbs; add {verbs}")
    return matches[0]
