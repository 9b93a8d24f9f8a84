"""What the PerceptionLM commands share: a model and its processor from a release folder or a percli run.

* A release folder: ``facebook/Perception-LM-{1B,3B,8B}`` in the Hugging Face layout (``config.json`` +
  ``model*.safetensors`` + ``tokenizer.json``) or its ``original/`` consolidated layout (``params.json`` +
  ``consolidated.pth`` + ``tokenizer.model``); the processor settings come from ``params.json`` (or the model's
  sizes with the released stage-3 data settings).
* A percli run, checkpoint dir or ``.safetensors`` of `percli finetune plm`: its metadata records the model name and
  keywords, the tokenizer (a folder, or ``bytes`` for the embedded presets' byte-level vocabulary) and the
  processor settings it trained with.

`tokenizer=` overrides where the vocabulary is read from (a folder or file).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from percli.core.config import ConfigError
from percli.models.plm_processor import PLMProcessor, PLMProcessorConfig
from percli.models.plm_tokenizer import Llama3Tokenizer

BYTE_TOKENIZER = "bytes"
"""A byte-level Llama-3-layout vocabulary (256 byte ids + 256 specials): the embedded presets' tokenizer."""
BYTE_TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "models" / "data" / "plm_byte_tokenizer.model"
"""Its tiktoken file: ``base64(byte) id`` for the 256 bytes and no merges (so text ids are its UTF-8 bytes; the
specials follow at 256 + k, <|image|> = 258, as the golden case's synthetic vocabulary)."""


def build_tokenizer(spec: str | None, folder: str | Path | None = None) -> Llama3Tokenizer:
    """``bytes``, a tokenizer folder / file, or (None) the one shipped in `folder`."""
    if spec == BYTE_TOKENIZER:
        return Llama3Tokenizer(BYTE_TOKENIZER_FILE)
    where = spec or folder
    if where is None:
        raise ConfigError("tokenizer: not set; give the folder holding tokenizer.model or tokenizer.json (a PLM "
                          "release folder has it), or `bytes` for the byte-level vocabulary of the tiny presets")
    return Llama3Tokenizer(Path(where).expanduser())


def processor_config(kwargs: dict[str, Any], overrides: dict[str, Any] | None = None) -> PLMProcessorConfig:
    """Processor settings matching a model's keywords (image size, patch, pooling, context), then `overrides`."""
    vision = kwargs.get("vision_model") or {}
    found = {"image_size": vision.get("image_size"), "patch_size": vision.get("patch_size"),
             "pooling_ratio": kwargs.get("pooling_ratio"), "seq_len": kwargs.get("max_seqlen")}
    known = {f.name for f in fields(PLMProcessorConfig)}
    settings = {k: v for k, v in {**found, **(overrides or {})}.items() if v is not None and k in known}
    return PLMProcessorConfig(**settings)


def is_release_folder(path: str | Path) -> bool:
    """A perception_models (params.json) or Hugging Face (config.json) folder; percli's run and checkpoint dirs
    hold neither."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / "params.json").is_file() or (p / "config.json").is_file())


def load_plm(checkpoint: str | Path, tokenizer: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, processor_overrides: dict[str, Any] | None = None
             ) -> tuple[nn.Module, PLMProcessor, dict[str, Any]]:
    """(model in eval mode, its processor, metadata) of a release folder or a percli PLM checkpoint."""
    from percli.core.checkpoint import read_meta, run_weights
    from percli.models import create_model_for, load_initial_weights
    from percli.models.plm import from_folder

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise ConfigError(f"model.checkpoint: {checkpoint} does not exist; give a PLM release folder or a "
                          "`percli finetune plm` run")
    if is_release_folder(path):
        model = from_folder(path, dtype=dtype, device=device)
        params = path / "params.json"
        if params.is_file():
            config = PLMProcessorConfig.from_params(json.loads(params.read_text()))
            config = PLMProcessorConfig(**{**config.__dict__, **(processor_overrides or {})})
        else:
            config = processor_config(model.config, processor_overrides)
        meta = {"name": "perception_lm", "kwargs": model.config, "source": str(path)}
        return model.eval(), PLMProcessor(build_tokenizer(tokenizer, path), config), meta
    weights = run_weights(path)
    meta = read_meta(weights)
    if meta.get("task") != "plm":
        raise ConfigError(f"model.checkpoint: {checkpoint} is not a PerceptionLM checkpoint (its task is "
                          f"{meta.get('task')!r}); give a PLM release folder or a `percli finetune plm` run")
    model = create_model_for(meta["name"], meta.get("kwargs", {}), weights)
    load_initial_weights(model, weights)
    model.to(device=device, dtype=dtype) if dtype else model.to(device)
    settings = {**meta.get("processor", {}), **(processor_overrides or {})}
    processor = PLMProcessor(build_tokenizer(tokenizer or meta.get("tokenizer")), PLMProcessorConfig(**settings))
    return model.eval(), processor, meta
