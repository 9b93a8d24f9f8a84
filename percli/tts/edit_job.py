"""Loads the weights (official release files or a `percli pretrain voicecraft` run), reads the audio at the
codec's rate, finds word timings (--alignment: JSON, whisperX, MFA TextGrid/CSV; else the offline
pocketsphinx aligner), diffs --transcript against --target (substitution, insertion, deletion; up to
3 spans with VoiceCraft's 0.08 s margins), regenerates only those codec frames with the official
sampling defaults (top-k 40, top-p 1, temperature 1, seed 1) and writes 16-bit audio atomically to -o
(default: <run dir>/<AUDIO stem>_edited.wav; an existing file is replaced only with --overwrite). The
run dir holds config.yaml, env.json and summary.json (output path, durations, spans and frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.tts import steps
from percli.tts.inference import Sampling


@dataclass
class Config:
    audio: str | None = None
    """The recording to edit."""
    transcript: str | None = None
    """What the recording says."""
    target: str | None = None
    """What the edited recording should say."""
    weights: steps.Weights = field(default_factory=steps.Weights)
    alignment: str | None = None
    """Word timings of the audio; default: align offline with pocketsphinx."""
    output: str | None = None
    """Output WAV/FLAC, replaced only with --overwrite (default <run dir>/<AUDIO stem>_edited.wav)."""
    sampling: Sampling = field(default_factory=lambda: Sampling(stop_repetition=-1, num_samples=1))
    """Official editing defaults; num_samples N draws N edits one after another and keeps the shortest."""


def validate(cfg: Config) -> None:
    for key in ("transcript", "target"):
        if not steps.words(getattr(cfg, key)):
            raise ConfigError(f"{key}: not set; pass --{key} with " + ("what the recording says" if key == "transcript"
                              else "what the edited recording should say"))
    if steps.words(cfg.transcript) == steps.words(cfg.target):
        raise ConfigError("target: --transcript and --target are identical; give the target transcript with the "
                          "words you want changed")
    steps.check_common("audio", cfg.audio, cfg.output, cfg.sampling.num_samples)


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.tts import alignment, inference

    audio = Path(cfg.audio)
    output = steps.output_path(cfg.output, ctx, cfg.audio, "_edited")
    bundle, wav = steps.load(cfg.weights.checkpoint, cfg.weights.codec, cfg.weights.device, audio, ctx.log)
    timings = steps.timings(cfg.alignment, audio, wav, bundle.sample_rate, cfg.transcript)
    duration = wav.shape[1] / bundle.sample_rate
    edits = alignment.edit_spans(cfg.transcript, cfg.target, timings, duration, frame_rate=bundle.frame_rate,
                                 max_spans=bundle.model.max_n_spans)  # ValueError naming the span
    original = inference.encode(bundle, wav)  # [K, frames]
    spans = [(e.start_frame, min(e.end_frame, original.shape[1])) for e in edits]
    phonemes = steps.phonemes(cfg.target, bundle)
    shown = ", ".join(f"{a / bundle.frame_rate:.2f}-{b / bundle.frame_rate:.2f} s" for a, b in spans)
    ctx.log(f"regenerating {shown} of {duration:.2f} s for {len(phonemes)} target phonemes")
    result = inference.edit_codes(bundle, phonemes, original, spans, cfg.sampling, report=ctx.log)
    samples, special = steps.decode(bundle, result.codes, ctx.log)
    inference.write_audio_atomic(output, samples, bundle.sample_rate)
    ctx.log(f"wrote {output} ({len(samples) / bundle.sample_rate:.2f} s; regenerated "
            f"{result.new_frames / bundle.frame_rate:.2f} s in place of "
            f"{sum(b - a for a, b in spans) / bundle.frame_rate:.2f} s)")
    return {
        "status": "completed", "output": str(output), "duration_s": len(samples) / bundle.sample_rate,
        "original_duration_s": duration, "edit_span_s": [[e.start, e.end] for e in edits],
        "edit_span_frames": [list(s) for s in spans], "edit_type": [e.kind for e in edits],
        "frames": int(result.codes.shape[1]), "original_frames": int(original.shape[1]),
        "new_frames": result.new_frames, "sample_frames": result.sample_lengths, "special_ids": special,
        "seed": cfg.sampling.seed, "checkpoint": bundle.source,
    }
