"""PE-AV contrastive training: pairwise objectives between audio, video, audio+video and text (Vyas et al., 2025).

Every pair of embedding spaces in ``loss.pairs`` gets its own contrastive loss over the global batch (negatives
all-gathered from every process, as `percli pretrain clip`), averaged:

* ``sigmoid`` (default): SigLIP's pairwise binary loss, -1/N sum_ij log sigmoid(z_ij (t <a_i, b_j> + b)), z = +1
  on the diagonal and -1 elsewhere, on L2-normalised embeddings, with a learnable log-temperature t' (t =
  exp(t'), init log 10) and bias (init -10) per pair;
* ``softmax``: symmetric InfoNCE with a learnable temperature per pair (init 1/0.07, clamped at 100).

Meta released no training code. The default pairs are the six of Hugging Face's port of PE-AV (audio-video,
audio-text, video-text, audio+video-text, audio+text -> video, video+text -> audio, each with its own scale and
bias); audio-av and video-av can be added. The paper's "ten pairwise objectives" also count caption types
(audio, visual and audio-visual captions), which a manifest with one kind of caption does not have. The
learnable scales live in ``pair_logits`` beside the official parameters; loading the weights elsewhere drops
them.

Data: the embedded generated clips (moving shapes whose events sound at known times, with templated
captions; held-out split for retrieval R@1/5/10 both ways) or a ``captions.jsonl`` manifest
(`percli.core.data.av_clips`). A clip with no audio track, silent or 1-sample audio, a corrupt video or only
empty captions is skipped and counted in ``summary.json``. The text tower reads percli's offline CLIP BPE
(from scratch) or the ``tokenizer.json`` of a release folder.

Examples:
  percli pretrain pe-av                                   # tiny model from scratch, embedded clips, CPU minutes
  percli pretrain pe-av model.checkpoint=/models/pe-av-small data.source=/data/clips/captions.jsonl \\
      train.batch_size=64 train.max_steps=20000           # continue a release on your clips
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain pe-av --preset small \\
      data.source=/data/clips/captions.jsonl
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.av_clips import AVClipDataset, collate_av_clips
from percli.core.data.av_events import AVEventsSpec, EmbeddedAVEvents
from percli.core.retrieval_metrics import two_way_retrieval
from percli.models.dac_vae import DacEncoderVAE
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model, pe_video_frames
from percli.models.pe_av_tokenizer import PETextTokenizer
from percli.recipes.clip import gather_features

PAIRS: dict[str, tuple[str, str]] = {
    "audio-text": ("audio_embeds", "audio_text_embeds"),
    "video-text": ("visual_embeds", "visual_text_embeds"),
    "av-text": ("audio_visual_embeds", "audio_visual_text_embeds"),
    "audio-video": ("audio_embeds", "visual_embeds"),
    "audio-av": ("audio_embeds", "audio_visual_embeds"),
    "video-av": ("visual_embeds", "audio_visual_embeds"),
    "audio+text-video": ("audio_plus_text_embeds", "visual_embeds"),
    "video+text-audio": ("visual_plus_text_embeds", "audio_embeds"),
}
"""Loss pair name -> (left, right) output of `PEAudioVisual.forward`."""
DEFAULT_PAIRS = ("audio-video", "audio-text", "video-text", "av-text", "audio+text-video", "video+text-audio")

MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass
class AVDataSection:
    source: str = "embedded"
    """`embedded` (generated captioned audio-video clips) or a captions.jsonl manifest (or its folder)."""
    val_source: str | None = None
    """Held-out clips for retrieval at eval time; for `embedded`, its test split."""
    embedded_size: int = 400
    """Clips in the embedded training split (the test split has a quarter of that, at least 20)."""
    num_frames: int = 8
    """Frames per clip, evenly spread (the releases: 16, or every frame for the `all` models)."""
    cache_codec: bool = False
    """Keep each training clip's codec latents in memory after its first epoch: the codec is frozen and
    deterministic, so later epochs skip it (each clip is encoded alone, unpadded). Memory grows with the data."""


@dataclasses.dataclass
class LossSection:
    kind: Literal["sigmoid", "softmax"] = "sigmoid"
    pairs: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_PAIRS))
    """Any of audio-text, video-text, av-text, audio-video, audio-av, video-av, audio+text-video, video+text-audio
    (default: the six Hugging Face's port of PE-AV trains)."""
    gather_with_grad: bool = False
    """Gradients also flow through the other processes' gathered embeddings (open_clip's --gather-with-grad)."""


@dataclasses.dataclass
class Config:
    model: PEAVModelSection = dataclasses.field(default_factory=PEAVModelSection)
    data: AVDataSection = dataclasses.field(default_factory=AVDataSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=64, weight_decay=0.05, betas=(0.9, 0.95), eps=1e-6, warmup_fraction=0.05))


class PairLogits(nn.Module):
    """One learnable log-temperature (and, for the sigmoid loss, bias) per loss pair."""

    def __init__(self, pairs: int, kind: str):
        super().__init__()
        scale = math.log(10.0) if kind == "sigmoid" else math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.full((pairs,), scale))
        self.logit_bias = nn.Parameter(torch.full((pairs,), -10.0 if kind == "sigmoid" else 0.0),
                                       requires_grad=kind == "sigmoid")


def pair_loss(left: torch.Tensor, right: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
              kind: str, gather_with_grad: bool = False) -> torch.Tensor:
    """The contrastive loss of one pair over the global batch (rows i of left and right are positives)."""
    all_left, _ = gather_features(F.normalize(left.float(), dim=-1), gather_with_grad)
    all_right, _ = gather_features(F.normalize(right.float(), dim=-1), gather_with_grad)
    logits = logit_scale.exp() * all_left @ all_right.T
    if kind == "softmax":
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    signs = 2 * torch.eye(logits.shape[0], device=logits.device) - 1
    return -F.logsigmoid(signs * (logits + logit_bias)).sum() / logits.shape[0]


def scratch_init(model: nn.Module) -> None:
    """Initialise a PE-AV / PE-A-Frame for training from scratch (the release defines no training init).

    Transformer-style: every Linear, token table and tower convolution N(0, 0.02) with zero biases, the [cls]
    tokens N(0, 0.02) (PyTorch's defaults leave the [cls] token 50x larger than the projected inputs, so every
    clip pools to the same embedding and the sigmoid loss collapses). The frozen codec, random here where a
    release ships a trained DAC-VAE, becomes a variance-preserving random filter bank: convolutions
    N(0, 1/fan_in) with zero biases, residual branches scaled by 0.1 (PyTorch's defaults shrink the waveform
    50x below the biases)."""
    (codec,) = [m for m in model.modules() if isinstance(m, DacEncoderVAE)]
    frame_encoder = [m for name, m in model.named_modules() if name.endswith("pe_encoder")]
    own = {id(m) for encoder in frame_encoder for m in encoder.modules()}  # PE keeps its own initialisation
    for module in model.modules():
        if id(module) in own:
            continue
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith("cls_token"):
            nn.init.normal_(param, std=0.02)
    for module in model.modules():  # the towers' temporal convolutions and the aligner: no constant offset
        if isinstance(module, nn.Conv1d) and not any(module is m for m in codec.modules()):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    for name, module in codec.named_modules():
        if isinstance(module, nn.Conv1d):
            branch_end = "res_unit" in name and name.endswith("conv2")
            nn.init.normal_(module.weight, std=(0.1 if branch_end else 1.0) / math.sqrt(module.weight[0].numel()))
            nn.init.zeros_(module.bias)


class _Indexed(Dataset):
    """Adds each item's position ("index"): retrieval needs it to match captions to clips across processes."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        return {k: v for k, v in item.items() if k != "events"} | {"index": index}


def av_dataset(data: AVDataSection, source: str, split: str, sample_rate: int, image_size: int) -> Dataset:
    """The embedded clips (`split` of it) or a manifest's, decoded at the model's rates."""
    if source == "embedded":
        count = data.embedded_size if split == "train" else max(data.embedded_size // 4, 20)
        return _Indexed(EmbeddedAVEvents(count, seed=0, split=split, spec=AVEventsSpec(sample_rate=sample_rate),
                                         num_frames=data.num_frames))
    return _Indexed(AVClipDataset(source, sample_rate=sample_rate, num_frames=data.num_frames,
                                  frame_size=image_size))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate_av_clips(items)
    batch["index"] = torch.tensor(batch["index"])
    return batch


class RetrievalEvaluator:
    """Embeds clips and every caption; reduces to text<->audio/video/audio+video and audio<->video retrieval.

    Scores are dot products of the embeddings, as the official evaluation ranks them (`normalize`: cosine
    instead, what the losses of `percli pretrain pe-av` train)."""

    def __init__(self, tokenizer: PETextTokenizer, image_size: int, normalize: bool = False):
        self.tokenizer, self.image_size, self.normalize = tokenizer, image_size, normalize

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pe = getattr(model, "module", model)
        frames = pe_video_frames(batch["frames"], self.image_size) if "frames" in batch else None
        media = pe(None, frames, batch.get("waveform"), None, batch.get("video_mask"), batch.get("audio_mask"))
        device = batch["index"].device
        captions = [c for caps in batch["captions"] for c in caps]
        owner = [int(i) for i, caps in zip(batch["index"], batch["captions"]) for _ in caps]
        ids, mask = (t.to(device) for t in self.tokenizer(captions))
        out = {k: media[k] for k in ("audio_embeds", "visual_embeds", "audio_visual_embeds") if media[k] is not None}
        text_heads = {"audio_embeds": ("audio_text_embeds", pe.encode_audio_text),
                      "visual_embeds": ("visual_text_embeds", pe.encode_video_text),
                      "audio_visual_embeds": ("audio_visual_text_embeds", pe.encode_audio_video_text)}
        out.update({name: encode(ids, mask) for key, (name, encode) in text_heads.items() if key in out})
        if self.normalize:
            out = {k: F.normalize(v.float(), dim=-1) for k, v in out.items()}
        return {**out, "item": batch["index"], "caption_item": torch.tensor(owner, device=device)}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return retrieval_report(totals)


def retrieval_report(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    """Both directions of text<->audio ("t2a"/"a2t"), text<->video, text<->audio+video and audio<->video."""
    order = totals["item"].argsort()
    items = totals["item"][order].long()  # the engine gathers per-sample values as floats
    position = {int(item): p for p, item in enumerate(items)}
    caption_item = torch.tensor([position[int(i)] for i in totals["caption_item"]])
    metrics: dict[str, float] = {}
    for row, emb, text in (("a", "audio_embeds", "audio_text_embeds"), ("v", "visual_embeds", "visual_text_embeds"),
                           ("av", "audio_visual_embeds", "audio_visual_text_embeds")):
        if emb in totals and text in totals:
            metrics.update(two_way_retrieval(totals[emb][order] @ totals[text].T, caption_item, row_name=row))
    if "audio_embeds" in totals and "visual_embeds" in totals:
        metrics.update(two_way_retrieval(totals["audio_embeds"][order] @ totals["visual_embeds"][order].T,
                                         row_name="a", column_name="v"))
    metrics["clips"] = float(len(items))
    return metrics


class PEAVTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pairs = [PAIRS[name] for name in cfg.loss.pairs]
        self.codec_cache: dict[int, torch.Tensor] = {}

    def build_model(self) -> nn.Module:
        model, self.tokenizer, self.meta = load_pe_model(self.cfg.model, "PEAudioVisual", train=True)
        if not self.cfg.model.checkpoint:
            scratch_init(model)
        model.pair_logits = PairLogits(len(self.pairs), self.cfg.loss.kind)
        self.rate, self.image_size = model.sampling_rate, model.image_size
        return model

    def model_meta(self) -> dict[str, Any]:
        return {**self.meta, "task": "pe-av", "tokenizer": self.tokenizer.meta(),
                "loss": {"kind": self.cfg.loss.kind, "pairs": list(self.cfg.loss.pairs)}}

    def train_dataset(self) -> Dataset:
        self.train_set = av_dataset(self.cfg.data, self.cfg.data.source, "train", self.rate, self.image_size)
        return self.train_set

    def eval_dataset(self) -> Dataset | None:
        data = self.cfg.data
        source = data.val_source or ("embedded" if data.source == "embedded" else None)
        if source is None:
            return None
        self.evaluator = RetrievalEvaluator(self.tokenizer, self.image_size, normalize=True)
        return av_dataset(data, source, "test", self.rate, self.image_size)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        pe = getattr(model, "module", model)
        with torch.no_grad():
            pe.pair_logits.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        # one caption per clip, drawn from the engine's reseeded generator (exact resume)
        picks = [caps[int(torch.randint(len(caps), ()))] for caps in batch["captions"]]
        ids, mask = self.tokenizer(picks)
        device = batch["waveform"].device
        frames = pe_video_frames(batch["frames"], self.image_size)
        if self.cfg.data.cache_codec:
            latents, latent_mask = self._cached_latents(pe, batch)
            out = model(ids.to(device), frames, None, mask.to(device), batch["video_mask"], latent_mask,
                        input_features=latents)
        else:
            out = model(ids.to(device), frames, batch["waveform"], mask.to(device), batch["video_mask"],
                        batch["audio_mask"])
        logits = pe.pair_logits
        losses = {name: pair_loss(out[left], out[right], logits.logit_scale[i], logits.logit_bias[i],
                                  self.cfg.loss.kind, self.cfg.loss.gather_with_grad)
                  for i, (name, (left, right)) in enumerate(zip(self.cfg.loss.pairs, self.pairs))}
        return {"loss": torch.stack(list(losses.values())).mean(),
                **{f"loss_{name}": value.detach() for name, value in losses.items()}}

    def _cached_latents(self, pe: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Codec latents [B, La, D] of the batch's clips (from the cache, else encoded alone) and their mask."""
        codec = pe.audio_visual_model.audio_model.dac_vae_encoder
        rows = []
        for b, index in enumerate(batch["index"].tolist()):
            if index not in self.codec_cache:
                length = int(batch["audio_mask"][b].sum())
                self.codec_cache[index] = codec(batch["waveform"][b:b + 1, :, :length])[0].T.cpu()
            rows.append(self.codec_cache[index])
        latents = nn.utils.rnn.pad_sequence(rows, batch_first=True).to(batch["waveform"].device)
        lengths = torch.tensor([len(r) for r in rows], device=latents.device)
        return latents, torch.arange(latents.shape[1], device=latents.device)[None] < lengths[:, None]

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.evaluator.eval_step(model, batch)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return self.evaluator.eval_reduce(totals)


def validate(cfg: Config) -> None:
    unknown = [p for p in cfg.loss.pairs if p not in PAIRS]
    if unknown or not cfg.loss.pairs:
        raise ConfigError(f"loss.pairs: {unknown or 'empty'}; choose from {', '.join(PAIRS)}")
    for key in ("source", "val_source"):
        value = getattr(cfg.data, key)
        if value and value != "embedded" and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}: {value} does not exist")
    cfg.model.check()


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(PEAVTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
