"""STMT (the official parameter layout, loading, sampling helpers and the forward's contracts); its golden parity
runs in tests/test_golden.py (case stmt_tiny_cfg)."""

import json

import pytest
import torch

from percli.models import create_model
from percli.models.stmt import farthest_point_sample, knn_geodesic, load_state
from tests.conftest import GOLDEN_DIR

FULL = GOLDEN_DIR / "full_configs" / "stmt"


@pytest.mark.skipif(not FULL.is_dir(), reason=f"no STMT full configs in {GOLDEN_DIR}")
def test_the_official_size_has_the_official_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        model = create_model("stmt")
    rows = [line.rsplit(" (", 1) for line in (FULL / "stmt_main_py_defaults" / "keys.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    official = {key: [int(d) for d in dims.rstrip(",)").split(",") if d.strip()] for key, dims in rows}
    assert {k: list(t.shape) for k, t in model.state_dict().items()} == official
    counts = json.loads((FULL / "param_counts.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == counts["stmt_main_py_defaults"]
    assert model.geo.pt_last.sa1.q_conv.weight is model.geo.pt_last.sa1.k_conv.weight  # tied, as the official


def test_official_checkpoints_load_with_their_prefixes_and_the_wrong_size_is_named():
    source = create_model("stmt_tiny")
    for prefix in ("module.", "feat.", ""):
        model = create_model("stmt_tiny")
        load_state(model, {f"{prefix}{k}": v for k, v in source.state_dict().items()})
        assert torch.equal(model.mlp_head[5].weight, source.mlp_head[5].weight)
    with pytest.raises(RuntimeError, match="does not fit"):
        load_state(create_model("stmt_tiny", c1=16, c4=256), source.state_dict())


def test_farthest_point_sampling_and_geodesic_neighbours():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [5, 0, 0], [2, 0, 0]]])
    assert farthest_point_sample(xyz, 3, torch.tensor([0])).tolist() == [[0, 2, 3]]
    geodist = torch.tensor([[[0.0, 3, 1, 2], [3, 0, 2, 1], [1, 2, 0, 3], [2, 1, 3, 0]]])
    idx, sub = knn_geodesic(2, geodist, torch.tensor([[0, 1]]))
    assert idx.sort(-1)[0].tolist() == [[[0, 2], [1, 3]]]
    assert sub.tolist() == [[[0.0, 3.0], [3.0, 0.0]]]  # the centres' own geodesics for the next level


def test_forward_trains_and_refuses_another_frame_count():
    torch.manual_seed(0)
    model = create_model("stmt_tiny")
    points = torch.randn(2, 2, 96, 3)
    geodist = torch.cdist(points.flatten(0, 1), points.flatten(0, 1)).view(2, 2, 96, 96)
    logits = model(points, geodist)  # FPS starts drawn, as the official
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert model.transformer.layers[0][0].fn.fn.to_qkv.weight.grad is not None
    assert model.geo.linear1.weight.grad is None  # the official dead head gets no gradient
    with pytest.raises(ValueError, match="framenum=2"):
        model(torch.randn(1, 3, 96, 3), torch.rand(1, 3, 96, 96))


def _figures(batch: int, frames: int = 3, points: int = 96):
    from percli.core.data.embedded_mocap import EmbeddedMocap

    data = EmbeddedMocap(num_sequences=batch, frames=frames, points=points)
    items = [data[i] for i in range(batch)]
    return torch.stack([i["points"] for i in items]), torch.stack([i["geodist"] for i in items])


def test_frame_causal_mask_lets_a_token_see_its_own_and_earlier_frames():
    from percli.models.stmt import frame_causal_mask

    mask = frame_causal_mask(3, 2)
    assert mask.shape == (6, 6)
    assert mask[0].tolist() == [True, True, False, False, False, False]  # frame 0 sees frame 0 alone
    assert mask[3].tolist() == [True, True, True, True, False, False]
    assert mask[5].all()


def test_future_frame_prediction_never_reads_a_later_frame():
    """Frame 0's causal tokens and transformer output are unchanged when frames 1-2 move (channel attention and
    the attention mask are both causal); the bidirectional path does read them."""
    from percli.models.stmt import frame_causal_mask

    torch.manual_seed(0)
    model = create_model("stmt_tiny", framenum=3).eval()
    points, geodist = _figures(2)
    moved = points.clone()
    moved[:, 1:] += 0.3 * torch.randn_like(moved[:, 1:])
    mask = frame_causal_mask(3, model.level2)
    outputs = []
    for p in (points, moved):
        torch.manual_seed(1)  # the same farthest-point starts
        tokens = model.frame_tokens(p, geodist, causal=True)["tokens"]
        torch.manual_seed(1)
        full = model.frame_tokens(p, geodist)["tokens"]
        first = slice(0, model.level2)  # frame 0's tokens
        outputs.append((model.transformer(tokens, mask=mask)[:, first], model.transformer(full)[:, first]))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-6)
    assert not torch.allclose(outputs[0][1], outputs[1][1], atol=1e-4)


def test_pretext_tasks_train_the_backbone_and_leave_the_dead_layers_frozen():
    torch.manual_seed(0)
    model = create_model("stmt_tiny_pretrain", framenum=3, mask_ratio=0.5)
    points, geodist = _figures(4)
    losses = model(points, geodist)
    assert set(losses) == {"mvm", "ffp"} and all(v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.feat.transformer.layers[0][0].fn.fn.to_qkv.weight.grad.abs().sum() > 0
    assert model.feat.geo.gather_local_0.conv1.weight.grad.abs().sum() > 0
    assert model.mask_geo.grad.abs().sum() > 0 and model.mask_spa.grad.abs().sum() > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)  # DDP-safe
    assert not any(n.startswith(("feat.mlp_head", "feat.geo.linear1", "feat.spa.pt_last.sa3")) for n in trainable)
    only_mvm = model(points, geodist, ffp=False)
    assert set(only_mvm) == {"mvm"}


def test_chamfer_is_zero_for_the_same_set_in_any_order_and_grows_with_distance():
    from percli.models.stmt import chamfer

    a = torch.randn(5, 8, 3)
    assert chamfer(a, a[:, torch.randperm(8)]).item() == pytest.approx(0.0, abs=1e-6)
    assert chamfer(a, a + 0.1).item() < chamfer(a, a + 0.5).item()


def test_a_pretraining_state_gives_the_classifier_its_backbone_and_a_fresh_head():
    pretrainer = create_model("stmt_tiny_pretrain", framenum=2)
    classifier = create_model("stmt_tiny", framenum=2, num_classes=7)
    head = classifier.mlp_head[5].weight.clone()
    report = load_state(classifier, pretrainer.state_dict())
    assert torch.equal(classifier.geo.conv1.weight, pretrainer.feat.geo.conv1.weight)
    assert torch.equal(classifier.mlp_head[5].weight, head) and report.head_reset
    assert "mask_geo" in report.dropped and "mlp_head.5.weight" in report.missing
    again = create_model("stmt_tiny_pretrain", framenum=2)
    load_state(again, pretrainer.state_dict())  # resuming a pretraining from its own state
    assert torch.equal(again.mvm_head.net[1].weight, pretrainer.mvm_head.net[1].weight)
    report = load_state(create_model("stmt_tiny_pretrain", framenum=2), classifier.state_dict())
    assert "mask_geo" in report.missing  # a supervised STMT gives a pretrainer its backbone only
