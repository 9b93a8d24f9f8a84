"""`percli pretrain voicecraft model.checkpoint=...`: finetuning starts from the release weights and
vocabulary exactly, bad combinations exit 2 naming the fix, resume is exact, and the finetuned run
loads in `percli tts synthesize`."""

from __future__ import annotations

import argparse
import json
import signal

import pytest
import soundfile
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_weights, save_weights
from percli.core.rundir import read_metrics
from percli.models.encodec import EncodecModel
from percli.models.voicecraft import VoiceCraft
from percli.tts import text
from percli.tts.corpus import build_corpus
from tests.conftest import sigterm_after_step
from tests.test_tts_commands import CODEC, TARGET, TINY, TRANSCRIPT

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny release .pth whose vocabulary lacks most corpus phonemes, its codec, a 12-sentence corpus."""
    root = tmp_path_factory.mktemp("init")
    torch.manual_seed(0)
    model = VoiceCraft(**TINY)
    phn2num = {p: i for i, p in enumerate(sorted({p for s in (TRANSCRIPT, TARGET, "hello there")
                                                   for p in text.phonemize(s)}))}
    args = {**TINY, "audio_vocab_size": str(TINY["audio_vocab_size"]), "n_special": 4, "reduced_eog": 1,
            "codebook_weight": "[5, 1, 0.5, 0.1]", "exp_dir": "/nowhere"}
    pth = root / "tiny.pth"
    torch.save({"config": argparse.Namespace(**args), "phn2num": phn2num, "model": model.state_dict()}, pth)
    codec = EncodecModel(**CODEC)
    other = EncodecModel(**{**CODEC, "bins": 32})
    return {"pth": pth, "state": model.state_dict(), "phn2num": phn2num,
            "codec": save_weights(root / "codec.safetensors", codec.state_dict(), codec.checkpoint_meta()),
            "codec32": save_weights(root / "codec32.safetensors", other.state_dict(), other.checkpoint_meta()),
            "corpus": build_corpus(root / "corpus", size=12), "cache": root / "cache"}


def finetune(files: dict, run, *extra: str, start=None, codec: bool = True):
    """A few steps from `start` (default: the release .pth) with the tiny codec unless `codec` is False."""
    # the default (tiny) preset's model.kwargs shape a model from scratch: cleared here
    codec_arg = [f"model.codec_checkpoint={files['codec']}"] if codec else []
    return runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(run), "--json", "model.kwargs={}",
                               f"model.checkpoint={start or files['pth']}", *codec_arg,
                               f"data.source={files['corpus']}", f"data.cache_dir={files['cache']}",
                               "data.val_size=2", "train.batch_size=4", "train.num_workers=0", "train.log_every=1",
                               "optim.ref_batch_size=4", "sample_prompt_fraction=0", *extra])


def test_zero_steps_keep_the_release_weights_and_vocabulary(files, tmp_path):
    result = finetune(files, tmp_path / "run", "train.max_steps=0")
    assert result.exit_code == 0, result.output
    state, meta = read_weights(tmp_path / "run" / "checkpoints" / "step_0000000" / "model.safetensors")
    assert state.keys() == files["state"].keys()
    for name, tensor in files["state"].items():
        assert torch.equal(state[name], tensor), name
    assert json.loads((tmp_path / "run" / "phn2num.json").read_text()) == files["phn2num"] == meta["phn2num"]
    summary = json.loads(result.stdout)
    assert summary["dropped_phonemes"] > 0 and summary["initial_weights"] == str(files["pth"])
    assert meta["config"]["d_model"] == TINY["d_model"] and meta["config"]["audio_vocab_size"] == CODEC["bins"]


def test_finetuned_run_resumes_exactly_and_speaks(files, tmp_path, monkeypatch):
    args = ["train.max_steps=3", "train.ckpt_every=1"]
    full = finetune(files, tmp_path / "full", *args)
    assert full.exit_code == 0, full.output
    undo = sigterm_after_step(monkeypatch, 2)
    part = tmp_path / "part"
    stopped = finetune(files, part, *args)
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output
    undo()
    resumed = runner.invoke(app, ["pretrain", "voicecraft", "--run-dir", str(part), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    expected = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    got = [r["loss"] for r in read_metrics(part / "metrics.jsonl") if "loss" in r]
    assert len(expected) == 3 and got == expected  # step 3 continues step 2's weights, not the .pth's

    trained = read_weights(tmp_path / "full" / "checkpoints" / "step_0000003" / "model.safetensors")[0]
    assert not torch.equal(trained["text_embedding.word_embeddings.weight"],
                           files["state"]["text_embedding.word_embeddings.weight"])
    prompt = tmp_path / "prompt.wav"  # noise: only the loading is under test (the prompt's words must be in phn2num)
    soundfile.write(str(prompt), 0.3 * torch.randn(16000, generator=torch.Generator().manual_seed(0)).numpy(), 16000)
    out = tmp_path / "say.wav"
    said = runner.invoke(app, ["tts", "synthesize", "--prompt", str(prompt), "--prompt-text", TRANSCRIPT,
                               "--text", "hello there", "--checkpoint", str(tmp_path / "full"), "-o", str(out),
                               "--device", "cpu", "--json"])
    assert said.exit_code == 0, said.output
    assert soundfile.info(str(out)).frames == json.loads(said.stdout)["frames"] * 320

    # a percli run as the start: its weights, vocabulary and (unless given) the codec it saved
    again = finetune(files, tmp_path / "again", "train.max_steps=0", start=tmp_path / "full", codec=False)
    assert again.exit_code == 0, again.output
    restarted = read_weights(tmp_path / "again" / "checkpoints" / "step_0000000" / "model.safetensors")[0]
    assert all(torch.equal(restarted[k], v) for k, v in trained.items())
    codec = read_weights(files["codec"])[0]
    assert all(torch.equal(codec[k], v) for k, v in read_weights(tmp_path / "again" / "codec.safetensors")[0].items())


@pytest.mark.parametrize("case", ["kwargs", "no_codec", "codec_bins", "phn2num", "missing"])
def test_bad_combinations_exit_2_naming_the_fix(case, files, tmp_path):
    extra, expected = {
        "kwargs": (["model.kwargs={d_model: 32}"], ["model.kwargs", "model.checkpoint", "'d_model': 16"]),
        "no_codec": (["model.codec_checkpoint=null"], ["model.codec_checkpoint=encodec_4cb2048_giga.th"]),
        "codec_bins": ([f"model.codec_checkpoint={files['codec32']}"], ["4 x 32 codes", "4 x 64"]),
        "phn2num": ([f"data.phn2num={tmp_path / 'vocab.json'}"], ["data.phn2num", "model.checkpoint"]),
        "missing": ([f"model.checkpoint={tmp_path / 'giga830M.pth'}"], ["giga830M.pth does not exist"]),
    }[case]
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    result = finetune(files, tmp_path / "run", "train.max_steps=1", *extra)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert all(e in message for e in expected), message
    assert not (tmp_path / "run" / "checkpoints").exists()
