"""Fetch a model's release weights into the Hugging Face cache ahead of time, and print where they are.

NAME is a registered model (its first release in `percli.models.pretrained`), ``model.tag``
(``hiera_base_224.mae``), or an ``hf-hub:ORG/NAME`` spec (optionally ``/FILE`` and ``@REVISION``). The file lands in the
standard hub cache (``HF_HUB_CACHE`` / ``HF_HOME``), where ``model.checkpoint=hf-hub:...`` and
``create_model(name, pretrained=True)`` find it, also offline (``HF_HUB_OFFLINE=1``). A release that is
not on the hub, or not in a layout percli reads, exits 2 with its official download URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from percli.core.config import ConfigError
from percli.core.context import RunContext


@dataclass
class Config:
    name: str | None = None
    """A model name (`percli ls models`), model.tag, or an hf-hub: spec."""
    tag: str | None = None
    """Release tag (default: the model's first; see percli/models/pretrained.py)."""


def validate(cfg: Config) -> None:
    if not cfg.name:
        raise ConfigError("name: not set; give a model name, model.tag or hf-hub:ORG/NAME: percli download "
                          "hiera_base_224")


def spec_of(cfg: Config) -> tuple[str, str | None]:
    """The hf-hub: spec `cfg` names, and the model it is a release of (None for a bare spec)."""
    from percli.models import list_models, pretrained_spec
    from percli.models.hub import is_hub_spec
    from percli.models.pretrained import split_name

    if is_hub_spec(cfg.name):
        return str(cfg.name), None
    model, tag = split_name(str(cfg.name))
    if model not in list_models():
        raise ValueError(f"{cfg.name}: unknown model; run `percli ls models`, or give hf-hub:ORG/NAME")
    return pretrained_spec(model, cfg.tag or tag), model


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.models.hub import cache_dir, resolve_hub_spec

    spec, model = spec_of(cfg)
    path = resolve_hub_spec(spec)
    ctx.log(f"{spec} -> {path}")  # stderr; stdout keeps the summary (path included) for --json
    return {"status": "completed", "name": cfg.name, "model": model, "spec": spec, "path": str(path),
            "cache": str(cache_dir())}
