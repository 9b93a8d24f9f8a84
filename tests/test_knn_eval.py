import json

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.knn import knn_classify
from percli.recipes.linear_probe import sweep_linear_probe

runner = CliRunner()
TINY_DINOV2 = ["model.kwargs={img_size: 28, embed_dim: 32, depth: 2, num_heads: 2}", "data.embedded_size=64",
               "train.batch_size=32", "train.num_workers=0"]

# Bank: e0 (class 0), e1 (class 1), (e0 + e1)/sqrt(2) (class 1). For the test point e0 with k=3 the
# cosine similarities are 1, 0 and 0.7071, so the votes are class 0: exp(1/T), class 1: exp(0) + exp(0.7071/T).
# T=1: 2.718 vs 3.028 -> class 1 (wrong); T=0.1: 22026 vs 1177 -> class 0. The test point e1 goes to class 1.
BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
BANK_LABELS = torch.tensor([0, 1, 1])
TEST = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # scale must not matter: features are L2-normalised
TEST_LABELS = torch.tensor([0, 1])


@pytest.mark.parametrize(("temperature", "top1"), [(1.0, 0.5), (0.1, 1.0)])
@pytest.mark.parametrize("chunk_size", [1, 256])
def test_knn_votes_are_temperature_weighted(temperature, top1, chunk_size):
    acc = knn_classify(BANK, BANK_LABELS, TEST, TEST_LABELS, num_classes=2, k=3, temperature=temperature,
                       chunk_size=chunk_size)
    assert acc == {"top1": top1, "top5": 1.0}


def test_knn_with_one_neighbour_is_nearest_neighbour():
    # k=1 (and k larger than the bank, clipped) on 4 classes: top-5 covers all classes, top-1 the nearest.
    acc = knn_classify(BANK, BANK_LABELS, TEST, torch.tensor([1, 1]), num_classes=4, k=1)
    assert acc == {"top1": 0.5, "top5": 1.0}
    assert knn_classify(BANK, BANK_LABELS, TEST, TEST_LABELS, num_classes=2, k=50, temperature=0.1)["top1"] == 1.0


def test_linear_probe_sweep_picks_the_best_lr_on_separable_features():
    # 10 Gaussian clusters (chance = 0.1); the data seed differs from the probe's, whose init would
    # otherwise replay the cluster centres as weights.
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 32, generator=gen)
    labels = torch.arange(10).repeat(30)
    feats = centres[labels] + 0.3 * torch.randn(300, 32, generator=gen)
    result = sweep_linear_probe(feats[:200], labels[:200], feats[200:], labels[200:], 10, lrs=[1e-7, 1e-4, 0.1],
                                epochs=20, batch_size=32, seed=0)
    assert result["best_lr"] == 0.1 and result["top1"] >= 0.95
    assert result["per_lr"]["1e-07"] < 0.3 < result["per_lr"]["0.0001"] < result["top1"]


def test_eval_knn_end_to_end_on_embedded_images(tmp_path):
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "knn"), "--json", *TINY_DINOV2,
                              "ks=[1,10]", "features.n_last_blocks=2", "features.avgpool=true"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.stdout)["metrics"]
    assert (metrics["train_count"], metrics["count"], metrics["feature_dim"]) == (64, 16, 3 * 32)
    for k in (1, 10):
        assert 0.0 <= metrics[f"k{k}/top1"] <= metrics[f"k{k}/top5"] <= 1.0
    assert json.loads((tmp_path / "knn" / "summary.json").read_text())["metrics"] == metrics


def test_eval_linear_probe_end_to_end(tmp_path):
    out = runner.invoke(app, ["eval", "linear-probe", "--run-dir", str(tmp_path / "lp"), "--json", *TINY_DINOV2,
                              "lrs=[0.01,0.1]", "epochs=3"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["best_lr"] in (0.01, 0.1) and metrics["feature_dim"] == 32
    assert metrics["top1"] == max(metrics["lr0.01/top1"], metrics["lr0.1/top1"])


def test_eval_knn_rejects_bad_ks(tmp_path):
    out = runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "bad"), *TINY_DINOV2, "ks=[0]"])
    assert out.exit_code == 2 and "ks=" in out.output
