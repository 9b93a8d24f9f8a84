"""Self-supervised audio-visual soundscape stylization (Li et al., ECCV 2024): `percli pretrain soundscape`.

Two stages, as the paper's latent diffusion pipeline: (1) the mel VAE (`percli.models.soundscape.MelVAE`),
trained in ``<run>/vae`` unless ``vae`` names a trained one; (2) the latent diffusion model, trained on
self-supervised pairs (target clip, its enhanced speech, a hint clip of the same video with its picture) with the
VAE frozen inside it. Both stages run on the one engine, so each checkpoints and resumes; a resumed run skips a
finished VAE stage. The latents are scaled to unit variance (AudioLDM's scale factor), measured once on 256
training targets and stored in the checkpoint.

At the end, held-out cross-scene items are stylized (DDIM, classifier-free guidance) and scored (RT60 error of
input / stylized / hint-zeroed, mel distance, hint match; `percli.tts.stylize`); ``stylize.png`` shows the
spectrograms and ``samples/`` holds the first stylized WAVs.

Data: ``embedded`` (espeak-ng sentences from `percli.tts.corpus` recorded in generated scenes, `percli.tts.scenes`)
or a manifest of clean speech (``{"audio": path}`` lines) recorded in the same generated scenes.

Examples:
  percli pretrain soundscape                                  # tiny preset, embedded scenes, CPU
  percli pretrain soundscape vae=runs/pretrain-soundscape-X/vae train.max_steps=4000
  percli pretrain soundscape data.enhance=oracle               # dry speech as input (enhancement upper bound)
  percli pretrain soundscape hint.audio_tower=runs/pretrain-flap-X hint.image_tower=runs/pretrain-clip-Y  # frozen
  accelerate launch --multi_gpu --num_processes 8 -m percli.cli pretrain soundscape --preset base \\
      data.source=/data/speech/manifest.jsonl
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.mel import MelConfig
from percli.models import create_model, load_initial_weights
from percli.recipes.common import TrainedModelSection
from percli.recipes.common import validate as validate_model
from percli.tts import scenes

ENHANCE_HELP = "spectral, oracle (the dry speech), none, or external:<module>:<function>"


@dataclasses.dataclass
class SceneDataSection:
    source: str = "embedded"
    """`embedded` (espeak-ng sentences) or a manifest of clean speech recorded in the generated scenes."""
    embedded_size: int = 200
    """Sentences of the embedded corpus."""
    heldout_utterances: int = 40
    """The last N utterances are only used for evaluation."""
    train_scenes: int = 48
    heldout_scenes: int = 16
    train_items: int = 8192
    """Self-supervised pairs per epoch (each a seeded draw of scene and utterances)."""
    val_items: int = 64
    clip_s: float = 2.0
    videos: str | None = None
    """In-the-wild training videos (a folder, or a manifest of {"video": path} lines): pairs of two disjoint clips
    of one video (voice-activity detection picks the target's speech). Null: pairs from the generated scenes. The
    end-of-run scores always use the generated held-out scenes (their RT60 is known)."""
    heldout_videos: int = 1
    """With `videos`: the last N videos only give the held-out loss."""
    vad: str = "energy"
    """Voice-activity detection for `videos`: energy, or silero (pip install silero-vad)."""
    enhance: str = "spectral"
    """How the input speech is made from the target clip: """ + ENHANCE_HELP + "."
    seed: int = 0
    """Seed of the scenes and of the item draws."""
    cache_dir: str | None = None
    """Where the embedded corpus is built (default <run>/cache)."""


@dataclasses.dataclass
class StylizeSection:
    items: int = 64
    """Held-out cross-scene items stylized and scored at the end (0 = none)."""
    steps: int = 50
    """DDIM steps."""
    guidance_scale: float = 3.0
    """Classifier-free guidance on the hint (1 = the conditional model alone)."""
    seed: int = 0
    estimator_clips: int = 2000
    """Clips the RT60 estimator is trained on (training utterances, fresh random scenes)."""
    estimator_steps: int = 1500
    estimator: str | None = None
    """A saved rt60_estimator.safetensors to reuse instead of training one."""
    vocoder: str | None = None
    """A `percli pretrain vocoder` run; null = Griffin-Lim."""


@dataclasses.dataclass
class HintSection:
    audio_tower: str | None = None
    """A frozen audio encoder for the hint's sound, the paper's CLAP role: a percli FLAP / Audio-MAE run, or
    NAME@WEIGHTS. Null: a conv tower on the hint's log-mel, trained with the model."""
    image_tower: str | None = None
    """A frozen image encoder for the hint's picture, the paper's CLIP role: a percli CLIP / PE run, or
    NAME@WEIGHTS. Null: a conv tower trained with the model."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(
        default_factory=lambda: TrainedModelSection(name="soundscape_ldm"))
    vae: str | None = None
    """A trained VAE (a `<run>/vae` dir, checkpoint or .safetensors); null trains it first in <run>/vae."""
    data: SceneDataSection = dataclasses.field(default_factory=SceneDataSection)
    hint: HintSection = dataclasses.field(default_factory=HintSection)
    stylize: StylizeSection = dataclasses.field(default_factory=StylizeSection)
    vae_train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(max_steps=20000, batch_size=32))
    vae_optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=4.5e-6 * 32, ref_batch_size=32, weight_decay=0.0, betas=(0.5, 0.9), warmup_fraction=0.0))
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(max_steps=100000, batch_size=32))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=3e-5 * 32, ref_batch_size=32, weight_decay=0.01, warmup_fraction=0.01))


@dataclasses.dataclass
class SceneData:
    splits: dict[str, scenes.SceneSplit]
    mel: MelConfig
    videos: dict[str, list[dict[str, Any]]] | None = None
    """Indexed training / held-out videos (`percli.tts.video_pairs`) when data.videos is set."""
    skipped_videos: list[dict[str, str]] = dataclasses.field(default_factory=list)


def prepare_scenes(data: SceneDataSection, run_dir: Path, accelerator: Accelerator | None) -> SceneData:
    """Speech (the embedded corpus is built by the main process first; no accelerator: one process) split into
    train / held-out scenes."""
    from percli.tts.corpus import build_corpus

    mel = MelConfig()
    cache = Path(data.cache_dir).expanduser() if data.cache_dir else run_dir / "cache"
    manifest = cache / "embedded_corpus" / "manifest.jsonl" if data.source == "embedded" \
        else Path(data.source).expanduser()
    if data.source == "embedded" and (accelerator is None or accelerator.is_main_process):
        build_corpus(cache / "embedded_corpus", data.embedded_size)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    speech = scenes.load_speech(manifest, mel.sample_rate)
    try:
        splits = scenes.split_scenes(speech, data.train_scenes, data.heldout_scenes, data.heldout_utterances,
                                     data.seed)
    except ValueError as err:
        raise ConfigError(f"data.heldout_utterances={data.heldout_utterances}: {err}") from None
    if not data.videos:
        return SceneData(splits, mel)
    from percli.tts import video_pairs

    videos = video_pairs.list_videos(data.videos)
    if accelerator is None or accelerator.is_main_process:
        video_pairs.index_videos(videos, cache / "videos", data.clip_s, mel.sample_rate, data.vad)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    usable, skipped = video_pairs.index_videos(videos, cache / "videos", data.clip_s, mel.sample_rate, data.vad)
    if len(usable) <= data.heldout_videos:
        raise ConfigError(f"data.videos={data.videos}: {len(usable)} usable videos of {len(videos)} ({len(skipped)} "
                          f"skipped: {skipped[:3]}); need more than data.heldout_videos={data.heldout_videos}")
    cut = len(usable) - data.heldout_videos
    return SceneData(splits, mel, {"train": usable[:cut], "val": usable[cut:]}, skipped)


def pairs(data: SceneDataSection, scene_data: SceneData, split: str, size: int, cross: bool = False,
          waves: bool = False) -> Dataset:
    seed = data.seed + (1 if split == "val" else 0)
    if scene_data.videos and not cross:
        from percli.tts.video_pairs import VideoPairs

        return VideoPairs(scene_data.videos[split], size, clip_s=data.clip_s, mel=scene_data.mel,
                          enhance=data.enhance, seed=seed, waves=waves)
    cls = scenes.CrossScenePairs if cross else scenes.StylizationPairs
    return cls(scene_data.splits[split], size, clip_s=data.clip_s, mel=scene_data.mel, enhance=data.enhance,
               seed=seed, waves=waves)


class VAETask:
    """Stage 1: the mel VAE on target, input and hint log-mels."""

    def __init__(self, cfg: Config, scene_data: SceneData):
        self.cfg, self.scene_data = cfg, scene_data
        self._eval_batches = 0
        with torch.device("meta"):  # the VAE the diffusion model's variant and kwargs will hold, fully spelled out
            self.vae_kwargs = dict(create_model(cfg.model.name, **cfg.model.kwargs).vae.config)

    def build_model(self) -> nn.Module:
        return create_model("soundscape_vae", **self.vae_kwargs)

    def model_meta(self) -> dict[str, Any]:
        return {"name": "soundscape_vae", "kwargs": self.vae_kwargs, "task": "soundscape-vae"}

    def train_dataset(self) -> Dataset:
        return pairs(self.cfg.data, self.scene_data, "train", self.cfg.data.train_items)

    def eval_dataset(self) -> Dataset:
        return pairs(self.cfg.data, self.scene_data, "val", self.cfg.data.val_items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss, parts = model(torch.cat([batch["target"], batch["speech"], batch["hint"]]))
        return {"loss": loss, **parts}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self._eval_batches)
        self._eval_batches += 1
        loss, parts = model(batch["target"], generator=generator)
        n = float(len(batch["target"]))
        return {"loss_sum": float(loss) * n, "l1_sum": float(parts["l1"]) * n, "count": n}

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        self._eval_batches = 0
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums.get("loss_sum", 0.0) / n, "l1": sums.get("l1_sum", 0.0) / n}


class LDMTask:
    """Stage 2: latent diffusion with the VAE frozen inside the model."""

    def __init__(self, cfg: Config, scene_data: SceneData, vae_weights: Path | str):
        self.cfg, self.scene_data, self.vae_weights = cfg, scene_data, vae_weights
        self._eval_batches = 0
        self.towers, self.kwargs = make_towers(cfg.hint, dict(cfg.model.kwargs))

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.model.name, **self.kwargs)
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        else:
            load_initial_weights(model, self.vae_weights)
            targets = torch.stack([self.train_dataset()[i]["target"] for i in range(256)])
            model.latent_scale.fill_(1.0 / float(model.latent(targets).std()))  # latent() scales by 1 until now
        return model

    def model_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "soundscape",
                "mel": dataclasses.asdict(self.scene_data.mel), "clip_s": self.cfg.data.clip_s,
                "enhance": self.cfg.data.enhance, "hint_towers": dataclasses.asdict(self.cfg.hint)}

    def train_dataset(self) -> Dataset:
        return pairs(self.cfg.data, self.scene_data, "train", self.cfg.data.train_items,
                     waves=self.cfg.hint.audio_tower is not None)

    def eval_dataset(self) -> Dataset:
        return pairs(self.cfg.data, self.scene_data, "val", self.cfg.data.val_items,
                     waves=self.cfg.hint.audio_tower is not None)

    def _hint(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from percli.tts.stylize import hint_inputs

        device = batch["hint"].device
        if self.towers is not None:
            self.towers.to(device)  # frozen, outside the engine's model: follows the batches (once)
        return hint_inputs(batch, device, self.towers)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss, _ = model(batch["target"], batch["speech"], self._hint(batch))
        return {"loss": loss}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        generator = torch.Generator().manual_seed(1000 + self._eval_batches)
        self._eval_batches += 1
        loss, _ = model(batch["target"], batch["speech"], self._hint(batch), generator=generator)
        return {"loss_sum": float(loss) * len(batch["target"]), "count": float(len(batch["target"]))}

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        self._eval_batches = 0
        return {"loss": sums.get("loss_sum", 0.0) / max(sums.get("count", 0.0), 1.0)}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        s = self.cfg.stylize
        if s.items <= 0:
            return {}
        from percli.tts.stylize import load_vocoder, score_and_save

        estimator = estimator_for(s, self.scene_data, run_dir)
        dataset = pairs(self.cfg.data, self.scene_data, "val", s.items, cross=True)
        return {"stylize": score_and_save(model, dataset, estimator, run_dir, steps=s.steps,
                                          guidance_scale=s.guidance_scale, seed=s.seed, device=accelerator.device,
                                          vocoder=load_vocoder(s.vocoder), towers=self.towers)}


def make_towers(hint: HintSection, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The frozen hint towers (None when neither is set) and the model kwargs that read their embeddings."""
    if not hint.audio_tower and not hint.image_tower:
        return None, kwargs
    from percli.tts.hint_towers import HintTowers

    towers = HintTowers(hint.audio_tower, hint.image_tower)
    if hint.audio_tower:
        kwargs.update(audio_hint="embedding", audio_embed_dim=towers.audio_dim)
    if hint.image_tower:
        kwargs.update(image_hint="embedding", image_embed_dim=towers.image_dim)
    return towers, kwargs


def estimator_for(s: StylizeSection, scene_data: SceneData, run_dir: Path) -> nn.Module:
    """The RT60 estimator: ``s.estimator`` if given, else trained on the training utterances and saved."""
    from percli.tts import rt60_estimator

    if s.estimator:
        return rt60_estimator.load(Path(s.estimator).expanduser())
    model = rt60_estimator.train_estimator(scene_data.splits["train"].utterances, clips=s.estimator_clips,
                                           steps=s.estimator_steps, mel=scene_data.mel, seed=s.seed)
    rt60_estimator.save(model, run_dir / "rt60_estimator.safetensors")
    return model


def _vae_done(vae_dir: Path) -> bool:
    import json

    summary = vae_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def check_stylize(s: StylizeSection) -> None:
    if s.estimator and not Path(s.estimator).expanduser().is_file():
        raise ConfigError(f"stylize.estimator={s.estimator}: no such file (an rt60_estimator.safetensors written by "
                          "an earlier run)")
    if s.vocoder and not Path(s.vocoder).expanduser().exists():
        raise ConfigError(f"stylize.vocoder={s.vocoder}: no such run (a `percli pretrain vocoder` run dir)")
    if s.steps < 1:
        raise ConfigError(f"stylize.steps={s.steps}: give at least 1 DDIM step")


def validate(cfg: Config) -> None:
    validate_model(cfg)
    if cfg.data.source != "embedded" and not Path(cfg.data.source).expanduser().is_file():
        raise ConfigError(f"data.source={cfg.data.source}: no such manifest; give 'embedded' or a .jsonl of "
                          '{"audio": path} lines of clean speech')
    base = cfg.data.enhance.split(":")[0]
    if cfg.data.enhance not in ("spectral", "oracle", "none") and base != "external":
        raise ConfigError(f"data.enhance={cfg.data.enhance!r}: choose {ENHANCE_HELP}")
    for key in ("audio_tower", "image_tower"):
        spec = getattr(cfg.hint, key)
        path = spec.split("@", 1)[1] if spec and "@" in spec else spec
        if path and not Path(path).expanduser().exists():
            raise ConfigError(f"hint.{key}={spec}: {path} does not exist; give a percli run or NAME@WEIGHTS")
    if cfg.data.videos and not Path(cfg.data.videos).expanduser().exists():
        raise ConfigError(f"data.videos={cfg.data.videos}: no such folder or manifest")
    if cfg.data.vad not in ("energy", "silero"):
        raise ConfigError(f"data.vad={cfg.data.vad!r}: choose energy or silero")
    if cfg.vae and not Path(cfg.vae).expanduser().exists():
        raise ConfigError(f"vae={cfg.vae}: no such run, checkpoint or file; give a trained soundscape VAE or "
                          "leave it unset to train one first")
    check_stylize(cfg.stylize)
    if cfg.data.clip_s * MelConfig().sample_rate / MelConfig().hop_length < 8:
        raise ConfigError(f"data.clip_s={cfg.data.clip_s}: too short for the VAE; give at least 0.1 s")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    scene_data = prepare_scenes(cfg.data, ctx.run_dir, ctx.accelerator)
    vae_summary = None
    vae_weights: Path | str | None = cfg.vae
    if not vae_weights:
        vae_dir = ctx.run_dir / "vae"
        vae_dir.mkdir(exist_ok=True)
        if not _vae_done(vae_dir):
            resume = ctx.resume and (vae_dir / "checkpoints").is_dir()
            vae_summary = engine.train(VAETask(cfg, scene_data), cfg.vae_train, cfg.vae_optim, vae_dir,
                                       ctx.accelerator, resume=resume)
        vae_weights = vae_dir
    resume = ctx.resume and (ctx.run_dir / "checkpoints").is_dir()
    summary = engine.train(LDMTask(cfg, scene_data, vae_weights), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator,
                           resume=resume)
    if scene_data.videos is not None:
        summary["videos"] = {"train": len(scene_data.videos["train"]), "heldout": len(scene_data.videos["val"]),
                             "skipped": scene_data.skipped_videos}
    if vae_summary is not None:
        summary["vae"] = {k: vae_summary[k] for k in ("status", "step", "metrics", "run_dir")}
    return summary
