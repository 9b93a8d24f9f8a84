"""`percli.core.adversarial` (projections, steps, FGSM, PGD, universal perturbations over a dict of modalities) and
`percli eval adversarial` on percli classifiers."""

import itertools
import json

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from percli.cli import app
from percli.core import adversarial as adv
from percli.core.checkpoint import save_weights
from tests.summary_schema import assert_common_schema

runner = CliRunner()


# ------------------------------------------------------------------------------------------- projections


@pytest.mark.parametrize("norm", adv.NORMS)
def test_projection_never_leaves_the_ball_and_keeps_points_inside_it(norm):
    g = torch.Generator().manual_seed(0)
    for shape, scale, eps in itertools.product([(4, 7), (3, 2, 5), (2, 1, 8, 8)], (0.01, 1.0, 100.0),
                                               (1e-3, 0.1, 1.0, 10.0)):
        delta = scale * torch.randn(shape, generator=g, dtype=torch.float64)
        projected = adv.project(delta, norm, eps)
        assert projected.shape == delta.shape
        assert (adv.lp_norm(projected, norm) <= eps * (1 + 1e-9)).all(), (shape, scale, eps)
        inside = delta * (0.5 * eps / adv.lp_norm(delta, norm)).view(-1, *[1] * (delta.dim() - 1))
        torch.testing.assert_close(adv.project(inside, norm, eps), inside)


def _l1_reference(v: torch.Tensor, eps: float) -> torch.Tensor:
    """The projection by its optimality conditions, support by support (no sorting): soft-thresholding at theta
    with exactly the coordinates above theta kept and their shrunk magnitudes summing to eps."""
    if v.abs().sum() <= eps:
        return v
    n = len(v)
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            kept = torch.tensor(support)
            theta = (v[kept].abs().sum() - eps) / size
            rest = torch.tensor([i for i in range(n) if i not in support], dtype=torch.long)
            if theta >= 0 and (v[kept].abs() > theta).all() and (v[rest].abs() <= theta).all():
                w = torch.zeros_like(v)
                w[kept] = v[kept].sign() * (v[kept].abs() - theta)
                return w
    raise AssertionError("no support satisfies the optimality conditions")


def test_l1_projection_matches_the_reference_and_is_the_nearest_point_of_the_ball():
    g = torch.Generator().manual_seed(1)
    for n in range(1, 6):
        for _ in range(20):
            v = torch.randn(n, generator=g, dtype=torch.float64) * 2
            eps = float(torch.rand((), generator=g, dtype=torch.float64)) * 3
            w = adv.project_l1(v[None], eps)[0]
            torch.testing.assert_close(w, _l1_reference(v, eps))
            # no random point of the ball is nearer to v
            others = adv.project_l1(torch.randn(200, n, generator=g, dtype=torch.float64) * 2, eps)
            assert (w - v).norm() <= (others - v).norm(dim=1).min() + 1e-9
    assert torch.equal(adv.project_l1(torch.ones(2, 3), 0.0), torch.zeros(2, 3))


@pytest.mark.parametrize("norm", adv.NORMS)
def test_steepest_ascent_steps_have_unit_norm(norm):
    grad = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(2))
    direction = adv.ascent_direction(grad, norm)
    torch.testing.assert_close(adv.lp_norm(direction, norm), torch.ones(3))
    assert ((direction * grad).flatten(1).sum(1) > 0).all()  # an ascent direction
    if norm == "l1":  # the sparse step: the top 5 % of 200 values, by gradient magnitude
        assert ((direction != 0).flatten(1).sum(1) == 10).all()
        top = grad.abs().flatten(1).topk(10, dim=1).indices
        assert (direction.flatten(1).gather(1, top) != 0).all()


def test_ball_radius_scales_the_per_value_eps_by_the_range_and_the_norm():
    assert adv.ball_radius(0.1, 4.0, 100, "linf") == pytest.approx(0.4)
    assert adv.ball_radius(0.1, 4.0, 100, "l2") == pytest.approx(4.0)
    assert adv.ball_radius(0.1, 4.0, 100, "l1") == pytest.approx(40.0)


# ------------------------------------------------------------------------------------------------ attacks


class LateFusion(nn.Module):
    """A linear classifier per modality, logits averaged: audio [B, 16], video [B, 2, 8]."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.audio, self.video = nn.Linear(16, classes), nn.Linear(16, classes)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.audio(x["audio"]) + self.video(x["video"].flatten(1))) / 2


def _data(n: int = 256, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Four classes, each a centre in both modalities plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres_a, centres_v = torch.randn(4, 16, generator=g), torch.randn(4, 2, 8, generator=g)
    return {"audio": centres_a[labels] + 0.6 * torch.randn(n, 16, generator=g),
            "video": centres_v[labels] + 0.6 * torch.randn(n, 2, 8, generator=g)}, labels


def _bounds(x: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    return {m: (float(t.min()), float(t.max())) for m, t in x.items()}


def _loss(model: nn.Module, labels: torch.Tensor, multilabel: bool = False) -> adv.LossFn:
    target = nn.functional.one_hot(labels, 4).float() if multilabel else labels
    return lambda x: adv.attack_loss(model(x), target, multilabel)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("norm", adv.NORMS)
def test_fgsm_and_pgd_raise_the_loss_of_a_fixed_model_within_the_ball_and_range(norm, multilabel):
    torch.manual_seed(0)
    model = LateFusion().requires_grad_(False)
    x, labels = _data(32)
    loss_fn, bounds = _loss(model, labels, multilabel), _bounds(x)
    eps = {m: adv.ball_radius(0.05, hi - lo, x[m][0].numel(), norm) for m, (lo, hi) in bounds.items()}
    clean = float(loss_fn(x))
    one = adv.fgsm(loss_fn, x, eps, bounds, norm)
    many = adv.pgd(loss_fn, x, eps, bounds, norm, steps=10, step_size=0.25, random_init=True,
                   generator=torch.Generator().manual_seed(0))
    assert clean < float(loss_fn(one)) and clean < float(loss_fn(many))
    for out in (one, many):
        for m, (lo, hi) in bounds.items():
            assert (adv.lp_norm(out[m] - x[m], norm) <= eps[m] * (1 + 1e-5)).all()
            assert out[m].min() >= lo and out[m].max() <= hi


def test_attacking_one_modality_leaves_the_other_untouched():
    model = LateFusion().requires_grad_(False)
    x, labels = _data(16)
    bounds = _bounds(x)
    for attacked, clean in (("audio", "video"), ("video", "audio")):
        out = adv.pgd(_loss(model, labels), x, {attacked: 0.1}, bounds, steps=3)
        assert out[clean] is x[clean]
        assert not torch.equal(out[attacked], x[attacked])
    delta, _ = adv.universal_step(_loss(model, labels), x, {"video": torch.zeros(2, 8)}, {"video": 0.1}, bounds)
    assert set(delta) == {"video"} and adv.apply_universal(x, delta, bounds)["audio"] is x["audio"]


def test_a_universal_perturbation_has_the_per_example_shape_and_one_value_for_all():
    model = LateFusion().requires_grad_(False)
    x, labels = _data(64)
    wide = {m: (-100.0, 100.0) for m in x}  # nothing clamped: every example gets exactly delta
    eps = {"audio": 0.3, "video": 0.3}
    delta = {m: torch.zeros_like(t[0]) for m, t in x.items()}
    losses = []
    for _ in range(5):  # passes over 4 batches
        for batch in range(4):
            part = slice(16 * batch, 16 * (batch + 1))
            delta, loss = adv.universal_step(_loss(model, labels[part]), {m: t[part] for m, t in x.items()}, delta,
                                             eps, wide, "l2", step_size=0.5)
        losses.append(float(_loss(model, labels)(adv.apply_universal(x, delta, wide))))
    out = adv.apply_universal(x, delta, wide)
    for m in x:
        assert delta[m].shape == x[m].shape[1:]
        assert float(delta[m].norm()) <= eps[m] * (1 + 1e-5)
        torch.testing.assert_close(out[m] - x[m], delta[m].expand_as(x[m]))
    assert losses[-1] > float(_loss(model, labels)(x))


def test_accuracy_of_a_trained_classifier_falls_monotonically_with_eps():
    torch.manual_seed(0)
    model = LateFusion()
    x, labels = _data(256)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        optimiser.step()
    model.requires_grad_(False)
    bounds = _bounds(x)
    curves = {}
    for modality in ("audio", "video", "both"):
        names = ("audio", "video") if modality == "both" else (modality,)
        accuracy = []
        for eps in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4):
            radius = {m: adv.ball_radius(eps, bounds[m][1] - bounds[m][0], 16, "linf") for m in names}
            out = adv.pgd(_loss(model, labels), x, radius, bounds, "linf", steps=10, step_size=0.25)
            accuracy.append(float((model(out).argmax(-1) == labels).float().mean()))
        curves[modality] = accuracy
        assert all(b <= a for a, b in zip(accuracy, accuracy[1:])), (modality, accuracy)
        assert accuracy[0] > 0.9 and accuracy[-1] < accuracy[0] - 0.3, (modality, accuracy)
    assert curves["both"][-1] <= min(curves["audio"][-1], curves["video"][-1])


# ------------------------------------------------------------------------------------ percli eval adversarial

AV_TINY = ["data.embedded_size=80", "train.max_steps=2", "train.batch_size=8", "optim.ref_batch_size=8",
           "train.num_workers=0", "train.eval_every=2", "train.ckpt_every=2"]
FAST = ["attack.steps=2", "train.batch_size=10", "train.num_workers=0"]


@pytest.fixture(scope="module")
def av_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("av") / "run"
    result = runner.invoke(app, ["finetune", "av-fusion", "--run-dir", str(run), "--json", *AV_TINY])
    assert result.exit_code == 0, result.output[-3000:]
    return run


def test_eval_adversarial_writes_the_curve_and_summary(av_run, tmp_path):
    out = tmp_path / "attack"
    result = runner.invoke(app, ["eval", "adversarial", f"checkpoint={av_run}", "attack.modality=audio",
                                 "attack.eps=[0.1, 0.01]", "--run-dir", str(out), "--json", *FAST])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert_common_schema(summary)
    assert summary["task"] == "av-fusion" and summary["data"] == "embedded"
    assert set(summary["metrics"]) == {"clean/top1", "eps=0.01/top1", "eps=0.1/top1"}
    curve = json.loads((out / "curve.json").read_text())
    assert curve == summary["curve"] and curve["attacked"] == ["audio"] and curve["metric"] == "top1"
    assert [p["eps"] for p in curve["points"]] == [0.01, 0.1]
    low, high = curve["feature_range"]["audio"]
    assert curve["points"][0]["radius"]["audio"] == pytest.approx(0.01 * (high - low))
    assert curve["monotone"] == (curve["clean"] >= curve["points"][0]["top1"] >= curve["points"][1]["top1"])
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.parametrize("args,attacked", [
    (["attack.universal=true", "attack.norm=l2", "attack.modality=both"], ["audio", "video"]),
    (["attack.method=fgsm", "attack.norm=l1", "attack.modality=video"], ["video"]),
])
def test_eval_adversarial_universal_and_fgsm_in_other_norms(av_run, args, attacked):
    result = runner.invoke(app, ["eval", "adversarial", f"checkpoint={av_run}", "attack.eps=[0.05]", "--json",
                                 *FAST, *args])
    assert result.exit_code == 0, result.output[-3000:]
    curve = json.loads(result.stdout)["curve"]
    assert curve["attacked"] == attacked and set(curve["points"][0]["radius"]) == set(attacked)
    norm = curve["norm"]
    assert norm in ("l2", "l1") and all(r > 0 for r in curve["points"][0]["radius"].values())


VICTIMS = {  # a classifier of each kind the attack reads (2 training steps): its inputs, and its metric
    "hiera": (["model.kwargs={input_size: [32, 32], embed_dim: 8, num_heads: 1, stages: [1, 1, 1, 1]}",
               "data.embedded_size=32", "train.batch_size=8"], ["video"], "top1"),
    "audio-mae": (["model.kwargs={embed_dim: 16, depth: 2, num_heads: 2}", "data.target_length=128",
                   "data.num_mel_bins=64", "data.embedded_size=32", "train.batch_size=8"], ["audio"], "top1"),
    "mavil": (["data.embedded_size=20", "train.batch_size=4"], ["audio", "video"], "mAP"),
}


@pytest.mark.parametrize("method", list(VICTIMS))
def test_eval_adversarial_reads_every_percli_classifier(tmp_path, method):
    args, attacked, metric = VICTIMS[method]
    run = tmp_path / method
    trained = runner.invoke(app, ["finetune", method, "--run-dir", str(run), "train.max_steps=2",
                                  "train.num_workers=0", *args])
    assert trained.exit_code == 0, trained.output[-3000:]
    result = runner.invoke(app, ["eval", "adversarial", f"checkpoint={run}", "attack.eps=[0.05]", "--json", *FAST])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["curve"]["attacked"] == attacked and set(summary["metrics"]) == {f"clean/{metric}",
                                                                                     f"eps=0.05/{metric}"}
    other = "video" if attacked == ["audio"] else "audio"
    if len(attacked) == 1:
        refused = runner.invoke(app, ["eval", "adversarial", f"checkpoint={run}", f"attack.modality={other}"])
        assert refused.exit_code == 2 and f"attack.modality={other}" in refused.output


def test_eval_adversarial_refuses_a_missing_or_non_classifier_checkpoint(tmp_path):
    missing = runner.invoke(app, ["eval", "adversarial", f"checkpoint={tmp_path / 'nothing'}"])
    assert missing.exit_code == 2 and "checkpoint" in missing.output and "not found" in missing.output
    unset = runner.invoke(app, ["eval", "adversarial", "--dry-run"])
    assert unset.exit_code == 2 and "checkpoint is not set" in unset.output
    weights = save_weights(tmp_path / "mae.safetensors", {"w": torch.zeros(2)}, {"task": "hiera-mae", "name": "x"})
    other = runner.invoke(app, ["eval", "adversarial", f"checkpoint={weights}"])
    assert other.exit_code == 2, other.output
    assert "checkpoint:" in other.output and "hiera-mae checkpoint, not a classifier" in other.output

