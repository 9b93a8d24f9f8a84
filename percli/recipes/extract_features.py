"""Per-second video features with a frozen percli encoder: one ``<id>.safetensors`` per video, resumable and
shard-parallel, the input of the video-language recipes (VideoCLIP, VLM, MMP, support-set), which the papers
feed with S3D features at one vector per second.

Encoders (from the checkpoint's metadata: any percli run dir, checkpoint or ``.safetensors`` file):

* an image-text model (CLIP / MetaCLIP / PE towers, ``encode_image``): each step's ``frames_per_step`` frames
  (spread evenly over the step) through the image tower, averaged;
* a video Hiera (``forward_features``: the pooled, normalised final features): one clip of the model's
  ``num_frames`` frames centred on each step, read at ``clip_fps`` frames per second.

Each step lasts ``1 / fps`` seconds (default 1: one vector per second); a video of d seconds gives
``max(1, round(d * fps))`` rows. Output: ``OUT/features/<id>.safetensors`` with ``features`` [T, D] (float32)
and metadata (fps, encoder, checkpoint, source path), written to a temporary name then renamed, so an
interrupted run never leaves a half-written file; ``--resume`` skips the files already written. Under
``accelerate launch`` / torchrun / SLURM each process takes every N-th video. Unreadable videos (missing,
empty, corrupt, no video stream) are skipped and counted by reason in ``summary.json``.

Inputs: video files, folders (every video under them) or a JSONL manifest (``{"id", "video"}`` per line, paths
relative to the manifest); ids are the file stems for files and folders.

Examples:
  percli extract features /data/msrvtt/videos --checkpoint runs/clip/checkpoints/step_0010000 -o feats/msrvtt
  percli extract features clips.jsonl --checkpoint runs/pe/checkpoints/step_0020000 --frames-per-step 2 -o feats/pe
  accelerate launch --num_processes 8 -m percli.cli extract features /data/howto100m/videos \\
      --checkpoint runs/hiera-video/checkpoints/step_0050000 -o feats/how2 --resume
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from percli.core import dist
from percli.core.checkpoint import read_header, read_meta, run_weights, save_weights
from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.av_clips import AVClipDataset, skipped_by_reason
from percli.core.data.images import BadSample
from percli.core.data.transforms import ImagePreprocess, video_transform, with_trained_preprocess
from percli.core.data.video import VIDEO_EXTENSIONS
from percli.core.rundir import write_json_atomic
from percli.models import create_model_for, load_initial_weights


@dataclasses.dataclass
class Config:
    inputs: list[str] = dataclasses.field(default_factory=list)
    """Video files, folders of videos, or one JSONL manifest ({"id", "video"} per line)."""
    checkpoint: str = ""
    """The frozen encoder: a percli run dir / checkpoint / .safetensors of an image-text model or a video Hiera."""
    fps: float = 1.0
    """Feature rows per second of video."""
    frames_per_step: int = 1
    """Image-text encoders: frames averaged per step."""
    clip_fps: float = 7.5
    """Video Hiera: the frame rate its clips are read at (30 fps at temporal stride 4, as Kinetics training)."""
    frame_size: int = 256
    """Frames are resized to this side when read (the encoder's transform then crops or squashes)."""
    batch_size: int = 32
    """Frames (image encoders) or clips (video Hiera) per forward."""


def _source(inputs: list[str]) -> str | list[dict[str, str]]:
    """One JSONL manifest as it is (its reader counts malformed lines), else records {"id", "video"} of the video
    files and of every video under the folders (ids: file stems; the reader counts repeated ids)."""
    if len(inputs) == 1 and inputs[0].endswith(".jsonl"):
        return inputs[0]
    records = []
    for item in inputs:
        path = Path(item).expanduser()
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS) if path.is_dir() else [path]
        records += [{"id": p.stem, "video": str(p)} for p in files]
    return records


class Encoder:
    """The frozen model and how it turns a video's frames into one row per step."""

    def __init__(self, cfg: Config, device: torch.device):
        weights = run_weights(cfg.checkpoint)
        meta = read_meta(weights)
        if not meta.get("name"):
            raise ConfigError(f"checkpoint: {weights} names no model in its metadata; give a percli checkpoint")
        self.model = create_model_for(meta["name"], meta.get("kwargs") or {}, weights)
        load_initial_weights(self.model, weights)
        self.model.eval().to(device)
        self.device, self.cfg = device, cfg
        pre = with_trained_preprocess(getattr(self.model, "preprocess", None) or {}, meta)
        if hasattr(self.model, "encode_image"):
            self.kind, self.read_fps = "image", cfg.fps * cfg.frames_per_step
            self.transform = ImagePreprocess.of(pre).eval_transform()
        elif len(pre.get("input_size") or []) == 4:
            self.kind, self.read_fps = "video", cfg.clip_fps
            self.num_frames = int(pre["input_size"][1])
            frames_first = video_transform(int(pre["input_size"][-1]), pre["mean"], pre["std"], train=False)
            self.transform = lambda clip: frames_first(clip).permute(1, 0, 2, 3)  # [T, C, S, S] -> [C, T, S, S]
        else:
            raise ConfigError(f"checkpoint: {cfg.checkpoint} is a {type(self.model).__name__}, which gives no "
                              "per-frame or per-clip features; use a CLIP / PE image-text model or a video Hiera")

    def _forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for start in range(0, len(inputs), self.cfg.batch_size):
            batch = torch.stack(inputs[start:start + self.cfg.batch_size]).to(self.device)
            features = self.model.encode_image(batch) if self.kind == "image" else self.model.forward_features(batch)
            out.append(features.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] read at ``read_fps`` -> [T, D], T = steps of 1 / fps seconds."""
        seconds = frames.shape[0] / self.read_fps
        steps = max(1, round(seconds * self.cfg.fps))
        if self.kind == "image":
            k = self.cfg.frames_per_step
            index = [min(t * k + j, frames.shape[0] - 1) for t in range(steps) for j in range(k)]
            features = self._forward([self.transform(frames[i]) for i in index])
            return features.view(steps, k, -1).mean(dim=1)
        clips = []
        for t in range(steps):  # a clip of num_frames consecutive read frames centred on the step's centre
            centre = round((t + 0.5) / self.cfg.fps * self.read_fps)
            first = centre - self.num_frames // 2
            index = [min(max(first + j, 0), frames.shape[0] - 1) for j in range(self.num_frames)]
            clips.append(self.transform(frames[index]))
        return self._forward(clips)


def _written(path: Path) -> bool:
    try:
        read_header(path)
        return True
    except (OSError, ValueError):
        return False


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = Encoder(cfg, device)
    reader = AVClipDataset(_source(cfg.inputs), modalities=("video",), fps=encoder.read_fps,
                           frame_size=cfg.frame_size, require_captions=False)
    indexing = dict(reader.skipped)  # manifest lines and repeated ids dropped before any reading
    folder = ctx.run_dir / "features"
    written, resumed, bad = 0, 0, []
    with ctx.progress("extract", len(reader), "videos") as bar:
        for index, record in enumerate(reader.records):
            if index % ctx.world != ctx.rank:
                continue
            path = folder / f"{record.id}.safetensors"
            if ctx.resume and _written(path):
                resumed += 1
                bar.advance(1)
                continue
            try:
                frames = reader[index]["frames"]
            except BadSample as sample:
                bad.append({"path": record.video, "reason": sample.reason})
                bar.advance(1)
                continue
            save_weights(path, {"features": encoder(frames)},
                         {"id": record.id, "source": record.video, "fps": cfg.fps, "encoder": encoder.kind,
                          "checkpoint": cfg.checkpoint, "frames_per_step": cfg.frames_per_step})
            written += 1
            bar.advance(1)
    totals = dist.all_reduce_sum(torch.tensor([written, resumed]).numpy(), ctx.world).tolist()
    bad = [b for rank_bad in dist.all_gather(bad, ctx.world) for b in rank_bad]
    summary = {"status": "completed", "checkpoint": cfg.checkpoint, "encoder": encoder.kind, "fps": cfg.fps,
               "videos": len(reader), "written": int(totals[0]), "resumed": int(totals[1]), "output": str(folder),
               "run_dir": str(ctx.run_dir), "bad_inputs": {"count": len(bad), "files": bad},
               "skipped": dict(skipped_by_reason(bad) + Counter(indexing)), "bad_records": {
                   "count": reader.bad_records.count, "examples": reader.bad_records.examples}}
    if ctx.is_main:
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    return summary


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; pass --checkpoint with a CLIP / PE image-text model or a video Hiera "
                          "(a percli run dir, checkpoint dir or .safetensors file)")
    if not cfg.inputs:
        raise ConfigError("inputs: none given; pass video files, folders of videos or a JSONL manifest")
    for item in cfg.inputs:
        if not Path(item).expanduser().exists():
            raise ConfigError(f"inputs: {item} does not exist")
    for key in ("fps", "clip_fps"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: give a rate > 0")
    for key in ("frames_per_step", "frame_size", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: give a value >= 1")
