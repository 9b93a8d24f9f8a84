"""Soundscape stylization at inference: sampling, vocoding, scoring and pictures (shared by `percli tts stylize`,
`percli eval stylize` and the end of `percli pretrain soundscape`).

Scores on held-out cross-scene items (`percli.tts.scenes.CrossScenePairs`), each against the hint scene:
* RT60 error: |estimated RT60 - the hint scene's true RT60| for the input speech, the stylized speech and the
  same model with the hint zeroed (its null hint, the unconditional branch of classifier-free guidance), each
  measured by the trained estimator (`percli.tts.rt60_estimator`) on the waveform the user gets (vocoded, then
  its log-mel again) and, for the generated clips, on the generated log-mel directly; ``hint_gain_s`` is the
  per-item paired difference (hint zeroed - stylized): its mean, standard error and the share of items it helped;
* mel distance: mean |log-mel difference| to the target recording (the input utterance in the hint scene);
* hint match: the paper checks that outputs match their hints; percli scores it as retrieval: each output's
  nearest hint (cosine of the RT60 estimator's pooled features, an acoustic embedding) among the items' hints
  is one recorded in its own scene (R@1; chance is about 1 / the number of held-out scenes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from percli.core import chart
from percli.core.mel import MelConfig, griffin_lim, log_mel


def vocode(mels: torch.Tensor, vocoder: nn.Module | None, mel_cfg: MelConfig, seed: int = 0) -> torch.Tensor:
    """Waveforms [B, samples] of log-mels [B, M, T]: the trained vocoder, or Griffin-Lim when None."""
    if vocoder is None:
        return griffin_lim(mels.float().cpu(), mel_cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return vocoder(mels.to(next(vocoder.parameters()).device)).float().cpu()


def load_vocoder(path: str | None) -> nn.Module | None:
    """A `percli pretrain vocoder` run's generator (eval mode), or None (Griffin-Lim)."""
    from percli.models import load_run_model

    return load_run_model(path, "vocoder", "percli pretrain vocoder")[0] if path else None


def hint_inputs(batch: Mapping[str, Any], device: torch.device, towers: nn.Module | None = None
                ) -> dict[str, torch.Tensor]:
    """The model's hint: the hint's log-mel and picture, plus the frozen towers' embeddings when it has towers."""
    out = {"mel": batch["hint"].to(device), "image": batch["image"].to(device)}
    if towers is not None:
        wave = batch.get("hint_wave")
        out.update({k: v.to(device) for k, v in towers.embed(wave, batch["image"]).items()})
    return out


def hint_match(estimator: nn.Module, outputs: torch.Tensor, hints: torch.Tensor, scenes: torch.Tensor) -> float:
    """Share of outputs whose nearest hint (acoustic embedding cosine) was recorded in the output's scene."""
    with torch.no_grad():
        embed = lambda m: torch.nn.functional.normalize(estimator.features(m), dim=1)  # noqa: E731
        sim = embed(outputs) @ embed(hints).T  # [N, N]
    return float((scenes[sim.argmax(dim=1)] == scenes).float().mean())


@torch.no_grad()
def evaluate(model: nn.Module, dataset: torch.utils.data.Dataset, estimator: nn.Module, *, steps: int = 50,
             guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 16, vocoder: nn.Module | None = None,
             device: torch.device | str = "cpu", towers: nn.Module | None = None) -> dict[str, Any]:
    """Figures of ``model`` on every item of ``dataset`` (see the module doc) and the first clips for pictures."""
    from torch.utils.data import DataLoader

    from percli.tts.rt60_estimator import estimate

    mel_cfg = dataset.mel
    model.eval()
    estimator = estimator.to("cpu").eval()
    keys = ("speech", "target", "hint", "styled", "zeroed")
    mels: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    wave_mels: dict[str, list[torch.Tensor]] = {k: [] for k in ("styled", "zeroed")}
    rt60, scenes, waves = [], [], []
    generator = torch.Generator().manual_seed(seed)
    was, dataset.waves = dataset.waves, towers is not None and towers.audio is not None
    batches = list(DataLoader(dataset, batch_size=batch_size))
    dataset.waves = was
    for batch in batches:
        speech = batch["speech"].to(device)
        styled = model.stylize(speech, hint_inputs(batch, torch.device(device), towers), steps=steps,
                               guidance_scale=guidance_scale, generator=generator).float().cpu()
        zeroed = model.stylize(speech, None, steps=steps, generator=generator).float().cpu()
        frames = styled.shape[-1]
        for key, value in (("speech", batch["speech"]), ("target", batch["target"]), ("hint", batch["hint"]),
                           ("styled", styled), ("zeroed", zeroed)):
            mels[key].append(value[..., :frames].float())
        for key, value in (("styled", styled), ("zeroed", zeroed)):
            audio = vocode(value, vocoder, mel_cfg, seed)
            wave_mels[key].append(log_mel(audio, mel_cfg)[..., :frames])
            if key == "styled":
                waves.append(audio)
        rt60.append(batch["rt60"].float())
        scenes.append(batch["scene"])
    cat = {k: torch.cat(v) for k, v in mels.items()}
    cat_wave = {k: torch.cat(v) for k, v in wave_mels.items()}
    true = torch.cat(rt60)
    scene_ids = torch.cat(scenes)

    def errors(m: torch.Tensor) -> torch.Tensor:
        return (estimate(estimator, m) - true).abs()

    def error(m: torch.Tensor) -> float:
        return float(errors(m).mean())

    gain = errors(cat_wave["zeroed"]) - errors(cat_wave["styled"])  # per item: what the hint took off the error
    result = {
        "items": len(true),
        "rt60_error": {"input": error(cat["speech"]), "stylized": error(cat_wave["styled"]),
                       "hint_zeroed": error(cat_wave["zeroed"]), "target": error(cat["target"]),
                       "stylized_mel": error(cat["styled"]), "hint_zeroed_mel": error(cat["zeroed"])},
        "hint_gain_s": {"mean": float(gain.mean()), "stderr": float(gain.std() / max(len(gain), 1) ** 0.5),
                        "items_better": float((gain > 0).float().mean())},
        "mel_distance": {name: float((cat[key] - cat["target"]).abs().mean())
                         for name, key in (("input", "speech"), ("stylized", "styled"), ("hint_zeroed", "zeroed"))},
        "hint_match_r1": {name: hint_match(estimator, cat[key], cat["hint"], scene_ids)
                          for name, key in (("stylized", "styled"), ("hint_zeroed", "zeroed"), ("input", "speech"),
                                            ("target", "target"))},
        "hint_match_chance": float((scene_ids[:, None] == scene_ids[None]).float().mean()),
        "steps": steps, "guidance_scale": guidance_scale,
        "vocoder": "griffin-lim" if vocoder is None else "trained",
    }
    return {"metrics": result, "mels": cat, "waves": torch.cat(waves)}


def spectrogram_png(rows: Mapping[str, torch.Tensor], path: Path, title: str, mel_cfg: MelConfig,
                    count: int = 4) -> Path:
    """Rows of log-mels ([N, M, T] each) as one picture: clips left to right."""
    grid = [(label, mels[:count].transpose(1, 2).cpu().numpy()) for label, mels in rows.items()]
    return chart.save_png(chart.spectrogram_grid(grid, title, mel_cfg.hop_length / mel_cfg.sample_rate,
                                                 "log mel magnitude"), path)


def score_and_save(model: nn.Module, dataset: torch.utils.data.Dataset, estimator: nn.Module, out_dir: Path, *,
                   steps: int, guidance_scale: float, seed: int, vocoder: nn.Module | None = None,
                   device: torch.device | str = "cpu", wavs: int = 4, towers: nn.Module | None = None
                   ) -> dict[str, Any]:
    """`evaluate`, then ``stylize.png`` (input / stylized / hint-zeroed / target / hint spectrograms) and the first
    ``wavs`` stylized clips as ``samples/stylized_<i>.wav`` in ``out_dir``; returns the figures."""

    result = evaluate(model, dataset, estimator, steps=steps, guidance_scale=guidance_scale, seed=seed,
                      vocoder=vocoder, device=device, towers=towers)
    mels, mel_cfg = result["mels"], dataset.mel
    picture = spectrogram_png({"input": mels["speech"], "stylized": mels["styled"], "hint zeroed": mels["zeroed"],
                               "target": mels["target"], "hint": mels["hint"]}, Path(out_dir) / "stylize.png",
                              f"Soundscape stylization ({steps} DDIM steps, guidance {guidance_scale:g})", mel_cfg)
    samples = Path(out_dir) / "samples"
    for i, wave in enumerate(result["waves"][:wavs]):
        write_examples(dataset, i, wave, samples)
    return {**result["metrics"], "picture": str(picture), "samples": str(samples) if wavs else None}


def write_examples(dataset: torch.utils.data.Dataset, index: int, stylized: torch.Tensor, folder: Path) -> None:
    """Item ``index``'s stylized clip, its input speech, its target and its hint as a video (the scene picture
    with the hint audio), so `percli tts stylize` can be tried on them."""
    from percli.core.data.av_events import write_av_mp4
    from percli.tts.inference import write_audio_atomic

    sr = dataset.mel.sample_rate
    was, dataset.waves = dataset.waves, True
    item = dataset[index]
    dataset.waves = was
    for name, wave in (("stylized", stylized), ("input", item["speech_wave"]), ("target", item["target_wave"])):
        write_audio_atomic(folder / f"{name}_{index}.wav", wave.clamp(-1, 1).numpy(), sr)
    picture = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [3, S, S] -> [S, S, 3]
    hint = folder / f"hint_{index}.mp4"
    tmp = hint.with_name(f".{hint.stem}.tmp.mp4")
    write_av_mp4(tmp, np.repeat(picture[None], 8, axis=0), 4, item["hint_wave"].clamp(-1, 1).numpy(), sr)
    tmp.replace(hint)
