"""The seven AV-SUPERB tasks: their training defaults and readers for the layouts users already have.

Each task's optimiser, steps, batch size, gradient accumulation and clipping come from the official
``downstream_tasks/<task>/config.yaml`` of AV-SUPERB (Tseng et al., ICASSP 2024). Each reader
documents the folder it expects under ``root``; every layout is the dataset's own (or the
manifest AV-SUPERB ships for it). Rows naming a missing file, and malformed rows, are counted in
``bad`` at read time; files that exist but do not decode are counted when read (see
:class:`percli.avsuperb.clips.ClipDataset`).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from percli.avsuperb.clips import MODALITIES, Clip, ClipDataset

AUDIO_SUFFIXES = (".wav", ".flac")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")
# LRS3 transcripts are upper-case letters and apostrophes; " " separates words (official char.dict uses "|").
LRS3_VOCAB: tuple[str, ...] = (" ", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'")
IEMOCAP_CLASSES: tuple[str, ...] = ("neu", "hap", "ang", "sad")


@dataclass(frozen=True)
class TaskSpec:
    """One AV-SUPERB task and its official training defaults.

    Attributes:
        name: Task name on the command line.
        kind: ``classification``, ``multilabel``, ``speaker`` or ``asr`` (selects the head).
        metric: Headline metric (``map``, ``accuracy``, ``eer``, ``cer``; ASR also reports WER).
        optimizer: ``Adam`` or ``AdamW``.
        lr: Learning rate.
        steps: Optimiser steps.
        batch_size: Training batch size (per step, before accumulation).
        accumulate: Gradient accumulation steps.
        grad_clip: Gradient-norm clipping.
        features: Default feature selection (the official default is ``fusion_feats``).
        warmup_steps: Linear warm-up steps (LRS3 only; 0 = constant learning rate).
        crop_samples: Random audio crop for training clips (VoxCeleb2 ``max_timestep``), None = whole clip.
        higher_is_better: Direction of ``metric``.
    """

    name: str
    kind: str
    metric: str
    optimizer: str
    lr: float
    steps: int
    batch_size: int
    accumulate: int
    grad_clip: float
    features: str = "fusion"
    warmup_steps: int = 0
    crop_samples: int | None = None
    higher_is_better: bool = True


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("as20k", "multilabel", "map", "AdamW", 1e-3, 5000, 2, 50, 1.0),
        TaskSpec("vggsound", "classification", "accuracy", "Adam", 1e-5, 5000, 2, 64, 1.0),
        TaskSpec("ks", "classification", "accuracy", "AdamW", 1e-3, 50000, 16, 2, 1.0),
        TaskSpec("ucf101", "classification", "accuracy", "Adam", 1e-3, 30000, 8, 2, 1.0),
        TaskSpec("iemocap", "classification", "accuracy", "Adam", 1e-3, 50000, 4, 8, 1.0),
        TaskSpec("voxceleb", "speaker", "eer", "AdamW", 1e-4, 20000, 16, 1, 1000.0, crop_samples=64000,
                 higher_is_better=False),
        TaskSpec("lrs3", "asr", "cer", "AdamW", 1e-3, 20000, 32, 1, 1.0, warmup_steps=1500, higher_is_better=False),
    )
}


class _Rows:
    """Collects a split's clips and counts the rows that cannot become one."""

    def __init__(self) -> None:
        self.bad = 0

    def find(self, candidates: Iterable[Path]) -> Path | None:
        """The first existing file among ``candidates``; a miss counts as bad."""
        for path in candidates:
            if path.is_file():
                return path
        self.bad += 1
        return None


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {what}")
    return path


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        rows = csv.reader(f, skipinitialspace=True)  # AudioSet writes `id, 30.000, 40.000, "/m/a,/m/b"`
        return [[cell.strip() for cell in row] for row in rows if row and not row[0].startswith("#")]


def _video_clips(rows: _Rows, entries: Iterable[tuple[str, Any, Path]]) -> list[Clip]:
    """Clips whose audio is the video's own track; a missing video counts as bad."""
    clips = []
    for clip_id, target, path in entries:
        found = rows.find([path])
        if found is not None:
            clips.append(Clip(clip_id, target, found, found))
    return clips


# ---------------------------------------------------------------------------------------------- as20k


def _read_as20k(root: Path) -> dict[str, Any]:
    """AudioSet-20K (balanced train / eval), 527 classes, multi-label.

    Layout (the AV-SUPERB csv: ``YTID, start, end, label, label, ...`` with class indices; rows of
    AudioSet's own segment csvs, ``YTID, start, end, "/m/a,/m/b"``, are read too)::

        as20k/
          class_labels_indices.csv   index,mid,display_name (AudioSet's; optional: classes 0..526)
          audioset_train.csv         rows of the balanced train set
          audioset_dev.csv           optional
          audioset_test.csv          rows of the eval set
          balanced_train/<YTID>.mp4  (or .wav/.flac/.mkv/.webm; audio-only files give video=None)
          eval/<YTID>.mp4
    """
    index_file = root / "class_labels_indices.csv"
    if index_file.is_file():
        table = _csv_rows(index_file)[1:]
        classes = [row[2] for row in table]
        by_mid = {row[1]: int(row[0]) for row in table}
    else:
        classes, by_mid = [str(i) for i in range(527)], {}
    rows = _Rows()

    def split(name: str, folder: str) -> list[Clip] | None:
        path = root / f"audioset_{name}.csv"
        if not path.is_file():
            return None
        clips = []
        for row in _csv_rows(path):
            try:
                tokens = [t.strip() for cell in row[3:] for t in cell.split(",") if t.strip()]
                labels = sorted({by_mid[t] if t.startswith("/") else int(t) for t in tokens})
                if not labels or not all(0 <= lab < len(classes) for lab in labels):
                    raise ValueError(row)
            except (KeyError, ValueError):
                rows.bad += 1
                continue
            ytid = row[0]
            found = rows.find(root / f / f"{ytid}{s}" for f in (folder, "balanced_train", "eval")
                              for s in (*VIDEO_SUFFIXES, *AUDIO_SUFFIXES))
            if found is not None:
                video = found if found.suffix in VIDEO_SUFFIXES else None
                clips.append(Clip(ytid, labels, found, video))
        return clips

    _need(root / "audioset_train.csv", "AudioSet-20K needs audioset_train.csv (YTID, start, end, class indices...)")
    _need(root / "audioset_test.csv", "AudioSet-20K needs audioset_test.csv")
    return {"train": split("train", "balanced_train"), "dev": split("dev", "balanced_train"),
            "test": split("test", "eval"), "classes": classes, "bad": rows.bad}


# ------------------------------------------------------------------------------------------- vggsound


def _read_vggsound(root: Path) -> dict[str, Any]:
    """VGGSound (309/310 classes, single label), videos with their audio track.

    Layout (AV-SUPERB's split csvs ``ytid,start_seconds,label`` with an index or a class name as label;
    files named ``<ytid>_<start:06d>.mp4`` as VGGSound distributes them)::

        vggsound/
          labels.csv             name,index  (AV-SUPERB split/ref/labels.csv)
          vggsound_train.csv
          vggsound_dev.csv       optional
          vggsound_test.csv
          video/<ytid>_<start:06d>.mp4
    """
    table = _csv_rows(_need(root / "labels.csv", "VGGSound needs labels.csv (class name,index per line)"))
    by_name = {",".join(row[:-1]): int(row[-1]) for row in table}
    classes = [name for name, _ in sorted(by_name.items(), key=lambda kv: kv[1])]
    rows = _Rows()

    def split(name: str) -> list[Clip] | None:
        path = root / f"vggsound_{name}.csv"
        if not path.is_file():
            return None
        entries = []
        for row in _csv_rows(path):
            try:
                label = int(row[2]) if row[2].isdigit() else by_name[row[2]]
                if not 0 <= label < len(classes):
                    raise ValueError(row)
                file = f"{row[0]}_{int(float(row[1])):06d}.mp4"
            except (IndexError, KeyError, ValueError):
                rows.bad += 1
                continue
            entries.append((file[:-4], label, root / "video" / file))
        return _video_clips(rows, entries)

    _need(root / "vggsound_train.csv", "VGGSound needs vggsound_train.csv")
    _need(root / "vggsound_test.csv", "VGGSound needs vggsound_test.csv")
    return {"train": split("train"), "dev": split("dev"), "test": split("test"), "classes": classes, "bad": rows.bad}


# ------------------------------------------------------------------------------------------------- ks


def _read_ks(root: Path) -> dict[str, Any]:
    """Kinetics-Sounds: the 32 audible Kinetics-400 classes, videos with their audio track.

    Layout (the Kinetics-400 download plus AV-SUPERB's ``<path relative to root>,<class index>`` csvs)::

        ks/
          train_data_path.csv    train/<youtube_id>_<start:06d>_<end:06d>.mp4,13
          val_data_path.csv      optional (dev)
          test_data_path.csv
          classes.txt            optional, one class name per line in index order
          train/  val/  test/    the Kinetics-400 videos
    """
    rows = _Rows()
    splits: dict[str, list[tuple[str, int]] | None] = {}
    for split, name in (("train", "train"), ("dev", "val"), ("test", "test")):
        path = root / f"{name}_data_path.csv"
        if split != "dev":
            _need(path, f"Kinetics-Sounds needs {path.name} (relative video path,class index)")
        if not path.is_file():
            splits[split] = None
            continue
        entries = []
        for row in _csv_rows(path):
            if len(row) < 2 or not row[1].isdigit():
                rows.bad += 1
                continue
            entries.append((row[0], int(row[1])))
        splits[split] = entries
    names = root / "classes.txt"
    if names.is_file():
        classes = [line.strip() for line in names.read_text().splitlines() if line.strip()]
    else:
        classes = [str(i) for i in range(1 + max(lab for e in splits.values() if e for _, lab in e))]
    out: dict[str, Any] = {"classes": classes}
    for split, entries in splits.items():
        if entries is None:
            out[split] = None
            continue
        kept = [(rel, lab) for rel, lab in entries if lab < len(classes)]
        rows.bad += len(entries) - len(kept)
        out[split] = _video_clips(rows, [(rel, lab, root / rel) for rel, lab in kept])
    out["bad"] = rows.bad
    return out


# --------------------------------------------------------------------------------------------- ucf101


def _read_ucf101(root: Path) -> dict[str, Any]:
    """UCF101 split 1 (101 classes), .avi videos with their audio track where they have one.

    Layout (the official UCF101 download, unchanged)::

        ucf101/
          ucfTrainTestlist/classInd.txt     "1 ApplyEyeMakeup" per line
          ucfTrainTestlist/trainlist01.txt  "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
          ucfTrainTestlist/testlist01.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
          UCF-101/<Class>/<video>.avi

    About half of UCF101 has no audio track: with audio requested those clips count as unreadable,
    which leaves the audible subset AV-SUPERB evaluates.
    """
    lists = root / "ucfTrainTestlist"
    index = {}
    for line in _need(lists / "classInd.txt", "UCF101 needs ucfTrainTestlist/ (from UCF101TrainTestSplits)").open():
        if line.strip():
            number, name = line.split()
            index[name] = int(number) - 1
    classes = [name for name, _ in sorted(index.items(), key=lambda kv: kv[1])]
    rows = _Rows()

    def split(file: str) -> list[Clip]:
        entries = []
        for line in _need(lists / file, f"UCF101 split file {file} missing").open():
            rel = line.split()[0] if line.strip() else ""
            if not rel:
                continue
            if rel.split("/")[0] not in index:
                rows.bad += 1
                continue
            entries.append((Path(rel).stem, index[rel.split("/")[0]], root / "UCF-101" / rel))
        return _video_clips(rows, entries)

    return {"train": split("trainlist01.txt"), "dev": None, "test": split("testlist01.txt"), "classes": classes,
            "bad": rows.bad}


# -------------------------------------------------------------------------------------------- iemocap


def _read_iemocap(root: Path, test_session: int = 1, valid_ratio: float = 0.2) -> dict[str, Any]:
    """IEMOCAP, 4 classes (neutral, happy + excited, angry, sad); Session 1 is the test fold.

    Layout (``IEMOCAP_full_release`` as distributed, plus AV-SUPERB's per-utterance video clips)::

        iemocap/
          Session1/dialog/EmoEvaluation/<dialog>.txt        "[start - end]\\t<utterance>\\t<emotion>\\t[V, A, D]"
          Session1/sentences/wav/<dialog>/<utterance>.wav
          clips/Session1/<dialog>/<utterance>.mp4          optional (video; absent -> video=None)
          Session2/ ... Session5/

    Train is the other sessions minus a seeded ``valid_ratio`` share held out as dev (as the official
    random split). Utterances with other emotions are not part of the task (not counted as bad).
    """
    sessions = sorted(p for p in root.glob("Session[0-9]") if p.is_dir())
    if not sessions:
        raise FileNotFoundError(f"{root}: no Session1..Session5 folders (IEMOCAP_full_release layout)")
    rows = _Rows()
    train, test = [], []
    for session in sessions:
        for label_file in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            for line in label_file.read_text(errors="replace").splitlines():
                if not line.startswith("["):
                    continue
                fields = [f for f in line.split("\t") if f]
                if len(fields) < 3:
                    rows.bad += 1
                    continue
                utt, emotion = fields[1].strip(), fields[2].strip().replace("exc", "hap")
                if emotion not in IEMOCAP_CLASSES:
                    continue
                dialog = utt.rsplit("_", 1)[0]
                wav = rows.find([session / "sentences" / "wav" / dialog / f"{utt}.wav"])
                if wav is None:
                    continue
                video = root / "clips" / session.name / dialog / f"{utt}.mp4"
                clip = Clip(utt, IEMOCAP_CLASSES.index(emotion), wav, video if video.is_file() else None)
                (test if session.name == f"Session{test_session}" else train).append(clip)
    random.Random(0).shuffle(train)
    n_dev = int(round(valid_ratio * len(train)))
    return {"train": train[n_dev:], "dev": train[:n_dev], "test": test, "classes": list(IEMOCAP_CLASSES),
            "bad": rows.bad}


# ------------------------------------------------------------------------------------------- voxceleb


def _read_voxceleb(root: Path) -> dict[str, Any]:
    """VoxCeleb2 speaker verification: train a speaker classifier, score the test trials by EER.

    Layout (VoxCeleb2 mp4 download plus AV-SUPERB's lists)::

        voxceleb/
          train_5vid.lst    <speaker>,<n>,dev/mp4/<speaker>/<video>/<utt>.mp4
          valid_5vid.lst    same format (dev split, same speakers)
          test.lst          <1 same | 0 different>,test/mp4/<spk>/<video>/<utt>.mp4,test/mp4/...
          dev/mp4/<speaker>/<video>/<utt>.mp4
          test/mp4/<speaker>/<video>/<utt>.mp4

    Train/dev targets are indices into ``classes`` (the sorted train speakers); test clips have target
    -1 and are scored through ``trials`` = ``(id1, id2, same)`` where ids are the paths in test.lst.
    """
    rows = _Rows()

    def listing(name: str) -> list[tuple[str, str]]:
        out = []
        for line in _need(root / name, f"VoxCeleb2 needs {name}").read_text().splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 3:
                if line.strip():
                    rows.bad += 1
                continue
            out.append((fields[0], fields[2]))
        return out

    train_list = listing("train_5vid.lst")
    classes = sorted({speaker for speaker, _ in train_list})
    speaker_index = {speaker: i for i, speaker in enumerate(classes)}

    def split(entries: list[tuple[str, str]]) -> list[Clip]:
        known = [(rel, speaker_index[spk], root / rel) for spk, rel in entries if spk in speaker_index]
        rows.bad += len(entries) - len(known)
        return _video_clips(rows, known)

    train = split(train_list)
    dev = split(listing("valid_5vid.lst")) if (root / "valid_5vid.lst").is_file() else None
    trials, test_ids = [], {}
    for line in _need(root / "test.lst", "VoxCeleb2 needs test.lst (label,path1,path2)").read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            if line.strip():
                rows.bad += 1
            continue
        trials.append((fields[1], fields[2], fields[0] == "1"))
        test_ids.update(dict.fromkeys(fields[1:]))
    test = _video_clips(rows, [(rel, -1, root / rel) for rel in test_ids])
    readable = {clip.id for clip in test}
    trials = [t for t in trials if t[0] in readable and t[1] in readable]
    return {"train": train, "dev": dev, "test": test, "classes": classes, "trials": trials, "bad": rows.bad}


# ----------------------------------------------------------------------------------------------- lrs3


def normalize_transcript(text: str) -> str:
    """Upper-case, words separated by one space, characters outside :data:`LRS3_VOCAB` dropped."""
    text = text.upper().replace("|", " ")
    return " ".join("".join(c for c in word if c in LRS3_VOCAB) for word in text.split()).strip()


def _read_lrs3(root: Path) -> dict[str, Any]:
    """LRS3-TED speech recognition on characters (CTC; CER, with WER also reported).

    Layout: AV-SUPERB's manifests ``[{"path": "<relative mp4>", "text": "WORDS|SEPARATED|BY|BARS|"}]``::

        lrs3/
          train_set_metadata_clean.json
          val_set_metadata_clean.json      optional (dev)
          test_set_metadata_clean.json
          trainval/<talk>/<utt>.mp4  test/<talk>/<utt>.mp4

    Without the manifests, the LRS3 folders themselves are read: ``trainval/`` is train and ``test/``
    is test, each ``<utt>.mp4`` next to its ``<utt>.txt`` whose first line is ``Text:  THE WORDS``.
    """
    rows = _Rows()

    def from_manifest(path: Path) -> list[Clip]:
        entries = []
        for item in json.loads(path.read_text()):
            if not isinstance(item, dict) or not isinstance(item.get("path"), str) or "text" not in item:
                rows.bad += 1
                continue
            entries.append((item["path"], normalize_transcript(str(item["text"])), root / item["path"]))
        return _video_clips(rows, entries)

    def from_folder(folder: Path) -> list[Clip]:
        entries = []
        _need(folder, "LRS3 needs *_set_metadata_clean.json, or the trainval/ and test/ folders")
        for video in sorted(folder.rglob("*.mp4")):
            text = video.with_suffix(".txt")
            first = text.read_text().splitlines()[:1] if text.is_file() else []
            if not first or not first[0].startswith("Text:"):
                rows.bad += 1
                continue
            entries.append((str(video.relative_to(root)), normalize_transcript(first[0][5:]), video))
        return _video_clips(rows, entries)

    manifest = {split: root / f"{split}_set_metadata_clean.json" for split in ("train", "val", "test")}
    if manifest["train"].is_file() and manifest["test"].is_file():
        train, test = from_manifest(manifest["train"]), from_manifest(manifest["test"])
        dev = from_manifest(manifest["val"]) if manifest["val"].is_file() else None
    else:
        train, dev, test = from_folder(root / "trainval"), None, from_folder(root / "test")
    return {"train": train, "dev": dev, "test": test, "classes": [], "vocab": list(LRS3_VOCAB), "bad": rows.bad}


# ----------------------------------------------------------------------------------------------- entry

_READERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "as20k": _read_as20k, "vggsound": _read_vggsound, "ks": _read_ks, "ucf101": _read_ucf101,
    "iemocap": _read_iemocap, "voxceleb": _read_voxceleb, "lrs3": _read_lrs3,
}


def read_task(
    name: str, root: str | Path, *, modalities: Iterable[str] = MODALITIES, sample_rate: int = 16000
) -> dict[str, Any]:
    """Read one task's splits from its dataset folder (layouts in the ``_read_<task>`` docstrings).

    Args:
        name: A key of :data:`TASKS`.
        root: The task's dataset folder.
        modalities: What the datasets decode (``("audio",)`` skips video decoding for audio features).
        sample_rate: Audio rate of the samples in Hz.

    Returns:
        ``{"train": ClipDataset, "dev": ClipDataset | None, "test": ClipDataset, "classes": list[str],
        "trials": list[(id1, id2, same)] | None, "vocab": list[str] | None, "bad": int}``; ``bad``
        counts manifest rows that are malformed or name a missing file.

    Raises:
        KeyError: Unknown task.
        FileNotFoundError: A manifest the layout requires is missing (the message names it).
    """
    if name not in _READERS:
        raise KeyError(f"unknown AV-SUPERB task {name!r}: expected one of {', '.join(TASKS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the {name} dataset folder does not exist")
    found = _READERS[name](root)
    modalities = tuple(modalities)
    out: dict[str, Any] = {"classes": found["classes"], "trials": found.get("trials"), "vocab": found.get("vocab"),
                           "bad": found["bad"]}
    for split in ("train", "dev", "test"):
        clips = found.get(split)
        out[split] = None if clips is None else ClipDataset(clips, modalities=modalities, sample_rate=sample_rate)
    return out
