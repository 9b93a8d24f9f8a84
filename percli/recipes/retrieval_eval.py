"""Cross-modal retrieval: text <-> audio, text <-> video, text <-> audio+video, audio <-> video.

Models (``family``, read from the checkpoint when ``auto``): PE-AV (every direction), a CLIP / PE image-text
model on video (each frame embedded, the clip the mean of its frames; text <-> video), MAViL (its last audio
and video blocks' mean tokens, as AV-SUPERB's expert, or a `pretrain mavil` run's trained projections; audio <->
video), FLAP (text <-> audio; a Hugging Face text tower is rebuilt from the folder its checkpoint records, which must
still hold config.json and the tokenizer files: `model.kwargs.text_cfg.hf_folder=PATH` when the folder moved),
video-text (`pretrain videoclip` / `vlm` / `support-set` / `mmp` and `finetune videoclip` / `vlm` runs on
per-second video features, text <-> video; data and options in `percli.recipes.video_text_eval`).

Every caption is a query against the clips (``t2a``, ``t2v``, ``t2av``) and every clip a query against all
captions (``a2t``, ``v2t``, ``av2t``: a hit when any caption of the clip is retrieved); audio and video
query each other (``a2v``, ``v2a``). Reported: R@1/5/10, median and mean rank, mAP@10 (fractions) per
direction, as the official evaluation ranks them (dot products of the heads' embeddings, each caption its
own query; ``similarity=cosine`` to L2-normalise first). Which directions exist depends on the modalities of
the data: an audio-only manifest (AudioCaps, Clotho) gives text <-> audio.

Data: the embedded clips' held-out split (default), percli's ``captions.jsonl``, or an AudioCaps / Clotho /
VALOR / MSR-VTT-style CSV, TSV, JSON or JSONL caption manifest (several captions per item; see
`percli.core.data.caption_manifest`). Unreadable clips (no audio track, silent or 1-sample audio, a corrupt
video) and empty captions are skipped and counted in ``summary.json``.

Examples:
  percli eval retrieval model.checkpoint=runs/pretrain-pe-av-.../checkpoints/step_0000600
  percli eval retrieval model.checkpoint=runs/pretrain-clip-.../checkpoints/step_0000500   # CLIP on video frames
  percli eval retrieval model.checkpoint=/models/pe-av-large data.source=/data/audiocaps/test.csv \\
      data.media_root=/data/audiocaps/audio data.modalities=[audio]
  percli eval retrieval model.checkpoint=runs/pretrain-videoclip-.../checkpoints/step_0000600 \\
      data.embedded_size=200                                 # the run's own held-out clips, re-scored
  percli eval retrieval model.checkpoint=runs/pretrain-support-set-.../checkpoints/step_0000600 \\
      data.source=/data/msrvtt/MSRVTT_JSFUSION_test.csv data.features=/data/msrvtt/s3d   # MSR-VTT 1k-A
  percli eval retrieval model.checkpoint=runs/pretrain-mmp-.../checkpoints/step_0000600 \\
      data.source=/data/vatex/vatex_val.json data.features=/data/vatex/s3d data.languages=[en,zh]
  percli eval retrieval model.checkpoint=runs/pretrain-mha-vse-X data.source=/data/multi30k data.split=test \
      data.features=/data/multi30k/bottom_up                # MHA-VSE: image <-> text per language, and STS
  accelerate launch --num_processes 4 -m percli.cli eval retrieval model.checkpoint=/models/pe-av-large \\
      data.source=/data/valor/test.jsonl
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.utils import gather_object

from percli.core.checkpoint import read_meta, run_weights
from percli.core.config import ConfigError, TrainConfig
from percli.core.context import RunContext
from percli.core.data.av_clips import MANIFEST_NAME, READ_REASONS, AVClipDataset, skipped_by_reason
from percli.core.data.caption_manifest import read_caption_manifest
from percli.core.data.transforms import ImagePreprocess
from percli.core.engine import BadInputLog, evaluate
from percli.core.rundir import write_json_atomic
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model
from percli.recipes.pe_av import AVDataSection, RetrievalEvaluator, _Indexed, av_dataset, collate, retrieval_report
from percli.recipes.video_text_eval import VIDEO_TEXT_TASKS, load_video_text

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


@dataclasses.dataclass
class RetrievalData(AVDataSection):
    media_root: str | None = None
    """Folder the manifest's relative media paths are joined onto (default: the manifest's folder)."""
    modalities: list[str] = dataclasses.field(default_factory=list)
    """audio and/or video; empty: audio+video for video files, audio for audio files."""
    features: str | None = None
    """video-text: folder of per-second features, <video_id>.npy or .safetensors, of the manifest's videos."""
    layout: Literal["auto", "msrvtt", "youcook2", "vatex"] = "auto"
    """video-text: the manifest's layout; auto: from its name, JSON shape or CSV columns."""
    subset: str | None = None
    """video-text: YouCook2's official JSON: keep one subset (validation); null: every annotation."""
    languages: list[str] = dataclasses.field(default_factory=list)
    """video-text: caption languages, each scored on its own (prefix <lang>_ when several); empty: the language the
    checkpoint trained on (VATEX: en, zh; embedded: en, de)."""
    split: str = "test"
    """mha-vse: the Multi30K split scored (<split>.<lang> captions); embedded: the run's own scenes."""
    max_video_len: int | None = None
    """video-text: seconds of features per segment (a longer one keeps its first); null: 8 (the recipes' default
    held-out clips) for embedded, the model's limit for a manifest."""


@dataclasses.dataclass
class Config:
    family: Literal["auto", "pe-av", "clip", "mavil", "flap", "video-text", "mha-vse"] = "auto"
    """pe-av (audio, video, audio+video, text), clip (a CLIP / PE image-text model: video = its frames' mean
    embedding, text <-> video only), mavil (audio <-> video only), flap (text <-> audio), video-text (videoclip,
    support-set, mmp on per-second features, text <-> video), mha-vse (image <-> text per language on a
    Multi30K folder, and STS); auto: from the checkpoint."""
    model: PEAVModelSection = dataclasses.field(default_factory=PEAVModelSection)
    data: RetrievalData = dataclasses.field(default_factory=lambda: RetrievalData(embedded_size=400))
    similarity: Literal["dot", "cosine"] = "dot"
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=16, num_workers=1))


class ClipFramesEvaluator:
    """A CLIP / PE image-text model on video: each frame embedded, the clip the mean of its frames
    (L2-normalised); captions by the text tower. Text <-> video only."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]):
        from percli.models.clip_tokenizer import CLIPTokenizer

        self.transform = ImagePreprocess.of(meta).eval_transform()
        self.tokenizer = CLIPTokenizer(context_length=model.context_length)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        clip = getattr(model, "module", model)
        frames = batch["frames"]  # uint8 [B, N, 3, H, W]
        b, n = frames.shape[:2]
        images = self.transform(frames.flatten(0, 1))
        per_frame = F.normalize(clip.encode_image(images).float(), dim=-1).view(b, n, -1)
        valid = batch["video_mask"][..., None].float()
        video = F.normalize((per_frame * valid).sum(1) / valid.sum(1).clamp_min(1), dim=-1)
        captions = [c for caps in batch["captions"] for c in caps]
        owner = [int(i) for i, caps in zip(batch["index"], batch["captions"]) for _ in caps]
        text = F.normalize(clip.encode_text(self.tokenizer(captions).to(frames.device)).float(), dim=-1)
        return {"visual_embeds": video, "visual_text_embeds": text, "item": batch["index"],
                "caption_item": torch.tensor(owner, device=frames.device)}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return retrieval_report(totals)


class MAViLEvaluator:
    """MAViL: the last audio and video blocks' mean patch tokens (AV-SUPERB's expert features), audio <-> video;
    a `percli pretrain mavil` checkpoint ranks with its trained projections (``audio_proj`` / ``video_proj``)."""

    def __init__(self, model: nn.Module):
        from percli.avsuperb.av_upstreams import MAVIL_FPS, MAViLUpstream

        self.upstream, self.fps = MAViLUpstream(model), MAVIL_FPS

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        up = self.upstream
        audio = [up.preprocess_audio(w[0, : int(m.sum())].cpu(), 16000)
                 for w, m in zip(batch["waveform"], batch["audio_mask"])]
        video = [up.preprocess_video(f[: int(m.sum())].permute(0, 2, 3, 1).cpu(), self.fps)
                 for f, m in zip(batch["frames"], batch["video_mask"])]
        device = batch["index"].device
        if hasattr(model, "audio_proj"):  # a `pretrain mavil` model: its trained contrastive projections
            on = model.cls_token.device
            ea, ev = model.project(*model.towers(torch.stack(audio)[:, None].to(on), torch.stack(video).to(on)))
        else:
            feats = up(list(zip(audio, video)))
            ea, ev = feats["audio_feats"][-1][:, 0], feats["video_feats"][-1][:, 0]
        return {"audio_embeds": ea.float().to(device), "visual_embeds": ev.float().to(device), "item": batch["index"],
                "caption_item": torch.zeros(0, dtype=torch.long, device=device)}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return retrieval_report(totals)


class FlapEvaluator:
    """FLAP (`percli pretrain flap`): each clip's whole fbank and every caption, cosine, text <-> audio. Captions go
    through the text tower's own tokenizer (CLIP BPE, or the Hugging Face folder's, with its attention mask)."""

    def __init__(self, model: nn.Module, meta: dict[str, Any]):
        self.meta, self.tokenizer = meta, model.make_tokenizer()

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from percli.core.data.audio import kaldi_fbank, normalize_fbank

        flap, m = getattr(model, "module", model), self.meta
        fbank = torch.stack([normalize_fbank(kaldi_fbank(w[0, : int(n.sum())].cpu(), m["sample_rate"],
                                                         m["num_mel_bins"], m["target_length"]), m["mean"], m["std"])
                             for w, n in zip(batch["waveform"], batch["audio_mask"])])[:, None]
        device = batch["index"].device
        captions = [c for caps in batch["captions"] for c in caps]
        owner = [int(i) for i, caps in zip(batch["index"], batch["captions"]) for _ in caps]
        tokens = {k: v.to(device) for k, v in self.tokenizer(captions).items()}
        return {"audio_embeds": flap.encode_audio(fbank.to(device), normalize=True).float(),
                "audio_text_embeds": flap.encode_text(tokens["text"], tokens.get("text_mask"), normalize=True).float(),
                "item": batch["index"], "caption_item": torch.tensor(owner, device=device)}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return retrieval_report(totals)


def family_of(cfg: Config) -> str:
    """The model family of the checkpoint: `family`, else a release folder's (PE-AV) or the percli metadata's."""
    if cfg.family != "auto":
        return cfg.family
    path = Path(cfg.model.checkpoint).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return "pe-av"
    meta = read_meta(run_weights(path)) if path.is_dir() or path.suffix == ".safetensors" else {}
    if meta.get("task") in VIDEO_TEXT_TASKS:
        return "video-text"
    if meta.get("task") == "mha-vse":
        return "mha-vse"
    name = str(meta.get("name", ""))
    if name.startswith("mavil"):
        return "mavil"
    if name.startswith("flap"):
        return "flap"
    if name.startswith(("clip_", "pe_core", "pe_lang")):
        return "clip"
    if name.startswith("pe_a"):
        return "pe-av"
    raise ValueError(f"model.checkpoint={cfg.model.checkpoint}: cannot tell its model family (metadata name "
                     f"{name!r}); set family=pe-av|clip|mavil|flap|video-text")


def _load(cfg: Config, family: str) -> tuple[nn.Module, Any, int, int, tuple[str, ...]]:
    """(model, evaluator, audio rate, frame size, modalities to decode) of the family."""
    if family == "pe-av":
        model, tokenizer, meta = load_pe_model(cfg.model, "PEAudioVisual")
        normalize = cfg.similarity == "cosine"
        return (model, RetrievalEvaluator(tokenizer, meta["image_size"], normalize=normalize),
                meta["sampling_rate"], meta["image_size"], ("audio", "video"))
    if family == "clip":
        from percli.recipes.common import ModelSection
        from percli.recipes.zero_shot import load_clip

        model, meta = load_clip(ModelSection(name=None, checkpoint=cfg.model.checkpoint))
        return model.eval(), ClipFramesEvaluator(model, meta), 16000, ImagePreprocess.of(meta).size[0], ("video",)
    from percli.models import create_model_for, load_initial_weights

    if family == "flap":
        meta = read_meta(cfg.model.checkpoint)
        kwargs = _flap_kwargs(meta.get("kwargs", {}), cfg.model.kwargs)
        folder = kwargs.get("text_cfg", {}).get("hf_folder")
        if folder:  # the checkpoint holds the tower's weights; config.json and the tokenizer come from the folder
            from percli.models.flap import HF_FOLDER_KEY
            from percli.models.hf_text import check_hf_folder

            check_hf_folder(folder, HF_FOLDER_KEY, "the checkpoint's text tower was built from that Hugging Face "
                            f"folder; give where its config.json and tokenizer files are now with {HF_FOLDER_KEY}=PATH")
        model = create_model_for(meta["name"], kwargs, cfg.model.checkpoint)
        load_initial_weights(model, cfg.model.checkpoint)
        return model.eval(), FlapEvaluator(model, {**model.preprocess, **meta}), int(meta["sample_rate"]), 64, \
            ("audio",)
    meta = read_meta(cfg.model.checkpoint) if Path(cfg.model.checkpoint).suffix in ("", ".safetensors") else {}
    name = meta.get("name") or "mavil_vit_base_patch16"
    model = create_model_for(name, {**meta.get("kwargs", {}), **cfg.model.kwargs}, cfg.model.checkpoint)
    load_initial_weights(model, cfg.model.checkpoint)
    return model.eval(), MAViLEvaluator(model), 16000, model.preprocess["video"]["size"], ("audio", "video")


def _flap_kwargs(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's FLAP kwargs under `model.kwargs`; a tower's section (``text_cfg.hf_folder=...``) updates the
    saved one key by key instead of replacing it."""
    out = {**saved, **given}
    for section in ("audio_cfg", "text_cfg"):
        if isinstance(saved.get(section), dict) and isinstance(given.get(section), dict):
            out[section] = {**saved[section], **given[section]}
    return out


class _Task:
    def __init__(self, evaluator: RetrievalEvaluator):
        self.evaluator = evaluator

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        own = getattr(self.evaluator, "collate", None)  # the video-text evaluator batches features, not media
        return own(items) if own else collate(items)

    def eval_step(self, model, batch):
        return self.evaluator.eval_step(model, batch)

    def eval_reduce(self, totals):
        return self.evaluator.eval_reduce(totals)


def manifest_dataset(data: RetrievalData, rate: int, image_size: int) -> tuple[Any, dict[str, Any]]:
    """The clips of a caption manifest (any layout), decoded at the model's rates, and the manifest's counts."""
    path = Path(data.source).expanduser()
    if path.is_dir() or path.name == MANIFEST_NAME:
        dataset = AVClipDataset(path, sample_rate=rate, num_frames=data.num_frames, frame_size=image_size,
                                modalities=tuple(data.modalities or ("audio", "video")))
        return _Indexed(dataset), {}
    manifest = read_caption_manifest(path, media_root=data.media_root)
    video = Path(manifest.items[0]).suffix.lower() in VIDEO_SUFFIXES
    modalities = tuple(data.modalities or (("audio", "video") if video else ("audio",)))
    grouped: list[list[str]] = [[] for _ in manifest.items]
    for caption, item in zip(manifest.captions, manifest.caption_item):
        grouped[item].append(caption)
    key = "video" if video else "audio"
    records = [{"id": str(i), key: media, "captions": captions}
               for i, (media, captions) in enumerate(zip(manifest.items, grouped))]
    dataset = AVClipDataset(records, sample_rate=rate, num_frames=data.num_frames, frame_size=image_size,
                            modalities=modalities)
    return _Indexed(dataset), {"manifest": manifest.counts, "manifest_bad_examples": manifest.bad_examples}


def skipped(dataset: Any, bad_files: list[dict[str, str]]) -> dict[str, int]:
    """Clips and captions left out, by reason: dropped when the manifest was read, skipped when decoded."""
    found = Counter(getattr(dataset, "skipped", {}))
    for reason in READ_REASONS:  # decoding happens in loader workers: count what the engine collected
        found.pop(reason, None)
    return dict(found + skipped_by_reason(bad_files))


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    accelerator = ctx.accelerator
    family = family_of(cfg)
    counts: dict[str, Any] = {}
    if family == "mha-vse":
        from percli.recipes.mha_vse import load_grounding

        model, evaluator, dataset = load_grounding(cfg.model.checkpoint, cfg.model.kwargs, cfg.data.source,
                                                   cfg.data.features, cfg.data.split, list(cfg.data.languages))
    elif family == "video-text":
        model, evaluator, dataset, counts = load_video_text(cfg.model.checkpoint, cfg.model.kwargs, cfg.data,
                                                            normalize=cfg.similarity == "cosine")
    else:
        model, evaluator, rate, size, modalities = _load(cfg, family)
        data = dataclasses.replace(cfg.data, modalities=cfg.data.modalities or list(modalities))
        if cfg.data.source == "embedded":
            dataset, counts = av_dataset(data, "embedded", "test", rate, size), {}
        else:
            dataset, counts = manifest_dataset(data, rate, size)
    model = accelerator.prepare(model)
    bad = BadInputLog()
    task = _Task(evaluator)
    metrics = evaluate(task, model, dataset, accelerator, cfg.train, bad)
    if accelerator.num_processes > 1:
        merged = BadInputLog()
        for files in gather_object([bad.files]):
            merged.add(files)
        bad = merged
    inner = getattr(dataset, "dataset", dataset)
    clips = getattr(inner, "bad_records", None)
    left_out = inner.skipped(bad.files) if family == "video-text" else skipped(inner, bad.files)
    if family == "mha-vse":
        sts = evaluator.sts(accelerator.device)
        counts = {**counts, **({"sts": sts} if sts else {})}
    summary = {"status": "completed", "checkpoint": cfg.model.checkpoint, "family": family, "data": cfg.data.source,
               "similarity": cfg.similarity, "metrics": metrics, "run_dir": str(ctx.run_dir),
               "bad_inputs": {"count": len(bad.files), "files": bad.files},
               "bad_records": {"count": clips.count, "examples": clips.examples} if clips else {"count": 0},
               "skipped": left_out, **counts,
               "world_size": accelerator.num_processes}
    if accelerator.is_main_process:
        write_json_atomic(ctx.run_dir / "summary.json", summary)
    return summary


def validate(cfg: Config) -> None:
    if not cfg.model.checkpoint:
        raise ConfigError("model.checkpoint: not set; give a PE-AV release folder (config.json + model.safetensors "
                          "+ tokenizer.json), or a percli checkpoint of PE-AV, CLIP / PE, MAViL, FLAP, videoclip, "
                          "support-set, mmp or mha-vse")
    cfg.model.check()
    if cfg.data.source != "embedded" and not Path(cfg.data.source).expanduser().exists():
        raise ConfigError(f"data.source: {cfg.data.source} does not exist")
    unknown = set(cfg.data.modalities) - {"audio", "video"}
    if unknown:
        raise ConfigError(f"data.modalities: {sorted(unknown)}; use audio and/or video")
    if cfg.data.features and not Path(cfg.data.features).expanduser().is_dir():
        raise ConfigError(f"data.features: {cfg.data.features} is not a folder; give the folder of <video_id>.npy "
                          "/ .safetensors feature files")
    if cfg.data.max_video_len is not None and cfg.data.max_video_len < 1:
        raise ConfigError(f"data.max_video_len={cfg.data.max_video_len}: give at least 1 second (or null)")
