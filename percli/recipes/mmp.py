"""MMP, multilingual multimodal pre-training (Huang, Patrick et al., NAACL 2021): one video encoder and one
text encoder shared by every language, trained on (x, v, y) triples.

Per step, each video of the batch gives ``clips_per_video`` temporally overlapping clips (VideoCLIP's sampler,
`percli.core.data.video_text.sample_overlapping_clips`), drawn on the captions of the first language of
``data.languages`` (A). x is the clip's text in A, v its video, y the text of the SAME caption indices in the
second language (B): Multi-HowTo100M's languages are translations with one segmentation, and the embedded
videos align English and German caption by caption. A video whose languages differ in caption count cannot be
aligned and is skipped (``caption_count_mismatch`` in ``summary.json``). The objective, each term a symmetric
InfoNCE over the global batch (negatives gathered from every process) with the model's learnable temperature:

* inter-modal, ``inter_weight``: (v, x) and (v, y);
* intra-modal / cross-lingual, ``intra_weight``: (x, y);
* conditional cross-lingual, ``conditional_weight``: ``normalize(x + v)`` against y. The notes read the paper as
  "y must match x in the presence of v"; the sum of the two unit vectors is percli's reading of that, the
  paper's exact form is unverified.

``data.languages: [en]`` is the English-only baseline: (v, x) alone, no y term.

Text encoder: byte-level tokens (the presets), or the paper's mBERT / XLM-R from a local Hugging Face folder
(``model.kwargs.text_encoder.hf_folder``; its word pieces under the text TP head, see `percli.models.mmp`).

Evaluation on held-out clips, per language of ``data.eval_languages`` (default: en and de): every caption with
the features of its own time span, text->video and video->text R@1/5/10, median and mean rank, prefixed by the
language (``eval/de_t2v_R@1``). Training on ``[en]`` and evaluating ``de`` is the paper's zero-shot
cross-lingual setting.

Data: the embedded English-German videos or a Multi-HowTo100M-layout folder (``how2_<lang>.json`` per language +
``features/<id>.npy``). Missing or broken feature files and bad caption entries are skipped and counted.

Examples:
  percli pretrain mmp                                      # tiny model, en+de, embedded videos, ~5 CPU minutes
  percli pretrain mmp data.languages=[en]                  # English-only: zero-shot German at evaluation
  percli pretrain mmp data.source=/data/multi_ht100m data.languages=[en,fr] data.eval_languages=[en,fr]
  percli pretrain mmp model.name=mmp_base model.kwargs.text_encoder.hf_folder=/models/xlm-roberta-base \
      data.source=/data/multi_ht100m data.languages=[en,de]   # a Hugging Face mBERT / XLM-R text side
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.images import BadSample
from percli.core.data.loader import mix_seed
from percli.core.data.video_text import (
    OverlapSampling,
    clip_texts,
    overlapped_clip_batch,
    whitespace_token_length,
)
from percli.models import create_model, load_initial_weights
from percli.models.mmp import MMPModel, conditional_query
from percli.recipes.clip import MAX_LOGIT_SCALE, contrastive_loss
from percli.recipes.common import TrainedModelSection
from percli.recipes.video_text_common import (
    CaptionedSegments,
    VideoTextDataSection,
    clip_retrieval_report,
    collate_video_text,
    feature_width,
    validate_data,
    video_text_videos,
)


@dataclasses.dataclass
class MMPDataSection(VideoTextDataSection):
    """The video-text data section with languages instead of ``language`` (which MMP does not read)."""

    languages: list[str] = dataclasses.field(default_factory=lambda: ["en", "de"])
    """Training languages: [A] (English-only baseline) or [A, B]; clips are sampled on A's captions."""
    eval_languages: list[str] = dataclasses.field(default_factory=lambda: ["en", "de"])
    """Held-out retrieval is scored per language of this list."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="mmp_tiny"))
    data: MMPDataSection = dataclasses.field(default_factory=MMPDataSection)
    inter_weight: float = 1.0
    """(v, x) and (v, y)."""
    intra_weight: float = 1.0
    """(x, y): cross-lingual text-text."""
    conditional_weight: float = 1.0
    """(normalize(x + v), y)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=16))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-4, ref_batch_size=16, weight_decay=0.01, warmup_fraction=0.05))


class MultilingualClips(Dataset):
    """Per video, ``clips_per_video`` overlapping clips sampled on language A's captions, with the text of the
    same caption indices in language B.

    Items: ``{"id", "video" [K, max_video_len, D], "video_mask" [K, max_video_len], "text" [K] (A),
    "text_b" [K] (B; absent with one language), "clips" [K] SampledClip}``. A video without captions in a
    language, or whose languages differ in caption count, raises ``BadSample`` (counted in ``skipped``).
    """

    def __init__(self, videos: Dataset, languages: list[str], sampling: OverlapSampling,
                 token_length: Callable[[str], int] = whitespace_token_length, seed: int | None = None) -> None:
        self.videos, self.languages, self.sampling = videos, list(languages), sampling
        self.token_length, self.seed = token_length, seed
        self.skipped: Counter[str] = getattr(videos, "skipped", None) or Counter()
        self.bad_records = getattr(videos, "bad_records", None)

    def __len__(self) -> int:
        return len(self.videos)  # type: ignore[arg-type]

    def _skip(self, video: str, reason: str, detail: str) -> BadSample:
        self.skipped[reason] += 1
        return BadSample(video, f"{reason}: {detail}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.videos[index]
        features = item["features"]
        captions = [item["captions"].get(lang) for lang in self.languages]
        for lang, timed in zip(self.languages, captions):
            if timed is None:
                raise self._skip(item["id"], "no_caption", f"no {lang!r} caption")
        if len({len(timed) for timed in captions}) > 1:
            counts = ", ".join(f"{lang} {len(t)}" for lang, t in zip(self.languages, captions))
            raise self._skip(item["id"], "caption_count_mismatch", f"captions per language differ ({counts}): "
                                                                   "the triples cannot be aligned")
        seed = int(torch.randint(0, 2**62, ())) if self.seed is None else mix_seed(self.seed, index)
        clips, video, mask = overlapped_clip_batch(captions[0], features, torch.Generator().manual_seed(seed),
                                                   self.sampling, self.token_length)
        texts = [clip_texts(timed, clips) for timed in captions]
        out = {"id": item["id"], "video": video, "video_mask": mask, "text": texts[0], "clips": clips}
        if len(texts) > 1:
            out["text_b"] = texts[1]
        return out


class PerLanguageSegments(Dataset):
    """The held-out `CaptionedSegments` of several languages one after the other; items carry ``language`` (the
    position in `languages`) and ``index`` (the item's index within its language)."""

    def __init__(self, videos: Dataset, languages: list[str], max_len: int):
        self.languages = list(languages)
        self.parts = [CaptionedSegments(videos, lang, max_len) for lang in self.languages]
        self.bad_records = getattr(videos, "bad_records", None)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        lang = max(i for i, start in enumerate(self.offsets[:-1]) if start <= index)
        return {**self.parts[lang][index - self.offsets[lang]], "language": lang}


def collate_multilingual(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`MultilingualClips` or `PerLanguageSegments` items into a batch (``text_b`` / ``language`` kept)."""
    batch = collate_video_text(items)
    if "text_b" in items[0]:
        batch["text_b"] = [text for item in items for text in item["text_b"]]
    if "language" in items[0]:
        batch["language"] = torch.tensor([item["language"] for item in items])
    return batch


def mmp_loss(x: torch.Tensor, v: torch.Tensor, y: torch.Tensor | None, logit_scale: torch.Tensor,
             inter_weight: float = 1.0, intra_weight: float = 1.0, conditional_weight: float = 1.0
             ) -> dict[str, torch.Tensor]:
    """The weighted sum (``loss``) of MMP's terms over the global batch and each term (module docstring);
    ``y`` None (one language) leaves (v, x) only."""
    terms = {"inter_vx_loss": contrastive_loss(v, x, logit_scale)}
    weights = {"inter_vx_loss": inter_weight}
    if y is not None:
        terms["inter_vy_loss"] = contrastive_loss(v, y, logit_scale)
        terms["intra_xy_loss"] = contrastive_loss(x, y, logit_scale)
        terms["conditional_loss"] = contrastive_loss(conditional_query(x, v), y, logit_scale)
        weights.update(inter_vy_loss=inter_weight, intra_xy_loss=intra_weight, conditional_loss=conditional_weight)
    loss = sum(weights[k] * term for k, term in terms.items())
    return {"loss": loss, **{k: term.detach() for k, term in terms.items()}}


class MMPTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        d = self.cfg.data
        self.train_videos = video_text_videos(d, d.source, train=True)
        kwargs = {"feature_dim": feature_width(self.train_videos), **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **kwargs)
        if not isinstance(model, MMPModel):
            raise ConfigError(f"model.name: {self.cfg.model.name!r} is not an MMP model; use mmp_tiny or mmp_base")
        if model.config["max_video_len"] < d.max_video_len:
            raise ConfigError(f"data.max_video_len={d.max_video_len} exceeds the model's max_video_len "
                              f"{model.config['max_video_len']}; lower it or raise model.kwargs.max_video_len")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.kwargs = {**kwargs, "text_encoder": model.config["text_encoder"]}  # a Hugging Face folder: pretrained off
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "mmp",
                "languages": list(self.cfg.data.languages)}

    def train_dataset(self) -> Dataset:
        d = self.cfg.data
        sampling = OverlapSampling(min_text_len=d.min_text_len, max_text_len=d.max_text_len,
                                   min_video_len=d.min_video_len, max_video_len=d.max_video_len,
                                   clips_per_video=d.clips_per_video)
        return MultilingualClips(self.train_videos, d.languages, sampling)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        source = d.val_source or ("embedded" if d.source == "embedded" else None)
        if not source or not d.eval_languages:
            return None
        return PerLanguageSegments(video_text_videos(d, source, train=False), d.eval_languages, d.max_video_len)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_multilingual(items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, inner = self.cfg, getattr(model, "module", model)
        with torch.no_grad():
            inner.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        device = batch["video"].device
        texts = batch["text"] + batch.get("text_b", [])
        ids, mask = inner.tokenizer(texts)
        # x and y through the one shared text encoder in one call: [2N, D] -> x [N, D], y [N, D]
        text = inner.encode_text(ids.to(device), mask.to(device))
        x, y = text[: len(batch["text"])], (text[len(batch["text"]):] if "text_b" in batch else None)
        v = inner.encode_video(batch["video"], batch["video_mask"])
        out = mmp_loss(x, v, y, inner.logit_scale.exp(), cfg.inter_weight, cfg.intra_weight, cfg.conditional_weight)
        return {**out, "logit_scale": inner.logit_scale.exp().detach()}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inner = getattr(model, "module", model)
        device = batch["video"].device
        return {"video_embeds": inner.encode_video(batch["video"], batch["video_mask"]).float(),
                "text_embeds": inner.encode_texts(batch["text"], device).float(), "item": batch["index"],
                "language": batch["language"]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        if "language" not in totals:
            return {}
        metrics: dict[str, float] = {}
        for position, lang in enumerate(self.cfg.data.eval_languages):
            rows = totals["language"] == position
            part = {k: totals[k][rows] for k in ("video_embeds", "text_embeds", "item")}
            if len(part["item"]):
                metrics.update({f"{lang}_{k}": v for k, v in clip_retrieval_report(part).items()})
        return metrics


def validate(cfg: Config) -> None:
    from percli.recipes.common import validate as validate_model_and_paths

    validate_model_and_paths(cfg)
    d = cfg.data
    validate_data(d)
    if not 1 <= len(d.languages) <= 2 or len(set(d.languages)) != len(d.languages):
        raise ConfigError(f"data.languages={d.languages}: give one language (the English-only baseline, [en]) or "
                          "two different ones, [A, B] (clips are sampled on A's captions)")
    if len(set(d.eval_languages)) != len(d.eval_languages):
        raise ConfigError(f"data.eval_languages={d.eval_languages}: a language is listed twice")
    if d.source == "embedded":
        from percli.core.data.embedded_video_text import LANGUAGES

        unknown = [lang for lang in [*d.languages, *d.eval_languages] if lang not in LANGUAGES]
        if unknown:
            raise ConfigError(f"data.languages / data.eval_languages: {unknown} not in the embedded videos' "
                              f"{list(LANGUAGES)}")
    if d.language != VideoTextDataSection.language and d.language != d.languages[0]:
        raise ConfigError(f"data.language={d.language!r} is not read by mmp; set data.languages (first = the "
                          "language clips are sampled on)")
    for key in ("inter_weight", "intra_weight", "conditional_weight"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: give a value >= 0")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(MMPTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
