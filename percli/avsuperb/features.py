"""Frozen-upstream features of one AV-SUPERB split, computed once and cached as safetensors.

A cache file holds `feats` ([N, L, D] mean-pooled per layer, or [N, L, Tmax, D] frames with
`lengths` [N] for ASR) and, in its metadata, the clip ids, targets, the number of unreadable clips
and a fingerprint of everything the features depend on (upstream spec, model and checkpoint
files, task, split, feature type, dataset manifests). A cache whose fingerprint differs is
recomputed; the file is written under a temp name and renamed.

With several processes each rank extracts every world-th clip and the parts are gathered, so all
ranks hold the same tensors; rank 0 writes the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset

MODALITY_OF = {"audio_feats": ("audio",), "video_feats": ("video",), "fusion_feats": ("audio", "video")}


def fingerprint(parts: dict[str, Any]) -> str:
    """A short hash of `parts`; files among its values (str paths that exist) count by size and mtime."""
    def describe(value: Any) -> Any:
        if isinstance(value, str) and value and Path(value).exists():
            path = Path(value)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            return [value] + [(str(f), f.stat().st_size, int(f.stat().st_mtime)) for f in files[:200]]
        if isinstance(value, dict):
            return {k: describe(v) for k, v in sorted(value.items())}
        if isinstance(value, (list, tuple)):
            return [describe(v) for v in value]
        return value

    blob = json.dumps(describe(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_cached(path: Path, key: str) -> dict[str, Any] | None:
    """The cache at `path` when its fingerprint is `key`, else None."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("fingerprint") != key:
            return None
        out: dict[str, Any] = {name: f.get_tensor(name) for name in f.keys()}
    out.update(json.loads(meta["info"]))
    return out


def save_cached(path: Path, key: str, cache: dict[str, Any]) -> None:
    tensors = {name: cache[name].contiguous() for name in ("feats", "lengths") if cache.get(name) is not None}
    info = {k: v for k, v in cache.items() if k not in tensors}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"fingerprint": key, "info": json.dumps(info)})
    os.replace(tmp, path)


def _pool(layers: list[torch.Tensor], lengths: torch.Tensor | None) -> torch.Tensor:
    """[B, L, D]: each layer's mean over the valid frames."""
    stacked = torch.stack(layers, dim=1).float()  # [B, L, T, D]
    if lengths is None:
        return stacked.mean(dim=2)
    steps = torch.arange(stacked.shape[2]).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
    mask = steps[:, None, :, None].to(stacked.dtype)
    return (stacked * mask).sum(2) / mask.sum(2).clamp_min(1.0)


def extract(upstream: torch.nn.Module, dataset: Dataset, feature_key: str, pooled: bool, *, batch_size: int = 8,
            num_workers: int = 2, rank: int = 0, world: int = 1,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the frozen upstream over `dataset` (clips as `ClipDataset` yields them); returns the cache dict.

    Unreadable clips (None samples) are counted in `bad` and left out; so are clips that lack the
    modality the features need.
    """
    modalities = MODALITY_OF[feature_key]
    indices = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=lambda items: items)
    rows: list[tuple[int, torch.Tensor, int, Any, str]] = []  # (index, feats, length, target, id)
    bad, seen = 0, 0
    position = iter(indices)
    with torch.no_grad():
        for items in loader:
            batch_index = [next(position) for _ in items]
            seen += len(items)
            good = [(i, s) for i, s in zip(batch_index, items)
                    if s is not None and all(s[m] is not None for m in modalities)]
            bad += len(items) - len(good)
            if good:
                pairs = [(upstream.preprocess_audio(s["audio"], s["sample_rate"]) if "audio" in modalities else None,
                          upstream.preprocess_video(s["video"], s["fps"]) if "video" in modalities else None)
                         for _, s in good]
                out = upstream(pairs)
                layers = out[feature_key]
                if not layers:
                    raise ValueError(f"the upstream returned no {feature_key}; choose features it supports")
                lengths = out.get("lengths") if feature_key != "video_feats" else None
                steps = layers[0].shape[1]
                lengths = lengths.cpu().clamp(1, steps) if lengths is not None else torch.full((len(good),), steps)
                feats = _pool([x.cpu() for x in layers], lengths) if pooled else torch.stack(
                    [x.cpu().float() for x in layers], dim=1)  # [B, L, T, D]
                for row, (i, s) in enumerate(good):
                    n = int(lengths[row])
                    rows.append((i, feats[row] if pooled else feats[row, :, :n], n, s["target"], s["id"]))
            if progress is not None:
                progress(seen, len(indices))
    if world > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([(rows, bad)])
        rows = [r for part, _ in gathered for r in part]
        bad = sum(b for _, b in gathered)
    rows.sort(key=lambda r: r[0])
    if not rows:
        raise ValueError("no clip of this split could be read")
    if pooled:
        feats = torch.stack([r[1] for r in rows])
        lengths = None
    else:
        longest = max(r[2] for r in rows)
        feats = torch.zeros(len(rows), rows[0][1].shape[0], longest, rows[0][1].shape[-1])
        for n, r in enumerate(rows):
            feats[n, :, :r[2]] = r[1]
        lengths = torch.tensor([r[2] for r in rows])
    return {"feats": feats, "lengths": lengths, "targets": [r[3] for r in rows], "ids": [r[4] for r in rows],
            "bad": bad}
