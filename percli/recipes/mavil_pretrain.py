"""MAViL pretraining (Huang et al., NeurIPS 2023): masked audio-video reconstruction, intra- and inter-modal
contrast on masked views (stage 1), then self-training on a frozen stage-1 teacher's features (stage 2).

Stage 1 (default): each clip's fbank (16x16 patches) and frames (2x16x16 tubelets) are masked at random
(`mask_ratio_audio`, `mask_ratio_video`), `views` times independently. Every view runs through the audio and
video towers; the towers' mean patch tokens, projected (``audio_proj`` / ``video_proj``) and L2-normalised, meet
in two symmetric InfoNCE losses over the global batch (negatives all-gathered across processes):

* inter-modal: audio vs video of the same view (temperature `temperature_inter`), averaged over views;
* intra-modal: view 1 vs view 2 of the same modality (`temperature_intra`), audio and video averaged.

The first view's visible tokens are fused by the joint blocks (``blocks_av``) and MAE decoders rebuild the
masked fbank patches and tubelets (MSE on the masked tokens, per-patch normalised targets). The loss is
``recon_weight * (L_audio + L_video) + inter_weight * L_inter + intra_weight * L_intra``.

Stage 2 (`--preset stage2 model.teacher=RUN`, which sets `stage=2`): the stage-1 run (or checkpoint) is
loaded frozen; its contextualised targets are the fused (``blocks_av``) audio and video patch tokens of the
unmasked clip, each token layer-normalised (`target_norm`). A student of the teacher's architecture
(``model.kwargs`` may override it; from scratch, or from the teacher with `student_init=teacher`) regresses
them at its masked tokens with the same decoders (predicting features instead of pixels) and keeps both
contrastive losses. On the tiny embedded set a from-scratch student stays below its teacher in 400 steps, one
started from the teacher rises above it, level with the teacher trained 400 steps more (README "Measured
figures"); the tiny stage2 preset starts from the teacher.

The official MAViL repository holds no code and the paper's body could not be read here: the objective's
structure is the paper's, but the ratios (0.8 audio / 0.9 video, Audio-MAE's and MAE-ST's), temperatures
(0.1), loss weights, the decoders' size and the stage-2 target normalisation are percli's choices, all
options. The pretraining checkpoint's encoder keeps the released names: it loads into `percli finetune mavil`,
`percli eval retrieval` (which then ranks with the trained projections) and `--upstream mavil`.

Evaluation on the held-out clips: audio<->video retrieval (R@1/5/10, median rank, mAP@10 of the projected
embeddings) and, where clips carry event labels (the embedded ones), a linear probe on the frozen towers'
mean patch tokens (ridge regression, 2-fold over the held-out clips, `probe_mAP`).

Data: the embedded generated clips (default) or a captions.jsonl-style manifest (`{"id", "video", "audio"?}`,
captions not needed); a clip with no audio track, silent or 1-sample audio or a corrupt video is skipped and
counted in ``summary.json``. Inputs are prepared as AV-SUPERB's MAViL expert (16 kHz Kaldi fbank normalised
per clip, frames at 2 fps, ImageNet statistics).

Examples:
  percli pretrain mavil --run-dir runs/mavil-s1                  # stage 1, tiny model, embedded clips
  percli pretrain mavil --preset stage2 model.teacher=runs/mavil-s1 --run-dir runs/mavil-s2
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain mavil --preset base \\
      data.source=/data/audioset/clips.jsonl
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.avsuperb.av_upstreams import MAVIL_FPS, MAViLInputs
from percli.core import engine
from percli.core.checkpoint import read_meta, run_weights
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.av_clips import AVClipDataset
from percli.core.metrics import multilabel_metrics
from percli.models import create_model, create_model_for, list_models, load_initial_weights
from percli.models.mavil_pretrain import MAViLPretrain, masked_mse
from percli.recipes.clip import contrastive_loss
from percli.recipes.common import TrainedModelSection
from percli.recipes.mavil_classify import EmbeddedEventClips, MAViLItems
from percli.recipes.pe_av import retrieval_report


@dataclasses.dataclass
class MAViLModelSection(TrainedModelSection):
    teacher: str | None = None
    """Stage 2: the frozen stage-1 teacher (a run dir, checkpoint dir or .safetensors of `pretrain mavil`)."""


@dataclasses.dataclass
class MAViLDataSection:
    source: str = "embedded"
    """`embedded` (generated audio-video event clips) or a manifest of clips (captions.jsonl layout, or its
    folder); captions are not needed."""
    val_source: str | None = None
    """Held-out clips for retrieval; for `embedded`, its test split is used when this is unset."""
    embedded_size: int = 400
    """Clips in the embedded training split (the test split has a quarter, at least 20)."""


@dataclasses.dataclass
class Config:
    model: MAViLModelSection = dataclasses.field(
        default_factory=lambda: MAViLModelSection(name="mavil_pretrain_vit_base_patch16"))
    data: MAViLDataSection = dataclasses.field(default_factory=MAViLDataSection)
    stage: Literal[1, 2] = 1
    """1: rebuild the masked raw inputs; 2: regress the frozen stage-1 teacher's features (needs model.teacher)."""
    student_init: Literal["scratch", "teacher"] = "scratch"
    """Stage 2: the student starts from random weights, or from the teacher's (its prediction layers, of another
    width, at init); ``model.checkpoint`` overrides both."""
    mask_ratio_audio: float = 0.8
    mask_ratio_video: float = 0.9
    views: int = 2
    """Independently masked views per clip (intra-modal contrast needs 2)."""
    temperature_inter: float = 0.1
    temperature_intra: float = 0.1
    recon_weight: float = 1.0
    inter_weight: float = 0.1
    intra_weight: float = 0.1
    target_norm: Literal["layer", "none"] = "layer"
    """Stage 2: each teacher token standardised over its features (LayerNorm without affine), or raw."""
    gather_with_grad: bool = False
    """Gradients flow through the other processes' gathered embeddings too (open_clip's --gather-with-grad)."""
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=256, weight_decay=0.05, betas=(0.9, 0.95), warmup_fraction=0.05))


def load_teacher(path: str) -> MAViLPretrain:
    """A frozen stage-1 model from a `pretrain mavil` run dir, checkpoint dir or .safetensors file."""
    weights = run_weights(path)
    meta = read_meta(weights)
    if not str(meta.get("name", "")).startswith("mavil_pretrain_"):
        raise ConfigError(f"model.teacher: {path} is not a `percli pretrain mavil` checkpoint (its model is "
                          f"{meta.get('name')!r}); give a stage-1 run dir")
    teacher = create_model_for(meta["name"], meta.get("kwargs") or {}, weights)
    load_initial_weights(teacher, weights)
    return teacher.eval().requires_grad_(False)


def probe_map(features: torch.Tensor, targets: torch.Tensor, l2: float = 1.0) -> float:
    """Linear-probe mAP of frozen `features` [N, D] for multi-label `targets` [N, C]: ridge regression on one
    half of the clips scores the other, both ways (features standardised on the fitting half)."""
    n = features.shape[0]
    halves = (torch.arange(n) % 2 == 0, torch.arange(n) % 2 == 1)
    scores = torch.zeros_like(targets, dtype=torch.float64)
    for fit, test in (halves, halves[::-1]):
        x = features[fit].double()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = torch.cat([(x - mean) / std, x.new_ones(x.shape[0], 1)], dim=1)
        y = targets[fit].double() * 2 - 1
        w = torch.linalg.solve(x.T @ x + l2 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
        xt = (features[test].double() - mean) / std
        scores[test] = torch.cat([xt, xt.new_ones(xt.shape[0], 1)], dim=1) @ w
    return multilabel_metrics(scores, targets)["mAP"]


class MAViLPretrainTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.teacher: MAViLPretrain | None = None

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        name, kwargs = cfg.model.name, dict(cfg.model.kwargs)
        if cfg.model.teacher:
            self.teacher = load_teacher(cfg.model.teacher)
            name, kwargs = self.teacher.arch, {**self._kwargs_of(self.teacher), **kwargs}
            kwargs["target_dim"] = self.teacher.embed_dim
        model = create_model(name, **kwargs)
        if not isinstance(model, MAViLPretrain):
            raise ConfigError(f"model.name: {name!r} is not a MAViL pretraining model; use one of "
                              f"{[n for n in list_models() if n.startswith('mavil_pretrain_')]}")
        if self.teacher is not None and (self.teacher.patch_embed.grid, self.teacher.patch_embed_v.grid) != \
                (model.patch_embed.grid, model.patch_embed_v.grid):
            raise ConfigError("model.kwargs: the student's token grids (img_size, n_frm, video_size) must equal the "
                              "teacher's, whose tokens are the targets")
        for ratio, tokens, key in ((cfg.mask_ratio_audio, model.patch_embed.num_patches, "mask_ratio_audio"),
                                   (cfg.mask_ratio_video, model.patch_embed_v.num_patches, "mask_ratio_video")):
            if int(tokens * (1 - ratio)) < 1:
                raise ConfigError(f"{key}={ratio} keeps none of the {tokens} tokens; lower it")
        start = cfg.model.checkpoint or (run_weights(cfg.model.teacher) if cfg.student_init == "teacher" else None)
        if start:
            load_initial_weights(model, start)
        self.kwargs, self.name = kwargs, name
        self.inputs = MAViLInputs(model.preprocess)
        return model

    @staticmethod
    def _kwargs_of(model: MAViLPretrain) -> dict[str, Any]:
        return {k: v for k, v in model.config.items() if k not in ("num_classes", "target_dim")}

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs, "task": "mavil-pretrain",
                "stage": 2 if self.teacher is not None else 1, "teacher": self.cfg.model.teacher}

    def _dataset(self, source: str, train: bool) -> Dataset:
        d = self.cfg.data
        if source == "embedded":
            clips = EmbeddedEventClips(d.embedded_size if train else max(d.embedded_size // 4, 20),
                                       "train" if train else "test")
            return MAViLItems(clips, self.inputs, "av", clips.fps)
        clips = AVClipDataset(source, sample_rate=16000, fps=MAVIL_FPS, require_captions=False)
        return MAViLItems(clips, self.inputs, "av", MAVIL_FPS)

    def train_dataset(self) -> Dataset:
        return self._dataset(self.cfg.data.source, train=True)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        source = d.val_source or ("embedded" if d.source == "embedded" else None)
        return self._dataset(source, train=False) if source else None

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, mavil = self.cfg, getattr(model, "module", model)
        x, v = batch["fbank"][:, None], batch["video"]
        out = model(x, v, cfg.mask_ratio_audio, cfg.mask_ratio_video, cfg.views)
        if self.teacher is None:
            target_a, target_v = mavil.raw_targets(x, v)
            normalize = mavil.norm_pix_loss
        else:
            self.teacher.to(x.device)
            target_a, target_v = self.teacher.contextual_features(x, v)
            if cfg.target_norm == "layer":
                target_a, target_v = (F.layer_norm(t, t.shape[-1:]) for t in (target_a, target_v))
            normalize = False
        recon_a = masked_mse(out["pred_a"], target_a, out["mask_a"], normalize)
        recon_v = masked_mse(out["pred_v"], target_v, out["mask_v"], normalize)
        ea, ev = out["audio_embeds"].float(), out["video_embeds"].float()
        scale_inter, scale_intra = ea.new_tensor(1 / cfg.temperature_inter), ea.new_tensor(1 / cfg.temperature_intra)
        inter = torch.stack([contrastive_loss(a, w, scale_inter, cfg.gather_with_grad) for a, w in zip(ea, ev)]).mean()
        if cfg.views > 1:
            intra = (contrastive_loss(ea[0], ea[1], scale_intra, cfg.gather_with_grad)
                     + contrastive_loss(ev[0], ev[1], scale_intra, cfg.gather_with_grad)) / 2
        else:
            intra = inter * 0.0
        loss = cfg.recon_weight * (recon_a + recon_v) + cfg.inter_weight * inter + cfg.intra_weight * intra
        return {"loss": loss, "recon_audio": recon_a.detach(), "recon_video": recon_v.detach(),
                "inter_loss": inter.detach(), "intra_loss": intra.detach()}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mavil = getattr(model, "module", model)
        a, w = mavil.towers(batch["fbank"][:, None], batch["video"])
        ea, ev = mavil.project(a, w)
        out = {"audio_embeds": ea.float(), "visual_embeds": ev.float(), "item": batch["index"],
               "caption_item": torch.zeros(0, dtype=torch.long, device=ea.device),
               "probe_features": torch.cat([a[:, 1:].mean(dim=1), w[:, 1:].mean(dim=1)], dim=-1).float()}
        if "target" in batch:
            out["targets"] = batch["target"]
        return out

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        if "audio_embeds" not in totals:
            return {}
        metrics = {k: v for k, v in retrieval_report(totals).items() if k.startswith(("a2v", "v2a", "clips"))}
        if "targets" in totals and totals["targets"].shape[0] >= 4:
            metrics["probe_mAP"] = probe_map(totals["probe_features"], totals["targets"])
        return metrics


def validate(cfg: Config) -> None:
    """Checks a dry run can make without building anything: names, paths, ratios, weights."""
    from percli.recipes.common import validate as validate_model_and_paths

    validate_model_and_paths(cfg)
    if cfg.stage == 2 and not cfg.model.teacher:
        raise ConfigError("model.teacher: stage 2 regresses a stage-1 model's features; give its run dir "
                          "(model.teacher=runs/mavil-s1)")
    if cfg.stage == 1 and cfg.model.teacher:
        raise ConfigError(f"stage=1 with model.teacher={cfg.model.teacher}: a teacher is for stage 2; set stage=2 "
                          "(--preset stage2 does) or drop model.teacher")
    if cfg.stage == 1 and cfg.student_init == "teacher":
        raise ConfigError("student_init=teacher is for stage 2 (a student of model.teacher); drop it or set stage=2")
    if cfg.model.teacher and not Path(cfg.model.teacher).expanduser().exists():
        raise ConfigError(f"model.teacher: {cfg.model.teacher} does not exist; give the stage-1 run dir")
    for key in ("mask_ratio_audio", "mask_ratio_video"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: give a fraction in [0, 1)")
    if cfg.views < 1:
        raise ConfigError(f"views={cfg.views}: give at least 1 (2 for the intra-modal contrast)")
    if cfg.views < 2 and cfg.intra_weight > 0:
        raise ConfigError(f"intra_weight={cfg.intra_weight} needs views=2 (two masked views to contrast); set "
                          "views=2 or intra_weight=0")
    for key in ("temperature_inter", "temperature_intra"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: give a temperature > 0")
    for key in ("recon_weight", "inter_weight", "intra_weight"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: give a weight >= 0")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(MAViLPretrainTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
