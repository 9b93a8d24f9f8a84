"""`percli pretrain rwr-gae` with several graphs in one run and the sparse loss."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from percli.cli import app
from tests.test_rwr_gae import planted_communities


def test_two_graphs_train_each_and_report_each(tmp_path):
    for name, n_per in (("small", 10), ("large", 20)):
        edges, _ = planted_communities(n_per=n_per, seed=n_per)
        (tmp_path / f"{name}.txt").write_text("".join(f"{u} {v}\n" for u, v in edges))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "pretrain", "rwr-gae", "--graph", str(tmp_path / "small.txt"), "--graph", str(tmp_path / "large.txt"),
        "--model", "vgae", "--seeds", "2", "--epochs", "20", "loss.reconstruction=sparse", "--run-dir", str(run_dir),
        "--save-embeddings", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary["graphs"]) == ["small", "large"] and summary["loss"]["reconstruction"] == "sparse"
    assert [summary["graphs"][g]["nodes"] for g in ("small", "large")] == [20, 40]
    for graph in ("small", "large"):
        scores = summary["graphs"][graph]["models"]["vgae"]
        assert scores["seeds"] == [42, 43] and scores["acc"] is None  # edge lists without labels: no clustering
        assert summary["metrics"][f"{graph}/vgae/auc"] == scores["auc"]
        assert (run_dir / "embeddings" / graph / "vgae-seed43.safetensors").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["graph"], r["seed"]) for r in rows] == [("small", 42), ("small", 43), ("large", 42), ("large", 43)]


def test_two_graphs_of_the_same_name_are_refused_before_training(tmp_path):
    edges, _ = planted_communities()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "g.txt").write_text("".join(f"{u} {v}\n" for u, v in edges))
    result = CliRunner().invoke(app, ["pretrain", "rwr-gae", "--graph", str(tmp_path / "a" / "g.txt"), "--graph",
                                      str(tmp_path / "b" / "g.txt"), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "graphs of different names" in result.stderr.replace("\n", "")
