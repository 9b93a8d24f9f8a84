"""PE-A-Frame: frame-level audio-text training for sound event detection (Vyas et al., 2025).

Every codec frame of a clip is scored against every event query of the vocabulary with the release's head,
p = sigmoid(logit_scale * <frame, text> + logit_bias); the loss is the binary cross-entropy of those
probabilities against the strong labels (a frame is positive for a query when its centre lies inside an
event of that query's label), averaged over the valid frames, queries and clips. Meta released no training
code: this is the frame-level objective the paper names ("fine-tuning PE-AV with frame-level contrastive
objectives"), in the per-frame sigmoid form of the release's scoring, with the batch's full vocabulary as the
negative queries.

Evaluation (held-out clips, and `percli eval sed`): spans above ``threshold`` (0.3, the release's default)
become events, scored against the strong labels with segment-based F1 (1 s segments) and event-based F1
(200 ms onset collar, offset collar max(200 ms, 20 % of the event)), as sed_eval computes them, plus the
frame-level AUROC of the probabilities (mean over classes).

Data: the embedded clips (default; their strong labels and each event's caption phrase as its query) or a
strong-label TSV (AudioSet-Strong / DESED layout) with ``data.audio_root`` holding its files and
``data.queries`` a JSON {label: text} (default: the label with "_" read as a space).

Examples:
  percli finetune pe-a-frame                              # tiny model from scratch on the embedded clips
  percli finetune pe-a-frame model.checkpoint=/models/pe-a-frame-small data.source=desed/train.tsv \\
      data.audio_root=desed/audio/train data.val_source=desed/validation.tsv data.val_audio_root=desed/audio/val
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.audio import load_audio
from percli.core.data.av_events import _BY_LABEL, LABELS, AVEventsSpec, EmbeddedAVEvents
from percli.core.data.caption_manifest import Event, read_strong_labels
from percli.core.data.images import BadSample
from percli.core.data.loader import SeededSamples, collate_skip_bad
from percli.core.sed_metrics import event_metrics, events_from_probs, frame_auroc, segment_metrics
from percli.models.pe_av import SPAN_THRESHOLD
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model
from percli.recipes.pe_av import scratch_init

AUDIO_SUFFIXES = ("", ".wav", ".flac", ".mp3", ".ogg", ".mp4", ".mkv", ".webm")


@dataclasses.dataclass
class SEDDataSection:
    source: str = "embedded"
    """`embedded` (generated clips with strong labels) or a strong-label TSV (file, onset, offset, label)."""
    audio_root: str | None = None
    """Folder of the TSV's files (default: the TSV's folder); AudioSet-Strong ids get .wav/.flac/... appended."""
    val_source: str | None = None
    """Held-out strong labels for the SED scores; for `embedded`, its test split."""
    val_audio_root: str | None = None
    queries: str | None = None
    """JSON {label: text query}; default: each embedded event's phrase, else the label with "_" as a space."""
    embedded_size: int = 400
    """Clips in the embedded training split (the test split has a quarter, at least 20)."""


@dataclasses.dataclass
class Config:
    model: PEAVModelSection = dataclasses.field(default_factory=lambda: PEAVModelSection(name="pe_a_frame"))
    data: SEDDataSection = dataclasses.field(default_factory=SEDDataSection)
    threshold: float = SPAN_THRESHOLD
    """Frame probability above which a frame is active (the release's default 0.3)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=32, weight_decay=0.05, betas=(0.9, 0.95), eps=1e-6, warmup_fraction=0.05))


def query_texts(labels: list[str], queries: str | None) -> list[str]:
    """The text query of each label: from the JSON file, the embedded vocabulary's phrase, or the label itself."""
    given = json.loads(Path(queries).read_text()) if queries else {}
    if not isinstance(given, dict):
        raise ValueError(f"data.queries={queries}: expected a JSON object {{label: text}}")
    return [given.get(label) or (_BY_LABEL[label].noun if label in _BY_LABEL else label.replace("_", " "))
            for label in labels]


class StrongLabelClips(Dataset):
    """The clips a strong-label TSV names, decoded at ``sample_rate``, with their events (items: ``{"index",
    "file", "waveform" [1, T], "events": [(label, onset, offset)]}``); unreadable files raise `BadSample`."""

    def __init__(self, labels_file: str, audio_root: str | None, sample_rate: int):
        self.labels = read_strong_labels(labels_file)
        self.root = Path(audio_root) if audio_root else Path(labels_file).parent
        self.sample_rate = sample_rate
        self.by_file: dict[str, list[Event]] = {file: [] for file in self.labels.files}
        for event in self.labels.events:
            self.by_file[event.file].append(event)
        self.files = list(self.by_file)
        self.classes = sorted({e.label for e in self.labels.events})

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        file = self.files[index]
        path = next((p for p in (self.root / f"{file}{s}" for s in AUDIO_SUFFIXES) if p.is_file()), None)
        if path is None:
            raise BadSample(self.root / file, "missing_file: no audio file for this label row")
        try:
            waveform = load_audio(path, self.sample_rate)
        except Exception as err:  # noqa: BLE001 - any decoder failure is this file's problem, reported and skipped
            raise BadSample(path, f"unreadable_audio: {err}") from None
        return {"index": index, "file": file, "waveform": waveform,
                "events": [(e.label, e.onset, e.offset) for e in self.by_file[file]]}


class _EmbeddedClips(Dataset):
    def __init__(self, count: int, split: str, sample_rate: int):
        self.clips = EmbeddedAVEvents(count, seed=0, split=split, spec=AVEventsSpec(sample_rate=sample_rate),
                                      num_frames=1)
        self.classes = list(LABELS)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[index]
        return {"index": index, "file": item["id"], "waveform": item["waveform"], "events": item["events"]}


def sed_dataset(data: SEDDataSection, split: str, sample_rate: int) -> Dataset:
    if data.source == "embedded":
        count = data.embedded_size if split == "train" else max(data.embedded_size // 4, 20)
        return _EmbeddedClips(count, split, sample_rate)
    source, root = (data.source, data.audio_root) if split == "train" else (data.val_source, data.val_audio_root)
    return StrongLabelClips(source, root, sample_rate)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    lengths = [item["waveform"].shape[-1] for item in items]
    waveform = torch.zeros(len(items), 1, max(lengths))
    for b, item in enumerate(items):
        waveform[b, :, :lengths[b]] = item["waveform"]
    return {"waveform": waveform, "audio_mask": torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None],
            "index": torch.tensor([item["index"] for item in items]), "file": [item["file"] for item in items],
            "events": [item["events"] for item in items]}


def frame_targets(events: list[list[tuple[str, float, float]]], labels: list[str], frames: int,
                  seconds_per_frame: float) -> torch.Tensor:
    """[B, Q, frames] 1 where a frame's centre lies in an event of the query's label."""
    centres = (torch.arange(frames) + 0.5) * seconds_per_frame
    column = {label: q for q, label in enumerate(labels)}
    targets = torch.zeros(len(events), len(labels), frames)
    for b, clip in enumerate(events):
        for label, onset, offset in clip:
            if label in column:
                targets[b, column[label]] += ((centres >= onset) & (centres < offset)).float()
    return targets.clamp_(max=1)


def frame_probabilities(model: nn.Module, waveform: torch.Tensor, audio_mask: torch.Tensor, ids: torch.Tensor,
                        text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, Q, La] of every frame against every query, and the frame mask [B, La]."""
    audio = model.audio_model(waveform, audio_mask)
    frames = model.audio_head(audio.last_hidden_state)  # [B, La, D]
    texts = model.text_head(model.text_output(ids, text_mask)[1])  # [Q, D]
    logits = torch.einsum("bld,qd->bql", frames, texts) * model.logit_scale + model.logit_bias
    mask = audio.mask if audio.mask is not None else torch.ones(frames.shape[:2], dtype=torch.bool,
                                                                 device=frames.device)
    return logits, mask


@torch.no_grad()
def sed_scores(model: nn.Module, dataset: Dataset, tokenizer: Any, labels: list[str], queries: list[str],
               threshold: float, batch_size: int) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Segment/event F1 and frame AUROC of `model` on `dataset` (one process); unreadable clips are skipped."""
    model.eval()
    ids, text_mask = tokenizer(queries)
    hop_s = model.hop_length / model.sampling_rate
    probs, reference, estimated, bad = {}, [], [], []
    loader = DataLoader(SeededSamples(dataset, 0), batch_size=batch_size,
                        collate_fn=lambda items: collate_skip_bad(items, collate))
    for chunk in loader:
        bad += chunk["bad"]
        batch = chunk["batch"]
        if batch is None:
            continue
        logits, mask = frame_probabilities(model, batch["waveform"], batch["audio_mask"], ids, text_mask)
        for b, file in enumerate(batch["file"]):
            track = logits[b, :, mask[b]].sigmoid().T  # [frames, Q]
            probs[file] = track
            estimated += events_from_probs(file, track, labels, threshold, hop_s)
            reference += [Event(file, onset, offset, label) for label, onset, offset in batch["events"][b]]
    if not probs:
        raise engine.NoUsableData(f"no readable evaluation clip ({len(bad)} unreadable, e.g. {bad[:1]})")
    segment, event = segment_metrics(reference, estimated, labels), event_metrics(reference, estimated, labels)
    auroc = frame_auroc(probs, reference, labels, hop_s)
    metrics = {**{f"segment_{k}": v for k, v in segment.items()}, **{f"event_{k}": v for k, v in event.items()},
               "auroc": auroc["auroc"], "clips": float(len(probs))}
    return metrics, bad


def _load_with_scaled_logits(cfg: Config) -> tuple[nn.Module, Any, dict]:
    model, tokenizer, meta = load_pe_model(cfg.model, "PEAudioFrame", train=True)
    if not cfg.model.checkpoint:  # the release's [0] placeholders would give every frame the same score
        scratch_init(model)
        with torch.no_grad():
            model.logit_scale.fill_(10.0)
            model.logit_bias.fill_(-math.log(9.0))  # a prior of 10 % active frames
    return model, tokenizer, meta


class PEAFrameTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        model, self.tokenizer, self.meta = _load_with_scaled_logits(self.cfg)
        self.rate = model.sampling_rate
        self.seconds_per_frame = model.hop_length / model.sampling_rate
        return model

    def model_meta(self) -> dict[str, Any]:
        return {**self.meta, "task": "pe-a-frame", "tokenizer": self.tokenizer.meta(), "labels": self.labels,
                "queries": self.queries, "threshold": self.cfg.threshold}

    def train_dataset(self) -> Dataset:
        self.train_set = sed_dataset(self.cfg.data, "train", self.rate)
        self.labels = list(self.train_set.classes)
        self.queries = query_texts(self.labels, self.cfg.data.queries)
        return self.train_set

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pe = getattr(model, "module", model)
        ids, text_mask = (t.to(batch["waveform"].device) for t in self.tokenizer(self.queries))
        logits, mask = frame_probabilities(pe, batch["waveform"], batch["audio_mask"], ids, text_mask)
        targets = frame_targets(batch["events"], self.labels, logits.shape[-1], self.seconds_per_frame)
        weight = mask[:, None, :].expand_as(logits).float()
        loss = F.binary_cross_entropy_with_logits(logits, targets.to(logits.device), weight=weight,
                                                  reduction="sum") / weight.sum()
        return {"loss": loss, "active_frames": (targets.to(weight.device) * weight).sum() / weight.sum()}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Any) -> dict[str, Any]:
        data = self.cfg.data
        if data.source != "embedded" and not data.val_source:
            return {}
        dataset = sed_dataset(data, "test", self.rate)
        metrics, bad = sed_scores(model, dataset, self.tokenizer, self.labels, self.queries, self.cfg.threshold,
                                  self.cfg.train.batch_size)
        return {"sed": metrics, "sed_bad_inputs": {"count": len(bad), "files": bad}}


def validate(cfg: Config) -> None:
    cfg.model.check()
    for key in ("source", "val_source", "queries", "audio_root", "val_audio_root"):
        value = getattr(cfg.data, key)
        if value and value != "embedded" and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}: {value} does not exist")
    if not 0 < cfg.threshold < 1:
        raise ConfigError(f"threshold: {cfg.threshold} must lie between 0 and 1")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(PEAFrameTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
