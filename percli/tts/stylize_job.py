"""`percli tts stylize SPEECH --hint SCENE --checkpoint RUN`: re-record speech in the scene of a hint clip.

Reads the speech and the hint's audio at the model's rate (any other rate is resampled, and the summary says
from what), the hint's picture from a video's middle frame or ``--hint-image``, enhances the speech as the run
trained (``--enhance`` to override), stylizes it in chunks of the training clip length (DDIM with classifier-free
guidance on the hint), vocodes it (a `percli pretrain vocoder` run with --vocoder, else Griffin-Lim: no trained
weights) and writes 16-bit audio atomically to -o
(default ``<run dir>/<SPEECH stem>_stylized.wav``) with a spectrogram PNG beside it (input / stylized / hint).
The same --seed gives the same audio.

Refused with a message naming the fix, before anything is written: silent speech, a hint without an audio
track, a hint picture missing for a model that reads one, a checkpoint that is not a soundscape run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.tts import steps

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


@dataclasses.dataclass
class Config:
    speech: str | None = None
    """The speech to re-record (WAV, FLAC, MP3, M4A; any sample rate)."""
    hint: str | None = None
    """The scene: a video with sound (its audio and middle frame) or an audio file (then --hint-image)."""
    hint_image: str | None = None
    """The scene's picture, for an audio hint (a video hint gives its own frame)."""
    checkpoint: str | None = None
    """A `percli pretrain soundscape` run dir, checkpoint dir or .safetensors."""
    output: str | None = None
    """Output WAV/FLAC, replaced only with --overwrite (default <run dir>/<SPEECH stem>_stylized.wav)."""
    steps: int = 50
    """DDIM steps."""
    guidance_scale: float = 3.0
    """Classifier-free guidance on the hint (1 = the conditional model alone)."""
    vocoder: str | None = None
    """A `percli pretrain vocoder` run; null = Griffin-Lim (no trained weights)."""
    enhance: str | None = None
    """Enhancement of the input speech: null = what the run trained with (spectral, oracle = none, none,
    external:<module>:<function>)."""
    seed: int = 0
    device: str | None = None
    """cuda / cpu (default: cuda when available)."""


def validate(cfg: Config) -> None:
    steps.check_common("speech", cfg.speech, cfg.output, 1)
    if not cfg.hint:
        raise ConfigError("hint: not set; pass --hint SCENE.mp4 (a video with sound) or --hint SCENE.wav "
                          "--hint-image SCENE.png")
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; pass --checkpoint with a `percli pretrain soundscape` run")
    for key in ("speech", "hint", "hint_image", "checkpoint", "vocoder"):
        value = getattr(cfg, key)
        if value and not Path(value).expanduser().exists():
            raise ConfigError(f"{key}: {value} does not exist")
    if cfg.steps < 1:
        raise ConfigError(f"steps: got {cfg.steps}; give at least 1 DDIM step")


def load_model(checkpoint: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    from percli.models import load_run_model

    return load_run_model(checkpoint, "soundscape", "percli pretrain soundscape")


def run_towers(meta: dict[str, Any]) -> torch.nn.Module | None:
    """The frozen hint towers a run was trained with (its metadata names them), or None."""
    specs = meta.get("hint_towers") or {}
    if not specs.get("audio_tower") and not specs.get("image_tower"):
        return None
    from percli.tts.hint_towers import HintTowers

    return HintTowers(specs.get("audio_tower"), specs.get("image_tower"))


def read_audio(path: str, sample_rate: int, what: str) -> tuple[torch.Tensor, int | None]:
    """Mono [T] at ``sample_rate`` and the file's own rate when it differed (resampled)."""
    from percli.core.data.audio import load_audio
    from percli.core.data.images import BadSample

    native = native_rate(path)
    try:
        wave = load_audio(path, sample_rate)[0]
    except BadSample as err:
        if "no audio track" in err.reason:
            raise ValueError(f"{what} {path} has no audio track: the stylizer hears the scene; give a video with "
                             "sound, or its audio as --hint with the picture as --hint-image") from None
        if "no audio samples" in err.reason or "silent" in err.reason:
            raise ValueError(f"{what} {path} has no audible sound ({err.reason})") from None
        raise ValueError(f"{what} {path} cannot be read: {err}") from None
    return wave, native if native and native != sample_rate else None


def native_rate(path: str) -> int | None:
    try:
        import soundfile

        return int(soundfile.info(path).samplerate)
    except Exception:  # noqa: BLE001 - not a soundfile format (video, M4A): ask PyAV
        try:
            import av

            with av.open(path) as container:
                if not container.streams.audio:
                    return None
                return int(container.streams.audio[0].rate)
        except Exception:  # noqa: BLE001
            return None


def hint_picture(cfg: Config, size: int) -> torch.Tensor | None:
    """[3, size, size] in [0, 1]: --hint-image, else a video hint's middle frame, else None."""
    from PIL import Image

    from percli.core.data.images import load_rgb, to_float_image

    if cfg.hint_image:
        return to_float_image(load_rgb(cfg.hint_image).resize((size, size), Image.BICUBIC))
    if Path(cfg.hint).suffix.lower() in VIDEO_SUFFIXES:
        from percli.core.data.video import read_frames

        frames, _ = read_frames(cfg.hint, lambda n, fps: [n // 2])  # [1, 3, H, W] uint8
        image = Image.fromarray(frames[0].permute(1, 2, 0).numpy()).resize((size, size), Image.BICUBIC)
        return to_float_image(image)
    return None


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.core.mel import MelConfig, log_mel
    from percli.core.speech_enhance import is_silent
    from percli.tts.inference import write_audio_atomic
    from percli.tts.scenes import IMAGE_SIZE, enhanced, fit_length
    from percli.tts.stylize import load_vocoder, spectrogram_png, vocode

    output = steps.output_path(cfg.output, ctx, cfg.speech, "_stylized")
    model, meta = load_model(cfg.checkpoint)
    vocoder = load_vocoder(cfg.vocoder)
    mel_cfg = MelConfig(**meta.get("mel", {}))
    sr = mel_cfg.sample_rate
    speech, speech_rate = read_audio(cfg.speech, sr, "speech")
    if is_silent(speech):
        raise ValueError(f"speech {cfg.speech} is silent: nothing to stylize")
    hint_wave, hint_rate = read_audio(cfg.hint, sr, "hint")
    image = hint_picture(cfg, IMAGE_SIZE)
    if image is None and model.config["image_hint"] != "none":
        raise ValueError("this model also reads the scene's picture: give a video hint or --hint-image")
    for path, rate in ((cfg.speech, speech_rate), (cfg.hint, hint_rate)):
        if rate:
            ctx.log(f"{path}: resampled from {rate} Hz to {sr} Hz")
    method = cfg.enhance or meta.get("enhance", "spectral")
    speech = enhanced(speech, sr, method)  # a run trained on dry speech (oracle) takes the input as it is
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    clip = round(float(meta.get("clip_s", 2.0)) * sr)
    frames = clip // mel_cfg.hop_length
    hint_clip = fit_length(hint_wave, clip)  # the hint's first training-clip length
    hint_mel = log_mel(hint_clip, mel_cfg)[:, :frames]
    hint = {"mel": hint_mel[None].to(device)}
    if image is not None:
        hint["image"] = image[None].to(device)
    towers = run_towers(meta)
    if towers is not None:
        hint.update({k: v.to(device) for k, v in towers.embed(hint_clip[None], hint.get("image")).items()})
    chunks = math.ceil(speech.numel() / clip)
    padded = torch.nn.functional.pad(speech, (0, chunks * clip - speech.numel()))
    mels_in = torch.stack([log_mel(c, mel_cfg)[:, :frames] for c in padded.split(clip)])  # [chunks, M, frames]
    generator = torch.Generator().manual_seed(cfg.seed)
    styled = model.stylize(mels_in.to(device), {k: v.expand(chunks, *v.shape[1:]) for k, v in hint.items()},
                           steps=cfg.steps, guidance_scale=cfg.guidance_scale, generator=generator).float().cpu()
    wave = vocode(styled.transpose(0, 1).flatten(1)[None], vocoder, mel_cfg, cfg.seed)[0]
    wave = fit_length(wave, speech.numel())  # Griffin-Lim gives (frames - 1) * hop samples: pad the last hop
    write_audio_atomic(output, wave.clamp(-1, 1).numpy(), sr)
    picture = spectrogram_png({"input": mels_in.transpose(0, 1).flatten(1)[None],
                               "stylized": styled.transpose(0, 1).flatten(1)[None],
                               "hint": hint_mel[None]}, output.with_suffix(".png"),
                              f"{Path(cfg.speech).name} in the scene of {Path(cfg.hint).name}", mel_cfg, count=1)
    ctx.log(f"wrote {output} ({wave.numel() / sr:.2f} s) and {picture}")
    return {"status": "completed", "output": str(output), "spectrogram": str(picture),
            "duration_s": wave.numel() / sr, "sample_rate": sr, "chunks": chunks, "steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale, "enhance": method, "vocoder": cfg.vocoder or "griffin-lim",
            "resampled_from": {k: v for k, v in (("speech", speech_rate), ("hint", hint_rate)) if v},
            "hint_image": "video frame" if image is not None and not cfg.hint_image else cfg.hint_image,
            "checkpoint": cfg.checkpoint, "seed": cfg.seed}
