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
