"""Video-text data: HowTo100M-layout captions over per-second features (hostile files built here), VideoCLIP's
overlapping clip sampler (properties over many seeds and caption layouts), the MSR-VTT / YouCook2 / VATEX
manifests and the embedded English-German video-text set."""

import json
import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from percli.core.data.embedded_video_text import (
    LANGUAGES,
    EmbeddedVideoText,
    VideoEvent,
    VideoTextSpec,
    caption_event,
    make_video_text,
    render_video,
)
from percli.core.data.images import BadSample
from percli.core.data.video_retrieval import SegmentFeatures, read_msrvtt, read_vatex, read_youcook2
from percli.core.data.video_text import (
    HowToVideoText,
    OverlappedClips,
    OverlapSampling,
    TimedCaptions,
    collate_video_text_clips,
    read_howto_captions,
    sample_overlapping_clip,
    whitespace_token_length,
)

D = 4
TINY = VideoTextSpec(min_duration_s=8, max_duration_s=12, size=32, fps=4, feature_dim=16)


def caption_entry(count: int = 2) -> dict:
    return {"text": [f"step {i} of the recipe" for i in range(count)], "start": [2.0 * i for i in range(count)],
            "end": [2.0 * i + 1.5 for i in range(count)]}


class TouchOnUnpickle:
    """Unpickling this creates a file: a reader that unpickles leaves evidence."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def read_all(dataset) -> tuple[dict, Counter]:
    """Items by id and the reasons of the BadSamples raised, by reason word."""
    items, reasons = {}, Counter()
    for i in range(len(dataset)):
        try:
            item = dataset[i]
        except BadSample as bad:
            reasons[bad.reason.split(":", 1)[0]] += 1
        else:
            items[item["id"]] = item
    return items, reasons


# ------------------------------------------------------------------------------------------- feature files


def test_hostile_feature_files_are_skipped_by_reason_and_pickles_are_never_loaded(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    good = np.arange(6 * D, dtype=np.float32).reshape(6, D)
    np.save(folder / "good.npy", good)
    np.save(folder / "half.npy", good.astype(np.float16))
    (folder / "truncated.npy").write_bytes((folder / "good.npy").read_bytes()[:-10])
    (folder / "empty.npy").write_bytes(b"")
    np.save(folder / "objects.npy", np.array([TouchOnUnpickle(marker), 1], dtype=object), allow_pickle=True)
    (folder / "pickle.npy").write_bytes(pickle.dumps([TouchOnUnpickle(marker)]))
    (folder / "garbage.npy").write_bytes(b"not an array at all")
    np.save(folder / "rank3.npy", np.zeros((6, 2, D), dtype=np.float32))
    np.save(folder / "ints.npy", np.zeros((6, D), dtype=np.int64))
    np.save(folder / "no_rows.npy", np.zeros((0, D), dtype=np.float32))
    nan = good.copy()
    nan[3, 1] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "wide.npy", np.zeros((6, D + 1), dtype=np.float32))
    save_file({"features": torch.ones(6, D, dtype=torch.bfloat16)}, str(folder / "st_good.safetensors"))
    save_file({"frames": torch.ones(6, D)}, str(folder / "st_no_key.safetensors"))
    (folder / "st_corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    ids = [p.name.split(".")[0] for p in folder.iterdir()] + ["ghost"]
    captions = tmp_path / "how2_en.json"
    captions.write_text(json.dumps({video: caption_entry() for video in ids}))

    dataset = HowToVideoText(captions, folder, feature_dim=D)
    items, reasons = read_all(dataset)

    assert sorted(items) == ["good", "half", "st_good"]
    assert torch.equal(items["good"]["features"], torch.from_numpy(good))
    assert items["st_good"]["features"].dtype == torch.float32
    assert reasons == {"unreadable_features": 4, "pickled_features": 2, "empty_file": 1, "bad_rank": 1,
                       "bad_dtype": 1, "empty_features": 1, "nonfinite_features": 1, "wrong_dim": 1}
    assert dataset.skipped["missing_features"] == 1  # the ghost, dropped when indexing
    assert all(dataset.skipped[reason] == count for reason, count in reasons.items())
    assert not marker.exists()


def test_a_feature_file_deleted_after_indexing_is_a_missing_file(tmp_path):
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "v1.npy", np.ones((4, D), dtype=np.float32))
    (tmp_path / "how2_en.json").write_text(json.dumps({"v1": caption_entry()}))
    dataset = HowToVideoText(tmp_path)  # a folder: captions how2_<lang>.json, features in features/
    (tmp_path / "features" / "v1.npy").unlink()
    with pytest.raises(BadSample, match="missing_file"):
        dataset[0]


# ---------------------------------------------------------------------------------------------- captions


def test_bad_captions_are_dropped_by_reason_and_their_video_kept_while_any_caption_is_left(tmp_path):
    path = tmp_path / "how2_en.json"
    entries = {
        "mixed": {"text": ["first", "   ", 7, "reversed", "negative", "no time", "zero length", "last"],
                  "start": [5.0, 1.0, 1.0, 4.0, -1.0, "3", 2.0, 1.0],
                  "end": [6.0, 2.0, 2.0, 3.0, 1.0, 4.0, 2.0, 2.5]},
        "mismatch": {"text": ["a", "b"], "start": [0.0], "end": [1.0, 2.0]},
        "all_empty": {"text": ["", " "], "start": [0, 1], "end": [1, 2]},
        "not_lists": {"text": "a", "start": 0, "end": 1},
    }
    body = json.dumps(entries)[:-1] + ', "mixed": {"text": ["dup"], "start": [0], "end": [1]}}'  # a repeated key
    path.write_text(body)
    skipped = Counter()
    videos = read_howto_captions(path, skipped=skipped)

    assert list(videos) == ["mixed"]
    mixed = videos["mixed"]
    assert mixed.text == ("last", "first")  # sorted by start; the duplicate's "dup" never replaces the first
    assert (mixed.start, mixed.end) == ((1.0, 5.0), (2.5, 6.0))
    assert skipped == {"empty_caption": 3, "malformed_caption": 1, "reversed_time": 2, "out_of_range_time": 1,
                       "malformed_time": 1, "length_mismatch": 1, "no_caption": 1, "malformed_record": 1,
                       "duplicate_id": 1}


def test_jsonl_captions_read_both_line_shapes_and_count_broken_lines_and_repeats(tmp_path):
    path = tmp_path / "how2_de.jsonl"
    lines = [json.dumps({"video_id": "a", **caption_entry()}), json.dumps({"b": caption_entry(3)}), "{broken",
             json.dumps({"video_id": "a", **caption_entry(1)}), json.dumps([1, 2])]
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "features").mkdir()
    for video in "ab":
        np.save(tmp_path / "features" / f"{video}.npy", np.ones((10, D), dtype=np.float32))
    dataset = HowToVideoText(tmp_path)
    assert dataset.languages == ("de",)
    assert dataset.videos == ["a", "b"]
    assert len(dataset[1]["captions"]["de"]) == 3
    assert dataset.skipped["duplicate_id"] == 1 and dataset.bad_records.duplicate_keys == 1
    assert dataset.skipped["malformed_record"] == 2  # the broken line and the JSON list
    assert dataset.bad_records.count == 2


def test_captions_past_the_features_are_cut_or_dropped_and_a_video_left_without_any_is_skipped(tmp_path):
    (tmp_path / "features").mkdir()
    np.save(tmp_path / "features" / "short.npy", np.ones((5, D), dtype=np.float32))
    np.save(tmp_path / "features" / "late.npy", np.ones((5, D), dtype=np.float32))
    (tmp_path / "how2_en.json").write_text(json.dumps({
        "short": {"text": ["inside", "crosses the end", "after the end"], "start": [0, 3, 6], "end": [2, 7, 8]},
        "late": {"text": ["too late"], "start": [5.0], "end": [9.0]}}))
    (tmp_path / "how2_de.json").write_text(json.dumps({"short": {"text": ["drinnen"], "start": [1], "end": [2]}}))
    dataset = HowToVideoText(tmp_path)
    items, reasons = read_all(dataset)
    short = items["short"]["captions"]
    assert short["en"].text == ("inside", "crosses the end") and short["en"].end == (2, 5.0)
    assert short["de"].text == ("drinnen",)
    assert reasons == {"no_caption": 1}
    assert dataset.skipped["out_of_range_time"] == 2


# ----------------------------------------------------------------------------------------------- sampler


def random_layout(rng: np.random.Generator) -> tuple[TimedCaptions, int]:
    """Sorted captions with fractional, sometimes overlapping times, and a video that may end mid-caption."""
    count = int(rng.integers(1, 13))
    starts = np.sort(rng.uniform(0, 60, count)).round(2)
    ends = starts + rng.uniform(0.05, 8, count).round(2)
    texts = [" ".join(["w"] * int(rng.integers(1, 11))) for _ in range(count)]
    seconds = max(1, math.floor(starts[-1]) + 1 + int(rng.integers(0, 6)))
    captions, _ = TimedCaptions(tuple(texts), tuple(starts.tolist()), tuple(ends.tolist())).until(float(seconds))
    return captions, seconds


def test_every_sampled_clip_overlaps_its_text_lies_in_the_video_and_respects_the_drawn_lengths():
    rng = np.random.default_rng(0)
    for trial in range(400):
        captions, seconds = random_layout(rng)
        low_t = int(rng.integers(1, 20))
        low_v, extra_v = (1, 0) if trial % 3 == 0 else (int(rng.integers(1, 8)), int(rng.integers(0, 30)))
        sampling = OverlapSampling(min_text_len=low_t, max_text_len=low_t + int(rng.integers(0, 30)),
                                   min_video_len=low_v, max_video_len=low_v + extra_v,
                                   max_text_span_s=float(rng.choice([15.0, 256.0])))
        generator = torch.Generator().manual_seed(trial)
        for _ in range(4):
            clip = sample_overlapping_clip(captions, seconds, generator, sampling)
            tokens = [whitespace_token_length(captions.text[i]) for i in clip.caption_indices]
            where = f"trial {trial}: {clip} over {seconds} s"
            assert 0 <= clip.video_start < clip.video_end <= seconds, where
            assert clip.video_start < clip.text_end and clip.video_end > clip.text_start, where  # overlap
            length = clip.video_end - clip.video_start
            assert min(sampling.min_video_len, seconds) <= length <= min(sampling.max_video_len, seconds), where
            assert (clip.text_start, clip.text_end) == captions.span(clip.first_caption, clip.last_caption)
            assert sampling.min_text_len <= clip.target_text_len <= sampling.max_text_len
            assert clip.text_len == sum(tokens)
            if clip.text_len < clip.target_text_len:  # stopped early: out of captions or the span cap
                whole = clip.first_caption == 0 and clip.last_caption == len(captions) - 1
                assert whole or clip.text_end - clip.text_start >= sampling.max_text_span_s, where
            if len(tokens) > 1:  # before its last growth step the clip was short of the target
                assert min(sum(tokens[1:]), sum(tokens[:-1])) < clip.target_text_len, where


def test_text_clips_grow_to_either_side_with_equal_odds():
    """Three one-token captions, target two tokens: centre 0 gives (0, 1), centre 2 gives (1, 2), centre 1 either
    with odds 1/2 (MMPT's coin), so (0, 1) comes half the time (1/3 if growth always went right)."""
    captions = TimedCaptions(("a", "b", "c"), (0.0, 2.0, 4.0), (1.0, 3.0, 5.0))
    two_tokens = OverlapSampling(min_text_len=2, max_text_len=2)
    g = torch.Generator().manual_seed(0)
    clips = [sample_overlapping_clip(captions, 6, g, two_tokens) for _ in range(1000)]
    assert {(c.first_caption, c.last_caption) for c in clips} == {(0, 1), (1, 2)}
    assert 0.45 < sum(c.first_caption == 0 for c in clips) / len(clips) < 0.55


def test_sampler_is_a_function_of_the_generator_and_draws_every_caption_as_centre():
    captions = TimedCaptions(tuple(f"caption number {i}" for i in range(6)), tuple(3.0 * i for i in range(6)),
                             tuple(3.0 * i + 2 for i in range(6)))
    one_caption = OverlapSampling(min_text_len=1, max_text_len=1, clips_per_video=1)

    def draws(seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        return [sample_overlapping_clip(captions, 20, g, one_caption) for _ in range(100)]

    assert draws(1) == draws(1) and draws(1) != draws(2)
    assert {clip.first_caption for clip in draws(1)} == set(range(6))
    assert all(clip.first_caption == clip.last_caption for clip in draws(1))


def test_overlapped_clips_cut_the_sampled_rows_and_collate_into_clip_pairs():
    videos = EmbeddedVideoText(3, seed=5, spec=TINY)
    sampling = OverlapSampling(min_text_len=4, max_text_len=12, min_video_len=2, max_video_len=6, clips_per_video=5)
    clips = OverlappedClips(videos, language="de", sampling=sampling, seed=0)
    item = clips[1]
    features = videos[1]["features"]
    assert item["video"].shape == (5, 6, TINY.dim) and item["video_mask"].shape == (5, 6)
    for k, clip in enumerate(item["clips"]):
        rows = clip.video_end - clip.video_start
        assert torch.equal(item["video"][k, :rows], features[clip.video_start : clip.video_end])
        assert item["video_mask"][k].sum() == rows and not item["video"][k, rows:].any()
        assert item["text"][k] == " ".join(videos[1]["captions"]["de"].text[clip.first_caption : clip.last_caption + 1])
    assert [c for c in clips[1]["clips"]] == item["clips"]  # a fixed seed draws the same clips again
    batch = collate_video_text_clips([clips[0], item])
    assert batch["video"].shape == (10, 6, TINY.dim) and len(batch["text"]) == 10
    assert batch["video_index"].tolist() == [0] * 5 + [1] * 5


# --------------------------------------------------------------------------------------------- manifests


def test_msrvtt_test_csv_and_train_json_give_captions_per_video(tmp_path):
    csv_path = tmp_path / "MSRVTT_JSFUSION_test.csv"
    csv_path.write_text("key,vid_key,video_id,sentence\n"
                        "ret0,msr7020,video7020,a woman creating a fondant baby and flower\n"
                        "ret1,msr7021,video7021,\"a boy wearing headphones, sits on a chair\"\n")
    test = read_msrvtt(csv_path)
    assert [s.id for s in test.segments] == ["video7020", "video7021"]
    assert test.captions[1] == "a boy wearing headphones, sits on a chair" and test.caption_item == [0, 1]
    train_path = tmp_path / "train_val_videodatainfo.json"
    train_path.write_text(json.dumps({
        "videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video1", "split": "train"}],
        "sentences": [{"caption": "a car drives", "video_id": "video0", "sen_id": 0},
                      {"caption": "a man talks", "video_id": "video1", "sen_id": 1},
                      {"caption": "a red car on a road", "video_id": "video0", "sen_id": 2},
                      {"caption": "", "video_id": "video0", "sen_id": 3}]}))
    train = read_msrvtt(train_path)
    assert [s.video for s in train.segments] == ["video0", "video1"]
    assert train.captions == ["a car drives", "a red car on a road", "a man talks"]  # grouped by video
    assert train.caption_item == [0, 0, 1] and train.counts["empty_captions"] == 1


def test_youcook2_clips_are_cut_from_the_video_features(tmp_path):
    annotations = {"database": {
        "GLd3aX16zBg": {"subset": "validation", "duration": 241.6, "annotations": [
            {"segment": [2, 5], "id": 0, "sentence": "spread margarine on two slices of bread"},
            {"segment": [6, 9], "id": 1, "sentence": "place a slice of cheese on the bread"},
            {"segment": [9, 7], "id": 2, "sentence": "reversed"},
            {"id": 3, "sentence": "no segment"}]},
        "other": {"subset": "training", "annotations": [{"segment": [0, 1], "id": 0, "sentence": "train clip"}]}}}
    path = tmp_path / "youcookii_annotations_trainval.json"
    path.write_text(json.dumps(annotations))
    val = read_youcook2(path, subset="validation")
    assert [s.id for s in val.segments] == ["GLd3aX16zBg_0", "GLd3aX16zBg_1"]
    assert val.counts["bad_rows"] == 2 and val.captions[1] == "place a slice of cheese on the bread"
    (tmp_path / "features").mkdir()
    features = np.arange(12 * D, dtype=np.float32).reshape(12, D)
    np.save(tmp_path / "features" / "GLd3aX16zBg.npy", features)
    cut = SegmentFeatures(val, tmp_path / "features")
    assert torch.equal(cut[0]["features"], torch.from_numpy(features[2:5]))  # MMPT: feat[start:end]

    csv_path = tmp_path / "clips.csv"
    csv_path.write_text("video_id,start,end,sentence\nv1,0.5,2.2,\"crack the eggs, then whisk\"\nv1,3,4,add salt\n"
                        "v1,0.5,2.2,beat the eggs\nv2,1,x,bad time\n")
    clips = read_youcook2(csv_path)
    assert len(clips.segments) == 2 and clips.caption_item == [0, 1, 0]  # the same clip twice: one segment
    assert clips.counts == {"rows": 4, "bad_rows": 1, "empty_captions": 0, "segments": 2, "captions": 3}
    np.save(tmp_path / "features" / "v1.npy", features)
    only_v1 = SegmentFeatures(clips, tmp_path / "features")
    assert torch.equal(only_v1[0]["features"], torch.from_numpy(features[0:3]))  # floor(0.5):ceil(2.2)


def test_vatex_gives_english_and_chinese_captions_per_video(tmp_path):
    path = tmp_path / "vatex_validation_v1.0.json"
    path.write_text(json.dumps([
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["a man plays a guitar", "someone strums"],
         "chCap": ["一个男人在弹吉他", "有人在弹琴"]},
        {"videoID": "abc_000001_000011", "enCap": ["a dog runs", ""], "chCap": ["一只狗在跑"]}]), encoding="utf-8")
    sets = read_vatex(path)
    assert sets["en"].segments[0].id == "Ptf_2VRj-V0_000122_000132"  # an id, not a path
    assert sets["en"].caption_item == [0, 0, 1] and sets["zh"].caption_item == [0, 0, 1]
    assert sets["zh"].captions[0] == "一个男人在弹吉他" and sets["zh"].language == "zh"
    with pytest.raises(ValueError, match="choose from"):
        read_vatex(path, languages=("de",))


# ------------------------------------------------------------------------------------------ embedded set


def test_embedded_videos_are_deterministic_bilingual_and_the_held_out_split_is_disjoint():
    first, again = render_video(3, "train", 2, TINY), render_video(3, "train", 2, TINY)
    assert np.array_equal(first.features, again.features) and first.captions == again.captions
    assert TINY.min_duration_s <= first.features.shape[0] <= TINY.max_duration_s
    assert first.features.shape[1] == TINY.dim and len(first.events) >= 2
    en, de = first.captions["en"], first.captions["de"]
    assert len(en) == len(de) == len(first.events) and (en.start, en.end) == (de.start, de.end)
    assert all(e.start < e.end <= first.features.shape[0] for e in first.events)
    assert all(a.end <= b.start for a, b in zip(first.events, first.events[1:]))
    assert set(en.text).isdisjoint(de.text)
    train = EmbeddedVideoText(20, seed=3, spec=TINY)
    test = EmbeddedVideoText(10, seed=3, split="test", spec=TINY)
    assert {train[i]["id"] for i in range(20)}.isdisjoint(test[i]["id"] for i in range(10))
    held_out = [test.video(i).features for i in range(10)]
    assert not any(np.array_equal(seen.features, new) for seen in map(train.video, range(20)) for new in held_out)
    assert render_video(4, "train", 2, TINY).captions != first.captions


@pytest.mark.parametrize(("event", "template", "english", "german"), [
    (VideoEvent("circle", "red", "jump", 0, 1), 0, "a red circle jumps", "ein roter Kreis springt"),
    (VideoEvent("square", "blue", "spin", 0, 1), 1, "now a blue square spins", "jetzt dreht sich ein blaues Quadrat"),
    (VideoEvent("ellipse", "white", "fly", 0, 1), 2, "here we see a white ellipse that glides to the right",
     "hier sehen wir eine weiße Ellipse, die nach rechts gleitet"),
    (VideoEvent("star", "grey", "still", 0, 1), 2, "here we see a grey star that stays still",
     "hier sehen wir einen grauen Stern, der ruhig bleibt"),
    (VideoEvent("cross", "green", "fall", 0, 1), 3, "then a green cross falls down",
     "dann fällt ein grünes Kreuz nach unten"),
])
def test_captions_name_shape_colour_and_motion_in_english_and_german(event, template, english, german):
    assert caption_event(event, template, "en") == english
    assert caption_event(event, template, "de") == german


def test_written_split_reads_back_through_the_howto_and_youcook2_readers(tmp_path):
    root = make_video_text(tmp_path / "train", 4, seed=1, spec=TINY)
    assert make_video_text(tmp_path / "train", 4, seed=1, spec=TINY) == root  # reused
    twin = make_video_text(tmp_path / "twin", 4, seed=1, spec=TINY)
    for name in ("how2_en.json", "how2_de.json", "clips_de.csv", "features/train_00003.npy"):
        assert (root / name).read_bytes() == (twin / name).read_bytes()
    read = HowToVideoText(root, feature_dim=TINY.dim)
    memory = EmbeddedVideoText(4, seed=1, spec=TINY)
    assert set(read.languages) == set(LANGUAGES) and not read.skipped
    for i in range(4):
        assert torch.equal(read[i]["features"], memory[i]["features"])
        assert read[i]["captions"] == memory[i]["captions"]
    clips = read_youcook2(root / "clips_de.csv", language="de")
    assert len(clips.segments) == sum(len(memory.video(i).events) for i in range(4))
    assert clips.captions[0] == memory[0]["captions"]["de"].text[0]
    first = memory.video(0).events[0]
    rows = SegmentFeatures(clips, root / "features")[0]["features"]
    assert torch.equal(rows, memory[0]["features"][math.floor(first.start) : math.ceil(first.end)])
    with pytest.raises(ValueError, match="not an empty folder"):
        make_video_text(tmp_path / "train" / "features", 2)


def test_embedded_features_carry_shape_colour_and_motion():
    """A linear probe on the raw per-second descriptors, trained on train seconds inside an event, names the
    held-out split's shapes, colours and motions: what the captions say is in the features."""
    spec = VideoTextSpec(feature_dim=0)

    def seconds(split: str, count: int) -> tuple[torch.Tensor, list]:
        rows, labels = [], []
        for index in range(count):
            video = render_video(0, split, index, spec)
            for event in video.events:
                for second in range(math.ceil(event.start), math.floor(event.end)):
                    rows.append(video.features[second])
                    labels.append((event.shape, event.colour, event.motion))
        return torch.from_numpy(np.stack(rows)), labels

    train_x, train_labels = seconds("train", 60)
    test_x, test_labels = seconds("test", 20)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    accuracy = {}
    for k, what in enumerate(("shape", "colour", "motion")):
        names = sorted({label[k] for label in train_labels})
        target = torch.tensor([names.index(label[k]) for label in train_labels])
        truth = torch.tensor([names.index(label[k]) for label in test_labels])
        accuracy[what] = linear_probe_accuracy(train_x, target, test_x, truth, len(names))
    assert accuracy["shape"] > 0.75 and accuracy["colour"] > 0.95 and accuracy["motion"] > 0.95, accuracy


def linear_probe_accuracy(train_x: torch.Tensor, target: torch.Tensor, test_x: torch.Tensor, truth: torch.Tensor,
                          classes: int) -> float:
    """Test accuracy of an L2-regularised logistic regression fitted with L-BFGS."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(train_x), target) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (probe(test_x).argmax(1) == truth).float().mean().item()
