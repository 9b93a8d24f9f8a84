"""Cross-modal retrieval of a PE-AV model: text <-> audio, text <-> video, text <-> audio+video, audio <-> video.

Every caption is a query against the clips (``t2a``, ``t2v``, ``t2av``) and every clip a query against all
captions (``a2t``, ``v2t``, ``av2t``: a hit when any caption of the clip is retrieved); audio and video
query each other (``a2v``, ``v2a``). Reported: R@1/5/10, median and mean rank, mAP@10 (in percent) per
direction, as the official evaluation ranks them (dot products of the heads' embeddings, each caption its
own query; ``similarity=cosine`` to L2-normalise first). Which directions exist depends on the modalities of
the data: an audio-only manifest (AudioCaps, Clotho) gives text <-> audio.

Data: the embedded clips' held-out split (default), percli's ``captions.jsonl``, or an AudioCaps / Clotho /
VALOR / MSR-VTT-style CSV, TSV, JSON or JSONL caption manifest (several captions per item; see
`percli.core.data.caption_manifest`). Unreadable clips (no audio track, silent or 1-sample audio, a corrupt
video) and empty captions are skipped and counted in ``summary.json``.

Examples:
  percli eval retrieval model.checkpoint=runs/pretrain-pe-av-.../checkpoints/step_0000300
  percli eval retrieval model.checkpoint=/models/pe-av-large data.source=/data/audiocaps/test.csv \\
      data.media_root=/data/audiocaps/audio data.modalities=[audio]
  accelerate launch --num_processes 4 -m percli.cli eval retrieval model.checkpoint=/models/pe-av-large \\
      data.source=/data/valor/test.jsonl
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from accelerate.utils import gather_object

from percli.core.config import ConfigError, TrainConfig
from percli.core.context import RunContext
from percli.core.data.av_clips import MANIFEST_NAME, READ_REASONS, AVClipDataset, skipped_by_reason
from percli.core.data.caption_manifest import read_caption_manifest
from percli.core.engine import BadInputLog, evaluate
from percli.core.rundir import write_json_atomic
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model
from percli.recipes.pe_av import AVDataSection, RetrievalEvaluator, _Indexed, av_dataset, collate

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclasses.dataclass
class RetrievalData(AVDataSection):
    media_root: str | None = None
    """Folder the manifest's relative media paths are joined onto (default: the manifest's folder)."""
    modalities: list[str] = dataclasses.field(default_factory=list)
    """audio and/or video; empty: audio+video for video files, audio for audio files."""


@dataclasses.dataclass
class Config:
    model: PEAVModelSection = dataclasses.field(default_factory=PEAVModelSection)
    data: RetrievalData = dataclasses.field(default_factory=lambda: RetrievalData(embedded_size=400))
    similarity: Literal["dot", "cosine"] = "dot"
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=16, num_workers=1))


class _Task:
    def __init__(self, evaluator: RetrievalEvaluator):
        self.evaluator = evaluator

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def eval_step(self, model, batch):
        return self.evaluator.eval_step(model, batch)

    def eval_reduce(self, totals):
        return self.evaluator.eval_reduce(totals)


def manifest_dataset(data: RetrievalData, rate: int, image_size: int) -> tuple[Any, dict[str, Any]]:
    """The clips of a caption manifest (any layout), decoded at the model's rates, and the manifest's counts."""
    path = Path(data.source).expanduser()
    if path.is_dir() or path.name == MANIFEST_NAME:
        dataset = AVClipDataset(path, sample_rate=rate, num_frames=data.num_frames, frame_size=image_size,
                                modalities=tuple(data.modalities or ("audio", "video")))
        return _Indexed(dataset), {}
    manifest = read_caption_manifest(path, media_root=data.media_root)
    video = Path(manifest.items[0]).suffix.lower() in VIDEO_SUFFIXES
    modalities = tuple(data.modalities or (("audio", "video") if video else ("audio",)))
    grouped: list[list[str]] = [[] for _ in manifest.items]
    for caption, item in zip(manifest.captions, manifest.caption_item):
        grouped[item].append(caption)
    key = "video" if video else "audio"
    records = [{"id": str(i), key: media, "captions": captions}
               for i, (media, captions) in enumerate(zip(manifest.items, grouped))]
    dataset = AVClipDataset(records, sample_rate=rate, num_frames=data.num_frames, frame_size=image_size,
                            modalities=modalities)
    return _Indexed(dataset), {"manifest": manifest.counts, "manifest_bad_examples": manifest.bad_examples}


def skipped(dataset: Any, bad_files: list[dict[str, str]]) -> dict[str, int]:
    """Clips and captions left out, by reason: dropped when the manifest was read, skipped when decoded."""
    found = Counter(getattr(dataset, "skipped", {}))
    for reason in READ_REASONS:  # decoding happens in loader workers: count what the engine collected
        found.pop(reason, None)
    return dict(found + skipped_by_reason(bad_files))


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    accelerator = ctx.accelerator
    model, tokenizer, meta = load_pe_model(cfg.model, "PEAudioVisual")
    rate, size = meta["sampling_rate"], meta["image_size"]
    if cfg.data.source == "embedded":
        dataset, counts = av_dataset(cfg.data, "embedded", "test", rate, size), {}
    else:
        dataset, counts = manifest_dataset(cfg.data, rate, size)
    model = accelerator.prepare(model)
    bad = BadInputLog()
    task = _Task(RetrievalEvaluator(tokenizer, size, normalize=cfg.similarity == "cosine"))
    metrics = evaluate(task, model, dataset, accelerator, cfg.train, bad)
    if accelerator.num_processes > 1:
        merged = BadInputLog()
        for files in gather_object([bad.files]):
            merged.add(files)
        bad = merged
    clips = getattr(dataset.dataset, "bad_records", None)
    summary = {"status": "completed", "checkpoint": cfg.model.checkpoint, "data": cfg.data.source,
               "similarity": cfg.similarity, "metrics": metrics, "run_dir": str(ctx.run_dir),
               "bad_inputs": {"count": len(bad.files), "files": bad.files},
               "bad_records": {"count": clips.count, "examples": clips.examples} if clips else {"count": 0},
               "skipped": skipped(dataset.dataset, bad.files), **counts,
               "world_size": accelerator.num_processes}
    if accelerator.is_main_process:
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    return summary


def validate(cfg: Config) -> None:
    if not cfg.model.checkpoint:
        raise ConfigError("model.checkpoint: not set; give a PE-AV release folder (config.json + model.safetensors "
                          "+ tokenizer.json) or a `percli pretrain pe-av` checkpoint")
    cfg.model.check()
    if cfg.data.source != "embedded" and not Path(cfg.data.source).expanduser().exists():
        raise ConfigError(f"data.source: {cfg.data.source} does not exist")
    unknown = set(cfg.data.modalities) - {"audio", "video"}
    if unknown:
        raise ConfigError(f"data.modalities: {sorted(unknown)}; use audio and/or video")
