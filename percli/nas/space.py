"""Discrete search spaces over percli's ViT (`DinoVisionTransformer`, built through the model registry).

A config is a dict {choice name: value}, one value per dimension; its key is the canonical JSON
(`encode`), used to recognise a config evaluated before. Candidates are real percli models:
``create_model("dinov2_vits14", img_size=8, in_chans=1, **config)`` with a linear classifier in
the model's own ``head`` slot, so the winner can be rebuilt from summary.json alone.

Spaces (every combination is valid: heads are powers of two no larger than the smallest width):

* ``vit-tiny``: embed_dim {16, 32, 64} x depth {1, 2, 3, 4} x num_heads {1, 2, 4} x mlp_ratio {1, 2, 4}
  x patch_size {2, 4}: 216 configs, 2k-200k parameters on 8x8 inputs.
* ``vit-micro``: embed_dim {8, 32} x depth {1, 2} x num_heads {1, 2} x mlp_ratio {1, 4} x patch_size
  {2, 4}: 32 configs, for quick checks and tests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn as nn

MODEL = "dinov2_vits14"  # the registered ViT factory; every searched dimension overrides one of its arguments


@dataclass(frozen=True)
class SearchSpace:
    """Named dimensions, each with its tuple of choices."""

    name: str
    choices: dict[str, tuple[Any, ...]]

    def __post_init__(self):
        if min(self.choices["embed_dim"]) % max(self.choices["num_heads"]):
            raise ValueError(f"space {self.name}: every num_heads choice must divide every embed_dim choice")

    @property
    def size(self) -> int:
        count = 1
        for values in self.choices.values():
            count *= len(values)
        return count

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """One config drawn uniformly (each dimension independently)."""
        return {dim: rng.choice(values) for dim, values in self.choices.items()}

    def mutate(self, config: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """A copy of `config` with exactly one dimension changed to another of its choices."""
        dim = rng.choice([d for d, values in self.choices.items() if len(values) > 1])
        child = dict(config)
        child[dim] = rng.choice([v for v in self.choices[dim] if v != config[dim]])
        return child

    def check(self, config: Any) -> str | None:
        """Why `config` is not a config of this space (None when it is)."""
        if not isinstance(config, dict) or set(config) != set(self.choices):
            return f"expected the keys {sorted(self.choices)}"
        bad = [dim for dim, values in self.choices.items() if config[dim] not in values]
        return f"{', '.join(bad)} outside the space's choices" if bad else None

    def build(self, config: dict[str, Any], in_chans: int, img_size: int, num_classes: int) -> nn.Module:
        """The candidate: a percli ViT over `img_size` images with a `num_classes`-way linear head."""
        from percli.models import create_model

        model = create_model(MODEL, img_size=img_size, in_chans=in_chans, **config)
        model.head = nn.Linear(config["embed_dim"], num_classes)  # forward() = head(normalised cls token)
        return model


def encode(config: dict[str, Any]) -> str:
    """The config's canonical JSON: equal configs give equal strings."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


SpaceName = Literal["vit-tiny", "vit-micro"]  # the keys of SPACES, for typed configs
SPACES = {
    "vit-tiny": SearchSpace("vit-tiny", {"embed_dim": (16, 32, 64), "depth": (1, 2, 3, 4), "num_heads": (1, 2, 4),
                                         "mlp_ratio": (1, 2, 4), "patch_size": (2, 4)}),
    "vit-micro": SearchSpace("vit-micro", {"embed_dim": (8, 32), "depth": (1, 2), "num_heads": (1, 2),
                                           "mlp_ratio": (1, 4), "patch_size": (2, 4)}),
}
