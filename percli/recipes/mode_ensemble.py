"""MoDE ensembling for `percli eval zero-shot ensemble=[...]` (Ma et al., CVPR 2024; research notes §4).

Each data expert (one CLIP checkpoint per coarse cluster, in cluster order) scores the images against
its own class embeddings; the ensemble logits are sum_k weight_k * logits_k, the weights coming from
`percli curate mode --classes` (ensemble_weights.json) or computed here from its mode_centers.safetensors
for the eval's class names and templates. As MoDE's post_report_ensemble, each expert's raw logits are
weighted (no per-expert softmax); they are cosine similarities, like the single-model eval (a constant
scale such as open_clip's 100 changes neither the ranks nor the weighting). The report has each
expert's top-1/top-5, the weighted ensemble, the uniform average and the best expert.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from percli.curation.mode import ModeClusters, ensemble_weights, mode_class_embeddings
from percli.curation.text_encoder import load_text_encoder
from percli.recipes.classification import class_embeddings, topk_counts


def combine_logits(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[K experts, B, C] logits and [K] weights -> [B, C] = sum_k weights[k] * logits[k]."""
    return torch.einsum("k,kbc->bc", weights.to(logits), logits)


def read_weights(path: str | Path, experts: int) -> list[float]:
    """`expert_weights` of an ensemble_weights.json written by `percli curate mode --classes`."""
    path = Path(path)
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))["expert_weights"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"ensemble_weights={path} cannot be read ({e}); pass the ensemble_weights.json written by "
                         "`percli curate mode --classes`") from None
    if len(weights) != experts:
        raise ValueError(f"ensemble_weights={path} has {len(weights)} expert weights for {experts} ensemble "
                         "checkpoints; give one checkpoint per coarse cluster, in cluster order")
    return [float(w) for w in weights]


def weights_from_centers(path: str | Path, class_names: Sequence[str], templates: Sequence[str],
                         experts: int) -> list[float]:
    """MoDE's weights for these class names from a mode_centers.safetensors, with the text encoder it records."""
    clusters = ModeClusters.load(path)
    if clusters.coarse != experts:
        raise ValueError(f"ensemble_centers={path} has {clusters.coarse} coarse clusters for {experts} ensemble "
                         "checkpoints; give one checkpoint per coarse cluster, in cluster order")
    if not clusters.encoder:
        raise ValueError(f"ensemble_centers={path} records no text encoder; pass ensemble_weights= (from "
                         "`percli curate mode --classes`) instead")
    encoder = load_text_encoder(clusters.encoder)
    embeddings = mode_class_embeddings(encoder, list(class_names), list(templates), 256)
    return ensemble_weights(embeddings, clusters)["weights"]


class Experts(nn.Module):
    """The data experts as one module, so the engine (and DDP) handle them together."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.experts = nn.ModuleList(models)


class EnsembleTask:
    """Engine eval task: top-1/5 of each expert, of the weighted ensemble and of the uniform average."""

    def __init__(self, tokenizers: Sequence[Callable[[list[str]], torch.Tensor]], class_names: Sequence[str],
                 templates: Sequence[str], weights: Sequence[float]):
        self.tokenizers, self.class_names, self.templates = list(tokenizers), list(class_names), list(templates)
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self._classes: list[torch.Tensor] | None = None

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        experts = getattr(model, "module", model).experts  # under DDP
        if self._classes is None:
            self._classes = [class_embeddings(clip, self.class_names, self.templates, tokenize, batch["image"].device)
                             for clip, tokenize in zip(experts, self.tokenizers)]
        logits = torch.stack([clip.encode_image(batch["image"], normalize=True) @ classes.T
                              for clip, classes in zip(experts, self._classes)]).float()  # [K, B, C]
        labels, out = batch["label"], {}
        uniform = torch.full_like(self.weights, 1.0 / len(self.weights))
        scored = [*((f"expert{k}", logits[k]) for k in range(len(logits))),
                  ("ensemble", combine_logits(logits, self.weights)), ("uniform", combine_logits(logits, uniform))]
        for name, scores in scored:
            for key, value in topk_counts(scores, labels).items():
                out[f"{name}_{key}"] = value
        out["count"] = float(labels.numel())
        return out

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        count = totals.get("count")
        if not count:
            return {}
        metrics = {name.removesuffix("_correct"): hits / count for name, hits in totals.items()
                   if name.endswith("_correct")}
        experts = [metrics[f"expert{k}_top1"] for k in range(len(self.weights))]
        best = max(range(len(experts)), key=experts.__getitem__)
        metrics.update(zero_shot_top1=metrics["ensemble_top1"], zero_shot_top5=metrics["ensemble_top5"],
                       best_expert=float(best), best_expert_top1=experts[best], chance_top1=1.0 / len(self.class_names))
        metrics.update({f"weight_expert{k}": float(w) for k, w in enumerate(self.weights)})
        return metrics


def ensemble_task(weights_file: str | None, centers_file: str | None,
                  tokenizers: Sequence[Callable[[list[str]], torch.Tensor]], class_names: Sequence[str],
                  templates: Sequence[str]) -> EnsembleTask:
    """The task with its weights read from `weights_file` or computed from `centers_file` for these classes."""
    if bool(weights_file) == bool(centers_file):
        raise ValueError("an ensemble needs exactly one of ensemble_weights=PATH (ensemble_weights.json from "
                         "`percli curate mode --classes`) or ensemble_centers=PATH (its mode_centers.safetensors)")
    weights = (read_weights(weights_file, len(tokenizers)) if weights_file
               else weights_from_centers(centers_file, class_names, templates, len(tokenizers)))
    return EnsembleTask(tokenizers, class_names, templates, weights)
