"""`percli chat`: one answer on stdout, equal to the model's own greedy (or seeded) decoding of the release's chat
prompt; --max-new-tokens, the context and --stop bound it; an interactive chat only on a terminal, with history;
unreadable media, over-long prompts and missing checkpoints / tokenizers exit 2 with one line, no traceback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_weights, run_weights, save_weights
from percli.core.data.embedded_plm import write_plm_jsonl
from percli.recipes import plm_chat
from percli.recipes.plm_common import load_plm
from percli.recipes.plm_generate import Decoding, generate_answers

runner = CliRunner()
GAIN = 2.0  # weights of std GAIN / sqrt(fan_in): answers that depend on the question and the pixels


def input_sensitive_checkpoint(root: Path) -> Path:
    """A `percli finetune plm` tiny run (its checkpoint format and metadata), its matrices then redrawn at random.

    Two training steps leave a model that answers the same junk to every prompt, which would let a test pass with
    the media or the question dropped; random matrices of this scale make the answer depend on both. Built once
    per session (the caption tests share it).
    """
    run = root / "plm-run"
    if (root / "ready").is_file():
        return run
    result = runner.invoke(app, ["finetune", "plm", "--run-dir", str(run), "train.max_steps=2",
                                 "data.embedded_size=40", "data.val_size=8", "train.eval_every=0"])
    assert result.exit_code == 0, result.output
    weights = run_weights(run)
    state, meta = read_weights(weights)
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(t.shape, generator=generator) * GAIN / t.shape[-1] ** 0.5
             if t.is_floating_point() and t.dim() >= 2 else t for name, t in state.items()}
    save_weights(weights / "model.safetensors", state, meta)
    (root / "ready").write_text("")
    return run


@pytest.fixture(scope="session")
def plm_checkpoint(tmp_path_factory) -> Path:
    return input_sensitive_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def plm_media(tmp_path_factory) -> Path:
    """3 images and 3 videos (48 px, 8 frames) of the embedded PLM data, listed in <folder>/test.jsonl."""
    folder = tmp_path_factory.getbasetemp() / "plm-media"
    if not (folder / "test.jsonl").is_file():
        write_plm_jsonl(folder, 6, split="test")
    return folder


@pytest.fixture(scope="session")
def loaded(plm_checkpoint):
    return load_plm(plm_checkpoint)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default run dir would land here


def media_file(folder: Path, kind: str, index: int = 0) -> str:
    return str(folder / "test" / f"test_{kind}_{index:06d}.{'png' if kind == 'image' else 'mp4'}")


def expected(loaded, question: str, path: str | None, decoding: Decoding, history=(), seed: int = 0):
    """The answer of the model's own generate on the processor's prompt (what chat must print)."""
    model, processor, _ = loaded
    row = {} if path is None else {"image" if path.endswith(".png") else "video": path}
    media = processor.load_media(row)[0]
    ids, image_pos = processor.prompt(question, media, history)
    rows = model.generate([ids], [media], image_pos=[image_pos], image_token_id=processor.tokenizer.image_id,
                          max_new_tokens=decoding.max_new_tokens, stop_ids=processor.tokenizer.stop_ids,
                          greedy=not decoding.sampling, temperature=decoding.temperature or 1.0,
                          generator=torch.Generator().manual_seed(seed))
    return processor.tokenizer.decode(rows[0]), rows[0], len(ids)


def chat(*args: str, **kwargs):
    return runner.invoke(app, ["chat", *args], **kwargs)


@pytest.mark.parametrize("kind", ["image", "video", None])
def test_chat_prints_the_greedy_answer_of_model_generate(kind, plm_checkpoint, plm_media, loaded, tmp_path):
    path = media_file(plm_media, kind) if kind else None
    media = [f"--{kind}", path] if kind else []
    result = chat(*media, "--checkpoint", str(plm_checkpoint), "--max-new-tokens", "8", "What colour is the circle?")
    assert result.exit_code == 0, result.output
    answer, tokens, prompt_tokens = expected(loaded, "What colour is the circle?", path, Decoding(max_new_tokens=8))
    assert result.stdout == answer + "\n"  # the answer alone: no table, no log lines on stdout
    as_json = chat(*media, "--checkpoint", str(plm_checkpoint), "--max-new-tokens", "8", "--json",
                   "What colour is the circle?")
    summary = json.loads(as_json.stdout)
    assert (summary["answer"], summary["tokens"], summary["prompt_tokens"]) == (answer, len(tokens), prompt_tokens)
    assert summary["stopped"] == ("stop_token" if len(tokens) < 8 else "max_new_tokens")
    assert summary["run_dir"] is None and not (tmp_path / "runs").exists()  # nothing kept without --run-dir


def test_the_answer_depends_on_the_media_and_the_question(plm_checkpoint, plm_media):
    def answer(*args: str) -> str:
        result = chat("--checkpoint", str(plm_checkpoint), "--max-new-tokens", "8", *args)
        assert result.exit_code == 0, result.output
        return result.stdout

    first = answer("--image", media_file(plm_media, "image", 0), "What colour is the circle?")
    assert first == answer("--image", media_file(plm_media, "image", 0), "What colour is the circle?")
    assert first != answer("--image", media_file(plm_media, "image", 1), "What colour is the circle?")
    assert first != answer("--image", media_file(plm_media, "image", 0), "How many squares are there?")


def test_max_new_tokens_and_the_context_bound_the_answer(plm_checkpoint, plm_media, loaded):
    image = media_file(plm_media, "image")
    full, tokens, prompt_tokens = expected(loaded, "Describe the image.", image, Decoding(max_new_tokens=12))
    assert len(tokens) == 12  # this prompt does not stop early: the bound decides
    result = chat("--image", image, "--checkpoint", str(plm_checkpoint), "--max-new-tokens", "3", "--json",
                  "Describe the image.")
    summary = json.loads(result.stdout)
    assert (summary["tokens"], summary["stopped"]) == (3, "max_new_tokens")
    assert summary["answer"] == loaded[1].tokenizer.decode(tokens[:3])
    context = loaded[0].max_seqlen
    long = json.loads(chat("--image", image, "--checkpoint", str(plm_checkpoint), "--max-new-tokens", "100000",
                           "--json", "Describe the image.").stdout)
    assert long["tokens"] <= context - prompt_tokens  # never past the context, whatever --max-new-tokens says
    assert (long["stopped"] == "context") == (long["tokens"] == context - prompt_tokens)


def test_a_stop_string_cuts_the_answer_before_it(plm_checkpoint, plm_media, loaded):
    image = media_file(plm_media, "image")
    full, _, _ = expected(loaded, "Describe the image.", image, Decoding(max_new_tokens=12))
    specials = re.findall(r"<\|[a-z_0-9]+\|>", full)
    stop = specials[1] if len(specials) > 1 else full[len(full) // 2:len(full) // 2 + 2]
    result = chat("--image", image, "--checkpoint", str(plm_checkpoint), "--max-new-tokens", "12", "--stop", stop,
                  "--stop", "never-generated", "--json", "Describe the image.")
    summary = json.loads(result.stdout)
    assert summary["answer"] == full[:full.index(stop)] and summary["stopped"] == "stop_string"
    assert 1 <= summary["tokens"] <= 12


def test_sampling_is_seeded(plm_checkpoint, plm_media, loaded):
    video = media_file(plm_media, "video")

    def sampled(seed: int) -> str:
        result = chat("--video", video, "--checkpoint", str(plm_checkpoint), "--temperature", "1.0", "--seed",
                      str(seed), "--max-new-tokens", "8", "Which shape is moving?")
        assert result.exit_code == 0, result.output
        return result.stdout

    assert sampled(1) == sampled(1) != sampled(2)
    assert sampled(1) == expected(loaded, "Which shape is moving?", video,
                                  Decoding(max_new_tokens=8, temperature=1.0), seed=1)[0] + "\n"
    greedy = chat("--video", video, "--checkpoint", str(plm_checkpoint), "--temperature", "1.0", "--greedy",
                  "--max-new-tokens", "8", "Which shape is moving?")
    assert greedy.stdout == expected(loaded, "Which shape is moving?", video, Decoding(max_new_tokens=8))[0] + "\n"


def test_interactive_chat_on_a_terminal_keeps_the_history(plm_checkpoint, plm_media, loaded, monkeypatch):
    monkeypatch.setattr(plm_chat, "stdin_is_terminal", lambda: True)
    image = media_file(plm_media, "image")
    questions = ["What colour is the circle?", "/reset", "How many squares are there?", "", "And the circles?",
                 "/exit", "never asked"]
    result = chat("--image", image, "--checkpoint", str(plm_checkpoint), "--max-new-tokens", "6",
                  input="\n".join(questions) + "\n")
    assert result.exit_code == 0, result.output
    decoding = Decoding(max_new_tokens=6)
    first = expected(loaded, questions[0], image, decoding)[0]
    second = expected(loaded, questions[2], image, decoding)[0]  # after /reset: no history
    third = expected(loaded, questions[4], image, decoding, history=[(questions[2], second)])[0]
    assert third != expected(loaded, questions[4], image, decoding)[0]  # the history reaches the prompt
    assert result.stdout == f">>> {first}\n>>> >>> {second}\n>>> >>> {third}\n>>> "


def test_no_question_off_a_terminal_is_an_error_not_a_prompt(plm_checkpoint, plm_media):
    result = chat("--image", media_file(plm_media, "image"), "--checkpoint", str(plm_checkpoint), input="hello\n")
    assert result.exit_code == 2 and "question" in result.output and "not set" in result.output
    assert ">>>" not in result.stdout


@pytest.mark.parametrize(("case", "message"), [
    ("corrupt image", "cannot read the image"),
    ("corrupt video", "cannot read the video"),
    ("missing image", "nope.png not found"),
    ("prompt longer than the context", "prompt_too_long"),
    ("missing checkpoint", "model.checkpoint (--checkpoint): "),
    ("not a PLM checkpoint", "not a PerceptionLM checkpoint"),
    ("missing tokenizer", "model.tokenizer (--tokenizer): "),
    ("folder without a tokenizer", "holds none of"),
    ("image and video", "both given"),
    ("no checkpoint", "not set"),
    ("fp16 on the CPU", "needs a GPU"),
])
def test_bad_inputs_exit_2_with_one_line(case, message, plm_checkpoint, plm_media, tmp_path, monkeypatch):
    monkeypatch.delenv("PERCLI_PLM_CHECKPOINT", raising=False)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    (tmp_path / "empty").mkdir()
    if case == "prompt longer than the context":  # 80 frames: 64 of them x 9 tokens exceed the 512-token context
        from percli.core.data.embedded_plm import write_mp4

        write_mp4(tmp_path / "long.mp4", np.random.default_rng(0).integers(0, 255, (80, 48, 48, 3), np.uint8), 2)
    save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, {"task": "hiera"})
    image, video, ckpt = media_file(plm_media, "image"), media_file(plm_media, "video"), str(plm_checkpoint)
    args = {
        "corrupt image": ["--image", str(tmp_path / "bad.png"), "--checkpoint", ckpt],
        "corrupt video": ["--video", str(tmp_path / "bad.mp4"), "--checkpoint", ckpt],
        "missing image": ["--image", str(tmp_path / "nope.png"), "--checkpoint", ckpt],
        "prompt longer than the context": ["--video", str(tmp_path / "long.mp4"), "--max-frames", "64", "--checkpoint",
                                           ckpt],
        "missing checkpoint": ["--image", image, "--checkpoint", str(tmp_path / "nope")],
        "not a PLM checkpoint": ["--image", image, "--checkpoint", str(tmp_path / "other.safetensors")],
        "missing tokenizer": ["--image", image, "--checkpoint", ckpt, "--tokenizer", str(tmp_path / "nope")],
        "folder without a tokenizer": ["--image", image, "--checkpoint", ckpt, "--tokenizer", str(tmp_path / "empty")],
        "image and video": ["--image", image, "--video", video, "--checkpoint", ckpt],
        "no checkpoint": ["--image", image],
        "fp16 on the CPU": ["--image", image, "--checkpoint", ckpt, "--device", "cpu", "--dtype", "fp16"],
    }[case]
    result = chat(*args, "What is this?")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output and result.stdout == ""
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("method", "verb"), [("chat", "chat"), ("plm", "caption")])
def test_decoding_defaults_are_greedy_and_bounded(method, verb):
    shown = runner.invoke(app, ["show-config", method, "--verb", verb, "--json"])
    generation = json.loads(shown.stdout)["generation"]
    assert (generation["max_new_tokens"], generation["temperature"]) == (256, 0.0)  # never the release's 11264


def test_run_dir_keeps_the_answer(plm_checkpoint, plm_media, tmp_path):
    run = tmp_path / "chat-run"
    result = chat("--image", media_file(plm_media, "image"), "--checkpoint", str(plm_checkpoint),
                  "--max-new-tokens", "4", "--run-dir", str(run), "What is this?")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["answer"] + "\n" == result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["auto", "fp16", "fp32"])
def test_chat_on_a_gpu(dtype, plm_checkpoint, plm_media):
    result = chat("--video", media_file(plm_media, "video"), "--checkpoint", str(plm_checkpoint), "--device", "cuda",
                  "--dtype", dtype, "--max-new-tokens", "8", "--json", "Which shape is moving?")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert 1 <= summary["tokens"] <= 8 and summary["stopped"] in ("stop_token", "max_new_tokens")


class _Tokenizer:
    image_id, stop_ids = 99, (0, 1)

    def decode(self, ids):
        return "".join(chr(ord("a") + i - 2) for i in ids)


class _Model:
    max_seqlen = 10

    def __init__(self, rows):
        self.rows = rows

    def generate(self, prompts, media, **kw):
        return [row[:min(kw["max_new_tokens"], self.max_seqlen - max(map(len, prompts)))] for row in self.rows]


@pytest.mark.parametrize(("row", "prompt", "decoding", "answer", "tokens", "stopped"), [
    ([2, 3], 3, Decoding(max_new_tokens=4), "ab", 2, "stop_token"),
    ([2, 3, 4, 5, 6], 3, Decoding(max_new_tokens=4), "abcd", 4, "max_new_tokens"),
    ([2, 3, 4, 5, 6, 7, 8, 9], 5, Decoding(max_new_tokens=9), "abcde", 5, "context"),
    ([2, 3, 4, 5], 3, Decoding(max_new_tokens=4, stop=["x", "bc"]), "a", 3, "stop_string"),
])
def test_why_an_answer_stopped(row, prompt, decoding, answer, tokens, stopped):
    class Processor:
        tokenizer = _Tokenizer()

    got = generate_answers(_Model([row]), Processor(), [([7] * prompt, [])], [None], decoding)[0]
    assert (got.text, got.tokens, got.stopped, got.prompt_tokens) == (answer, tokens, stopped, prompt)
