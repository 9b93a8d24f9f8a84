"""AV-SUPERB with a trainable upstream (the official `--upstream_trainable`): the upstream runs inside
the model and is finetuned with the featurizer and head, so nothing is cached.

Clips are decoded and preprocessed by the upstream's own `preprocess_audio/preprocess_video` in the
loader workers; batches keep the preprocessed inputs as lists (their lengths differ), and the
model calls the upstream on them. Unreadable clips are skipped and reported by the engine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset, default_collate

from percli.avsuperb.clips import ClipDataset
from percli.avsuperb.features import MODALITY_OF
from percli.avsuperb.probe import Probe, ProbeTask, format_target, num_outputs, unwrap
from percli.avsuperb.tasks import TaskSpec
from percli.core.data.images import BadSample


class ClipSet(Dataset):
    """A task split as upstream inputs: {"audio", "video" (preprocessed or None), "index", target fields}."""

    def __init__(self, clips: ClipDataset, upstream: nn.Module, feature_key: str, kind: str, num_classes: int,
                 vocab: list[str] | None):
        self.clips, self.upstream, self.kind, self.num_classes = clips, upstream, kind, num_classes
        self.modalities = MODALITY_OF[feature_key]
        self.index = {ch: i for i, ch in enumerate(vocab or [])}
        if kind == "asr":
            self.max_target = max([len(t) for t in clips.targets()] + [1])

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.clips[i]
        if sample is None or any(sample[m] is None for m in self.modalities):
            clip = self.clips.clips[i]
            raise BadSample(str(clip.audio_path or clip.video_path), f"clip {clip.id} is unreadable or lacks "
                                                                     f"{'/'.join(self.modalities)}")
        with torch.no_grad():
            audio = (self.upstream.preprocess_audio(sample["audio"], sample["sample_rate"])
                     if "audio" in self.modalities else None)
            video = self.upstream.preprocess_video(sample["video"], sample["fps"]) if "video" in self.modalities \
                else None
        target = sample["target"]
        if self.kind == "asr":
            target = [self.index[ch] for ch in target if ch in self.index]
        return {"audio": audio, "video": video, "index": i,
                **format_target(self.kind, target, self.num_classes, getattr(self, "max_target", 0))}


class EndToEnd(Probe):
    """Upstream + featurizer + head, trained together."""

    def __init__(self, upstream: nn.Module, feature_key: str, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.upstream, self.feature_key = upstream, feature_key


class TrainableTask(ProbeTask):
    """`ProbeTask` whose features come from the upstream inside the model."""

    def __init__(self, spec: TaskSpec, data: dict[str, Any], upstream: nn.Module, feature_key: str,
                 layer: int | None = None, normalize: bool = False, asr_hidden: int = 1024):
        outputs = num_outputs(spec, data)
        train = ClipSet(data["train"], upstream, feature_key, spec.kind, outputs, data["vocab"])
        test = ClipSet(data["test"], upstream, feature_key, spec.kind, outputs, data["vocab"])
        self.upstream, self.feature_key = upstream.requires_grad_(True), feature_key
        num_layers, dim = self._shape(train)
        super().__init__(spec, train, test, data, num_layers, dim, [c.id for c in data["test"].clips], layer,
                         normalize, asr_hidden)

    def _shape(self, train: ClipSet) -> tuple[int, int]:
        """(layers, width) of the upstream's features, from the first readable training clip."""
        for i in range(len(train)):
            try:
                item = train[i]
            except BadSample:
                continue
            with torch.no_grad():
                layers = self.upstream([(item["audio"], item["video"])])[self.feature_key]
            if not layers:
                raise ValueError(f"the upstream returned no {self.feature_key}; choose features it supports")
            return len(layers), layers[0].shape[-1]
        raise ValueError("no clip of the training split could be read")

    def build_model(self) -> nn.Module:
        return EndToEnd(self.upstream, self.feature_key, self.num_layers, self.dim, self.spec, self.num_outputs,
                        self.layer, self.normalize, self.asr_hidden)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        lists = {key: [item.pop(key) for item in items] for key in ("audio", "video")}
        batch = default_collate(items)
        batch.update({key: None if value[0] is None else value for key, value in lists.items()})
        return batch

    def features(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        net = unwrap(model)
        device = next(net.parameters()).device
        size = len(batch["index"])
        audio = [a.to(device) for a in batch["audio"]] if batch["audio"] is not None else [None] * size
        video = [v.to(device) for v in batch["video"]] if batch["video"] is not None else [None] * size
        out = net.upstream(list(zip(audio, video)))
        lengths = out.get("lengths") if self.feature_key != "video_feats" else None
        return net.featurizer(out[self.feature_key]), lengths
