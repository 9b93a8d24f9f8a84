"""How a classifier's metric falls under adversarial perturbations of its audio, its video or both: a curve over eps
(after Li, Ma, Qu, Huang, Metze, "Audio-Visual Event Recognition through the lens of Adversary", ICASSP 2021).

`checkpoint` is a percli classifier run, checkpoint dir or .safetensors: `percli finetune av-fusion` (audio and
video), `finetune mavil` in its fused layout (audio and video), `finetune audio-mae` (fbank) or `finetune hiera`
(video, or an image: attacked as `video`). The attack (`percli.core.adversarial`) ascends the loss of the true
labels (binary cross-entropy for multi-label data, cross-entropy for single-label): `attack.method=fgsm` (one step
of size eps) or `pgd` (`attack.steps` steps of `attack.step_size` x eps, optionally from a random point of the
ball), each step and ball in `attack.norm` (linf, l2, l1). `attack.universal=true` optimises ONE perturbation for
the whole evaluation set (the paper's `delta_global`: `attack.steps` passes over the set, one step per batch),
then evaluates with it; otherwise every clip gets its own.

`attack.modality`: audio, video or both (every input the classifier has); the other input stays clean. Each
attacked input has its own feature range, the min to max of its clean values over the evaluation set (measured in a
first pass, with the clean metric), and the adversarial input is clamped to it. `attack.eps` is per value, as a
fraction of that range: the L-inf ball has radius eps x range, the L2 ball eps x range x sqrt(n) and the L1 ball
eps x range x n for n values per example (the balls that an L-inf perturbation of eps x range at every value
reaches), so one eps means perturbations of the same average size whatever the norm and the input's size.

Data: `data.source` unset evaluates the classifier's own held-out data, read from its run's config.yaml (its
`data.val_source`, or its embedded held-out split at its `data.embedded_size`); else `embedded` or a file in the
classifier's layout. Written: `curve.json` (eps -> metric: top-1 for single-label data, mAP for multi-label, and
the clean value), `curve.png` and summary.json. Keep them with `--run-dir` (an eval job's run dir is temporary).

Examples:
  percli eval adversarial checkpoint=runs/av-middle attack.modality=audio --run-dir runs/av-middle-audio
  percli eval adversarial checkpoint=runs/av-middle attack.norm=l2 "attack.eps=[0.01,0.02,0.05]" --json
  percli eval adversarial checkpoint=runs/av-late attack.universal=true attack.modality=both --run-dir runs/uap
  percli eval adversarial checkpoint=runs/finetune-audio-mae-X attack.method=fgsm data.source=/data/esc50/val.jsonl
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from accelerate.utils import gather_object
from torch.utils.data import Dataset

from percli.core import adversarial, chart
from percli.core.checkpoint import read_meta, run_weights
from percli.core.config import ConfigError, TrainConfig, load_yaml, merge
from percli.core.context import RunContext
from percli.core.data.labelled_av import LabelSet
from percli.core.engine import BadInputLog, evaluate
from percli.core.rundir import write_json_atomic
from percli.models import load_run_model
from percli.recipes.audio_classify import audio_eval_reduce
from percli.recipes.audio_common import AudioDataSection, audio_dataset, eval_audio_section
from percli.recipes.av_fusion import AVFusionDataSection, EmbeddedSingleEvents, av_clips, av_items, label_scores
from percli.recipes.classification import classification_dataset, eval_preprocess
from percli.recipes.common import DataSection, is_video
from percli.recipes.mavil_classify import EmbeddedEventClips

Inputs = dict[str, torch.Tensor]


@dataclasses.dataclass
class AttackSection:
    method: Literal["pgd", "fgsm"] = "pgd"
    """pgd: `steps` projected ascent steps; fgsm: one step of size eps."""
    norm: Literal["linf", "l2", "l1"] = "linf"
    """The norm of the steps and of the ball (l1: sparse steps on the top 5 % of values, exact projection)."""
    eps: list[float] = dataclasses.field(default_factory=lambda: [0.005, 0.01, 0.02, 0.04, 0.08])
    """Ball sizes, per value, as fractions of each attacked input's feature range (module docstring); one curve
    point each, besides the clean value."""
    steps: int = 20
    """PGD steps (universal: passes over the evaluation set, one step per batch). The official run: 20."""
    step_size: float = 0.25
    """Each step's length as a fraction of eps (the official run steps by eps itself, 1.0; a shorter step with
    20 steps searches the ball more finely)."""
    random_start: bool = False
    """PGD starts from a random point of the ball instead of the clean input."""
    modality: Literal["audio", "video", "both"] = "both"
    """The input(s) to perturb; both = every input the classifier has (the others stay clean)."""
    universal: bool = False
    """One perturbation for the whole evaluation set (the paper's delta_global) instead of one per clip."""


@dataclasses.dataclass
class AttackDataSection:
    source: str | None = None
    """null: the classifier run's own held-out data (its config.yaml); else `embedded` or a file in its layout."""
    embedded_size: int | None = None
    """Embedded data: clips in the training split (the held-out split attacked has a quarter); null: the run's."""
    label_csv: str | None = None
    """Class CSV (index,mid,display_name) of AST-style JSON audio or AudioSet data; null: the run's."""
    media_dir: str | None = None
    """Audio-video CSVs naming clips by id: where the clips are; null: the run's, else the CSV's folder."""


@dataclasses.dataclass
class Config:
    checkpoint: str = ""
    """A percli classifier run dir, checkpoint dir or .safetensors (av-fusion, mavil, audio-mae, hiera)."""
    attack: AttackSection = dataclasses.field(default_factory=AttackSection)
    data: AttackDataSection = dataclasses.field(default_factory=AttackDataSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32))
    """Only batch_size, num_workers, cpu and seed (PGD's random starts) are used."""


@dataclasses.dataclass
class Victim:
    """A loaded classifier (eval mode, frozen) and what the attack needs to know about it."""

    task: str
    model: nn.Module
    dataset: Dataset
    source: str
    inputs: dict[str, str]
    """Modality -> the batch key of its input."""
    forward: Callable[[nn.Module, Inputs], torch.Tensor]
    """(model, inputs by modality) -> logits."""
    multilabel: bool


VICTIM_COMMANDS = {"av-fusion": "percli finetune av-fusion", "mavil-classify": "percli finetune mavil",
                   "audio-classify": "percli finetune audio-mae", "classify": "percli finetune hiera"}
"""Checkpoint tasks the attack reads, and the command that makes each."""
RUN_DATA_KEYS = ("embedded_size", "label_csv", "media_dir", "format", "num_frames", "sampling_rate", "mean", "std")
"""What the attack takes from the classifier run's data section, besides its held-out source."""


def _section(cls: type, data: dict[str, Any]) -> Any:
    """A data section of `cls` with the entries of `data` it has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return merge(cls(), {k: v for k, v in data.items() if k in names})


def _av_dataset(model: nn.Module, meta: dict[str, Any], data: dict[str, Any], embedded: type) -> Dataset:
    section = _section(AVFusionDataSection, data)
    classes = list(meta["classes"])
    labels = LabelSet.from_csv(section.label_csv) if section.label_csv else \
        LabelSet(tuple(classes), {name: i for i, name in enumerate(classes)})
    return av_items(av_clips(section, section.source, "test", labels, meta["multilabel"], embedded), model)


def _victim(meta: dict[str, Any], model: nn.Module, data: dict[str, Any]) -> Victim:
    """The model of a `VICTIM_COMMANDS` checkpoint with its evaluation data, prepared as it was trained."""
    task, source, av = meta["task"], data["source"], {"audio": "fbank", "video": "video"}
    if task == "av-fusion":
        return Victim(task, model, _av_dataset(model, meta, data, EmbeddedSingleEvents), source, av,
                      lambda m, x: m(x["audio"], x["video"]), meta["multilabel"])
    if task == "mavil-classify":
        return Victim(task, model, _av_dataset(model, meta, data, EmbeddedEventClips), source, av,
                      lambda m, x: m(x["audio"][:, None], x["video"]), meta["multilabel"])  # [B, T, F] -> [B, 1, T, F]
    if task == "audio-classify":
        size = data.get("embedded_size") or AudioDataSection().embedded_size
        audio = eval_audio_section(model, meta, source, data.get("label_csv"), size)
        return Victim(task, model, audio_dataset(audio, source, "val", train=False), source, {"audio": "fbank"},
                      lambda m, x: m(x["audio"]), bool(meta.get("multilabel", False)))
    section = _section(DataSection, data)  # "classify": a Hiera image or video classifier, as `eval classify` reads it
    video = is_video(model)
    if section.mean is None and meta.get("mean"):
        section = dataclasses.replace(section, mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    dataset = classification_dataset(source, "val", False, section, tuple(meta.get("input_size") or
                                     model.config["input_size"]), video, classes=meta.get("classes"),
                                     preprocess=None if video else eval_preprocess(model.preprocess, section, meta))
    return Victim(task, model, dataset, source, {"video": "video" if video else "image"}, lambda m, x: m(x["video"]),
                  False)


def _run_data(weights: Path) -> dict[str, Any]:
    """The `data` section of the run a checkpoint belongs to (its config.yaml), or {} for a loose file."""
    for folder in (weights, *list(weights.parents)[:3]):
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            data = load_yaml(folder / "config.yaml").get("data")
            return dict(data) if isinstance(data, dict) else {}
    return {}


def load_victim(cfg: Config) -> Victim:
    """The classifier of `cfg.checkpoint` with its evaluation data (module docstring); a ConfigError naming the key
    for a missing checkpoint, one that is not a classifier the attack reads, or no data to attack."""
    try:
        weights = run_weights(cfg.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"checkpoint: {e}") from None
    meta = read_meta(weights)
    task = meta.get("task")
    if task not in VICTIM_COMMANDS:
        raise ConfigError(f"checkpoint: {weights} is a {task or 'non-percli'} checkpoint, not a classifier; give a "
                          f"run of {', '.join(VICTIM_COMMANDS.values())}")
    if task == "mavil-classify" and meta.get("modality") != "av":  # its checkpoint holds one tower
        raise ConfigError(f"checkpoint: {weights} is a MAViL {meta.get('modality')} tower alone; the attack reads "
                          "the fused layout (percli finetune mavil modality=av)")
    run = _run_data(weights)
    data = {k: v for k, v in run.items() if k in RUN_DATA_KEYS}
    data.update({k: v for k, v in dataclasses.asdict(cfg.data).items() if v is not None})
    if "source" not in data:
        held_out = run.get("val_source") or (run.get("source") if run.get("source") == "embedded" else None)
        if held_out is None:
            raise ConfigError(f"data.source: not set, and {weights} has no run config.yaml naming held-out data; "
                              "give data.source=embedded or a file in the classifier's layout")
        data["source"] = held_out
    model, meta = load_run_model(weights, task, VICTIM_COMMANDS[task])
    return _victim(meta, model.requires_grad_(False), data)


def attacked_modalities(victim: Victim, modality: str) -> tuple[str, ...]:
    """The inputs `attack.modality` names (both: every input the classifier has)."""
    if modality == "both":
        return tuple(victim.inputs)
    if modality not in victim.inputs:
        raise ConfigError(f"attack.modality={modality}: the {victim.task} checkpoint's classifier has no {modality} "
                          f"input (it takes {' and '.join(victim.inputs)}); use {' or '.join(victim.inputs)} or both")
    return (modality,)


# ------------------------------------------------------------------------------------ passes over the eval set


class _Pass:
    """One `evaluate` pass over the evaluation set with the victim's inputs, labels and attack loss at hand."""

    def __init__(self, victim: Victim, attacked: tuple[str, ...]):
        self.victim, self.attacked = victim, attacked

    def inputs(self, batch: dict[str, Any]) -> Inputs:
        return {m: batch[key] for m, key in self.victim.inputs.items()}

    def loss_fn(self, model: nn.Module, batch: dict[str, Any]) -> adversarial.LossFn:
        labels = batch["target"] if self.victim.multilabel else batch["label"]
        return lambda x: adversarial.attack_loss(self.victim.forward(model, x), labels, self.victim.multilabel)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, Any]:
        return audio_eval_reduce(totals, self.victim.multilabel)


class CleanPass(_Pass):
    """The clean metric, and each attacked input's feature range: [min, max] of its values over the set."""

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        x = self.inputs(batch)
        out = label_scores(self.victim.forward(model, x), batch, self.victim.multilabel)
        for m in self.attacked:  # one-value tensors: concatenated over batches (and ranks), reduced below
            out[f"low/{m}"], out[f"high/{m}"] = x[m].amin().float().view(1), x[m].amax().float().view(1)
        return out

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, Any]:
        ranges = {m: (float(totals.pop(f"low/{m}").min()), float(totals.pop(f"high/{m}").max()))
                  for m in self.attacked}
        return {**super().eval_reduce(totals), "range": ranges}


class _AttackedPass(_Pass):
    def __init__(self, victim: Victim, attacked: tuple[str, ...], attack: AttackSection, eps: float,
                 bounds: adversarial.Bounds):
        super().__init__(victim, attacked)
        self.attack, self.eps, self.bounds = attack, eps, bounds
        self.radius: dict[str, float] = {}

    def radii(self, x: Inputs) -> dict[str, float]:
        """Each attacked input's ball radius for `eps` (`adversarial.ball_radius`), from its size per example."""
        self.radius = {m: adversarial.ball_radius(self.eps, self.bounds[m][1] - self.bounds[m][0], x[m][0].numel(),
                                                  self.attack.norm) for m in self.attacked}
        return self.radius


class UniversalSearch(_AttackedPass):
    """A pass of universal-perturbation ascent: one `adversarial.universal_step` per batch on `delta`, kept across
    passes; reduces to the mean attack loss of the pass."""

    delta: dict[str, torch.Tensor] | None = None

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        x = self.inputs(batch)
        radius = self.radii(x)
        if self.delta is None:
            self.delta = {m: torch.zeros_like(x[m][0]) for m in radius}
        self.delta, loss = adversarial.universal_step(self.loss_fn(model, batch), x, self.delta, radius, self.bounds,
                                                      self.attack.norm, self.attack.step_size)
        return {"loss_sum": loss, "count": float(len(next(iter(x.values()))))}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return {"loss": totals.get("loss_sum", 0.0) / max(totals.get("count", 0.0), 1.0)}


class AttackedPass(_AttackedPass):
    """The metric under attack: the universal `delta` when given, else each batch's own FGSM / PGD perturbation."""

    def __init__(self, *args: Any, delta: dict[str, torch.Tensor] | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(*args)
        self.delta, self.generator = delta, generator

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        x, a = self.inputs(batch), self.attack
        if self.delta is not None:
            adv = adversarial.apply_universal(x, self.delta, self.bounds)
        elif a.method == "fgsm":
            adv = adversarial.fgsm(self.loss_fn(model, batch), x, self.radii(x), self.bounds, a.norm)
        else:
            adv = adversarial.pgd(self.loss_fn(model, batch), x, self.radii(x), self.bounds, a.norm, a.steps,
                                  a.step_size, a.random_start, generator=self.generator)
        return label_scores(self.victim.forward(model, adv), batch, self.victim.multilabel)


# ---------------------------------------------------------------------------------------------------- run


def curve_figure(curve: dict[str, Any]) -> Any:
    """The metric against eps, the clean value at eps 0."""
    metric = curve["metric"]
    how = f"{curve['method'].upper()} {curve['norm']}{' universal' if curve['universal'] else ''}"
    fig, ax = chart.line_chart(f"{metric} under {how} attack on {' + '.join(curve['attacked'])}",
                               "eps (fraction of the feature range, per value)", metric)
    eps = [0.0] + [p["eps"] for p in curve["points"]]
    values = [curve["clean"]] + [p[metric] for p in curve["points"]]
    ax.plot(eps, values, marker="o", color=chart.PALETTE[0])
    ax.set_ylim(0.0, 1.0)
    return fig


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    accelerator, a = ctx.accelerator, cfg.attack
    victim = load_victim(cfg)
    attacked = attacked_modalities(victim, a.modality)
    if a.universal and accelerator.num_processes > 1:
        raise ConfigError("attack.universal: one perturbation is optimised over the whole set in one process; run "
                          "it without a multi-process launcher (per-clip attacks shard over processes)")
    model, bad = victim.model.to(accelerator.device), BadInputLog()

    def measure(task: Any) -> dict[str, Any]:
        return evaluate(task, model, victim.dataset, accelerator, cfg.train, bad)

    clean = measure(CleanPass(victim, attacked))
    bounds = clean.pop("range")
    metric = "mAP" if victim.multilabel else "top1"
    ctx.log(f"clean {metric} {clean[metric]:.4f}; feature range " +
            ", ".join(f"{m} [{lo:.3g}, {hi:.3g}]" for m, (lo, hi) in bounds.items()))
    generator = torch.Generator().manual_seed(cfg.train.seed + accelerator.process_index)
    points = []
    for eps in sorted(a.eps):
        delta, radius = None, {}
        if a.universal:
            search = UniversalSearch(victim, attacked, a, eps, bounds)
            for _ in range(a.steps):
                measure(search)
            delta, radius = search.delta, search.radius
        attack = AttackedPass(victim, attacked, a, eps, bounds, delta=delta, generator=generator)
        result = measure(attack)
        points.append({"eps": eps, metric: result[metric], **({"loss": result["loss"]} if "loss" in result else {}),
                       "radius": radius or attack.radius})
        ctx.log(f"eps {eps:g}: {metric} {result[metric]:.4f}")
    values = [clean[metric]] + [p[metric] for p in points]
    curve = {"metric": metric, "clean": clean[metric], "method": a.method, "norm": a.norm, "universal": a.universal,
             "steps": 1 if a.method == "fgsm" else a.steps, "step_size": a.step_size,
             "modality": a.modality, "attacked": list(attacked),
             "feature_range": {m: list(r) for m, r in bounds.items()}, "points": points,
             "monotone": all(later <= earlier for earlier, later in zip(values, values[1:]))}
    if accelerator.num_processes > 1:  # each rank saw its own shard's unreadable files
        merged = BadInputLog()
        for files in gather_object([bad.files]):
            merged.add(files)
        bad = merged
    summary = {"status": "completed", "checkpoint": str(cfg.checkpoint), "task": victim.task, "data": victim.source,
               "metrics": {f"clean/{metric}": clean[metric], **{f"eps={p['eps']:g}/{metric}": p[metric]
                                                                for p in points}},
               "curve": curve, "run_dir": str(ctx.run_dir),
               "bad_inputs": {"count": len(bad.files), "files": bad.files}, "world_size": accelerator.num_processes}
    if accelerator.is_main_process:
        write_json_atomic(ctx.run_dir / "curve.json", curve)
        chart.save_png(curve_figure(curve), ctx.run_dir / "curve.png")
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    return summary


def validate(cfg: Config) -> None:
    a = cfg.attack
    if not cfg.checkpoint:
        raise ConfigError("checkpoint is not set: pass checkpoint=RUN_OR_CKPT (a percli classifier run dir, checkpoint "
                          "dir or .safetensors)")
    if not Path(cfg.checkpoint).expanduser().exists():
        raise ConfigError(f"checkpoint: {cfg.checkpoint} not found; pass a percli classifier run dir, checkpoint "
                          "dir or .safetensors")
    if not a.eps or any(e < 0 for e in a.eps):
        raise ConfigError(f"attack.eps={a.eps}: give one or more sizes >= 0 (fractions of the feature range)")
    if a.universal and a.method == "fgsm":
        raise ConfigError("attack.method=fgsm: a universal perturbation is optimised by PGD passes over the set; "
                          "use attack.method=pgd with attack.universal=true")
    if a.steps < 1 or a.step_size <= 0:
        raise ConfigError(f"attack.steps={a.steps}, attack.step_size={a.step_size}: need >= 1 step of a size > 0")
    if cfg.data.source and cfg.data.source != "embedded" and not Path(cfg.data.source).expanduser().exists():
        raise ConfigError(f"data.source: {cfg.data.source} does not exist; give `embedded` or the classifier's data")
