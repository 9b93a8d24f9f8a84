"""Audio datasets for Audio-MAE style models: decoding, Kaldi fbank features, augmentation, sampling weights.

Every dataset returns ``{"fbank": FloatTensor[1, target_length, num_mel_bins], "label": int,
"target": FloatTensor[num_classes], "path": str}``: the normalised log-mel filterbank, channel-first and
time x mel as Audio-MAE consumes it; the sample's first class index (-1 when unlabeled); its multi-hot
(or one-hot) target, mixed when waveform mixup fires; and the file it came from. Unreadable, corrupt,
empty or silent files raise :class:`BadSample` so the engine can count and skip them.

The feature path follows the official AudioMAE ``dataset.py``: remove the waveform mean, optionally
roll + gain it, optionally mix it with a second waveform (lambda ~ Beta(10, 10), labels mixed with the
same lambda), Kaldi fbank (HTK mel, Hanning window, 25 ms / 10 ms, no dither, no energy), zero-pad or
crop to ``target_length`` frames, SpecAugment frequency/time masking, then ``(x - mean) / (2 * std)``.
Every random draw comes from torch's global RNG, which the engine reseeds per sample.

Two deliberate differences from the official code: stereo files are averaged to mono (the official
code hands the channels to Kaldi fbank, which keeps only the first), and the roll offset is drawn over
the whole clip (the official ``np.random.randint(len(waveform))`` on a [1, T] array always draws 0, so
its "roll" never moves the signal; only the gain acts).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio
from torch.utils.data import Dataset

from percli.core.data.audio_layouts import (
    SILENCE,
    AudioItem,
    esc50_csv,
    is_speech_commands,
    read_esc50,
    read_speech_commands,
)
from percli.core.data.images import BadSample, inferred_classes, list_folder
from percli.core.data.paths import resolve_manifest_path
from percli.core.data.shards import BadRecords, read_records

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3", ".m4a")
# AudioSet fbank statistics used by AST and Audio-MAE (their pretrained weights expect them).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974
# A clip whose peak stays under -80 dBFS carries no usable signal (16-bit dither is ~-90 dBFS).
SILENCE_PEAK = 1e-4
_WINDOW_MS = 25.0  # Kaldi fbank's default frame length, which the official call keeps


# --------------------------------------------------------------------------------------------- decoding


def _decode_soundfile(path: str) -> tuple[np.ndarray, int]:
    data, sr = soundfile.read(path, dtype="float32", always_2d=True)  # [T, C]
    return data.T, int(sr)


def _decode_av(path: str) -> tuple[np.ndarray, int]:
    # PyAV bundles its own FFmpeg, so MP3/M4A decode without system packages (torchaudio.load cannot).
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")  # planar float32: to_ndarray() gives [C, n]
        chunks = []
        sr = stream.rate
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
                sr = out.sample_rate
        for out in resampler.resample(None):  # flush
            chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), int(sr or 0)
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(sr)


def load_audio(path: str | Path, sample_rate: int = 16000) -> torch.Tensor:
    """Decode an audio file to a mono waveform at ``sample_rate``.

    WAV/FLAC/OGG (and MP3 where libsndfile supports it) are read with soundfile; anything soundfile
    rejects (M4A, some MP3s) is decoded with PyAV. Channels are averaged; the result is resampled
    with ``torchaudio.functional.resample``.

    Args:
        path: The audio file.
        sample_rate: Output sample rate in Hz.

    Returns:
        FloatTensor[1, T].

    Raises:
        BadSample: If the file is missing, cannot be decoded, is empty, or is silent (peak under
            ``SILENCE_PEAK``).
    """
    path = str(path)
    try:
        data, sr = _decode_soundfile(path)
    except Exception as sf_error:  # noqa: BLE001 - libsndfile raises several types for bad input
        try:
            data, sr = _decode_av(path)
        except Exception as av_error:  # noqa: BLE001 - PyAV raises many FFmpeg error types
            raise BadSample(
                path, f"soundfile: {type(sf_error).__name__}: {sf_error}; PyAV: {type(av_error).__name__}: {av_error}"
            ) from av_error
    if data.size == 0 or sr <= 0:
        raise BadSample(path, "no audio samples")
    wave = torch.from_numpy(np.ascontiguousarray(data)).mean(dim=0, keepdim=True)
    if not torch.isfinite(wave).all():
        raise BadSample(path, "non-finite samples")
    if float(wave.abs().max()) < SILENCE_PEAK:
        raise BadSample(path, f"silent (peak below {SILENCE_PEAK:g})")
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    return wave


# --------------------------------------------------------------------------------------------- features


def kaldi_fbank(
    wave: torch.Tensor, sample_rate: int = 16000, num_mel_bins: int = 128, target_length: int | None = 1024
) -> torch.Tensor:
    """Log-mel filterbank exactly as Audio-MAE computes it, zero-padded or cropped to ``target_length``.

    Args:
        wave: FloatTensor[1, T] (or [T]) mono waveform.
        sample_rate: Its sample rate in Hz.
        num_mel_bins: Mel bands.
        target_length: Output frames (10 ms each); ``None`` keeps every frame.

    Returns:
        FloatTensor[target_length, num_mel_bins] (time x mel).
    """
    wave = wave.reshape(1, -1).float()
    wave = wave - wave.mean()
    window = int(sample_rate * _WINDOW_MS / 1000)
    if wave.shape[1] < window:
        # Kaldi (snip_edges) yields no frame for a clip shorter than one window; pad it to one frame.
        wave = torch.nn.functional.pad(wave, (0, window - wave.shape[1]))
    fbank = torchaudio.compliance.kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    if target_length is None:
        return fbank
    missing = target_length - fbank.shape[0]
    if missing > 0:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, missing))
    elif missing < 0:
        fbank = fbank[:target_length]
    return fbank


def normalize_fbank(fbank: torch.Tensor, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD) -> torch.Tensor:
    """Audio-MAE/AST normalisation ``(fbank - mean) / (2 * std)`` (the factor 2 is theirs)."""
    return (fbank - mean) / (2 * std)


# ------------------------------------------------------------------------------------------ augmentation


def _beta(a: float, b: float) -> float:
    # torch.distributions draws from the global RNG, so the engine's per-sample reseeding covers it.
    return float(torch.distributions.Beta(torch.tensor(float(a)), torch.tensor(float(b))).sample())


def roll_mag_aug(wave: torch.Tensor) -> torch.Tensor:
    """Roll the waveform by a random offset along time and scale it by a gain ~ Beta(10, 10) + 0.5.

    Args:
        wave: FloatTensor[1, T].

    Returns:
        The augmented waveform, same shape.
    """
    shift = int(torch.randint(wave.shape[-1], ()))
    gain = _beta(10, 10) + 0.5
    return torch.roll(wave, shift, dims=-1) * gain


def spec_augment(fbank: torch.Tensor, freqm: int = 0, timem: int = 0) -> torch.Tensor:
    """SpecAugment with torchaudio's masks: one frequency band of up to ``freqm`` bins, one time span.

    Args:
        fbank: FloatTensor[T, M] (time x mel), before normalisation as in the official code.
        freqm: Maximum masked mel bins (0 disables); 48 for AudioSet.
        timem: Maximum masked frames (0 disables); 192 for AudioSet.

    Returns:
        The masked fbank, same shape (masked cells are 0).
    """
    spec = fbank.t().unsqueeze(0)  # torchaudio masks (..., freq, time)
    if freqm:
        spec = torchaudio.transforms.FrequencyMasking(freqm)(spec)
    if timem:
        spec = torchaudio.transforms.TimeMasking(timem)(spec)
    return spec.squeeze(0).t()


def _match_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or crop [1, T] to ``length`` samples (how the official code aligns a mixup partner)."""
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


# -------------------------------------------------------------------------------------------- datasets


class FbankDataset(Dataset):
    """Shared feature path of the audio datasets; subclasses provide waveforms and labels.

    Subclasses set ``classes``, ``multilabel`` and ``__len__``, and implement :meth:`waveform`,
    :meth:`labels_of` and :meth:`path_of`.

    Args:
        sample_rate: Sample rate of the waveforms fed to fbank.
        num_mel_bins: Mel bands.
        target_length: Frames per example (10 ms each).
        mean: Normalisation mean of the fbank values.
        std: Normalisation std of the fbank values.
        train: Apply the augmentations below (off for evaluation).
        freqm: SpecAugment maximum frequency mask (mel bins); 0 disables.
        timem: SpecAugment maximum time mask (frames); 0 disables.
        roll_mag_aug: Random waveform roll and gain.
        mixup: Probability of mixing each example with a random other one (waveform level).
        transform: Optional callable applied to the final ``fbank`` tensor.
    """

    classes: list[str]
    multilabel: bool

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        num_mel_bins: int = 128,
        target_length: int = 1024,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        roll_mag_aug: bool = False,
        mixup: float = 0.0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not 0.0 <= float(mixup) <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {mixup}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.sample_rate = int(sample_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.target_length = int(target_length)
        self.mean = float(mean)
        self.std = float(std)
        self.train = bool(train)
        self.freqm = int(freqm)
        self.timem = int(timem)
        self.roll_mag_aug = bool(roll_mag_aug)
        self.mixup = float(mixup)
        self.transform = transform

    def waveform(self, index: int) -> torch.Tensor:
        """FloatTensor[1, T] of item ``index`` at ``sample_rate`` (raises :class:`BadSample`)."""
        raise NotImplementedError

    def labels_of(self, index: int) -> list[int]:
        """Class indices of item ``index`` (empty when unlabeled), without decoding it."""
        raise NotImplementedError

    def path_of(self, index: int) -> str:
        """The file (or embedded address) of item ``index``."""
        raise NotImplementedError

    def _target(self, index: int) -> torch.Tensor:
        target = torch.zeros(len(self.classes))
        labels = self.labels_of(index)
        if labels:
            target[labels] = 1.0
        return target

    def _prepared_wave(self, index: int) -> torch.Tensor:
        wave = self.waveform(index)
        wave = wave - wave.mean()
        if self.train and self.roll_mag_aug:
            wave = roll_mag_aug(wave)
        return wave

    def _features(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform [1, T] -> normalised fbank [1, target_length, num_mel_bins] (masked when training)."""
        fbank = kaldi_fbank(wave, self.sample_rate, self.num_mel_bins, self.target_length)
        if self.train and (self.freqm or self.timem):
            fbank = spec_augment(fbank, self.freqm, self.timem)
        return normalize_fbank(fbank, self.mean, self.std).unsqueeze(0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        wave = self._prepared_wave(index)
        target = self._target(index)
        if self.train and self.mixup > 0 and float(torch.rand(())) < self.mixup:
            other = int(torch.randint(len(self), ()))
            try:
                wave2 = _match_length(self._prepared_wave(other), wave.shape[-1])
            except BadSample:
                # A bad partner is counted when it is drawn itself; this example just stays unmixed.
                wave2 = None
            if wave2 is not None:
                lam = _beta(10, 10)
                wave = lam * wave + (1 - lam) * wave2
                wave = wave - wave.mean()
                target = lam * target + (1 - lam) * self._target(other)
        fbank = self._features(wave)
        if self.transform is not None:
            fbank = self.transform(fbank)
        labels = self.labels_of(index)
        return {"fbank": fbank, "label": labels[0] if labels else -1, "target": target, "path": self.path_of(index)}



def _index_names(
    where: Path, entries: list[tuple[str, list[int | str]]], classes: list[str] | None
) -> tuple[list[AudioItem], list[str]]:
    """Map label names/ints to indices, inferring classes (sorted names, or 0..max) when not given."""
    flat = [lab for _, labs in entries for lab in labs]
    names = sorted({lab for lab in flat if isinstance(lab, str)})
    ints = [lab for lab in flat if isinstance(lab, int)]
    if classes is None:
        if names and ints:
            raise ValueError(f"{where}: labels mix class names and integers; use one kind or pass `classes`")
        classes = names if names else inferred_classes(str(where), max(ints)) if ints else []
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for path, labs in entries:
        out = []
        for lab in labs:
            if isinstance(lab, str):
                if lab not in index:
                    raise ValueError(f"{where}: unknown class {lab!r} for {path}")
                lab = index[lab]
            if not 0 <= lab < len(classes):
                raise ValueError(f"{where}: label {lab} out of range for {len(classes)} classes ({path})")
            out.append(lab)
        items.append((path, sorted(set(out))))
    return items, list(classes)


def read_audio_manifest(manifest: str | Path, classes: list[str] | None = None,
                        bad: BadRecords | None = None) -> tuple[list[AudioItem], list[str]]:
    """Read a JSONL manifest of ``{"path": ..., "labels": [...]}`` (or ``"label": x``) lines.

    Labels are class names or integers (``null``/-1/absent = unlabeled); relative paths resolve
    against the manifest's folder. Malformed lines are counted in `bad` and skipped.

    Args:
        manifest: The ``.jsonl`` file.
        classes: Class names in index order; inferred (sorted names, or ``"0".."max"``) if omitted.

    Returns:
        ``(items, classes)`` with items as ``(path, [class indices])``.

    Raises:
        ValueError: When no line is usable, or labels do not fit the classes.
    """
    manifest = Path(manifest)
    bad = bad if bad is not None else BadRecords()
    entries: list[tuple[str, list[int | str]]] = []
    for lineno, obj, _ in read_records(manifest, None, bad):
        if not isinstance(obj.get("path"), str) or not obj["path"]:
            bad.add(manifest, lineno, 'missing or non-string "path"')
            continue
        labels = obj["labels"] if "labels" in obj else obj.get("label")
        labels = [] if labels is None else labels if isinstance(labels, list) else [labels]
        # bool is an int subclass; a true/false label is a manifest bug.
        wrong = [lab for lab in labels
                 if isinstance(lab, bool) or not isinstance(lab, int | str) or (isinstance(lab, int) and lab < -1)]
        if wrong:
            bad.add(manifest, lineno, f"a label must be a class name or an index >= 0, got {wrong[0]!r}")
            continue
        entries.append((resolve_manifest_path(manifest.parent, obj["path"]), [lab for lab in labels if lab != -1]))
    if not entries:
        raise ValueError(f"{manifest}: manifest has no usable entries ({bad.count} malformed line(s), e.g. "
                         f"{bad.examples[:2]})")
    return _index_names(manifest, entries, classes)


def read_label_csv(label_csv: str | Path) -> tuple[dict[str, int], list[str]]:
    """Read an AudioSet-style ``index,mid,display_name`` CSV.

    Returns:
        ``(mid -> index, display names in index order)``.
    """
    with open(label_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"{label_csv}: expected a CSV with header index,mid,display_name")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"{label_csv}: indices must be 0..{len(rows) - 1} without gaps")
    return {r["mid"]: int(r["index"]) for r in rows}, [r["display_name"] for r in rows]


def read_ast_json(
    json_file: str | Path, label_csv: str | Path | None = None, classes: list[str] | None = None
) -> tuple[list[AudioItem], list[str]]:
    """Read an AST/Audio-MAE data list ``{"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}``.

    Args:
        json_file: The JSON list; relative ``wav`` paths resolve against its folder.
        label_csv: ``index,mid,display_name`` CSV; classes are its display names. Without it the
            label strings themselves are the classes (sorted), or ``classes`` if given.
        classes: Class names when there is no label CSV.

    Returns:
        ``(items, classes)``.
    """
    json_file = Path(json_file)
    with json_file.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f'{json_file}: expected {{"data": [{{"wav": ..., "labels": "..."}}, ...]}}')
    entries: list[tuple[str, list[int | str]]] = []
    for i, datum in enumerate(data["data"]):
        if not isinstance(datum, dict) or not isinstance(datum.get("wav"), str):
            raise ValueError(f'{json_file}: entry {i} has no "wav" path')
        labels = datum.get("labels") or ""
        mids = [m.strip() for m in labels.split(",") if m.strip()] if isinstance(labels, str) else list(labels)
        entries.append((resolve_manifest_path(json_file.parent, datum["wav"]), mids))
    if not entries:
        raise ValueError(f"{json_file}: data list is empty")
    if label_csv is None:
        return _index_names(json_file, entries, classes)
    mid_index, names = read_label_csv(label_csv)
    items = []
    for path, mids in entries:
        unknown = [m for m in mids if m not in mid_index]
        if unknown:
            raise ValueError(f"{json_file}: labels {unknown} of {path} are not in {label_csv}")
        items.append((path, sorted({mid_index[m] for m in mids})))
    return items, names


class AudioDataset(FbankDataset):
    """Audio clips from a folder, a JSONL manifest, an AST-style JSON list or an ESC-50 / Speech Commands tree,
    as Audio-MAE fbanks.

    Args:
        source: A folder of class sub-folders of audio files (or a flat folder = unlabeled), a
            ``.jsonl`` manifest of ``{"path": ..., "labels": [...]}`` lines, an AST-style ``.json``
            list (with ``label_csv``), an ESC-50 root (holding ``meta/esc50.csv``) or a Speech Commands root
            (holding ``validation_list.txt`` / ``testing_list.txt``); see :mod:`percli.core.data.audio_layouts`.
        label_csv: ``index,mid,display_name`` CSV for an AST-style list.
        multilabel: Force the task type; by default True when any item has more than one label.
        classes: Class names in index order (for a manifest whose labels are names or ints).
        split: For the two benchmark trees: ``"train"`` reads ESC-50's folds other than `fold` / Speech
            Commands' clips in neither list; ``"validation"`` or ``"testing"`` reads ESC-50's `fold` / the
            clips of that Speech Commands list. Other sources ignore it.
        fold: ESC-50's held-out cross-validation fold; None reads every fold whatever the split.
        keywords: Speech Commands as keyword spotting (SPC-1): these words, ``_silence_`` and ``_unknown_``.
        **features: :class:`FbankDataset` arguments (``sample_rate``, ``num_mel_bins``,
            ``target_length``, ``mean``, ``std``, ``train``, ``freqm``, ``timem``, ``roll_mag_aug``,
            ``mixup``, ``transform``).

    Attributes:
        classes: Class names in index order.
        multilabel: Whether items can carry several labels.
        items: ``(path, [class indices])`` per item.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        label_csv: str | Path | None = None,
        multilabel: bool | None = None,
        classes: list[str] | None = None,
        split: str = "train",
        fold: int | None = None,
        keywords: tuple[str, ...] | list[str] = (),
        **features: Any,
    ) -> None:
        super().__init__(**features)
        path = Path(source).expanduser()
        self.bad_records = BadRecords()
        self.starts: dict[int, float] = {}
        """Items that are a 1 s window of a longer file (keyword spotting's silence): index -> start seconds."""
        if (meta := esc50_csv(path)) is not None:
            self.items, self.classes = read_esc50(meta, fold, split != "train", self.bad_records)
        elif is_speech_commands(path):
            self.items, self.classes, silence = read_speech_commands(path, split, AUDIO_EXTENSIONS, self.bad_records,
                                                                     tuple(keywords))
            if silence:
                label = [self.classes.index(SILENCE)]
                self.starts = {len(self.items) + k: start for k, (_, start) in enumerate(silence)}
                self.items += [(noise, label) for noise, _ in silence]
        elif path.is_dir():
            samples, self.classes = list_folder(path, AUDIO_EXTENSIONS)
            self.items = [(p, [lab] if lab >= 0 else []) for p, lab in samples]
        elif path.is_file() and path.suffix == ".jsonl":
            self.items, self.classes = read_audio_manifest(path, classes, self.bad_records)
        elif path.is_file() and path.suffix == ".json":
            self.items, self.classes = read_ast_json(path, label_csv, classes)
        else:
            raise ValueError(
                f"audio source {str(source)!r} is not a folder, a .jsonl manifest or an AST-style .json list"
            )
        has_multi = any(len(labels) > 1 for _, labels in self.items)
        if multilabel is False and has_multi:
            raise ValueError(f"{source}: multilabel=False but some items have several labels")
        self.multilabel = has_multi if multilabel is None else bool(multilabel)

    def __len__(self) -> int:
        return len(self.items)

    def waveform(self, index: int) -> torch.Tensor:
        wave = load_audio(self.items[index][0], self.sample_rate)
        if index in self.starts:
            start = round(self.starts[index] * self.sample_rate)
            wave = wave[:, start:start + self.sample_rate]
        return wave

    def labels_of(self, index: int) -> list[int]:
        return self.items[index][1]

    def path_of(self, index: int) -> str:
        return self.items[index][0]


# ------------------------------------------------------------------------------------- stats & weights


def compute_fbank_stats(
    data: FbankDataset | Iterable[str | Path],
    *,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    max_items: int | None = None,
) -> tuple[float, float]:
    """Mean and std of the fbank values of a user's data, for ``mean``/``std`` of the datasets.

    Pooled over every real frame of every clip (no padding frames, no augmentation), in float64.
    AST's script instead averages per-clip means and stds of the padded features; for 10 s clips
    padded to 1024 frames the two agree closely, for short clips this one is not biased by padding.
    Undecodable files are skipped.

    Args:
        data: An audio dataset (its ``sample_rate``/``num_mel_bins`` are used) or audio file paths.
        sample_rate: Sample rate for paths.
        num_mel_bins: Mel bands for paths.
        max_items: Use at most this many clips (the first ones).

    Returns:
        ``(mean, std)`` as floats.

    Raises:
        ValueError: If no clip could be read.
    """
    if isinstance(data, FbankDataset):
        sample_rate, num_mel_bins = data.sample_rate, data.num_mel_bins
        waves: Iterable[Callable[[], torch.Tensor]] = (lambda i=i: data.waveform(i) for i in range(len(data)))
    else:
        waves = (lambda p=p: load_audio(p, sample_rate) for p in data)
    total = total_sq = 0.0
    count = 0
    for n, get_wave in enumerate(waves):
        if max_items is not None and n >= max_items:
            break
        try:
            wave = get_wave()
        except BadSample:
            continue
        fbank = kaldi_fbank(wave, sample_rate, num_mel_bins, None).double()
        total += float(fbank.sum())
        total_sq += float((fbank * fbank).sum())
        count += fbank.numel()
    if count == 0:
        raise ValueError("no readable audio to compute fbank statistics from")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return float(mean), float(var**0.5)


def sample_weights(dataset: FbankDataset) -> torch.Tensor:
    """Class-balanced per-sample weights for a ``WeightedRandomSampler`` (official ``gen_weight.py``).

    Each class weighs ``1000 / (count + 0.01)``; a sample weighs the sum over its labels, so rare
    classes and multi-label clips with rare labels are drawn more often. Unlabeled samples weigh 0.

    Args:
        dataset: An audio dataset (labels are read without decoding audio).

    Returns:
        DoubleTensor[len(dataset)].
    """
    labels = [dataset.labels_of(i) for i in range(len(dataset))]
    counts = torch.zeros(len(dataset.classes), dtype=torch.float64)
    for labs in labels:
        counts[labs] += 1.0
    class_weight = 1000.0 / (counts + 0.01)
    return torch.stack([class_weight[labs].sum() for labs in labels]) if labels else torch.zeros(0, dtype=torch.float64)
