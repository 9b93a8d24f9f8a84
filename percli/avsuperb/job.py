"""The AV-SUPERB protocol: frozen upstream features, learned layer weights and the official task heads.

A frozen upstream returns per-layer audio, video and fusion features; a featurizer learns a softmax-weighted
sum of the layers (--layer N takes one, --normalize layer-norms them first) and the official head of each task
is trained on top with its official optimiser, learning rate, steps, batch and clipping. Tasks: as20k (mAP),
vggsound, ks, ucf101, iemocap (accuracy), voxceleb (EER), lrs3 (CER/WER). Without --data the tasks run on a
synthetic mini-benchmark built here (a short schedule); without weights the upstream is a small randomly
initialised model (seeded). Writes per pair tasks/<task>-<features>/ and results/<task>-<features>.json, then
results.json, results.md, results.csv (metrics in percent, as the paper prints them) and summary.json. --resume
skips the finished pairs and continues a pair stopped midway from its last checkpoint. Several processes
(accelerate launch, torchrun) share the feature extraction and train each head together.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from percli.avsuperb.runner import FEATURES, Config, data_dirs, names
from percli.avsuperb.tasks import TASKS
from percli.core.config import ConfigError
from percli.core.context import RunContext

TINY_AUDIO = {"img_size": [256, 128], "embed_dim": 64, "depth": 4, "num_heads": 4}
TINY_VIDEO = {"input_size": [8, 64, 64], "embed_dim": 16, "num_heads": 1, "stages": [1, 1, 2, 1]}
TINY_MAVIL = {"img_size": [256, 128], "embed_dim": 32, "depth": 2, "num_heads": 2, "depth_av": 1, "n_frm": 4,
              "video_size": 64}
_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "max_position_embeddings": 2048}
TINY_PE_AV = {"output_dim": 32, "nth_text_layer": 1,
              "audio_visual_model": {
                  "audio_model": {"dac_vae_encoder": {"encoder_hidden_size": 4, "downsampling_ratios": [2, 4, 5, 8],
                                                      "hidden_size": 64, "codebook_size": 64, "codebook_dim": 16,
                                                      "sampling_rate": 16000}, "audio_transformer": _TOWER},
                  "visual_model": {"pe_encoder": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                                                  "heads": 2, "mlp_ratio": 2.0, "output_dim": 32, "pool_type": "attn",
                                                  "attn_pooler_heads": 2, "use_cls_token": True},
                                   "visual_transformer": _TOWER},
                  "audio_visual_transformer": _TOWER},
              "text_model": {"vocab_size": 49411, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0}}
TINY = {"audio-mae": TINY_AUDIO, "hiera-video": TINY_VIDEO, "mavil": TINY_MAVIL, "pe-av": TINY_PE_AV}
"""Seeded small random models of the built-in upstreams, used when no weights are given."""


def validate(cfg: Config) -> None:
    tasks = names(cfg.tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks: unknown {unknown or 'empty list'}; choose from {', '.join(TASKS)}")
    bad = [f for f in names(cfg.features) if f not in (*FEATURES, "default", "all")]
    if bad or not names(cfg.features):
        raise ConfigError(f"features: unknown {bad or 'empty list'}; choose audio, video, fusion, all, or default "
                          "(each task's own)")
    try:
        folders = data_dirs(cfg.data)
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    for task, folder in folders.items():
        if task not in TASKS:
            raise ConfigError(f"data: --data {task}=...: unknown task; choose from {', '.join(TASKS)}")
        if not folder.is_dir():
            raise FileNotFoundError(f"--data {task}={folder}: no such folder (layout: percli/avsuperb/tasks.py)")
    if cfg.normalize and cfg.layer is not None:
        raise ConfigError("normalize: --normalize applies to the weighted sum of layers; drop it with --layer")
    for key in ("steps", "batch_size", "extract_batch_size"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: got {getattr(cfg, key)}; expected an integer >= 1")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"lr: got {cfg.lr}; expected a learning rate > 0")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers: got {cfg.num_workers}; expected an integer >= 0")
    try:
        upstream_kwargs(cfg)
    except ValueError as e:
        raise ConfigError(f"upstream: {e}") from None


def upstream_kwargs(cfg: Config) -> dict[str, Any]:
    """Keywords for `load_upstream`: the user's, plus small default models when no weights are given."""
    kwargs = cfg.upstream_kwargs
    if cfg.upstream == "audio-mae+hiera-video":
        if cfg.checkpoint:
            raise ValueError("the fusion upstream takes --audio-checkpoint and --video-checkpoint, not --checkpoint")
        sides = {}
        for side, checkpoint, tiny in (("audio", cfg.audio_checkpoint, TINY_AUDIO),
                                       ("video", cfg.video_checkpoint, TINY_VIDEO)):
            sides[side] = dict(kwargs.get(side, {}))
            if checkpoint:
                sides[side]["checkpoint"] = checkpoint
            elif "model_kwargs" not in sides[side] and "model" not in sides[side]:
                sides[side]["model_kwargs"] = tiny
        return {**{k: v for k, v in kwargs.items() if k not in ("audio", "video")}, **sides}
    if cfg.audio_checkpoint or cfg.video_checkpoint:
        raise ValueError("--audio-checkpoint/--video-checkpoint are for the fusion upstream; use --checkpoint")
    if cfg.upstream in TINY and not cfg.checkpoint and "model_kwargs" not in kwargs and "model" not in kwargs:
        return {**kwargs, "model_kwargs": TINY[cfg.upstream]}
    return dict(kwargs)


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch

    from percli.avsuperb.runner import Runner
    from percli.avsuperb.upstream import load_upstream

    cfg = dataclasses.replace(cfg, upstream_kwargs=upstream_kwargs(cfg), tasks=names(cfg.tasks),
                              features=names(cfg.features))
    # Seeded, so a randomly initialised upstream is the same on every rank and in every run (its cached
    # features are keyed by the spec, not by the weights).
    torch.manual_seed(cfg.seed)
    try:
        model = load_upstream(cfg.upstream, cfg.checkpoint if "+" not in cfg.upstream else None,
                              **cfg.upstream_kwargs)
    except (TypeError, ImportError) as e:  # a user's module:factory that is missing or takes other keywords
        raise ValueError(f"--upstream {cfg.upstream}: {e}") from None
    ctx.log(f"upstream {cfg.upstream}; tasks {', '.join(cfg.tasks)}")
    summary = Runner(cfg, ctx.run_dir, model, rank=ctx.rank, world=ctx.world, log=ctx.log).run(ctx.resume)
    ctx.log(f"results: {ctx.run_dir}/results.md, results.csv, results.json")
    # fractions, as every metric in JSON (results.md/.csv carry the paper's percent)
    headline = {f"{r['task']}/{r['features']} {r['metric']}": r["value"] for r in summary["results"]}
    return {"status": "completed", **summary, "metrics": headline}
