"""DINO projection head (Caron et al., 2021; DINOv2, Oquab et al., 2023), official-compatible.

Parameter names follow facebookresearch/dinov2@b8931f7 (``dinov2/layers/dino_head.py``) so that the
``dino_head``/``ibot_head`` entries of official training checkpoints load as they are:
``mlp.{0,2,4}.{weight,bias}`` (Linear-GELU-Linear-GELU-Linear for three layers, a single
``mlp.weight`` for one) and the weight-normalised prototype layer ``last_layer.weight_g`` [K, 1] /
``last_layer.weight_v`` [K, bottleneck].
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g * v / ||v||`` (row norms), named like ``torch``'s old
    ``weight_norm`` (``weight_g``, ``weight_v``) rather than the newer parametrization API, whose
    ``parametrizations.weight.original{0,1}`` names would not match the official checkpoints."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        # Registered g first, as torch's weight_norm does. The official head fills g with 1 after
        # wrapping: every prototype has unit norm at init.
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        weight_v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(weight_v, a=math.sqrt(5))  # nn.Linear's default init, as official
        self.weight_v = nn.Parameter(weight_v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


def build_mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool, bias: bool) -> nn.Module:
    """The head's MLP: ``nlayers`` Linear layers with (BatchNorm and) GELU between them."""
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes (logits over ``out_dim``).

    Defaults are the official ones (3 layers, hidden 2048, bottleneck 256; the ViT-L/g configs use
    bottleneck 384 and 131,072 prototypes).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = build_mlp(max(nlayers, 1), in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> [..., out_dim] prototype logits."""
        x = self.mlp(x)
        # fp16 cannot represent 1e-12; the official head switches eps the same way.
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
