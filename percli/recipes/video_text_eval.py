"""`percli eval retrieval` for the video-text models (``family=video-text``): checkpoints of `percli pretrain
videoclip`, `vlm`, `support-set` and `mmp` and of `percli finetune videoclip` / `vlm` (told apart by the ``task``
their metadata records), on per-second video features rather than raw media. A VLM pretraining checkpoint is
scored through VLM's retrieval model (``vlm_retrieval_how2``: every layer modality-isolated, its masked-token
head dropped).

Data: the embedded videos' held-out split (``data.source=embedded``: every caption with the features of its own
time span, one caption per clip, as the training runs' own evaluation; ``data.embedded_size`` must be the run's
to score the same clips), or an MSR-VTT (1k-A CSV or train/val JSON), YouCook2 (official JSON, or CSV / TSV /
JSONL with ``video_id, start, end, sentence``) or VATEX (JSON) manifest (``data.layout``, auto from the file)
with ``data.features``, a folder of ``<video_id>.npy`` / ``.safetensors`` per-second features. A segment (a
whole video, or a YouCook2 clip) keeps its first ``data.max_video_len`` seconds.

Every caption queries the segments (``t2v``) and every segment queries all captions (``v2t``: a hit when any of
its captions is found), `percli.core.retrieval_metrics.two_way_retrieval` on the models' own scores (raw dot
products: VideoCLIP's and VLM's are unnormalised, support-set's and MMP's unit vectors). ``data.languages`` scores
several languages in one run (VATEX en/zh, the embedded en/de), each prefixed ``<lang>_``. Segments whose
feature file is missing, truncated or otherwise unreadable are skipped with their captions and counted in
``summary.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.core.config import ConfigError
from percli.core.data.video_retrieval import (
    SegmentFeatures,
    VideoTextRetrievalSet,
    read_msrvtt,
    read_vatex,
    read_youcook2,
)
from percli.core.data.video_text import READ_REASONS
from percli.core.retrieval_metrics import two_way_retrieval

MMPT_TASKS = ("videoclip", "vlm")
"""Checkpoints of the fairseq MMPT models: BERT word pieces, video and text pooled by ``forward_video`` /
``forward_text``, (max_video_len, input_dim) in ``model.preprocess``."""
VIDEO_TEXT_TASKS = (*MMPT_TASKS, "support-set", "mmp")
"""The ``task`` metadata of the checkpoints this family ranks."""
RETRIEVAL_VIEW = {"vlm_how2": "vlm_retrieval_how2"}
"""Pretraining models scored through another registered model holding the same weights."""
LAYOUTS = ("msrvtt", "youcook2", "vatex")
EMBEDDED_MAX_VIDEO_LEN = 8
"""The video-text recipes' default ``data.max_video_len``: the held-out clips their own evaluation scored."""


class VideoTextSegments(Dataset):
    """Retrieval segments of one or more languages one after the other: ``{"video" [L, D], "video_mask" [L],
    "captions": [str, ...], "index": position within its language, "language": position in `languages`}``.

    Each part is a `SegmentFeatures` (a manifest; its captions grouped by segment) or a `CaptionedSegments`
    (the embedded held-out split; one caption per clip, already padded to `max_len`)."""

    def __init__(self, parts: list[Dataset], languages: list[str], max_len: int):
        self.parts, self.languages, self.max_len = parts, languages, max_len
        self.captions: list[list[list[str]] | None] = []
        for part in parts:
            retrieval = getattr(part, "retrieval", None)
            grouped = None
            if retrieval is not None:
                grouped = [[] for _ in retrieval.segments]
                for caption, item in zip(retrieval.captions, retrieval.caption_item):
                    grouped[item].append(caption)
            self.captions.append(grouped)
        self.offsets = [0]
        for part in parts:
            self.offsets.append(self.offsets[-1] + len(part))
        self.bad_records = getattr(parts[0], "bad_records", None)

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        lang = max(i for i, start in enumerate(self.offsets[:-1]) if start <= index)
        j = index - self.offsets[lang]
        item = self.parts[lang][j]  # an unreadable feature file raises BadSample: skipped and counted
        if "text" in item:  # CaptionedSegments
            return {"video": item["video"], "video_mask": item["video_mask"], "captions": [item["text"]],
                    "index": j, "language": lang}
        rows = item["features"][: self.max_len]  # [t, D] -> its first max_len seconds
        video = rows.new_zeros(self.max_len, rows.shape[1])
        mask = torch.zeros(self.max_len, dtype=torch.bool)
        video[: len(rows)], mask[: len(rows)] = rows, True
        return {"video": video, "video_mask": mask, "captions": self.captions[lang][j], "index": j, "language": lang}

    def skipped(self, bad_files: list[dict[str, str]]) -> dict[str, int]:
        """Segments left out, by reason: without a feature file when the set was built (per part), unreadable
        when read (from the engine's collected ``bad_files``: loader workers count their own)."""
        found: Counter[str] = Counter()
        for part in self.parts:
            found.update({k: v for k, v in getattr(part, "skipped", {}).items() if k not in READ_REASONS})
        found.update(str(f.get("reason", "")).split(":", 1)[0] for f in bad_files)
        return dict(found)


class VideoTextEvaluator:
    """A videoclip / vlm / support-set / mmp model: segments through the video tower, their captions through the text
    tower, two-way retrieval per language (see the module docstring)."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], languages: list[str], normalize: bool = False):
        self.task, self.languages, self.normalize = meta["task"], languages, normalize
        if self.task in MMPT_TASKS:
            from percli.recipes.video_text_common import BERT_TOKENIZER, MMPTCaptions

            self.captions = MMPTCaptions(meta.get("tokenizer", BERT_TOKENIZER), int(meta.get("max_text_tokens", 32)))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"video": torch.stack([it["video"] for it in items]),
                "video_mask": torch.stack([it["video_mask"] for it in items]),
                "captions": [it["captions"] for it in items],
                "index": torch.tensor([it["index"] for it in items]),
                "language": torch.tensor([it["language"] for it in items])}

    def _embed(self, model: nn.Module, video: torch.Tensor, mask: torch.Tensor, texts: list[str]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        device = video.device
        if self.task in MMPT_TASKS:
            caps, cmasks = (t.to(device) for t in self.captions(texts))
            c = self.captions
            # the video pass reads only [CLS] and the video's [SEP] of caps: [B, 2]
            video_caps = torch.tensor([[c.cls, c.sep]], device=device).expand(len(video), 2)
            return (model.forward_video(video, mask, video_caps, torch.ones_like(video_caps, dtype=torch.bool)),
                    model.forward_text(caps, cmasks))
        return model.encode_video(video, mask), model.encode_texts(texts, device)  # support-set, mmp

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inner = getattr(model, "module", model)
        texts = [c for caps in batch["captions"] for c in caps]
        owner = [i for i, caps in enumerate(batch["captions"]) for _ in caps]  # row of each caption's segment
        video, text = (e.float() for e in self._embed(inner, batch["video"], batch["video_mask"], texts))
        if self.normalize:
            video, text = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
        owner = torch.tensor(owner, device=video.device)
        return {"video_embeds": video, "text_embeds": text, "item": batch["index"], "language": batch["language"],
                "caption_item": batch["index"][owner], "caption_language": batch["language"][owner]}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        if "video_embeds" not in totals:
            return {}
        metrics: dict[str, float] = {}
        for position, lang in enumerate(self.languages):
            rows = totals["language"] == position
            if not bool(rows.any()):
                continue
            items, order = totals["item"][rows].sort()
            video = totals["video_embeds"][rows][order]  # [segments, E] by item
            columns = totals["caption_language"] == position
            text = totals["text_embeds"][columns]  # [captions, E]
            column_item = torch.searchsorted(items, totals["caption_item"][columns])  # caption -> its segment's row
            found = {**two_way_retrieval(video @ text.T, column_item, row_name="v", column_name="t"),
                     "segments": float(len(items)), "captions": float(len(text))}
            prefix = f"{lang}_" if len(self.languages) > 1 else ""
            metrics.update({f"{prefix}{k}": v for k, v in found.items()})
        return metrics


def manifest_layout(path: Path, layout: str) -> str:
    """``layout``, or the layout of the manifest at `path` by its name, then its JSON shape or CSV columns."""
    if layout != "auto":
        return layout
    name = path.name.lower()
    for key, found in (("youcook", "youcook2"), ("vatex", "vatex"), ("msrvtt", "msrvtt"), ("msr_vtt", "msrvtt")):
        if key in name:
            return found
    if name.endswith(".json"):
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
        if isinstance(data, dict) and "database" in data:
            return "youcook2"
        if isinstance(data, list) and data and isinstance(data[0], dict) and "videoID" in data[0]:
            return "vatex"
    elif name.endswith((".csv", ".tsv")):
        with open(path, encoding="utf-8-sig") as f:
            header = f.readline()
        if {"start", "end", "sentence"} <= set(header.strip().replace("\t", ",").split(",")):
            return "youcook2"
    return "msrvtt"


def retrieval_sets(data: Any, languages: list[str]) -> dict[str, VideoTextRetrievalSet]:
    """Per language, the retrieval set of ``data.source`` (``data.layout`` / ``data.subset``)."""
    path = Path(data.source).expanduser()
    layout = manifest_layout(path, data.layout)
    if layout == "vatex":
        return read_vatex(path, languages)
    if languages != ["en"]:
        raise ConfigError(f"data.languages={languages}: a {layout} manifest has English captions only; give [en]")
    return {"en": read_youcook2(path, data.subset) if layout == "youcook2" else read_msrvtt(path)}


def load_video_text(checkpoint: str, kwargs: dict[str, Any], data: Any, normalize: bool
                    ) -> tuple[nn.Module, VideoTextEvaluator, VideoTextSegments, dict[str, Any]]:
    """(model, evaluator, dataset, manifest counts) of a video-text checkpoint on `data` (RetrievalData)."""
    from percli.core.checkpoint import read_meta
    from percli.core.data.embedded_video_text import EmbeddedVideoText
    from percli.models import create_model_for, load_initial_weights
    from percli.recipes.video_text_common import CaptionedSegments

    meta = read_meta(checkpoint)
    name = RETRIEVAL_VIEW.get(meta["name"], meta["name"])
    model = create_model_for(name, {**meta.get("kwargs", {}), **kwargs}, checkpoint)
    load_initial_weights(model, checkpoint)
    model.eval()
    mmpt = meta["task"] in MMPT_TASKS
    limit = int(model.preprocess["max_video_len"] if mmpt else model.config["max_video_len"])
    languages = list(data.languages) or list(meta.get("languages") or [meta.get("language", "en")])
    if data.source == "embedded":
        max_len = min(data.max_video_len or EMBEDDED_MAX_VIDEO_LEN, limit)
        videos = EmbeddedVideoText(max(data.embedded_size // 4, 20), split="test")
        parts, counts = [CaptionedSegments(videos, lang, max_len) for lang in languages], {}
    else:
        if not data.features:
            raise ConfigError("data.features: not set; a video-text model reads per-second features: give the folder "
                              "of <video_id>.npy / .safetensors files of the manifest's videos")
        max_len = min(data.max_video_len or limit, limit)
        dim = meta.get("kwargs", {}).get("input_dim" if mmpt else "feature_dim")
        sets = retrieval_sets(data, languages)
        parts = [SegmentFeatures(sets[lang], Path(data.features).expanduser(), feature_dim=dim) for lang in languages]
        counts = {"manifest": {lang: s.counts for lang, s in sets.items()},
                  "manifest_bad_examples": [e for s in sets.values() for e in s.bad_examples][:10]}
    dataset = VideoTextSegments(parts, languages, max_len)
    return model, VideoTextEvaluator(model, meta, languages, normalize), dataset, counts
