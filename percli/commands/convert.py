"""`percli convert`: official checkpoints <-> percli weight files, for every registered model family.

To percli: the family's own `load_official_state` reads the official file (open_clip / MetaCLIP
`.pt`, PE, DINOv2, Hiera, Audio-MAE `.pth`, VoiceCraft `.pth`, audiocraft `.th`, or safetensors;
`weights_only` loading) into the named model, which checks every key and shape, and the weights are
written as a percli safetensors file whose metadata names the model and its arguments, so
`model.checkpoint=FILE` and the eval commands rebuild it. Back to official: the percli file is
loaded into its model (checked the same way) and its state dict, which already carries the
official parameter names, is written as `.pt`/`.pth` (a plain dict of tensors, readable with
`torch.load(weights_only=True)`) or as plain `.safetensors`.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import typer

from percli.commands.run import err, fail


def convert(
    src: Path = typer.Argument(..., help="The checkpoint to convert."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write (.safetensors; .pt/.pth with --to "
                                                             "official)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Registered model name (`percli ls models`); "
                                                                  "read from a percli file's metadata if omitted."),
    kwargs: str | None = typer.Option(None, "--kwargs", help="JSON constructor arguments of the model, if not the "
                                                             "registered defaults."),
    to: str = typer.Option("percli", "--to", help="percli | official"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print what was done as JSON."),
) -> None:
    """Convert official checkpoints to percli weight files and back.

    Example: [bold]percli convert metaclip_b32_400m.pt -o b32.safetensors --model clip_vit_b32_quickgelu[/],
    then [bold]percli convert b32.safetensors --to official -o b32_open_clip.pt[/].
    """
    import torch
    from safetensors.torch import save_file

    from percli.core.checkpoint import read_weights, save_weights
    from percli.models import create_model, list_models

    if to not in ("percli", "official"):
        fail(f"--to {to}: choose percli or official")
    if not src.exists():
        fail(f"{src} does not exist")
    if output.exists() and not overwrite:
        fail(f"{output} exists; pass --overwrite to replace it")
    try:
        extra = json.loads(kwargs) if kwargs else None
    except json.JSONDecodeError as e:
        fail(f"--kwargs is not valid JSON ({e.msg})")
    meta: dict = {}
    percli_file = src.is_dir() or src.suffix == ".safetensors"
    state_or_path = src
    if percli_file:
        try:
            state_or_path, meta = read_weights(src)
        except (ValueError, FileNotFoundError) as e:  # a damaged or missing file: the message names it
            fail(str(e))
    name = model or meta.get("name")
    if not name:
        fail("--model is required: the file carries no percli metadata naming its model (`percli ls models`)")
    if name not in list_models():
        fail(f"--model {name}: unknown; run `percli ls models` for the names")
    built_with = extra if extra is not None else dict(meta.get("kwargs") or {})
    try:
        net = create_model(name, **built_with)
        family = importlib.import_module(type(net).__module__)
        report = family.load_official_state(net, state_or_path)
    except (RuntimeError, ValueError, TypeError, KeyError, FileNotFoundError) as e:
        fail(f"{src} does not load into {name}: {e}")
    state = net.state_dict()
    output.parent.mkdir(parents=True, exist_ok=True)
    if to == "percli":
        saved = {"name": name, "kwargs": built_with, "converted_from": str(src)}
        if hasattr(net, "checkpoint_meta"):
            saved["model"] = net.checkpoint_meta()
        save_weights(output, state, saved)
    else:
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        if output.suffix == ".safetensors":
            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, output)
    done = {"source": str(src), "output": str(output), "to": to, "model": name, "tensors": len(state),
            "parameters": sum(v.numel() for v in state.values()),
            "dropped": list(getattr(report, "dropped", []) or []),
            "missing": list(getattr(report, "missing", []) or [])}
    if json_out:
        print(json.dumps(done, indent=1))
    else:
        err.print(f"{src} -> {output} ({to}, {name}: {done['tensors']} tensors, {done['parameters']:,} values; "
                  f"{len(done['dropped'])} dropped, {len(done['missing'])} left at init)", highlight=False)
