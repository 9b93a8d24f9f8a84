"""DINOv2 loss terms against hand-computed cases, and the DINO head's official parameter names."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from percli.models.dino_head import DINOHead
from percli.recipes.dinov2_losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_dino_cross_entropy_with_centering_matches_hand_computation():
    student = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
    teacher = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
    center = [0.5, -0.5, 1.0]
    t_temp, s_temp = 0.5, 0.1
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p = _softmax([(t - c) / t_temp for t, c in zip(t_row, center)])
        log_q = [math.log(q) for q in _softmax([s / s_temp for s in s_row])]
        expected -= sum(pk * lk for pk, lk in zip(p, log_q)) / len(student)

    loss_fn = DINOLoss(3, student_temp=s_temp)
    loss_fn.center = torch.tensor([center])
    probs = loss_fn.softmax_center_teacher(torch.tensor(teacher), t_temp)
    loss = loss_fn([torch.tensor(student)], [probs])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Two student crops x two teacher crops: the four pair losses add up.
    assert loss_fn([torch.tensor(student)] * 2, [probs] * 2).item() == pytest.approx(4 * expected, rel=1e-6)


def test_center_is_ema_of_batch_mean_applied_at_next_softmax():
    loss_fn = DINOLoss(3, center_momentum=0.9)
    batch = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # mean [2, 2, 2]
    loss_fn.update_center(batch)
    assert torch.equal(loss_fn.center, torch.zeros(1, 3))  # deferred until the next use
    loss_fn.softmax_center_teacher(batch, 0.1)
    torch.testing.assert_close(loss_fn.center, torch.full((1, 3), 0.2))
    loss_fn.update_center(torch.tensor([[0.0, 10.0, 0.0]]))
    loss_fn.apply_center_update()
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.18, 0.18 + 1.0, 0.18]]))
    loss_fn.apply_center_update()  # nothing pending: unchanged
    torch.testing.assert_close(loss_fn.center, torch.tensor([[0.18, 1.18, 0.18]]))


def test_ibot_center_averages_patches_then_images():
    loss_fn = iBOTPatchLoss(2, center_momentum=0.5)
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]])  # [B=2, N=2, K=2]
    loss_fn.update_center(tokens)
    loss_fn.apply_center_update()
    torch.testing.assert_close(loss_fn.center, torch.tensor([[[0.5, 0.5]]]))  # 0.5 * [1, 1]


@pytest.mark.parametrize("n_iterations", [3, 200])
def test_sinkhorn_knopp_rows_are_assignments_and_prototypes_balance(n_iterations):
    logits = torch.tensor([[4.0, 0.0, 0.0], [3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [5.0, 0.0, 0.5]])  # B=4, K=3
    q = DINOLoss(3).sinkhorn_knopp_teacher(logits, teacher_temp=1.0, n_iterations=n_iterations)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4))  # the last step normalises samples
    prototype_mass = q.sum(dim=0)
    softmax_mass = torch.softmax(logits, dim=-1).sum(dim=0)
    # Prototype 0 dominates every softmax row; Sinkhorn moves its mass towards B / K = 4 / 3.
    assert (prototype_mass - 4 / 3).abs().max() < (softmax_mass - 4 / 3).abs().max()
    if n_iterations == 200:
        torch.testing.assert_close(prototype_mass, torch.full((3,), 4 / 3), atol=1e-5, rtol=0)


def test_sinkhorn_knopp_one_iteration_by_hand():
    # exp(logits) = [[1, e], [1, 1]]; one row-then-column normalisation, then * B.
    e = math.e
    rows = [[1 / (1 + 1) / 2, e / (e + 1) / 2], [1 / (1 + 1) / 2, 1 / (e + 1) / 2]]  # [B, K] after the K-step
    expected = [[v / sum(r) for v in r] for r in rows]  # columns of Q^T are samples: each sums to 1
    q = sinkhorn_knopp(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), 1.0, n_samples=2, n_iterations=1)
    torch.testing.assert_close(q, torch.tensor(expected))


def test_ibot_patch_loss_weights_each_image_equally():
    k = 3
    student = torch.randn(2, 4, k, generator=torch.Generator().manual_seed(0))
    teacher = torch.softmax(torch.randn(2, 4, k, generator=torch.Generator().manual_seed(1)), dim=-1)
    mask = torch.tensor([[True, False, False, False], [True, True, True, False]])
    ce = (teacher * torch.log_softmax(student / 0.1, dim=-1)).sum(-1)  # [2, 4]
    expected = -(ce[0, 0] / 1 + (ce[1, 0] + ce[1, 1] + ce[1, 2]) / 3) / 2

    loss_fn = iBOTPatchLoss(k)
    assert loss_fn(student, teacher, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    masked = loss_fn.forward_masked(student[mask], teacher[mask], mask)
    assert masked.item() == pytest.approx(expected.item(), rel=1e-6)
    padded = loss_fn.forward_masked(
        torch.cat([student[mask], torch.zeros(2, k)]), torch.cat([teacher[mask], torch.ones(2, k)]), mask,
        n_masked_patches=4,
    )
    assert padded.item() == pytest.approx(expected.item(), rel=1e-6)


def test_koleo_on_known_points():
    angles = torch.tensor([0.0, 60.0, 180.0, 270.0]) * math.pi / 180
    radii = torch.tensor([1.0, 2.0, 0.5, 3.0])  # normalisation makes radii irrelevant
    points = torch.stack([angles.cos(), angles.sin()], dim=1) * radii[:, None]
    # Nearest chords: 0<->60 deg (length 1), 180<->270 deg and 270 -> 180 or 0 deg (sqrt 2).
    expected = -(0 + 0 + math.log(math.sqrt(2)) * 2) / 4
    assert KoLeoLoss()(points).item() == pytest.approx(expected, abs=1e-6)
    square = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    assert KoLeoLoss()(square).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)


def test_losses_reduce_over_a_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loss_fn = iBOTPatchLoss(3)
        q = loss_fn.sinkhorn_knopp_teacher(torch.zeros(4, 3), 1.0, torch.tensor(4))
        torch.testing.assert_close(q, torch.full((4, 3), 1 / 3))
        dino = DINOLoss(3)
        dino.update_center(torch.ones(2, 3))
        dino.apply_center_update()
        torch.testing.assert_close(dino.center, torch.full((1, 3), 0.1))
    finally:
        dist.destroy_process_group()


def test_dino_head_shapes_and_official_parameter_names():
    head = DINOHead(in_dim=16, out_dim=10, hidden_dim=32, bottleneck_dim=8)
    shapes = [(name, tuple(p.shape)) for name, p in head.named_parameters()]
    assert shapes == list({
        "mlp.0.weight": (32, 16), "mlp.0.bias": (32,),
        "mlp.2.weight": (32, 32), "mlp.2.bias": (32,),
        "mlp.4.weight": (8, 32), "mlp.4.bias": (8,),
        "last_layer.weight_g": (10, 1), "last_layer.weight_v": (10, 8),
    }.items())  # names and order of the official head (torch weight_norm registers g, then v)
    assert head(torch.randn(5, 16)).shape == (5, 10)
    assert head(torch.randn(2, 3, 16)).shape == (2, 3, 10)
    # Unit-norm prototypes on unit-norm inputs: logits are cosines.
    assert head(torch.randn(64, 16)).abs().max() <= 1 + 1e-5
    single = DINOHead(16, 10, nlayers=1, bottleneck_dim=8, mlp_bias=False)
    names = [name for name, _ in single.named_parameters()]
    assert names == ["mlp.weight", "last_layer.weight_g", "last_layer.weight_v"]
