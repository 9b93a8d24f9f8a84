"""MHA-VSE: the hardest-negative triplet loss and the diversity terms on hand-computed cases, the model, the
`pretrain mha-vse` job on the embedded scenes and on a hostile Multi30K folder, and `eval retrieval` on its run."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.grounding.evaluation import language_retrieval
from percli.models import create_model
from percli.models.mha_vse import diversity_loss, head_similarity, triplet_ranking
from tests.conftest import PYTHON, free_port, subprocess_env

runner = CliRunner()
S = torch.tensor([[0.5, 0.6, 0.1],
                  [0.3, 0.4, 0.45],
                  [0.2, 0.1, 0.7]])


def test_triplet_loss_takes_the_hardest_negative_of_each_row_and_column():
    # margin 0.2; violations: row 0 (j=1) 0.3, row 1 (j=0) 0.1 and (j=2) 0.25, column 1 (i=0) 0.4, all else <= 0
    assert float(triplet_ranking(S, margin=0.2)) == pytest.approx(0.3 + 0.25 + 0.4)
    assert float(triplet_ranking(S, margin=0.2, max_violation=False)) == pytest.approx(0.3 + 0.1 + 0.25 + 0.4)
    assert float(triplet_ranking(torch.eye(4), margin=0.2)) == 0.0  # positives beat every negative by 1


def test_diversity_terms_on_hand_computed_heads_and_maps():
    heads = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])  # cosines 0.6 (0, 1), 0 (0, 2), 0.8 (1, 2)
    attention = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    assert float(diversity_loss(heads, attention, "hinge")) == pytest.approx(2 * (0.6 + 0.0 + 0.8))
    assert float(diversity_loss(heads, attention, "hinge", delta=0.5)) == pytest.approx(2 * (0.1 + 0.3))
    # A A^T - I = [[0, 0.5], [0.5, -0.5]]
    assert float(diversity_loss(heads, attention, "frobenius")) == pytest.approx(0.75)
    assert float(head_similarity(heads)) == pytest.approx((0.6 + 0.0 + 0.8) / 3)
    with pytest.raises(ValueError, match="hinge, frobenius"):
        diversity_loss(heads, attention, "cosine")


@pytest.mark.parametrize("form", ["hinge", "frobenius"])
def test_the_regulariser_pulls_the_heads_apart(form):
    torch.manual_seed(0)
    model = create_model("mha_vse_tiny", vocab_size=50, region_dim=8)
    regions, mask = torch.randn(16, 5, 8), torch.ones(16, 5, dtype=torch.bool)
    with torch.no_grad():
        before = float(head_similarity(model.encode_image(regions, mask)[1]).mean())
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        _, heads, attention = model.encode_image(regions, mask)
        optim.zero_grad()
        diversity_loss(heads, attention, form).backward()
        optim.step()
    with torch.no_grad():
        after = float(head_similarity(model.encode_image(regions, mask)[1]).mean())
    assert after < before - 0.2


def test_embeddings_are_unit_and_padding_gets_no_attention():
    torch.manual_seed(0)
    model = create_model("mha_vse_tiny", vocab_size=50, region_dim=8, languages=["en", "de"])
    ids = torch.randint(5, 50, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    embeds, heads, attention = model.encode_text(ids, mask, "de")
    assert embeds.shape == (3, 4 * 64) and torch.allclose(embeds.norm(dim=1), torch.ones(3))
    assert torch.allclose(embeds @ embeds.T, torch.einsum("ike,jke->ij", heads, heads) / 4)  # cos = mean head cos
    assert float(attention[1, :, 4:].detach().abs().max()) == 0.0
    changed = ids.clone()
    changed[1, 4:] = 7  # padding content must not matter
    assert torch.allclose(model.encode_text(changed, mask, "de")[0][1], embeds[1], atol=1e-6)
    with pytest.raises(ValueError, match="built for en, de"):
        model.encode_text(ids, mask, "fr")


def test_retrieval_per_language_with_several_captions_per_image():
    images = torch.eye(3)
    # captions 0, 1 of image 0, caption 2 of image 1 (closest to image 2: a miss), caption 3 of image 2
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0.4, 0.6], [0, 0, 1.0]])
    image = torch.tensor([0, 0, 1, 2])
    metrics = language_retrieval(images[image], texts, image)
    assert metrics["t2i_R@1"] == pytest.approx(3 / 4)
    assert metrics["i2t_R@1"] == 1.0  # image 1's own caption is still its nearest (0.4 vs 0.1)
    assert metrics["t2i_queries"] == 4 and metrics["i2t_queries"] == 3
    assert metrics["rsum"] == pytest.approx(100 * (3 / 4 + 1 + 1 + 1 + 1 + 1))


TINY = ["model.kwargs={word_dim: 16, hidden: 16, attn_dim: 16, embed_dim: 16, heads: 2}", "data.embedded_train=64",
        "data.embedded_mono=30", "data.embedded_val=20", "data.embedded_test=20", "data.vocab_size=200",
        "train.batch_size=16", "optim.ref_batch_size=16", "train.max_steps=4", "train.eval_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mha-vse")
    run = root / "run"
    result = runner.invoke(app, ["pretrain", "mha-vse", "--run-dir", str(run), "--json", *TINY,
                                 f"data.cache_dir={root / 'cache'}"])
    assert result.exit_code == 0, result.output[-3000:]
    return run, json.loads(result.stdout), root / "cache"


def test_pretrain_scores_retrieval_per_language_and_sts(trained):
    run, summary, _ = trained
    metrics = summary["metrics"]
    for lang in ("en", "de"):
        assert metrics[f"eval/{lang}_t2i_queries"] == 20 and 0 <= metrics[f"eval/{lang}_rsum"] <= 600
        assert -1 <= metrics[f"eval/head_sim_{lang}"] <= 1
    assert summary["sts"]["pairs"] == 300 and -100 <= summary["sts"]["spearman"] <= 100
    assert "de_en_loss" in metrics and "diversity_loss" in metrics
    assert (run / "tokenizer.json").is_file()


def test_eval_retrieval_reads_an_mha_vse_run(trained, tmp_path):
    run, summary, cache = trained
    result = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={run}", "data.split=val", "--json",
                                 "--run-dir", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output[-3000:]
    out = json.loads(result.stdout)
    assert out["family"] == "mha-vse"
    assert out["metrics"]["en_rsum"] == pytest.approx(summary["metrics"]["eval/en_rsum"], abs=1e-6)
    assert out["sts"]["pairs"] == 300


def test_hostile_multi30k_folder_is_counted_not_fatal(trained, tmp_path):
    _, _, cache = trained
    source = next(p for p in cache.iterdir() if p.is_dir())
    folder = tmp_path / "m30k"
    shutil.copytree(source, folder)
    lines = (folder / "train.en").read_text(encoding="utf-8").splitlines()
    lines[0] = "   "  # an empty caption
    (folder / "train.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = (folder / "train_images.txt").read_text().splitlines()
    (folder / "features" / ids[1].replace(".png", ".npy")).unlink()  # an unknown image id
    (folder / "features" / ids[2].replace(".png", ".npy")).write_bytes(b"\x93NUMPY truncated")
    np.save(folder / "features" / ids[3].replace(".png", ".npy"), np.array(["text"]), allow_pickle=False)
    result = runner.invoke(app, ["pretrain", "mha-vse", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
                                 f"data.source={folder}", "data.sts=null"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["bad_records"]["count"] == 4
    reasons = " ".join(e["reason"] for e in summary["bad_records"]["examples"])
    assert all(r in reasons for r in ("empty caption", "no feature file", "not a .npy array", "not numeric"))


def test_bad_config_names_the_key():
    result = runner.invoke(app, ["pretrain", "mha-vse", "--dry-run", "loss.diversity=cosine"])
    assert result.exit_code == 2 and "loss.diversity" in result.output
    result = runner.invoke(app, ["pretrain", "mha-vse", "--dry-run", "data.languages=[en,xx]"])
    assert result.exit_code == 2 and "data.languages" in result.output


def test_two_processes_build_the_scenes_once_and_train(tmp_path):
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "true"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "percli.cli", "pretrain", "mha-vse", "--run-dir", str(tmp_path / "run"), "--json", *TINY,
           f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert summary["metrics"]["eval/en_t2i_queries"] == 20  # every held-out caption once, over both processes
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 1  # one corpus, no leftover partial build
