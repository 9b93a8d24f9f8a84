"""Support-set bottlenecks (Patrick, Huang et al., ICLR 2021): contrastive video-text learning plus generative
cross-captioning, where each caption is decoded from the other samples' videos.

Per step, each video of the batch gives ``clips_per_video`` temporally overlapping (video clip, text clip) pairs
(VideoCLIP's sampler, `percli.core.data.video_text`). Both are encoded into one space (`percli.models.support_set`:
per-second features and byte-level text) and trained with

* a contrastive term over the global batch (negatives gathered from every process): the bidirectional
  max-margin ranking loss (``contrastive=ranking``, margin `margin`, as the paper's baselines) or symmetric
  InfoNCE with a learnable temperature (``infonce``);
* ``caption_weight`` x the caption loss: the bottleneck ``e_i``, an attention-weighted sum over the batch's video
  embeddings, must generate caption i byte by byte. ``captioning=cross`` (the paper's) excludes sample i itself
  from its support set; ``self`` lets it attend to itself (the paper's "captioning" ablation); ``none`` is
  contrastive only (the decoder still runs at weight 0, so DDP sees every parameter used). The support set is
  each process's own batch.

Evaluation on held-out clips: every caption with the features of its own time span (clip retrieval, as
YouCook2), text->video and video->text R@1/5/10, median and mean rank (fractions in JSON).

Data: the embedded multilingual videos (default: per-second features of rendered moving-shape videos, English
and German captions with times) or a HowTo100M-layout folder (``how2_<lang>.json`` + ``features/<id>.npy``);
`data.language` picks the captions. Missing or broken feature files and bad caption entries are skipped and
counted in ``summary.json``. No official code exists: the encoders, λ (``caption_weight`` 1.0), the margin
(0.1) and the support set's query (``model.kwargs.query``: video) are percli's choices.

Examples:
  percli pretrain support-set                                   # tiny model, embedded videos, CPU minutes
  percli pretrain support-set captioning=none                  # the contrastive-only baseline
  percli pretrain support-set data.source=/data/howto100m data.val_source=/data/msrvtt_clips data.feature_dim=512
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, load_initial_weights
from percli.models.support_set import SupportSetModel, max_margin_ranking
from percli.recipes.clip import MAX_LOGIT_SCALE, contrastive_loss, gather_features
from percli.recipes.common import TrainedModelSection
from percli.recipes.video_text_common import (
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
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="support_set_tiny"))
    data: VideoTextDataSection = dataclasses.field(default_factory=VideoTextDataSection)
    contrastive: Literal["ranking", "infonce"] = "ranking"
    margin: float = 0.1
    captioning: Literal["cross", "self", "none"] = "cross"
    caption_weight: float = 1.0
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=16))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-4, ref_batch_size=16, weight_decay=0.01, warmup_fraction=0.05))


class SupportSetTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        d = self.cfg.data
        probe = video_text_videos(d, d.source, train=True)
        self.train_videos = probe
        feature_dim = feature_width(probe)
        kwargs = {"feature_dim": feature_dim, **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **kwargs)
        if not isinstance(model, SupportSetModel):
            raise ConfigError(f"model.name: {self.cfg.model.name!r} is not a support-set model; use support_set_tiny "
                              "or support_set_base")
        if model.config["max_video_len"] < d.max_video_len:
            raise ConfigError(f"data.max_video_len={d.max_video_len} exceeds the model's max_video_len "
                              f"{model.config['max_video_len']}; lower it or raise model.kwargs.max_video_len")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.kwargs, self.tokenizer = kwargs, model.tokenizer
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "support-set",
                "language": self.cfg.data.language}

    def train_dataset(self) -> Dataset:
        return overlapped_clips(self.cfg.data, self.train_videos)

    def eval_dataset(self) -> Dataset | None:
        return held_out(self.cfg.data)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_video_text(items)

    def _text(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer(texts)
        return ids.to(device), mask.to(device)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, inner = self.cfg, getattr(model, "module", model)
        with torch.no_grad():
            inner.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        ids, text_mask = self._text(batch["text"], batch["video"].device)
        out = model(batch["video"], batch["video_mask"], ids, text_mask, cross=cfg.captioning != "self")
        if cfg.contrastive == "infonce":
            contrastive = contrastive_loss(out["video_embeds"], out["text_embeds"], out["logit_scale"])
        else:
            videos, _ = gather_features(out["video_embeds"].float())
            texts, _ = gather_features(out["text_embeds"].float())
            # every process's clips; this process's rows and columns carry the gradient (the temperature is
            # unused: the zero keeps it in the graph for DDP)
            contrastive = max_margin_ranking(videos @ texts.T, cfg.margin) + 0.0 * out["logit_scale"]
        weight = 0.0 if cfg.captioning == "none" else cfg.caption_weight
        loss = contrastive + weight * out["caption_loss"]
        return {"loss": loss, "contrastive_loss": contrastive.detach(), "caption_loss": out["caption_loss"].detach(),
                "support_self_weight": out["attention"].diagonal().mean().detach()}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inner = getattr(model, "module", model)
        return {"video_embeds": inner.encode_video(batch["video"], batch["video_mask"]).float(),
                "text_embeds": inner.encode_texts(batch["text"], batch["video"].device).float(), "item": batch["index"]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return clip_retrieval_report(totals)


def validate(cfg: Config) -> None:
    from percli.recipes.common import validate as validate_model_and_paths

    validate_model_and_paths(cfg)
    validate_data(cfg.data)
    if cfg.caption_weight < 0 or cfg.margin < 0:
        raise ConfigError(f"caption_weight={cfg.caption_weight}, margin={cfg.margin}: give values >= 0")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(SupportSetTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
