"""Loads the weights (official release files or a `percli pretrain voicecraft` run), reads the prompt at
the codec's rate (with --cut-off only its first SEC seconds, cut at the nearest word end, which needs
word timings: --alignment or the offline aligner), continues it with the phonemes of the prompt text
plus --text, sampling --num-samples continuations as one batch and keeping the first to end (the
official inference_tts_batch; fewer long pauses), and writes 16-bit audio atomically to -o (default:
<run dir>/<PROMPT stem>_tts.wav; an existing file is replaced only with --overwrite): the new speech, or
the prompt and the new speech with --include-prompt. The same --seed gives the same audio. The run dir
holds config.yaml, env.json and summary.json.
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
    prompt: str | None = None
    """A recording of the voice to clone (a few seconds)."""
    prompt_text: str | None = None
    """What the prompt says."""
    text: str | None = None
    """What to say in that voice."""
    cut_off: float | None = None
    """Use only the prompt's first SEC seconds, cut at the nearest word end (needs word timings); null = all."""
    weights: steps.Weights = field(default_factory=steps.Weights)
    alignment: str | None = None
    """Word timings of the prompt (for cut_off); default: align offline with pocketsphinx."""
    output: str | None = None
    """Output WAV/FLAC, replaced only with --overwrite (default <run dir>/<PROMPT stem>_tts.wav)."""
    include_prompt: bool = False
    """Write the prompt before the new speech."""
    sampling: Sampling = field(default_factory=lambda: Sampling(stop_repetition=3, num_samples=3))
    """Official TTS defaults: num_samples continuations sampled as one batch, the first to end kept."""


def validate(cfg: Config) -> None:
    if not steps.words(cfg.prompt_text):
        raise ConfigError("prompt_text: not set; pass --prompt-text with what the prompt says")
    if not steps.words(cfg.text):
        raise ConfigError("text: not set or empty; pass --text with the words to say")
    if cfg.cut_off is not None and not cfg.cut_off > 0:
        raise ConfigError(f"cut_off: got {cfg.cut_off}; expected seconds > 0")
    steps.check_common("prompt", cfg.prompt, cfg.output, cfg.sampling.num_samples)


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch

    from percli.tts import alignment, inference

    prompt = Path(cfg.prompt)
    output = steps.output_path(cfg.output, ctx, cfg.prompt, "_tts")
    bundle, wav = steps.load(cfg.weights.checkpoint, cfg.weights.codec, cfg.weights.device, prompt, ctx.log)
    prompt_words = steps.words(cfg.prompt_text)
    last_word = len(prompt_words) - 1
    if cfg.cut_off is not None:
        timings = steps.timings(cfg.alignment, prompt, wav, bundle.sample_rate, cfg.prompt_text)
        cut_s, last_word = alignment.find_prompt_cut(timings, cfg.cut_off)  # ValueError naming the fix
        wav = wav[:, : round(cut_s * bundle.sample_rate)]
    prompt_codes = inference.encode(bundle, wav)  # [K, frames]
    phonemes = steps.phonemes(alignment.tts_target_text(cfg.prompt_text, last_word, cfg.text), bundle)
    ctx.log(f"continuing a {wav.shape[1] / bundle.sample_rate:.2f} s prompt with {len(phonemes)} phonemes")
    result = inference.continue_prompt(bundle, phonemes, prompt_codes, cfg.sampling, report=ctx.log)
    # one decode of prompt + new frames (the codec sees the context across the join; the official code
    # also decodes the new frames alone), then the prompt's samples are cut unless asked for
    samples, special = steps.decode(bundle, torch.cat([result.prompt, result.generated], dim=1), ctx.log)
    if not cfg.include_prompt:
        samples = samples[result.prompt.shape[1] * bundle.codec.hop_length:]
    inference.write_audio_atomic(output, samples, bundle.sample_rate)
    ctx.log(f"wrote {output} ({len(samples) / bundle.sample_rate:.2f} s; first of {cfg.sampling.num_samples} "
            f"batched sample(s) to end: {result.generated.shape[1]} frames)")
    return {
        "status": "completed", "output": str(output), "duration_s": len(samples) / bundle.sample_rate,
        "prompt_s": wav.shape[1] / bundle.sample_rate, "prompt_text": " ".join(prompt_words[: last_word + 1]),
        "frames": int(result.generated.shape[1]), "prompt_frames": int(result.prompt.shape[1]),
        "sample_frames": result.sample_lengths, "num_samples": cfg.sampling.num_samples,
        "include_prompt": cfg.include_prompt, "special_ids": special, "seed": cfg.sampling.seed,
        "checkpoint": bundle.source,
    }
