"""`percli eval dense`: the metrics by hand, the embedded scenes, the dense folder/manifest reader with hostile
files, and short CLI runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.dense import DenseDataset, DenseTransform, write_mask
from percli.core.data.dense_scenes import CLASSES, MAX_DEPTH, EmbeddedScenes, write_scenes
from percli.core.data.images import BadSample
from percli.core.dense_metrics import (
    depth_errors,
    scale_invariant_log_loss,
    segmentation_areas,
    segmentation_scores,
)

runner = CliRunner()
TINY = ["model.checkpoint=random", "model.kwargs={img_size: 16, patch_size: 4, embed_dim: 16, depth: 1, num_heads: 2}",
        "data.image_size=16", "train.batch_size=4", "train.max_steps=2", "train.num_workers=0"]
PLAIN = DenseTransform(16, (0.0,) * 3, (1.0,) * 3)


def test_miou_by_hand_with_ignore_index_and_absent_classes():
    target = torch.tensor([[0, 0, 1], [1, 255, 2]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 3]])  # the ignored pixel's prediction does not count
    scores = segmentation_scores(*segmentation_areas(pred, target, num_classes=5))
    # class 0: 1 hit / union 2; class 1: 2 / 3; class 2 missed; class 3 predicted only (IoU 0); class 4 absent
    assert scores["iou"][:4] == pytest.approx([0.5, 2 / 3, 0.0, 0.0]) and scores["iou"][4] is None
    assert scores["miou"] == pytest.approx((0.5 + 2 / 3) / 4)
    assert scores["pixel_acc"] == pytest.approx(3 / 5)


def test_depth_errors_by_hand_skip_invalid_pixels():
    pred = torch.tensor([[1.0, 2.0], [4.0, 5.0]])
    target = torch.tensor([[1.0, 4.0], [0.0, 4.0]])  # 0 = invalid
    errors = depth_errors(pred, target)
    assert errors["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert errors["abs_rel"] == pytest.approx((0 + 0.5 + 0.25) / 3)
    assert errors["delta1"] == pytest.approx(1 / 3)  # ratio 1.25 is not < 1.25
    assert depth_errors(pred, torch.zeros(2, 2)) is None
    valid = target > 0
    assert float(scale_invariant_log_loss(2 * target, target, valid)) == pytest.approx(math.sqrt(0.15) * math.log(2))
    assert float(scale_invariant_log_loss(target, target, valid)) < 1e-3


def test_embedded_scenes_carry_exact_classes_and_depths():
    scenes = EmbeddedScenes("train", 20, 32)
    again = EmbeddedScenes("train", 20, 32).scene(3)
    assert all(np.array_equal(scenes.scene(3)[k], again[k]) for k in ("image", "mask", "depth"))
    assert not np.array_equal(scenes.scene(3)["image"], EmbeddedScenes("val", 20, 32).scene(3)["image"])
    seen = set()
    for i in range(20):
        s = scenes.scene(i)
        mask, depth = s["mask"], s["depth"]
        seen |= set(np.unique(mask).tolist())
        assert (depth[mask == 0] == 0).all() and (depth[mask > 0] > 0).all() and depth.max() <= MAX_DEPTH
        cls, cx, cy, radius, z = s["objects"][-1]  # the nearest object: nothing hides its centre
        px, py = int(cx), int(cy)
        assert mask[py, px] == cls, (i, s["objects"])
        if CLASSES[cls] == "disc":  # a sphere bulges towards the camera
            assert z - radius * z / 32 - 1e-4 <= depth[py, px] <= z + 1e-4
        else:
            assert depth[py, px] == pytest.approx(z)
        ground = mask == 1
        rows = np.where(ground.any(axis=1))[0]  # the ground comes nearer row by row towards the bottom
        ground_depth = [depth[r][ground[r]].max() for r in rows]
        assert all(a >= b - 1e-5 for a, b in zip(ground_depth, ground_depth[1:]))
    assert seen == set(range(len(CLASSES)))
    item = scenes[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.int64


def test_written_scenes_read_back_through_the_folder_reader_and_a_manifest(tmp_path):
    root = write_scenes(tmp_path / "scenes", train=2, val=3, image_size=16)
    embedded = EmbeddedScenes("val", 3, 16, PLAIN)
    folder = DenseDataset(root, "val", ["mask", "depth"], PLAIN, num_classes=len(CLASSES))
    lines = [json.dumps({"image": f"val/images/{i:05d}.png", "mask": f"val/masks/{i:05d}.png",
                         "depth": f"val/depths/{i:05d}.png"}) for i in range(3)]
    (root / "val.jsonl").write_text("\n".join(lines) + "\n")
    manifest = DenseDataset(root / "val.jsonl", "val", ["mask", "depth"], PLAIN, num_classes=len(CLASSES))
    assert len(folder) == len(manifest) == 3 and len(DenseDataset(root, "train", ["mask"], PLAIN)) == 2
    for i in range(3):
        want, got, listed = embedded[i], folder[i], manifest[i]
        assert torch.equal(want["image"], got["image"]) and torch.equal(want["mask"], got["mask"])
        assert torch.allclose(want["depth"], got["depth"], atol=5e-4)  # millimetre PNG
        assert torch.equal(got["depth"], listed["depth"]) and listed["path"] == got["path"]


def _hostile_folder(tmp_path):
    root = tmp_path / "hostile"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d", "e", "f", "g", "h"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    good = rng.integers(0, 5, (16, 16)).astype(np.uint8)
    good[0, 0] = 255
    for name in ("a", "f", "g", "h"):
        write_mask(root / "masks" / f"{name}.png", good)
    (root / "masks" / "c.png").write_bytes(b"not a png")  # unreadable
    write_mask(root / "masks" / "d.png", good[:8])  # size mismatch
    write_mask(root / "masks" / "e.png", np.full((16, 16), 9, np.uint8))  # class 9 of 5
    write_mask(root / "masks" / "z.png", good)  # no image
    return root  # b: no mask


def test_hostile_dense_files_are_named_counted_and_skipped(tmp_path):
    root = _hostile_folder(tmp_path)
    data = DenseDataset(root, "train", ["mask"], PLAIN, num_classes=5)
    assert [s["image"].rsplit("/", 1)[1] for s in data.samples] == ["a.png", "c.png", "d.png", "e.png", "f.png",
                                                                    "g.png", "h.png"]
    assert data.bad_records.count == 2
    assert {e["file"].rsplit("/", 1)[1] for e in data.bad_records.examples} == {"b.png", "z.png"}
    for index, why in ((1, "UnidentifiedImageError"), (2, "its image 16x16"), (3, "class id 9")):
        with pytest.raises(BadSample, match=why):
            data[index]
    assert data[0]["mask"][0, 0] == 255

    run = tmp_path / "run"
    result = runner.invoke(app, ["eval", "dense", "--run-dir", str(run), "--json", *TINY, f"data.source={root}",
                                 "data.num_classes=5", "eval.task=segmentation"])
    assert result.exit_code == 0, result.output[-2000:]
    summary = json.loads(result.stdout)
    assert summary["counts"]["bad_inputs"] == 3 and summary["counts"]["bad_records"] == 2
    assert {f["path"].rsplit("/", 1)[1] for f in summary["bad_inputs"]["files"]} == {"c.png", "d.png", "e.png"}
    assert 0.0 <= summary["metrics"]["miou"] <= 1.0 and "rmse" not in summary["metrics"]


def test_eval_dense_cli_writes_the_metrics_and_a_head_only_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["eval", "dense", "--run-dir", str(run), "--json", *TINY, "data.embedded_size=8"])
    assert result.exit_code == 0, result.output[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 2 and summary["val_images"] == 2
    metrics = summary["metrics"]
    assert {"miou", "pixel_acc", "iou/sky", "iou/triangle", "rmse", "abs_rel", "delta1"} <= set(metrics)
    assert metrics["rmse"] > 0 and 0 <= metrics["delta1"] <= 1
    from safetensors import safe_open

    with safe_open(str(run / "checkpoints" / "step_0000002" / "model.safetensors"), "pt") as f:
        assert all(k.startswith(("seg_head.", "depth_head.")) for k in f.keys())  # the frozen backbone is not saved


def test_eval_dense_without_a_checkpoint_says_not_set(tmp_path):
    result = runner.invoke(app, ["eval", "dense", "--run-dir", str(tmp_path / "run"), "data.embedded_size=8"])
    assert result.exit_code == 2 and "model.checkpoint is not set" in result.output


def test_random_init_baseline_is_the_same_backbone_on_every_run():
    from percli.jobs import JOBS
    from percli.recipes.dense_eval import DenseEvalTask

    job = next(j for j in JOBS if j.name == "eval dense")
    cfg = job.resolve_config(overrides=TINY)
    torch.manual_seed(123)  # whatever the global RNG holds before
    first = DenseEvalTask(cfg).backbone.state_dict()
    torch.rand(5)
    second = DenseEvalTask(cfg).backbone.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    seeded = job.resolve_config(overrides=[*TINY, "train.seed=1"])
    assert not torch.equal(DenseEvalTask(seeded).backbone.state_dict()["pos_embed"], first["pos_embed"])
