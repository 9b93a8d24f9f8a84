"""The steps `tts edit` and `tts synthesize` share: the output path, the weights, the audio, word timings,
phonemes and decoding. Every anticipated failure is a ValueError whose message says what to pass instead."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.tts import inference

CHECKPOINT_ENV, CODEC_ENV = "PERCLI_VOICECRAFT_CHECKPOINT", "PERCLI_VOICECRAFT_CODEC"


@dataclass
class Weights:
    """The VoiceCraft model both speech jobs load."""

    checkpoint: str | None = field(default_factory=lambda: os.environ.get(CHECKPOINT_ENV) or None)
    """VoiceCraft weights: a release .pth (giga830M.pth, 830M_TTSEnhanced.pth, ... from
    huggingface.co/pyp1/VoiceCraft), a Hugging Face model folder, or a `percli pretrain voicecraft`
    run/checkpoint dir (default: $PERCLI_VOICECRAFT_CHECKPOINT)."""
    codec: str | None = field(default_factory=lambda: os.environ.get(CODEC_ENV) or None)
    """Codec weights (encodec_4cb2048_giga.th); not needed for a percli checkpoint that names its codec
    (default: $PERCLI_VOICECRAFT_CODEC)."""
    device: str | None = None
    """torch device (default: cuda if available, else cpu)."""


def words(text: str | None) -> list[str]:
    return (text or "").split()


def check_common(source_key: str, source: str | None, output: str | None, num_samples: int) -> None:
    """Config checks of both jobs: the input recording is given, the output is a WAV/FLAC path, at least one
    sample."""
    if not source:
        raise ConfigError(f"{source_key}: not set; pass the recording (WAV, FLAC, MP3 or M4A)")
    if output is not None and Path(output).suffix.lower() not in inference.AUDIO_FORMATS:
        raise ConfigError(f"output: {output} must end with {' or '.join(inference.AUDIO_FORMATS)}")
    if num_samples < 1:
        raise ConfigError(f"sampling.num_samples: got {num_samples}; expected at least 1")


def load(checkpoint: str | None, codec: str | None, device: str | None, audio: Path,
         log: Callable[[str], None]) -> tuple[inference.VoiceCraftBundle, torch.Tensor]:
    """The weights on `device` (default: cuda if available) and the recording at the codec's rate [1, samples]."""
    from percli.core.data.audio import load_audio
    from percli.core.data.images import BadSample

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    log(f"loading VoiceCraft from {checkpoint} on {device}")
    bundle = inference.load_voicecraft(Path(checkpoint) if checkpoint else None, Path(codec) if codec else None,
                                       device)  # WeightsError (a ValueError) names what to pass
    try:
        wav = load_audio(audio, bundle.sample_rate)
    except BadSample as e:
        raise ValueError(f"cannot read audio {audio}: {e.args[1] if len(e.args) > 1 else e}; pass a readable WAV, "
                         "FLAC, MP3 or M4A file with speech") from None
    return bundle, wav


def timings(alignment: str | None, audio: Path, wav: torch.Tensor, sample_rate: int, transcript: str) -> list:
    try:
        return inference.word_timings(Path(alignment) if alignment else None, wav, sample_rate, transcript)
    except inference.AlignmentError as e:
        raise ValueError(f"no word alignment for {audio}: {e}; pass --alignment FILE (word timings as JSON, a Praat "
                         "TextGrid from MFA/whisperX, or an MFA CSV)") from None


def phonemes(text: str, bundle: inference.VoiceCraftBundle) -> torch.Tensor:
    try:
        return inference.phoneme_ids(text, bundle)
    except RuntimeError as e:  # phonemizer / espeak-ng unavailable
        raise ValueError(str(e)) from None


def decode(bundle: inference.VoiceCraftBundle, codes: torch.Tensor, log: Callable[[str], None]) -> tuple:
    samples, special = inference.decode(bundle.codec, codes)
    if special:
        log(f"[yellow]{special} special id(s) sampled inside frames were decoded as code 0[/] (an undertrained "
            "model; the released ones do not emit them)")
    return samples, special


def output_path(output: str | None, ctx: RunContext, source: str, suffix: str) -> Path:
    """--output (an existing file only with --overwrite), else <run dir>/<source stem><suffix>.wav."""
    if not output:
        return ctx.run_dir / f"{Path(source).stem}{suffix}.wav"
    path = Path(output)
    if path.is_dir() or (path.exists() and not ctx.overwrite):
        raise ValueError(f"{output} exists; pass --overwrite to replace it or -o to choose another file")
    return path
