"""The official layouts of two single-label audio benchmarks: readers, and writers that shape any audio set like them.

ESC-50 (Piczak, 2015): ``ESC-50-master/meta/esc50.csv`` (header ``filename,fold,target,category,esc10,src_file,
take``) lists 2000 five-second clips under ``ESC-50-master/audio/``, 40 for each of 50 classes, in 5 folds that
keep clips cut from one recording together. Results are 5-fold cross-validation accuracy: train on four folds,
test on the fifth, and average the five test accuracies.

Speech Commands v0.02 (Warden, 2018): one folder of 1 s 16 kHz WAVs per word, ``_background_noise_/`` (long
noise recordings, no class), and ``validation_list.txt`` / ``testing_list.txt`` naming clips as
``word/file.wav``; the training set is every clip in neither list. Its 35 words are SPC-2's classes. SPC-1 is the
keyword-spotting task of v0.01 (Warden's TensorFlow tutorial, SUPERB's KS): 10 keywords, ``_unknown_`` (every other
word) and ``_silence_`` (1 s cut from the background noise), with silence and unknown each about a tenth of a split.

The writers put the clips of a single-label audio dataset (the embedded synthesised sounds, for tests and examples
that need no download) into these layouts at the dataset's sample rate and clip lengths.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from percli.core.data.shards import BadRecords

AudioItem = tuple[str, list[int]]
"""(audio path, class indices): the item `percli.core.data.audio.AudioDataset` reads."""

ESC50_CSV = Path("meta", "esc50.csv")
ESC50_HEADER = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
SPEECH_COMMANDS_LISTS = {"validation": "validation_list.txt", "testing": "testing_list.txt"}
SPEECH_COMMANDS_SPLITS = ("train", *SPEECH_COMMANDS_LISTS)
BACKGROUND_NOISE = "_background_noise_"
SPC1_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
SILENCE_SHARE = UNKNOWN_SHARE = 0.1
"""The tutorial's defaults (silence_percentage / unknown_percentage 10 %): each a tenth of the split's clips."""


# ---------------------------------------------------------------------------------------------- ESC-50


def esc50_csv(source: str | Path) -> Path | None:
    """The ESC-50 meta CSV of `source`: ``<source>/meta/esc50.csv`` for an ESC-50 root folder, or `source` itself
    when it is a CSV with ESC-50's columns (``meta/esc50.csv``, or a copy holding some of its rows, such as the
    ESC-10 subset, kept in the root folder beside ``audio/``); else None."""
    source = Path(source).expanduser()
    if source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        return source if set(ESC50_HEADER[:4]) <= set(header) else None
    meta = source / ESC50_CSV
    return meta if meta.is_file() else None


def _esc50_rows(meta: Path, bad: BadRecords) -> list[tuple[int, str, int, int, str]]:
    """``(row, filename, fold, target, category)`` of each usable row (0-based); malformed rows go to `bad`."""
    with meta.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not set(ESC50_HEADER[:4]) <= set(reader.fieldnames or ()):
            raise ValueError(f"{meta}: expected ESC-50's header {','.join(ESC50_HEADER)}")
        rows = []
        for i, row in enumerate(reader):
            try:
                fold, target = int(row["fold"]), int(row["target"])
            except (TypeError, ValueError):
                bad.add(meta, i, f"fold {row['fold']!r} / target {row['target']!r} are not integers", where="row")
                continue
            if not row["filename"] or not row["category"]:
                bad.add(meta, i, "empty filename or category", where="row")
                continue
            rows.append((i, row["filename"], fold, target, row["category"]))
    if not rows:
        raise ValueError(f"{meta}: no usable row ({bad.count} malformed)")
    return rows


def esc50_folds(meta: str | Path) -> list[int]:
    """The folds an ESC-50 meta CSV assigns (1-5 for the official one), sorted."""
    return sorted({fold for _, _, fold, _, _ in _esc50_rows(Path(meta), BadRecords())})


def read_esc50(meta: str | Path, fold: int | None = None, held_out: bool = False,
               bad: BadRecords | None = None) -> tuple[list[AudioItem], list[str]]:
    """Clips of an ESC-50 tree: the held-out `fold`, or every other fold.

    Args:
        meta: ``meta/esc50.csv``; clips are read from ``audio/`` beside it or beside its folder.
        fold: The cross-validation fold held out; None takes every fold.
        held_out: Read `fold` itself (evaluation) instead of the other folds (training).
        bad: Counts malformed rows and listed files that do not exist (both are skipped).

    Returns:
        ``(items, classes)``: ``(path, [class index])`` in CSV order, and the categories in ``target`` order
        (all of the CSV's, whichever folds are read, so every fold indexes classes alike).

    Raises:
        ValueError: If `fold` is not among the CSV's folds, a target has two categories, or no clip exists.
    """
    meta = Path(meta)
    bad = bad if bad is not None else BadRecords()
    rows = _esc50_rows(meta, bad)
    folds = sorted({row_fold for _, _, row_fold, _, _ in rows})
    if fold is not None and fold not in folds:
        raise ValueError(f"{meta}: fold {fold} is not one of its folds {folds}")
    names: dict[int, str] = {}
    for _, filename, _, target, category in rows:
        if names.setdefault(target, category) != category:
            raise ValueError(f"{meta}: target {target} is both {names[target]!r} and {category!r} ({filename})")
    index = {target: i for i, target in enumerate(sorted(names))}
    audio = meta.parent / "audio" if (meta.parent / "audio").is_dir() else meta.parent.parent / "audio"
    items: list[AudioItem] = []
    for row, filename, row_fold, target, _ in rows:
        if fold is not None and (row_fold == fold) != held_out:
            continue
        path = audio / filename
        if not path.is_file():
            bad.add(meta, row, f"listed file {path} does not exist", where="row")
            continue
        items.append((str(path), [index[target]]))
    if not items:
        raise ValueError(f"{meta}: none of the listed clips of the requested folds exists under {audio}")
    return items, [names[t] for t in sorted(names)]


def write_esc50_layout(root: str | Path, clips: Any, folds: int = 5) -> Path:
    """Write a single-label audio dataset as an ESC-50 tree: ``root/meta/esc50.csv`` and ``root/audio/*.wav``.

    The k-th clip of each class goes to fold ``k % folds + 1``, so every fold holds about the same share of
    each class; file names follow ESC-50's ``{fold}-{source id}-{take}-{target}.wav``.

    Args:
        root: Folder to write (the ``ESC-50-master`` of the real data set).
        clips: A dataset with ``classes``, ``waveform(i)``, ``labels_of(i)`` and ``sample_rate`` (for example
            :class:`~percli.core.data.embedded_audio.EmbeddedAudioDataset`).
        folds: Number of folds (ESC-50 has 5).

    Returns:
        `root`.
    """
    root = Path(root)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / ESC50_CSV).parent.mkdir(parents=True, exist_ok=True)
    seen = [0] * len(clips.classes)
    with (root / ESC50_CSV).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ESC50_HEADER)
        for i in range(len(clips)):
            target = clips.labels_of(i)[0]
            fold = seen[target] % folds + 1
            seen[target] += 1
            filename = f"{fold}-{i:06d}-A-{target}.wav"
            soundfile.write(root / "audio" / filename, clips.waveform(i)[0].numpy(), clips.sample_rate)
            writer.writerow([filename, fold, target, clips.classes[target], False, f"{i:06d}", "A"])
    return root


# ------------------------------------------------------------------------------------- Speech Commands


def is_speech_commands(source: str | Path) -> bool:
    """Whether `source` is a Speech Commands root (a folder holding validation_list.txt or testing_list.txt)."""
    root = Path(source).expanduser()
    return any((root / name).is_file() for name in SPEECH_COMMANDS_LISTS.values())


def keyword_classes(keywords: tuple[str, ...] | list[str]) -> list[str]:
    """The classes of a keyword-spotting task, sorted as a folder listing sorts them (so the official v0.01 test
    set's class folders, ``_silence_`` and ``_unknown_`` included, index classes alike)."""
    return sorted({*keywords, SILENCE, UNKNOWN})


def _keyword_items(root: Path, split: str, words: list[str], items: list[AudioItem], keywords: tuple[str, ...],
                   seed: int) -> tuple[list[AudioItem], list[str], list[tuple[str, float]]]:
    """Relabel word clips for keyword spotting: the keywords keep their class, a random `UNKNOWN_SHARE` of the
    split is drawn from the other words (as ``_unknown_``), and `SILENCE_SHARE` are ``_silence_`` segments: 1 s
    windows of the background-noise files, as ``(path, start seconds)``, appended after the items."""
    classes = keyword_classes(keywords)
    index = {word: i for i, word in enumerate(classes)}
    known = [(path, [index[words[labels[0]]]]) for path, labels in items if words[labels[0]] in index]
    others = [(path, [index[UNKNOWN]]) for path, labels in items if words[labels[0]] not in index]
    # A seed per split, so the draw is the same in every process and run.
    rng = np.random.default_rng([seed, SPEECH_COMMANDS_SPLITS.index(split)])
    share = max(1, round(len(known) * UNKNOWN_SHARE))
    unknown = [others[i] for i in sorted(rng.permutation(len(others))[:share])]
    noises = sorted(p for p in (root / BACKGROUND_NOISE).glob("*") if p.suffix.lower() == ".wav")
    segments: list[tuple[str, float]] = []
    for k in range(max(1, round(len(known) * SILENCE_SHARE)) if noises else 0):
        noise = noises[k % len(noises)]
        seconds = soundfile.info(str(noise)).duration
        segments.append((str(noise), float(rng.uniform(0.0, max(seconds - 1.0, 0.0)))))
    return known + unknown, classes, segments


def _listed(list_file: Path) -> list[tuple[int, str]]:
    """``(line number, "word/file.wav")`` of each non-blank line; none when the list does not exist."""
    if not list_file.is_file():
        return []
    lines = list_file.read_text(encoding="utf-8").splitlines()
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def read_speech_commands(root: str | Path, split: str = "train", extensions: tuple[str, ...] = (".wav",),
                         bad: BadRecords | None = None, keywords: tuple[str, ...] = (), seed: int = 0,
                         ) -> tuple[list[AudioItem], list[str], list[tuple[str, float]]]:
    """Clips of one split of a Speech Commands tree.

    Args:
        root: The folder of word folders and list files.
        split: ``"train"`` (every clip in neither list), ``"validation"`` or ``"testing"`` (the clips its list
            names).
        extensions: Audio file suffixes (lower case) a training clip may have.
        bad: Counts list lines naming a missing file or a folder that is not a word (both are skipped).
        keywords: Keyword spotting (SPC-1: `SPC1_KEYWORDS`): classes are the keywords, ``_silence_`` and
            ``_unknown_`` (see `_keyword_items`); empty = every word is a class (SPC-2).
        seed: Seed of keyword spotting's draws of unknown words and silence windows.

    Returns:
        ``(items, classes, silence)``: the clips, the word folders, sorted, as classes (``_background_noise_``
        and other folders starting with ``_`` or ``.`` are none) or `keyword_classes`, and the ``_silence_``
        windows ``(noise file, start seconds)`` of keyword spotting (their class follows the items').

    Raises:
        ValueError: If `split` is unknown, its list file is missing, or it has no clip.
    """
    root = Path(root).expanduser()
    bad = bad if bad is not None else BadRecords()
    if split not in SPEECH_COMMANDS_SPLITS:
        raise ValueError(f"Speech Commands split must be one of {', '.join(SPEECH_COMMANDS_SPLITS)}, got {split!r}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    index = {word: i for i, word in enumerate(classes)}
    items: list[AudioItem] = []
    if split == "train":
        held = {rel for name in SPEECH_COMMANDS_LISTS.values() for _, rel in _listed(root / name)}
        for word in classes:
            for path in sorted((root / word).iterdir()):
                if path.suffix.lower() in extensions and not path.name.startswith(".") \
                        and f"{word}/{path.name}" not in held:
                    items.append((str(path), [index[word]]))
    else:
        list_file = root / SPEECH_COMMANDS_LISTS[split]
        if not list_file.is_file():
            raise ValueError(f"{root}: no {list_file.name}, so there is no {split} split")
        for n, rel in _listed(list_file):
            word = rel.split("/", 1)[0]
            if word not in index:
                bad.add(list_file, n, f"{rel}: {word!r} is not a word folder of {root}")
            elif not (root / rel).is_file():
                bad.add(list_file, n, f"listed file {rel} does not exist")
            else:
                items.append((str(root / rel), [index[word]]))
    if not items:
        raise ValueError(f"{root}: the {split} split of this Speech Commands tree has no clip ({bad.count} listed "
                         "file(s) missing)")
    if keywords:
        return _keyword_items(root, split, classes, items, tuple(keywords), seed)
    return items, classes, []


def write_speech_commands_layout(root: str | Path, clips: Any, seed: int = 0) -> Path:
    """Write a single-label audio dataset as a Speech Commands tree: ``root/<class>/<id>_nohash_0.wav``, the two
    list files and ``_background_noise_/white_noise.wav`` (5 s of noise, which no split reads).

    Of each class's clips, every 10th (k % 10 == 0) is listed for testing and the next one for validation, as
    Speech Commands holds out about 10% + 10%.

    Args:
        root: Folder to write.
        clips: A dataset with ``classes``, ``waveform(i)``, ``labels_of(i)`` and ``sample_rate`` (for example
            :class:`~percli.core.data.embedded_audio.EmbeddedAudioDataset`).
        seed: Seed of the background noise.

    Returns:
        `root`.
    """
    root = Path(root)
    for word in (*clips.classes, BACKGROUND_NOISE):
        (root / word).mkdir(parents=True, exist_ok=True)
    lists: dict[str, list[str]] = {"testing": [], "validation": []}
    seen = [0] * len(clips.classes)
    for i in range(len(clips)):
        target = clips.labels_of(i)[0]
        rel = f"{clips.classes[target]}/{i:08x}_nohash_0.wav"
        soundfile.write(root / rel, clips.waveform(i)[0].numpy(), clips.sample_rate)
        held = {0: "testing", 1: "validation"}.get(seen[target] % 10)
        seen[target] += 1
        if held:
            lists[held].append(rel)
    for split, rels in lists.items():
        (root / SPEECH_COMMANDS_LISTS[split]).write_text("".join(f"{rel}\n" for rel in rels), encoding="utf-8")
    noise = np.random.default_rng(seed).standard_normal(5 * clips.sample_rate) * 0.03
    soundfile.write(root / BACKGROUND_NOISE / "white_noise.wav", noise.astype(np.float32), clips.sample_rate)
    return root
