"""`percli pretrain mmp`: (x, v, y) triples aligned by caption index, the English-only baseline, the conditional
cross-lingual term by hand, a CLI run with per-language retrieval, named config errors, the byte_text refactor."""

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from percli.core.data.embedded_video_text import EmbeddedVideoText
from percli.core.data.images import BadSample
from percli.core.data.video_text import OverlapSampling, TimedCaptions
from percli.models import create_model
from percli.recipes.mmp import MultilingualClips, mmp_loss

runner = CliRunner()
TINY = ["model.kwargs={embed_dim: 16, width: 16, heads: 2, layers: 1, context_length: 64}",
        "data.embedded_size=20", "data.clips_per_video=2", "train.num_workers=0", "train.batch_size=4",
        "optim.ref_batch_size=4"]
SAMPLING = OverlapSampling(min_text_len=3, max_text_len=16, min_video_len=2, max_video_len=8, clips_per_video=6)


def _invoke(*args: str):
    """`percli pretrain mmp ARGS`."""
    from percli.cli import app

    return runner.invoke(app, ["pretrain", "mmp", *args])


def test_triples_align_by_caption_index_across_languages():
    videos = EmbeddedVideoText(3)
    clips = MultilingualClips(videos, ["en", "de"], SAMPLING, seed=0)
    for index in range(3):
        item, rendered = clips[index], videos[index]
        en, de = rendered["captions"]["en"], rendered["captions"]["de"]
        for clip, x, y in zip(item["clips"], item["text"], item["text_b"]):
            assert x == " ".join(en.text[i] for i in clip.caption_indices)
            assert y == " ".join(de.text[i] for i in clip.caption_indices)
    # by hand on video 0: each English caption's shape noun sits in the German caption of the same index
    nouns = {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "ring": "Ring",
             "cross": "Kreuz", "ellipse": "Ellipse"}
    en, de = videos[0]["captions"]["en"], videos[0]["captions"]["de"]
    for english, german in zip(en.text, de.text):
        assert [g for e, g in nouns.items() if e in english.split()] == [g for g in nouns.values() if g in german]


def test_a_video_whose_languages_differ_in_caption_count_is_skipped_and_counted():
    features = torch.zeros(10, 4)
    one = TimedCaptions(("a red circle jumps",), (0.0,), (3.0,))
    two = TimedCaptions(("ein roter Kreis", "springt"), (0.0, 2.0), (2.0, 3.0))
    clips = MultilingualClips([{"id": "v", "features": features, "captions": {"en": one, "de": two}}],
                              ["en", "de"], SAMPLING, seed=0)
    with pytest.raises(BadSample, match="caption_count_mismatch: captions per language differ \\(en 1, de 2\\)"):
        clips[0]
    assert clips.skipped["caption_count_mismatch"] == 1
    english_only = MultilingualClips(clips.videos, ["en"], SAMPLING, seed=0)[0]
    assert "text_b" not in english_only  # one language: nothing to align


def test_english_only_has_no_y_terms_and_both_languages_sum_the_weighted_terms():
    torch.manual_seed(0)
    x, v, y = (F.normalize(torch.randn(5, 8), dim=-1) for _ in range(3))
    scale = torch.tensor(10.0)
    alone = mmp_loss(x, v, None, scale)
    assert set(alone) == {"loss", "inter_vx_loss"} and torch.equal(alone["loss"], alone["inter_vx_loss"])
    both = mmp_loss(x, v, y, scale, inter_weight=2.0, intra_weight=0.5, conditional_weight=3.0)
    expected = 2 * (both["inter_vx_loss"] + both["inter_vy_loss"]) + 0.5 * both["intra_xy_loss"] \
        + 3 * both["conditional_loss"]
    assert torch.allclose(both["loss"], expected)


def test_conditional_term_on_a_hand_made_case():
    # x_i + v_i points along y_i only when both agree: q = normalize(x + v)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = mmp_loss(x, v, y, torch.tensor(1.0), inter_weight=0.0, intra_weight=0.0, conditional_weight=1.0)
    # q_0 = (1, 0), q_1 = (1, 1)/sqrt 2; logits = q @ y.T = [[1, 0], [r, r]] with r = 1/sqrt 2
    r = 2 ** -0.5
    q_to_y = (-torch.log(torch.tensor(1.0).exp() / (1 + torch.e))  # row 0: positive 1, negative 0
              - torch.log(torch.tensor(0.5)))  # row 1: two equal logits
    y_to_q = (-torch.log(torch.tensor(1.0).exp() / (torch.tensor(1.0).exp() + torch.tensor(r).exp()))  # column 0
              - torch.log(torch.tensor(r).exp() / (1 + torch.tensor(r).exp())))  # column 1: positive r vs 0
    assert out["conditional_loss"].item() == pytest.approx(((q_to_y + y_to_q) / 4).item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx(out["conditional_loss"].item())


def test_two_steps_report_retrieval_per_language(tmp_path):
    result = _invoke("--run-dir", str(tmp_path / "run"), "--json", *TINY, "train.max_steps=2", "train.log_every=1")
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = summary["metrics"]
    for lang in ("en", "de"):
        assert 0 <= metrics[f"eval/{lang}_t2v_R@1"] <= 1 and metrics[f"eval/{lang}_clips"] > 20
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("conditional_loss" in r for r in rows)


def test_english_only_run_logs_no_y_terms(tmp_path):
    result = _invoke("--run-dir", str(tmp_path / "run"), "--json", *TINY, "data.languages=[en]",
                     "data.eval_languages=[de]", "train.max_steps=1", "train.log_every=1")
    assert result.exit_code == 0, result.output[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*rows)
    assert "inter_vx_loss" in logged and not {"inter_vy_loss", "intra_xy_loss", "conditional_loss"} & logged
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert "eval/de_t2v_R@1" in metrics and "eval/en_t2v_R@1" not in metrics  # zero-shot German only


@pytest.mark.parametrize(("override", "message"), [
    ("data.languages=[en, de, fr]", "data.languages=['en', 'de', 'fr']"),
    ("data.eval_languages=[fr]", "data.languages / data.eval_languages: ['fr']"),
    ("data.language=de", "data.language='de' is not read by mmp"),
    ("conditional_weight=-1", "conditional_weight=-1"),
])
def test_bad_settings_name_their_key(tmp_path, override, message):
    result = _invoke("--run-dir", str(tmp_path / "run"), *TINY, override)
    assert result.exit_code == 2 and message in result.output, result.output[-2000:]


def test_byte_text_is_shared_by_support_set_and_mmp():
    from percli.models.byte_text import ByteVideoTextEncoder

    assert isinstance(create_model("support_set_tiny", feature_dim=8), ByteVideoTextEncoder)
    model = create_model("mmp_tiny", feature_dim=8, embed_dim=16, width=16, heads=2, layers=1, max_video_len=4)
    embeds = model.encode_texts(["a red circle jumps", "jetzt springt ein roter Kreis"])
    assert embeds.shape == (2, 16) and torch.allclose(embeds.norm(dim=-1), torch.ones(2))
    features, mask = torch.randn(2, 4, 8), torch.tensor([[True] * 4, [True, True, False, False]])
    assert torch.allclose(model.encode_video(features, mask).norm(dim=-1), torch.ones(2))


def test_a_hugging_face_text_encoder_trains_under_the_tp_head_and_eval_rebuilds_it_without_its_weights(
        tmp_path, hf_folder):
    """mBERT's place: a local BERT folder under the text TP head. Every backbone parameter gets a gradient, the
    checkpoint records ``pretrained: false``, and `eval retrieval` rebuilds the model from the folder's config and
    tokenizer alone (its weights deleted) and scores the run's own held-out clips the same."""
    import shutil

    folder = tmp_path / "bert"
    shutil.copytree(hf_folder, folder)
    model = create_model("mmp_tiny", feature_dim=8, embed_dim=16, width=16, heads=2, layers=1, max_video_len=4,
                         context_length=24, text_encoder={"hf_folder": str(folder)})
    ids, mask = model.tokenizer(["ein roter Kreis springt", "a blue square"])
    assert ids[0, 0].item() == 101 and mask.dtype == torch.bool and mask[1].sum() < mask[0].sum()  # [CLS], padded
    text = model.encode_text(ids, mask)
    text.sum().backward()
    assert all(p.grad is not None for p in model.text_backbone.parameters())
    assert not hasattr(model, "token_embed")
    kwargs = f"model.kwargs={{embed_dim: 16, width: 16, heads: 2, layers: 1, context_length: 32, " \
             f"text_encoder: {{hf_folder: {folder}}}}}"
    result = _invoke("--run-dir", str(tmp_path / "run"), "--json", *TINY, kwargs, "train.max_steps=2")
    assert result.exit_code == 0, result.output[-3000:]
    run = json.loads(result.stdout)
    from percli.core.checkpoint import read_weights

    _, meta = read_weights(run["checkpoint"])
    assert meta["kwargs"]["text_encoder"] == {"hf_folder": str(folder.resolve()), "pretrained": False}
    (folder / "model.safetensors").unlink()
    from percli.cli import app

    evaluated = runner.invoke(app, ["eval", "retrieval", f"model.checkpoint={run['checkpoint']}", "--json",
                                    "--run-dir", str(tmp_path / "eval"), "data.embedded_size=20"])
    assert evaluated.exit_code == 0, evaluated.output[-3000:]
    again = json.loads(evaluated.stdout)["metrics"]
    for key in ("en_t2v_R@1", "de_t2v_mean_rank", "en_v2t_mean_rank"):
        assert again[key] == pytest.approx(run["metrics"][f"eval/{key}"], abs=1e-6), key


def test_a_bad_text_encoder_folder_exits_2_naming_the_key(tmp_path):
    result = _invoke("--run-dir", str(tmp_path / "run"), *TINY,
                     f"model.kwargs.text_encoder={{hf_folder: {tmp_path}}}")
    assert result.exit_code == 2 and "model.kwargs.text_encoder.hf_folder" in result.output
    assert "config.json" in result.output, result.output[-2000:]
