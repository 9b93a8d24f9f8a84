"""One command for every family: the family's checkpoint loader does the work, so every key and shape is checked.

To percli: the family's own `load_official_state` reads the official file (open_clip / MetaCLIP `.pt`,
PE, DINOv2, Hiera, Audio-MAE `.pth`, VoiceCraft `.pth`, audiocraft `.th`, or safetensors;
`weights_only` loading) into the named model, which checks every key and shape, and the weights are
written to --output as a percli safetensors file whose metadata names the model and its arguments, so
`model.checkpoint=FILE` and the eval commands rebuild it. Back to official (--to official): the percli
file is loaded into its model (checked the same way) and its state dict, which already carries the
official parameter names, is written as `.pt`/`.pth` (a plain dict of tensors, readable with
`torch.load(weights_only=True)`) or as plain `.safetensors`. An existing --output is replaced only with
--overwrite. The run dir keeps the record: config.yaml, env.json and summary.json (tensors, values,
keys dropped or left at init).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from percli.core.config import ConfigError
from percli.core.context import RunContext


@dataclass
class Config:
    source: str | None = None
    """The checkpoint to convert: an official file, or a percli weight file / checkpoint dir."""
    output: str | None = None
    """Where to write: .safetensors (to percli); .pt/.pth or .safetensors (to official)."""
    model: str | None = None
    """Registered model name (`percli ls models`); read from a percli file's metadata if omitted."""
    kwargs: dict[str, Any] | None = None
    """Constructor arguments of the model (JSON or YAML mapping), if not the registered defaults (or, for a
    percli file, the ones in its metadata)."""
    to: Literal["percli", "official"] = "percli"


def validate(cfg: Config) -> None:
    if not cfg.source:
        raise ConfigError("source: not set; give the checkpoint to convert: percli convert FILE -o OUT.safetensors")
    if not cfg.output:
        raise ConfigError("output: not set; pass --output/-o, the file to write")
    if not Path(cfg.source).exists():
        raise FileNotFoundError(f"{cfg.source} does not exist")


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.core.checkpoint import read_weights, save_weights
    from percli.models import create_model_for, list_models

    src, output = Path(cfg.source), Path(cfg.output)
    if output.is_dir() or (output.exists() and not ctx.overwrite):
        raise ValueError(f"{output} exists; pass --overwrite to replace it")
    meta: dict = {}
    percli_file = src.is_dir() or src.suffix == ".safetensors"
    state_or_path: Any = src
    if percli_file:
        state_or_path, meta = read_weights(src)  # a damaged file: CheckpointError (a ValueError) names it
    name = cfg.model or meta.get("name")
    if not name:
        raise ValueError("--model is required: the file carries no percli metadata naming its model "
                         "(`percli ls models`)")
    if name not in list_models():
        raise ValueError(f"--model {name}: unknown; run `percli ls models` for the names")
    built_with = dict(cfg.kwargs) if cfg.kwargs is not None else dict(meta.get("kwargs") or {})
    try:
        net = create_model_for(name, built_with, src if percli_file else None)
        report = _official_loader(net)(net, state_or_path)
    except (RuntimeError, ValueError, TypeError, KeyError, FileNotFoundError) as e:
        raise ValueError(f"{src} does not load into {name}: {e}") from None
    state = net.state_dict()
    if cfg.to == "percli":
        saved = {"name": name, "kwargs": built_with, "converted_from": str(src)}
        if hasattr(net, "checkpoint_meta"):
            saved["model"] = net.checkpoint_meta()
        save_weights(output, state, saved)
    else:
        _save_official(output, state)
    ctx.log(f"{src} -> {output} ({cfg.to}, {name})")
    return {"status": "completed", "source": str(src), "output": str(output), "to": cfg.to, "model": name,
            "tensors": len(state), "parameters": sum(v.numel() for v in state.values()),
            "dropped": list(getattr(report, "dropped", []) or []),
            "missing": list(getattr(report, "missing", []) or [])}


def _official_loader(net: Any) -> Any:
    """The model family's registered `load_official_state(model, state_or_path)`."""
    from percli.models import weights_loader

    loader = weights_loader(net)
    if loader is None:
        raise ValueError(f"the {type(net).__name__} family has no official checkpoint loader")
    return loader


def _save_official(output: Path, state: dict) -> None:
    """A plain dict of tensors: .safetensors, else torch.save (.pt/.pth), written aside and renamed."""
    import torch
    from safetensors.torch import save_file

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if output.suffix == ".safetensors":
        save_file(tensors, str(tmp))
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, output)
