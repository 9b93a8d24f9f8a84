"""AV-SUPERB featurizer: a learned softmax-weighted sum of an upstream's layers (or one chosen layer).

After the official ``interfaces.py`` ``Featurizer``: weights start at zero (a plain average),
``normalize`` layer-norms each layer (no affine) before the sum, and ``layer`` picks one layer
instead (Python indexing, so -1 is the last; as the official code, a chosen layer is not normalised).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Featurizer(nn.Module):
    """Mix a list of per-layer features [(B, T, D)] * num_layers into one (B, T, D)."""

    def __init__(self, num_layers: int, layer: int | None = None, normalize: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError("the upstream returned no layers for the selected features")
        if layer is not None and not -num_layers <= layer < num_layers:
            raise ValueError(f"layer {layer} is out of range for an upstream with {num_layers} layers")
        self.num_layers, self.layer, self.normalize = num_layers, layer, normalize
        self.weights = nn.Parameter(torch.zeros(num_layers)) if layer is None else None

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        if len(layers) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} layers, got {len(layers)}")
        if self.layer is not None:
            return layers[self.layer]
        stacked = torch.stack(layers)  # [L, B, T, D]
        if self.normalize:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        weights = F.softmax(self.weights, dim=0)
        return torch.einsum("l,lbtd->btd", weights.to(stacked.dtype), stacked)

    def layer_weights(self) -> list[float]:
        """The mixing weights (softmax), or one-hot on the chosen layer."""
        if self.weights is None:
            onehot = [0.0] * self.num_layers
            onehot[self.layer] = 1.0
            return onehot
        return F.softmax(self.weights.detach().float(), dim=0).tolist()
