"""`percli finetune yt8m` (features and concepts stages, video and frame level, damaged TFRecords counted) and
`percli eval gap` (each run's GAP and the weighted ensemble) on small embedded videos."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.embedded_yt8m import YT8MSpec, make_yt8m
from percli.recipes.gap_eval import fit_weights
from tests.summary_schema import assert_common_schema

runner = CliRunner()
SMALL = ["data.embedded_size=240", "data.embedded.rgb_dim=32", "data.embedded.audio_dim=8",
         "data.embedded.num_classes=16", "data.embedded.num_topics=4", "data.embedded.labels_per_topic=5",
         "train.epochs=null", "train.max_steps=12", "train.batch_size=32", "train.num_workers=0",
         "optim.ref_batch_size=32", "optim.lr=0.01"]
CONCEPTS = ["--preset", "tiny-concepts", "model.kwargs={hidden: 16, depth: 1}"]


def _run(args: list[str], run_dir) -> dict:
    result = runner.invoke(app, [*args, "--run-dir", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert_common_schema(summary)
    return summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("yt8m")
    first = _run(["finetune", "yt8m", *SMALL], root / "moe")
    concepts = _run(["finetune", "yt8m", *CONCEPTS, *SMALL, f"first_stage={root / 'moe'}"], root / "concepts")
    return root, first, concepts


def test_finetune_yt8m_trains_on_embedded_tfrecords(runs):
    root, first, _ = runs
    assert first["status"] == "completed" and first["step"] == 12
    metrics = first["metrics"]
    assert metrics["eval/count"] == 60 and 0.0 < metrics["eval/gap"] <= 1.0
    assert 0.0 <= metrics["eval/hit_at_1"] <= 1.0 and 0.0 <= metrics["eval/perr"] <= 1.0
    assert len(list((root / "moe" / "embedded" / "train-video").glob("video-*.tfrecord"))) == 1


def test_concept_stage_trains_on_the_cached_first_stage_scores(runs):
    root, _, concepts = runs
    assert concepts["status"] == "completed" and concepts["metrics"]["eval/count"] == 60
    with np.load(root / "concepts" / "first_stage" / "train.npz") as cached:
        assert cached["scores"].shape == (240, 16) and np.isfinite(cached["scores"]).all()
        assert str(cached["first_stage"]).startswith(str(root / "moe"))
    assert (root / "concepts" / "first_stage" / "validate.npz").is_file()


def test_eval_gap_scores_each_run_and_their_ensemble(runs, tmp_path):
    root, _, _ = runs
    summary = _run(["eval", "gap", str(root / "moe"), str(root / "concepts"), "train.num_workers=0"], tmp_path / "g")
    metrics = summary["metrics"]
    assert {"moe/gap", "concepts/gap", "ensemble/gap", "ensemble/val_gap", "moe/hit_at_1"} <= set(metrics)
    assert summary["videos"] == summary["val_videos"] == 60 and summary["skipped_videos"] == 0
    weights = summary["weights"]
    assert set(weights) == {"moe", "concepts"} and min(weights.values()) >= 0
    assert sum(weights.values()) == pytest.approx(1.0)
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["weights"] == weights


def test_ensemble_weights_favour_the_better_model():
    rng = np.random.default_rng(0)
    labels = (rng.random((50, 8)) < 0.3).astype(np.float32)
    good, noise = labels * 0.5 + rng.random((50, 8)) * 0.6, rng.random((50, 8))
    weights, gap = fit_weights([noise, good], labels, top_k=3, grid=10, max_rounds=5)
    assert weights.sum() == pytest.approx(1.0) and weights[1] > weights[0] >= 0
    from percli.core.gap_metrics import global_average_precision

    assert gap >= max(global_average_precision(s, labels, 3) for s in (good, noise, (good + noise) / 2))


def test_frame_level_temporal_segments(tmp_path):
    summary = _run(["finetune", "yt8m", *SMALL, "data.level=frame", "data.max_frames=30", "model.name=yt8m_segments",
                    "model.kwargs={hidden: 16, depth: 1, num_segments: 3}", "data.embedded_size=64",
                    "train.max_steps=3"], tmp_path / "frames")
    assert summary["step"] == 3 and 0.0 < summary["metrics"]["eval/gap"] <= 1.0
    assert any((tmp_path / "frames" / "embedded" / "train-frame").glob("frame-*.tfrecord"))


def test_damaged_tfrecords_are_counted_and_skipped(tmp_path):
    spec = YT8MSpec(num_classes=16, rgb_dim=32, audio_dim=8, num_topics=4, labels_per_topic=5)
    data = tmp_path / "data"
    make_yt8m(tmp_path / "built", "train", 96, "video", spec=spec)
    data.mkdir()
    payload = (tmp_path / "built" / "video-0000.tfrecord").read_bytes()
    (data / "a.tfrecord").write_bytes(payload[: len(payload) // 2])  # cut short: the rest of the file is skipped
    damaged = bytearray(payload)
    damaged[40] ^= 0xFF  # inside the first record's payload
    (data / "b.tfrecord").write_bytes(bytes(damaged))
    (data / "c.tfrecord").write_bytes(b"")
    summary = _run(["finetune", "yt8m", *SMALL, f"data.source={data}", f"data.val_source={data}/b.tfrecord",
                    "data.num_classes=16", "data.feature_sizes=[32, 8]", "train.max_steps=2"], tmp_path / "run")
    assert summary["bad_records"]["count"] == 1 and "truncated" in summary["bad_records"]["examples"][0]["reason"]
    assert summary["bad_inputs"]["count"] == 1 and "payload CRC mismatch" in summary["bad_inputs"]["files"][0]["reason"]
    assert summary["metrics"]["eval/count"] == 95


def test_errors_name_what_to_set(tmp_path):
    result = runner.invoke(app, ["finetune", "yt8m", "--preset", "tiny-concepts", "--dry-run"])
    assert result.exit_code == 2 and "first_stage is not set" in result.output
    result = runner.invoke(app, ["finetune", "yt8m", "data.level=frame", "--dry-run"])
    assert result.exit_code == 2 and "use yt8m_segments" in result.output
    result = runner.invoke(app, ["eval", "gap", "--dry-run"])
    assert result.exit_code == 2 and "runs is not set" in result.output


def test_the_tiny_example_script_runs(tmp_path):
    """examples/yt8m/tiny.sh, shortened: every command in it still works."""
    from tests.test_examples import run_example

    small = " ".join(a for a in SMALL if not a.startswith(("train.max_steps", "optim.")))
    run_example("yt8m/tiny.sh", tmp_path, 300, EXTRA=f"{small} train.max_steps=3")
    summary = json.loads((tmp_path / "work" / "gap" / "summary.json").read_text())
    assert {"moe/gap", "concepts/gap", "ensemble/gap"} <= set(summary["metrics"])
