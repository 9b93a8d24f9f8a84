"""Active-learning strategies on hand-made pools whose answer follows from the formula; `percli select` CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from typer.testing import CliRunner

from percli.active.strategies import STRATEGIES, badge, bald, coreset, entropy_of, select
from percli.cli import app

# Four classes; each uncertainty rule has a different winner among the first three rows.
UNCERTAIN = np.array([
    [0.50, 0.49, 0.01, 0.00],  # smallest top-2 margin (0.01)
    [0.40, 0.30, 0.30, 0.00],  # smallest max probability (0.40)
    [0.42, 0.20, 0.20, 0.18],  # largest entropy (1.32 nats vs 1.09 and 0.74)
    [0.97, 0.01, 0.01, 0.01],  # confident: picked last by every rule
])


def random_pool(n: int = 40, classes: int = 5, dim: int = 6, t: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"probs": rng.dirichlet(np.ones(classes), size=n), "mc_probs": rng.dirichlet(np.ones(classes), size=(t, n)),
            "embeddings": rng.normal(size=(n, dim))}


@pytest.mark.parametrize("strategy,first,score", [
    ("least-confidence", 1, 0.60),
    ("margin", 0, 0.01),
    ("entropy", 2, -(0.42 * math.log(0.42) + 2 * 0.2 * math.log(0.2) + 0.18 * math.log(0.18))),
])
def test_uncertainty_rules_pick_the_row_their_formula_ranks_first(strategy, first, score):
    picked, scores = select(strategy, 4, np.zeros(4, bool), np.random.default_rng(0), probs=UNCERTAIN)
    assert picked[0] == first and scores[0] == pytest.approx(score, abs=1e-6)
    assert picked[-1] == 3  # the confident row
    labelled = np.zeros(4, bool)
    labelled[first] = True
    assert first not in select(strategy, 3, labelled, np.random.default_rng(0), probs=UNCERTAIN)[0]


def test_bald_prefers_disagreeing_dropout_samples_over_uniform_uncertainty():
    mc = np.array([
        [[0.5, 0.5], [0.99, 0.01], [0.9, 0.1]],  # pass 1
        [[0.5, 0.5], [0.01, 0.99], [0.9, 0.1]],  # pass 2
    ])  # [T=2, N=3, C=2]: point 0 uniformly uncertain, point 1 confident but disagreeing, point 2 agreeing
    picked, scores = bald(mc, 3, np.zeros(3, bool))
    assert picked.tolist()[0] == 1
    assert scores[0] == pytest.approx(math.log(2) - entropy_of(np.array([0.99, 0.01])))
    # Mutual information 0 where all passes agree, however uncertain the (uniform) prediction is.
    assert scores[picked.tolist().index(0)] == pytest.approx(0.0, abs=1e-9)
    assert scores[picked.tolist().index(2)] == pytest.approx(0.0, abs=1e-9)


def test_coreset_picks_the_point_farthest_from_the_labelled_centres_then_updates():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labelled = np.array([True, False, False, False, False])
    picked, scores = coreset(x, 2, labelled, np.random.default_rng(0))
    assert picked.tolist() == [4, 2] and scores.tolist() == pytest.approx([11.0, 2.0])
    picked, _ = coreset(x, 1, np.array([False, False, False, False, True]), np.random.default_rng(0))
    assert picked.tolist() == [0]  # the labelled set is the initial set of centres


def test_coreset_never_repeats_a_pick_when_points_coincide():
    x = np.zeros((5, 3))
    picked, _ = coreset(x, 4, np.array([True, False, False, False, False]), np.random.default_rng(0))
    assert sorted(picked.tolist()) == [1, 2, 3, 4]


def gradient_embeddings(probs: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The explicit (p - onehot(argmax p)) (x) h, [N, C * D]."""
    a = probs - np.eye(probs.shape[1])[probs.argmax(1)]
    return np.einsum("nc,nd->ncd", a, h).reshape(len(probs), -1)


def test_badge_first_pick_is_the_largest_gradient_norm_and_scores_are_d2_distances():
    pool = random_pool(n=30)
    g = gradient_embeddings(pool["probs"], pool["embeddings"])
    labelled = np.zeros(30, bool)
    labelled[np.argmax((g * g).sum(1))] = True  # the overall largest is labelled: the next largest comes first
    picked, scores = badge(pool["probs"], pool["embeddings"], 6, labelled, np.random.default_rng(0))
    norms = np.where(labelled, -1.0, (g * g).sum(1))
    assert picked[0] == np.argmax(norms) and scores[0] == pytest.approx(norms.max())
    for k in range(1, 6):  # D^2 to the nearest earlier pick, computed without the factorised distance
        d2 = ((g[picked[:k]] - g[picked[k]]) ** 2).sum(1).min()
        assert scores[k] == pytest.approx(d2, rel=1e-9, abs=1e-12)


def test_badge_never_draws_a_point_that_coincides_with_a_pick():
    probs = np.array([[0.6, 0.4]] * 3 + [[0.9, 0.1]])  # ||g||^2: 1.28 for the three copies, 0.02 for the last
    h = np.array([[2.0, 0.0]] * 3 + [[0.0, 1.0]])
    for seed in range(5):  # the copies of the first pick have D^2 = 0: the distinct point is drawn every time
        picked, _ = badge(probs, h, 2, np.zeros(4, bool), np.random.default_rng(seed))
        assert picked.tolist() == [0, 3]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("as_torch", [False, True])
def test_every_strategy_respects_budget_and_labelled_set_without_duplicates(strategy, as_torch):
    pool = random_pool()
    if as_torch:
        pool = {k: torch.from_numpy(v) for k, v in pool.items()}
    labelled = np.zeros(40, bool)
    labelled[::3] = True
    picked, scores = select(strategy, 12, labelled, np.random.default_rng(1), **pool)
    assert len(picked) == len(scores) == 12 and len(set(picked.tolist())) == 12
    assert not labelled[picked].any()
    again, _ = select(strategy, 12, labelled, np.random.default_rng(1), **pool)
    assert again.tolist() == picked.tolist()  # seeded: reproducible


def test_select_names_the_missing_input_and_refuses_an_oversized_budget():
    pool = random_pool()
    with pytest.raises(ValueError, match="needs mc_probs"):
        select("bald", 3, np.zeros(40, bool), np.random.default_rng(0), probs=pool["probs"])
    with pytest.raises(ValueError, match="exceeds the 10 unlabelled"):
        select("entropy", 11, np.arange(40) >= 10, np.random.default_rng(0), probs=pool["probs"])


# ------------------------------------------------------------------------------------------------
# percli select (run)

runner = CliRunner()


@pytest.fixture
def pool_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run dirs (runs/select-run-<time>) land here
    pool = random_pool(n=20)
    np.save(tmp_path / "probs.npy", pool["probs"])
    save_file({"embeddings": pool["embeddings"].astype(np.float32)}, str(tmp_path / "feats.safetensors"))
    np.savez(tmp_path / "mc.npz", mc_probs=pool["mc_probs"], other=np.zeros(3))
    mask = np.zeros(20, bool)
    mask[:5] = True
    np.save(tmp_path / "mask.npy", mask)
    (tmp_path / "ids.txt").write_text("".join(f"img{i}\n" for i in range(20)))
    return tmp_path, pool


def test_select_command_writes_picks_with_ids_and_scores(pool_files):
    d, pool = pool_files
    out = d / "picked.jsonl"
    result = runner.invoke(app, ["select", "--strategy", "badge", "--budget", "4", "--probs", str(d / "probs.npy"),
                                 "--embeddings", str(d / "feats.safetensors"), "--labelled", str(d / "mask.npy"),
                                 "--ids", str(d / "ids.txt"), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(result.stdout)
    assert [r["index"] for r in rows] == summary["indices"] and len(rows) == 4
    assert all(r["index"] >= 5 and r["id"] == f"img{r['index']}" for r in rows)
    assert summary["labelled"] == 5 and summary["pool_size"] == 20
    # BALD from the named array of a two-array .npz, labelled given as indices in a .txt
    (d / "labelled.txt").write_text("0\n1\n")
    result = runner.invoke(app, ["select", "run", "-s", "bald", "-b", "3", "--mc-probs", str(d / "mc.npz"),
                                 "--labelled", str(d / "labelled.txt"), "-o", str(d / "bald.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    expected, _ = bald(pool["mc_probs"], 3, np.arange(20) < 2)
    assert json.loads(result.stdout)["indices"] == expected.tolist()


@pytest.mark.parametrize("args,message", [
    (["-s", "bald", "--probs", "probs.npy"], "needs --mc-probs"),
    (["-s", "coreset", "--probs", "probs.npy"], "needs --embeddings"),
    (["-s", "entropy", "--probs", "logits.npy"], "apply a softmax"),
    (["-s", "badge", "--probs", "probs.npy", "--embeddings", "short.npy"], "different sizes"),
    (["-s", "margin", "--probs", "probs.npy", "--labelled", "bad_idx.npy"], "must lie in [0, 20)"),
    (["-s", "margin", "--probs", "probs.npy", "-o", "exists.jsonl"], "pass --overwrite"),
    (["-s", "nope", "--probs", "probs.npy"], "choose one of random"),
    (["-s", "random", "--probs", "probs.npy", "--budget", "30"], "--budget 30 exceeds the 20 unlabelled"),
    (["-s", "random", "--probs", "probs.txt"], "save it as .npy"),
])
def test_select_command_errors_name_the_problem_and_exit_2(pool_files, args, message):
    d, _ = pool_files
    np.save(d / "logits.npy", np.random.default_rng(0).normal(size=(20, 5)))
    np.save(d / "short.npy", np.zeros((7, 3)))
    np.save(d / "bad_idx.npy", np.array([3, 20]))
    (d / "exists.jsonl").write_text("{}\n")
    (d / "probs.txt").write_text("0.5 0.5\n")
    args = [a if not a.endswith((".npy", ".txt", ".jsonl")) else str(d / a) for a in args]
    if "--budget" not in args:
        args += ["--budget", "2"]
    result = runner.invoke(app, ["select", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
