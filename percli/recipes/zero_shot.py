"""Zero-shot classification (class names x prompt templates, top-1/top-5) and image-text retrieval
(R@1/5/10, image->text and text->image) of a CLIP checkpoint.

Classification: each class's embedding is the normalised mean of its normalised prompt embeddings
(CLIP's prompt ensembling); an image's prediction is the class of highest cosine similarity.
Retrieval: pair i of the set is image i with text i; R@k is the share of queries whose partner is
among the k most similar items of the other modality.

The checkpoint is a percli `pretrain clip` run (its metadata names the model, preprocessing and,
for the embedded set, the held-out class names and prompts) or an official open_clip / MetaCLIP
file (then set model.name, e.g. clip_vit_b32_quickgelu).

Examples:
  percli eval zero-shot model.checkpoint=runs/pretrain-clip-X/checkpoints/step_0000600
  percli eval zero-shot model.checkpoint=metaclip_b32_400m.pt model.name=clip_vit_b32_quickgelu \\
      data.source=/data/imagenet/val data.classes_file=imagenet_classes.txt data.pairs=/data/coco_val.jsonl
  percli eval zero-shot ensemble=[expert0.pt,expert1.pt] model.name=clip_vit_b32_quickgelu \\
      ensemble_centers=runs/curate-mode-X/mode_centers.safetensors data.source=/data/imagenet/val
(MoDE data experts, weighted by the task's class names: percli/recipes/mode_ensemble.py).
  percli eval zero-shot --benchmark imagenet data.source=/data/imagenet/val \\
      model.checkpoint=metaclip_b32_400m.pt model.name=clip_vit_b32_quickgelu
(--benchmark imagenet: CLIP's 1,000 ImageNet class names and 80 templates, as MetaCLIP reports it.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from accelerate.utils import gather_object

from percli.core import checkpoint as ckpt
from percli.core.config import ConfigError, TrainConfig
from percli.core.context import RunContext
from percli.core.data import build_dataset
from percli.core.data.captioned import ZERO_SHOT_TEMPLATES, CaptionedShapesDataset
from percli.core.data.image_text import ImageTextDataset
from percli.core.data.shards import expand_inputs
from percli.core.data.transforms import ImagePreprocess
from percli.core.engine import BadInputLog, evaluate
from percli.core.rundir import write_json_atomic
from percli.models import create_model_for, list_models, load_initial_weights
from percli.models.clip_tokenizer import CLIPTokenizer
from percli.models.hub import resolve_weights
from percli.recipes.classification import class_embeddings, topk_counts
from percli.recipes.common import ModelSection
from percli.recipes.mode_ensemble import Experts, ensemble_task

# The seven-prompt subset of CLIP's 80 ImageNet templates (the CLIP repo's prompt-engineering notebook).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
)
RECALL_KS = (1, 5, 10)


# --------------------------------------------------------------------------- metrics


@torch.no_grad()
def retrieval_recalls(similarity: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """R@k in both directions for a [N images, N texts] similarity matrix whose pairs are on the diagonal."""
    n = similarity.shape[0]
    truth = similarity.diagonal()
    # A query's rank = how many candidates score strictly higher than its partner (ties favour the partner).
    image_rank = (similarity > truth[:, None]).sum(dim=1)  # [N] image -> text
    text_rank = (similarity > truth[None, :]).sum(dim=0)  # [N] text -> image
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float((image_rank < k).float().mean()) if n else 0.0
        out[f"text_to_image_R@{k}"] = float((text_rank < k).float().mean()) if n else 0.0
    return out


class ZeroShotTask:
    """Engine eval task: zero-shot top-1/5 when `class_names` are given, retrieval when `retrieval`.

    `cache=False` rebuilds the class embeddings at every batch (for evaluations during training,
    where the model changes between calls).
    """

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor], class_names: Sequence[str] = (),
                 templates: Sequence[str] = DEFAULT_TEMPLATES, retrieval: bool = False, cache: bool = True):
        self.tokenize, self.class_names, self.templates = tokenize, list(class_names), list(templates)
        self.retrieval, self.cache = retrieval, cache
        self._classes: torch.Tensor | None = None

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float | torch.Tensor]:
        clip = getattr(model, "module", model)  # under DDP
        if "video" in batch:  # [B, C, T, H, W] clips
            image_features = encode_video(clip, batch["video"])
        else:
            image_features = clip.encode_image(batch["image"], normalize=True)  # [B, D]
        out: dict[str, float | torch.Tensor] = {}
        if self.class_names:
            if self._classes is None or not self.cache:
                self._classes = class_embeddings(clip, self.class_names, self.templates, self.tokenize,
                                                 image_features.device)
            out.update(topk_counts(image_features @ self._classes.T, batch["label"]),
                       count=float(len(batch["label"])))
        if self.retrieval:
            out["image_features"] = image_features
            out["text_features"] = clip.encode_text(batch["text"], normalize=True)
        return out

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if totals.get("count"):
            metrics.update(zero_shot_top1=totals["top1_correct"] / totals["count"],
                           zero_shot_top5=totals["top5_correct"] / totals["count"],
                           chance_top1=1.0 / len(self.class_names))
        if "image_features" in totals:
            metrics.update(retrieval_recalls(totals["image_features"] @ totals["text_features"].T))
        return metrics


def encode_video(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Normalised clip embeddings [B, D] of clips [B, C, T, H, W]: the model's `encode_video` (PE: the mean of
    its normalised frame embeddings), else the same mean over `encode_image`; normalised again."""
    frames = video.transpose(1, 2)  # [B, T, C, H, W]
    if hasattr(model, "encode_video"):
        features = model.encode_video(frames, normalize=True)
    else:
        features = model.encode_image(frames.flatten(0, 1), normalize=True).unflatten(0, frames.shape[:2]).mean(1)
    return torch.nn.functional.normalize(features, dim=-1)


# --------------------------------------------------------------------------- the command


@dataclasses.dataclass
class ZeroShotData:
    source: str | None = "embedded"
    """Classification data: `embedded` (the captioned held-out split), an image folder of class
    sub-folders or a .jsonl manifest; null skips classification."""
    classes: list[str] | None = None
    """Class names for the prompts, in label order; default: the checkpoint's, else the folder names."""
    classes_file: str | None = None
    """A text file with one class name per line, in label order (instead of `classes`)."""
    templates: list[str] | None = None
    """Prompt templates with `{}` for the class name; default: the checkpoint's, else CLIP's 7-prompt set."""
    pairs: str | None = None
    """Image-text shards (.jsonl/.parquet/.tar patterns, space-separated) for retrieval; null skips it."""
    image_field: str = "image"
    text_field: str = "text"
    embedded_size: int = 2000
    """As in `pretrain clip`: the embedded held-out split has a quarter of this many images."""
    kind: Literal["image", "video"] = "image"
    """video: data.source is a folder of class sub-folders of videos or a video .jsonl manifest; each clip's
    embedding is the mean of its frames' (PE's `encode_video`)."""
    num_frames: int = 8
    """Video: frames per clip, spread evenly from the first to the last frame (PE's video inputs: 8)."""


@dataclasses.dataclass
class Config:
    model: ModelSection = dataclasses.field(default_factory=lambda: ModelSection(name=""))
    data: ZeroShotData = dataclasses.field(default_factory=ZeroShotData)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    """Only batch_size, num_workers, mixed_precision, cpu and seed are used."""
    ensemble: list[str] | None = None
    """MoDE: one CLIP checkpoint per data expert, in coarse-cluster order (model.name/kwargs apply to each);
    classification only, instead of model.checkpoint."""
    ensemble_weights: str | None = None
    """The ensemble's expert weights: an ensemble_weights.json from `percli curate mode --classes`."""
    ensemble_centers: str | None = None
    """Or a mode_centers.safetensors from `percli curate mode`: weights computed for this eval's classes."""
    benchmark: str | None = None
    """`imagenet`: CLIP's 1,000 curated ImageNet class names and its 80 prompt templates (the published
    zero-shot protocol, percli/recipes/data/) on data.source, an ImageNet-layout folder (class sub-folders
    named by WordNet id, n01440764 ..., or by class index 0..999; any subset) or a manifest whose labels
    are the class indices. `cifar10` / `cifar100`: CLIP's class names and 18 CIFAR templates (class
    sub-folders named as torchvision names the classes, e.g. aquarium_fish, or by index)."""


# --------------------------------------------------------------------------- published benchmarks

BENCHMARK_DIR = Path(__file__).parent / "data"
BENCHMARKS = ("imagenet", "cifar10", "cifar100", "mnist", "eurosat")


def read_list(path: Path) -> list[str]:
    """The non-empty lines of a shipped list, in order."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def benchmark_lists(name: str) -> tuple[list[str], list[str], list[str]]:
    """(class names, prompt templates, class ids) of a published benchmark, in label order.

    ``imagenet``: CLIP's curated names of the 1,000 ILSVRC-2012 classes and its 80 prompt templates
    (the CLIP repository's prompt-engineering notebook, as open_clip's ``zero_shot_metadata``
    carries them) and the WordNet ids in their standard sorted order (label i = the i-th id).
    ``cifar10`` / ``cifar100``: the datasets' class names as CLIP prompts them (underscores as spaces) with
    CLIP's 18 CIFAR templates; ``mnist`` (the digits, one template) and ``eurosat`` (CLIP's renamed land-use
    classes, 3 satellite templates); the ids are the datasets' own class names (torchvision's folder names).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark={name!r} is unknown; choose from {', '.join(BENCHMARKS)}")
    return (read_list(BENCHMARK_DIR / f"{name}_classes.txt"), read_list(BENCHMARK_DIR / f"{name}_templates.txt"),
            read_list(BENCHMARK_DIR / f"{name}_ids.txt"))


def benchmark_class_names(name: str, folders: Sequence[str] | None) -> list[str]:
    """The official names of a dataset's classes: its folders (WordNet ids or indices), else all of them."""
    names, _, ids = benchmark_lists(name)
    if not folders:  # a manifest: labels are the benchmark's class indices
        return names
    index = {class_id: i for i, class_id in enumerate(ids)}
    out = []
    for folder in folders:
        i = index.get(folder, int(folder) if folder.isdigit() else -1)
        if not 0 <= i < len(names):
            raise ValueError(f"class folder {folder!r} is not a {name} class: name the class sub-folders by "
                             f"class id ({ids[0]} ...) or class index (0..{len(names) - 1})")
        out.append(names[i])
    return out


def benchmark_set(name: str, source: str | None, transform: Any) -> tuple[Any, list[str], list[str]]:
    """The dataset of `source` with the benchmark's official class names (for its folders) and templates."""
    if not source or source == "embedded":
        raise ValueError(f"benchmark={name} needs data.source=PATH: an {name} folder of class sub-folders "
                         "(e.g. the ILSVRC-2012 val set sorted into n01440764/ ...) or a manifest")
    dataset = build_dataset(source, kind="image", transform=transform)
    names = benchmark_class_names(name, getattr(dataset, "classes", None))
    return dataset, names, benchmark_lists(name)[1]


def _validate_benchmark(cfg: Config) -> None:
    if cfg.benchmark is None:
        return
    if cfg.benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark: unknown {cfg.benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    for key in ("classes", "classes_file", "templates"):
        if getattr(cfg.data, key):
            raise ConfigError(f"data.{key}: --benchmark {cfg.benchmark} uses the published class names and "
                              f"templates; drop data.{key} (or drop --benchmark to use your own)")
    if not cfg.data.source or cfg.data.source == "embedded":
        raise ConfigError(f"data.source: --benchmark {cfg.benchmark} needs data.source=PATH (a folder of class "
                          "sub-folders named by class id or index, or a manifest), not the embedded set")


def load_clip(section: ModelSection) -> tuple[nn.Module, dict[str, Any]]:
    """The CLIP model of a percli checkpoint (its metadata rebuilds it) or of an official file + model.name."""
    if not section.checkpoint:
        raise ValueError("model.checkpoint is not set: pass model.checkpoint=PATH (a percli clip checkpoint dir, "
                         "or an open_clip/MetaCLIP file with model.name)")
    path = resolve_weights(section.checkpoint)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if not path.exists():
        raise FileNotFoundError(f"model.checkpoint={path}: no such file or directory")
    meta: dict[str, Any] = {}
    if path.is_dir() or path.suffix == ".safetensors":
        meta = ckpt.read_meta(path)
        if meta and meta.get("task") != "clip" and not section.name:
            raise ValueError(f"{path} is a {meta.get('task')} checkpoint, not a CLIP one; train one with "
                             "`percli pretrain clip` or set model.name")
    name = section.name or meta.get("name")
    if not name:
        raise ValueError(f"{path} carries no model name; set model.name (e.g. model.name=clip_vit_b32_quickgelu)")
    model = create_model_for(name, {**meta.get("kwargs", {}), **section.kwargs}, path)
    load_initial_weights(model, str(path))
    return model, {**model.preprocess, **meta}


def _class_names(data: ZeroShotData, meta: dict[str, Any], dataset: Any) -> list[str]:
    if data.classes_file:
        names = [line.strip() for line in Path(data.classes_file).read_text().splitlines() if line.strip()]
    elif data.classes:
        names = list(data.classes)
    elif data.source == "embedded" or not getattr(dataset, "classes", None):
        names = list(meta.get("classes") or getattr(dataset, "classes", []))
    else:
        names = [c.replace("_", " ") for c in dataset.classes]
    known = getattr(dataset, "classes", None)
    if not names:
        raise ValueError(f"{data.source} has no classes; use a folder of class sub-folders or set data.classes")
    if known and len(known) != len(names):
        raise ValueError(f"{len(names)} class names for the {len(known)} classes of {data.source}; "
                         "give one name per class, in label order")
    return names


def _classification_set(data: ZeroShotData, meta: dict[str, Any], transform: Any) -> tuple[Any, list[str], list[str]]:
    """The dataset of data.source, its class names and the prompt templates."""
    if data.kind == "video":
        if data.source == "embedded":
            raise ValueError("data.kind=video needs real clips: set data.source to a folder or .jsonl of videos")
        dataset = build_dataset(data.source, kind="video", transform=transform, num_frames=data.num_frames,
                                sampling_rate=0, train=False)
        default_templates = meta.get("templates") or list(DEFAULT_TEMPLATES)
    elif data.source == "embedded":
        dataset = CaptionedShapesDataset("val", max(data.embedded_size // 4, 1),
                                         image_size=max(ImagePreprocess.of(meta).size), transform=transform)
        default_templates = meta.get("templates") or list(ZERO_SHOT_TEMPLATES)
    else:
        dataset = build_dataset(data.source, kind="image", transform=transform)
        default_templates = meta.get("templates") or list(DEFAULT_TEMPLATES)
    return dataset, _class_names(data, meta, dataset), data.templates or default_templates


def _load_models(cfg: Config) -> tuple[nn.Module, dict[str, Any], list[CLIPTokenizer]]:
    """The model (or the MoDE experts as one module), the preprocessing metadata and a tokenizer per model."""
    if not cfg.ensemble:
        model, meta = load_clip(cfg.model)
        return model, meta, [CLIPTokenizer(context_length=model.context_length)]

    if cfg.data.pairs or not cfg.data.source:
        raise ValueError("ensemble= evaluates zero-shot classification only: set data.source and drop data.pairs")
    loaded = [load_clip(dataclasses.replace(cfg.model, checkpoint=path)) for path in cfg.ensemble]
    meta = loaded[0][1]
    for path, (_, other) in zip(cfg.ensemble[1:], loaded[1:]):
        if ImagePreprocess.of(other) != ImagePreprocess.of(meta):
            raise ValueError(f"ensemble expert {path} preprocesses images unlike {cfg.ensemble[0]} (image size, "
                             "resize mode, interpolation, mean or std differ); ensemble experts that share one "
                             "preprocessing")
    models = [model for model, _ in loaded]
    return Experts(models), meta, [CLIPTokenizer(context_length=m.context_length) for m in models]


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    run_dir, accelerator = ctx.run_dir, ctx.accelerator
    data = cfg.data
    if not data.source and not data.pairs:
        raise ValueError("nothing to evaluate: set data.source (classification) and/or data.pairs (retrieval)")
    model, meta, tokenizers = _load_models(cfg)
    tokenize = tokenizers[0]
    transform = ImagePreprocess.of(meta).eval_transform()  # the model's own: CLIP centre-crops, PE squashes
    model = accelerator.prepare(model)
    bad = BadInputLog()
    metrics: dict[str, float] = {}
    bad_records: dict[str, Any] = {"count": 0, "examples": []}  # pairs without a usable text
    if data.source:
        if cfg.benchmark:
            dataset, class_names, templates = benchmark_set(cfg.benchmark, data.source, transform)
        else:
            dataset, class_names, templates = _classification_set(data, meta, transform)
        if cfg.ensemble:

            task = ensemble_task(cfg.ensemble_weights, cfg.ensemble_centers, tokenizers, class_names, templates)
        else:
            task = ZeroShotTask(tokenize, class_names, templates)
        metrics.update(evaluate(task, model, dataset, accelerator, cfg.train, bad))
    if data.pairs:
        pairs = ImageTextDataset(data.pairs, transform, tokenize, data.image_field, data.text_field)
        metrics.update(evaluate(ZeroShotTask(tokenize, retrieval=True), model, pairs, accelerator, cfg.train, bad))
        metrics["retrieval_pairs"] = float(len(pairs))
        bad_records = {"count": pairs.bad_records.count, "examples": pairs.bad_records.examples}
    if accelerator.num_processes > 1:  # each rank saw its own shard's unreadable files
        merged = BadInputLog()
        for files in gather_object([bad.files]):
            merged.add(files)
        bad = merged
    summary = {"status": "completed", "checkpoint": cfg.model.checkpoint, "ensemble": cfg.ensemble,
               "data": data.source, "pairs": data.pairs,
               "metrics": metrics, "run_dir": str(run_dir),
               "bad_inputs": {"count": len(bad.files), "files": bad.files}, "bad_records": bad_records,
               "world_size": accelerator.num_processes}
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary


def validate(cfg: Config) -> None:
    """Checks a dry run can make: model name, checkpoint and data paths."""
    _validate_benchmark(cfg)
    if cfg.model.name and cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; run `percli ls models` for the names")
    if cfg.ensemble:
        if bool(cfg.ensemble_weights) == bool(cfg.ensemble_centers):
            raise ConfigError("ensemble: set exactly one of ensemble_weights=PATH (ensemble_weights.json from "
                              "`percli curate mode --classes`) or ensemble_centers=PATH (mode_centers.safetensors)")
        for key, path in [*(("ensemble", p) for p in cfg.ensemble), ("ensemble_weights", cfg.ensemble_weights),
                          ("ensemble_centers", cfg.ensemble_centers)]:
            if path and not Path(path).exists():
                raise ConfigError(f"{key}: {path} does not exist")
    elif not cfg.model.checkpoint:
        raise ConfigError("model.checkpoint is not set: pass model.checkpoint=PATH (a percli clip checkpoint dir, "
                          "or an open_clip/MetaCLIP file with model.name), or ensemble=[PATH, ...]")
    elif not Path(cfg.model.checkpoint).exists():
        raise ConfigError(f"model.checkpoint: {cfg.model.checkpoint} does not exist")
    for key in ("source", "classes_file"):
        value = getattr(cfg.data, key)
        if value and value != "embedded" and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}: {value} does not exist")
    if cfg.data.pairs:
        try:
            expand_inputs(cfg.data.pairs.split())
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.pairs: {e}") from None
