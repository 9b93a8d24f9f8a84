"""VoiceCraft inference behind `percli tts`: load weights, edit a recording, continue a prompt, write audio.

Weights come from the official release (a VoiceCraft ``.pth`` ``{"config", "phn2num", "model"}`` read
with ``weights_only=True``, or a Hugging Face folder ``config.json`` + ``model.safetensors``; plus the
audiocraft codec ``encodec_4cb2048_giga.th``) or from a percli checkpoint or run dir written by
``percli pretrain voicecraft`` (safetensors whose metadata carry the config, ``phn2num`` and codec).

Sampling follows the official notebooks: every sample draws from one ``torch.Generator`` seeded once,
and of ``num_samples`` generations the one with the fewest new frames is kept (the official
``sample_batch_size``, which steers speaking rate and long pauses). TTS samples them as one batch and
keeps the first to end (``inference_tts_batch``); editing, which has no batched version, draws them
one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import signature
from pathlib import Path

import numpy as np
import soundfile
import torch

from percli.core.checkpoint import MODEL_FILE, CheckpointError, latest_checkpoint, read_weights, torch_load_weights
from percli.models import build_for_checkpoint, family_fit
from percli.models.common import plain
from percli.models.encodec import EncodecModel
from percli.models.encodec import load_official_state as load_codec_state
from percli.models.hub import resolve_weights
from percli.models.voicecraft import VoiceCraft, kwargs_from_official_args
from percli.models.voicecraft import load_official_state as load_voicecraft_state
from percli.models.voicecraft_decoding import SILENCE_TOKENS
from percli.tts import alignment
from percli.tts import text as tts_text

RELEASE_URL = "https://huggingface.co/pyp1/VoiceCraft"
WEIGHTS_HELP = (f"download giga830M.pth (or giga330M.pth, 830M_TTSEnhanced.pth, ...) and encodec_4cb2048_giga.th "
                f"from {RELEASE_URL} and pass --checkpoint giga830M.pth --codec encodec_4cb2048_giga.th (or set "
                "PERCLI_VOICECRAFT_CHECKPOINT / PERCLI_VOICECRAFT_CODEC), or pass --checkpoint RUN_DIR of "
                "`percli pretrain voicecraft`")
AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class WeightsError(ValueError):
    """The weights cannot be found or read; the message says where to get them and how to pass them."""


@dataclass
class VoiceCraftBundle:
    """Everything inference needs: the language model, its codec and its phoneme vocabulary."""

    model: VoiceCraft
    codec: EncodecModel
    phn2num: dict[str, int]
    source: str  # where the model came from, for reports
    silence_tokens: tuple[int, ...]  # codebook-0 silence ids of the codec (the release's only)

    @property
    def frame_rate(self) -> int:
        return self.codec.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate


# --------------------------------------------------------------------------- loading


def _read_official_pth(path: Path) -> tuple[dict, dict[str, int], dict[str, torch.Tensor]]:
    """(config, phn2num, state) of a release ``.pth``, unpickling nothing but ``argparse.Namespace``."""
    try:
        ckpt = torch_load_weights(path, [argparse.Namespace])
    except CheckpointError as e:  # a refused pickle (nothing of it ran) or a damaged file; names the file
        raise WeightsError(f"{e}; {WEIGHTS_HELP}") from None
    if not isinstance(ckpt, dict) or not {"config", "model"} <= set(ckpt):
        raise WeightsError(f"{path} is not a VoiceCraft release checkpoint (expected keys config, phn2num, model); "
                           f"{WEIGHTS_HELP}")
    config = ckpt["config"]
    config = dict(vars(config)) if isinstance(config, argparse.Namespace) else dict(config)
    phn2num = ckpt.get("phn2num") or config.get("phn2num")
    return config, phn2num, ckpt["model"]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and percli metadata of a safetensors file; a damaged or missing file is a `WeightsError`."""
    try:
        return read_weights(path)
    except (CheckpointError, FileNotFoundError) as e:
        raise WeightsError(f"{e}; {WEIGHTS_HELP}") from None


def _resolve_checkpoint_dir(path: Path) -> Path:
    """A percli run dir -> its latest checkpoint dir; a checkpoint dir stays itself."""
    if (path / MODEL_FILE).is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise WeightsError(f"{path} holds neither {MODEL_FILE} nor checkpoints/step_*; {WEIGHTS_HELP}")
    return latest


def _percli_codec_path(meta: dict, where: Path) -> Path | None:
    """The codec weights a percli checkpoint names in its metadata (``codec``: name, config, weights path)."""
    info = meta.get("codec")
    if not info:
        return None
    if isinstance(info, str):
        info = {"path": info}
    weights = info.get("path") or info.get("weights")
    if not weights:
        return None
    weights = Path(weights)
    # relative to the checkpoint dir (the recipe writes ../../codec.safetensors)
    return weights if weights.is_absolute() else where / weights


def load_codec(path: Path, config: dict | None = None) -> EncodecModel:
    """The Encodec model of ``path``: the release ``.th`` (VoiceCraft's codec config) or percli safetensors
    (config in the file's metadata unless given)."""
    path = resolve_weights(path)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if not path.is_file():
        raise WeightsError(f"no codec weights at {path}; {WEIGHTS_HELP}")
    if path.suffix == ".safetensors":
        try:
            state, meta = read_weights(path)
            config = config or meta.get("config") or {}
            # sizes from the file's metadata: checked against its tensors before the codec is allocated
            codec = build_for_checkpoint(lambda: EncodecModel(**config), path, state, family_fit)
        except CheckpointError as e:
            raise WeightsError(f"{e}; {WEIGHTS_HELP}") from None
    else:
        codec = EncodecModel(**(config or {}))  # the release's .th: VoiceCraft's codec config (the defaults)
    try:
        load_codec_state(codec, state if path.suffix == ".safetensors" else path)
    except Exception as e:  # noqa: BLE001 - unreadable pickles and misfit state dicts alike
        raise WeightsError(f"cannot load the codec from {path} ({type(e).__name__}: {e}); {WEIGHTS_HELP}") from e
    return codec.eval()


def checkpoint_layout(checkpoint: Path) -> str:
    """``release`` (a ``.pth``), ``hub`` (a Hugging Face folder) or ``percli`` (safetensors, checkpoint or run dir)."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file() and checkpoint.suffix != ".safetensors":
        return "release"
    if (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file():
        return "hub"
    return "percli"


@dataclass
class VoiceCraftWeights:
    """What any of the three layouts holds: the official args, the vocabulary and the state dict."""

    config: dict  # official args (``kwargs_from_official_args`` makes constructor arguments of them)
    phn2num: dict[str, int]
    state: dict[str, torch.Tensor]
    layout: str  # see `checkpoint_layout`; release and hub weights need the released codec
    codec_path: Path | None  # the codec a percli checkpoint names in its metadata

    def build(self, source: Path | str) -> VoiceCraft:
        """The model of ``config`` with ``state`` loaded strictly."""
        try:
            # the config comes from the checkpoint itself: checked against its tensors before allocating
            kwargs = kwargs_from_official_args(self.config)
            model = build_for_checkpoint(lambda: VoiceCraft(**kwargs), source, self.state, family_fit)
            load_voicecraft_state(model, self.state)
        except (RuntimeError, ValueError, TypeError) as e:
            raise WeightsError(f"{source} does not load as VoiceCraft: {e}") from e
        return model


def read_voicecraft_weights(checkpoint: Path | None) -> VoiceCraftWeights:
    """Config, phoneme vocabulary and state of a release ``.pth``, a Hugging Face folder or a percli
    ``model.safetensors`` / checkpoint dir / run dir (see `load_voicecraft`)."""
    if checkpoint is None:
        raise WeightsError(f"no VoiceCraft weights given; {WEIGHTS_HELP}")
    checkpoint = resolve_weights(checkpoint)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if not checkpoint.exists():
        raise WeightsError(f"no VoiceCraft weights at {checkpoint}; {WEIGHTS_HELP}")
    layout, codec_path = checkpoint_layout(checkpoint), None
    if layout == "release":
        config, phn2num, state = _read_official_pth(checkpoint)
    elif layout == "hub":
        # the Hugging Face layout of pyp1/VoiceCraft_* (PyTorchModelHubMixin): args as config.json
        config = json.loads((checkpoint / "config.json").read_text())
        config = config.get("args", config)
        phn2num, state = config.get("phn2num"), _read_safetensors(checkpoint / "model.safetensors")[0]
    else:
        weights = checkpoint if checkpoint.is_file() else _resolve_checkpoint_dir(checkpoint) / MODEL_FILE
        state, meta = _read_safetensors(weights)
        config = meta.get("config") or {}
        phn2num = meta.get("phn2num")
        if phn2num is None and (weights.parent / "phn2num.json").is_file():
            phn2num = json.loads((weights.parent / "phn2num.json").read_text())
        codec_path = _percli_codec_path(meta, weights.parent)
    if not phn2num:
        raise WeightsError(f"{checkpoint} carries no phoneme vocabulary (phn2num); {WEIGHTS_HELP}")
    return VoiceCraftWeights(config, {str(k): int(v) for k, v in phn2num.items()}, state, layout, codec_path)


def check_codec_fits(codec: EncodecModel, n_codebooks: int, audio_vocab_size: int) -> None:
    """Raise `WeightsError` unless the codec makes the codes the model reads."""
    if codec.quantizer.n_q != n_codebooks or codec.quantizer.bins != audio_vocab_size:
        raise WeightsError(f"the codec ({codec.quantizer.n_q} x {codec.quantizer.bins} codes) does not match the "
                           f"model ({n_codebooks} x {audio_vocab_size}); pass the codec the model was trained with")


def load_voicecraft(checkpoint: Path | None, codec: Path | None, device: str | torch.device = "cpu"
                    ) -> VoiceCraftBundle:
    """Load the model, codec and phoneme vocabulary from the release files or a percli checkpoint.

    Args:
        checkpoint: release ``.pth``, Hugging Face folder (``config.json`` + ``model.safetensors``),
            percli ``model.safetensors``, checkpoint dir or run dir.
        codec: the codec weights (``encodec_4cb2048_giga.th`` or percli safetensors); optional for a
            percli checkpoint that names its codec.
        device: where to put both models.

    Raises:
        WeightsError: naming what is missing and where to get it.
    """
    weights = read_voicecraft_weights(checkpoint)
    model = weights.build(checkpoint)
    codec = codec if codec is not None else weights.codec_path
    if codec is None:
        raise WeightsError(f"no codec weights given for {checkpoint}; {WEIGHTS_HELP}")
    found_codec = load_codec(codec)
    check_codec_fits(found_codec, model.n_codebooks, model.audio_vocab_size)
    # the decoding heuristic's silence ids are those of the released codec; any other codec has its own
    release_codec = found_codec.config == {k: plain(p.default) for k, p in signature(EncodecModel).parameters.items()}
    return VoiceCraftBundle(model.to(device).eval(), found_codec.to(device).eval(), weights.phn2num, str(checkpoint),
                            SILENCE_TOKENS if release_codec else ())


# --------------------------------------------------------------------------- sampling


@dataclass
class Sampling:
    """The sampling knobs of both commands (official defaults: top-k 40, top-p 1, temperature 1)."""

    top_k: int = 40
    top_p: float = 1.0
    temperature: float = 1.0
    stop_repetition: int = 3
    num_samples: int = 1
    seed: int = 1
    kv_cache: bool = True

    def kwargs(self) -> dict:
        return {"top_k": self.top_k, "top_p": self.top_p, "temperature": self.temperature,
                "stop_repetition": self.stop_repetition, "kv_cache": self.kv_cache}


def keep_shortest(draw: Callable[[torch.Generator], torch.Tensor], num_samples: int, seed: int,
                  device: str | torch.device, report: Callable[[str], None] | None = None
                  ) -> tuple[torch.Tensor, list[int]]:
    """Draw ``num_samples`` code sequences ``[K, T_i]`` from one seeded generator; keep the shortest.

    Returns the kept codes and every sample's length (ties keep the earliest sample).
    """
    if num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {num_samples}")
    generator = torch.Generator(device=device).manual_seed(seed)
    best, lengths = None, []
    for i in range(num_samples):
        codes = draw(generator)
        lengths.append(int(codes.shape[1]))
        if report:
            report(f"sample {i + 1}/{num_samples}: {codes.shape[1]} frames")
        if best is None or codes.shape[1] < best.shape[1]:
            best = codes
    return best, lengths


# --------------------------------------------------------------------------- editing and TTS


@dataclass
class EditResult:
    """Output of `edit_codes`: the edited codes and what was regenerated."""

    codes: torch.Tensor  # [K, T'] the edited recording
    new_frames: int  # frames generated in all spans together (of the kept sample)
    sample_lengths: list[int]  # total frames of every sample drawn


def edit_codes(bundle: VoiceCraftBundle, phonemes: torch.Tensor, original: torch.Tensor,
               spans: Sequence[tuple[int, int]], sampling: Sampling,
               report: Callable[[str], None] | None = None) -> EditResult:
    """Regenerate ``spans`` of the codes ``original [K, T]`` given the target transcript's phoneme ids.

    Every frame outside the spans is copied unchanged; each span ends where the model emits EOG.
    """

    def draw(generator: torch.Generator) -> torch.Tensor:
        return bundle.model.edit(phonemes, original, spans, generator=generator, codec_rate=bundle.frame_rate,
                                 silence_tokens=bundle.silence_tokens, **sampling.kwargs())

    codes, lengths = keep_shortest(draw, sampling.num_samples, sampling.seed, original.device, report)
    kept = original.shape[1] - sum(b - a for a, b in spans)
    return EditResult(codes, codes.shape[1] - kept, lengths)


@dataclass
class SynthesisResult:
    """Output of `continue_prompt`: the prompt's codes and the kept continuation."""

    prompt: torch.Tensor  # [K, T]
    generated: torch.Tensor  # [K, G]
    sample_lengths: list[int]  # new frames of the kept sample (the batch's others never finish)


def continue_prompt(bundle: VoiceCraftBundle, phonemes: torch.Tensor, prompt: torch.Tensor, sampling: Sampling,
                    report: Callable[[str], None] | None = None) -> SynthesisResult:
    """Zero-shot TTS: continue the codes ``prompt [K, T]`` saying ``phonemes`` (prompt words + new text).

    The ``num_samples`` continuations run as one batch (the official ``inference_tts_batch``): the first
    to end, i.e. the shortest, is kept and the others are dropped unfinished, so only its length is known.
    """
    generator = torch.Generator(device=prompt.device).manual_seed(sampling.seed)
    generated = bundle.model.generate(phonemes, prompt, generator=generator, codec_rate=bundle.frame_rate,
                                      silence_tokens=bundle.silence_tokens, batch_size=sampling.num_samples,
                                      **sampling.kwargs())
    if report:
        report(f"first of {sampling.num_samples} sample(s) to end: {generated.shape[1]} frames")
    return SynthesisResult(prompt, generated, [int(generated.shape[1])])


# --------------------------------------------------------------------------- text, timings, audio


class AlignmentError(ValueError):
    """No usable word timings: the alignment file is missing or unreadable, or the aligner failed."""


def phoneme_ids(text: str, bundle: VoiceCraftBundle) -> torch.Tensor:
    """Phoneme ids ``[L]`` of ``text`` in the model's vocabulary, on the model's device."""
    ids = tts_text.text_to_ids(text, bundle.phn2num)
    return torch.tensor(ids, dtype=torch.long, device=next(bundle.model.parameters()).device)


def align_offline(wav: torch.Tensor, sample_rate: int, transcript: str) -> list[alignment.WordTiming]:
    """Word timings from the offline (pocketsphinx) aligner."""
    try:
        return alignment.align_words(wav.cpu().numpy(), sample_rate, transcript)
    except (RuntimeError, ValueError) as e:
        raise AlignmentError(str(e)) from e


def word_timings(alignment_file: Path | None, wav: torch.Tensor, sample_rate: int,
                 transcript: str) -> list[alignment.WordTiming]:
    """One timing per transcript word, from ``alignment_file`` or, without one, the offline aligner."""
    if alignment_file is None:
        timings = align_offline(wav, sample_rate, transcript)
    elif not Path(alignment_file).is_file():
        raise AlignmentError(f"alignment file {alignment_file} does not exist")
    else:
        try:
            timings = alignment.read_alignment(alignment_file)
        except (OSError, ValueError) as e:
            raise AlignmentError(str(e)) from e
    try:
        return alignment.words_with_timings(transcript, timings)
    except ValueError as e:
        raise AlignmentError(str(e)) from e


@torch.no_grad()
def encode(bundle: VoiceCraftBundle, wav: torch.Tensor) -> torch.Tensor:
    """Mono waveform ``[1, samples]`` at the codec's rate -> codes ``[K, frames]``."""
    device = next(bundle.codec.parameters()).device
    return bundle.codec.encode(wav.to(device)[None])[0]


@torch.no_grad()
def decode(codec: EncodecModel, codes: torch.Tensor) -> tuple[np.ndarray, int]:
    """Codes ``[K, frames]`` -> (float32 samples ``[frames * hop]`` in [-1, 1], number of special ids).

    A barely trained model can sample a special id (empty, pad, ...) inside a frame; those are decoded
    as code 0 and counted, rather than failing the whole run (released models do not emit them).
    """
    special = codes >= codec.quantizer.bins
    wav = codec.decode(codes.masked_fill(special, 0)[None])[0, 0]
    return wav.clamp(-1, 1).float().cpu().numpy(), int(special.sum())


def write_audio_atomic(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM (WAV or FLAC by suffix) to a temp name in the same folder, then rename."""
    path = Path(path)
    fmt = AUDIO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"output {path} must end with {' or '.join(AUDIO_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        soundfile.write(str(tmp), samples, sample_rate, subtype="PCM_16", format=fmt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
