"""PerceptionLM training (Cho et al., 2025): the release's three stages on the engine.

* ``stage=stage1``: projector warm-up; the vision tower and the language model frozen, the ``warmup`` format
  (media tokens, then the caption; no question), one squashed 448 px chunk per image, 8 video frames;
* ``stage=stage2``: mid-training, everything trained, the ``plm_sft`` chat format, thumbnail + up to 16 tiles,
  16 frames;
* ``stage=stage3``: SFT as stage 2 with up to 36 tiles and 32 frames.

The loss is the release's: cross-entropy on the assistant tokens only (the answer, its end-of-turn and the final
end-of-text), batches padded to the longest sample (the release pads to ``max_seqlen``: the same loss).
``model.grad_checkpointing`` recomputes each decoder block; ``train.fsdp=true`` shards the model over the
processes (FSDP2 through Accelerate, `accelerate launch`); the stage's frozen towers get no optimizer state.

Data: ``embedded`` (generated images and videos with one question each whose answer the pixels decide: counts,
colours, shapes, positions, captions, which shape moves, where, when it appears, when it is visible;
`percli.core.data.embedded_plm`) or the release's JSONL (``image`` / ``video`` paths under ``data.root`` and
``conversations``; `percli.core.data.conversations`). Unusable lines (no assistant turn, placeholders that do not
match, missing media), unreadable media and conversations longer than the context are skipped and counted in
``summary.json``. ``data.text_only=true`` drops every image and video: the baseline that never sees the pixels.

Evaluation (held-out): the mean loss, and the exact-answer accuracy: an answer is right when greedy decoding
reproduces it exactly (every answer token, and the end of turn after it, is the argmax given the tokens before
it, computed in one teacher-forced pass, so FSDP ranks stay in step), per question type for the embedded set.

Model: ``model.checkpoint`` is a PLM release folder (either layout; its tokenizer is used), a `percli finetune plm`
run, or a percli safetensors file; otherwise ``model.name`` + ``model.kwargs`` from random weights (the tiny
presets).

Examples:
  percli finetune plm                                            # tiny PLM, embedded images + videos, CPU
  percli finetune plm data.text_only=true                        # the same without pixels: the text-only baseline
  percli finetune plm --preset stage3 model.checkpoint=/models/Perception-LM-1B data.source=/data/sft.jsonl \\
      data.root=/data/media
  accelerate launch --config_file examples/plm/fsdp.yaml -m percli.cli finetune plm --preset stage3 \\
      model.checkpoint=/models/Perception-LM-8B data.source=/data/sft.jsonl train.fsdp=true
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.shards import BadRecords
from percli.models import create_model, load_initial_weights
from percli.models.plm_processor import PLMProcessor, PLMProcessorConfig, PLMSample, strip_placeholders
from percli.models.plm_transforms import plm_frame_indices, video_transform
from percli.recipes.common import TrainedModelSection
from percli.recipes.plm_common import BYTE_TOKENIZER, build_tokenizer, is_release_folder, processor_config

STAGES = ("stage1", "stage2", "stage3")
# the release's data settings per stage (apps/plm/configs/stage_{1,2,3}/plm_1b.yaml)
STAGE_DATA = {
    "stage1": {"conversation_format": "warmup", "vision_input_type": "vanilla", "max_num_tiles": 1,
               "max_video_frames": 8},
    "stage2": {"conversation_format": "plm_sft", "vision_input_type": "thumb+tile", "max_num_tiles": 16,
               "max_video_frames": 16},
    "stage3": {"conversation_format": "plm_sft", "vision_input_type": "thumb+tile", "max_num_tiles": 36,
               "max_video_frames": 32},
}


@dataclasses.dataclass
class PLMDataSection:
    source: str = "embedded"
    """`embedded`, or a release-format JSONL (.jsonl / .jsonl.gz) of conversations."""
    root: str | None = None
    """Folder the JSONL's media paths are relative to (default: the JSONL's folder)."""
    val_source: str | None = None
    """Held-out JSONL (for `embedded`: its test split when unset)."""
    embedded_size: int = 2000
    """Training items of the embedded set."""
    val_size: int = 200
    """Held-out items of the embedded set (and the most a JSONL's evaluation scores)."""
    media: Literal["mixed", "image", "video"] = "mixed"
    """Embedded set: images, videos or both (alternating)."""
    question_types: list[str] = dataclasses.field(default_factory=list)
    """Embedded set: keep only these question types (empty: every type)."""
    text_only: bool = False
    """Drop every image and video (the baseline that never sees the pixels)."""


@dataclasses.dataclass
class ProcessorSection:
    """Overrides of the stage's processor settings (null: the stage's / the model's)."""

    seq_len: int | None = None
    """Context of a training sample (default: the model's max_seqlen)."""
    max_num_tiles: int | None = None
    max_video_frames: int | None = None
    vision_input_type: str | None = None
    conversation_format: str | None = None


@dataclasses.dataclass
class InitSection:
    """The release's stage-1 start from separate towers; with model.checkpoint, they replace its towers."""

    language_model: str | None = None
    """A Llama-3 consolidated checkpoint (the release: Llama-3.2-1B-Instruct/original) for the decoder."""
    vision_model: str | None = None
    """A PE checkpoint (the release: PE-Core-L14-336 interpolated to 448 px) for the vision tower."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="plm_1b"))
    init: InitSection = dataclasses.field(default_factory=InitSection)
    stage: Literal["stage1", "stage2", "stage3"] = "stage3"
    """Which release stage: what is trained, the chat format and the media settings (module docstring)."""
    tokenizer: str | None = None
    """Tokenizer folder or file (default: the release folder's), or `bytes` (the tiny presets' byte vocabulary)."""
    data: PLMDataSection = dataclasses.field(default_factory=PLMDataSection)
    processor: ProcessorSection = dataclasses.field(default_factory=ProcessorSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=2, grad_clip=1.0))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=4e-5, ref_batch_size=2, weight_decay=0.01, min_lr=4e-7, warmup_fraction=0.006))


class EmbeddedConversations(Dataset):
    """The embedded items as processor samples (media transformed as the stage asks; none when text-only)."""

    def __init__(self, items: Dataset, indices: list[int], processor: PLMProcessor, text_only: bool):
        self.items, self.indices, self.processor, self.text_only = items, indices, processor, text_only

    def __len__(self) -> int:
        return len(self.indices)

    def scored(self, index: int) -> dict[str, str]:
        """The question type and answer of item `index` (no rendering)."""
        q = self.items.question(self.indices[index])
        return {"question_type": q.question_type, "answer": q.answer}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[self.indices[index]]
        media, media_type = None, "text"
        if not self.text_only:
            cfg = self.processor.config
            if item["media_type"] == "image":
                media, media_type = self.processor.transform_image(item["image"]), "image"
            else:
                frames = item["video"]
                picks = plm_frame_indices(len(frames), float(item["fps"]), cfg.max_video_frames)
                media, media_type = video_transform(frames[picks], cfg.image_size), "video"
        turns = item["conversations"] if media is not None else without_media(item["conversations"])
        sample = self.processor.tokenize(turns, media, media_type, where=item["id"])
        return {"sample": sample, "question_type": item["question_type"]}


class JSONLConversations(Dataset):
    """A release-format JSONL's usable records as processor samples (unreadable media raise BadSample)."""

    def __init__(self, path: str, root: str | None, processor: PLMProcessor, text_only: bool,
                 limit: int | None = None):
        from percli.core.data.conversations import read_conversations

        self.manifest = read_conversations(path, root)
        self.records = list(self.manifest.records)[:limit]
        self.processor, self.text_only = processor, text_only
        self.bad_records = BadRecords()  # unusable lines, by reason, in summary.json
        for bad in self.manifest.bad_examples:
            self.bad_records.add(Path(bad["file"]), int(bad["line"]), bad["reason"])
        self.bad_records.count = int(self.manifest.counts.get("bad_records", self.bad_records.count))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        row = record.to_row()
        if self.text_only:
            sample = self.processor.tokenize(without_media(row["conversations"]), None, "text", where=record.id)
        else:
            sample = self.processor(row)
        return {"sample": sample, "question_type": str(record.fields.get("question_type", "all"))}


def without_media(conversations: list[dict[str, str]]) -> list[dict[str, str]]:
    """The turns with their ``<image>`` / ``<video>`` tags removed (the text-only baseline)."""
    return [{**turn, "value": strip_placeholders(turn["value"])} for turn in conversations]


def release_size(kwargs: dict[str, Any]) -> str:
    """The registered PLM whose decoder sizes a release folder's keywords have (its keywords then give every size)."""
    from percli.models.plm import CONFIGS

    for name, config in CONFIGS.items():
        if all(config.get(k) == kwargs.get(k) for k in ("dim", "n_layers", "n_heads", "pooling_ratio")):
            return name
    return "plm_1b"


def exact_answer_hits(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """[B] bool: every answer token (the loss-mask targets) is the argmax at its position, i.e. greedy decoding
    from the prompt reproduces the reference answer and its end of turn exactly (first answer only)."""
    right = (logits.argmax(-1) == batch["target"]) | ~batch["loss_mask"]
    hits = []
    for row_right, row_mask in zip(right, batch["loss_mask"]):
        positions = row_mask.nonzero().flatten()
        if len(positions) == 0:
            hits.append(False)
            continue
        # the first answer: the run of consecutive target positions from the first one
        breaks = (positions[1:] - positions[:-1] != 1).nonzero()
        end = int(positions[int(breaks[0])]) + 1 if len(breaks) else int(positions[-1]) + 1
        hits.append(bool(row_right[int(positions[0]):end].all()))
    return torch.tensor(hits, device=logits.device)


class PLMTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.question_types: list[str] = []

    # ---------------------------------------------------------------- model
    def build_model(self) -> nn.Module:
        cfg = self.cfg
        path = cfg.model.checkpoint
        folder = None
        if path and is_release_folder(path):
            from percli.models.plm_loading import read_folder_kwargs

            folder = Path(path).expanduser()
            self.kwargs = read_folder_kwargs(folder)
            self.name = release_size(self.kwargs)
            model = create_model(self.name, **self.kwargs)  # every size key is the folder's
            load_initial_weights(model, folder)
        elif path:
            from percli.core.checkpoint import read_meta, run_weights
            from percli.models import create_model_for

            weights = run_weights(path)
            meta = read_meta(weights)
            if meta.get("task") != "plm":
                raise ConfigError(f"model.checkpoint: {path} is not a PerceptionLM checkpoint (task "
                                  f"{meta.get('task')!r}); give a PLM release folder or a `percli finetune plm` run")
            self.name, self.kwargs = meta["name"], dict(meta.get("kwargs", {}))
            model = create_model_for(self.name, self.kwargs, weights)
            load_initial_weights(model, weights)
            self.tokenizer_spec = cfg.tokenizer or meta.get("tokenizer")
        else:
            self.name, self.kwargs = cfg.model.name, dict(cfg.model.kwargs)
            model = create_model(self.name, **self.kwargs)
        if not hasattr(model, "train_stage"):
            raise ConfigError(f"model.name: {self.name!r} is not a PerceptionLM model; use plm_1b, plm_3b or plm_8b")
        if cfg.init.language_model or cfg.init.vision_model:  # over model.checkpoint's towers when both are given
            from percli.models.plm_loading import load_towers

            report = load_towers(model, cfg.init.language_model, cfg.init.vision_model)
            if report.dropped:
                print(f"init: {len(report.dropped)} checkpoint tensors not used "
                      f"({', '.join(sorted({k.rsplit('.', 2)[0] for k in report.dropped})[:6])})", file=sys.stderr)
        model.train_stage(cfg.stage)
        model.set_grad_checkpointing(cfg.model.grad_checkpointing)
        spec = getattr(self, "tokenizer_spec", None) or cfg.tokenizer
        self.tokenizer_spec = spec if spec == BYTE_TOKENIZER or spec is None else str(Path(spec).expanduser())
        tokenizer = build_tokenizer(self.tokenizer_spec, folder)
        vocab = model.tok_embeddings.num_embeddings
        if tokenizer.n_words > vocab:
            raise ConfigError(f"tokenizer: {tokenizer.n_words} ids do not fit the model's vocab_size {vocab}")
        overrides = {**STAGE_DATA[cfg.stage],
                     **{k: v for k, v in dataclasses.asdict(cfg.processor).items() if v is not None}}
        self.processor = PLMProcessor(tokenizer, processor_config(model.config, overrides))
        if self.tokenizer_spec is None and folder is not None:
            self.tokenizer_spec = str(tokenizer.file)
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs, "task": "plm", "stage": self.cfg.stage,
                "tokenizer": self.tokenizer_spec, "processor": self.processor.settings()}

    # ---------------------------------------------------------------- data
    def _embedded(self, train: bool) -> EmbeddedConversations:
        from percli.core.data.embedded_plm import EmbeddedPLMData, PLMDataSpec

        d = self.cfg.data
        size = self.processor.config.image_size
        spec = PLMDataSpec(image_size=size, video_size=size)
        items = EmbeddedPLMData(d.embedded_size if train else d.val_size, split="train" if train else "test",
                                media=d.media, spec=spec)
        keep = set(d.question_types)
        indices = [i for i, q in enumerate(items.questions()) if not keep or q["question_type"] in keep]
        if not indices:
            raise ConfigError(f"data.question_types={d.question_types}: no embedded item of these types with "
                              f"data.media={d.media}")
        return EmbeddedConversations(items, indices, self.processor, d.text_only)

    def train_dataset(self) -> Dataset:
        d = self.cfg.data
        if d.source == "embedded":
            return self._embedded(train=True)
        return JSONLConversations(d.source, d.root, self.processor, d.text_only)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        if d.val_source:
            return JSONLConversations(d.val_source, d.root, self.processor, d.text_only, limit=d.val_size)
        if d.source == "embedded":
            data = self._embedded(train=False)
            self.question_types = sorted({data.scored(i)["question_type"] for i in range(len(data))})
            return data
        return None

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        samples: list[PLMSample] = [it["sample"] for it in items]
        batch = self.processor.collate(samples, pad_to_longest=True)
        types = self.question_types or ["all"]
        batch["question_type"] = torch.tensor([types.index(it["question_type"]) if it["question_type"] in types
                                               else -1 for it in items])
        return batch

    # ---------------------------------------------------------------- steps
    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        has_media = [t != "text" for t in batch["media_type"]]
        return model(batch["token_values"], images=batch["images"] if any(has_media) else None,
                     image_pos_index=batch["image_pos_index"], num_chunks=batch["num_chunks"],
                     media_type=batch["media_type"])

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self._forward(model, batch)
        return {"loss": answer_loss(logits, batch)}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self._forward(model, batch)
        hits = exact_answer_hits(logits, batch).float()
        out = {"loss_sum": answer_loss(logits, batch) * len(hits), "count": torch.tensor(float(len(hits))),
               "hits": hits.sum()}
        for k, name in enumerate(self.question_types):
            rows = batch["question_type"].to(hits.device) == k
            out[f"hits_{name}"], out[f"count_{name}"] = hits[rows].sum(), rows.sum().float()
        return out

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        count = float(totals.get("count", 0))
        if not count:
            return {}
        report = {"loss": float(totals["loss_sum"]) / count, "exact_answer_acc": float(totals["hits"]) / count,
                  "count": count}
        for name in self.question_types:
            n = float(totals.get(f"count_{name}", 0))
            if n:
                report[f"acc_{name}"] = float(totals[f"hits_{name}"]) / n
        return report


def answer_loss(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of the batch (the release's loss)."""
    mask = batch["loss_mask"]
    return torch.nn.functional.cross_entropy(logits[mask].float(), batch["target"][mask])


def validate(cfg: Config) -> None:
    d = cfg.data
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r}: use one of {', '.join(STAGES)}")
    if d.source != "embedded" and not Path(d.source).expanduser().is_file():
        raise ConfigError(f"data.source: {d.source} is not a file; give a release-format JSONL of conversations "
                          "(or data.source=embedded)")
    if d.val_source and not Path(d.val_source).expanduser().is_file():
        raise ConfigError(f"data.val_source: {d.val_source} is not a file")
    if d.root and not Path(d.root).expanduser().is_dir():
        raise ConfigError(f"data.root: {d.root} is not a folder")
    if d.embedded_size < 1 or d.val_size < 1:
        raise ConfigError("data.embedded_size / data.val_size: give at least 1")
    if d.question_types:
        from percli.core.data.embedded_plm import QUESTION_TYPES

        unknown = sorted(set(d.question_types) - set(QUESTION_TYPES))
        if unknown:
            raise ConfigError(f"data.question_types: {unknown} are not embedded question types "
                              f"({', '.join(QUESTION_TYPES)})")
    if cfg.tokenizer not in (None, BYTE_TOKENIZER) and not Path(cfg.tokenizer).expanduser().exists():
        raise ConfigError(f"tokenizer: {cfg.tokenizer} does not exist; give the folder holding tokenizer.model or "
                          "tokenizer.json, or `bytes`")
    for key in ("language_model", "vision_model"):
        value = getattr(cfg.init, key)
        if value and not Path(value).expanduser().exists():
            raise ConfigError(f"init.{key}: {value} does not exist")
    if cfg.processor.seq_len is not None and cfg.processor.seq_len < 8:
        raise ConfigError(f"processor.seq_len={cfg.processor.seq_len}: too short for any conversation")
    if not cfg.model.checkpoint and cfg.tokenizer is None:
        raise ConfigError("tokenizer: not set and no model.checkpoint folder to read it from; give a tokenizer "
                          "folder, a PLM release folder as model.checkpoint, or tokenizer=bytes")
    PLMProcessorConfig(**{k: v for k, v in dataclasses.asdict(cfg.processor).items() if v is not None})


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(PLMTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)

