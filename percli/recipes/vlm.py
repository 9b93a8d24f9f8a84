"""VLM (Xu et al., "VLM: Task-agnostic Video-Language Model Pre-training for Video Understanding", Findings of
ACL 2021): one shared BERT over ``[CLS] video [SEP] caption [SEP]`` trained as a masked token model.

Per step, each video of the batch gives ``data.clips_per_video`` temporally overlapping (video clip, text clip)
pairs (VideoCLIP's sampler, `percli.core.data.video_text`; VLM's release cuts the video clip to the text clip's
own span instead). Every pair is masked by the masked modality model (`mask_modalities`, as the release's
``projects/mtm/vlm/how2.yaml`` sets it):

* with probability ``mm_prob`` (0.5) one whole modality, each half the time: every word (the video must
  predict the text) or every frame (the text must predict the video);
* otherwise ``mlm_probability`` (15 %) of the words, BERT's 80/10/10 rule ([MASK] / a random word / kept),
  and ``mfm_probability`` (15 %) of the frames (the model zeroes their features).

The loss is VLM's masked token model (`percli.models.vlm.mtm_loss`): a masked frame is classified over
[its own frame, every unmasked frame of the batch, every word], a masked word over [every word, every unmasked
frame], one cross-entropy over both. Draws come from torch's global RNG, which the engine reseeds every step,
so runs and ``--resume`` reproduce their losses.

Evaluation on held-out clips: every caption with the features of its own time span (clip retrieval), scored
with the trained encoder used as VLM's retrieval model (`MMFusionJoint`, every layer modality-isolated: video
and text in two passes, each mean-pooled), text->video and video->text R@1/5/10, median and mean rank; plus the
held-out masked token model under the training masking, drawn from a generator seeded per evaluation batch (the
same masks every evaluation): ``masked_word_acc`` / ``masked_frame_acc`` (15 % of each modality masked),
``caption_from_video_acc`` (every word masked: the caption predicted from the video), ``video_from_caption_acc``
(every frame masked) and ``mtm_loss``.

DDP: the BERT pooler and ``seg_embeddings`` (kept only so the checkpoint has the release's keys) are never
read; they are frozen, so every trained parameter gets a gradient each step and DDP needs no
find_unused_parameters.

Examples:
  percli pretrain vlm                                     # tiny BERT, embedded videos, CPU minutes
  percli pretrain vlm mm_prob=0                           # no whole-modality masking (15 % of each modality)
  percli pretrain vlm --preset none model.checkpoint=/models/bert-base-uncased data.source=/data/howto100m
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.models import create_model, load_initial_weights
from percli.models.bert import BertConfig
from percli.models.vlm import MMFusionJoint, MMFusionMTM, mtm_loss
from percli.recipes.common import TrainedModelSection
from percli.recipes.video_text_common import (
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

# never read by MMFusionMTM's forward: frozen so DDP sees every trained parameter used
UNUSED_PARAMETERS = ("mm_encoder.bert.pooler.", "mm_encoder.bert.embeddings.seg_embeddings.")


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="vlm_how2"))
    """``model.checkpoint``: a Hugging Face BERT folder (bert-base-uncased, as VLM starts) or a VLM file."""
    data: VideoTextDataSection = dataclasses.field(default_factory=lambda: VideoTextDataSection(
        clips_per_video=32, min_text_len=8, max_text_len=64, min_video_len=3, max_video_len=32))
    """The release: 32 clips per video, text clips drawn at 8..64 word pieces, clips of up to 32 s."""
    max_text_tokens: int = 64
    """Caption tokens per clip, [CLS] and both [SEP] included (a longer text clip is cut): the release's joint
    sequence of 96 minus its 32 video tokens."""
    mm_prob: float = 0.5
    """Share of pairs with one whole modality masked (half of them the text, half the video)."""
    mlm_probability: float = 0.15
    mfm_probability: float = 0.15
    """Share of words / real frames masked in the other pairs."""
    tokenizer: str = "minilm"
    """A local BERT tokenizer folder, or `minilm` (bert-base-uncased's WordPiece vocabulary, shipped offline)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=8, grad_clip=2.0))
    # how2.yaml: Adam (0.9, 0.98), lr 5e-5, no weight decay, 1000 warmup updates, clip norm 2.0
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=5e-5, ref_batch_size=8, weight_decay=0.0, betas=(0.9, 0.98), warmup_fraction=0.025))


class ModalityMasks(NamedTuple):
    caps: torch.Tensor
    """[B, C] ids with the masked words replaced ([MASK] / random / kept)."""
    text_label: torch.Tensor
    """[B, C] the original id at each masked word, -100 elsewhere."""
    video_label: torch.Tensor
    """[B, V] True at the masked real frames."""
    whole: torch.Tensor
    """[B] 0: 15 % masking, 1: every word masked, 2: every frame masked."""


def mask_modalities(caps: torch.Tensor, cmasks: torch.Tensor, vmasks: torch.Tensor, *, special_ids: tuple[int, ...],
                    mask_id: int, vocab_size: int, mm_prob: float = 0.5, mlm_probability: float = 0.15,
                    mfm_probability: float = 0.15, generator: torch.Generator | None = None) -> ModalityMasks:
    """VLM's masked modality masking of a batch in MMPT's layout (a pure function of `generator`).

    Args:
        caps, cmasks: [B, C] ids ``[CLS] [SEP] w.. [SEP] [PAD]..`` and True on non-pad tokens.
        vmasks: [B, V] True on real frames.
        special_ids: ids never masked ([CLS], [SEP], [PAD]).
        mask_id, vocab_size: the [MASK] id; random words are drawn from ``0..vocab_size-1``.
        generator: a CPU generator; None: torch's global one (reseeded by the engine every step). Draws are made
            on the CPU whatever the device, so a GPU run masks as a CPU one does.
    """
    device = caps.device
    caps, cmasks, vmasks = caps.cpu(), cmasks.cpu().bool(), vmasks.cpu().bool()
    B = caps.shape[0]
    whole_modality = torch.rand(B, generator=generator) < mm_prob
    text_side = torch.rand(B, generator=generator) < 0.5
    whole = torch.where(whole_modality, torch.where(text_side, 1, 2), 0)  # [B]
    word_p = torch.where(whole == 1, 1.0, torch.where(whole == 2, 0.0, mlm_probability))  # [B]
    frame_p = torch.where(whole == 2, 1.0, torch.where(whole == 1, 0.0, mfm_probability))
    maskable = cmasks & ~torch.isin(caps, torch.tensor(special_ids))
    masked_words = torch.bernoulli(word_p[:, None] * maskable, generator=generator).bool()  # [B, C]
    replaced = torch.bernoulli(torch.full(caps.shape, 0.8), generator=generator).bool() & masked_words
    randomised = torch.bernoulli(torch.full(caps.shape, 0.5), generator=generator).bool() & masked_words & ~replaced
    random_words = torch.randint(vocab_size, caps.shape, generator=generator)
    masked_caps = torch.where(replaced, mask_id, torch.where(randomised, random_words, caps))
    text_label = torch.where(masked_words, caps, -100)
    video_label = torch.bernoulli(frame_p[:, None].expand(vmasks.shape), generator=generator).bool() & vmasks
    return ModalityMasks(masked_caps.to(device), text_label.to(device), video_label.to(device), whole.to(device))


def vlm_loss(out: dict[str, torch.Tensor], text_label: torch.Tensor) -> torch.Tensor:
    """`mtm_loss` of the model's logits; 0 (in the graph, for DDP) when the draws masked nothing."""
    if out["video_logits"].shape[0] + out["text_logits"].shape[0] == 0:
        return out["video_logits"].sum() + out["text_logits"].sum()
    return mtm_loss(out["video_logits"], out["text_logits"], text_label)


class VLMTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._retrieval: tuple[nn.Module, MMFusionJoint] | None = None  # (encoder it views, the view)

    def build_model(self) -> nn.Module:
        cfg, d = self.cfg, self.cfg.data
        self.captions = MMPTCaptions(cfg.tokenizer, cfg.max_text_tokens)
        self.train_videos = video_text_videos(d, d.source, train=True)
        kwargs = {"input_dim": feature_width(self.train_videos), "max_video_len": d.max_video_len, **cfg.model.kwargs}
        model = create_model(cfg.model.name, **kwargs)
        if not isinstance(model, MMFusionMTM):
            raise ConfigError(f"model.name: {cfg.model.name!r} is not a VLM pretraining model; use vlm_how2")
        bert = model.mm_encoder.bert.config
        if len(self.captions.tokenizer) > bert.vocab_size:
            raise ConfigError(f"model.kwargs.bert_config.vocab_size={bert.vocab_size} is smaller than the "
                              f"tokenizer's {len(self.captions.tokenizer)} ids ({cfg.tokenizer})")
        if cfg.model.checkpoint:
            load_initial_weights(model, cfg.model.checkpoint)
        for name, param in model.named_parameters():
            if name.startswith(UNUSED_PARAMETERS):
                param.requires_grad_(False)
        self.kwargs, self.vocab_size = kwargs, bert.vocab_size
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "vlm", "language": self.cfg.data.language,
                "tokenizer": self.cfg.tokenizer, "max_text_tokens": self.cfg.max_text_tokens}

    def train_dataset(self) -> Dataset:
        return overlapped_clips(self.cfg.data, self.train_videos, token_length=self.captions.length)

    def eval_dataset(self) -> Dataset | None:
        return held_out(self.cfg.data)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_video_text(items)

    def mask(self, caps: torch.Tensor, cmasks: torch.Tensor, vmasks: torch.Tensor,
             generator: torch.Generator | None = None) -> ModalityMasks:
        tok, cfg = self.captions, self.cfg
        return mask_modalities(caps, cmasks, vmasks, special_ids=(tok.cls, tok.sep, tok.pad),
                               mask_id=tok.tokenizer.mask_token_id, vocab_size=self.vocab_size, mm_prob=cfg.mm_prob,
                               mlm_probability=cfg.mlm_probability, mfm_probability=cfg.mfm_probability,
                               generator=generator)

    def masked_forward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
                       ) -> tuple[dict[str, torch.Tensor], ModalityMasks]:
        video, vmasks = batch["video"], batch["video_mask"]
        caps, cmasks = self.captions(batch["text"])
        masks = self.mask(caps, cmasks, vmasks, generator)
        out = model(masks.caps.to(video.device), cmasks.to(video.device), video, vmasks,
                    video_label=masks.video_label.to(video.device), text_label=masks.text_label.to(video.device))
        return out, masks

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out, masks = self.masked_forward(model, batch)
        loss = vlm_loss(out, masks.text_label.to(batch["video"].device))
        return {"loss": loss, "masked_words": torch.tensor(float(out["text_logits"].shape[0])),
                "masked_frames": torch.tensor(float(out["video_logits"].shape[0]))}

    def retrieval_model(self, inner: MMFusionMTM) -> MMFusionJoint:
        """VLM's retrieval model (every layer isolated, two passes) over the trained encoder: shared modules,
        built once on the meta device and given the trained ``mm_encoder``."""
        if self._retrieval is None or self._retrieval[0] is not inner.mm_encoder:
            with torch.device("meta"):
                view = MMFusionJoint(**self.kwargs)
            view.mm_encoder = inner.mm_encoder
            self._retrieval = (inner.mm_encoder, view)
        return self._retrieval[1]

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inner = getattr(model, "module", model)
        caps, cmasks = self.captions(batch["text"])
        device = batch["video"].device
        pooled = self.retrieval_model(inner)(caps.to(device), cmasks.to(device), batch["video"], batch["video_mask"])
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + int(batch["index"][0]))
        out, masks = self.masked_forward(inner, batch, generator)
        masked = masks.text_label != -100
        hits = (out["text_logits"].argmax(1).cpu() == masks.text_label[masked].cpu()).float()  # rows: batch-major
        from_video = (masks.whole[masked.nonzero()[:, 0]] == 1).cpu()  # the row's whole caption is masked
        frame_hits = (out["video_logits"].argmax(1) == 0).float().cpu()  # rows: batch-major
        from_caption = (masks.whole[masks.video_label.nonzero()[:, 0]] == 2).cpu()  # the whole video is masked
        rows = out["video_logits"].shape[0] + out["text_logits"].shape[0]
        return {"video_embeds": pooled["pooled_video"].float(), "text_embeds": pooled["pooled_text"].float(),
                "item": batch["index"],
                "word_hits": hits[~from_video].sum(), "words": (~from_video).sum(),
                "caption_word_hits": hits[from_video].sum(), "caption_words": from_video.sum(),
                "frame_hits": frame_hits[~from_caption].sum(), "frames": (~from_caption).sum(),
                "video_frame_hits": frame_hits[from_caption].sum(), "video_frames": from_caption.sum(),
                "mtm_loss_sum": vlm_loss(out, masks.text_label.to(device)) * rows}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        report = clip_retrieval_report(totals)
        if "words" in totals:
            report["masked_word_acc"] = totals["word_hits"] / max(totals["words"], 1)
            report["caption_from_video_acc"] = totals["caption_word_hits"] / max(totals["caption_words"], 1)
            report["masked_frame_acc"] = totals["frame_hits"] / max(totals["frames"], 1)
            report["video_from_caption_acc"] = totals["video_frame_hits"] / max(totals["video_frames"], 1)
            rows = totals["words"] + totals["caption_words"] + totals["frames"] + totals["video_frames"]
            report["mtm_loss"] = totals["mtm_loss_sum"] / max(rows, 1)
        return report


def validate(cfg: Config) -> None:
    from percli.recipes.common import validate as validate_model_and_paths

    validate_model_and_paths(cfg)
    validate_data(cfg.data)
    for key in ("mm_prob", "mlm_probability", "mfm_probability"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: a probability, give a value in [0, 1]")
    kwargs = cfg.model.kwargs
    try:
        BertConfig.make(kwargs.get("bert_config"))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.kwargs.bert_config: {str(e).removeprefix('bert_config: ')}") from None
    model_len, video_len = kwargs.get("max_video_len", cfg.data.max_video_len), cfg.data.max_video_len
    if not isinstance(model_len, int) or model_len < video_len:
        raise ConfigError(f"data.max_video_len={video_len} exceeds model.kwargs.max_video_len={model_len}; lower the "
                          "first or raise the second")
    if cfg.max_text_tokens < 4:
        raise ConfigError(f"max_text_tokens={cfg.max_text_tokens}: [CLS] and two [SEP] leave no word; give at least 4")
    positions = BertConfig.make(kwargs.get("bert_config")).max_position_embeddings
    if model_len + cfg.max_text_tokens > positions:  # caption positions start after the model's video positions
        raise ConfigError(f"max_text_tokens={cfg.max_text_tokens}: after model.kwargs.max_video_len={model_len} "
                          f"frames the captions need {model_len + cfg.max_text_tokens} positions, "
                          f"model.kwargs.bert_config.max_position_embeddings is {positions}")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(VLMTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
