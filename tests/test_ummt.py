"""UMMT: the noise model, back-translation and pivoted captioning (the generated side carries no gradient), the
retrieval pairs, the word-by-word baseline, the model's decoding, and the pretrain / translate / eval jobs."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.grounding.translation import (
    WordByWord,
    add_noise,
    as_source,
    back_translation_loss,
    mutual_pairs,
    pivot_caption_loss,
    seq2seq_loss,
)
from percli.models import create_model

runner = CliRunner()
PAD, EOS, MASK, EN, DE = 0, 3, 4, 5, 6


def small(**kwargs):
    torch.manual_seed(0)
    args = dict(vocab_size=40, d_model=32, heads=2, encoder_layers=1, decoder_layers=1, ff_dim=64, region_dim=8,
                max_len=32, dropout=0.0)
    return create_model("ummt_tiny", **{**args, **kwargs})


def rows(*lengths):
    ids = torch.zeros(len(lengths), max(lengths) + 2, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n + 2] = torch.tensor([EN, *range(10, 10 + n), EOS])
    return ids, ids != PAD


def test_noise_keeps_the_tag_and_end_and_moves_words_at_most_k_places():
    ids, mask = rows(12, 5)
    same, same_mask = add_noise(ids, mask, torch.Generator().manual_seed(0), drop=0, shuffle=0, blank=0,
                                mask_id=MASK, pad_id=PAD)
    assert torch.equal(same, ids) and torch.equal(same_mask, mask)
    for seed in range(20):
        out, out_mask = add_noise(ids, mask, torch.Generator().manual_seed(seed), drop=0, shuffle=3, blank=0,
                                  mask_id=MASK, pad_id=PAD)
        row = out[0][out_mask[0]]
        assert row[0] == EN and row[-1] == EOS and sorted(row[1:-1].tolist()) == list(range(10, 22))
        moved = [abs(pos - (int(tok) - 10)) for pos, tok in enumerate(row[1:-1])]
        assert max(moved) <= 3
    dropped, dropped_mask = add_noise(ids, mask, torch.Generator().manual_seed(0), drop=1.0, shuffle=0, blank=0,
                                      mask_id=MASK, pad_id=PAD)
    assert dropped_mask.sum(dim=1).tolist() == [3, 3]  # tag, one word kept, end
    blanked, _ = add_noise(ids, mask, torch.Generator().manual_seed(0), drop=0, shuffle=0, blank=1.0,
                           mask_id=MASK, pad_id=PAD)
    assert (blanked[0, 1:13] == MASK).all() and blanked[0, 0] == EN


def test_back_translation_trains_on_the_models_own_translation_without_its_gradient():
    model = small(dropout=0.3)
    model.train()
    x, x_mask = rows(4, 6)
    regions = torch.randn(2, 3, 8)
    region_mask = torch.ones(2, 3, dtype=torch.bool)
    loss = back_translation_loss(model, x, x_mask, DE, regions, region_mask, max_len=6)
    assert model.training  # generation ran in eval mode and training mode is back
    model.eval()
    generated = model.generate(x, x_mask, DE, regions, region_mask, max_len=6)
    y, y_mask = as_source(generated, DE, EOS, PAD)
    assert not y.requires_grad and (y[:, 0] == DE).all()
    model.train()
    torch.manual_seed(1)
    loss = back_translation_loss(model, x, x_mask, DE, regions, region_mask, max_len=6)
    torch.manual_seed(1)
    expected = seq2seq_loss(model, y, y_mask, x, x_mask, regions, region_mask)  # same dropout draws
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_pivoted_captioning_translates_the_models_caption_of_the_image():
    model = small().eval()
    x, x_mask = rows(4, 6)
    regions, region_mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    caption = model.generate(None, None, DE, regions, region_mask, max_len=6)  # from the image alone
    c, c_mask = as_source(caption, DE, EOS, PAD)
    assert float(pivot_caption_loss(model, x, x_mask, DE, regions, region_mask, 6).detach()) == pytest.approx(
        float(seq2seq_loss(model, c, c_mask, x, x_mask).detach()), rel=1e-5)


def test_as_source_wraps_decoded_ids_in_tag_and_end():
    generated = torch.tensor([[11, 12, 0, 0], [13, 0, 0, 0], [0, 0, 0, 0]])
    src, mask = as_source(generated, DE, EOS, PAD)
    assert src.tolist() == [[DE, 11, 12, EOS], [DE, 13, EOS, PAD], [DE, EOS, PAD, PAD]]
    assert mask.sum(dim=1).tolist() == [4, 3, 2]


def test_decoding_is_causal_and_beam_one_is_greedy():
    model = small().eval()
    src, mask = rows(5, 3)
    tgt = torch.tensor([[DE, 12, 13, 14], [DE, 15, 16, 17]])
    full = model(src, mask, tgt)
    changed = tgt.clone()
    changed[:, 3] = 20
    assert torch.allclose(model(src, mask, changed)[:, :3], full[:, :3], atol=1e-5)  # no peeking ahead
    greedy = model.generate(src, mask, DE, max_len=8)
    assert torch.equal(greedy, model.generate(src, mask, DE, max_len=8, beam=1))
    beamed = model.generate(src, mask, DE, max_len=8, beam=3)
    assert beamed.shape[0] == 2 and beamed.shape[1] <= 8
    assert model.generate(None, None, DE, torch.randn(2, 3, 8), max_len=4).shape[0] == 2  # captioning


def test_mutual_nearest_neighbours_above_the_threshold():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=1)
    pairs = mutual_pairs(a, b, threshold=0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0), (1, 1)]  # row 2 is nobody's nearest
    assert mutual_pairs(a, b, threshold=0.999) == []


def test_word_by_word_lexicon_from_images_alone():
    e = torch.eye(4)
    captions = {"en": [("a red circle", e[0] + e[2]), ("a red square", e[0] + e[3]), ("a blue circle", e[1] + e[2]),
                       ("a blue square", e[1] + e[3])],
                "de": [("Ein roter Kreis", e[0] + e[2]), ("Ein blaues Quadrat", e[1] + e[3]),
                       ("Ein roter Quadrat", e[0] + e[3]), ("Ein blaues Kreis", e[1] + e[2])]}
    baseline = WordByWord(captions, min_count=1)
    table = baseline.lexicon("en", "de")
    assert table["red"] == "roter" and table["blue"] == "blaues" and table["circle"] == "kreis"
    assert baseline.translate(["a blue square."], "en", "de") == ["Ein blaues Quadrat."]  # nouns keep capitals


TINY = ["model.kwargs={d_model: 32, heads: 2, ff_dim: 64}", "data.embedded_mono=60", "data.embedded_val=10",
        "data.embedded_test=10", "data.embedded_train=20", "vse_train.max_steps=3", "vse_train.batch_size=8",
        "vse_optim.ref_batch_size=8", "train.max_steps=4", "train.batch_size=8", "optim.ref_batch_size=8",
        "loss.pivot_start=2", "train.eval_every=2", "data.vocab_size=200", "loss.retrieval_threshold=-1",
        "eval.max_len=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ummt")
    run = root / "run"
    result = runner.invoke(app, ["pretrain", "ummt", "--run-dir", str(run), "--json", *TINY,
                                 f"data.cache_dir={root / 'cache'}"])
    assert result.exit_code == 0, result.output[-3000:]
    return run, json.loads(result.stdout)


def test_pretrain_trains_both_stages_and_scores_every_direction(trained):
    run, summary = trained
    assert summary["vse"]["status"] == "completed" and (run / "vse" / "tokenizer.json").is_file()
    assert summary["mined_pairs"] > 0  # threshold -1: every mutual nearest neighbour
    for name in ("dae_loss", "caption_loss", "bt_loss", "pivot_caption_loss", "retrieval_loss", "eval/en_de_loss"):
        assert name in summary["metrics"], name
    for direction in ("en-de", "de-en"):
        scores = summary["translation"][direction]
        assert {"bleu", "chrf", "bleu_no_image", "bleu_word_by_word"} <= set(scores)
        assert (run / "translations" / f"{direction}.no_image.txt").read_text().count("\n") == 10


def test_translate_and_eval_translation_read_the_run(trained, tmp_path):
    run, summary = trained
    out = runner.invoke(app, ["translate", "a small red circle on the left.", "ein großer blauer Stern rechts.",
                              "--checkpoint", str(run), "--from", "en", "--to", "de", "--json"])
    assert out.exit_code == 0, out.output[-3000:]
    assert len(json.loads(out.stdout)["translations"]) == 2
    scored = runner.invoke(app, ["eval", "translation", "--checkpoint", str(run), "max_len=8", "--json", "-o",
                                 str(tmp_path / "scored")])
    assert scored.exit_code == 0, scored.output[-3000:]
    again = json.loads(scored.stdout)
    for key in ("bleu_no_image", "bleu", "bleu_word_by_word"):
        assert again["metrics"][f"en-de/{key}"] == pytest.approx(summary["translation"]["en-de"][key])
    assert (tmp_path / "scored" / "translations" / "de-en.word_by_word.txt").is_file()
    assert "tok:13a" in again["signature"]
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY")
    failed = runner.invoke(app, ["translate", "a red circle", "--checkpoint", str(run), "--image", str(bad)])
    assert failed.exit_code == 2 and "image" in failed.output
    wrong = tmp_path / "wide.npy"
    np.save(wrong, np.zeros((3, 7), dtype=np.float32))
    failed = runner.invoke(app, ["translate", "a red circle", "--checkpoint", str(run), "--image", str(wrong)])
    assert failed.exit_code == 2 and "width" in failed.output


def test_one_language_is_refused_by_name():
    result = runner.invoke(app, ["pretrain", "ummt", "--dry-run", "data.languages=[en]"])
    assert result.exit_code == 2 and "data.languages" in result.output
