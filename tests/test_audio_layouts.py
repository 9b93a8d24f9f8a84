"""ESC-50 and Speech Commands trees: the readers, the writers of the embedded sounds, and `finetune audio-mae` on a
held-out ESC-50 fold."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data import AudioDataset, build_dataset
from percli.core.data.audio_layouts import (
    SPEECH_COMMANDS_LISTS,
    write_esc50_layout,
    write_speech_commands_layout,
)
from percli.core.data.embedded_audio import CLASSES

runner = CliRunner()


def _embedded(n):
    return build_dataset("embedded", kind="audio", num_clips=n)


@pytest.fixture
def esc50(tmp_path):
    """40 embedded clips (5 per class) as an ESC-50 tree: 8 clips, one per class, in each of the 5 folds."""
    return write_esc50_layout(tmp_path / "ESC-50-master", _embedded(40))


@pytest.fixture
def speech_commands(tmp_path):
    """80 embedded clips (10 per class) as a Speech Commands tree: per class 1 testing, 1 validation, 8 training."""
    return write_speech_commands_layout(tmp_path / "speech_commands", _embedded(80))


def _fold_of(item):
    return int(Path(item[0]).name.split("-", 1)[0])  # ESC-50 names: {fold}-{source}-{take}-{target}.wav


def test_esc50_fold_trains_on_the_other_folds_and_counts_missing_files(esc50):
    missing = next((esc50 / "audio").glob("1-*.wav"))
    missing.unlink()
    held_out = AudioDataset(esc50, split="validation", fold=1)
    training = AudioDataset(esc50, split="train", fold=1)
    every = AudioDataset(esc50, split="validation")
    assert held_out.classes == training.classes == list(CLASSES)
    assert {_fold_of(item) for item in held_out.items} == {1} and len(held_out) == 7
    assert {_fold_of(item) for item in training.items} == {2, 3, 4, 5} and len(training) == 32
    assert len(every) == 39
    assert held_out.bad_records.count == every.bad_records.count == 1 and training.bad_records.count == 0
    assert str(missing) in held_out.bad_records.examples[0]["reason"]
    # labels follow the CSV's target column, whichever folds are read
    assert all(item[1] == [int(Path(item[0]).stem.rsplit("-", 1)[1])] for item in training.items)


def test_speech_commands_splits_follow_the_lists_and_ignore_background_noise(speech_commands):
    testing_list = speech_commands / SPEECH_COMMANDS_LISTS["testing"]
    with testing_list.open("a") as f:
        f.write("pure_tone/gone_nohash_0.wav\n_background_noise_/white_noise.wav\n")
    splits = {split: AudioDataset(speech_commands, split=split) for split in ("train", "validation", "testing")}
    assert (speech_commands / "_background_noise_" / "white_noise.wav").is_file()
    assert all(d.classes == sorted(CLASSES) for d in splits.values())
    assert {split: len(d) for split, d in splits.items()} == {"train": 64, "validation": 8, "testing": 8}
    paths = {split: {p for p, _ in d.items} for split, d in splits.items()}
    assert not (paths["train"] & paths["validation"]) and not (paths["train"] & paths["testing"])
    assert not any("_background_noise_" in p for p in paths["train"])
    assert splits["testing"].bad_records.count == 2 and splits["validation"].bad_records.count == 0


def test_keyword_spotting_adds_silence_windows_and_a_tenth_of_unknown_words(speech_commands):
    keywords = list(CLASSES[:3])
    train = AudioDataset(speech_commands, split="train", keywords=keywords)
    assert train.classes == sorted([*keywords, "_silence_", "_unknown_"])
    labels = [train.classes[item[1][0]] for item in train.items]
    # 8 training clips per keyword; unknown and silence are each a tenth of the 24 keyword clips
    assert {name: labels.count(name) for name in set(labels)} == {**{k: 8 for k in keywords}, "_unknown_": 2,
                                                                  "_silence_": 2}
    silence = [i for i, name in enumerate(labels) if name == "_silence_"]
    assert set(train.starts) == set(silence)
    assert all(train.waveform(i).shape == (1, train.sample_rate) for i in silence)
    assert all("_background_noise_" in train.items[i][0] for i in silence)
    again = AudioDataset(speech_commands, split="train", keywords=keywords)
    assert again.items == train.items and again.starts == train.starts  # the same draw in every process
    testing = AudioDataset(speech_commands, split="testing", keywords=keywords)
    assert testing.classes == train.classes and not {p for p, _ in testing.items if "noise" not in p} & {
        p for p, _ in train.items if "noise" not in p}


def test_an_esc50_csv_is_a_source_as_its_root_is(esc50):
    root = AudioDataset(esc50, split="validation", fold=1)
    csv_file = AudioDataset(esc50 / "meta" / "esc50.csv", split="validation", fold=1)
    assert csv_file.items == root.items and csv_file.classes == root.classes
    lines = (esc50 / "meta" / "esc50.csv").read_text().splitlines()
    subset = esc50 / "esc10.csv"  # a subset of the rows kept in the root folder, beside audio/
    subset.write_text("\n".join([lines[0], *(line for line in lines[1:] if line.startswith("1-"))]) + "\n")
    held_out = AudioDataset(subset, split="validation", fold=1)
    assert held_out.items == root.items


@pytest.mark.parametrize(("layout", "overrides", "message"), [
    ("esc50", ["data.fold=7"], "data.fold: 7 is not a fold"),
    ("speech_commands", ["data.fold=1"], "meta/esc50.csv"),
    ("speech_commands", ["data.eval_split=testing"], "data.eval_split"),
    ("speech_commands", ["data.keywords=[tone]"], "data.keywords: tone not word folder(s)"),
    ("speech_commands", ["data.keywords=[yes]"], "quote the word"),
    ("esc50", ["data.keywords=[tone]"], "data.keywords: data.source="),
])
def test_layout_keys_that_do_not_fit_the_data_are_config_errors(layout, overrides, message, request):
    root = request.getfixturevalue(layout)
    (root / SPEECH_COMMANDS_LISTS["testing"]).unlink(missing_ok=True)
    result = runner.invoke(app, ["finetune", "audio-mae", "--dry-run", f"data.source={root}", *overrides])
    assert result.exit_code == 2 and message in result.output, result.output


def test_finetune_on_one_esc50_fold_trains_on_four_folds_and_evaluates_on_it(esc50, tmp_path):
    result = runner.invoke(app, [
        "finetune", "audio-mae", "--run-dir", str(tmp_path / "run"), "--json", f"data.source={esc50}", "data.fold=1",
        "model.kwargs={embed_dim: 16, depth: 2, num_heads: 2}", "data.target_length=128", "data.num_mel_bins=64",
        "train.num_workers=0", "train.batch_size=8", "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["classes"] == list(CLASSES) and out["multilabel"] is False
    assert out["train_clips"] == 32 and out["metrics"]["eval/count"] == 8
