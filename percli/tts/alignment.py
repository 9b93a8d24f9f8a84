"""Word timings (alignment files or the offline aligner), edit spans and the TTS prompt cut.

Word timings come from a user's alignment file (JSON from whisperX/percli or MFA, Praat TextGrid
from MFA in the long or short format, MFA CSV) or from :func:`align_words`, a forced aligner built
on pocketsphinx's English model (shipped inside its wheel, runs offline).

Edit spans follow VoiceCraft's speech-editing recipe: the words that differ between the original
and the target transcript are located in the original recording; for a substitution or deletion
the span runs from the first changed word's start to the last one's end, for an insertion from
the end of the word before to the start of the word after. 0.08 s is added on each side, the span
is clamped to [1/50 s, duration] and turned into 50 Hz codec frames with ``round(t * 50)``.
The official helper handles one contiguous edit; here separated edits become separate spans (the
model infills up to 3), and when a diff has more, the closest neighbouring edits are merged
(``max_spans=1`` gives the official single span). Spans that overlap once widened are merged.

Transcripts are split into words on whitespace; the i-th word must be the i-th aligned word,
as in the official scripts (:func:`words_with_timings` checks the counts).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CODEC_FRAME_RATE = 50
LEFT_MARGIN = 0.08
RIGHT_MARGIN = 0.08
MAX_SPANS = 3
PROMPT_MARGIN = 0.04
PROMPT_TOLERANCE = 1.0
# Interval labels that mark silence rather than a word (MFA, Kaldi/pocketsphinx conventions).
_SILENCE_LABELS = {"", "<eps>", "sil", "sp", "<sil>", "<s>", "</s>"}


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float  # seconds
    end: float  # seconds


# --------------------------------------------------------------------------------------------
# Alignment files


def read_alignment(path: str | Path) -> list[WordTiming]:
    """Word timings from a JSON, TextGrid or MFA CSV alignment file, in time order, silences left out."""
    path = Path(path)
    suffix = path.suffix.lower()
    readers = {".json": _read_json, ".textgrid": _read_textgrid, ".csv": _read_mfa_csv}
    if suffix not in readers:
        raise ValueError(f"{path}: unknown alignment format {suffix!r}; use .json, .TextGrid or .csv (MFA)")
    try:
        words = readers[suffix](path)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable {suffix} alignment ({exc})") from exc
    words = sorted((w for w in words if w.word.strip().lower() not in _SILENCE_LABELS), key=lambda w: w.start)
    if not words:
        raise ValueError(f"{path}: no word intervals found")
    return words


def _read_json(path: Path) -> list[WordTiming]:
    """``{"words": [...]}`` (percli), whisperX (``word_segments`` or ``segments[].words``) or MFA's JSON tiers."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if "tiers" in data:  # MFA: {"tiers": {"words": {"entries": [[start, end, label], ...]}, "phones": ...}}
        tiers = [t for name, t in data["tiers"].items() if _is_words_tier(name)]
        if not tiers:
            raise ValueError(f"no words tier among {sorted(data['tiers'])}")
        return [WordTiming(str(label), float(s), float(e)) for t in tiers for s, e, label in t["entries"]]
    if "words" in data:
        entries = data["words"]
    elif "word_segments" in data:
        entries = data["word_segments"]
    elif "segments" in data:
        entries = [w for seg in data["segments"] for w in seg["words"]]
    else:
        raise ValueError('expected a "words", "word_segments", "segments" or "tiers" key')
    for i, w in enumerate(entries):
        if "start" not in w or "end" not in w:  # whisperX leaves e.g. numerals it cannot align without times
            raise ValueError(f"word {i} ({w.get('word')!r}) has no start/end; spell it out and re-align")
    return [WordTiming(str(w["word"]).strip(), float(w["start"]), float(w["end"])) for w in entries]


def _read_mfa_csv(path: Path) -> list[WordTiming]:
    """MFA's CSV output: ``Begin,End,Label,Type,Speaker``, word rows have Type "words"."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"Begin", "End", "Label", "Type"} <= set(rows[0]):
        raise ValueError("expected the header Begin,End,Label,Type,Speaker")
    return [WordTiming(r["Label"], float(r["Begin"]), float(r["End"])) for r in rows if r["Type"] == "words"]


# A TextGrid is the same sequence of strings, numbers and flags in both its long ("xmin = 0") and short
# format; the long one adds "key =" labels and "[n]:" indices, which the tokenizer skips.
_TEXTGRID_TOKEN = re.compile(r'"((?:[^"]|"")*)"|\[\d*\]|(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)')


def _read_textgrid(path: Path) -> list[WordTiming]:
    raw = path.read_bytes()  # Praat writes UTF-16 when a label is not ASCII
    text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
    tokens: list[str | float] = []
    for m in _TEXTGRID_TOKEN.finditer(text):
        if m.group(1) is not None:
            tokens.append(m.group(1).replace('""', '"'))
        elif m.group(2) is not None:
            tokens.append(float(m.group(2)))
    # "ooTextFile", "TextGrid", xmin, xmax, [<exists>: dropped] n_tiers, then per tier: class, name, xmin,
    # xmax, n, and n items (start, end, label) for an IntervalTier or (time, mark) for a TextTier
    if tokens[:2] != ["ooTextFile", "TextGrid"]:
        raise ValueError('not a Praat TextGrid (expected File type = "ooTextFile", Object class = "TextGrid")')
    n_tiers = int(tokens[4]) if len(tokens) > 4 else 0
    pos, names, words = 5, [], []
    for _ in range(n_tiers):
        kind, name, n = tokens[pos], str(tokens[pos + 1]), int(tokens[pos + 4])
        width = 3 if kind == "IntervalTier" else 2
        items = [tokens[pos + 5 + i * width : pos + 5 + (i + 1) * width] for i in range(n)]
        pos += 5 + n * width
        names.append(name)
        if width == 3 and _is_words_tier(name):
            words += [WordTiming(str(label), float(start), float(end)) for start, end, label in items]
    if not any(_is_words_tier(n) for n in names):
        raise ValueError(f"no words interval tier among {names}")
    return words


def _is_words_tier(name: str) -> bool:
    """MFA names the tier "words", or "<speaker> - words" when a file has several speakers."""
    return name == "words" or name.endswith(" - words")


def write_alignment_json(path: str | Path, words: list[WordTiming]) -> None:
    """Write ``{"words": [{"word", "start", "end"}]}`` (the JSON :func:`read_alignment` reads), atomically."""
    from percli.core.rundir import write_json_atomic

    write_json_atomic(Path(path), {"words": [{"word": w.word, "start": w.start, "end": w.end} for w in words]})


def words_with_timings(transcript: str, timings: list[WordTiming]) -> list[WordTiming]:
    """One timing per whitespace-separated transcript word.

    Aligners drop punctuation-only tokens ("--", "&"); they get an empty interval at the end of the
    word before. Otherwise the i-th spoken word takes the i-th timing, as in the official scripts.
    """
    words = transcript.split()
    spoken = [w for w in words if any(c.isalnum() for c in w)]
    if len(spoken) != len(timings):
        raise ValueError(
            f"the alignment has {len(timings)} words but the transcript has {len(spoken)} "
            f"(alignment: {' '.join(t.word for t in timings[:12])} ...); the alignment must be of this exact "
            "transcript: re-run the aligner or fix the transcript"
        )
    out, it, last_end = [], iter(timings), 0.0
    for w in words:
        if any(c.isalnum() for c in w):
            t = next(it)
            out.append(WordTiming(w, t.start, t.end))
            last_end = t.end
        else:
            out.append(WordTiming(w, last_end, last_end))
    return out


# --------------------------------------------------------------------------------------------
# Offline forced alignment (pocketsphinx)

# espeak-ng phones (en-us, no stress, as :func:`percli.tts.text.phonemize` writes them) -> CMU/ARPAbet
# phones of pocketsphinx's dictionary; used to pronounce words missing from that dictionary.
_IPA_TO_ARPABET = {
    "ɑː": "AA", "ɑ": "AA", "ɒ": "AA", "a": "AA", "æ": "AE", "ʌ": "AH", "ə": "AH", "ɐ": "AH", "ɔː": "AO", "ɔ": "AO",
    "aʊ": "AW", "aɪ": "AY", "ɛ": "EH", "e": "EH", "ɜː": "ER", "ɝ": "ER", "ɚ": "ER", "eɪ": "EY", "ɪ": "IH",
    "ᵻ": "IH", "i": "IY", "iː": "IY", "oʊ": "OW", "o": "OW", "oː": "AO", "ɔɪ": "OY", "ʊ": "UH", "uː": "UW",
    "u": "UW", "ɑːɹ": "AA R", "ɔːɹ": "AO R", "oːɹ": "AO R", "ɪɹ": "IH R", "ɛɹ": "EH R", "ʊɹ": "UH R",
    "aɪɚ": "AY ER", "aɪə": "AY AH", "aʊɚ": "AW ER", "iə": "IY AH", "ʊə": "UH AH", "əl": "AH L",
    "b": "B", "d": "D", "f": "F", "g": "G", "ɡ": "G", "h": "HH", "k": "K", "x": "K", "l": "L", "m": "M",
    "n": "N", "p": "P", "s": "S", "t": "T", "ɾ": "T", "ʔ": "T", "v": "V", "w": "W", "z": "Z", "ŋ": "NG",
    "ð": "DH", "θ": "TH", "ʃ": "SH", "ʒ": "ZH", "tʃ": "CH", "dʒ": "JH", "j": "Y", "ɹ": "R", "r": "R",
}
_ALIGN_RATE = 16000
_FILLERS = {"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]"}  # the model's noisedict
_ALIGN_FRAMES_PER_SECOND = 100
# Measured on 36 espeak-ng sentences (6 voices): alternative pronunciations (e.g. "and(2)" AE N D) absorb
# pauses into a stretched vowel and put word starts up to 0.15 s early; a higher silence probability lets the
# aligner place pauses between words; the best-path pass sometimes ends in silence and loses the last words.
_DECODER_OPTIONS = {"fsgusealtpron": False, "silprob": 0.5, "bestpath": False, "loglevel": "FATAL"}
# If the search still loses the path: once more with much wider beams (as MFA retries with a wider beam).
_TRIES = ({}, {"beam": 1e-100, "wbeam": 1e-80, "pbeam": 1e-100})
# Digital silence (exact zeros) breaks pocketsphinx's silence model; -60 dBFS of fixed-seed noise fixes it.
_DITHER = 1e-3


def _dictionary_word(word: str) -> str:
    return word.lower().replace("’", "'").strip(".,;:!?\"'()[]{}…“”‘«»-—")


def _arpabet(word: str) -> str:
    """ARPAbet pronunciation of a word missing from pocketsphinx's dictionary, through espeak-ng."""
    from percli.tts.text import phonemize

    phones = []
    for token in phonemize(word):
        if not any(c.isalnum() for c in token):  # word separator, punctuation
            continue
        while token:  # longest known prefix first ("ɑːɹ" before "ɑː")
            head = next((token[:k] for k in range(len(token), 0, -1) if token[:k] in _IPA_TO_ARPABET), None)
            if head is None:
                raise ValueError(f"cannot pronounce {word!r} for the aligner (espeak-ng phone {token!r}); "
                                 "pass an alignment file from MFA/whisperX instead")
            phones.append(_IPA_TO_ARPABET[head])
            token = token[len(head) :]
    if not phones:
        raise ValueError(f"cannot pronounce {word!r} for the aligner; spell it out or pass an alignment file")
    return " ".join(phones)


def align_words(wav: np.ndarray, sample_rate: int, transcript: str) -> list[WordTiming]:
    """Force-align ``transcript`` to speech with pocketsphinx's English model (offline).

    Args:
        wav: float waveform in [-1, 1], ``[T]`` or ``[channels, T]`` (channels are averaged).
        sample_rate: rate of ``wav``; it is resampled to 16 kHz.
        transcript: what is said; punctuation-only tokens are skipped (see :func:`words_with_timings`).

    Returns:
        One timing per spoken transcript word (original spelling), in order.
    """
    try:
        from pocketsphinx import Decoder
    except ImportError as exc:
        raise RuntimeError(
            "the offline aligner needs pocketsphinx (`pip install pocketsphinx`, its wheel ships the English "
            "model), or pass an alignment file from MFA/whisperX (--alignment)"
        ) from exc
    import torch
    import torchaudio

    words = [w for w in transcript.split() if any(c.isalnum() for c in w)]
    if not words:
        raise ValueError("the transcript has no words to align")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    wave = torchaudio.functional.resample(torch.from_numpy(wav), sample_rate, _ALIGN_RATE).numpy()
    wave = wave + _DITHER * np.random.default_rng(0).standard_normal(wave.shape[0]).astype(np.float32)
    pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)

    keys = [_dictionary_word(w) for w in words]
    for extra in _TRIES:
        decoder = Decoder(samprate=_ALIGN_RATE, **_DECODER_OPTIONS, **extra)
        for key in dict.fromkeys(keys):
            if decoder.lookup_word(key) is None:
                decoder.add_word(key, _arpabet(key), True)
        decoder.set_align_text(" ".join(keys))
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        segments = [s for s in decoder.seg() or [] if s.word not in _FILLERS]
        if len(segments) == len(words):
            break
    else:
        raise RuntimeError(
            f"pocketsphinx aligned {len(segments)} of {len(words)} words; check that the transcript matches "
            "the audio, or pass an alignment file from MFA/whisperX (--alignment)"
        )
    fps = _ALIGN_FRAMES_PER_SECOND
    return [WordTiming(w, s.start_frame / fps, (s.end_frame + 1) / fps) for w, s in zip(words, segments)]


# --------------------------------------------------------------------------------------------
# Edit spans


@dataclass(frozen=True)
class WordEdit:
    """Half-open word ranges ``[start, end)`` that differ: ``orig`` in the original, ``new`` in the target."""

    orig_start: int
    orig_end: int
    new_start: int
    new_end: int

    @property
    def kind(self) -> str:
        if self.orig_start == self.orig_end:
            return "insertion"
        return "deletion" if self.new_start == self.new_end else "substitution"


@dataclass(frozen=True)
class EditSpan:
    """A masked interval of the original recording: seconds (margins added, clamped) and codec frames."""

    edits: tuple[WordEdit, ...]
    start: float
    end: float
    start_frame: int
    end_frame: int

    @property
    def kind(self) -> str:
        kinds = {e.kind for e in self.edits}
        return kinds.pop() if len(kinds) == 1 else "substitution"


def word_edits(orig_transcript: str, target_transcript: str, max_spans: int = MAX_SPANS) -> list[WordEdit]:
    """The word-level edits turning the original transcript into the target, at most ``max_spans``.

    The common prefix and suffix are never edited; in between, a word diff separates the changes.
    When there are more than ``max_spans`` of them, the two closest (fewest unchanged words in
    between) are merged until they fit.
    """
    orig, new = orig_transcript.split(), target_transcript.split()
    if orig == new:
        raise ValueError("the target transcript is the same as the original: nothing to edit")
    prefix = 0
    while prefix < min(len(orig), len(new)) and orig[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(orig), len(new)) - prefix and orig[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    matcher = difflib.SequenceMatcher(None, orig[prefix : len(orig) - suffix], new[prefix : len(new) - suffix],
                                      autojunk=False)
    edits = [WordEdit(prefix + i1, prefix + i2, prefix + j1, prefix + j2)
             for op, i1, i2, j1, j2 in matcher.get_opcodes() if op != "equal"]
    while len(edits) > max(max_spans, 1):
        gaps = [b.orig_start - a.orig_end for a, b in zip(edits, edits[1:])]
        i = gaps.index(min(gaps))
        a, b = edits[i], edits[i + 1]
        edits[i : i + 2] = [WordEdit(a.orig_start, b.orig_end, a.new_start, b.new_end)]
    return edits


def edit_spans(
    orig_transcript: str,
    target_transcript: str,
    timings: list[WordTiming],
    duration: float,
    max_spans: int = MAX_SPANS,
    left_margin: float = LEFT_MARGIN,
    right_margin: float = RIGHT_MARGIN,
    frame_rate: int = CODEC_FRAME_RATE,
) -> list[EditSpan]:
    """Masked intervals of the original recording for turning its transcript into the target.

    Args:
        orig_transcript: what the recording says.
        target_transcript: what it should say.
        timings: one per original transcript word (:func:`words_with_timings`).
        duration: length of the recording in seconds.
        max_spans: most spans returned (the released models infill up to 3; 1 = official single span).

    Returns:
        Spans in time order, non-overlapping; ``[start_frame, end_frame)`` at ``frame_rate``.

    Raises:
        ValueError: if an edited stretch of the timings is not finite or not within the recording
            (``0 <= start <= end <= duration``, give or take one codec frame): the timings are not this audio's.
    """
    if len(timings) != len(orig_transcript.split()):
        raise ValueError(f"{len(timings)} word timings for {len(orig_transcript.split())} transcript words")
    spans: list[EditSpan] = []
    for edit in word_edits(orig_transcript, target_transcript, max_spans):
        if edit.kind == "insertion":  # between the neighbouring words
            i = edit.orig_start
            start = timings[i - 1].end if i > 0 else 0.0
            end = timings[i].start if i < len(timings) else duration
        else:
            start, end = timings[edit.orig_start].start, timings[edit.orig_end - 1].end
        around = int(edit.kind == "insertion")  # an insertion's span comes from its neighbours
        _check_span(start, end, duration, timings[max(edit.orig_start - around, 0): edit.orig_end + around],
                    1 / frame_rate)
        start = max(start - left_margin, 1 / frame_rate)
        end = min(end + right_margin, duration)
        span = EditSpan((edit,), start, end, round(start * frame_rate), round(end * frame_rate))
        if spans and span.start_frame <= spans[-1].end_frame:  # widened spans touch: one span
            prev = spans.pop()
            span = EditSpan(prev.edits + span.edits, prev.start, max(prev.end, span.end), prev.start_frame,
                            max(prev.end_frame, span.end_frame))
        spans.append(span)
    return spans


def _check_span(start: float, end: float, duration: float, words: list[WordTiming], tolerance: float) -> None:
    """An edit span from word timings lies within the recording (``tolerance``: codec frame rounding)."""
    finite = math.isfinite(start) and math.isfinite(end)
    if finite and start >= -tolerance and end <= duration + tolerance and start <= end + tolerance:
        return
    named = " ".join(w.word for w in words)
    raise ValueError(f"the edit span {start:.2f}-{end:.2f} s (from the timings of {named!r}) does not lie within the "
                     f"{duration:.2f} s audio (0 <= start <= end <= {duration:.2f}); give word timings of this "
                     "recording, in seconds from its start (or no --alignment, to align it offline)")


# --------------------------------------------------------------------------------------------
# Zero-shot TTS prompt


def find_prompt_cut(
    timings: list[WordTiming],
    cut_off: float,
    margin: float = PROMPT_MARGIN,
    tolerance: float = PROMPT_TOLERANCE,
) -> tuple[float, int]:
    """Where to end the TTS prompt near ``cut_off`` seconds: ``(time, index of the last prompt word)``.

    VoiceCraft's ``find_closest_word_boundary``: the first word ending at or after ``cut_off``,
    within ``tolerance``, that is followed by a pause of at least ``margin`` is cut at its end
    plus 2/3 of the margin; failing that, the cut is the end of the first word ending at or after
    ``cut_off`` (no pause). The last word has no following word, so it only serves as the fallback.
    """
    fallback = None
    for i, w in enumerate(timings):
        if w.end < cut_off:
            continue
        if fallback is None:
            fallback = (w.end, i)
        if w.end < cut_off + tolerance and i + 1 < len(timings) and timings[i + 1].start - w.end >= margin:
            return w.end + margin * 2 / 3, i
    if fallback is None:
        last = timings[-1].end if timings else 0.0
        raise ValueError(f"no word ends after the prompt cut-off {cut_off:.2f} s (last word ends at {last:.2f} s); "
                         "choose a shorter cut-off")
    return fallback


def tts_target_text(prompt_transcript: str, last_prompt_word: int, text: str) -> str:
    """The transcript the model continues: the prompt's words up to the cut, then the new text."""
    return " ".join(prompt_transcript.split()[: last_prompt_word + 1] + [text.strip()])
