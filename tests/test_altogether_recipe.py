"""`percli finetune altogether`: a tiny run end to end (caption evaluation in summary.json), resume, config checks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from percli.captioning.triples import prompt_and_target
from percli.cli import app

runner = CliRunner()
TINY = ["train.max_steps=3", "train.batch_size=8", "train.num_workers=0", "train.ckpt_every=3", "train.log_every=1",
        "data.embedded_size=48", "data.eval_size=6", "generation.max_new_tokens=6", "captioner.max_target_len=40",
        "image_encoder.kwargs.vision_cfg.image_size=32", "image_encoder.kwargs.vision_cfg.layers=1",
        "decoder.config.num_hidden_layers=1", "captioner.mapper_layers=1"]


def _train(run_dir, *extra):
    return runner.invoke(app, ["finetune", "altogether", "--run-dir", str(run_dir), "--json", *TINY, *extra])


def test_tiny_run_scores_captions_and_alt_texts_and_resumes(tmp_path):
    result = _train(tmp_path / "run")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["step"] == 3
    evaluation = summary["caption_eval"]
    assert evaluation["n"] == 6
    for scored in ("altogether", "alt_text"):
        assert set(evaluation[scored]) >= {"bleu4", "cider"}
    rows = [json.loads(line) for line in (tmp_path / "run" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == {"key", "alt_text", "caption", "altogether"} for r in rows)
    heldout = [json.loads(line) for line in (tmp_path / "run" / "heldout" / "records.jsonl").read_text().splitlines()]
    assert [r["key"] for r in heldout] == [r["key"] for r in rows]  # the folder `percli caption` reads

    more = runner.invoke(app, ["finetune", "altogether", "--run-dir", str(tmp_path / "run"), "--resume", "--json",
                               "train.max_steps=5"])
    assert more.exit_code == 0, more.output
    assert json.loads(more.stdout)["step"] == 5
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "loss" in line and "eval" not in line]
    assert steps == [1, 2, 3, 4, 5]


def test_prompt_dropout_and_stages():
    import torch

    torch.manual_seed(0)
    kept = [prompt_and_target(["red star"], "one red star.", "ft", 0.5)[0] for _ in range(400)]
    assert 0.4 < kept.count("") / 400 < 0.6 and set(kept) == {"", "red star"}
    assert prompt_and_target(["a", "a longer one"], "caption", "pt", 0.0) == ("a", "a longer one")
    assert prompt_and_target(["only"], "caption", "pt", 0.0) == ("", "only")


@pytest.mark.parametrize(("override", "message"), [
    ("image_encoder.name=not_a_model", "image_encoder.name"),
    ("data.source=/no/such/file.jsonl", "data.source"),
    ("decoder.init=/no/such/opt", "decoder.init"),
])
def test_bad_config_fails_on_dry_run(override, message):
    result = runner.invoke(app, ["finetune", "altogether", "--dry-run", override])
    assert result.exit_code == 2 and message in result.output


def test_decoder_starts_from_a_hugging_face_opt_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    text = ("one two three shapes on a background: large small red blue green yellow purple orange white black "
            "star circle square triangle cross ring ellipse heart moon left right middle the in and , . -")
    words = ["<pad>", "</s>", "<unk>", *sorted(set(text.split()))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "opt"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = transformers.OPTConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=16)
    transformers.OPTForCausalLM(config).save_pretrained(folder)
    result = _train(tmp_path / "run", f"decoder.init={folder}", "decoder.trim_vocab=false", "train.max_steps=1",
                    "data.eval_size=2")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step_0000001" / "trainer_state.json").read_text())
    assert meta["step"] == 1
    from percli.core.checkpoint import read_weights

    weights, model_meta = read_weights(tmp_path / "run" / "checkpoints" / "step_0000001")
    assert model_meta["tokenizer"]["kind"] == "hf" and model_meta["decoder"]["hidden_size"] == 16
    assert weights["decoder.model.decoder.embed_tokens.weight"].shape[0] == len(words)
