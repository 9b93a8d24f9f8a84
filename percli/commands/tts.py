"""`percli tts edit | synthesize`: VoiceCraft speech editing and zero-shot TTS from one command.

Both verbs load the weights (official release files or a `percli pretrain voicecraft` run), read the
audio at the codec's rate, find word timings (your alignment file, or the offline aligner), sample
with the official defaults and write 16-bit audio atomically. Progress goes to stderr; ``--json``
prints a summary object on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer

from percli.commands.run import err, fail
from percli.core.data.audio import load_audio
from percli.core.data.images import BadSample
from percli.tts import alignment as tts_alignment
from percli.tts import inference

tts_app = typer.Typer(help="Speech editing and zero-shot TTS with VoiceCraft (official or percli weights).",
                      no_args_is_help=True)

CHECKPOINT = typer.Option(
    None, "--checkpoint", envvar="PERCLI_VOICECRAFT_CHECKPOINT",
    help="VoiceCraft weights: the release .pth (giga830M.pth, 830M_TTSEnhanced.pth, ... from "
         "huggingface.co/pyp1/VoiceCraft), a Hugging Face model folder, or a `percli pretrain voicecraft` "
         "run/checkpoint dir.")
CODEC = typer.Option(
    None, "--codec", envvar="PERCLI_VOICECRAFT_CODEC",
    help="Codec weights: encodec_4cb2048_giga.th from huggingface.co/pyp1/VoiceCraft (or percli safetensors). "
         "Not needed for a percli checkpoint that names its codec.")
ALIGNMENT = typer.Option(
    None, "--alignment", help='Word timings of the audio: JSON ({"words": [{"word", "start", "end"}, ...]}, '
                              "whisperX or MFA), Praat TextGrid or MFA CSV. Default: align offline with pocketsphinx.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output file.")
TOP_K = typer.Option(40, "--top-k", help="Sample among the k most likely codes (0 = all).")
TOP_P = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off).")
TEMPERATURE = typer.Option(1.0, "--temperature", help="Softmax temperature.")
SEED = typer.Option(1, "--seed", help="Seed of the sampling generator (the same seed gives the same audio).")
KV_CACHE = typer.Option(True, "--kv-cache/--no-kv-cache", help="Reuse attention keys/values between steps.")
DEVICE = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu).")
JSON_OUT = typer.Option(False, "--json", help="Print a JSON summary on stdout.")


def _words(text: str) -> list[str]:
    return text.split()


def _prepare(checkpoint: Path | None, codec: Path | None, device: str | None, output: Path, overwrite: bool,
             audio: Path) -> tuple[inference.VoiceCraftBundle, torch.Tensor]:
    """Shared start of both verbs: check the output path, load the weights, read the audio."""
    if output.suffix.lower() not in inference.AUDIO_FORMATS:
        fail(f"output {output} must end with {' or '.join(inference.AUDIO_FORMATS)}")
    if output.exists() and not overwrite:
        fail(f"{output} exists; pass --overwrite to replace it or -o to choose another file")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    err.print(f"loading VoiceCraft from {checkpoint} on {device}")
    try:
        bundle = inference.load_voicecraft(checkpoint, codec, device)
    except inference.WeightsError as e:
        fail(str(e))
    try:
        wav = load_audio(audio, bundle.sample_rate)  # [1, samples]
    except BadSample as e:
        fail(f"cannot read audio {audio}: {e.args[1] if len(e.args) > 1 else e}; pass a readable WAV, FLAC, MP3 "
             "or M4A file with speech")
    return bundle, wav


def _timings(alignment: Path | None, audio: Path, wav: torch.Tensor, sample_rate: int, transcript: str) -> list:
    try:
        return inference.word_timings(alignment, wav, sample_rate, transcript)
    except inference.AlignmentError as e:
        fail(f"no word alignment for {audio}: {e}; pass --alignment FILE (word timings as JSON, a Praat TextGrid "
             "from MFA/whisperX, or an MFA CSV)")


def _phonemes(text: str, bundle: inference.VoiceCraftBundle) -> torch.Tensor:
    try:
        return inference.phoneme_ids(text, bundle)
    except (RuntimeError, ValueError) as e:
        fail(str(e))


def _decode(bundle: inference.VoiceCraftBundle, codes: torch.Tensor) -> tuple:
    samples, special = inference.decode(bundle.codec, codes)
    if special:
        err.print(f"[yellow]{special} special id(s) sampled inside frames were decoded as code 0[/] (an "
                  "undertrained model; the released ones do not emit them)")
    return samples, special


def _print(summary: dict, json_out: bool, line: str) -> None:
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        print(line)


@tts_app.command("edit")
def edit(
    audio: Path = typer.Argument(..., help="The recording to edit."),
    transcript: str = typer.Option(..., "--transcript", help="What the recording says."),
    target: str = typer.Option(..., "--target", help="What the edited recording should say."),
    checkpoint: Path | None = CHECKPOINT,
    codec: Path | None = CODEC,
    alignment: Path | None = ALIGNMENT,
    output: Path | None = typer.Option(None, "--output", "-o", help="Output WAV/FLAC (default <AUDIO>_edited.wav)."),
    overwrite: bool = OVERWRITE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    temperature: float = TEMPERATURE,
    stop_repetition: int = typer.Option(-1, "--stop-repetition", help="Penalise codebook-0 silence repeated more "
                                                                      "than this many times (-1 = off, official)."),
    num_samples: int = typer.Option(1, "--num-samples", help="Draw N edits and keep the shortest."),
    seed: int = SEED,
    kv_cache: bool = KV_CACHE,
    device: str | None = DEVICE,
    json_out: bool = JSON_OUT,
) -> None:
    """Change what a recording says, in the same voice: only the words that differ are regenerated.

    Example: [bold]percli tts edit talk.wav --transcript "I saw the lake" --target "I saw the frozen lake"
    --checkpoint giga830M.pth --codec encodec_4cb2048_giga.th --alignment talk.TextGrid -o edited.wav[/]
    """
    if _words(transcript) == _words(target):
        fail("--transcript and --target are identical; give the target transcript with the words you want changed")
    if num_samples < 1:
        fail(f"--num-samples must be at least 1, got {num_samples}")
    output = output or Path(f"{audio.stem}_edited.wav")
    bundle, wav = _prepare(checkpoint, codec, device, output, overwrite, audio)
    timings = _timings(alignment, audio, wav, bundle.sample_rate, transcript)
    duration = wav.shape[1] / bundle.sample_rate
    try:
        edits = tts_alignment.edit_spans(transcript, target, timings, duration, frame_rate=bundle.frame_rate,
                                         max_spans=bundle.model.max_n_spans)
    except ValueError as e:
        fail(str(e))
    original = inference.encode(bundle, wav)  # [K, frames]
    spans = [(e.start_frame, min(e.end_frame, original.shape[1])) for e in edits]
    phonemes = _phonemes(target, bundle)
    shown = ", ".join(f"{a / bundle.frame_rate:.2f}-{b / bundle.frame_rate:.2f} s" for a, b in spans)
    err.print(f"regenerating {shown} of {duration:.2f} s for {len(phonemes)} target phonemes")
    sampling = inference.Sampling(top_k, top_p, temperature, stop_repetition, num_samples, seed, kv_cache)
    result = inference.edit_codes(bundle, phonemes, original, spans, sampling, report=err.print)
    samples, special = _decode(bundle, result.codes)
    inference.write_audio_atomic(output, samples, bundle.sample_rate)
    summary = {
        "output": str(output), "duration_s": len(samples) / bundle.sample_rate, "original_duration_s": duration,
        "edit_span_s": [[e.start, e.end] for e in edits], "edit_span_frames": [list(s) for s in spans],
        "edit_type": [e.kind for e in edits], "frames": int(result.codes.shape[1]),
        "original_frames": int(original.shape[1]), "new_frames": result.new_frames,
        "sample_frames": result.sample_lengths, "special_ids": special, "seed": seed, "checkpoint": bundle.source,
    }
    _print(summary, json_out, f"wrote {output} ({summary['duration_s']:.2f} s; regenerated "
                              f"{result.new_frames / bundle.frame_rate:.2f} s in place of "
                              f"{sum(b - a for a, b in spans) / bundle.frame_rate:.2f} s)")


@tts_app.command("synthesize")
def synthesize(
    prompt: Path = typer.Option(..., "--prompt", help="A recording of the voice to clone (a few seconds)."),
    prompt_text: str = typer.Option(..., "--prompt-text", help="What the prompt says."),
    text: str = typer.Option(..., "--text", help="What to say in that voice."),
    cut_off: float | None = typer.Option(
        None, "--cut-off", help="Use only the prompt's first SEC seconds, cut at the nearest word end (needs word "
                                "timings). Default: the whole prompt."),
    checkpoint: Path | None = CHECKPOINT,
    codec: Path | None = CODEC,
    alignment: Path | None = ALIGNMENT,
    output: Path | None = typer.Option(None, "--output", "-o", help="Output WAV/FLAC (default <PROMPT>_tts.wav)."),
    include_prompt: bool = typer.Option(False, "--include-prompt", help="Write the prompt before the new speech."),
    overwrite: bool = OVERWRITE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    temperature: float = TEMPERATURE,
    stop_repetition: int = typer.Option(3, "--stop-repetition", help="Penalise codebook-0 silence repeated more "
                                                                     "than this many times (-1 = off)."),
    num_samples: int = typer.Option(3, "--num-samples", help="Sample N continuations as one batch and keep the "
                                                             "first to end, the shortest (official: 3; fewer long "
                                                             "pauses)."),
    seed: int = SEED,
    kv_cache: bool = KV_CACHE,
    device: str | None = DEVICE,
    json_out: bool = JSON_OUT,
) -> None:
    """Say new text in the voice of a short prompt recording (zero-shot TTS).

    Example: [bold]percli tts synthesize --prompt voice.wav --prompt-text "Thanks for calling." --text "How can I
    help you today?" --checkpoint 830M_TTSEnhanced.pth --codec encodec_4cb2048_giga.th -o reply.wav[/]
    """
    if not _words(text):
        fail("--text is empty; give the words to say")
    if num_samples < 1:
        fail(f"--num-samples must be at least 1, got {num_samples}")
    output = output or Path(f"{prompt.stem}_tts.wav")
    bundle, wav = _prepare(checkpoint, codec, device, output, overwrite, prompt)
    last_word = len(_words(prompt_text)) - 1
    if cut_off is not None:
        timings = _timings(alignment, prompt, wav, bundle.sample_rate, prompt_text)
        try:
            cut_s, last_word = tts_alignment.find_prompt_cut(timings, cut_off)
        except ValueError as e:
            fail(str(e))
        wav = wav[:, : round(cut_s * bundle.sample_rate)]
    prompt_codes = inference.encode(bundle, wav)  # [K, frames]
    spoken = " ".join(_words(prompt_text)[: last_word + 1])
    phonemes = _phonemes(tts_alignment.tts_target_text(prompt_text, last_word, text), bundle)
    err.print(f"continuing a {wav.shape[1] / bundle.sample_rate:.2f} s prompt with {len(phonemes)} phonemes")
    sampling = inference.Sampling(top_k, top_p, temperature, stop_repetition, num_samples, seed, kv_cache)
    result = inference.continue_prompt(bundle, phonemes, prompt_codes, sampling, report=err.print)
    # one decode of prompt + new frames (the codec sees the context across the join; the official code
    # also decodes the new frames alone), then the prompt's samples are cut unless asked for
    samples, special = _decode(bundle, torch.cat([result.prompt, result.generated], dim=1))
    if not include_prompt:
        samples = samples[result.prompt.shape[1] * bundle.codec.hop_length:]
    inference.write_audio_atomic(output, samples, bundle.sample_rate)
    summary = {
        "output": str(output), "duration_s": len(samples) / bundle.sample_rate,
        "prompt_s": wav.shape[1] / bundle.sample_rate, "prompt_text": spoken, "frames": int(result.generated.shape[1]),
        "prompt_frames": int(result.prompt.shape[1]), "sample_frames": result.sample_lengths,
        "num_samples": num_samples, "include_prompt": include_prompt, "special_ids": special, "seed": seed,
        "checkpoint": bundle.source,
    }
    _print(summary, json_out, f"wrote {output} ({summary['duration_s']:.2f} s; first of "
                              f"{num_samples} batched sample(s) to end: {summary['frames']} frames)")
