"""AMVC: adversarially masked video consistency for unsupervised domain adaptation (Zhu, Liang, Huang, Hauptmann,
arXiv 2403.16242), over a video ViT (MAE-ST's layout: `percli.models.diffmae.DiffMAEClassifier` with a video
``input_size``; it loads `percli pretrain diffmae` / `finetune diffmae` video runs).

No official code was found; the equations below are percli's reading of the paper's two modules.

* **Generative adversarial domain alignment.** A mask generator ``G`` scores each patch token (from the
  detached patch embeddings) and hides the ``mask_ratio`` highest-scoring ones (Gumbel noise while training,
  a straight-through estimator through ``sigmoid(score)``); hidden tokens become a learned ``mask_token`` plus
  their position. A domain discriminator ``D`` tells source from target on the pooled features of masked
  clips. Two gradient-reversal layers make the game: between the encoder and ``D`` (the encoder learns to
  confuse ``D``, as DANN) and between ``G`` and the encoder (``G`` receives the negated gradient of the
  encoder's objectives, so it proposes the masks under which alignment and consistency are hardest).
* **Masked consistency.** An EMA copy of the classifier (``teacher``) labels each full target clip; where its
  confidence reaches ``threshold`` the student's prediction on the adversarially masked target clip must
  match that pseudo-label (cross-entropy).

``forward(source, labels, target, domain_scale)`` returns every loss and a few rates; ``L = CE(source) +
weight_domain * L_domain + weight_consistency * L_consistency`` is summed by the recipe.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import LoadReport, check_fit, read_state
from percli.models.diffmae import DiffMAEClassifier, diffmae_vit_base_patch16_video_cls
from percli.models.diffmae import load_state as load_vit_state


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient times ``-scale`` backward (Ganin & Lempitsky's gradient reversal layer)."""
    return _ReverseGradient.apply(x, scale)


def top_k_mask(scores: torch.Tensor, ratio: float, gumbel: bool) -> torch.Tensor:
    """1 for the ``ratio`` highest-scoring tokens of each row of ``scores`` [B, N], 0 elsewhere, with the gradient
    of ``sigmoid(scores)`` (straight-through); Gumbel noise on the ranking when ``gumbel``."""
    k = max(1, round(ratio * scores.shape[1]))
    ranked = scores
    if gumbel:
        ranked = scores - torch.log(-torch.log(torch.rand_like(scores).clamp(1e-9, 1 - 1e-9)))
    hard = torch.zeros_like(scores).scatter_(1, ranked.topk(k, dim=1)[1], 1.0)
    soft = torch.sigmoid(scores)
    return hard + soft - soft.detach()


class AMVC(nn.Module):
    """The module docstring's model: ``student`` / ``teacher`` video ViT classifiers, ``mask_generator``,
    ``mask_token``, ``discriminator``."""

    def __init__(self, backbone: DiffMAEClassifier, mask_ratio: float = 0.5, threshold: float = 0.8,
                 discriminator_dim: int = 256):
        super().__init__()
        if not backbone.encoder.video:
            raise ValueError("AMVC adapts a video model: give the backbone a [frames, height, width] input_size")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio}: give a fraction in (0, 1)")
        self.config = {**backbone.config, "mask_ratio": mask_ratio, "threshold": threshold,
                       "discriminator_dim": discriminator_dim}
        self.arch = f"amvc_{backbone.arch}"
        self.preprocess = backbone.preprocess
        self.mask_ratio, self.threshold = mask_ratio, threshold
        dim = backbone.config["embed_dim"]
        self.student = backbone
        self.teacher = copy.deepcopy(backbone).requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.mask_generator = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.discriminator = nn.Sequential(nn.Linear(dim, discriminator_dim), nn.ReLU(),
                                           nn.Linear(discriminator_dim, discriminator_dim), nn.ReLU(),
                                           nn.Linear(discriminator_dim, 1))
        # EMA bookkeeping, saved with the weights so a resumed run updates the teacher exactly as an unbroken one
        self.register_buffer("micro_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def checkpoint_meta(self) -> dict:
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    def train(self, mode: bool = True) -> AMVC:
        super().train(mode)
        self.teacher.eval()  # the teacher labels without drop-path
        return self

    def propose_mask(self, video: torch.Tensor) -> torch.Tensor:
        """G's hard mask [B, N] (1 = hidden) with its straight-through gradient."""
        tokens = self.student.encoder.tokens(video)[:, 1:].detach()
        return top_k_mask(self.mask_generator(tokens)[..., 0], self.mask_ratio, gumbel=self.training)

    def features(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The student's pooled features [B, C]; ``mask`` [B, N] hides tokens (mask token + position), and its
        gradient reaches G reversed."""
        encoder = self.student.encoder
        x = encoder.tokens(video)
        if mask is not None:
            m = reverse_gradient(mask)[..., None]
            fill = self.mask_token + encoder.pos_embed[:, 1:]
            x = torch.cat([x[:, :1], x[:, 1:] * (1 - m) + fill * m], dim=1)
        for block in encoder.blocks:
            x = block(x)
        return self.student.fc_norm(encoder.norm(x)[:, 1:].mean(dim=1))

    def forward(self, source: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
                domain_scale: float = 1.0) -> dict[str, torch.Tensor]:
        head = self.student.head
        out = {"source": F.cross_entropy(head(self.features(source)).float(), labels)}
        with torch.no_grad():
            confidence, pseudo = self.teacher(target).float().softmax(dim=-1).max(dim=-1)
        masked_source = self.features(source, self.propose_mask(source))
        masked_target = self.features(target, self.propose_mask(target))
        both = torch.cat([masked_source, masked_target])
        domain = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(both.device)
        domain_logits = self.discriminator(reverse_gradient(both, domain_scale))[:, 0].float()
        out["domain"] = F.binary_cross_entropy_with_logits(domain_logits, domain)
        confident = (confidence >= self.threshold).float()
        per_clip = F.cross_entropy(head(masked_target).float(), pseudo, reduction="none")
        out["consistency"] = (per_clip * confident).sum() / confident.sum().clamp(min=1.0)
        out["confident"] = confident.mean()
        out["domain_acc"] = ((domain_logits > 0).float() == domain).float().mean()
        return out


def load_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """A percli AMVC state, strictly; or a video ViT state (a `finetune diffmae` classifier, a `pretrain diffmae`
    encoder) into the student, then copied to the teacher (generator and discriminator left at init)."""
    state = read_state(state_or_path)
    if any(k.startswith("student.") for k in state):
        check_fit(model, state, model.arch, hint="build the AMVC backbone the checkpoint was trained with")
        model.load_state_dict(state)
        return LoadReport(source_format="percli")
    report = load_vit_state(model.student, state)
    model.teacher.load_state_dict(model.student.state_dict())
    report.missing = sorted(set(report.missing) | {k for k in model.state_dict()
                                                   if not k.startswith(("student.", "teacher."))})
    return report


register_loader(__name__)(load_state)


@register_model
def amvc_vit_base_patch16_video(mask_ratio: float = 0.5, threshold: float = 0.8, discriminator_dim: int = 256,
                                **kwargs) -> AMVC:
    """AMVC over ViT-B/16 video (16 x 224 px, 2 x 16 x 16 tubelets; Epic-Kitchens UDA's 8 verb classes)."""
    model = AMVC(diffmae_vit_base_patch16_video_cls(**{"num_classes": 8, **kwargs}), mask_ratio, threshold,
                 discriminator_dim)
    model.arch = "amvc_vit_base_patch16_video"
    return model
