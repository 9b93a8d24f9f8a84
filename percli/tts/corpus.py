"""Embedded speech corpus: short English sentences spoken by espeak-ng, no download needed.

Origin: written for percli. The sentences come from fixed templates (a seeded choice of subject,
verb, object and place), so every one is plain English with a known transcript; each is spoken
with one of several espeak-ng voices, speaking rates and pitches (cycled by index), through the
espeak-ng library that the ``espeakng-loader`` wheel ships (called with ctypes, no system package),
then resampled from espeak-ng's 22.05 kHz to 16 kHz and written as 16-bit WAV.

Determinism: espeak-ng keeps internal state between utterances (the same sentence spoken twice in
one process differs by a few samples), so the whole corpus is always synthesised in a fresh
process, in index order: every build gives bit-identical files. ``build_corpus`` writes the WAVs and
a ``manifest.jsonl`` ({"audio": path, "text": transcript}, each path relative to the manifest's folder,
as manifest readers resolve them) and reuses a complete earlier build.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import multiprocessing
import os
import random
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MANIFEST = "manifest.jsonl"
# (voice, words per minute, pitch 0-99); "+f3" etc. are espeak-ng's voice variants
VOICES: tuple[tuple[str, int, int], ...] = (
    ("en-us", 165, 50), ("en+f4", 150, 60), ("en+m3", 180, 40), ("en-us+f1", 140, 70),
    ("en-us+m7", 170, 35), ("en-gb-x-rp", 155, 55),
)
# Not used: the breathy variants (f2, f3, f5) add noise that differs from process to process.
_SUBJECTS = ("the old man", "my sister", "a small dog", "the teacher", "our neighbour", "the young girl",
             "a tired farmer", "the captain", "his brother", "the baker")
_VERBS = ("found", "carried", "painted", "opened", "watched", "cleaned", "bought", "dropped", "lost", "fixed")
_OBJECTS = ("a red box", "the wooden door", "three green apples", "a heavy bag", "the blue car",
            "an old letter", "the kitchen window", "a silver key", "the broken chair", "two white cups")
_PLACES = ("in the garden", "near the river", "after dinner", "before the storm", "at the station",
           "on monday morning", "by the old bridge", "under the table", "in the city", "last night")


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct template sentences ("My sister found a red box near the river."), fixed by ``seed``."""
    rng = random.Random(seed)
    combos = [(s, v, o, p) for s in _SUBJECTS for v in _VERBS for o in _OBJECTS for p in _PLACES]
    if n > len(combos):
        raise ValueError(f"the embedded corpus has at most {len(combos)} sentences, asked for {n}")
    out = []
    for s, v, o, p in rng.sample(combos, n):
        text = f"{s} {v} {o} {p}"
        out.append(text[0].upper() + text[1:] + ("?" if rng.random() < 0.1 else "."))
    return out


class _Espeak:
    """The espeak-ng C library in synchronous mode: text in, 16-bit samples at ``rate`` out."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self):
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        # AUDIO_OUTPUT_SYNCHRONOUS = 2: samples go to the callback, espeak_Synth returns when done
        self.rate = self.lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise (espeakng-loader data path)")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # kept referenced: espeak-ng calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue

    def say(self, text: str, voice: str, wpm: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, wpm, 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
        self._chunks = []
        data = text.encode()
        # position 0, POS_CHARACTER (1), no end, espeakCHARS_UTF8 (1)
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None) != 0:
            raise RuntimeError(f"espeak-ng could not speak {text!r}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _speak_all(texts: list[str]) -> tuple[list[np.ndarray], int]:
    """Speak every text in order (runs in a fresh process, see the module doc): int16 waves, rate."""
    engine = _Espeak()
    return [engine.say(text, *VOICES[i % len(VOICES)]) for i, text in enumerate(texts)], engine.rate


def build_corpus(folder: str | Path, size: int = 200, seed: int = 0) -> Path:
    """Synthesise ``size`` sentences into ``folder`` (once) and return its manifest path.

    A manifest is only written after every WAV, under a temporary name renamed into place, so its
    presence means a complete build; a build of another size or seed replaces it.
    """
    import soundfile  # here, not at the top: the synthesis process needs only numpy and ctypes
    import torch
    import torchaudio

    from percli.core.data.paths import manifest_path, resolve_manifest_path
    from percli.core.data.shards import read_records

    folder = Path(folder)
    manifest = folder / MANIFEST
    texts = sentences(size, seed)
    if manifest.is_file():
        records = [record for _, record, _ in read_records(manifest, None)]
        if [r["text"] for r in records] == texts and all(Path(resolve_manifest_path(folder, r["audio"])).is_file()
                                                         for r in records):
            return manifest
    folder.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        waves, rate = pool.submit(_speak_all, texts).result()
    resample, paths = torchaudio.transforms.Resample(rate, SAMPLE_RATE), []  # one windowed-sinc kernel for all
    for i, wave in enumerate(waves):
        wave = resample(torch.from_numpy(wave.astype(np.float32) / 32768.0))
        paths.append(manifest_path(folder, folder / f"utt_{i:04d}.wav"))  # relative to the manifest's folder
        soundfile.write(str(folder / paths[-1]), wave.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text("".join(json.dumps({"audio": p, "text": t}) + "\n" for p, t in zip(paths, texts)))
    os.replace(tmp, manifest)
    return manifest
