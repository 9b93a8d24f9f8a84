"""MoDE ensembling in `percli eval zero-shot`: combined logits and top-1 of two stub experts against a
hand-computed case, weights from a tiny centers file against MoDE's formula, and the command end to end."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

from percli.cli import app
from percli.curation.mode import ModeClusters, ensemble_weights, mode_class_embeddings
from percli.curation.text_encoder import HashingEncoder
from percli.recipes.mode_ensemble import EnsembleTask, Experts, combine_logits, read_weights, weights_from_centers

runner = CliRunner()
NAMES = ["cat", "dog", "owl"]
TEMPLATES = ["a {}"]
# Unit rows, so each expert's logits (cosine of image and class one-hot) are these numbers exactly.
L0 = [[0.8, 0.6, 0.0], [0.0, 0.6, 0.8], [0.6, 0.8, 0.0]]  # top-1: 0, 2, 1
L1 = [[0.0, 0.8, 0.6], [0.8, 0.0, 0.6], [0.8, 0.48, 0.36]]  # top-1: 1, 0, 0
WEIGHTS = [0.75, 0.25]
# By hand, 0.75 * L0 + 0.25 * L1: row 0 [0.6, 0.45 + 0.2, 0.15], row 1 [0.2, 0.45, 0.6 + 0.15],
# row 2 [0.45 + 0.2, 0.6 + 0.12, 0.09]; top-1: 1, 2, 1. Uniform: row 2 [0.7, 0.64, 0.18] -> 0.
ENSEMBLE = [[0.6, 0.65, 0.15], [0.2, 0.45, 0.75], [0.65, 0.72, 0.09]]
LABELS = [1, 2, 1]


class _StubExpert(nn.Module):
    """The image batch holds sample indices; image features are this expert's rows, text features class one-hots."""

    def __init__(self, rows):
        super().__init__()
        self.register_buffer("rows", torch.tensor(rows))

    def encode_image(self, image, normalize=False):
        x = self.rows[image]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens, normalize=False):
        return F.one_hot(tokens[:, 0], len(NAMES)).float()


def _tokenize(prompts):
    return torch.tensor([[NAMES.index(p.split()[-1])] for p in prompts])


def test_combined_logits_equal_the_hand_computed_sum():
    combined = combine_logits(torch.tensor([L0, L1]), torch.tensor(WEIGHTS))
    assert torch.allclose(combined, torch.tensor(ENSEMBLE), atol=1e-6)
    assert combined.argmax(1).tolist() == [1, 2, 1]


def test_task_reports_each_expert_the_ensemble_the_uniform_average_and_the_best():
    task = EnsembleTask([_tokenize, _tokenize], NAMES, TEMPLATES, WEIGHTS)
    model = Experts([_StubExpert(L0), _StubExpert(L1)])
    m = task.eval_reduce(task.eval_step(model, {"image": torch.arange(3), "label": torch.tensor(LABELS)}))
    assert m["expert0_top1"] == pytest.approx(2 / 3) and m["expert1_top1"] == pytest.approx(1 / 3)
    assert m["ensemble_top1"] == 1.0 and m["zero_shot_top1"] == 1.0
    assert m["uniform_top1"] == pytest.approx(2 / 3)  # the weights, not the average, get row 2 right
    assert m["best_expert"] == 0 and m["best_expert_top1"] == pytest.approx(2 / 3)
    assert m["weight_expert0"] == 0.75 and m["ensemble_top5"] == 1.0  # 3 classes: top-5 is top-3


def _centers(tmp_path, distance="cosine"):
    """Fine centers at the hashing embeddings of cat, dog, owl (distance 0); cat, dog -> expert 0, owl -> 1."""
    fine = torch.from_numpy(mode_class_embeddings(HashingEncoder(), NAMES, TEMPLATES, 8))
    clusters = ModeClusters(fine, torch.stack([fine[:2].mean(0), fine[2]]), torch.tensor([0, 0, 1]), distance,
                            "hashing")
    clusters.save(tmp_path / "mode_centers.safetensors")
    return clusters, tmp_path / "mode_centers.safetensors"


def test_weights_from_centers_follow_modes_formula(tmp_path):
    clusters, path = _centers(tmp_path)
    weights = weights_from_centers(path, NAMES, TEMPLATES, experts=2)
    # By hand: n_class = 3 < 10, so a = exp(0.5 - sqrt 3), s = 5 log10(10) = 5; every d_j = 0.
    term = math.exp(math.exp(0.5 - math.sqrt(3)) * 5)
    raw = torch.tensor([2 * term, term], dtype=torch.float64)
    assert weights == pytest.approx(torch.softmax(raw / 8, 0).tolist(), abs=1e-5)
    expected = ensemble_weights(mode_class_embeddings(HashingEncoder(), NAMES, TEMPLATES, 8), clusters)["weights"]
    assert weights == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="3 ensemble checkpoints"):
        weights_from_centers(path, NAMES, TEMPLATES, experts=3)


def test_weights_file_must_match_the_experts(tmp_path):
    path = tmp_path / "ensemble_weights.json"
    path.write_text(json.dumps({"expert_weights": [0.6, 0.4]}))
    assert read_weights(path, 2) == [0.6, 0.4]
    with pytest.raises(ValueError, match="2 expert weights for 3"):
        read_weights(path, 3)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="curate mode --classes"):
        read_weights(tmp_path / "bad.json", 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("clip") / "run"
    out = runner.invoke(app, ["pretrain", "clip", "--run-dir", str(run), "train.max_steps=2", "train.batch_size=16",
                              "train.num_workers=0", "data.embedded_size=64", "--json"])
    assert out.exit_code == 0, out.output
    return run / "checkpoints" / "step_0000002"


def test_command_ensembles_two_experts(trained, tmp_path):
    """Two copies of one checkpoint: every expert, the ensemble and the uniform average score alike."""
    weights = tmp_path / "ensemble_weights.json"
    weights.write_text(json.dumps({"expert_weights": [0.7, 0.3]}))
    out = runner.invoke(app, ["eval", "zero-shot", f"ensemble=[{trained},{trained}]", f"ensemble_weights={weights}",
                              "data.embedded_size=40", "train.num_workers=0", "--run-dir", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["ensemble"] == [str(trained)] * 2 and m["weight_expert0"] == pytest.approx(0.7)
    assert m["expert0_top1"] == m["expert1_top1"] == m["ensemble_top1"] == m["uniform_top1"] == m["zero_shot_top1"]
    assert m["chance_top1"] == 0.1


def test_command_needs_one_weight_source(trained, tmp_path):
    out = runner.invoke(app, ["eval", "zero-shot", f"ensemble=[{trained},{trained}]", "--run-dir", str(tmp_path)])
    assert out.exit_code == 2 and "ensemble_weights" in out.output and "ensemble_centers" in out.output


def test_command_computes_weights_from_centers_for_the_eval_classes(trained, tmp_path):
    from percli.core.checkpoint import read_weights as read_checkpoint

    clusters, centers = _centers(tmp_path)
    out = runner.invoke(app, ["eval", "zero-shot", f"ensemble=[{trained},{trained}]", f"ensemble_centers={centers}",
                              "data.embedded_size=40", "train.num_workers=0", "--run-dir", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    m = json.loads((tmp_path / "ev" / "summary.json").read_text())["metrics"]
    meta = read_checkpoint(trained)[1]  # the embedded split's class names and templates
    embeddings = mode_class_embeddings(HashingEncoder(), meta["classes"], meta["templates"], 8)
    expected = ensemble_weights(embeddings, clusters)
    assert [m["weight_expert0"], m["weight_expert1"]] == pytest.approx(expected["weights"], abs=1e-6)
