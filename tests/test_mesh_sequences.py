"""Mesh-sequence reading for STMT: .npz and per-frame .off / .obj folders, farthest-point samples, edge-graph
geodesics, and sequences whose frames are not one registered mesh reported and skipped."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.mesh_sequences import read_mesh_sequence, read_obj, read_off, sample_with_geodesics

runner = CliRunner()


def folded_strip(width: int = 12, height: int = 12, gap: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A grid strip folded into a U: its two arms lie `gap` apart in space but far apart along the surface."""
    xs, ys = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height), indexing="xy")
    u = xs.ravel() * 2  # 0..2 along the strip; the fold at u = 1
    x = np.where(u <= 1, u, 2 - u)
    z = np.where(u <= 1, 0.0, gap)
    vertices = np.stack([x, ys.ravel(), z], axis=1)
    faces = []
    for r in range(height - 1):
        for c in range(width - 1):
            a, b, d, e = r * width + c, r * width + c + 1, (r + 1) * width + c, (r + 1) * width + c + 1
            faces += [(a, b, e), (a, e, d)]
    return vertices, np.array(faces)


def test_geodesics_follow_the_surface_not_the_air():
    vertices, faces = folded_strip()
    points, geodist = sample_with_geodesics(np.stack([vertices, vertices + 0.01]), faces, 64)
    assert points.shape == (2, 64, 3) and geodist.shape == (64, 64)
    assert np.allclose(points[1] - points[0], 0.01)  # the same vertices in every frame
    euclid = np.linalg.norm(points[0][:, None] - points[0][None], axis=-1)
    assert (geodist >= euclid - 1e-5).all()  # a path on the surface is never shorter than the straight line
    near_in_air = (euclid < 0.25) & (geodist > 1.0)  # across the fold: close in space, far along the strip
    assert near_in_air.any()
    assert np.allclose(geodist, geodist.T) and np.allclose(np.diag(geodist), 0)


def test_farthest_point_sampling_starts_at_vertex_0_and_spreads_out():
    vertices, faces = folded_strip()
    points, _ = sample_with_geodesics(vertices[None], faces, 4)
    assert np.array_equal(points[0, 0], vertices[0])
    spread = np.linalg.norm(points[0][:, None] - points[0][None], axis=-1)
    assert spread[np.triu_indices(4, 1)].min() > 0.3


def _write_off(path, vertices, faces):
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0", *(" ".join(map(str, v)) for v in vertices),
             *("3 " + " ".join(map(str, f)) for f in faces)]
    path.write_text("\n".join(lines) + "\n")


def test_the_three_layouts_read_the_same_sequence(tmp_path):
    vertices, faces = folded_strip(6, 6)
    frames = np.stack([vertices, vertices * 1.1])
    np.savez(tmp_path / "seq.npz", vertices=frames, faces=faces)
    (tmp_path / "off").mkdir()
    (tmp_path / "obj").mkdir()
    for i, frame in enumerate(frames):
        _write_off(tmp_path / "off" / f"{i:03d}.off", frame, faces)
        (tmp_path / "obj" / f"{i:03d}.obj").write_text(
            "".join(f"v {x} {y} {z}\n" for x, y, z in frame) + "".join(f"f {a + 1}/1 {b + 1}/1 {c + 1}/1\n"
                                                                       for a, b, c in faces))
    for source in ("seq.npz", "off", "obj"):
        v, f = read_mesh_sequence(tmp_path / source)
        assert np.allclose(v, frames, atol=1e-6) and np.array_equal(f, faces), source
    quad = tmp_path / "quad.off"
    quad.write_text("OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    assert read_off(quad)[1].tolist() == [[0, 1, 2], [0, 2, 3]]  # a polygon fanned into triangles
    neg = tmp_path / "neg.obj"
    neg.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\n")
    assert read_obj(neg)[1].tolist() == [[0, 1, 2]]


def test_broken_sequences_name_what_is_wrong(tmp_path):
    vertices, faces = folded_strip(6, 6)
    (tmp_path / "frames").mkdir()
    _write_off(tmp_path / "frames" / "000.off", vertices, faces)
    _write_off(tmp_path / "frames" / "001.off", vertices[:-1], faces[:-2])
    with pytest.raises(ValueError, match="001.off has 35 vertices, 000.off has 36"):
        read_mesh_sequence(tmp_path / "frames")
    np.savez(tmp_path / "nofaces.npz", vertices=vertices[None])
    with pytest.raises(ValueError, match="needs vertices"):
        read_mesh_sequence(tmp_path / "nofaces.npz")
    np.savez(tmp_path / "badface.npz", vertices=vertices[None], faces=faces + 100)
    with pytest.raises(ValueError, match="outside"):
        read_mesh_sequence(tmp_path / "badface.npz")
    (tmp_path / "cut.off").write_text("OFF\n36 50 0\n0 0 0\n")
    with pytest.raises(ValueError, match="truncated"):
        read_off(tmp_path / "cut.off")
    with pytest.raises(ValueError, match="need at least 64"):
        sample_with_geodesics(vertices[None], faces, 64)


def test_finetune_reads_mesh_sequences_and_skips_inconsistent_ones(tmp_path):
    vertices, faces = folded_strip()
    lines = []
    for i in range(4):
        frames = np.stack([vertices + 0.01 * t * (i + 1) for t in range(2)])
        np.savez(tmp_path / f"m{i}.npz", vertices=frames, faces=faces)
        lines.append({"mesh": f"m{i}.npz", "label": i % 2})
    (tmp_path / "bad").mkdir()
    _write_off(tmp_path / "bad" / "000.off", vertices, faces)
    _write_off(tmp_path / "bad" / "001.off", vertices[:-12], faces[:-22])
    lines.append({"mesh": "bad", "label": 0})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "run"), "--json", "data.frames=2",
                                 "data.points=96", "train.batch_size=2", "optim.ref_batch_size=2",
                                 "train.max_steps=2", "train.num_workers=0", "train.eval_every=2",
                                 f"data.source={manifest}", f"data.val_source={manifest}"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    reasons = " ".join(f["reason"] for f in summary["bad_inputs"]["files"])
    assert "001.off has 132 vertices, 000.off has 144" in reasons
