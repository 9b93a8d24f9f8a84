"""FLAP: Fast Language-Audio Pre-training (Yeh, Huang, Sharma, Li, Ghosh; ICASSP 2024; arXiv 2311.01615).

An Audio-MAE ViT over 128-bin log-mel fbank (16x16 patches; `model.checkpoint` takes Audio-MAE
pretraining weights) and a text tower learn one space. The text tower is percli's CLIP text transformer
(its offline BPE tokenizer; the default), or a Hugging Face encoder from a local folder as the paper's
RoBERTa: `model.kwargs.text_cfg={hf_folder: /models/roberta-base}` loads its weights and tokenizer
offline (AutoModel / AutoTokenizer, nothing is downloaded); its first token (<s>) is projected into the
space (`pooling: mean` for the mean over the attention mask), captions padded or cut to
`text_cfg.context_length` (77 when unset); a preset's CLIP text sizes (width, layers, ...) are ignored then.
The run's checkpoints hold the tower's weights and record the folder, from which `percli eval retrieval`
then reads only config.json and the tokenizer files.

Efficient masking: `mask_ratio` of the audio tokens are dropped before the encoder, which sees only the
rest (`masking=1d` drops whole time columns, `2d` single patches). Each clip gets `num_views`
independently masked views; each view's embedding (mean of its visible tokens, linearly projected) is
contrasted with the paired caption by symmetric InfoNCE over the global batch (negatives all-gathered
across processes, `percli.recipes.clip.contrastive_loss`) with a learnable temperature clamped at logit
scale 100 as CLIP; the loss is the mean over views. Reconstruction: Audio-MAE's decoder predicts the
dropped patches (MSE on them; per-patch normalised targets with `model.kwargs.audio_cfg.norm_pix_loss`),
added with weight `recon_weight` (the decoder runs even at weight 0, so DDP sees every parameter used).
LLM-augmented text: `data.caption_key` names the manifest field of the training captions (e.g.
rewritten ones); one caption per clip is drawn at random each epoch. Evaluation always scores the
manifest's own `captions`: text->audio and audio->text retrieval on the held-out clips (every caption a
query, whole clips unmasked), R@1/5/10 and mAP@10 as fractions, median and mean rank.

Defaults: only the abstract could be read here, so the masking (1-D, ratio 0.5), the views (2) and the
reconstruction weight (1.0) are percli's choices, not the paper's verified values; the optimizer is
CLIP's AdamW (0.9, 0.98, eps 1e-6, wd 0.2) at lr 1e-4 per 256 clips, one rate for both towers. Not
supported yet: generating the LLM captions (bring them in a manifest field).

Data: the embedded audio-video event clips with captions (default; 4 s, 3 captions each, a held-out
test split) or a `captions.jsonl` manifest ({"id", "audio" or "video", "captions": [...]}; unreadable
or silent clips are counted and skipped).

Examples:
  percli pretrain flap                                        # tiny preset, embedded clips, CPU minutes
  percli pretrain flap --preset base data.source=/data/audiocaps/train/captions.jsonl \\
      data.val_source=/data/audiocaps/test/captions.jsonl data.caption_key=llm_captions \\
      model.checkpoint=/weights/audiomae_pretrained.pth
  percli pretrain flap --preset base model.kwargs.text_cfg.hf_folder=/models/roberta-base \\
      data.source=/data/audiocaps/train/captions.jsonl data.val_source=/data/audiocaps/test/captions.jsonl
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data import AUDIOSET_MEAN, AUDIOSET_STD
from percli.core.data.audio import kaldi_fbank, normalize_fbank, roll_mag_aug
from percli.core.data.av_clips import AVClipDataset
from percli.core.data.av_events import EmbeddedAVEvents
from percli.models import create_model, load_initial_weights
from percli.models.flap import hf_text_cfg
from percli.recipes.audio_common import model_kwargs
from percli.recipes.clip import MAX_LOGIT_SCALE, contrastive_loss
from percli.recipes.common import TrainedModelSection
from percli.recipes.common import validate as validate_model_and_paths
from percli.recipes.pe_av import retrieval_report


@dataclasses.dataclass
class FlapDataSection:
    source: str = "embedded"
    """`embedded` (generated audio-video event clips with captions) or a captions.jsonl manifest (or its folder)."""
    val_source: str | None = None
    """Held-out manifest for retrieval; for `embedded`, its test split is used when this is unset."""
    caption_key: str = "captions"
    """Manifest field of the training captions (a list of strings), e.g. LLM-augmented ones."""
    embedded_size: int = 800
    """Clips in the embedded training split (its test split has a quarter of that)."""
    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    """Fbank frames per clip (10 ms hop: 1024 = 10.24 s); shorter clips are zero-padded, longer ones cut."""
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    """Fbank normalisation (x - mean) / (2 std), Audio-MAE's."""
    roll_mag_aug: bool = False
    """Audio-MAE's random circular roll and gain of the waveform in training; off by default, since a roll
    reorders the events that captions name in order ("a dog barks, then a siren wails")."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="flap_vit_base_patch16"))
    data: FlapDataSection = dataclasses.field(default_factory=FlapDataSection)
    mask_ratio: float = 0.5
    """Fraction of audio tokens dropped before the encoder in each view."""
    masking: Literal["1d", "2d"] = "1d"
    """1d: drop whole time columns (every frequency patch of a frame); 2d: drop single patches."""
    num_views: int = 2
    """Independently masked views of each clip, each contrasted with its caption."""
    recon_weight: float = 1.0
    """Weight of the masked-patch reconstruction loss added to the contrastive loss."""
    gather_with_grad: bool = False
    """Gradients flow through the other processes' gathered features too (open_clip's --gather-with-grad)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=256, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, warmup_fraction=0.05))


class CaptionedFbank(Dataset):
    """Normalised fbank [1, T, F] and tokenised captions (``text``, and ``text_mask`` from a Hugging Face tokenizer;
    `FLAP.make_tokenizer`) of captioned clips (`EmbeddedAVEvents` / `AVClipDataset` items). Training items carry
    one caption drawn at random, evaluation items every caption. Unreadable clips
    raise `BadSample` from the clip dataset (the engine counts and skips them). `cache` keeps each clip's
    waveform and captions after the first read (for the embedded clips, rendered anew otherwise every epoch)."""

    def __init__(self, clips: Dataset, data: FlapDataSection,
                 tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]], train: bool,
                 cache: bool = False):
        self.clips, self.data, self.tokenize, self.train = clips, data, tokenize, train
        self.cache: dict[int, tuple[torch.Tensor, list[str]]] | None = {} if cache else None
        self.bad_records = getattr(clips, "bad_records", None)  # dropped manifest lines, for summary.json

    def __len__(self) -> int:
        return len(self.clips)

    def _clip(self, index: int) -> tuple[torch.Tensor, list[str]]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        item = self.clips[index]
        clip = item["waveform"], item["captions"]
        if self.cache is not None:
            self.cache[index] = clip
        return clip

    def __getitem__(self, index: int) -> dict[str, Any]:
        (wave, captions), d = self._clip(index), self.data
        if self.train and d.roll_mag_aug:
            wave = roll_mag_aug(wave - wave.mean())
        fbank = normalize_fbank(kaldi_fbank(wave, d.sample_rate, d.num_mel_bins, d.target_length), d.mean, d.std)
        if self.train:  # the engine seeds each (epoch, index): the draw is reproducible
            captions = [captions[int(torch.randint(len(captions), ()))]]
        return {"fbank": fbank.unsqueeze(0), **self.tokenize(captions), "index": index}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """fbank [B, 1, T, F], every caption's tokens [C, L] (C = B in training) and their attention mask
    ``text_mask`` [C, L] when the tokenizer gives one, the clips' dataset indices [B] and each caption's clip
    index [C] (the ids `retrieval_report` matches captions to clips by)."""
    batch = {"fbank": torch.stack([it["fbank"] for it in items]), "text": torch.cat([it["text"] for it in items]),
             "index": torch.tensor([it["index"] for it in items]),
             "caption_clip": torch.cat([torch.full((len(it["text"]),), it["index"]) for it in items])}
    if "text_mask" in items[0]:
        batch["text_mask"] = torch.cat([it["text_mask"] for it in items])
    return batch


class FlapTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.kwargs = dict(cfg.model.kwargs)
        self.kwargs["audio_cfg"] = model_kwargs(self.kwargs.get("audio_cfg", {}), cfg.data, "model.kwargs.audio_cfg")

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.kwargs)
        if not hasattr(model, "forward_audio"):
            raise ValueError(f"model.name={self.cfg.model.name!r} is not a FLAP model; use a flap_* name "
                             "(see `percli ls models`)")
        time_columns, freq_rows = model.audio.grid
        units = (time_columns, "time columns") if self.cfg.masking == "1d" else (time_columns * freq_rows, "patches")
        if int(units[0] * (1 - self.cfg.mask_ratio)) < 1:
            raise ConfigError(f"mask_ratio={self.cfg.mask_ratio} keeps none of the {units[0]} {units[1]} "
                              f"(masking={self.cfg.masking}); lower it")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.tokenizer = model.make_tokenizer()
        # What a checkpoint needs to rebuild the text tower: a Hugging Face one from its folder's config.json and
        # tokenizer only (pretrained: false, the weights are in the checkpoint), the folder's path resolved.
        self.saved_kwargs = {**self.kwargs, "text_cfg": model.saved_config()["text_cfg"]} if model.hf_text \
            else self.kwargs
        self.text_preprocess = {k: v for k, v in model.preprocess.items()
                                if k in ("tokenizer", "tokenizer_folder", "context_length")}
        return model

    def model_meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"name": self.cfg.model.name, "kwargs": self.saved_kwargs, "task": "flap", **self.text_preprocess,
                "sample_rate": d.sample_rate, "num_mel_bins": d.num_mel_bins, "target_length": d.target_length,
                "mean": d.mean, "std": d.std}

    def _dataset(self, source: str, train: bool) -> Dataset:
        d = self.cfg.data
        if source == "embedded":
            count = d.embedded_size if train else max(d.embedded_size // 4, 1)
            clips = EmbeddedAVEvents(count, split="train" if train else "test")
        else:
            clips = AVClipDataset(source, modalities=("audio",), sample_rate=d.sample_rate,
                                  caption_key=d.caption_key if train else "captions")
        return CaptionedFbank(clips, d, self.tokenizer, train, cache=train and source == "embedded")

    def train_dataset(self) -> Dataset:
        return self._dataset(self.cfg.data.source, train=True)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        source = d.val_source or ("embedded" if d.source == "embedded" else None)
        return self._dataset(source, train=False) if source else None

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        flap = getattr(model, "module", model)  # under DDP
        with torch.no_grad():  # CLIP's clamp of the temperature, before the forward
            flap.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        cfg = self.cfg
        out = model(batch["fbank"], batch["text"], mask_ratio=cfg.mask_ratio, mask_1d=cfg.masking == "1d",
                    num_views=cfg.num_views, text_mask=batch.get("text_mask"))
        contrastive = torch.stack([contrastive_loss(view, out["text_features"], out["logit_scale"],
                                                    cfg.gather_with_grad) for view in out["audio_features"]]).mean()
        return {"loss": contrastive + cfg.recon_weight * out["recon_loss"], "contrastive_loss": contrastive.detach(),
                "recon_loss": out["recon_loss"].detach(), "logit_scale": out["logit_scale"].detach()}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        flap = getattr(model, "module", model)
        return {"audio_embeds": flap.encode_audio(batch["fbank"], normalize=True),
                "audio_text_embeds": flap.encode_text(batch["text"], batch.get("text_mask"), normalize=True),
                "item": batch["index"], "caption_item": batch["caption_clip"]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return retrieval_report(totals)  # t2a_* / a2t_*: R@1/5/10, mAP@10, median/mean rank; clips


def validate(cfg: Config) -> None:
    """Checks a dry run can make without building anything: model name, data paths, masking settings, the
    Hugging Face text folder."""
    validate_model_and_paths(cfg)
    text_cfg = cfg.model.kwargs.get("text_cfg") or {}
    if isinstance(text_cfg, dict) and "hf_folder" in text_cfg:
        hf_text_cfg(text_cfg)
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio={cfg.mask_ratio}: give a fraction in [0, 1)")
    if cfg.num_views < 1:
        raise ConfigError(f"num_views={cfg.num_views}: give at least 1")
    if cfg.recon_weight < 0:
        raise ConfigError(f"recon_weight={cfg.recon_weight}: give a weight >= 0")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(FlapTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
