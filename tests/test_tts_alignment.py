"""Alignment files, the offline aligner, edit spans (hand-computed frames) and the TTS prompt cut."""

import ctypes
import json

import numpy as np
import pytest

from percli.tts.alignment import (
    WordTiming,
    align_words,
    edit_spans,
    find_prompt_cut,
    read_alignment,
    tts_target_text,
    word_edits,
    words_with_timings,
    write_alignment_json,
)

WORDS = [("the", 0.06, 0.24), ("quick", 0.30, 0.62), ("brown", 0.70, 1.02), ("fox", 1.10, 1.44), ("jumps", 1.52, 2.12)]
TIMINGS = [WordTiming(*w) for w in WORDS]
ORIG = "the quick brown fox jumps"
DURATION = 2.2

# --------------------------------------------------------------------------------------------
# Alignment files

TEXTGRID_LONG = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2.2
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 2.2
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 0.06
            text = ""
        intervals [2]:
            xmin = 0.06
            xmax = 0.24
            text = "the"
        intervals [3]:
            xmin = 0.24
            xmax = 0.62
            text = "qu""ick"
        intervals [4]:
            xmin = 0.62
            xmax = 2.2
            text = "brown"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 2.2
        intervals: size = 1
        intervals [1]:
            xmin = 0.06
            xmax = 0.1
            text = "DH"
"""

TEXTGRID_SHORT = """File type = "ooTextFile"
Object class = "TextGrid"

0
2.2
<exists>
2
"TextTier"
"events"
0
2.2
1
0.5
"click [1]"
"IntervalTier"
"words"
0
2.2
4
0
0.06
""
0.06
0.24
"the"
0.24
0.62
"qu""ick"
0.62
2.2
"brown"
"""

EXPECTED_TEXTGRID = [WordTiming("the", 0.06, 0.24), WordTiming('qu"ick', 0.24, 0.62), WordTiming("brown", 0.62, 2.2)]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("content", [TEXTGRID_LONG, TEXTGRID_SHORT], ids=["long", "short"])
def test_textgrid_words_tier_in_long_and_short_format(tmp_path, content, encoding):
    path = tmp_path / "a.TextGrid"
    path.write_bytes(content.encode(encoding))  # Python's utf-16 writes a BOM, as Praat does
    assert read_alignment(path) == EXPECTED_TEXTGRID


def test_textgrid_without_words_tier_is_an_error(tmp_path):
    path = tmp_path / "a.TextGrid"
    path.write_text(TEXTGRID_LONG.replace('"words"', '"tokens"'))
    with pytest.raises(ValueError, match=r"no words interval tier among \['tokens', 'phones'\]"):
        read_alignment(path)


def test_mfa_csv_keeps_word_rows(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(
        "Begin,End,Label,Type,Speaker\n"
        "0.06,0.24,the,words,spk\n0.30,0.62,quick,words,spk\n0.06,0.1,DH,phones,spk\n0.1,0.24,AH0,phones,spk\n"
    )
    assert read_alignment(path) == [WordTiming("the", 0.06, 0.24), WordTiming("quick", 0.30, 0.62)]


@pytest.mark.parametrize(
    "data",
    [
        {"words": [{"word": w, "start": s, "end": e} for w, s, e in WORDS[:2]]},  # percli
        {"segments": [{"start": 0.0, "end": 1.0, "text": " the quick",  # whisperX
                       "words": [{"word": w, "start": s, "end": e, "score": 0.9} for w, s, e in WORDS[:2]]}]},
        {"word_segments": [{"word": w, "start": s, "end": e} for w, s, e in WORDS[:2]]},
        {"start": 0, "end": 2.2, "tiers": {  # MFA JSON
            "words": {"type": "interval_tier", "entries": [[0.30, 0.62, "quick"], [0.06, 0.24, "the"]]},
            "phones": {"type": "interval_tier", "entries": [[0.06, 0.1, "DH"]]}}},
    ],
    ids=["percli", "whisperx-segments", "whisperx-word-segments", "mfa"],
)
def test_json_alignments(tmp_path, data):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    assert read_alignment(path) == TIMINGS[:2]


def test_json_word_without_times_is_an_error(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"word_segments": [{"word": "the", "start": 0.1, "end": 0.2}, {"word": "1990"}]}))
    with pytest.raises(ValueError, match="word 1 \\('1990'\\) has no start/end"):
        read_alignment(path)


def test_written_json_reads_back(tmp_path):
    write_alignment_json(tmp_path / "w.json", TIMINGS)
    assert read_alignment(tmp_path / "w.json") == TIMINGS


def test_unknown_alignment_format_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="use .json, .TextGrid or .csv"):
        read_alignment(tmp_path / "a.txt")


def test_transcript_words_get_timings_and_punctuation_tokens_are_empty():
    timed = words_with_timings("The quick -- brown,", [WordTiming("the", 0.1, 0.2), *TIMINGS[1:3]])
    assert [(t.word, t.start, t.end) for t in timed] == [
        ("The", 0.1, 0.2), ("quick", 0.30, 0.62), ("--", 0.62, 0.62), ("brown,", 0.70, 1.02)]
    with pytest.raises(ValueError, match="the alignment has 3 words but the transcript has 2"):
        words_with_timings("the quick", TIMINGS[:3])


# --------------------------------------------------------------------------------------------
# Edit spans: margins 0.08 s, clamp to [0.02 s, duration], frames = round(t * 50)


def _spans(target, timings=TIMINGS, orig=ORIG, duration=DURATION, **kw):
    spans = edit_spans(orig, target, timings, duration, **kw)
    return [(s.kind, s.start_frame, s.end_frame) for s in spans]


@pytest.mark.parametrize(
    "target, expected",
    [
        # brown [0.70, 1.02] -> [0.62, 1.10]
        ("the quick red fox jumps", [("substitution", 31, 55)]),
        # between brown's end 1.02 and fox's start 1.10 -> [0.94, 1.18]
        ("the quick brown lazy fox jumps", [("insertion", 47, 59)]),
        # quick..brown [0.30, 1.02] -> [0.22, 1.10]
        ("the fox jumps", [("deletion", 11, 55)]),
        # before "the": [0, 0.06] -> [0.02 (clamped), 0.14]
        ("oh the quick brown fox jumps", [("insertion", 1, 7)]),
        # after "jumps": [2.12, duration] -> [2.04, 2.2]
        ("the quick brown fox jumps high", [("insertion", 102, 110)]),
        # jumps [1.52, 2.12] -> [1.44, 2.2 (clamped)]
        ("the quick brown fox", [("deletion", 72, 110)]),
        # two spans: the [0.06, 0.24] -> [0.02, 0.32]; fox [1.10, 1.44] -> [1.02, 1.52]
        ("a quick brown cat jumps", [("substitution", 1, 16), ("substitution", 51, 76)]),
    ],
)
def test_edit_spans_hand_computed_frames(target, expected):
    assert _spans(target) == expected


def test_single_span_mode_covers_all_edits_like_the_official_helper():
    # brown..jumps [0.70, 2.12] -> [0.62, 2.2]
    assert _spans("the quick red fox leaps", max_spans=1) == [("substitution", 31, 110)]


def test_edits_beyond_max_spans_merge_the_closest():
    edits = word_edits("a b c d e f g h i", "x b y d z f g w i", max_spans=3)
    assert [(e.orig_start, e.orig_end) for e in edits] == [(0, 3), (4, 5), (7, 8)]


def test_spans_that_overlap_after_margins_merge():
    timings = [WordTiming("a", 0.5, 0.6), WordTiming("b", 0.6, 0.7), WordTiming("c", 0.7, 0.8)]
    # a -> [0.42, 0.68], c -> [0.62, 0.88]: one span [0.42, 0.88]
    spans = edit_spans("a b c", "x b z", timings, 1.0)
    assert [(s.kind, s.start_frame, s.end_frame, len(s.edits)) for s in spans] == [("substitution", 21, 44, 2)]


def test_identical_transcripts_are_rejected():
    with pytest.raises(ValueError, match="same as the original"):
        edit_spans(ORIG, "the  quick brown fox jumps ", TIMINGS, DURATION)


# --------------------------------------------------------------------------------------------
# TTS prompt cut (find_closest_word_boundary)

PROMPT = [WordTiming("w0", 0.00, 0.40), WordTiming("w1", 0.42, 0.90), WordTiming("w2", 0.91, 1.50),
          WordTiming("w3", 1.60, 2.00), WordTiming("w4", 2.02, 2.60)]


def test_prompt_cut_prefers_a_word_followed_by_a_pause():
    # w1 ends at 0.90 but w2 follows 0.01 s later; w2 ends at 1.50 with 0.10 s before w3: cut 1.50 + 0.04 * 2/3
    time, index = find_prompt_cut(PROMPT, 0.85)
    assert index == 2 and time == pytest.approx(1.50 + 0.04 * 2 / 3)


def test_prompt_cut_falls_back_to_the_first_word_end_outside_tolerance():
    assert find_prompt_cut(PROMPT, 0.85, tolerance=0.5) == (0.90, 1)
    assert find_prompt_cut(PROMPT, 2.1) == (2.60, 4)  # last word: no following pause to check
    with pytest.raises(ValueError, match="no word ends after the prompt cut-off 3.00 s"):
        find_prompt_cut(PROMPT, 3.0)


def test_tts_target_text_continues_the_prompt_words():
    assert tts_target_text("Gwynplaine had, besides, for his work", 2, "  I cannot believe it! ") == (
        "Gwynplaine had, besides, I cannot believe it!")


# --------------------------------------------------------------------------------------------
# Offline aligner on espeak-ng speech


class _EspeakEvent(ctypes.Structure):  # espeak_EVENT from speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


def _speak_with_word_starts(text):
    """espeak-ng speech of ``text`` and the start time of each word that espeak-ng reports (by char offset)."""
    from percli.tts.corpus import _Espeak

    starts = {}

    class Engine(_Espeak):
        def _collect(self, wav, n, events):
            event = ctypes.cast(events, ctypes.POINTER(_EspeakEvent))
            i = 0
            while events and event[i].type != 0:  # espeakEVENT_LIST_TERMINATED
                if event[i].type == 1:  # espeakEVENT_WORD; text_position counts from 1
                    starts[event[i].text_position - 1] = event[i].sample / self.rate
                i += 1
            return super()._collect(wav, n, events)

    engine = Engine()
    wave = engine.say(text, "en-us", 165, 50).astype(np.float32) / 32768.0
    return wave, engine.rate, starts


def test_aligner_matches_espeak_word_starts():
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("espeakng_loader")
    # "Gwynplaine" is not in pocketsphinx's dictionary: pronounced through espeak-ng phonemes
    text = "Gwynplaine carried a heavy bag, and my sister painted the wooden door."
    wave, rate, starts = _speak_with_word_starts(text)
    timings = align_words(wave, rate, text)
    assert [t.word for t in timings] == text.split()
    assert all(a.start < a.end <= b.start for a, b in zip(timings, timings[1:]))
    offsets = [text.index(w, sum(len(x) + 1 for x in text.split()[:i])) for i, w in enumerate(text.split())]
    compared = [(t.start, starts[o]) for t, o in zip(timings, offsets) if o in starts]
    assert len(compared) >= 9  # espeak-ng reports most words ("the" after a verb is part of it)
    assert max(abs(a - b) for a, b in compared) < 0.1


def test_aligner_rejects_a_transcript_it_cannot_fit():
    pytest.importorskip("pocketsphinx")
    with pytest.raises(ValueError, match="no words to align"):
        align_words(np.zeros(16000, np.float32), 16000, " -- ")
