"""Embed the clips and captions of a manifest with PE-AV: audio, video, audio+video and text embeddings in
safetensors parts, batched, resumable and shard-parallel.

Each part of ``part_size`` clips becomes ``parts/part-NNNNN.safetensors`` (written to a temporary name, then
renamed): ``audio``, ``video``, ``audio_video`` [n, D] (the clips that decoded, rows in ``item`` order),
the caption embeddings ``audio_text``, ``video_text``, ``audio_video_text`` [m, D] (each head's text space),
``item`` [n] (the clip's position in the manifest) and ``caption_item`` [m] (the clip of each caption);
the part's metadata (key ``percli``) lists the ids, captions and skipped clips. Embeddings are the heads'
outputs as the release returns them, not normalised. ``--resume`` keeps finished parts and writes the rest;
under ``accelerate launch`` / torchrun each process writes every N-th part. Unreadable clips (no audio
track, silent or 1-sample audio, a corrupt video) and empty captions are skipped and counted.

Examples:
  percli embed /data/valor/captions.jsonl --checkpoint /models/pe-av-large -o embeddings/valor
  percli embed /data/audiocaps/test.csv --checkpoint /models/pe-av-large --modalities audio --modalities text \\
      -o ac_test
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from percli.core import dist
from percli.core.checkpoint import save_weights
from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.loader import SeededSamples, collate_skip_bad
from percli.core.rundir import write_json_atomic
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model, pe_video_frames

MODALITIES = ("audio", "video", "text")
HEADS = {"audio": ("audio_embeds", "audio_text"), "video": ("visual_embeds", "video_text"),
         "audio_video": ("audio_visual_embeds", "audio_video_text")}


@dataclasses.dataclass
class Config:
    inputs: list[str] = dataclasses.field(default_factory=list)
    """One caption manifest (captions.jsonl / AudioCaps / Clotho / VALOR / MSR-VTT layouts), or none: the embedded
    held-out clips."""
    model: PEAVModelSection = dataclasses.field(default_factory=PEAVModelSection)
    modalities: list[str] = dataclasses.field(default_factory=lambda: list(MODALITIES))
    """Any of audio, video, text (audio and video together also give audio_video)."""
    media_root: str | None = None
    """Folder the manifest's relative media paths are joined onto (default: the manifest's folder)."""
    num_frames: int = 16
    """Frames per clip, evenly spread (the -16-frame releases)."""
    embedded_size: int = 80
    """Clips of the embedded held-out split embedded when no input is given."""
    batch_size: int = 16
    part_size: int = 512
    """Clips per output part: the unit --resume skips and processes share."""


def _dataset(cfg: Config, rate: int, size: int) -> Any:
    from percli.core.data.av_events import AVEventsSpec, EmbeddedAVEvents
    from percli.recipes.pe_av import _Indexed
    from percli.recipes.retrieval_eval import RetrievalData, manifest_dataset

    if not cfg.inputs:
        clips = EmbeddedAVEvents(cfg.embedded_size, split="test", spec=AVEventsSpec(sample_rate=rate),
                                 num_frames=cfg.num_frames)
        return _Indexed(clips), {}
    media = [m for m in ("audio", "video") if m in cfg.modalities]
    data = RetrievalData(source=cfg.inputs[0], num_frames=cfg.num_frames, media_root=cfg.media_root,
                         modalities=media or ["audio"])
    return manifest_dataset(data, rate, size)


@torch.no_grad()
def _embed_batch(model: Any, tokenizer: Any, batch: dict[str, Any], cfg: Config, size: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    frames = pe_video_frames(batch["frames"], size).to(device) if "video" in cfg.modalities and "frames" in batch \
        else None
    wav = batch["waveform"].to(device) if "audio" in cfg.modalities and "waveform" in batch else None
    mask = batch["audio_mask"].to(device) if wav is not None else None
    out: dict[str, torch.Tensor] = {}
    if wav is not None or frames is not None:
        video_mask = batch["video_mask"].to(device) if frames is not None else None
        media = model(None, frames, wav, None, video_mask, mask)
        out = {name: media[key].float().cpu() for name, (key, _) in HEADS.items() if media[key] is not None}
    if "text" in cfg.modalities:
        captions = [c for caps in batch["captions"] for c in caps]
        ids, text_mask = (t.to(device) for t in tokenizer(captions))
        encoders = {"audio": model.encode_audio_text, "video": model.encode_video_text,
                    "audio_video": model.encode_audio_video_text}
        for name, encode in encoders.items():
            if name in out or not (wav is not None or frames is not None):
                out[HEADS[name][1]] = encode(ids, text_mask).float().cpu()
        out["caption_item"] = torch.tensor([int(i) for i, caps in zip(batch["index"], batch["captions"])
                                            for _ in caps])
    out["item"] = batch["index"].clone()
    return out


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    from percli.recipes.pe_av import collate
    from percli.recipes.retrieval_eval import skipped

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_pe_model(cfg.model, "PEAudioVisual")
    model = model.to(device)
    size = meta["image_size"]
    dataset, counts = _dataset(cfg, meta["sampling_rate"], size)
    parts = [range(start, min(start + cfg.part_size, len(dataset))) for start in range(0, len(dataset), cfg.part_size)]
    folder = ctx.run_dir / "parts"
    written, kept, bad = 0, 0, []
    with ctx.progress("embed", len(parts), "parts") as bar:
        for number, rows in enumerate(parts):
            path = folder / f"part-{number:05d}.safetensors"
            if number % ctx.world != ctx.rank:
                continue
            if path.is_file() and ctx.resume:
                bar.advance(1)
                continue
            loader = DataLoader(SeededSamples(Subset(dataset, list(rows)), 0), batch_size=cfg.batch_size,
                                collate_fn=lambda items: collate_skip_bad(items, collate))
            pieces: dict[str, list[torch.Tensor]] = {}
            part_bad: list[dict[str, str]] = []
            captions: list[str] = []
            for chunk in loader:
                part_bad += chunk["bad"]
                if chunk["batch"] is not None:
                    captions += [c for caps in chunk["batch"]["captions"] for c in caps]
                    for key, value in _embed_batch(model, tokenizer, chunk["batch"], cfg, size, device).items():
                        pieces.setdefault(key, []).append(value)
            tensors = {k: torch.cat(v) for k, v in pieces.items()}
            records = dataset.dataset.records if hasattr(dataset.dataset, "records") else None
            ids = [records[int(i)].id if records else f"embedded:{int(i)}" for i in tensors.get("item", [])]
            save_weights(path, tensors, {"ids": ids, "captions": captions, "bad": part_bad,
                                        "checkpoint": cfg.model.checkpoint})
            written += 1
            kept += len(ids)
            bad += part_bad
            bar.advance(1)
    totals = dist.all_reduce_sum(torch.tensor([written, kept]).numpy(), ctx.world).tolist()
    bad = [b for rank_bad in dist.all_gather(bad, ctx.world) for b in rank_bad]
    summary = {"status": "completed", "checkpoint": cfg.model.checkpoint, "inputs": cfg.inputs,
               "modalities": cfg.modalities, "parts": len(parts), "parts_written": int(totals[0]),
               "clips_embedded": int(totals[1]), "output": str(folder), "run_dir": str(ctx.run_dir),
               "bad_inputs": {"count": len(bad), "files": bad}, "skipped": skipped(dataset.dataset, bad), **counts}
    if ctx.is_main:
        write_json_atomic(ctx.run_dir / "summary.json", summary)
        write_json_atomic(ctx.run_dir / "index.json", {"parts": [f"part-{n:05d}.safetensors" for n in
                                                                range(len(parts))], "model": json.loads(
                                                                    json.dumps(meta, default=str))})
    return summary


def validate(cfg: Config) -> None:
    if not cfg.model.checkpoint:
        raise ConfigError("model.checkpoint: not set; pass --checkpoint with a PE-AV release folder or a `percli "
                          "pretrain pe-av` checkpoint")
    cfg.model.check()
    if len(cfg.inputs) > 1:
        raise ConfigError(f"inputs: one manifest per run, got {len(cfg.inputs)}")
    if cfg.inputs and not Path(cfg.inputs[0]).expanduser().exists():
        raise ConfigError(f"inputs: {cfg.inputs[0]} does not exist")
    unknown = set(cfg.modalities) - set(MODALITIES)
    if unknown or not cfg.modalities:
        raise ConfigError(f"modalities: {sorted(unknown) or 'empty'}; choose from {', '.join(MODALITIES)}")
    for key in ("batch_size", "part_size", "num_frames"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1")
