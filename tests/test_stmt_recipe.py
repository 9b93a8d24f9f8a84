"""`percli finetune stmt`: the embedded figures and a manifest of the official preprocessed tensors, with
unreadable and ill-shaped sequences counted and skipped."""

import json

import numpy as np
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.embedded_mocap import EmbeddedMocap

runner = CliRunner()
TINY = ["data.frames=2", "data.points=96", "train.batch_size=4", "optim.ref_batch_size=4", "train.max_steps=2",
        "train.num_workers=0", "train.eval_every=2"]


def test_finetune_stmt_on_the_embedded_figures(tmp_path):
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 "data.embedded_size=16"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["step"] == 2 and summary["metrics"]["eval/count"] == 4


def test_a_manifest_of_official_tensors_with_bad_files_counted(tmp_path):
    data = EmbeddedMocap(num_sequences=8, frames=3, points=128)
    lines = []
    for i in range(8):
        seq = data[i]
        np.save(tmp_path / f"s{i}.npy", seq["points"].double().numpy())  # the official float64 [T, 2048, 3] layout
        np.savez(tmp_path / f"s{i}_geodist.npz", seq["geodist"].double().numpy())  # arr_0
        lines.append({"points": f"s{i}.npy", "geodist": f"s{i}_geodist.npz", "label": seq["label"]})
    (tmp_path / "s0.npy").write_bytes(b"\x93NUMPY truncated")
    np.save(tmp_path / "s1.npy", np.zeros((3, 10, 3)))  # too few points
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = runner.invoke(app, ["finetune", "stmt", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 f"data.source={manifest}", f"data.val_source={manifest}"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["bad_inputs"]["count"] >= 2
    reasons = " ".join(f["reason"] for f in summary["bad_inputs"]["files"])
    assert "unreadable" in reasons and "need [>= 2, >= 96, 3]" in reasons
