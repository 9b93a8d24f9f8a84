"""Embedded PerceptionLM data (answers read back from the pixels, balance, text-only baseline, written files) and
the release-format conversation reader (every kind of bad line counted, never fatal)."""

from __future__ import annotations

import gzip
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from percli.core.data.conversations import (
    SKIP_REASONS,
    ConversationError,
    normalize_conversations,
    read_conversations,
)
from percli.core.data.embedded import _shape_sdf
from percli.core.data.embedded_plm import (
    COLOURS,
    COLUMN_PHRASES,
    COLUMNS,
    IMAGE_TYPES,
    QUESTION_TYPES,
    SHAPES,
    VIDEO_TYPES,
    EmbeddedPLMData,
    PLMDataSpec,
    answer_vocabulary,
    exact_match_accuracy,
    make_question,
    prior_accuracy,
    render_media,
    text_only_accuracy,
    text_only_predictions,
    write_plm_jsonl,
)
from percli.core.data.video import read_clip

SPEC = PLMDataSpec()

# ------------------------------------------------------------------------------- reading the pixels back


@dataclass(frozen=True)
class Seen:
    colour: str
    shape: str
    x: float
    y: float


_PALETTE = {name: np.array(rgb, dtype=np.float32) for name, rgb in COLOURS.items()}
_ANGLES = np.linspace(-0.4, 0.4, 17)[:, None, None, None]  # [A, 1, 1, 1]
_RADII = np.linspace(3.5, 8.0, 19)[None, :, None, None]  # [1, R, 1, 1]


def _shape_of(mask: np.ndarray, cx: float, cy: float) -> str:
    """The shape whose best-fitting outline (any radius, any of the generator's rotations) overlaps ``mask`` most."""
    y, x = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]] + 0.5
    cos_a, sin_a = np.cos(_ANGLES), np.sin(_ANGLES)
    u = (x - cx) * cos_a + (y - cy) * sin_a  # [A, 1, H, W]
    v = -(x - cx) * sin_a + (y - cy) * cos_a

    def fit(shape: str) -> float:
        outline = _shape_sdf(shape, u, v, _RADII, None) < 0  # [A, R, H, W]
        return float(((outline & mask).sum((-1, -2)) / (outline | mask).sum((-1, -2))).max())

    return max(SHAPES, key=fit)


def _seen(frame: np.ndarray) -> list[Seen]:
    """The objects in uint8 [H, W, 3]: bright connected regions, each with its palette colour and shape."""
    labels, count = ndimage.label(frame.max(axis=-1) > 110, structure=np.ones((3, 3)))
    found = []
    for k in range(1, count + 1):
        ys, xs = np.nonzero(labels == k)
        if len(ys) <= 2:  # a triangle's tip cut off by the threshold
            continue
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        mean = frame[ys, xs].astype(np.float32).mean(axis=0)
        colour = min(_PALETTE, key=lambda name: float(np.abs(_PALETTE[name] - mean).sum()))
        found.append(Seen(colour, _shape_of(labels == k, cx, cy), cx, cy))
    return found


def _one(found: list[Seen]) -> Seen:
    assert len(found) == 1, found
    return found[0]


def _at(found: list[Seen], shape: str) -> tuple[float, float]:
    only = _one([s for s in found if s.shape == shape])
    return only.x, only.y


def _direction(start: Seen, end: Seen) -> str:
    dx, dy = end.x - start.x, end.y - start.y
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _image_answer(question_type: str, question: str, image: np.ndarray) -> str:
    seen = _seen(image)
    if question_type == "count":
        shape = re.fullmatch(r"How many (\w+)s are there\?", question)[1]
        return str(sum(s.shape == shape for s in seen))
    if question_type == "colour":
        shape = re.fullmatch(r"What colour is the (\w+)\?", question)[1]
        return _one([s for s in seen if s.shape == shape]).colour
    if question_type == "shape":
        colour = re.fullmatch(r"What shape is the (\w+) object\?", question)[1]
        return _one([s for s in seen if s.colour == colour]).shape
    cell = image.shape[1] / 3
    if question_type == "position":
        colour, shape = re.fullmatch(r"Where is the (\w+) (\w+)\?", question).groups()
        return COLUMNS[int(_one([s for s in seen if (s.colour, s.shape) == (colour, shape)]).x // cell)]
    only = _one(seen)
    return f"a {only.colour} {only.shape} {COLUMN_PHRASES[int(only.x // cell)]}"


def _video_answer(question_type: str, question: str, frames: np.ndarray, fps: int) -> str:
    seen = [_seen(frame) for frame in frames]
    if question_type == "video_caption":
        first, last = _one(seen[0]), _one(seen[-1])
        return f"a {first.colour} {first.shape} moves {_direction(first, last)}"
    if question_type == "moving":  # the shapes differ: follow each from the first frame to the last
        movers = [start.shape for start in seen[0]
                  if math.dist((start.x, start.y), _at(seen[-1], start.shape)) > 4]
        assert len(movers) == 1, movers
        return movers[0]
    shape = re.search(r"the (\w+) (?:move|appear|visible)", question)[1]
    shown = [i for i, found in enumerate(seen) if any(s.shape == shape for s in found)]
    if question_type == "direction":
        return _direction(*(_one([s for s in seen[i] if s.shape == shape]) for i in (shown[0], shown[-1])))
    if question_type == "appear":
        return str(shown[0] // fps)
    assert shown == list(range(shown[0], shown[-1] + 1))  # interval: one unbroken stretch
    return f"[{shown[0] // fps}, {(shown[-1] + 1) // fps}]"


# -------------------------------------------------------------------------------------------- generator


def test_same_seed_gives_the_same_items_and_another_seed_or_split_others():
    first, again = EmbeddedPLMData(6, seed=1), EmbeddedPLMData(6, seed=1)
    for index in range(6):
        a, b = first[index], again[index]
        pixels = "image" if a["media_type"] == "image" else "video"
        assert np.array_equal(np.asarray(a[pixels]), np.asarray(b[pixels]))
        assert {k: v for k, v in a.items() if k != pixels} == {k: v for k, v in b.items() if k != pixels}
    for other in (EmbeddedPLMData(6, seed=2), EmbeddedPLMData(6, seed=1, split="test")):
        assert not np.array_equal(np.asarray(other[0]["image"]), np.asarray(first[0]["image"]))
    assert EmbeddedPLMData(1, seed=1, split="test")[0]["id"] == "test_image_000000"


def test_item_fields_follow_the_release_format():
    image, video = EmbeddedPLMData(2, seed=0)[0], EmbeddedPLMData(2, seed=0)[1]
    assert isinstance(image["image"], Image.Image) and image["image"].size == (SPEC.image_size,) * 2
    assert video["video"].shape == (SPEC.num_frames, 3, SPEC.video_size, SPEC.video_size) and video["fps"] == SPEC.fps
    for item, tag in ((image, "<image>"), (video, "<video>")):
        human, assistant = item["conversations"]
        assert human == {"from": "human", "value": f"{tag}\n{item['question']}"}
        assert assistant == {"from": "assistant", "value": item["answer"]}
        assert normalize_conversations(item["conversations"], item["media_type"]) == item["conversations"]


def test_mixed_set_interleaves_the_image_and_the_video_set():
    mixed = EmbeddedPLMData(8, seed=4).questions()
    images = EmbeddedPLMData(4, seed=4, media="image").questions()
    videos = EmbeddedPLMData(4, seed=4, media="video").questions()
    assert mixed[0::2] == images and mixed[1::2] == videos
    assert [q["question_type"] for q in images] == list(IMAGE_TYPES[:4])


@pytest.mark.parametrize("question_type", IMAGE_TYPES)
def test_image_answers_follow_from_the_pixels(question_type):
    data = EmbeddedPLMData(40, seed=5, media="image")
    for index in range(IMAGE_TYPES.index(question_type), 40, len(IMAGE_TYPES)):
        question = data.question(index)
        assert question.question_type == question_type
        image = render_media(question)
        assert len(_seen(image)) == len(question.objects)  # nothing touches, nothing is cut off
        assert _image_answer(question_type, question.question, image) == question.answer, question


@pytest.mark.parametrize("question_type", VIDEO_TYPES)
def test_video_answers_follow_from_the_pixels(question_type):
    data = EmbeddedPLMData(25, seed=6, media="video")
    for index in range(VIDEO_TYPES.index(question_type), 25, len(VIDEO_TYPES)):
        question = data.question(index)
        frames = render_media(question)
        assert frames.shape == (SPEC.num_frames, SPEC.video_size, SPEC.video_size, 3)
        assert _video_answer(question_type, question.question, frames, SPEC.fps) == question.answer, question


@pytest.mark.parametrize("media", ["image", "video"])
def test_every_question_text_meets_each_of_its_answers_equally_often(media):
    questions = EmbeddedPLMData(1500, seed=7, media=media).questions()
    for question_type in IMAGE_TYPES if media == "image" else VIDEO_TYPES:
        mine = [q for q in questions if q["question_type"] == question_type]
        vocabulary = answer_vocabulary(question_type)
        assert {q["answer"] for q in mine} == set(vocabulary)
        for text in {q["question"] for q in mine}:
            answers = [q["answer"] for q in mine if q["question"] == text]
            counts = [answers.count(answer) for answer in vocabulary]
            assert max(counts) - min(counts) <= 1, (question_type, text, counts)


def test_prior_accuracies_of_the_default_spec():
    priors = {t: prior_accuracy(t) for t in QUESTION_TYPES}
    assert priors == pytest.approx({"count": 1 / 4, "colour": 1 / 4, "shape": 1 / 3, "position": 1 / 3,
                                    "caption": 1 / 36, "moving": 1 / 3, "direction": 1 / 4, "appear": 1 / 3,
                                    "interval": 1 / 10, "video_caption": 1 / 48})
    assert answer_vocabulary("appear", PLMDataSpec(num_frames=12, fps=2)) == ("1", "2", "3", "4", "5")


def test_a_text_only_model_cannot_beat_the_prior_on_held_out_items():
    train = EmbeddedPLMData(2000, seed=0, split="train").questions()
    test = EmbeddedPLMData(1000, seed=0, split="test").questions()
    held_out = text_only_accuracy(train, test)
    for question_type in QUESTION_TYPES:
        assert held_out[question_type] == pytest.approx(prior_accuracy(question_type), abs=0.04), question_type
    assert held_out["all"] < 0.25


def test_text_only_accuracy_on_a_hand_made_split():
    def item(question, answer, question_type="count"):
        return {"question": question, "answer": answer, "question_type": question_type}

    train = [item("How many circles?", "2"), item("How many circles?", "2"), item("How many circles?", "3"),
             item("How many squares?", "1"), item("How many squares?", "4"),  # a tie: "1" comes first
             item("What colour?", "red", "colour")]
    test = [item("How many circles?", "2"), item("How many circles?", "1"), item("How many squares?", "1"),
            item("How many stars?", "2"),  # unseen text: the count type's majority, "2"
            item("What colour?", "blue", "colour")]
    assert text_only_predictions(train, test) == ["2", "2", "1", "2", "red"]
    assert text_only_accuracy(train, test) == {"all": 3 / 5, "count": 3 / 4, "colour": 0.0}
    # On its own split: the best answer table of each text, 4 of 6 (2 of 3 circles, 1 of 2 squares, the colour)
    assert text_only_accuracy(train)["all"] == pytest.approx(4 / 6)


def test_exact_match_ignores_case_spaces_quotes_and_a_full_stop():
    items = [{"answer": "a red circle on the left", "question_type": "caption"},
             {"answer": "[1, 3]", "question_type": "interval"}, {"answer": "3", "question_type": "count"}]
    scores = exact_match_accuracy(items, [' A red  circle on the left. ', "[1,3]", "3"])
    assert scores == {"all": 2 / 3, "caption": 1.0, "interval": 0.0, "count": 1.0}
    with pytest.raises(ValueError, match="2 predictions for 3 items"):
        exact_match_accuracy(items, ["a", "b"])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        make_question(0, "dev", 0)
    with pytest.raises(ValueError, match="media"):
        EmbeddedPLMData(3, media="audio")
    with pytest.raises(ValueError, match="whole number of seconds"):
        PLMDataSpec(num_frames=9, fps=2)
    with pytest.raises(IndexError):
        EmbeddedPLMData(3)[3]


# ------------------------------------------------------------------------------------------ written files


def test_written_jsonl_reads_back_as_the_rendered_items(tmp_path):
    path = write_plm_jsonl(tmp_path / "data", 8, split="test", seed=3)
    again = write_plm_jsonl(tmp_path / "again", 8, split="test", seed=3)
    manifest = read_conversations(path)
    assert manifest.counts["records"] == 8 and manifest.counts["bad_records"] == 0
    assert manifest.counts["image"] == manifest.counts["video"] == 4
    data = EmbeddedPLMData(8, split="test", seed=3)
    for index, record in enumerate(manifest):
        item, question = data[index], data.question(index)
        assert (record.id, record.conversations, record.fields["answer"]) == (item["id"], item["conversations"],
                                                                              item["answer"])
        file = Path(record.media[0])
        assert file.read_bytes() == (tmp_path / "again" / file.relative_to(tmp_path / "data")).read_bytes()
        if record.media_type == "image":
            assert np.array_equal(np.asarray(Image.open(file).convert("RGB")), render_media(question))
            continue
        with av.open(str(file)) as container:
            stream = container.streams.video[0]
            assert (stream.average_rate, stream.frames) == (SPEC.fps, SPEC.num_frames)
        decoded = read_clip(str(file), SPEC.num_frames, 1, train=False).permute(0, 2, 3, 1).numpy()
        rendered = render_media(question)
        assert np.abs(decoded.astype(int) - rendered).mean() < 8  # MPEG-4 is lossy, the scene survives
        shown = [(frame.max(axis=-1) > 110).sum() for frame in decoded]
        drawn = [(frame.max(axis=-1) > 110).sum() for frame in rendered]
        assert np.allclose(shown, drawn, rtol=0.2, atol=6)
    assert json.loads(path.read_text().splitlines()[0])["image"] == "test/test_image_000000.png"
    assert path.read_bytes() == again.read_bytes()


# -------------------------------------------------------------------------------------------- the reader


def _line(media: dict | None = None, turns: list | None = None, **extra) -> str:
    turns = turns if turns is not None else [{"from": "human", "value": "<image>\nWhat is it?"},
                                             {"from": "assistant", "value": "a circle"}]
    return json.dumps({**(media if media is not None else {"image": "a.png"}), "conversations": turns, **extra})


def _turns(*pairs) -> list[dict]:
    return [{"from": role, "value": value} for role, value in pairs]


# (line, the reason it is skipped for)
HOSTILE_LINES = [
    ('{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nWhat', "malformed_line"),
    ("[1, 2, 3]", "malformed_line"),
    (_line({"image": "a.png", "video": "v.mp4"}), "image_and_video"),
    (_line({"image": 7}), "bad_media_field"),
    (_line({"image": []}), "bad_media_field"),
    (_line({"video": ["v.mp4"]}), "bad_media_field"),
    (json.dumps({"image": "a.png"}), "no_conversations"),
    (_line(turns="<image>\nWhat is it? a circle"), "no_conversations"),
    (_line(turns=[]), "no_conversations"),
    (_line(turns=[{"from": "human"}, {"from": "assistant", "value": "x"}]), "bad_turn"),
    (_line(turns=_turns(("system", "be brief"), ("human", "hi"), ("assistant", "x"))), "bad_turn"),
    (_line(turns=_turns(("human", ["<image>", "What?"]), ("assistant", "x"))), "bad_turn"),
    (_line(turns=["What?", "x"]), "bad_turn"),
    (_line(turns=_turns(("human", "<image>\nWhat is it?"))), "no_assistant_turn"),
    (_line(turns=_turns(("human", "<image>\nWhat?"), ("human", "Well?"), ("assistant", "x"))),
     "roles_not_alternating"),
    (_line(turns=_turns(("assistant", "Hello."), ("human", "<image>\nWhat?"), ("assistant", "x"))),
     "roles_not_alternating"),
    (_line(turns=_turns(("human", "<image>\nWhat?"), ("assistant", "x"), ("human", "And?"))),
     "roles_not_alternating"),
    (_line(turns=_turns(("human", "<image>\n<image>\nWhat?"), ("assistant", "x"))), "placeholder_mismatch"),
    (_line(turns=_turns(("human", "What?"), ("assistant", "x"), ("human", "<image>\nNow?"), ("assistant", "y"))),
     "placeholder_mismatch"),
    (_line(turns=_turns(("human", "What?"), ("assistant", "<image> x"))), "placeholder_mismatch"),
    (_line({"image": ["a.png", "b.png"]}), "placeholder_mismatch"),  # one <image> for two images
    (_line({}, turns=_turns(("human", "<image>\nHi"), ("assistant", "x"))), "placeholder_mismatch"),
    (_line({"video": "v.mp4"}, start_time=4.0, end_time=2.0), "bad_times"),
    (_line({"video": "v.mp4"}, start_time=-1), "bad_times"),
    (_line({"video": "v.mp4"}, end_time="3 s"), "bad_times"),
    (_line(bbox=[1, 2, 3, 4]), "bbox_without_size"),
    (_line(bbox=[1, 2, 3, 4], width=0, height=10), "bbox_without_size"),
    (_line({"image": "missing.png"}), "missing_media"),
    (_line({"image": ["a.png", "missing.png"]}, turns=_turns(("human", "<image><image>Same?"), ("assistant", "no"))),
     "missing_media"),
]


def _write_media(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "v.mp4"):
        (folder / name).write_bytes(b"not decoded by the reader")


def test_reader_skips_and_counts_every_kind_of_bad_line(tmp_path):
    _write_media(tmp_path)
    good = [
        _line(id="first"),
        _line({"image": ["a.png", "b.png"]}, turns=_turns(("human", "<image> and <image>: same?"), ("gpt", 3))),
        _line({"video": "v.mp4"}, turns=_turns(("user", "<video>\nWhen?"), ("assistant", "[1, 2]"),
                                               ("human", "Sure?"), ("assistant", "yes")), start_time=1, end_time=2.5),
        _line({}, turns=_turns(("human", "Hi"), ("assistant", "Hello."))),
        json.dumps({"video": str(tmp_path / "v.mp4"), "text": "a red circle moves left", "uuid": 17}),
        _line(bbox=[1, 2, 3, 4], width=48, height=48, question_type="count"),
    ]
    duplicate = _line(id="first")
    lines = good[:3] + [text for text, _ in HOSTILE_LINES[2:]] + good[3:] + [duplicate, HOSTILE_LINES[1][0]]
    raw = "\n".join(lines).encode() + b"\n\n" + b"\xff\xfe not utf-8\n" + HOSTILE_LINES[0][0].encode()
    (tmp_path / "data.jsonl").write_bytes(raw)  # a blank line, a non-UTF-8 line, a truncated last line

    manifest = read_conversations(tmp_path / "data.jsonl")

    expected = {reason: sum(r == reason for _, r in HOSTILE_LINES) for reason in SKIP_REASONS}
    expected["malformed_line"] += 1  # the non-UTF-8 line
    expected["duplicate_id"] = 1
    assert {reason: manifest.counts[reason] for reason in SKIP_REASONS} == expected
    assert manifest.skipped == {reason: n for reason, n in expected.items() if n}
    assert manifest.counts["bad_records"] == sum(expected.values()) == len(lines) + 2 - len(good)
    assert manifest.counts["records"] == len(manifest) == len(good)
    assert manifest.counts["lines"] == len(lines) + 2
    assert {k: manifest.counts[k] for k in ("image", "multi_image", "video", "text", "from_text_field")} == {
        "image": 2, "multi_image": 1, "video": 2, "text": 1, "from_text_field": 1}
    assert len(manifest.bad_examples) == min(sum(expected.values()), len(manifest.bad_examples)) > 0
    assert all(example["reason"].split(":")[0] in SKIP_REASONS and example["file"] == str(tmp_path / "data.jsonl")
               for example in manifest.bad_examples)

    first, multi, video, text, caption, boxed = manifest
    assert first.id == "first" and first.media == (str(tmp_path / "a.png"),)
    assert multi.media_type == "multi_image" and multi.media == (str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert multi.conversations[1] == {"from": "assistant", "value": "3"} and multi.id == "data:2"
    assert [t["from"] for t in video.conversations] == ["human", "assistant", "human", "assistant"]
    assert (video.start_time, video.end_time, video.answers) == (1.0, 2.5, ["[1, 2]", "yes"])
    assert text.media_type == "text" and text.media == ()
    assert caption.id == "17"
    assert caption.conversations == _turns(("human", ""), ("assistant", "a red circle moves left"))
    assert boxed.fields == {"bbox": [1, 2, 3, 4], "width": 48, "height": 48, "question_type": "count"}
    assert video.to_row() == {"video": str(tmp_path / "v.mp4"), "start_time": 1.0, "end_time": 2.5,
                              "conversations": video.conversations}


def test_reader_refuses_an_empty_a_missing_or_a_wholly_bad_file(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable conversation .0 line"):
        read_conversations(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="does not exist"):
        read_conversations(tmp_path / "nowhere.jsonl")
    (tmp_path / "bad.jsonl").write_text(_line({"image": "missing.png"}) + "\n{\n")
    with pytest.raises(ValueError, match="2 skipped; first: line 1: missing_media"):
        read_conversations(tmp_path / "bad.jsonl")


def test_reader_resolves_media_against_root_and_can_skip_the_file_check(tmp_path):
    _write_media(tmp_path / "media")
    (tmp_path / "ann").mkdir()
    path = tmp_path / "ann" / "data.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(_line() + "\n" + _line({"video": "v.mp4"}, turns=_turns(("human", "<video>Q"), ("assistant", "A")))
                + "\n" + _line({"image": "gone.png"}) + "\n")
    manifest = read_conversations(path, root=tmp_path / "media")
    assert [r.media[0] for r in manifest] == [str(tmp_path / "media" / "a.png"), str(tmp_path / "media" / "v.mp4")]
    assert manifest.counts["missing_media"] == 1 and manifest[0].id == "data:1"
    assert len(read_conversations(path, root=tmp_path / "media", check_media=False)) == 3
    videos = read_conversations(path, root=tmp_path / "media", media_types=["video"])
    assert [r.media_type for r in videos] == ["video"] and videos.counts["filtered_media_type"] == 1


@pytest.mark.parametrize("turns, media_type, reason", [
    (None, "image", "no_conversations"),
    ([{"from": "human", "value": 3}, {"from": "assistant", "value": "x"}], "image", "bad_turn"),
    ([{"from": "assistant", "value": True}], "image", "bad_turn"),
    (_turns(("human", "<video>\nQ")), "video", "no_assistant_turn"),
    (_turns(("human", "<video>\nQ"), ("assistant", "A"), ("assistant", "B")), "video", "roles_not_alternating"),
    (_turns(("human", "<image>Q"), ("assistant", "A")), "text", "placeholder_mismatch"),
    (_turns(("human", "<image><image><video>Q"), ("assistant", "A")), "multi_image", "placeholder_mismatch"),
])
def test_in_memory_conversations_raise_the_reason(turns, media_type, reason):
    with pytest.raises(ConversationError) as caught:
        normalize_conversations(turns, media_type, num_media=2)
    assert caught.value.reason == reason and str(caught.value).startswith(f"{reason}: ")
