"""Embedded PerceptionLM data: generated images and short videos with one question each whose answer the
pixels decide, in the release's conversation format. No download; rendered on a CPU.

Origin: written for percli (not derived from any published dataset). Item ``index`` of a split is a pure
function of ``(seed, split, index)``, the media kind and a :class:`PLMDataSpec`; ``train``, ``val`` and
``test`` draw from disjoint seed streams.

What is shown: circles, squares and triangles (the signed-distance shapes of
:mod:`percli.core.data.embedded`) in red, green, blue or yellow (the RGB of the moving-shape palette of
:mod:`percli.core.data.embedded_video_text`) over a dark gradient with pixel noise, as av_events draws its
backgrounds. Images place their objects in the cells of a 3x3 grid, so nothing overlaps and "left / middle /
right" is a column; videos place them freely (never touching, a moving one's whole path included).
av_events' frame renderer is not reused: its motions wrap round the frame edge and its shapes come with
fixed colours, while a "which way" question needs straight paths and free colours.

One question per item, one of the types below (cycling with the index), answered by one word or a short
canonical phrase, so exact match scores it. Within a type, every (question text, answer) pair of the
type's table comes once per block of consecutive items (order shuffled per seed), so each question text
meets each of its answers equally often (up to one over a partial block): a model that never sees the
pixels cannot beat :func:`prior_accuracy` = 1 / (answers of the type), and :func:`text_only_accuracy`
measures that bound on real splits. With the default spec (48 px, 8 frames at 2 fps = 4 s):

==============  =====  ================================================  ===========================  =====
type            media  question                                          answers                      prior
==============  =====  ================================================  ===========================  =====
count           image  How many squares are there?                       1 2 3 4                      1/4
colour          image  What colour is the circle?                        red green blue yellow        1/4
shape           image  What shape is the red object?                     circle square triangle       1/3
position        image  Where is the blue triangle?                       left middle right            1/3
caption         image  Describe the image briefly.                       "a red circle on the left"   1/36
moving          video  Which shape is moving?                            circle square triangle       1/3
direction       video  Which way does the square move?                   left right up down           1/4
appear          video  At which second does the circle appear?           1 2 3                        1/3
interval        video  When is the triangle visible? Answer as [...]     "[1, 3]" (0 <= a < b <= 4)   1/10
video_caption   video  Describe the video briefly.                       "a red circle moves left"    1/48
==============  =====  ================================================  ===========================  =====

The scenes make each question well posed and need the pixels: a counted shape comes 1 to 4 times among up to
3 objects of other shapes; the object asked for by shape (colour) is the only one of that shape (colour) among
1 to 3 others, and the one asked for by both is the only such pair, with others sharing one of the two; a
caption's scene holds one object. Videos: "moving" shows 2 or 3 different shapes of which one moves (in any
direction); "direction", "appear" and "interval" show the asked shape moving, appearing or visible for a
while, among 0 to 2 other shapes that stand still all along; a video caption's scene is one moving object.

Times are whole seconds: an object that appears at second ``s`` is drawn from frame ``s * fps`` on, one
visible over ``[a, b]`` in frames ``a * fps`` to ``b * fps - 1``; a moving object covers 40 % of the frame
side in a straight line over the video. Rendering costs about 0.5 ms per image and 8 ms per video at 48 px
(one CPU core).

:class:`EmbeddedPLMData` renders items in memory (``"image"``: an RGB PIL image; ``"video"``: uint8
[T, C, H, W] as :func:`percli.core.data.video.read_clip` returns, with ``"fps"``);
:func:`write_plm_jsonl` writes PNG / MP4 files and the release's JSONL, which
:func:`percli.core.data.conversations.read_conversations` reads.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from percli.core.data.embedded import _pixel_grid, _shape_sdf
from percli.core.data.paths import manifest_path
from percli.core.rundir import write_jsonl_atomic

SPLITS = {"train": 0, "val": 1, "test": 2}  # seed stream of each split
MEDIA = ("image", "video", "mixed")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# The red, green, blue and yellow of embedded_video_text.COLOURS (not imported: that module pulls in audio).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (50, 200, 70), "blue": (60, 90, 235), "yellow": (240, 220, 40),
}
COUNTS: tuple[str, ...] = ("1", "2", "3", "4")
COLUMNS: tuple[str, ...] = ("left", "middle", "right")
COLUMN_PHRASES: tuple[str, ...] = ("on the left", "in the middle", "on the right")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
IMAGE_TYPES: tuple[str, ...] = ("count", "colour", "shape", "position", "caption")
VIDEO_TYPES: tuple[str, ...] = ("moving", "direction", "appear", "interval", "video_caption")
QUESTION_TYPES: tuple[str, ...] = IMAGE_TYPES + VIDEO_TYPES
PLACEHOLDERS = {"image": "<image>", "video": "<video>"}
_STREAM = 47  # keeps these items apart from the seed streams of the other embedded sets
_MEDIA_CODE = {"image": 0, "video": 1}
_TRAVEL = 0.4  # a moving object's path, as a fraction of the frame side
_BOUND = 1.15  # circumradius of every shape, in its radius (a square's corner reaches 1.13)
_NO_RNG = np.random.default_rng(0)  # _shape_sdf draws only for rings, ellipses and textures, never used here


@dataclass(frozen=True)
class PLMDataSpec:
    """How items are rendered.

    Attributes:
        image_size: Image side in pixels (48: the tiny PLM's PE input, so one image is one tile and each grid
            cell one 2x2-pooled token).
        video_size: Frame side in pixels (even, for the yuv420p MP4).
        num_frames: Frames of a video.
        fps: Frames per second; ``num_frames / fps`` must be a whole number of seconds, at least 3.
    """

    image_size: int = 48
    video_size: int = 48
    num_frames: int = 8
    fps: int = 2

    def __post_init__(self) -> None:
        if self.image_size < 24 or self.video_size < 24 or self.video_size % 2:
            raise ValueError(f"image_size={self.image_size}, video_size={self.video_size}: need at least 24 px "
                             "(and an even video_size, for the yuv420p MP4)")
        if self.fps < 1 or self.num_frames % self.fps or self.num_frames // self.fps < 3:
            raise ValueError(f"num_frames={self.num_frames}, fps={self.fps}: a video must last a whole number of "
                             "seconds, at least 3 (the time questions ask for whole seconds)")

    @property
    def duration_s(self) -> int:
        """Video length in seconds."""
        return self.num_frames // self.fps


@dataclass(frozen=True)
class PLMObject:
    """One drawn object. Position is its centre in pixels at frame 0; it moves ``(dx, dy)`` pixels a frame and is
    drawn in frames ``first_frame`` to ``end_frame - 1`` (images: 0 and 1)."""

    shape: str
    colour: str
    x: float
    y: float
    radius: float
    angle: float
    dx: float = 0.0
    dy: float = 0.0
    first_frame: int = 0
    end_frame: int = 1

    def centre(self, frame: int) -> tuple[float, float]:
        return self.x + self.dx * frame, self.y + self.dy * frame


@dataclass(frozen=True)
class PLMQuestion:
    """An item without its pixels: what is asked, the answer, and the scene that decides it.

    Attributes:
        id: ``<split>_<media>_<n:06d>`` (n counts the items of that media kind in the split).
        media: ``"image"`` or ``"video"``.
        question_type: One of :data:`QUESTION_TYPES`.
        question: The question text (without the media placeholder).
        answer: The exact expected answer.
        objects: The scene.
        render_seed: Seed of the background and noise.
    """

    id: str
    media: str
    question_type: str
    question: str
    answer: str
    objects: tuple[PLMObject, ...]
    render_seed: tuple[int, ...]

    def conversations(self) -> list[dict[str, str]]:
        """The release's turns: the placeholder and the question, then the answer."""
        return [{"from": "human", "value": f"{PLACEHOLDERS[self.media]}\n{self.question}"},
                {"from": "assistant", "value": self.answer}]


# -------------------------------------------------------------------------------------------- answer tables


def _time_pairs(duration_s: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(duration_s) for b in range(a + 1, duration_s + 1)]


def _interval_answer(a: int, b: int) -> str:
    return f"[{a}, {b}]"


def _combos(question_type: str, spec: PLMDataSpec) -> list[tuple[Any, ...]]:
    """Every (question parameters..., answer parameter) of a type, in a fixed order."""
    colours, duration = list(COLOURS), spec.duration_s
    table: dict[str, Iterable[tuple[Any, ...]]] = {
        "count": itertools.product(SHAPES, range(1, len(COUNTS) + 1)),
        "colour": itertools.product(SHAPES, colours),
        "shape": itertools.product(colours, SHAPES),
        "position": itertools.product(colours, SHAPES, range(len(COLUMNS))),
        "caption": itertools.product(colours, SHAPES, range(len(COLUMNS))),
        "moving": ((s,) for s in SHAPES),
        "direction": itertools.product(SHAPES, DIRECTIONS),
        "appear": itertools.product(SHAPES, range(1, duration)),
        "interval": itertools.product(SHAPES, _time_pairs(duration)),
        "video_caption": itertools.product(colours, SHAPES, DIRECTIONS),
    }
    if question_type not in table:
        raise ValueError(f"unknown question type {question_type!r}: choose from {', '.join(QUESTION_TYPES)}")
    return list(table[question_type])


def _question_and_answer(question_type: str, combo: tuple[Any, ...]) -> tuple[str, str]:
    if question_type == "count":
        return f"How many {combo[0]}s are there?", str(combo[1])
    if question_type == "colour":
        return f"What colour is the {combo[0]}?", combo[1]
    if question_type == "shape":
        return f"What shape is the {combo[0]} object?", combo[1]
    if question_type == "position":
        return f"Where is the {combo[0]} {combo[1]}?", COLUMNS[combo[2]]
    if question_type == "caption":
        return "Describe the image briefly.", f"a {combo[0]} {combo[1]} {COLUMN_PHRASES[combo[2]]}"
    if question_type == "moving":
        return "Which shape is moving?", combo[0]
    if question_type == "direction":
        return f"Which way does the {combo[0]} move?", combo[1]
    if question_type == "appear":
        return f"At which second does the {combo[0]} appear?", str(combo[1])
    if question_type == "interval":
        return f"When is the {combo[0]} visible? Answer as [start, end] in seconds.", _interval_answer(*combo[1])
    return "Describe the video briefly.", f"a {combo[0]} {combo[1]} moves {combo[2]}"


def answer_vocabulary(question_type: str, spec: PLMDataSpec | None = None) -> tuple[str, ...]:
    """Every answer a question type can have, sorted (the time types depend on the video length)."""
    spec = spec or PLMDataSpec()
    return tuple(sorted({_question_and_answer(question_type, c)[1] for c in _combos(question_type, spec)}))


def prior_accuracy(question_type: str, spec: PLMDataSpec | None = None) -> float:
    """The best exact-match accuracy a model that never sees the media can expect on a type: its answers are
    balanced for every question text, so 1 / (number of answers)."""
    return 1.0 / len(answer_vocabulary(question_type, spec))


# ------------------------------------------------------------------------------------------------ scenes


def _grid_objects(wanted: Sequence[tuple[str, str, int | None]], size: int,
                  rng: np.random.Generator) -> tuple[PLMObject, ...]:
    """(shape, colour, column or None) -> objects in distinct cells of the 3x3 grid, in the given order."""
    cell = size / 3
    free = [(c, r) for c in range(3) for r in range(3)]
    objects = []
    for shape, colour, column in wanted:
        options = [cr for cr in free if column is None or cr[0] == column]
        col, row = options[int(rng.integers(len(options)))]
        free.remove((col, row))
        radius = cell * float(rng.uniform(0.3, 0.38))
        jitter = max(0.0, cell / 2 - _BOUND * radius - 1.0)  # at least 2 px between neighbours
        x, y = ((i + 0.5) * cell + float(rng.uniform(-jitter, jitter)) for i in (col, row))
        objects.append(PLMObject(shape, colour, x, y, radius, float(rng.uniform(-0.35, 0.35))))
    return tuple(objects)


def _random_colour(rng: np.random.Generator, exclude: str | None = None) -> str:
    options = [c for c in COLOURS if c != exclude]
    return options[int(rng.integers(len(options)))]


def _other_shapes(rng: np.random.Generator, exclude: str, count: int) -> list[str]:
    """``count`` shapes other than ``exclude``, drawn with replacement."""
    options = [s for s in SHAPES if s != exclude]
    return [options[int(rng.integers(len(options)))] for _ in range(count)]


def _image_scene(question_type: str, combo: tuple[Any, ...], size: int,
                 rng: np.random.Generator) -> tuple[PLMObject, ...]:
    wanted: list[tuple[str, str, int | None]]
    if question_type == "count":  # `count` objects of the shape, up to 3 of other shapes
        shape, count = combo
        wanted = [(shape, _random_colour(rng), None) for _ in range(count)]
        wanted += [(s, _random_colour(rng), None) for s in _other_shapes(rng, shape, int(rng.integers(0, 4)))]
    elif question_type == "colour":  # the only object of its shape
        shape, colour = combo
        wanted = [(shape, colour, None)]
        wanted += [(s, _random_colour(rng), None) for s in _other_shapes(rng, shape, int(rng.integers(1, 4)))]
    elif question_type == "shape":  # the only object of its colour
        colour, shape = combo
        wanted = [(shape, colour, None)]
        wanted += [(SHAPES[int(rng.integers(len(SHAPES)))], _random_colour(rng, colour), None)
                   for _ in range(int(rng.integers(1, 4)))]
    elif question_type == "position":  # the only object of its colour and shape (others may share one of them)
        colour, shape, column = combo
        wanted = [(shape, colour, column)]
        others = int(rng.integers(1, 4))
        while len(wanted) < 1 + others:
            other = (SHAPES[int(rng.integers(len(SHAPES)))], _random_colour(rng), None)
            if other[:2] != (shape, colour):
                wanted.append(other)
    else:  # caption: one object
        colour, shape, column = combo
        wanted = [(shape, colour, column)]
    return _grid_objects(wanted, size, rng)


def _clearance(a: PLMObject, b: PLMObject, frames: int) -> float:
    """Smallest gap in pixels between two objects' bounding discs over the video (at most one of them moves)."""
    mover, still = (a, b) if (a.dx, a.dy) != (0.0, 0.0) else (b, a)
    (x0, y0), (x1, y1) = mover.centre(0), mover.centre(frames - 1)
    px, py = still.x - x0, still.y - y0
    sx, sy = x1 - x0, y1 - y0
    t = min(max((px * sx + py * sy) / max(sx * sx + sy * sy, 1e-9), 0.0), 1.0)  # closest point of the path
    return math.hypot(px - t * sx, py - t * sy) - _BOUND * (a.radius + b.radius)


def _video_objects(wanted: Sequence[tuple[str, str, str | None, int, int]], spec: PLMDataSpec,
                   rng: np.random.Generator) -> tuple[PLMObject, ...]:
    """(shape, colour, direction or None, first frame, end frame) -> objects that never touch (3 px apart)."""
    size, frames = spec.video_size, spec.num_frames
    travel = _TRAVEL * size
    for _ in range(1000):
        objects: list[PLMObject] = []
        for shape, colour, direction, first, end in wanted:
            radius = size * float(rng.uniform(0.11, 0.13))
            ux, uy = DIRECTIONS[direction] if direction else (0, 0)
            low, high = _BOUND * radius + 1, size - _BOUND * radius - 1
            # Start where the whole path stays inside the frame.
            x = float(rng.uniform(low + travel * max(-ux, 0), high - travel * max(ux, 0)))
            y = float(rng.uniform(low + travel * max(-uy, 0), high - travel * max(uy, 0)))
            step = travel / max(frames - 1, 1)
            obj = PLMObject(shape, colour, x, y, radius, float(rng.uniform(-0.35, 0.35)), ux * step, uy * step,
                            first, end)
            if any(_clearance(obj, other, frames) < 3.0 for other in objects):
                break
            objects.append(obj)
        else:
            return tuple(objects)
    raise RuntimeError(f"could not place {len(wanted)} objects apart in a {size} px frame")  # never at >= 24 px


def _video_scene(question_type: str, combo: tuple[Any, ...], spec: PLMDataSpec,
                 rng: np.random.Generator) -> tuple[PLMObject, ...]:
    frames, fps = spec.num_frames, spec.fps
    if question_type == "video_caption":  # one object, moving
        colour, shape, direction = combo
        return _video_objects([(shape, colour, direction, 0, frames)], spec, rng)
    shape = combo[0]
    others = [s for s in SHAPES if s != shape]
    rng.shuffle(others)
    if question_type == "moving":  # 2 or 3 shapes, all different; the asked one moves, the others stand still
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        wanted = [(shape, _random_colour(rng), direction, 0, frames)]
        wanted += [(s, _random_colour(rng), None, 0, frames) for s in others[: int(rng.integers(1, 3))]]
        return _video_objects(wanted, spec, rng)
    first, end, direction = 0, frames, None
    if question_type == "direction":
        direction = combo[1]
    elif question_type == "appear":
        first = combo[1] * fps
    else:  # interval
        first, end = combo[1][0] * fps, combo[1][1] * fps
    wanted = [(shape, _random_colour(rng), direction, first, end)]
    wanted += [(s, _random_colour(rng), None, 0, frames) for s in others[: int(rng.integers(0, 3))]]
    return _video_objects(wanted, spec, rng)


def _locate(index: int, media: str) -> tuple[str, int]:
    """Item ``index`` of a data set of ``media`` -> (its media kind, its number among the items of that kind)."""
    if media == "mixed":
        return ("image", "video")[index % 2], index // 2
    return media, index


def make_question(seed: int, split: str, index: int, media: str = "mixed",
                  spec: PLMDataSpec | None = None) -> PLMQuestion:
    """Item ``index`` of ``split`` without its pixels (cheap: for answer statistics and text-only baselines).

    Args:
        seed: Base seed of the data set.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint seed streams).
        index: Item number (>= 0).
        media: ``"image"``, ``"video"`` or ``"mixed"`` (even indices images, odd ones videos; the n-th image of
            a mixed set is the n-th item of the image-only set, and likewise for videos).
        spec: Sizes and video timing; the defaults when omitted.
    """
    if split not in SPLITS:
        raise ValueError(f"embedded PLM split must be one of {', '.join(SPLITS)}, got {split!r}")
    if media not in MEDIA:
        raise ValueError(f"embedded PLM media must be one of {', '.join(MEDIA)}, got {media!r}")
    if index < 0:
        raise ValueError(f"item index must be >= 0, got {index}")
    spec = spec or PLMDataSpec()
    kind, number = _locate(index, media)
    types = IMAGE_TYPES if kind == "image" else VIDEO_TYPES
    question_type = types[number % len(types)]
    within = number // len(types)  # the item's number among those of its type
    combos = _combos(question_type, spec)
    block, place = divmod(within, len(combos))
    # Every combo once per block, in a per-seed order: answers stay balanced for every question text.
    order = np.random.default_rng([seed, _STREAM, SPLITS[split], _MEDIA_CODE[kind], types.index(question_type),
                                   block]).permutation(len(combos))
    combo = combos[int(order[place])]
    scene_seed = (seed, _STREAM, SPLITS[split], _MEDIA_CODE[kind], number)
    rng = np.random.default_rng(list(scene_seed))
    if kind == "image":
        objects = _image_scene(question_type, combo, spec.image_size, rng)
    else:
        objects = _video_scene(question_type, combo, spec, rng)
    question, answer = _question_and_answer(question_type, combo)
    return PLMQuestion(f"{split}_{kind}_{number:06d}", kind, question_type, question, answer, objects,
                       (*scene_seed, 1))


# ------------------------------------------------------------------------------------------------ pixels


def _background(size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [F, H, W, 3]: a dark two-colour ramp with uniform noise (av_events' background)."""
    x, y = _pixel_grid(size)
    low, high = rng.uniform(10.0, 50.0, size=(2, 3))
    ramp = (x / size)[..., None] if rng.random() < 0.5 else (y / size)[..., None]  # [H, W, 1]
    background = (low + (high - low) * ramp).astype(np.float32)  # [H, W, 3]
    return background[None] + rng.uniform(-6.0, 6.0, size=(frames, size, size, 3)).astype(np.float32)


def _draw(pixels: np.ndarray, obj: PLMObject, frame: int) -> None:
    """Paint ``obj`` as it is at ``frame`` into float [H, W, 3] ``pixels`` (anti-aliased edge)."""
    x, y = _pixel_grid(pixels.shape[0])
    cx, cy = obj.centre(frame)
    cos_a, sin_a = math.cos(obj.angle), math.sin(obj.angle)
    u = (x - cx) * cos_a + (y - cy) * sin_a  # shape-local coordinates
    v = -(x - cx) * sin_a + (y - cy) * cos_a
    coverage = np.clip(0.5 - _shape_sdf(obj.shape, u, v, obj.radius, _NO_RNG), 0.0, 1.0)[..., None]  # [H, W, 1]
    pixels += (np.asarray(COLOURS[obj.colour], dtype=np.float32) - pixels) * coverage


def render_media(question: PLMQuestion, spec: PLMDataSpec | None = None) -> np.ndarray:
    """The pixels of an item: uint8 [H, W, 3] for an image, [T, H, W, 3] for a video."""
    spec = spec or PLMDataSpec()
    rng = np.random.default_rng(list(question.render_seed))
    video = question.media == "video"
    size, count = (spec.video_size, spec.num_frames) if video else (spec.image_size, 1)
    frames = _background(size, count, rng)
    for f in range(count):
        for obj in question.objects:
            if obj.first_frame <= f < obj.end_frame:
                _draw(frames[f], obj, f)
    pixels = np.clip(frames + 0.5, 0, 255).astype(np.uint8)
    return pixels if video else pixels[0]


# ----------------------------------------------------------------------------------------------- dataset


class EmbeddedPLMData(Dataset):
    """The embedded PLM items (module docstring), rendered on demand (nothing cached; pickles to a few bytes).

    Args:
        num_items: Dataset length.
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: Base seed; the same seed gives the same items (and the files :func:`write_plm_jsonl` writes).
        media: ``"image"``, ``"video"`` or ``"mixed"`` (alternating, images first).
        spec: Sizes and video timing.

    Items: ``{"id", "media_type": "image" | "video", "image": RGB PIL image | "video": uint8 [T, C, H, W] and
    "fps", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "assistant", "value": ...}],
    "question_type", "question", "answer"}``.
    """

    def __init__(self, num_items: int, *, split: str = "train", seed: int = 0, media: str = "mixed",
                 spec: PLMDataSpec | None = None) -> None:
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        make_question(seed, split, 0, media, spec)  # checks split and media
        self.num_items, self.split, self.seed, self.media = int(num_items), split, seed, media
        self.spec = spec or PLMDataSpec()

    def __len__(self) -> int:
        return self.num_items

    def question(self, index: int) -> PLMQuestion:
        """Item ``index`` without its pixels."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        return make_question(self.seed, self.split, index, self.media, self.spec)

    def questions(self) -> list[dict[str, str]]:
        """``{"id", "question_type", "question", "answer"}`` of every item, without rendering."""
        return [_scored_fields(self.question(i)) for i in range(self.num_items)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        question = self.question(index)
        pixels = render_media(question, self.spec)
        item: dict[str, Any] = {**_scored_fields(question), "media_type": question.media,
                                "conversations": question.conversations()}
        if question.media == "image":
            item["image"] = Image.fromarray(pixels)
        else:
            item["video"] = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # [T,H,W,C] -> [T,C,H,W]
            item["fps"] = self.spec.fps
        return item


def _scored_fields(question: PLMQuestion) -> dict[str, str]:
    return {"id": question.id, "question_type": question.question_type, "question": question.question,
            "answer": question.answer}


# ------------------------------------------------------------------------------------------------ scores


def normalize_answer(text: str) -> str:
    """Lower case, inner whitespace collapsed, surrounding spaces, quotes and a final full stop dropped."""
    return " ".join(str(text).lower().split()).strip("\"' ").removesuffix(".").strip()


def exact_match_accuracy(items: Iterable[Mapping[str, Any]], predictions: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy (after :func:`normalize_answer`) of ``predictions``, aligned with ``items``
    (mappings with ``question_type`` and ``answer``): ``{"all": ..., <type>: ...}`` for the types present."""
    hits: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    items = list(items)
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    for item, prediction in zip(items, predictions):
        right = normalize_answer(prediction) == normalize_answer(item["answer"])
        for key in ("all", item["question_type"]):
            totals[key] += 1
            hits[key] += right
    return {key: hits[key] / totals[key] for key in totals}


def text_only_predictions(train: Iterable[Mapping[str, Any]], items: Iterable[Mapping[str, Any]]) -> list[str]:
    """What the best model that reads only the question answers: the most frequent ``train`` answer of each
    question text (ties: the alphabetically first), else of its question type, else of all of ``train``."""
    by_text: defaultdict[str, Counter[str]] = defaultdict(Counter)
    by_type: defaultdict[str, Counter[str]] = defaultdict(Counter)
    overall: Counter[str] = Counter()
    for item in train:
        by_text[item["question"]][item["answer"]] += 1
        by_type[item["question_type"]][item["answer"]] += 1
        overall[item["answer"]] += 1

    def majority(counts: Counter[str]) -> str:
        return min(counts, key=lambda answer: (-counts[answer], answer))

    return [majority(by_text.get(item["question"]) or by_type.get(item["question_type"]) or overall)
            for item in items]


def text_only_accuracy(train: Iterable[Mapping[str, Any]],
                       evaluate: Iterable[Mapping[str, Any]] | None = None) -> dict[str, float]:
    """Accuracy of :func:`text_only_predictions` fitted on ``train``, on ``evaluate`` (``train`` itself when
    omitted: the best any text-only answer table can do on that split, an upper bound of the prior).

    Items are mappings with ``question``, ``question_type`` and ``answer`` (:meth:`EmbeddedPLMData.questions`,
    rendered items, or the records of a written JSONL). Returns ``{"all": ..., <type>: ...}``.
    """
    train = list(train)
    evaluate = train if evaluate is None else list(evaluate)
    return exact_match_accuracy(evaluate, text_only_predictions(train, evaluate))


# ------------------------------------------------------------------------------------------------- files


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode uint8 frames [F, H, W, 3] as a silent MPEG-4 part 2 (yuv420p) video, bit-exact (same frames, same
    bytes), as av_events writes its clips, at the finest quantiser (qmax 2).

    Still lossy: at 48 px the halved chroma blurs the small shapes' colours (about 12 levels in 255 on a
    shape, 4 overall). Lossless H.264 4:4:4 was tried and left out: decord cannot read it.
    """
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=fps, options={"flags": "+bitexact", "qmin": "1", "qmax": "2"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def write_plm_jsonl(folder: str | Path, n: int, split: str = "train", seed: int = 0, media: str = "mixed",
                    spec: PLMDataSpec | None = None) -> Path:
    """Write items 0..n-1 of a split as media files and a release-format JSONL; returns the JSONL's path.

    Layout: ``<folder>/<split>.jsonl`` and ``<folder>/<split>/<id>.png`` (images) or ``.mp4`` (videos at
    ``spec.fps``, MPEG-4, lossy: see :func:`write_mp4`). Each line is ``{"id", "image" | "video":
    path relative to <folder>, "conversations", "question_type", "question", "answer"}``, so ``<folder>`` is the
    release's ``root_dir``. Several splits can share a folder. Every file is written to a temp name and renamed;
    the same arguments write the same bytes.
    """
    spec = spec or PLMDataSpec()
    data = EmbeddedPLMData(n, split=split, seed=seed, media=media, spec=spec)
    folder = Path(folder)
    (folder / split).mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        question = data.question(index)
        pixels = render_media(question, spec)
        target = folder / split / f"{question.id}.{'png' if question.media == 'image' else 'mp4'}"
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        if question.media == "image":
            Image.fromarray(pixels).save(tmp, format="PNG")
        else:
            write_mp4(tmp, pixels, spec.fps)
        os.replace(tmp, target)
        records.append({"id": question.id, question.media: manifest_path(folder, target),
                        "conversations": question.conversations(), **_scored_fields(question)})
    path = folder / f"{split}.jsonl"
    write_jsonl_atomic(path, records)
    return path

