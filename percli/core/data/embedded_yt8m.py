"""Embedded YouTube-8M-shaped data: per-second rgb/audio features with correlated labels, written in the official
TFRecord layouts (:mod:`percli.core.data.yt8m`), from a seed, no download.

Origin: written for percli (not derived from the real dataset). Labels come from a latent concept structure,
so that a model of label co-occurrence (the latent concept mining stage of Huang et al. 2017) has something to
learn that a per-class classifier of the features finds hard:

* hidden *topics* (``num_topics``), each implying a set of ``labels_per_topic`` labels with its own
  probability for each (drawn once per seed; topics share labels);
* a video has one topic, two with probability ``second_topic``; each label of its topics is present with the
  topic's probability (at least one label; about 3.4 labels a video with the defaults, as YouTube-8M), plus
  one stray label with probability ``stray``;
* each class has a *visibility* (log-uniform in ``visibility``): how strongly it shows in the features. A
  faint label is hard to see in one video's features but follows from the visible labels of its topic;
* a video lasts ``min_frames`` to ``max_frames`` seconds; each label shows in one contiguous part of it
  (a third to all of it), where a frame carries ``visibility * signature`` of the label, plus Gaussian noise
  (``noise``) and a per-video offset. Signatures are fixed random directions of the rgb+audio space.

Frame-level records hold the frames quantised to uint8 codes; video-level records hold the mean of the
dequantised frames, so the two levels describe the same videos. Splits ``train``, ``validate`` and ``test``
(YouTube-8M's) draw from separate seed streams; video ``i`` of a split is a pure function of (seed, split,
i, spec), and the topics and signatures of the seed alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from percli.core.data.paths import build_once
from percli.core.data.tfrecord import write_records
from percli.core.data.yt8m import MAX_QUANTIZED, MIN_QUANTIZED, dequantize, frame_example, quantize, video_example

SPLITS = {"train": 1, "validate": 2, "test": 3}  # seed stream of each split
LEVELS = ("video", "frame")
SHARD_SIZE = 1000  # videos per TFRecord file
_FORMAT_VERSION = 1  # bump when the generator changes, so written folders are rebuilt


@dataclass(frozen=True)
class YT8MSpec:
    """Sizes and difficulty of the embedded data (module docstring)."""

    num_classes: int = 64
    rgb_dim: int = 1024
    audio_dim: int = 128
    num_topics: int = 16
    labels_per_topic: int = 8
    topic_probability: tuple[float, float] = (0.12, 0.5)
    """Range of the probability that a label of a video's topic is present."""
    second_topic: float = 0.3
    stray: float = 0.1
    visibility: tuple[float, float] = (0.03, 0.6)
    noise: float = 1.0
    min_frames: int = 10
    max_frames: int = 30


class ConceptStructure:
    """The seed's topics, label probabilities, visibilities and signatures."""

    def __init__(self, spec: YT8MSpec, seed: int):
        rng = np.random.default_rng([seed, 0])
        c = spec.num_classes
        if spec.labels_per_topic > c:
            raise ValueError(f"labels_per_topic={spec.labels_per_topic} > num_classes={c}")
        self.topics = np.stack([rng.choice(c, spec.labels_per_topic, replace=False) for _ in range(spec.num_topics)])
        self.probability = rng.uniform(*spec.topic_probability, size=self.topics.shape)
        low, high = np.log(spec.visibility[0]), np.log(spec.visibility[1])
        self.visibility = np.exp(rng.uniform(low, high, size=c)).astype(np.float32)
        dim = spec.rgb_dim + spec.audio_dim
        signatures = rng.standard_normal((c, dim))
        self.signatures = (signatures / np.linalg.norm(signatures, axis=1, keepdims=True)
                           * np.sqrt(dim) * 0.25).astype(np.float32)  # ~0.25 per dimension


def _video(structure: ConceptStructure, spec: YT8MSpec, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
    """(sorted labels, frames [T, rgb+audio]) of one video."""
    topics = [int(rng.integers(spec.num_topics))]
    if rng.random() < spec.second_topic:
        topics.append(int(rng.integers(spec.num_topics)))
    labels: set[int] = set()
    for k in topics:
        keep = rng.random(spec.labels_per_topic) < structure.probability[k]
        labels.update(int(v) for v in structure.topics[k][keep])
    if not labels:  # the topic's most likely label
        labels.add(int(structure.topics[topics[0]][np.argmax(structure.probability[topics[0]])]))
    if rng.random() < spec.stray:
        labels.add(int(rng.integers(spec.num_classes)))
    n = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    dim = spec.rgb_dim + spec.audio_dim
    frames = rng.normal(0.0, spec.noise, (n, dim)).astype(np.float32) + rng.normal(0.0, 0.1, dim).astype(np.float32)
    for label in sorted(labels):
        length = int(rng.integers(max(n // 3, 1), n + 1))
        start = int(rng.integers(0, n - length + 1))
        frames[start:start + length] += structure.visibility[label] * structure.signatures[label]
    return sorted(labels), frames


def videos(split: str, num_videos: int, seed: int = 0, spec: YT8MSpec | None = None, start: int = 0
           ) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """(id, labels, dequantised frames [T, rgb+audio]) of videos `start` to `num_videos` - 1 of a split."""
    if split not in SPLITS:
        raise ValueError(f"embedded YouTube-8M split must be one of {', '.join(SPLITS)}, got {split!r}")
    spec = spec or YT8MSpec()
    structure = ConceptStructure(spec, seed)
    for i in range(start, num_videos):
        labels, frames = _video(structure, spec, np.random.default_rng([seed, SPLITS[split], i]))
        # what a reader sees: the quantised frames (values outside [-2, 2] clipped)
        yield f"{split[0]}{i:06d}", labels, dequantize(quantize(frames, MAX_QUANTIZED, MIN_QUANTIZED))


def _records(split: str, level: str, start: int, stop: int, seed: int, spec: YT8MSpec) -> Iterator[bytes]:
    for video_id, labels, frames in videos(split, stop, seed, spec, start):
        rgb, audio = frames[:, : spec.rgb_dim], frames[:, spec.rgb_dim:]
        if level == "video":
            yield video_example(video_id, labels, {"rgb": rgb.mean(0), "audio": audio.mean(0)})
        else:
            yield frame_example(video_id, labels, {"rgb": rgb, "audio": audio})


def make_yt8m(root: str | Path, split: str, num_videos: int, level: str = "video", seed: int = 0,
              spec: YT8MSpec | None = None) -> Path:
    """Write (or reuse) one split at one level as ``<level>-NNNN.tfrecord`` files of 1000 videos in ``root``.

    Built beside ``root`` and renamed into place with a ``.complete`` marker holding the arguments
    (:func:`~percli.core.data.paths.build_once`); a folder whose marker matches is reused.

    Returns:
        ``root``, resolved.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    spec = spec or YT8MSpec()

    def write(folder: Path) -> None:
        for shard, start in enumerate(range(0, num_videos, SHARD_SIZE)):
            stop = min(start + SHARD_SIZE, num_videos)
            write_records(folder / f"{level}-{shard:04d}.tfrecord", _records(split, level, start, stop, seed, spec))

    wanted = json.loads(json.dumps({"version": _FORMAT_VERSION, "split": split, "level": level,
                                    "num_videos": num_videos, "seed": seed, "spec": asdict(spec)}))  # as the marker
    return build_once(root, wanted, write, "embedded YouTube-8M data")
