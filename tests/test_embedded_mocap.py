"""The embedded MoCap mesh sequences (STMT's input): seeded, normalised, one motion per class, and geodesics that
are true shortest paths on the figure's surface graph."""

import numpy as np
import pytest
import torch

from percli.core.data.embedded_mocap import _BONES, CLASSES, EmbeddedMocap, _joints, _samples, _surface


def test_sequences_are_seeded_normalised_and_labelled_by_index():
    data = EmbeddedMocap(num_sequences=16, frames=6)
    item = data[3]
    assert item["points"].shape == (6, 128, 3) and item["geodist"].shape == (6, 128, 128)
    assert item["label"] == 3 and data.classes == list(CLASSES)
    assert torch.equal(data[3]["points"], item["points"])
    assert not torch.equal(EmbeddedMocap("val", num_sequences=16, frames=6)[3]["points"], item["points"])
    points = item["points"].reshape(-1, 3)
    assert float(points[:, 1].max() - points[:, 1].min()) == pytest.approx(1.0, abs=1e-5)  # the official scale
    assert torch.allclose((points.max(0).values + points.min(0).values) / 2, torch.zeros(3), atol=1e-5)


def test_every_class_moves_its_vertices():
    data = EmbeddedMocap(num_sequences=8, frames=6)
    for index, motion in enumerate(CLASSES):
        points = data[index]["points"]
        moved = (points[1:] - points[:-1]).norm(dim=-1).amax()  # the largest step of any vertex
        assert moved > 0.01, motion


def test_geodesics_are_symmetric_shortest_paths_no_shorter_than_straight_lines():
    data = EmbeddedMocap(num_sequences=1, frames=2)
    geo = data.geodist.numpy()
    rest = _surface(_joints(np.ones(16), {}), _samples(128))
    straight = np.linalg.norm(rest[:, None] - rest[None], axis=-1)
    assert np.allclose(geo, geo.T) and np.allclose(np.diag(geo), 0)
    assert (geo >= straight - 1e-4).all()
    bones = [b for b, _, _ in _samples(128)]
    hand, foot = bones.index(_BONES.index(("l_elbow", "l_hand"))), bones.index(_BONES.index(("r_knee", "r_foot")))
    assert geo[hand, foot] > 1.2 * straight[hand, foot]  # hand to foot over the body, not through the air
    # the triangle inequality holds through every intermediate vertex (shortest paths)
    assert (geo[:, :, None] <= geo[:, None, :] + geo.T[None, :, :] + 1e-4).all()
