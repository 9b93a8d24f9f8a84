"""DINOv2 training losses (Oquab et al., 2023): DINO [CLS] loss, iBOT masked-patch loss, KoLeo.

Written from the paper and the behaviour of facebookresearch/dinov2@b8931f7 (``dinov2/loss/``);
the module and buffer names (``center``) and method names match it, so ``dino_loss.center`` and
``ibot_patch_loss.center`` of official checkpoints load as they are.

* Teacher targets: softmax of ``(teacher_logits - center) / teacher_temp`` ("centering"), or
  Sinkhorn-Knopp (``sinkhorn_knopp_teacher``, 3 iterations): each returned row sums to 1 and each
  prototype gets about ``B / K`` of the total mass.
* Center: EMA of the batch-mean teacher logits, ``c <- m c + (1 - m) mean``. As officially, the
  batch sum is all-reduced (asynchronously when torch.distributed is initialised) in
  ``update_center`` and folded into ``center`` at the next ``softmax_center_teacher`` (or
  ``apply_center_update``), so the reduction overlaps the student's forward pass.
* Student: cross-entropy ``-sum_k p_teacher log softmax(s / student_temp)``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def sinkhorn_knopp(
    teacher_logits: torch.Tensor, teacher_temp: float, n_samples: int | torch.Tensor, n_iterations: int = 3
) -> torch.Tensor:
    """Sinkhorn-Knopp teacher assignment over all processes (SwAV-style, as DINOv2).

    Args:
        teacher_logits: [B_local, K] logits on this process.
        teacher_temp: sharpening temperature.
        n_samples: number of samples B over all processes.
        n_iterations: alternating normalisations (official: 3).

    Returns:
        [B_local, K] assignment: each row sums to 1; prototype (column) sums over all processes
        tend to B / K as the iterations go on.
    """
    q = torch.exp(teacher_logits.float() / teacher_temp).t()  # [K, B_local], the paper's notation
    n_prototypes = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # each prototype's mass -> 1 / K
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample's mass -> 1 / B
        q /= n_samples
    return (q * n_samples).t()  # samples' mass -> 1: each row is an assignment


class _TeacherCentering(nn.Module):
    """The EMA ``center`` buffer shared by the DINO and iBOT losses, with the deferred all-reduce."""

    def __init__(self, center_shape: tuple[int, ...], student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(*center_shape))
        self.updated = True
        self.reduce_handle = None
        self.len_teacher_output: int | None = None
        self.async_batch_center: torch.Tensor | None = None

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred, sharpened teacher probabilities (applies any pending center update first)."""
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """Start the all-reduce of this batch's teacher-logit sum; applied by `apply_center_update`."""
        self.updated = False
        self.len_teacher_output = len(teacher_output)
        self.async_batch_center = self._batch_sum(teacher_output)
        if dist.is_initialized():
            self.reduce_handle = dist.all_reduce(self.async_batch_center, async_op=True)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """``center <- m * center + (1 - m) * global batch mean`` once the reduction is done."""
        if self.updated:
            return
        if self.reduce_handle is not None:
            self.reduce_handle.wait()
            self.reduce_handle = None
        batch_center = self.async_batch_center / (self.len_teacher_output * _world_size())
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
        self.updated = True

    def _batch_sum(self, teacher_output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DINOLoss(_TeacherCentering):
    """DINO loss on [CLS] prototype logits; ``center`` is [1, out_dim]."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, out_dim), student_temp, center_momentum)

    def _batch_sum(self, teacher_output: torch.Tensor) -> torch.Tensor:
        return teacher_output.sum(dim=0, keepdim=True)  # [B, K] -> [1, K]

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets for [B_local, K] logits; B counts every process's rows."""
        return sinkhorn_knopp(teacher_output, teacher_temp, len(teacher_output) * _world_size(), n_iterations)

    def forward(self, student_output_list: list[torch.Tensor], teacher_probs_list: list[torch.Tensor]) -> torch.Tensor:
        """Sum over every (student crop, teacher crop) pair of the batch-mean cross-entropy."""
        total_loss = 0.0
        for student in student_output_list:
            log_probs = F.log_softmax(student / self.student_temp, dim=-1)
            for teacher in teacher_probs_list:
                total_loss = total_loss - (teacher * log_probs).sum(dim=-1).mean()
        return total_loss


class iBOTPatchLoss(_TeacherCentering):  # noqa: N801 - the official class name
    """iBOT loss on masked patch tokens; ``center`` is [1, 1, patch_out_dim].

    Each image's masked patches share a weight ``1 / n_masked(image)`` and the sum is divided by the
    number of images, so every image counts the same however many patches it masks.
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, 1, patch_out_dim), student_temp, center_momentum)

    def _batch_sum(self, teacher_output: torch.Tensor) -> torch.Tensor:
        # Official formula: [B, N, K] -> mean over patches -> sum over images -> [1, K]. The official
        # trainer passes the flat [n_masked, K] masked tokens, for which this gives one scalar shift
        # (which softmax ignores); kept as is so that behaviour and checkpoints stay identical.
        return teacher_output.mean(1).sum(dim=0, keepdim=True)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: torch.Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: torch.Tensor,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets for [n_masked_local, K] logits; B is the all-reduced masked count."""
        n_samples = _all_reduce(n_masked_patches_tensor.clone())
        return sinkhorn_knopp(teacher_output, teacher_temp, n_samples, n_iterations)

    def forward(
        self, student_patch_tokens: torch.Tensor, teacher_patch_tokens: torch.Tensor, student_masks_flat: torch.Tensor
    ) -> torch.Tensor:
        """Dense form: [B, N, K] student logits and teacher probabilities, [B, N] boolean mask."""
        ce = (teacher_patch_tokens * F.log_softmax(student_patch_tokens / self.student_temp, dim=-1)).sum(dim=-1)
        mask = student_masks_flat.float()
        per_image = (ce * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
        return -per_image.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: torch.Tensor,
        teacher_patch_tokens_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gathered form used in training: [M, K] logits/probabilities of the masked patches only.

        Args:
            student_patch_tokens_masked: student logits of the masked patches, in mask order.
            teacher_patch_tokens_masked: teacher probabilities of the same patches.
            student_masks_flat: [B, N] boolean mask.
            n_masked_patches: keep only the first rows (the trainer pads its buffers).
            masks_weight: per-patch weights; default ``1 / n_masked`` of the patch's image.
        """
        s = student_patch_tokens_masked.float()
        t = teacher_patch_tokens_masked.float()
        ce = (t * F.log_softmax(s / self.student_temp, dim=-1)).sum(dim=-1)
        if masks_weight is None:
            per_image = 1 / student_masks_flat.sum(-1).clamp(min=1.0)  # [B]
            masks_weight = per_image.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]
        if n_masked_patches is not None:
            ce = ce[:n_masked_patches]
        return -(ce * masks_weight).sum() / student_masks_flat.shape[0]


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser (Sablayrolles et al., 2019): ``-mean log d_nn``.

    Features are L2-normalised, each one's nearest neighbour is the largest inner product (itself
    excluded), and the distance is ``||x - x_nn + 1e-8||`` (torch's pairwise distance) plus ``eps``
    inside the log, with autocast off as officially (features are cast to float32 here).
    """

    def forward(self, student_output: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """[B, D] features -> scalar loss."""
        with torch.autocast(student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)
            dots = x @ x.t()
            dots.fill_diagonal_(-1)  # cosine >= -1: a point is never its own neighbour
            nearest = dots.argmax(dim=1)
            distances = F.pairwise_distance(x, x[nearest], p=2, eps=1e-8)
            return -torch.log(distances + eps).mean()
