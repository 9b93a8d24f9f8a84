"""`percli eval tts`: WER/CER counts, MCD, the unedited-region mapping of an edit, speaker similarity, and the
command on embedded espeak-ng utterances (pocketsphinx), a corrupt file and a tts run dir."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile
import yaml
from typer.testing import CliRunner

from percli.cli import app
from percli.tts import speech_metrics as sm
from percli.tts import speech_models
from tests.summary_schema import assert_common_schema

runner = CliRunner()
SR = sm.MCD_RATE


@pytest.mark.parametrize(("reference", "hypothesis", "counts"), [
    ("the cat sat on the mat", "the cat sat on the mat", (0, 0, 0, 6)),
    ("the cat sat on the mat", "the dog sat on the mat", (1, 0, 0, 6)),
    ("the cat sat on the mat", "the cat sat on mat", (0, 1, 0, 6)),
    ("the cat sat", "the big cat sat down", (0, 0, 2, 3)),
    ("The Cat, sat!", "the cat sat", (0, 0, 0, 3)),  # case and punctuation do not count
    ("a b c d", "x y", (2, 2, 0, 4)),
    ("", "hello", (0, 0, 1, 0)),
])
def test_word_errors_match_hand_counts(reference, hypothesis, counts):
    got = sm.word_errors(reference, hypothesis)
    assert (got.substitutions, got.deletions, got.insertions, got.reference_length) == counts
    assert got.rate == (sum(counts[:3]) / counts[3] if counts[3] else None)


def test_char_errors_and_corpus_rate_sum_errors_over_reference_lengths():
    got = sm.char_errors("cat sat", "cut sat")  # 7 characters with the space, one substituted
    assert (got.substitutions, got.deletions, got.insertions, got.reference_length) == (1, 0, 0, 7)
    corpus = sm.word_errors("a b c d", "a b c d") + sm.word_errors("e f", "x")  # 0/4 and 2/2
    assert corpus.rate == pytest.approx(2 / 6)  # summed, not the mean of rows (0.5)


def test_text_normalisation_keeps_apostrophes_and_numbers():
    assert sm.normalize_text("Don’t STOP -- well-known 3 cats!") == ["don't", "stop", "well", "known", "3", "cats"]


def _voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a gliding harmonic tone with a syllable-rate envelope and a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.5 * t)
    tone = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / SR) / k for k in range(1, 6))
    noise = 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    return ((0.2 * tone + noise) * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_mcd_is_zero_for_identical_signals_and_grows_with_added_noise():
    x = _voiced(1.5)
    total, frames = sm.aligned_mcd(x, x)
    assert total == 0.0 and frames > 200
    rng = np.random.default_rng(1)
    mcds = [sm.aligned_mcd(x + s * rng.standard_normal(len(x)).astype(np.float32), x)[0] / frames
            for s in (0.001, 0.01, 0.1)]
    assert 0 < mcds[0] < mcds[1] < mcds[2]
    assert sm.dtw_mcd(x, x)[0] == 0.0


def test_unedited_regions_are_aligned_at_the_start_and_at_the_end():
    # 1.0-1.5 s of a 3 s edit replaced 0.5 s of a 2.5 s original by 0.5 s more: after it, 1.5 s aligned at the end
    assert sm.unedited_regions(3.0, 2.5, [(1.0, 2.0)]) == [((0.0, 1.0), (0.0, 1.0)), ((2.0, 3.0), (1.5, 2.5))]
    assert sm.unedited_regions(3.0, 2.5, [(1.2, 1.4), (0.5, 0.8)])[0] == ((0.0, 0.5), (0.0, 0.5))  # outer spans


def test_an_inserted_segment_leaves_the_unedited_mcd_near_zero_while_the_whole_signal_differs():
    original = _voiced(2.0)
    inserted = 0.3 * np.sin(2 * np.pi * 600 * np.arange(SR // 2) / SR).astype(np.float32)
    edited = np.concatenate([original[:SR], inserted, original[SR:]])  # 0.5 s inserted at 1.0 s
    unedited, frames = sm.edit_mcd(edited, original, [(1.0, 1.5)])
    whole_total, whole_frames = sm.aligned_mcd(edited, original)  # 1:1 from the start, as if nothing moved
    assert frames > 300 and unedited < 0.01
    assert whole_total / whole_frames > 3.0
    assert sm.dtw_mcd(edited, original)[0] > 1.0  # DTW cannot skip the inserted half second


def test_dtw_path_follows_a_repeated_frame():
    a = np.array([[0.0], [1.0], [2.0]])
    b = np.array([[0.0], [1.0], [1.0], [2.0]])
    i, j = sm.dtw_path(np.abs(a[:, None, 0] - b[None, :, 0]))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 0), (1, 1), (1, 2), (2, 3)]


# --------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from percli.tts.corpus import build_corpus

    manifest = build_corpus(tmp_path_factory.mktemp("corpus"), 6)
    return [json.loads(line) for line in manifest.read_text().splitlines()], manifest.parent


def _manifest(folder, rows) -> str:
    path = folder / "generated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_eval_tts_on_embedded_utterances_counts_a_corrupt_file(corpus, tmp_path):
    records, folder = corpus
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not audio")
    rows = [{"id": f"u{i}", "generated": str(folder / r["audio"]), "reference": str(folder / r["audio"]),
             "transcript": r["text"]} for i, r in enumerate(records[:4])]
    rows += [{"id": "bad", "generated": "corrupt.wav", "transcript": "a red box"},  # relative to the manifest
             {"id": "no-text", "generated": str(folder / records[0]["audio"])}]
    out = tmp_path / "run"
    result = runner.invoke(app, ["eval", "tts", _manifest(tmp_path, rows), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert_common_schema(summary)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 4 and summary["skipped_audio"] == 1 and summary["bad_records"] == 1
    (skipped,) = summary["skipped_audio_examples"]
    assert skipped["id"] == "bad" and skipped["file"] == str(tmp_path / "corrupt.wav") and skipped["reason"]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [f"u{i}" for i in range(4)]
    words = summary["word_errors"]
    assert summary["metrics"]["wer"] == pytest.approx(
        (words["substitutions"] + words["deletions"] + words["insertions"]) / words["reference_length"])
    # pocketsphinx's generic English model on espeak-ng voices: a weak recogniser (0.84 on these 4), but its
    # hypotheses match their own transcripts better than the other rows' transcripts
    assert summary["metrics"]["wer"] < 0.95
    own = np.mean([sm.word_errors(r["transcript"], r["hypothesis"]).rate for r in results])

    other = np.mean([sm.word_errors(results[(i + 1) % 4]["transcript"], r["hypothesis"]).rate
                     for i, r in enumerate(results)])
    assert own < other - 0.05  # 0.86 against 1.01
    assert summary["metrics"]["mcd_db"] == 0.0 and summary["mcd_mode"] == ["whole utterance (DTW)"]
    if speech_models.resemblyzer_weights() is not None:  # the speaker extra is installed
        assert summary["metrics"]["speaker_similarity"] == pytest.approx(1.0, abs=1e-5)


def test_without_a_speaker_model_the_similarity_is_null_with_the_reason(corpus, tmp_path, monkeypatch):
    records, folder = corpus
    monkeypatch.setattr(speech_models, "resemblyzer_weights", lambda: None)
    rows = [{"generated": str(folder / records[0]["audio"]), "prompt": str(folder / records[1]["audio"]),
             "transcript": records[0]["text"]}]
    result = runner.invoke(app, ["eval", "tts", _manifest(tmp_path, rows), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metrics"]["speaker_similarity"] is None and summary["speaker_model"] is None
    assert "no speaker model" in summary["speaker_similarity_reason"]
    assert "percli[speaker]" in summary["speaker_similarity_reason"]
    assert summary["metrics"]["mcd_db"] is None and summary["mcd_reason"] == "no row has a reference recording"
    named = runner.invoke(app, ["eval", "tts", _manifest(tmp_path, rows), "--speaker-model", str(tmp_path / "nope")])
    assert named.exit_code == 2 and "no such file" in named.output


@pytest.mark.skipif(speech_models.resemblyzer_weights() is None, reason="the speaker extra (resemblyzer) is absent")
def test_speaker_similarity_of_two_espeak_voices_exceeds_that_of_voice_and_tone(corpus):
    records, folder = corpus
    from percli.core.data.audio import load_audio

    model = speech_models.load_speaker_model("auto", "cpu")
    emb = [model.embed(load_audio(folder / r["audio"])[0].numpy()) for r in records[:3]]
    shifted = _voiced(2.0)
    assert speech_models.cosine(emb[0], emb[0]) == pytest.approx(1.0, abs=1e-5)
    assert speech_models.cosine(emb[0], emb[1]) > speech_models.cosine(emb[0], model.embed(shifted))


def test_a_tts_edit_run_dir_is_scored_on_its_unedited_regions(corpus, tmp_path):
    records, folder = corpus
    original, _ = soundfile.read(str(folder / records[0]["audio"]), dtype="float32")
    cut = len(original) // 2
    edited = np.concatenate([original[:cut], _voiced(0.4), original[cut:]])  # 0.4 s said at the middle
    run = tmp_path / "tts-edit"
    run.mkdir()
    soundfile.write(str(run / "edited.wav"), edited, SR, subtype="FLOAT")
    start, end = cut / SR - 0.1, cut / SR + 0.1  # the span in the original, as `tts edit` records it
    (run / "config.yaml").write_text(yaml.safe_dump({"audio": str(folder / records[0]["audio"]),
                                                     "transcript": records[0]["text"], "target": records[0]["text"]}))
    (run / "summary.json").write_text(json.dumps({
        "status": "completed", "output": str(run / "edited.wav"), "edit_span_s": [[start, end]],
        "duration_s": len(edited) / SR, "original_duration_s": len(original) / SR}))
    from percli.core.data.shards import BadRecords
    from percli.tts.eval_job import read_rows

    (row,) = read_rows(run, BadRecords())
    assert row.reference == folder / records[0]["audio"] and row.edits[0] == pytest.approx((start, end + 0.4))
    result = runner.invoke(app, ["eval", "tts", str(run), "--speaker-model", "none", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mcd_mode"] == ["unedited regions (1:1)"] and summary["metrics"]["mcd_db"] < 0.01
    assert summary["speaker_similarity_reason"] == "eval.speaker_model=none"


def test_a_hugging_face_recogniser_without_transformers_says_how_to_install_it(tmp_path, monkeypatch):
    folder = tmp_path / "whisper"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(speech_models.MissingModel, match="pip install transformers"):
        speech_models.load_recognizer(str(folder), "cpu")
    manifest = _manifest(tmp_path, [{"generated": "x.wav", "transcript": "hello"}])
    result = runner.invoke(app, ["eval", "tts", manifest, "--asr", str(folder)])
    assert result.exit_code == 2 and "pip install transformers" in result.output


def test_missing_manifest_is_a_config_error():
    result = runner.invoke(app, ["eval", "tts", "--dry-run"])
    assert result.exit_code == 2 and "manifest: not set" in result.output


def test_manifest_rows_resolve_paths_and_count_malformed_edits(tmp_path):
    from percli.core.data.shards import BadRecords
    from percli.tts.eval_job import read_rows

    (tmp_path / "rows.csv").write_text("id,generated,reference,transcript,edit\n"
                                       "a,gen/a.wav,/abs/ref.wav,hello there,0.5-1.25\n"
                                       "b,gen/b.wav,,bye,\n"
                                       "c,gen/c.wav,,bye,2-1\n")
    bad = BadRecords()
    a, b = read_rows(tmp_path / "rows.csv", bad)
    assert a.generated == tmp_path / "gen" / "a.wav" and str(a.reference) == "/abs/ref.wav"
    assert a.edits == [(0.5, 1.25)] and b.edits is None and b.reference is None
    assert bad.count == 1 and "start <= end" in bad.examples[0]["reason"]
    (tmp_path / "rows.jsonl").write_text(json.dumps({"audio": "x.wav", "text": "hi", "edit": [
        {"start": 2, "end": 3}, [0.1, 0.2]]}) + "\n")
    (row,) = read_rows(tmp_path / "rows.jsonl", BadRecords())
    assert row.edits == [(0.1, 0.2), (2.0, 3.0)] and row.transcript == "hi"


def test_a_speaker_model_file_that_is_not_ge2e_weights_is_refused(tmp_path):
    import torch

    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(speech_models.MissingModel, match="not GE2E speaker-encoder weights"):
        speech_models.load_speaker_model(str(tmp_path / "other.pt"), "cpu")


def test_a_ge2e_weights_file_embeds_any_utterance_as_a_unit_vector(tmp_path):
    """The GE2E path without the speaker extra: random weights of Resemblyzer's layout, saved as its file is."""
    import torch

    torch.manual_seed(0)
    state = {**speech_models.GE2EEncoder().state_dict(), "similarity_weight": torch.ones(1)}
    torch.save({"model_state": state}, tmp_path / "ge2e.pt")
    model = speech_models.load_speaker_model(str(tmp_path / "ge2e.pt"), "cpu")
    t = np.arange(2 * SR) / SR
    voice = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    a, b = model.embed(voice), model.embed(voice[: SR + SR // 2])
    assert a.shape == (256,) and abs(np.linalg.norm(a) - 1) < 1e-5
    assert speech_models.cosine(a, a) == pytest.approx(1.0) and -1.0 <= speech_models.cosine(a, b) <= 1.0
    assert model.name == f"ge2e:{tmp_path / 'ge2e.pt'}"
