"""VideoCLIP (Xu, Ghosh, Huang et al., EMNLP 2021): contrastive video-text pretraining with temporally overlapping
positives and retrieval-augmented batches, on MMPT's two-tower model (`percli.models.mmpt`, golden-checked).

Each video of a batch gives ``clips_per_video`` (video clip, text clip) pairs that overlap in time without sharing
their boundaries (`percli.core.data.video_text.sample_overlapping_clip`: text clips of
``data.min_text_len..max_text_len`` word pieces, video clips of ``data.min_video_len..max_video_len`` seconds; the
release: 8-64 tokens, 3-32 s, 16 clips per video). The loss is the release's symmetric InfoNCE without temperature
or normalisation, ``CE(V T^T) + CE(T V^T)`` on the masked-mean pooled towers, over the global batch (negatives
all-gathered across processes), so the other clips of the same video are negatives too.

Retrieval-augmented training (``retrieval.every`` epochs; 0 = off): every training video is embedded with the
current model (the mean over its sampled clips of (pooled video + pooled text) / 2, as the release), each of
``len / videos_per_batch`` random seed videos takes ``videos_per_batch`` of its ``num_candidates`` nearest
neighbours (exact search; the release uses FAISS), and each such group becomes one batch: negatives are clips of
similar videos. A global batch is then one group (``train.batch_size`` is set to its share per process).

Evaluation on held-out clips: every caption with the features of its own span, text->video and video->text
R@1/5/10, median and mean rank (fractions in JSON), scored as the release (raw dot products).

Model: ``model.checkpoint`` takes an MMPT checkpoint (safetensors of the release's state) or a local Hugging
Face ``bert-base-uncased`` folder (both towers initialised from it, the video tower from its first layers).
Tokenizer: bert-base-uncased's WordPiece vocabulary (``tokenizer: minilm``, shipped offline) or a local folder.
Data: the embedded English-German videos (default) or a HowTo100M-layout folder (``how2_<lang>.json`` +
``features/<id>.npy``, S3D 512-d per second as the papers, or `percli extract features`); missing or broken
feature files and bad caption entries are skipped and counted in ``summary.json``.

Examples:
  percli pretrain videoclip                                  # tiny model, embedded videos, CPU minutes
  percli pretrain videoclip retrieval.every=0                # without retrieval-augmented batches
  percli pretrain videoclip --preset how2 data.source=/data/howto100m model.checkpoint=/models/bert-base-uncased
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.loader import mix_seed
from percli.models import create_model, load_initial_weights
from percli.recipes.clip import contrastive_loss
from percli.recipes.common import TrainedModelSection
from percli.recipes.video_text_common import (
    BERT_TOKENIZER,
    MMPTCaptions,
    VideoTextDataSection,
    clip_retrieval_report,
    collate_video_text,
    feature_width,
    held_out,
    overlapped_clips,
    validate_data,
    video_text_videos,
)


@dataclasses.dataclass
class RetrievalSection:
    every: int = 1
    """Rebuild the retrieval-augmented batches every this many epochs (0: plain shuffled batches)."""
    videos_per_batch: int = 8
    """Videos in one retrieved group (one batch); the release: 32."""
    num_candidates: int = 16
    """Nearest neighbours a seed video draws its group from; the release: 64."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="videoclip_how2"))
    data: VideoTextDataSection = dataclasses.field(default_factory=VideoTextDataSection)
    tokenizer: str = BERT_TOKENIZER
    """bert-base-uncased's WordPiece vocabulary (`minilm`, offline) or a local Hugging Face tokenizer folder."""
    max_text_tokens: int = 32
    """Caption tokens per clip, [CLS] and both [SEP] included (the release: 96 minus the video's 32 + 3)."""
    retrieval: RetrievalSection = dataclasses.field(default_factory=RetrievalSection)
    gather_with_grad: bool = False
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=8, grad_clip=2.0))
    """``batch_size`` counts videos (each gives ``data.clips_per_video`` clip pairs)."""
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-5, ref_batch_size=8, weight_decay=0.0, betas=(0.9, 0.98), warmup_fraction=0.05))


class VideoCLIPTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        cfg, d = self.cfg, self.cfg.data
        self.train_videos = video_text_videos(d, d.source, train=True)
        feature_dim = feature_width(self.train_videos)
        kwargs = {"input_dim": feature_dim, "max_video_len": d.max_video_len, **cfg.model.kwargs}
        model = create_model(cfg.model.name, **kwargs)
        if not hasattr(model, "forward_video") or not hasattr(model, "forward_text"):
            raise ConfigError(f"model.name: {cfg.model.name!r} is not a two-tower video-text model; use "
                              "videoclip_how2")
        if model.preprocess["max_video_len"] < d.max_video_len:
            raise ConfigError(f"data.max_video_len={d.max_video_len} exceeds the model's max_video_len "
                              f"{model.preprocess['max_video_len']}")
        if cfg.model.checkpoint:
            load_initial_weights(model, cfg.model.checkpoint)
        self.kwargs = kwargs
        self.tokenizer = MMPTCaptions(cfg.tokenizer, cfg.max_text_tokens)
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "videoclip",
                "tokenizer": self.cfg.tokenizer, "max_text_tokens": self.cfg.max_text_tokens,
                "language": self.cfg.data.language}

    def train_dataset(self) -> Dataset:
        self.clips = overlapped_clips(self.cfg.data, self.train_videos, self.tokenizer.length)
        return self.clips

    def eval_dataset(self) -> Dataset | None:
        return held_out(self.cfg.data)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_video_text(items)

    # ----------------------------------------------------------------------- steps

    def _forward(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        caps, cmasks = (t.to(device) for t in self.tokenizer(batch["text"]))
        return model(caps, cmasks, batch["video"].to(device), batch["video_mask"].to(device))

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self._forward(model, batch, batch["video"].device)
        video, text = out["pooled_video"].float(), out["pooled_text"].float()
        # contrastive_loss is (CE(V T^T) + CE(T V^T)) / 2 at scale 1: twice it is the release's loss
        loss = 2 * contrastive_loss(video, text, video.new_tensor(1.0), self.cfg.gather_with_grad)
        return {"loss": loss, "clips": torch.tensor(float(len(video)))}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self._forward(getattr(model, "module", model), batch, batch["video"].device)
        return {"video_embeds": out["pooled_video"].float(), "text_embeds": out["pooled_text"].float(),
                "item": batch["index"]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return clip_retrieval_report(totals)


class RetrievalAugmentedTask(VideoCLIPTask):
    """VideoCLIP with retrieval-augmented batches: each epoch walks groups of neighbouring videos in order, one
    group per global batch (the curated list is saved in checkpoints, so a resumed epoch sees the same batches)."""

    keep_curated_order = True

    @property
    def epoch_len(self) -> int:
        return len(self.clips) // self.cfg.retrieval.videos_per_batch * self.cfg.retrieval.videos_per_batch

    def curate(self, epoch: int, model: nn.Module, previous: list[int] | None = None
               ) -> tuple[list[int], dict[str, float]]:
        """The videos of this epoch's groups, group after group (rebuilt every ``retrieval.every`` epochs from the
        current model's embeddings; the same on every rank: same weights, same seeded draws)."""
        r = self.cfg.retrieval
        if previous is not None and epoch % r.every:
            return previous, {"groups": float(len(previous) // r.videos_per_batch)}
        embeddings = self._video_embeddings(model, self.clips, epoch)
        groups = knn_groups(embeddings, r.videos_per_batch, r.num_candidates,
                            torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, epoch)))
        return [v for group in groups for v in group], {"groups": float(len(groups))}

    @torch.no_grad()
    def _video_embeddings(self, model: nn.Module, clips: Dataset, epoch: int) -> torch.Tensor:
        """[videos, H]: per video, the mean over its sampled clips of (pooled video + pooled text) / 2."""
        device = next(model.parameters()).device
        rows = []
        for v in range(len(clips)):
            torch.manual_seed(mix_seed(self.cfg.train.seed, epoch, v))  # the clip draws of this round
            try:
                batch = collate_video_text([clips[v]])
            except ValueError:  # an unreadable video: no neighbours (zeros keep the index aligned)
                rows.append(None)
                continue
            out = self._forward(model, batch, device)
            rows.append(((out["pooled_video"] + out["pooled_text"]) / 2).mean(dim=0).float().cpu())
        width = next(r for r in rows if r is not None).shape[0]
        return torch.stack([r if r is not None else torch.zeros(width) for r in rows])


def knn_groups(embeddings: torch.Tensor, size: int, candidates: int, generator: torch.Generator) -> list[list[int]]:
    """``len // size`` groups: each of that many random seed videos takes ``size`` videos drawn at random from
    its ``candidates`` nearest (squared L2, itself included first), as the release's retrieval-augmented batches.
    Groups may share videos (as the release's); a video with zero embedding (unreadable) is never a neighbour."""
    n = len(embeddings)
    size, candidates = min(size, n), min(max(candidates, size), n)
    distance = torch.cdist(embeddings, embeddings)
    distance[embeddings.abs().sum(dim=1) == 0] = float("inf")  # columns of unreadable videos: never drawn
    distance.fill_diagonal_(-1.0)  # the seed itself first
    seeds = torch.randperm(n, generator=generator)[: max(n // size, 1)]
    groups = []
    for seed in seeds.tolist():
        nearest = distance[seed].topk(candidates, largest=False).indices
        keep = torch.randperm(candidates - 1, generator=generator)[: size - 1] + 1
        groups.append([int(nearest[0]), *(int(nearest[i]) for i in keep)])
    return groups


def validate(cfg: Config) -> None:
    from percli.recipes.common import validate as validate_model_and_paths

    validate_model_and_paths(cfg)
    validate_data(cfg.data)
    r = cfg.retrieval
    if r.every < 0 or r.videos_per_batch < 2 or r.num_candidates < r.videos_per_batch:
        raise ConfigError(f"retrieval: every={r.every} (>= 0), videos_per_batch={r.videos_per_batch} (>= 2) and "
                          f"num_candidates={r.num_candidates} (>= videos_per_batch) are needed")
    if cfg.max_text_tokens < 4:
        raise ConfigError(f"max_text_tokens={cfg.max_text_tokens}: give at least 4 ([CLS], [SEP], a word, [SEP])")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    train = cfg.train
    if cfg.retrieval.every > 0:  # one retrieved group per global batch
        per, world = cfg.retrieval.videos_per_batch, ctx.accelerator.num_processes
        if per % world:
            raise ConfigError(f"retrieval.videos_per_batch={per} must split evenly over the {world} processes")
        if train.grad_accum_steps != 1:
            raise ConfigError("train.grad_accum_steps: a retrieved group is one batch; keep it at 1")
        train = dataclasses.replace(train, batch_size=per // world)
    task = RetrievalAugmentedTask(cfg) if cfg.retrieval.every > 0 else VideoCLIPTask(cfg)
    return engine.train(task, train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
