"""Classification pieces every classifier and zero-shot recipe shares: top-k counts, summed eval metrics
(fractions), the labelled dataset of a classifier and CLIP class embeddings from prompts. Every classifier's
`model(x)` returns logits in train and eval mode."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from percli.core.data import finetune_transform, video_transform
from percli.core.data.transforms import ImagePreprocess, with_trained_preprocess
from percli.recipes.common import DataSection, make_dataset, normalisation


def topk_counts(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Summed top-k hits per k (`top{k}_correct`); top-5 is top-C when there are fewer classes."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # [B, k]
    hits = top == labels.unsqueeze(-1)
    return {f"top{k}_correct": float(hits[:, :k].any(-1).sum()) for k in ks}


def classification_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    return {"count": float(labels.numel()), "loss_sum": float(loss), **topk_counts(logits, labels)}


def classification_metrics(sums: dict[str, float]) -> dict[str, float]:
    n = max(sums.get("count", 0.0), 1.0)
    out = {"count": sums.get("count", 0.0), "loss": sums.get("loss_sum", 0.0) / n}
    out.update({k.replace("_correct", ""): v / n for k, v in sums.items() if k.endswith("_correct")})  # fractions
    return out


def classification_dataset(source: str, split: str, train: bool, data: DataSection, input_size: tuple[int, ...],
                           video: bool, *, rand_augment: str = "", reprob: float = 0.0,
                           crop_pct: float = 0.875, classes: list[str] | None = None,
                           preprocess: ImagePreprocess | None = None, views: tuple[int, int] = (1, 1)) -> Dataset:
    """Train (augmented) or eval dataset for a classifier: every sample labelled, with `classes` (the
    training set's or a checkpoint's) when given. Images are evaluated with `preprocess` (a model's own,
    see `eval_preprocess`), else resized to input_size / crop_pct and centre-cropped. Held-out video files
    can give several ``views`` (spatial, temporal) per clip: items then hold ``video`` [views, C, T, H, W]."""
    mean, std = normalisation(data, video)
    size = input_size[-1]
    multi_view = {"views_temporal": views[1]} if views[1] > 1 else {}
    if video:
        transform = video_transform(size, mean, std, train=train, spatial_views=views[0])
    elif preprocess is not None and not train:
        transform = preprocess.eval_transform()
    else:
        transform = finetune_transform(size, mean, std, train=train, rand_augment=rand_augment or None,
                                       re_prob=reprob, crop_pct=crop_pct)
    return make_dataset(data, source, split, train, transform, video, size, classes=classes, require_labels=True,
                        **multi_view)


def eval_preprocess(preprocess: Mapping[str, Any], data: DataSection,
                    meta: Mapping[str, Any] | None = None) -> ImagePreprocess:
    """A model's evaluation preprocessing (its `preprocess` description), with what its checkpoint's run
    trained with (`meta`: normalisation, crop) and the data section's normalisation when it sets one."""
    pre = ImagePreprocess.of(with_trained_preprocess(preprocess, meta or {}))
    if data.mean is not None:
        pre = dataclasses.replace(pre, mean=tuple(data.mean), std=tuple(data.std or pre.std))
    return pre


def class_embeddings(model: nn.Module, class_names: Sequence[str], templates: Sequence[str],
                     tokenize: Callable[[list[str]], torch.Tensor], device: torch.device) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings."""
    prompts = [t.format(name) for name in class_names for t in templates]
    features = model.encode_text(tokenize(prompts).to(device), normalize=True)  # [C * T, D]
    features = features.reshape(len(class_names), len(templates), -1).mean(dim=1)  # [C, D]
    return F.normalize(features, dim=-1)
