"""A small synthetic AV-SUPERB: every task in the layout its reader expects, with labels that can be learned.

Sounds are synthesised, not spoken: a speech synthesiser on a few dozen utterances would give a CTC head
too little to learn, while one distinct sound unit per character does. What each task encodes:

- as20k / vggsound / ks / ucf101: each class is a coloured square moving in its own direction *and* a
  pulsed two-tone chord of its own pitch, so audio-only, video-only and fused features all carry the
  label (as20k clips hold one or two classes: every square and chord is drawn/mixed in).
- iemocap: the same vowel "utterances" spoken with four prosodies (neutral: flat mid pitch; happy: high
  rising pitch, fast; angry: loud, fast, harsh; sad: low falling pitch, slow, quiet) by five speakers.
- voxceleb: ten "voices" (own pitch and vocal-tract length, i.e. formant scale) saying random vowel
  strings; six train speakers, four unseen test speakers and same/different trials.
- lrs3: words over 12 letters, each letter a 100 ms two-tone chord (DTMF-like), silence between words.

Generation is deterministic for a seed and cached: each task folder gets a ``.complete`` marker holding
the seed, written last; a folder without it (or with another seed) is rebuilt.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import soundfile

SAMPLE_RATE = 16000
SIZE = 32  # frame height and width
EVENT_FPS = 8
EVENT_SECONDS = 1.0
COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 240], [235, 210, 40], [210, 60, 220], [40, 210, 220]])
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
VOWELS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240), "e": (530, 1840, 2480),
          "o": (570, 840, 2410), "ae": (660, 1720, 2410), "ih": (390, 1990, 2550), "uh": (440, 1020, 2240)}
ASR_LETTERS = "ABDEGIKLMNOS"
_LOW_TONES, _HIGH_TONES = (400, 550, 700), (1100, 1400, 1750, 2200)
EMOTIONS = {  # f0 start, f0 end (x speaker pitch), seconds per vowel, loudness, harmonic roll-off
    "neu": (1.0, 1.0, 0.16, 0.30, 1.0),
    "hap": (1.4, 1.8, 0.11, 0.45, 1.0),
    "ang": (1.25, 1.2, 0.10, 0.90, 0.5),
    "sad": (0.85, 0.65, 0.24, 0.12, 1.6),
}


# --------------------------------------------------------------------------------------------- writers


def write_video(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None) -> None:
    """Encode uint8 frames [F, H, W, 3] (MPEG-4 part 2) with an optional mono 16 kHz audio track.

    ``.avi`` files get PCM audio (as UCF101's), other containers AAC.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"fflags": "+bitexact"}) as container:
        video = container.add_stream("mpeg4", rate=fps, options={"flags": "+bitexact"})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = None
        if audio is not None:
            codec = "pcm_s16le" if path.suffix == ".avi" else "aac"
            sound = container.add_stream(codec, rate=SAMPLE_RATE, options={"flags": "+bitexact"})
            sound.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode(None))
        if sound is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]  # [1, T] packed s16
            chunk = 1024
            for start in range(0, pcm.shape[1], chunk):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start : start + chunk]),
                                                   format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = start
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))


def _write_wav(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.clip(audio, -1, 1), SAMPLE_RATE, subtype="PCM_16")


def _write_csv(path: Path, rows: list[list[object]]) -> None:
    path.write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))


# ------------------------------------------------------------------------------------------- synthesis


def _ramp(n: int, ramp: int = 160) -> np.ndarray:
    """Raised-cosine fade in/out so units do not click."""
    env = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        env[:ramp], env[-ramp:] = edge, edge[::-1]
    return env


def _event_audio(rng: np.random.Generator, classes: list[int], n_classes: int) -> np.ndarray:
    """Sum over ``classes`` of a two-tone chord (class pitch) pulsed at a class-specific rate, plus noise."""
    t = np.arange(int(EVENT_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.03 * rng.standard_normal(t.size)
    for c in classes:
        base = 260.0 * 2 ** (c * 12 / n_classes / 6) * rng.uniform(0.98, 1.02)  # spread over two octaves
        rate = 2.0 + 2.0 * (c % 3)
        pulse = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
        chord = np.sin(2 * np.pi * base * t + rng.uniform(0, 6)) + 0.6 * np.sin(2 * np.pi * 1.5 * base * t)
        wave += 0.35 * pulse * chord / len(classes)
    return (wave * _ramp(t.size)).astype(np.float32)


def _event_video(rng: np.random.Generator, classes: list[int], n_classes: int) -> np.ndarray:
    """Squares of the classes' colours, each moving in its class direction over a noisy dark background."""
    n = int(EVENT_SECONDS * EVENT_FPS)
    frames = rng.integers(0, 40, size=(n, SIZE, SIZE, 3)).astype(np.uint8)
    side = 9
    for c in classes:
        angle = 2 * np.pi * c / n_classes
        step = 1.6 * np.array([np.cos(angle), np.sin(angle)])
        start = SIZE / 2 - side / 2 - step * (n - 1) / 2 + rng.uniform(-3, 3, size=2)
        colour = np.clip(COLOURS[c % len(COLOURS)] + rng.integers(-20, 20, size=3), 0, 255)
        for f in range(n):
            x, y = np.clip(np.round(start + step * f).astype(int), 0, SIZE - side)
            frames[f, y : y + side, x : x + side] = colour
    return frames


def _voiced(rng: np.random.Generator, vowels: list[str], f0: tuple[float, float], seconds: float, loudness: float,
            formant_scale: float = 1.0, rolloff: float = 1.0) -> np.ndarray:
    """Formant-synthesised vowel string: harmonics of a gliding f0 weighted by the vowels' resonances."""
    per = int(seconds * SAMPLE_RATE)
    total = per * len(vowels)
    f0_track = np.linspace(f0[0], f0[1], total) * (1 + 0.02 * np.sin(2 * np.pi * 5 * np.arange(total) / SAMPLE_RATE))
    phase = 2 * np.pi * np.cumsum(f0_track) / SAMPLE_RATE
    formants = np.repeat(np.array([VOWELS[v] for v in vowels], dtype=float) * formant_scale, per, axis=0)  # [T, 3]
    hop = 80  # harmonic weights change slowly: compute them every 5 ms, hold them in between
    wave = np.zeros(total)
    for k in range(1, int(4000 / f0_track.min())):
        freq = k * f0_track[::hop, None]
        weight = np.exp(-(((freq - formants[::hop]) / np.array([80, 120, 160])) ** 2)).sum(1) + 0.02
        wave += np.repeat(weight, hop)[:total] * np.sin(k * phase) / k**rolloff
    env = np.concatenate([_ramp(per, 240) for _ in vowels])
    wave = wave * env / (np.abs(wave).max() + 1e-9) * loudness
    return (wave + 0.003 * rng.standard_normal(total)).astype(np.float32)


def _letter_unit(letter: str) -> np.ndarray:
    """The 100 ms two-tone chord of one letter (low tone x high tone, like a telephone keypad)."""
    i = ASR_LETTERS.index(letter)
    t = np.arange(int(0.1 * SAMPLE_RATE)) / SAMPLE_RATE
    low, high = _LOW_TONES[i % 3], _HIGH_TONES[i // 3]
    return 0.25 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)) * _ramp(t.size)


def _spell(rng: np.random.Generator, text: str) -> np.ndarray:
    gap = lambda s: np.zeros(int(s * SAMPLE_RATE))  # noqa: E731 - tiny local helper
    parts = [gap(0.1)]
    for word in text.split():
        for letter in word:
            parts += [_letter_unit(letter) * rng.uniform(0.8, 1.2), gap(rng.uniform(0.015, 0.03))]
        parts.append(gap(rng.uniform(0.08, 0.12)))
    wave = np.concatenate(parts)
    return (wave + 0.01 * rng.standard_normal(wave.size)).astype(np.float32)


def _envelope_video(audio: np.ndarray, fps: int, colour: np.ndarray) -> np.ndarray:
    """A "mouth": a bar of ``colour`` whose height follows the audio's loudness frame by frame."""
    hop = SAMPLE_RATE // fps
    n = max(1, audio.size // hop)
    rms = np.sqrt([np.mean(audio[i * hop : (i + 1) * hop] ** 2) for i in range(n)])
    frames = np.full((n, SIZE, SIZE, 3), 30, dtype=np.uint8)
    for f, level in enumerate(rms / (rms.max() + 1e-9)):
        half = 1 + int(level * (SIZE // 3))
        frames[f, SIZE // 2 - half : SIZE // 2 + half, SIZE // 4 : 3 * SIZE // 4] = colour
    return frames


# ----------------------------------------------------------------------------------------------- tasks


def _write_event(path: Path, rng: np.random.Generator, classes: list[int], n_classes: int) -> None:
    write_video(path, _event_video(rng, classes, n_classes), EVENT_FPS, _event_audio(rng, classes, n_classes))


def _event_names(n: int) -> list[str]:
    return [f"{COLOUR_NAMES[c]} square, tone {c}" for c in range(n)]


def _build_as20k(out: Path, rng: np.random.Generator) -> None:
    n = 6
    names = _event_names(n)
    _write_csv(out / "class_labels_indices.csv",
               [["index", "mid", "display_name"]] + [[i, f"/m/syn{i}", f'"{name}"'] for i, name in enumerate(names)])
    for split, folder, per_class in (("train", "balanced_train", 8), ("test", "eval", 4)):
        rows = []
        for k in range(n * per_class):
            labels = sorted({k % n} | ({int(rng.integers(n))} if rng.random() < 0.4 else set()))
            ytid = f"{split}{k:04d}"
            _write_event(out / folder / f"{ytid}.mp4", rng, labels, n)
            rows.append([ytid, "0.000", "1.000", *labels])
        _write_csv(out / f"audioset_{split}.csv", rows)


def _build_vggsound(out: Path, rng: np.random.Generator) -> None:
    n = 4
    _write_csv(out / "labels.csv", [[f'"{name}"', i] for i, name in enumerate(_event_names(n))])
    for split, per_class in (("train", 12), ("test", 6)):
        rows = []
        for k in range(n * per_class):
            ytid = f"{split}{k:04d}"
            _write_event(out / "video" / f"{ytid}_000000.mp4", rng, [k % n], n)
            rows.append([ytid, 0, k % n])
        _write_csv(out / f"vggsound_{split}.csv", rows)


def _build_ks(out: Path, rng: np.random.Generator) -> None:
    n = 4
    (out / "classes.txt").write_text("".join(f"action {c}\n" for c in range(n)))
    for split, per_class in (("train", 12), ("val", 2), ("test", 6)):
        rows = []
        for k in range(n * per_class):
            rel = f"{split}/{split}{k:04d}_000000_000001.mp4"
            _write_event(out / rel, rng, [k % n], n)
            rows.append([rel, k % n])
        _write_csv(out / f"{split}_data_path.csv", rows)


def _build_ucf101(out: Path, rng: np.random.Generator) -> None:
    n = 4
    names = [f"Action{c}" for c in range(n)]
    lists = out / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{c + 1} {name}\n" for c, name in enumerate(names)))
    for split, groups in (("trainlist01.txt", range(1, 5)), ("testlist01.txt", range(5, 7))):
        lines = []
        for c, name in enumerate(names):
            for g in groups:
                for clip in range(1, 4):
                    rel = f"{name}/v_{name}_g{g:02d}_c{clip:02d}.avi"
                    _write_event(out / "UCF-101" / rel, rng, [c], n)
                    lines.append(f"{rel} {c + 1}" if split.startswith("train") else rel)
        (lists / split).write_text("\n".join(lines) + "\n")


def _build_iemocap(out: Path, rng: np.random.Generator) -> None:
    utterances = [["a", "i", "u", "e"], ["o", "ae", "ih", "a"], ["e", "uh", "i", "o"]]
    for s in range(1, 6):
        speaker_f0 = 120 * (0.8 + 0.1 * s)  # session speakers from 108 to 156 Hz
        dialog = f"Ses0{s}F_impro01"
        lines = []
        per_class = 6 if s == 1 else 3
        for k in range(len(EMOTIONS) * per_class):
            emotion = list(EMOTIONS)[k % len(EMOTIONS)]
            start, end, seconds, loudness, rolloff = EMOTIONS[emotion]
            utt = f"{dialog}_F{k:03d}"
            vowels = utterances[int(rng.integers(len(utterances)))]
            wave = _voiced(rng, vowels, (speaker_f0 * start, speaker_f0 * end), seconds * rng.uniform(0.95, 1.05),
                           loudness * rng.uniform(0.9, 1.1), formant_scale=0.95 + 0.03 * s, rolloff=rolloff)
            _write_wav(out / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav", wave)
            clip = out / "clips" / f"Session{s}" / dialog / f"{utt}.mp4"
            write_video(clip, _envelope_video(wave, 10, COLOURS[s]), 10)
            lines.append(f"[{k:.4f} - {k + 1:.4f}]\t{utt}\t{emotion}\t[2.5000, 2.5000, 2.5000]")
        lines.append(f"[99.0000 - 100.0000]\t{dialog}_F999\txxx\t[2.5000, 2.5000, 2.5000]")  # unlabeled: skipped
        (out / f"Session{s}" / "dialog" / "EmoEvaluation").mkdir(parents=True)
        (out / f"Session{s}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")


def _write_speaker_clip(path: Path, rng: np.random.Generator, speaker: int) -> None:
    f0 = 90 + 14 * speaker  # ten voices from 90 to 216 Hz, vocal tracts from 0.85 to 1.20
    scale = 0.85 + 0.035 * ((speaker * 3) % 10)
    vowels = [str(v) for v in rng.choice(list(VOWELS), size=int(rng.integers(5, 8)))]
    glide = rng.uniform(0.9, 1.1)
    wave = _voiced(rng, vowels, (f0 * glide, f0 / glide), rng.uniform(0.12, 0.18), 0.5, formant_scale=scale)
    write_video(path, _envelope_video(wave, 10, COLOURS[speaker % len(COLOURS)]), 10, wave)


def _build_voxceleb(out: Path, rng: np.random.Generator) -> None:
    train, valid, test = [], [], {}
    for s in range(6):
        spk = f"id{s:05d}"
        for v in range(3):
            for u in range(2):
                rel = f"dev/mp4/{spk}/vid{v}/{u:05d}.mp4"
                _write_speaker_clip(out / rel, rng, s)
                (valid if v == 2 else train).append([spk, s, rel])
    for s in range(6, 10):
        spk = f"id{s:05d}"
        test[spk] = []
        for v in range(2):
            for u in range(2):
                rel = f"test/mp4/{spk}/vid{v}/{u:05d}.mp4"
                _write_speaker_clip(out / rel, rng, s)
                test[spk].append(rel)
    trials = []
    speakers = list(test)
    for i, spk in enumerate(speakers):
        same = [[1, a, b] for a in test[spk][:2] for b in test[spk][2:]]  # clips of different videos
        # Clip j against clip j of another speaker (offsets 1..n-1, never the speaker itself).
        other = [[0, a, test[speakers[(i + 1 + j % (len(speakers) - 1)) % len(speakers)]][j]]
                 for j, a in enumerate(test[spk])]
        trials += same + other
    _write_csv(out / "train_5vid.lst", train)
    _write_csv(out / "valid_5vid.lst", valid)
    _write_csv(out / "test.lst", trials)


def _build_lrs3(out: Path, rng: np.random.Generator) -> None:
    for split, folder, count in (("train", "trainval", 48), ("val", "trainval", 8), ("test", "test", 16)):
        items = []
        for k in range(count):
            words = ["".join(rng.choice(list(ASR_LETTERS), size=int(rng.integers(2, 5))))
                     for _ in range(int(rng.integers(1, 4)))]
            rel = f"{folder}/talk{split}{k // 8}/{k:05d}.mp4"
            wave = _spell(rng, " ".join(words))
            write_video(out / rel, _envelope_video(wave, 10, COLOURS[0]), 10, wave)
            (out / rel).with_suffix(".txt").write_text(f"Text:  {' '.join(words)}\nConf:  9\n")
            items.append({"path": rel, "text": "|".join(words) + "|"})
        (out / f"{split}_set_metadata_clean.json").write_text(json.dumps(items))


BUILDERS: dict[str, Callable[[Path, np.random.Generator], None]] = {
    "as20k": _build_as20k, "vggsound": _build_vggsound, "ks": _build_ks, "ucf101": _build_ucf101,
    "iemocap": _build_iemocap, "voxceleb": _build_voxceleb, "lrs3": _build_lrs3,
}


def make_minibench(root: str | Path, seed: int = 0, tasks: list[str] | None = None) -> dict[str, Path]:
    """Write (or reuse) the synthetic mini-benchmark.

    Args:
        root: Folder that receives one sub-folder per task (the ``root`` to give :func:`read_task`).
        seed: Seed of every random draw; the same seed writes the same clips.
        tasks: Task names to build (default all seven).

    Returns:
        Task name -> its dataset folder.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    folders = {}
    for name in tasks or list(BUILDERS):
        if name not in BUILDERS:
            raise KeyError(f"unknown AV-SUPERB task {name!r}: expected one of {', '.join(BUILDERS)}")
        folder = root / name
        marker = folder / ".complete"
        if not (marker.is_file() and json.loads(marker.read_text()).get("seed") == seed):
            tmp = root / f".{name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            started = time.perf_counter()
            BUILDERS[name](tmp, np.random.default_rng([seed, list(BUILDERS).index(name)]))
            (tmp / ".complete").write_text(json.dumps({"seed": seed, "seconds": time.perf_counter() - started}))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        folders[name] = folder
    return folders
