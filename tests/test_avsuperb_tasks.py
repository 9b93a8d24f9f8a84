"""AV-SUPERB task specs and readers, each on a tiny hand-made layout with a corrupt and a missing file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from percli.avsuperb.minibench import write_video
from percli.avsuperb.tasks import LRS3_VOCAB, TASKS, normalize_transcript, read_task

# Values of the official downstream_tasks/<task>/config.yaml (av_asr/config_best.yaml for LRS3).
OFFICIAL = {
    "as20k": ("AdamW", 1e-3, 5000, 2, 50, 1.0),
    "vggsound": ("Adam", 1e-5, 5000, 2, 64, 1.0),
    "ks": ("AdamW", 1e-3, 50000, 16, 2, 1.0),
    "ucf101": ("Adam", 1e-3, 30000, 8, 2, 1.0),
    "iemocap": ("Adam", 1e-3, 50000, 4, 8, 1.0),
    "voxceleb": ("AdamW", 1e-4, 20000, 16, 1, 1000.0),
    "lrs3": ("AdamW", 1e-3, 20000, 32, 1, 1.0),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_task_defaults_match_official_configs(name):
    spec = TASKS[name]
    assert (spec.optimizer, spec.lr, spec.steps, spec.batch_size, spec.accumulate, spec.grad_clip) == OFFICIAL[name]
    assert spec.features == "fusion"  # the official default feature selection is fusion_feats


def test_task_kinds_metrics_and_extras():
    assert {n: (t.kind, t.metric) for n, t in TASKS.items()} == {
        "as20k": ("multilabel", "map"), "vggsound": ("classification", "accuracy"),
        "ks": ("classification", "accuracy"), "ucf101": ("classification", "accuracy"),
        "iemocap": ("classification", "accuracy"), "voxceleb": ("speaker", "eer"), "lrs3": ("asr", "cer")}
    assert TASKS["lrs3"].warmup_steps == 1500 and TASKS["voxceleb"].crop_samples == 64000
    assert not TASKS["voxceleb"].higher_is_better and not TASKS["lrs3"].higher_is_better


# ------------------------------------------------------------------------------------------ tiny files


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """One tiny mp4 (AAC audio), one avi (PCM audio), one wav and one corrupt file to copy around."""
    folder = tmp_path_factory.mktemp("media")
    t = np.arange(8000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    frames = np.full((4, 16, 16, 3), 120, dtype=np.uint8)
    write_video(folder / "clip.mp4", frames, 4, tone)
    write_video(folder / "clip.avi", frames, 4, tone)
    soundfile.write(folder / "clip.wav", tone, 16000)
    (folder / "corrupt").write_bytes(b"this is not a media file" * 10)
    return folder


def _put(media: Path, dest: Path, kind: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(media / kind, dest)


def _check(out, *, train: int, test: int, bad_rows: int, dev: int | None = None):
    """Split sizes and read-time bad count; the last test clip is the corrupt one and reads as None."""
    assert len(out["train"]) == train and len(out["test"]) == test and out["bad"] == bad_rows
    assert (out["dev"] is None) if dev is None else len(out["dev"]) == dev
    sample = out["train"][0]
    assert sample["audio"].ndim == 1 and sample["audio"].dtype.is_floating_point and sample["sample_rate"] == 16000
    assert out["test"][len(out["test"]) - 1] is None
    assert len(out["test"].bad) == 1


# --------------------------------------------------------------------------------------------- readers


def test_as20k_reader(tmp_path, media):
    root = tmp_path / "as20k"
    root.mkdir()
    (root / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/a,"Speech"\n1,/m/b,Dog\n2,/t/c,Car\n')
    (root / "audioset_train.csv").write_text(
        "# AudioSet header line\nv1, 0.000, 10.000,0,2\nv2, 30.000, 40.000, \"/m/b,/t/c\"\n"
        "gone, 0.000, 10.000,1\nv3, 0.000, 10.000,notalabel\nv4, 0.000, 10.000,7\n")
    (root / "audioset_test.csv").write_text("e1, 0.000, 10.000,1\ne2, 0.000, 10.000,0\n")
    _put(media, root / "balanced_train/v1.mp4", "clip.mp4")
    _put(media, root / "balanced_train/v2.wav", "clip.wav")
    _put(media, root / "eval/e1.mp4", "clip.mp4")
    _put(media, root / "eval/e2.mp4", "corrupt")
    out = read_task("as20k", root)
    _check(out, train=2, test=2, bad_rows=3)  # missing file, unparsable label, label out of range
    assert out["classes"] == ["Speech", "Dog", "Car"]
    assert out["train"].targets() == [[0, 2], [1, 2]]
    assert out["train"][0]["video"].shape[1:] == (16, 16, 3) and out["train"][0]["fps"] == pytest.approx(4.0)
    assert out["train"][1]["video"] is None  # a wav clip is audio-only


def test_vggsound_reader(tmp_path, media):
    root = tmp_path / "vgg"
    root.mkdir()
    (root / "labels.csv").write_text('"dog, barking",0\ncat meowing,1\n')
    (root / "vggsound_train.csv").write_text('y1,5,0\ny2,12,"dog, barking"\ny3,0,cow\nmissing,0,1\n')
    (root / "vggsound_test.csv").write_text("t1,0,1\nt2,0,0\n")
    _put(media, root / "video/y1_000005.mp4", "clip.mp4")
    _put(media, root / "video/y2_000012.mp4", "clip.mp4")
    _put(media, root / "video/t1_000000.mp4", "clip.mp4")
    _put(media, root / "video/t2_000000.mp4", "corrupt")
    out = read_task("vggsound", root)
    _check(out, train=2, test=2, bad_rows=2)  # unknown class name, missing file
    assert out["classes"] == ["dog, barking", "cat meowing"] and out["train"].targets() == [0, 0]
    assert out["train"][0]["video"].dtype.is_floating_point is False  # uint8 frames


def test_ks_reader_and_modalities(tmp_path, media):
    root = tmp_path / "ks"
    root.mkdir()
    (root / "train_data_path.csv").write_text("train/a.mp4,0\ntrain/b.mp4,1\ntrain/gone.mp4,1\ntrain/c.mp4,x\n")
    (root / "test_data_path.csv").write_text("test/a.mp4,1\ntest/bad.mp4,0\n")
    for rel in ("train/a.mp4", "train/b.mp4", "test/a.mp4"):
        _put(media, root / rel, "clip.mp4")
    _put(media, root / "test/bad.mp4", "corrupt")
    out = read_task("ks", root)
    _check(out, train=2, test=2, bad_rows=2)
    assert out["classes"] == ["0", "1"]  # no classes.txt: indices
    audio_only = read_task("ks", root, modalities=("audio",))["train"][0]
    video_only = read_task("ks", root, modalities=("video",))["train"][0]
    assert audio_only["video"] is None and audio_only["audio"] is not None
    assert video_only["audio"] is None and video_only["video"].shape[0] >= 4


def test_ucf101_reader(tmp_path, media):
    root = tmp_path / "ucf"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Archery\n2 Bowling\n")
    (lists / "trainlist01.txt").write_text(
        "Archery/v_Archery_g01_c01.avi 1\nBowling/v_Bowling_g01_c01.avi 2\nSurfing/v_Surfing_g01_c01.avi 3\n")
    (lists / "testlist01.txt").write_text("Bowling/v_Bowling_g02_c01.avi\nArchery/v_Archery_g09_c01.avi\n"
                                          "Archery/v_Archery_g02_c01.avi\n")
    for rel in ("Archery/v_Archery_g01_c01.avi", "Bowling/v_Bowling_g01_c01.avi", "Bowling/v_Bowling_g02_c01.avi"):
        _put(media, root / "UCF-101" / rel, "clip.avi")
    _put(media, root / "UCF-101/Archery/v_Archery_g02_c01.avi", "corrupt")
    out = read_task("ucf101", root)
    _check(out, train=2, test=2, bad_rows=2)  # unknown class, missing test video
    assert out["classes"] == ["Archery", "Bowling"] and out["test"].targets() == [1, 0]
    assert out["test"][0]["id"] == "v_Bowling_g02_c01"


def test_iemocap_reader(tmp_path, media):
    root = tmp_path / "iemocap"
    for s, utts in ((1, [("neu", "F000"), ("sad", "F001"), ("ang", "F002")]),
                    (2, [("neu", "F000"), ("exc", "F001"), ("fru", "F002"), ("hap", "F003"), ("ang", "M004"),
                         ("sad", "M005"), ("neu", "M006")])):
        dialog = f"Ses0{s}F_impro01"
        lines = ["% header", *(f"[1.0 - 2.0]\t{dialog}_{u}\t{e}\t[2.5, 2.5, 2.5]" for e, u in utts)]
        label_dir = root / f"Session{s}/dialog/EmoEvaluation"
        label_dir.mkdir(parents=True)
        (label_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        for _, u in utts:
            if (s, u) != (2, "M006"):  # its wav is missing
                kind = "corrupt" if (s, u) == (1, "F002") else "clip.wav"
                _put(media, root / f"Session{s}/sentences/wav/{dialog}/{dialog}_{u}.wav", kind)
    _put(media, root / "clips/Session1/Ses01F_impro01/Ses01F_impro01_F000.mp4", "clip.mp4")
    out = read_task("iemocap", root)
    # Session 2: 5 of 7 usable (fru is not a task class, M006 has no wav): 4 train + 1 dev.
    _check(out, train=4, test=3, bad_rows=1, dev=1)
    assert out["classes"] == ["neu", "hap", "ang", "sad"]
    assert sorted(out["train"].targets() + out["dev"].targets()) == [0, 1, 1, 2, 3]  # exc merged into hap
    assert out["test"].targets() == [0, 3, 2]
    assert out["test"][0]["video"] is not None and out["test"][1]["video"] is None  # clip only for F000


def test_voxceleb_reader(tmp_path, media):
    root = tmp_path / "vox"
    root.mkdir()
    train = ["dev/mp4/id02/v1/00001.mp4", "dev/mp4/id01/v1/00001.mp4", "dev/mp4/id01/v2/00001.mp4"]
    (root / "train_5vid.lst").write_text(f"id02,0,{train[0]}\nid01,1,{train[1]}\nid01,1,{train[2]}\nbroken line\n")
    (root / "valid_5vid.lst").write_text("id01,1,dev/mp4/id01/v3/00001.mp4\nid09,1,dev/mp4/id09/v3/00001.mp4\n")
    test = ["test/mp4/id05/a/1.mp4", "test/mp4/id05/b/1.mp4", "test/mp4/id06/a/1.mp4", "test/mp4/id06/b/1.mp4"]
    (root / "test.lst").write_text(
        f"1,{test[0]},{test[1]}\n0,{test[0]},{test[2]}\n1,{test[2]},{test[3]}\n0,{test[1]},test/mp4/gone.mp4\n")
    for rel in [*train, "dev/mp4/id01/v3/00001.mp4", *test[:3]]:
        _put(media, root / rel, "clip.mp4")
    _put(media, root / test[3], "corrupt")
    out = read_task("voxceleb", root)
    # bad: the broken line, the unknown dev speaker id09, the missing test file.
    _check(out, train=3, test=4, bad_rows=3, dev=1)
    assert out["classes"] == ["id01", "id02"] and out["train"].targets() == [1, 0, 0]
    assert out["test"].targets() == [-1] * 4
    assert out["trials"] == [(test[0], test[1], True), (test[0], test[2], False), (test[2], test[3], True)]


@pytest.mark.parametrize("layout", ["manifest", "folders"])
def test_lrs3_reader(tmp_path, media, layout):
    root = tmp_path / "lrs3"
    clips = {"trainval/t1/00001.mp4": "HELLO|THERE|", "trainval/t1/00002.mp4": "IT'S|ME|",
             "test/t2/00001.mp4": "GOOD|BYE|", "test/t2/00002.mp4": "BROKEN|"}
    for rel, text in clips.items():
        _put(media, root / rel, "corrupt" if "BROKEN" in text else "clip.mp4")
        if layout == "folders":
            (root / rel).with_suffix(".txt").write_text(f"Text:  {text.replace('|', ' ').strip()}\nConf:  3\n")
    if layout == "manifest":
        items = [{"path": rel, "text": text} for rel, text in clips.items()]
        (root / "train_set_metadata_clean.json").write_text(json.dumps(items[:2] + [{"path": "trainval/x.mp4"}]))
        (root / "test_set_metadata_clean.json").write_text(json.dumps(items[2:]))
    else:
        _put(media, root / "trainval/t1/00003.mp4", "clip.mp4")  # no transcript next to it
    out = read_task("lrs3", root)
    _check(out, train=2, test=2, bad_rows=1)
    assert out["train"].targets() == ["HELLO THERE", "IT'S ME"] and out["vocab"] == list(LRS3_VOCAB)


def test_normalize_transcript():
    assert normalize_transcript("it's|ten  KM|2|") == "IT'S TEN KM"


def test_read_task_errors_name_the_problem(tmp_path):
    with pytest.raises(KeyError, match="unknown AV-SUPERB task 'nope'"):
        read_task("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        read_task("vggsound", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_task("ks", tmp_path / "absent")
    with pytest.raises(ValueError, match="modalities"):
        (tmp_path / "ks").mkdir()
        (tmp_path / "ks" / "train_data_path.csv").write_text("a.mp4,0\n")
        (tmp_path / "ks" / "test_data_path.csv").write_text("a.mp4,0\n")
        read_task("ks", tmp_path / "ks", modalities=("smell",))
