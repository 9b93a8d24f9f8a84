"""`percli tts edit | synthesize` end to end on CPU with tiny random VoiceCraft and codec checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import save_weights
from percli.core.data.audio import load_audio
from percli.models.encodec import EncodecModel
from percli.models.voicecraft import VoiceCraft
from percli.tts import inference, text

SR = 16000
TRANSCRIPT = "the cat sat on the mat"
TARGET = "the dog sat on the mat"
# word timings of the 2 s test recording: 6 words of 0.24 s every 0.3 s from 0.1 s ("cat": 0.40-0.64 s)
WORDS = [{"word": w, "start": round(0.1 + 0.3 * i, 2), "end": round(0.34 + 0.3 * i, 2)}
         for i, w in enumerate(TRANSCRIPT.split())]
# 64 codes per codebook keep the output heads small (the release's 2048 make sampling 30x slower)
BINS = 64
TINY = dict(d_model=16, nhead=2, num_decoder_layers=1, text_vocab_size=100, text_pad_token=100,
            audio_vocab_size=BINS, empty_token=BINS, eog=BINS + 1, audio_pad_token=BINS + 2, eos=BINS + 3)
CODEC = dict(n_filters=2, dimension=8, lstm=0, bins=BINS)

runner = CliRunner()


@pytest.fixture(scope="module")
def phn2num() -> dict[str, int]:
    """Every phoneme (and the word separator) of the test sentences, numbered as the official vocabulary."""
    symbols = sorted({p for s in (TRANSCRIPT, TARGET, "hello there") for p in text.phonemize(s)})
    return {p: i for i, p in enumerate(symbols)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, phn2num) -> dict[str, Path]:
    """One tiny model as a `percli pretrain voicecraft` run dir, a release .pth and a Hugging Face folder."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = VoiceCraft(**TINY)
    codec = EncodecModel(**CODEC)
    run = root / "run"  # the recipe's layout: the codec beside the checkpoints, named relative to them
    codec_file = save_weights(run / "codec.safetensors", codec.state_dict(), codec.checkpoint_meta())
    save_weights(run / "checkpoints" / "step_0000010" / "model.safetensors", model.state_dict(),
                 {**model.checkpoint_meta(), "phn2num": phn2num, "codec": {"path": "../../codec.safetensors"}})
    args = {**TINY, "audio_vocab_size": str(BINS), "n_special": 4, "reduced_eog": 1,
            "codebook_weight": "[5, 1, 0.5, 0.1]", "exp_dir": "/nowhere", "lr": 0.05}
    pth = root / "tiny.pth"
    torch.save({"config": argparse.Namespace(**args), "phn2num": phn2num, "model": model.state_dict()}, pth)
    hub = root / "hub"  # PyTorchModelHubMixin: the args (with phn2num) as config.json
    save_weights(hub / "model.safetensors", model.state_dict())
    (hub / "config.json").write_text(json.dumps({"args": {**args, "phn2num": phn2num}}))
    return {"run": run, "pth": pth, "hub": hub, "codec": codec_file}


@pytest.fixture()
def recording(tmp_path) -> dict[str, Path]:
    """A 2 s noise recording (the codec is random anyway) and its word alignment JSON."""
    rng = np.random.default_rng(0)
    wav = tmp_path / "talk.wav"
    soundfile.write(str(wav), (0.3 * rng.standard_normal(2 * SR)).astype(np.float32), SR, subtype="PCM_16")
    align = tmp_path / "talk.json"
    align.write_text(json.dumps({"words": WORDS}))
    return {"wav": wav, "alignment": align}


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Each command's default run dir (runs/tts-<verb>-<UTC time>) lands in the test's own folder."""
    monkeypatch.chdir(tmp_path)


def invoke(*args: str):
    return runner.invoke(app, ["tts", *map(str, args)])


def test_release_pth_hub_folder_and_percli_run_load_the_same_model(weights):
    official = inference.load_voicecraft(weights["pth"], weights["codec"])
    bundles = [inference.load_voicecraft(weights["hub"], weights["codec"]),
               inference.load_voicecraft(weights["run"], None)]  # the run's codec is found through its metadata
    for bundle in bundles:
        assert bundle.phn2num == official.phn2num and bundle.model.config == official.model.config
        for (name, a), b in zip(official.model.state_dict().items(), bundle.model.state_dict().values()):
            assert torch.equal(a, b), name
        for a, b in zip(official.codec.state_dict().values(), bundle.codec.state_dict().values()):
            assert torch.equal(a, b)
    assert official.codec.frame_rate == 50 and official.codec.quantizer.bins == BINS
    assert official.silence_tokens == ()  # the release's silence ids belong to the release's codec only


@pytest.mark.parametrize("spans", [[(40, 50)], [(1, 5)], [(5, 10), (25, 30)], [(5, 10), (15, 20), (30, 35)]])
def test_edit_codes_copies_every_unedited_piece(weights, spans):
    bundle = inference.load_voicecraft(weights["pth"], weights["codec"])
    original = torch.randint(0, BINS, (4, 50), generator=torch.Generator().manual_seed(0))
    phonemes = torch.arange(10) % len(bundle.phn2num)  # 10 phonemes: at most 100 audio steps in all
    result = inference.edit_codes(bundle, phonemes, original, spans, inference.Sampling(stop_repetition=-1))
    kept = [(0, spans[0][0])] + [(b, a) for (_, b), (a, _) in zip(spans, spans[1:])] + [(spans[-1][1], 50)]
    assert result.codes.shape[1] == sum(b - a for a, b in kept) + result.new_frames
    T, (first, last) = result.codes.shape[1], (spans[0][0], 50 - spans[-1][1])
    assert torch.equal(result.codes[:, :first], original[:, :first])
    assert torch.equal(result.codes[:, T - last:], original[:, 50 - last:])
    pos = first
    for a, b in kept[1:-1]:  # the pieces between spans appear in order, unchanged
        piece = original[:, a:b]
        pos = b - a + next(p for p in range(pos, T - (b - a) + 1) if torch.equal(result.codes[:, p: p + b - a], piece))
    assert pos <= T - last


def test_edit_keeps_unedited_codes_and_writes_plausible_duration(weights, recording, tmp_path):
    out = tmp_path / "edited.wav"
    result = invoke("edit", recording["wav"], "--transcript", TRANSCRIPT, "--target", TARGET, "--checkpoint",
                    weights["pth"], "--codec", weights["codec"], "--alignment", recording["alignment"],
                    "-o", out, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # "cat" is 0.40-0.64 s; with the official 0.08 s margins the span is 0.32-0.72 s = frames 16-36
    assert summary["edit_span_frames"] == [[16, 36]] and summary["edit_type"] == ["substitution"]
    assert summary["frames"] == 100 - 20 + summary["new_frames"]
    samples, sr = soundfile.read(str(out))
    assert sr == SR and len(samples) == summary["frames"] * 320
    assert summary["duration_s"] == pytest.approx(len(samples) / SR)
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically

    # the same edit through the library: every frame outside the span is the input's code
    bundle = inference.load_voicecraft(weights["pth"], weights["codec"])
    original = inference.encode(bundle, load_audio(recording["wav"], SR))
    edited = inference.edit_codes(bundle, inference.phoneme_ids(TARGET, bundle), original, [(16, 36)],
                                  inference.Sampling(stop_repetition=-1, seed=1))
    assert edited.codes.shape[1] == summary["frames"]  # same seed, same draw as the command
    assert torch.equal(edited.codes[:, :16], original[:, :16])
    assert torch.equal(edited.codes[:, -(100 - 36):], original[:, 36:])


def test_synthesize_samples_n_continuations_as_one_batch(weights, recording, tmp_path, monkeypatch):
    seen = []

    def fake_generate(self, x, prompt, *, generator=None, batch_size=1, **kwargs):
        seen.append((generator.initial_seed(), batch_size))
        return torch.randint(0, BINS, (4, 10), generator=generator)

    monkeypatch.setattr(VoiceCraft, "generate", fake_generate)
    out = tmp_path / "say.wav"
    result = invoke("synthesize", "--prompt", recording["wav"], "--prompt-text", TRANSCRIPT, "--text", "hello there",
                    "--checkpoint", weights["run"], "-o", out, "--device", "cpu", "--seed", 7, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # the official batch keeps the first row to end; the others are dropped unfinished
    assert summary["sample_frames"] == [10] and summary["frames"] == 10 and summary["num_samples"] == 3
    assert seen == [(7, 3)]  # one batch of the default 3, from one generator seeded once
    samples, _ = soundfile.read(str(out))
    assert len(samples) == 10 * 320  # only the new speech


def test_synthesize_batch_is_reproducible_with_a_seed(weights, recording, tmp_path):
    outs = [tmp_path / f"say{i}.wav" for i in range(2)]
    for out in outs:
        result = invoke("synthesize", "--prompt", recording["wav"], "--prompt-text", TRANSCRIPT, "--text", "hello",
                        "--checkpoint", weights["pth"], "--codec", weights["codec"], "-o", out, "--device", "cpu",
                        "--num-samples", 3, "--seed", 11, "--json")
        assert result.exit_code == 0, result.output
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_synthesize_runs_the_real_sampler_with_a_cut_prompt(weights, recording, tmp_path):
    out = tmp_path / "say.wav"
    result = invoke("synthesize", "--prompt", recording["wav"], "--prompt-text", TRANSCRIPT, "--text", "hello there",
                    "--cut-off", 0.5, "--alignment", recording["alignment"], "--checkpoint", weights["pth"],
                    "--codec", weights["codec"], "-o", out, "--device", "cpu", "--num-samples", 1, "--include-prompt",
                    "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # first word end after 0.5 s followed by a 0.04 s pause: "cat" (0.64 s), cut 2/3 of the margin later
    assert summary["prompt_text"] == "the cat" and summary["prompt_s"] == pytest.approx(0.64 + 0.04 * 2 / 3, abs=1e-4)
    assert summary["prompt_frames"] == 34 and summary["sample_frames"] == [summary["frames"]]
    assert soundfile.info(str(out)).frames == (34 + summary["frames"]) * 320


@pytest.mark.parametrize("case", ["no_weights", "missing_weights", "identical", "bad_audio", "no_alignment",
                                  "output_exists", "alignment_past_audio", "nan_alignment"])
def test_errors_name_the_fix(case, weights, recording, tmp_path, monkeypatch):
    monkeypatch.delenv("PERCLI_VOICECRAFT_CHECKPOINT", raising=False)
    monkeypatch.delenv("PERCLI_VOICECRAFT_CODEC", raising=False)
    audio, target = recording["wav"], TARGET
    extra = ["--checkpoint", weights["pth"], "--codec", weights["codec"]]
    expected = {"no_weights": "pyp1/VoiceCraft", "missing_weights": "giga830M.pth", "identical": "identical",
                "bad_audio": "cannot read audio", "no_alignment": "--alignment", "output_exists": "--overwrite",
                # the span of "cat" (0.40-0.64 s in WORDS) and the recording's length
                "alignment_past_audio": "span 3.40-3.64 s (from the timings of 'cat') does not lie within the 2.00 s",
                "nan_alignment": "span nan-0.64 s (from the timings of 'cat') does not lie within the 2.00 s"}[case]
    if case == "no_weights":
        extra = []
    elif case == "missing_weights":
        extra = ["--checkpoint", tmp_path / "giga830M.pth", "--codec", tmp_path / "encodec_4cb2048_giga.th"]
    elif case == "identical":
        target = f"  {TRANSCRIPT} "
    elif case == "bad_audio":
        audio = tmp_path / "broken.wav"
        audio.write_bytes(b"RIFF not really a wave file")
    elif case == "no_alignment":
        def no_aligner(*args, **kwargs):
            raise inference.AlignmentError("the offline aligner found no words")

        monkeypatch.setattr(inference, "align_offline", no_aligner)
    elif case == "output_exists":
        (tmp_path / "out.wav").write_bytes(b"keep me")
    elif case in ("alignment_past_audio", "nan_alignment"):  # another recording's timings; a NaN start
        shift = 3.0 if case == "alignment_past_audio" else 0.0
        words = [{**w, "start": w["start"] + shift, "end": w["end"] + shift} for w in WORDS]
        if case == "nan_alignment":
            words[1]["start"] = float("nan")  # json writes NaN, which json (and whisperX output) reads
        (tmp_path / "bad.json").write_text(json.dumps({"words": words}))
        extra += ["--alignment", tmp_path / "bad.json"]
    result = invoke("edit", audio, "--transcript", TRANSCRIPT, "--target", target, "-o", tmp_path / "out.wav",
                    "--device", "cpu", *extra)
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "out.wav").exists() or (tmp_path / "out.wav").read_bytes() == b"keep me"
