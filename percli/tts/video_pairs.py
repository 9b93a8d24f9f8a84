"""The paper's self-supervised pairs from real videos: two disjoint clips of one video.

An index pass (`index_videos`, main process, once, resumable by video) decodes each video's sound at the model's
rate into ``<cache>/audio/<n>.flac`` and runs voice-activity detection on it (`percli.core.speech_enhance`:
energy by default, silero when installed); ``index.jsonl`` keeps, per usable video, its duration, frame rate and
speech spans. Videos that cannot be decoded, have no audio track, are shorter than two clips or hold no speech
span are reported and skipped (``skipped`` with reasons, in the run's summary).

Item ``i`` (a seeded draw): a video, clip A starting inside one of its speech spans (the target; its enhanced
version is the input) and clip B elsewhere in the video, not overlapping A (the hint's audio; the hint's picture
is the frame at B's middle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from percli.core.mel import MelConfig

INDEX = "index.jsonl"


def _bad(path: str, reason: str) -> dict[str, str]:
    return {"path": path, "reason": reason}


def index_videos(videos: list[str], cache: Path, clip_s: float, sample_rate: int, vad: str = "energy"
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Usable videos (``{"video", "audio", "duration", "fps", "spans"}``) and the skipped ones with reasons; an
    interrupted pass continues where ``index.jsonl`` ends."""
    import soundfile

    from percli.core.data.audio import load_audio
    from percli.core.data.images import BadSample
    from percli.core.speech_enhance import speech_spans

    cache.mkdir(parents=True, exist_ok=True)
    (cache / "audio").mkdir(exist_ok=True)
    index_path = cache / INDEX
    done = {}
    if index_path.is_file():
        for line in index_path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                done[record["video"]] = record
    clip = round(clip_s * sample_rate)
    with index_path.open("a") as out:
        for n, video in enumerate(videos):
            if video in done:
                continue
            record: dict[str, Any] = {"video": video}
            try:
                wave = load_audio(video, sample_rate)[0]
                if wave.numel() < 2 * clip:
                    raise BadSample(video, f"{wave.numel() / sample_rate:.1f} s of sound: shorter than two "
                                           f"{clip_s:g} s clips")
                spans = [[a, b] for a, b in speech_spans(wave, sample_rate, vad)]
                if not spans:
                    raise BadSample(video, "no speech found by voice-activity detection")
                audio = cache / "audio" / f"{n:06d}.flac"
                tmp = audio.with_name(f".{audio.name}.tmp-{os.getpid()}")
                soundfile.write(str(tmp), wave.clamp(-1, 1).numpy(), sample_rate, format="FLAC")
                os.replace(tmp, audio)
                record.update(audio=str(audio), samples=wave.numel(), fps=_fps(video), spans=spans)
            except BadSample as err:
                record["skipped"] = err.reason
            out.write(json.dumps(record) + "\n")
            out.flush()
            done[video] = record
    usable = [done[v] for v in videos if "skipped" not in done[v]]
    skipped = [_bad(v, done[v]["skipped"]) for v in videos if "skipped" in done[v]]
    return usable, skipped


def _fps(video: str) -> float:
    import av

    try:
        with av.open(video) as container:
            if not container.streams.video:
                return 0.0
            stream = container.streams.video[0]
            return float(stream.average_rate or stream.guessed_rate or 0.0)
    except Exception:  # noqa: BLE001 - a sound-only file has no picture: the hint image is then blank
        return 0.0


def list_videos(source: str) -> list[str]:
    """A folder (recursively, video files) or a manifest (``{"video": path}`` lines, relative to it)."""
    from percli.core.data.video import VIDEO_EXTENSIONS

    path = Path(source).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [str((path.parent / record["video"]).resolve()) for record in lines]


class VideoPairs(Dataset):
    """Self-supervised pairs from indexed videos; the same keys as `percli.tts.scenes.StylizationPairs` (``rt60``
    and ``scene`` are unknown: NaN and the video's number)."""

    def __init__(self, records: list[dict[str, Any]], size: int, *, clip_s: float = 2.0, mel: MelConfig = MelConfig(),
                 enhance: str = "spectral", seed: int = 0, image_size: int = 64, waves: bool = False):
        if not records:
            raise ValueError("no usable video: every one was skipped (see the run's summary)")
        self.records, self.size, self.mel, self.enhance, self.seed = records, size, mel, enhance, seed
        self.samples = round(clip_s * mel.sample_rate)
        self.frames, self.image_size, self.waves = self.samples // mel.hop_length, image_size, waves

    def __len__(self) -> int:
        return self.size

    def draw(self, index: int) -> tuple[int, int, int]:
        """(video, start of A, start of B) in samples."""
        rng = np.random.default_rng([self.seed, index, 15485863])
        v = int(rng.integers(len(self.records)))
        record, clip = self.records[v], self.samples
        a0, a1 = record["spans"][int(rng.integers(len(record["spans"])))]
        start_a = int(rng.integers(a0, max(a0 + 1, min(a1, record["samples"] - clip) + 1)))
        start_a = min(start_a, record["samples"] - clip)
        free = [s for s in (int(rng.integers(0, record["samples"] - clip + 1)) for _ in range(16))
                if s + clip <= start_a or s >= start_a + clip]
        start_b = free[0] if free else (0 if start_a >= clip else record["samples"] - clip)
        return v, start_a, start_b

    def _segment(self, record: dict[str, Any], start: int) -> torch.Tensor:
        import soundfile

        data, _ = soundfile.read(record["audio"], start=start, stop=start + self.samples, dtype="float32")
        return torch.nn.functional.pad(torch.from_numpy(data), (0, self.samples - len(data)))

    def _frame(self, record: dict[str, Any], start: int) -> torch.Tensor:
        from PIL import Image

        from percli.core.data.video import read_frames

        if record["fps"] <= 0:
            return torch.zeros(3, self.image_size, self.image_size)
        middle = (start + self.samples / 2) / self.mel.sample_rate
        frames, _ = read_frames(record["video"], lambda n, fps: [min(max(n - 1, 0), round(middle * fps))])
        image = Image.fromarray(frames[0].permute(1, 2, 0).numpy()).resize((self.image_size,) * 2, Image.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from percli.tts.scenes import enhanced, pair_item

        v, start_a, start_b = self.draw(index)
        record = self.records[v]
        target, hint = self._segment(record, start_a), self._segment(record, start_b)
        speech = enhanced(target, self.mel.sample_rate, self.enhance)  # oracle: no dry speech here, none as well
        return pair_item(self.mel, self.frames, target, speech, hint, self._frame(record, start_b), self.waves,
                         scene=v, rt60=float("nan"))
