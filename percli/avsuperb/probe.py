"""AV-SUPERB downstream training on cached upstream features, as an engine task.

The upstream is frozen, so its features are computed once per split (`percli.avsuperb.features`)
and the featurizer + head train on them through the shared engine (`percli.core.engine.train`):
accumulation, clipping, checkpoints, `--resume` and multi-process all come from there.

Utterance-level tasks (classification, multi-label, speaker) train on per-layer features
mean-pooled over time. This is exact, not an approximation: the featurizer (a weighted sum of
layers), the heads' projection (linear) and their mean pooling are all linear, so pooling first
gives the same head input as pooling last (the official benchmark caches pooled features for the
same reason). `--normalize` (a per-frame layer norm) is not linear, so it is not offered for
pooled tasks. ASR trains on frame-level features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.avsuperb.featurizer import Featurizer
from percli.avsuperb.heads import CTCHead, SpeakerHead, UtteranceHead
from percli.avsuperb.tasks import TaskSpec
from percli.core import metrics


class FeatureSet(Dataset):
    """Cached features of one split: pooled [N, L, D], or frames [N, L, Tmax, D] with lengths."""

    def __init__(self, cache: dict[str, Any], kind: str, num_classes: int):
        self.feats, self.lengths = cache["feats"], cache.get("lengths")
        self.targets, self.kind, self.num_classes = cache["targets"], kind, num_classes
        if kind == "asr":
            self.max_target = max([len(t) for t in self.targets] + [1])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"feats": self.feats[index].float(), "index": index}
        if self.kind == "asr":
            item["length"] = int(self.lengths[index])
        item.update(format_target(self.kind, self.targets[index], self.num_classes,
                                  getattr(self, "max_target", 0)))
        return item


def format_target(kind: str, target: Any, num_classes: int, max_target: int) -> dict[str, Any]:
    """The batch fields of one target: multi-hot, padded character ids + length, or a class index."""
    if kind == "multilabel":
        hot = torch.zeros(num_classes)
        hot[list(target)] = 1.0
        return {"target": hot}
    if kind == "asr":
        padded = torch.full((max_target,), -1, dtype=torch.long)
        padded[:len(target)] = torch.tensor(target, dtype=torch.long)
        return {"target": padded, "target_length": len(target)}
    return {"target": int(target)}


class Probe(nn.Module):
    """Featurizer + task head over cached features."""

    def __init__(self, num_layers: int, dim: int, spec: TaskSpec, num_outputs: int, layer: int | None,
                 normalize: bool, asr_hidden: int = 1024):
        super().__init__()
        self.featurizer = Featurizer(num_layers, layer=layer, normalize=normalize)
        if spec.kind == "asr":
            self.head = CTCHead(dim, num_outputs, hidden=asr_hidden)
        elif spec.kind == "speaker":
            self.head = SpeakerHead(dim, num_outputs)
        else:
            self.head = UtteranceHead(dim, num_outputs, multilabel=spec.kind == "multilabel")

    def mixed(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, L, D] pooled -> [B, 1, D]; [B, L, T, D] frames -> [B, T, D]."""
        if feats.dim() == 3:
            feats = feats.unsqueeze(2)
        return self.featurizer(list(feats.unbind(1)))


class ProbeTask:
    """The engine task (see `percli.core.engine.Task`) for one AV-SUPERB task and feature type.

    Trains on cached features (`from_caches`); `percli.avsuperb.trainable` subclasses it to run the
    upstream inside the model instead.
    """

    def __init__(self, spec: TaskSpec, train_set: Dataset, test_set: Dataset, info: dict[str, Any],
                 num_layers: int, dim: int, test_ids: list[str], layer: int | None = None, normalize: bool = False,
                 asr_hidden: int = 1024):
        self.spec, self.info, self.layer, self.normalize = spec, info, layer, normalize
        self.asr_hidden = asr_hidden
        self.train_set, self.test_set, self.test_ids = train_set, test_set, test_ids
        self.num_layers, self.dim = num_layers, dim
        self.num_outputs = num_outputs(spec, info)

    @classmethod
    def from_caches(cls, spec: TaskSpec, train: dict[str, Any], test: dict[str, Any], info: dict[str, Any],
                    layer: int | None = None, normalize: bool = False, asr_hidden: int = 1024) -> ProbeTask:
        outputs = num_outputs(spec, info)
        feats = train["feats"]
        return cls(spec, FeatureSet(train, spec.kind, outputs), FeatureSet(test, spec.kind, outputs), info,
                   feats.shape[1], feats.shape[-1], test["ids"], layer, normalize, asr_hidden)

    def build_model(self) -> nn.Module:
        return Probe(self.num_layers, self.dim, self.spec, self.num_outputs, self.layer, self.normalize,
                     self.asr_hidden)

    def model_meta(self) -> dict[str, Any]:
        return {"task": self.spec.name, "kind": self.spec.kind}

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset:
        return self.test_set

    def features(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's input (B, T, D) and valid lengths (None: all frames)."""
        return unwrap(model).mixed(batch["feats"]), batch.get("length")

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        probe = unwrap(model)
        x, lengths = self.features(model, batch)
        if self.spec.kind == "asr":
            log_probs, out_lengths = probe.head(x, lengths)
            return {"loss": probe.head.loss(log_probs, out_lengths, _target_lists(batch))}
        out = probe.head(x, lengths)
        return {"loss": probe.head.loss(out, batch["target"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float | torch.Tensor]:
        probe = unwrap(model)
        x, lengths = self.features(model, batch)
        kind = self.spec.kind
        if kind == "asr":
            log_probs, out_lengths = probe.head(x, lengths)
            vocab = self.info["vocab"]
            hyps = ["".join(vocab[i] for i in seq) for seq in CTCHead.decode(log_probs, out_lengths)]
            refs = ["".join(vocab[i] for i in seq) for seq in _target_lists(batch)]
            return {"char_edits": sum(metrics.edit_distance(h, r) for h, r in zip(hyps, refs)),
                    "chars": sum(len(r) for r in refs),
                    "word_edits": sum(metrics.edit_distance(h.split(), r.split()) for h, r in zip(hyps, refs)),
                    "words": sum(len(r.split()) for r in refs)}
        if kind == "speaker":
            return {"embedding": probe.head.embed(x, lengths), "index": batch["index"].float()}
        logits = probe.head(x, lengths)
        if kind == "multilabel":
            return {"scores": torch.sigmoid(logits), "targets": batch["target"]}
        return {"correct": float((logits.argmax(-1) == batch["target"]).sum()), "count": float(len(logits))}

    def eval_reduce(self, totals: dict[str, float | torch.Tensor]) -> dict[str, float]:
        kind = self.spec.kind
        if kind == "asr":
            return {"cer": totals["char_edits"] / max(totals["chars"], 1.0),
                    "wer": totals["word_edits"] / max(totals["words"], 1.0)}
        if kind == "speaker":
            return {"eer": self._eer(totals["embedding"], totals["index"])}
        if kind == "multilabel":
            return {"map": float(torch.nanmean(metrics.average_precision(totals["scores"], totals["targets"])))}
        return {"accuracy": totals["correct"] / max(totals["count"], 1.0)}

    def _eer(self, embeddings: torch.Tensor, index: torch.Tensor) -> float:
        """EER over the trial list: the score of a pair is the dot product of its unit embeddings."""
        row = {int(i): n for n, i in enumerate(index.long().tolist())}
        position = {clip_id: row[i] for i, clip_id in enumerate(self.test_ids) if i in row}
        pairs = [(position[a], position[b], same) for a, b, same in self.info["trials"]
                 if a in position and b in position]
        if not pairs:
            raise ValueError("no speaker trial has both of its clips among the readable test clips")
        first = torch.tensor([p[0] for p in pairs])
        second = torch.tensor([p[1] for p in pairs])
        scores = (embeddings[first] * embeddings[second]).sum(-1)
        labels = torch.tensor([float(p[2]) for p in pairs])
        return float(metrics.equal_error_rate(scores, labels))

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        return {"layer_weights": unwrap(model).featurizer.layer_weights()}


def num_outputs(spec: TaskSpec, info: dict[str, Any]) -> int:
    """Classes, speakers or characters the head predicts."""
    return len(info["vocab"]) if spec.kind == "asr" else len(info["classes"])


def unwrap(model: nn.Module) -> Probe:
    return model.module if hasattr(model, "module") else model


def _target_lists(batch: dict[str, Any]) -> list[list[int]]:
    return [t[:n].tolist() for t, n in zip(batch["target"], batch["target_length"].tolist())]
