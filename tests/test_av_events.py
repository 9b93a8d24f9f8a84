"""Embedded audio-video event clips (percli.core.data.av_events) and their reader (percli.core.data.av_clips)."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import soundfile
import torch

from percli.avsuperb.minibench import write_video
from percli.core.data.av_clips import READ_REASONS, AVClipDataset, collate_av_clips, skipped_by_reason
from percli.core.data.av_events import (
    EVENTS,
    LABELS,
    AVEventsSpec,
    EmbeddedAVEvents,
    make_av_events,
    make_av_events_splits,
    render_av_clip,
)
from percli.core.data.images import BadSample
from percli.core.data.loader import SeededSamples, collate_skip_bad

KEYWORD = {label: label.split("_")[0] for label in LABELS}  # a word every phrase of the event contains


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Six written clips (default spec) and their manifest."""
    return make_av_events(tmp_path_factory.mktemp("av") / "train", 6, seed=3)


def _files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- generator


def test_rendering_is_a_function_of_seed_split_and_index():
    a, b = render_av_clip(7, "train", 4), render_av_clip(7, "train", 4)
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.frames, b.frames)
    assert a.events == b.events and a.captions == b.captions
    for other in (render_av_clip(8, "train", 4), render_av_clip(7, "test", 4), render_av_clip(7, "train", 5)):
        assert not np.array_equal(a.audio, other.audio)


def test_written_split_is_byte_identical_for_a_seed_and_matches_the_renderer(tmp_path):
    first = make_av_events(tmp_path / "a", 3, seed=11).parent
    second = make_av_events(tmp_path / "b", 3, seed=11).parent
    assert _files(first) == _files(second)
    assert _files(first) != _files(make_av_events(tmp_path / "c", 3, seed=12).parent)
    assert {"README.txt", "captions.jsonl", "events.tsv", "clips/train_00000.mp4", "clips/train_00000.wav"} <= set(
        _files(first))
    lines = [json.loads(line) for line in (first / "captions.jsonl").read_text().splitlines()]
    rows = (first / "events.tsv").read_text().splitlines()
    assert rows[0] == "filename\tonset\toffset\tevent_label"
    for index, line in enumerate(lines):
        clip = render_av_clip(11, "train", index)
        assert line == {"id": clip.id, "video": f"clips/{clip.id}.mp4", "audio": f"clips/{clip.id}.wav",
                        "captions": list(clip.captions)}
        wav, rate = soundfile.read(first / line["audio"], dtype="float32")
        assert rate == 16000 and np.abs(wav - clip.audio).max() <= 1 / 32767 + 1e-6  # 16-bit rounding only
        expected = [f"{clip.id}.wav\t{on:.3f}\t{off:.3f}\t{label}" for label, on, off in clip.events]
        assert [r for r in rows[1:] if r.startswith(clip.id + ".wav")] == expected


@pytest.mark.parametrize("sample_rate", [16000, 48000])
def test_strong_labels_mark_where_the_sound_is(sample_rate):
    spec = AVEventsSpec(sample_rate=sample_rate)
    for index in range(12):
        clip = render_av_clip(0, "train", index, spec)
        assert clip.audio.shape == (4 * sample_rate,) and clip.audio.dtype == np.float32
        assert np.abs(clip.audio).max() <= 1.0
        spans = [slice(round(on * sample_rate), round(off * sample_rate)) for _, on, off in clip.events]
        inside = np.zeros(clip.audio.size, dtype=bool)
        for span in spans:
            inside[span] = True
        background = float(np.sqrt(np.mean(clip.audio[~inside] ** 2)))  # events never fill a whole clip here
        for (label, onset, offset), span in zip(clip.events, spans):
            assert label in LABELS and 0 <= onset < offset <= 4.0
            rms = float(np.sqrt(np.mean(clip.audio[span] ** 2)))
            assert rms > 10 * background, (index, label, rms, background)
            edge = sample_rate // 100  # audible within 10 ms of the onset and of the offset, not 10 ms outside
            others = np.zeros_like(inside)
            for other in spans:
                if other != span:
                    others[other] = True
            for part, outside in ((slice(span.start, span.start + edge), slice(span.start - edge, span.start)),
                                  (slice(span.stop - edge, span.stop), slice(span.stop, span.stop + edge))):
                loud = np.abs(clip.audio[part]).max()
                assert loud > 5 * background, (index, label)
                if outside.start >= 0 and outside.stop <= clip.audio.size and not others[outside].any():
                    assert np.abs(clip.audio[outside]).max() < loud, (index, label)
        onsets = [on for _, on, _ in clip.events]
        assert onsets == sorted(onsets) and len({label for label, _, _ in clip.events}) == len(clip.events)


def test_shapes_are_drawn_exactly_in_the_frames_of_their_events():
    spec = AVEventsSpec()
    for index in range(12):
        clip = render_av_clip(1, "test", index, spec)
        assert clip.frames.shape == (32, 64, 64, 3) and clip.frames.dtype == np.uint8
        for f, frame in enumerate(clip.frames):
            start, end = f / spec.fps, (f + 1) / spec.fps
            meets = any(start < off and end > on for _, on, off in clip.events)
            # The background stays under 57 in every channel; every event colour has a channel over 120.
            assert (frame.max() > 100) == meets, (index, f, clip.events)


def test_captions_name_the_events_in_onset_order():
    seen_connectors = set()
    for index in range(40):
        clip = render_av_clip(2, "train", index)
        assert len(clip.captions) == 3 and len(set(clip.captions)) == 3
        for caption in clip.captions:
            positions = [caption.find(KEYWORD[label]) for label, _, _ in clip.events]
            assert all(p >= 0 for p in positions) and positions == sorted(positions), (caption, clip.events)
            named = {label for label in LABELS if re.search(rf"\b{KEYWORD[label]}", caption)}
            assert named == {label for label, _, _ in clip.events}, caption
            if len(clip.events) > 1:
                overlap = clip.events[1][1] < clip.events[0][2]
                middle = caption[positions[0] : positions[1]]
                seen_connectors.add(overlap)
                assert any(word in middle for word in ("while", "together", "same time", "meanwhile", "mixed")) \
                    == overlap, (caption, clip.events)
    assert seen_connectors == {True, False}


@pytest.mark.parametrize("kwargs", [dict(duration_s=0.5), dict(max_events=9), dict(max_events=3, duration_s=1.0),
                                    dict(size=63), dict(captions_per_clip=6), dict(fps=0), dict(sample_rate=100)])
def test_bad_spec_is_refused(kwargs):
    with pytest.raises(ValueError):
        AVEventsSpec(**kwargs)


def test_splits_are_disjoint_and_cached(tmp_path):
    paths = make_av_events_splits(tmp_path, seed=4, num_train=2, num_test=2)
    assert set(paths) == {"train", "test"}
    train = [json.loads(line)["id"] for line in paths["train"].read_text().splitlines()]
    assert train == ["train_00000", "train_00001"]
    train_wav = soundfile.read(paths["train"].parent / "clips/train_00000.wav")[0]
    test_wav = soundfile.read(paths["test"].parent / "clips/test_00000.wav")[0]
    assert not np.array_equal(train_wav, test_wav)
    before = paths["train"].stat().st_mtime_ns
    assert make_av_events_splits(tmp_path, seed=4, num_train=2, num_test=2) == paths
    assert paths["train"].stat().st_mtime_ns == before  # reused, not rewritten
    make_av_events(tmp_path / "train", 3, seed=4)  # other arguments: rebuilt
    assert len(paths["train"].read_text().splitlines()) == 3


def test_a_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    for foreign in (tmp_path, tmp_path / "mine.txt"):
        with pytest.raises(ValueError, match="not an empty folder"):
            make_av_events(foreign, 1)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="split"):
        make_av_events(tmp_path / "x", 1, split="val")


def test_embedded_dataset_renders_the_written_clips(split):
    written = AVClipDataset(split, num_frames=5)
    embedded = EmbeddedAVEvents(6, seed=3, num_frames=5)
    assert len(embedded) == 6 and embedded.classes == list(LABELS)
    for index in (0, 5):
        mine, theirs = embedded[index], written[index]
        assert mine["id"] == theirs["id"] and mine["captions"] == theirs["captions"]
        assert mine["frames"].shape == theirs["frames"].shape == (5, 3, 64, 64) and mine["frames"].dtype == torch.uint8
        assert (mine["waveform"] - theirs["waveform"]).abs().max() <= 1 / 32767 + 1e-6
        # MPEG-4 is lossy: the decoded frames are close to the rendered ones, not equal.
        assert (mine["frames"].float() - theirs["frames"].float()).abs().mean() < 8
    with pytest.raises(IndexError):
        embedded[6]


# ---------------------------------------------------------------------------------------------- reader


@pytest.mark.parametrize("kwargs, audio, frames", [
    (dict(num_frames=8, frame_size=32), (1, 64000), (8, 3, 32, 32)),
    (dict(fps=4, sample_rate=48000), (1, 192000), (16, 3, 64, 64)),
    (dict(sample_rate=8000, frame_size=(16, 24)), (1, 32000), (32, 3, 16, 24)),
    (dict(modalities=("audio",)), (1, 64000), None),
    (dict(modalities=("video",), num_frames=3), None, (3, 3, 64, 64)),
])
def test_reader_returns_the_requested_shapes(split, kwargs, audio, frames):
    dataset = AVClipDataset(split, **kwargs)
    item = dataset[1]
    assert item["id"] == "train_00001" and len(item["captions"]) == 3
    if audio is None:
        assert "waveform" not in item
    else:
        assert tuple(item["waveform"].shape) == audio and item["waveform"].dtype == torch.float32
    if frames is None:
        assert "frames" not in item
    else:
        assert tuple(item["frames"].shape) == frames and item["frames"].dtype == torch.uint8
    assert not dataset.skipped


def test_reader_accepts_records_and_the_video_audio_track(split):
    folder = split.parent
    records = [{"id": "a", "video": str(folder / "clips/train_00002.mp4"), "captions": ["x"]}]
    item = AVClipDataset(records, num_frames=2)[0]
    assert item["waveform"].shape[0] == 1 and item["waveform"].shape[1] >= 64000  # AAC adds priming samples
    assert item["frames"].shape == (2, 3, 64, 64)


def test_collate_pads_right_and_masks_the_padding():
    items = [{"id": "a", "captions": ["one"], "waveform": torch.ones(1, 5), "frames": torch.full((2, 3, 4, 4), 7,
                                                                                                    dtype=torch.uint8)},
             {"id": "b", "captions": ["two", "2"], "waveform": torch.full((1, 3), 2.0),
              "frames": torch.full((4, 3, 4, 4), 9, dtype=torch.uint8)}]
    batch = collate_av_clips(items)
    assert batch["id"] == ["a", "b"] and batch["captions"] == [["one"], ["two", "2"]]
    assert batch["waveform"].shape == (2, 1, 5) and batch["frames"].shape == (2, 4, 3, 4, 4)
    assert batch["audio_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch["video_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["waveform"][1, 0].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]
    assert batch["frames"][0, 2:].eq(0).all() and batch["frames"][0, :2].eq(7).all() and batch["frames"][1].eq(9).all()
    with pytest.raises(ValueError, match="empty batch"):
        collate_av_clips([])
    with pytest.raises(ValueError, match="frame_size"):
        collate_av_clips([items[0], {**items[1], "frames": torch.zeros(4, 3, 5, 5, dtype=torch.uint8)}])
    with pytest.raises(ValueError, match="different keys"):
        collate_av_clips([items[0], {k: v for k, v in items[1].items() if k != "frames"}])


def test_embedded_items_collate(split):
    batch = collate_av_clips([EmbeddedAVEvents(3, num_frames=4)[i] for i in range(3)])
    assert batch["waveform"].shape == (3, 1, 64000) and batch["audio_mask"].all()
    assert batch["frames"].shape == (3, 4, 3, 64, 64) and len(batch["events"]) == 3


def _hostile_manifest(folder, good):
    """A manifest of good clips and one of each kind of bad input; returns its path and the expected counts."""
    clips = good.parent / "clips"
    frames = np.full((8, 64, 64, 3), 90, dtype=np.uint8)
    write_video(folder / "silent_video.mp4", frames, 8)  # no audio stream
    soundfile.write(folder / "zeros.wav", np.zeros(16000, dtype=np.float32), 16000)
    soundfile.write(folder / "one.wav", np.array([0.5], dtype=np.float32), 16000)
    mp4 = (clips / "train_00000.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.wav").write_bytes(b"RIFF this is no audio at all")
    good_video, good_audio = str(clips / "train_00000.mp4"), str(clips / "train_00000.wav")

    def line(clip_id, video=good_video, audio=good_audio, captions=("a dog barks",)):
        return json.dumps({"id": clip_id, "video": video, "audio": audio, "captions": list(captions)})

    lines = [
        line("good"),
        line("no_track", video="silent_video.mp4", audio=None),
        line("zeros", audio="zeros.wav"),
        line("one_sample", audio="one.wav"),
        line("truncated", video="truncated.mp4"),
        line("empty_video", video="empty.mp4"),
        line("missing", audio="nowhere.wav"),
        line("garbage", audio="garbage.wav"),
        line("blank_caption", captions=["", "   "]),  # dropped: no caption left
        line("one_blank", captions=["", "a siren wails", 3]),  # kept with one caption
        line("good"),  # duplicated id
        '{"id": 5, "video": "x.mp4", "captions": ["c"]}',  # wrong-typed id
        '{"id": "strcap", "video": "x.mp4", "captions": "not a list"}',
        "[1, 2, 3]",
        "",
        '{"id": "cut", "video": "x.m',  # truncated last line
    ]
    manifest = folder / "captions.jsonl"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    indexing = {"duplicate_id": 1, "no_caption": 1, "empty_caption": 3, "malformed_caption": 1,
                "malformed_record": 4}
    reading = {"no_audio_track": 1, "silent_audio": 1, "short_audio": 1, "corrupt_video": 1, "empty_file": 1,
               "missing_file": 1, "unreadable_audio": 1}
    return manifest, indexing, reading


def test_each_hostile_input_is_skipped_and_counted_by_reason(tmp_path, split):
    manifest, indexing, reading = _hostile_manifest(tmp_path, split)
    dataset = AVClipDataset(manifest, num_frames=4)
    assert [r.id for r in dataset.records] == ["good", "no_track", "zeros", "one_sample", "truncated", "empty_video",
                                              "missing", "garbage", "one_blank"]
    assert dict(dataset.skipped) == indexing
    assert dataset.bad_records.count == 5 and dataset.bad_records.duplicate_keys == 1
    assert {e.get("line") for e in dataset.bad_records.examples} == {9, 12, 13, 14, 16}
    good, reasons = [], []
    for index in range(len(dataset)):
        try:
            good.append(dataset[index])
        except BadSample as bad:
            reasons.append({"path": bad.path, "reason": bad.reason})
    assert [item["id"] for item in good] == ["good", "one_blank"] and good[1]["captions"] == ["a siren wails"]
    assert dict(dataset.skipped) == {**indexing, **reading}
    assert dict(skipped_by_reason(reasons)) == reading and set(reading) == set(READ_REASONS)
    assert all(r["path"] for r in reasons)


def test_hostile_items_go_through_the_engine_loader_path(tmp_path, split):
    manifest, _, reading = _hostile_manifest(tmp_path, split)
    dataset = AVClipDataset(manifest, num_frames=4, modalities=("audio", "video"))
    seeded = SeededSamples(dataset, seed=0)
    out = collate_skip_bad([seeded[i] for i in range(len(dataset))], collate_av_clips)
    assert out["good"] == 2 and out["batch"]["frames"].shape == (2, 4, 3, 64, 64)
    assert dict(skipped_by_reason(out["bad"])) == reading
    assert skipped_by_reason([{"path": "x", "reason": "something else"}]) == {"other": 1}


def test_captions_can_be_optional(tmp_path, split):
    clips = split.parent / "clips"
    records = [{"id": "a", "video": str(clips / "train_00000.mp4"), "audio": str(clips / "train_00000.wav")}]
    with pytest.raises(ValueError, match="no usable clip"):
        AVClipDataset(records)
    assert AVClipDataset(records, require_captions=False, num_frames=1)[0]["captions"] == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=4, fps=2.0), "not both"),
    (dict(num_frames=0), "num_frames"),
    (dict(modalities=("audio", "text")), "modalities"),
    (dict(modalities=()), "modalities"),
    (dict(backend="ffmpeg"), "backend"),
])
def test_bad_reader_arguments_are_refused(split, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AVClipDataset(split, **kwargs)


def test_unusable_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="captions.jsonl"):
        AVClipDataset(tmp_path / "missing.jsonl")
    (tmp_path / "captions.jsonl").write_text("")
    with pytest.raises(ValueError, match="no usable clip"):
        AVClipDataset(tmp_path)
    with pytest.raises(ValueError, match="no usable clip"):
        AVClipDataset([{"id": "v", "audio": "a.wav", "captions": ["c"]}])  # video requested, none given


def test_vocabulary_is_consistent():
    assert len(EVENTS) == 8 and len(set(LABELS)) == 8
    assert len({e.colour for e in EVENTS}) == 8 and len({e.shape for e in EVENTS}) == 8
    assert all(KEYWORD[e.label] in e.clause and KEYWORD[e.label] in e.noun for e in EVENTS)
