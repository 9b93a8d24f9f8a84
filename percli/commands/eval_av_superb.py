"""`percli eval av-superb`: AV-SUPERB on a percli encoder or a user's upstream."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import err, fail
from percli.core.rundir import prepare_output_dir

TINY_AUDIO = {"img_size": [256, 128], "embed_dim": 64, "depth": 4, "num_heads": 4}
TINY_VIDEO = {"input_size": [8, 64, 64], "embed_dim": 16, "num_heads": 1, "stages": [1, 1, 2, 1]}


def av_superb(
    upstream: str = typer.Option(
        "audio-mae+hiera-video", "--upstream", "-u",
        help="audio-mae | hiera-video | audio-mae+hiera-video | module:factory (your own upstream)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Weights of a single-model upstream: a percli checkpoint (e.g. from percli "
                                   "pretrain audio-mae) or an official .pth."),
    audio_checkpoint: str | None = typer.Option(None, "--audio-checkpoint", help="Audio side of the fusion upstream."),
    video_checkpoint: str | None = typer.Option(None, "--video-checkpoint", help="Video side of the fusion upstream."),
    upstream_kwargs: str | None = typer.Option(
        None, "--upstream-kwargs", help="JSON keywords for the upstream (model, model_kwargs; or your factory's)."),
    tasks: str = typer.Option("as20k,vggsound,ks,ucf101,iemocap,voxceleb,lrs3", "--tasks",
                              help="Comma-separated tasks."),
    features: str = typer.Option(
        "default", "--features", help="audio | video | fusion | all | default (each task's official choice, "
                                      "fusion, or what the upstream has)."),
    data: list[str] | None = typer.Option(
        None, "--data", help="TASK=DIR, the dataset folder of a task (repeat). Tasks without one run on the "
                             "synthetic mini-benchmark."),
    minibench: Path = typer.Option(Path("runs/av-superb-mini"), "--minibench",
                                   help="Where the mini-benchmark is generated (once, then reused)."),
    steps: int | None = typer.Option(None, "--steps", help="Override the optimiser steps of every task."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override the training batch size."),
    lr: float | None = typer.Option(None, "--lr", help="Override the learning rate."),
    layer: int | None = typer.Option(None, "--layer", "-l", help="Use one upstream layer instead of the weighted sum."),
    normalize: bool = typer.Option(False, "--normalize", help="Layer-norm each layer before the weighted sum."),
    trainable: bool = typer.Option(
        False, "--trainable", help="Finetune the upstream with the head (no feature cache; much slower)."),
    seed: int = typer.Option(0, "--seed"),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Feature cache (default RUN_DIR/features); reused when nothing changed."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/eval-av-superb-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Finish the pairs an earlier run in --run-dir left undone."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --run-dir."),
    cpu: bool = typer.Option(False, "--cpu", help="Force CPU even when a GPU is visible."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """AV-SUPERB: frozen upstream features, learned layer weights and the official task heads.

    Example: [bold]percli eval av-superb --upstream audio-mae --checkpoint runs/pretrain-audio-mae-X/checkpoints/
    step_0000300 --tasks ks,iemocap --features audio[/]. Without --data the tasks run on a synthetic
    mini-benchmark built here; without weights the upstream is a small randomly initialised model.
    """
    import torch

    from percli.avsuperb.runner import BenchOptions, Runner, check_options
    from percli.avsuperb.tasks import TASKS
    from percli.avsuperb.upstream import load_upstream

    try:
        kwargs = json.loads(upstream_kwargs) if upstream_kwargs else {}
    except json.JSONDecodeError as e:
        fail(f"--upstream-kwargs is not valid JSON ({e.msg}); e.g. '{{\"model\": \"audiomae_vit_base_patch16\"}}'")
    if not isinstance(kwargs, dict):
        fail("--upstream-kwargs must be a JSON object")
    folders = {}
    for item in data or []:
        task, sep, folder = item.partition("=")
        if not sep or not folder:
            fail(f"--data {item!r}: write TASK=DIR, e.g. --data ks=/datasets/kinetics-sounds")
        folders[task] = Path(folder)
    opts = BenchOptions(upstream=upstream, upstream_kwargs=kwargs, checkpoint=checkpoint,
                        tasks=[t.strip() for t in tasks.split(",") if t.strip()],
                        features=[f.strip() for f in features.split(",") if f.strip()], data=folders,
                        minibench_root=minibench, steps=steps, batch_size=batch_size, lr=lr, layer=layer,
                        normalize=normalize, seed=seed, cache_dir=cache_dir, cpu=cpu, trainable=trainable)
    try:
        check_options(opts)
        for task, folder in folders.items():
            if not folder.is_dir():
                raise ValueError(f"--data {task}={folder}: no such folder (layout: percli/avsuperb/tasks.py)")
        build_kwargs = _upstream_kwargs(upstream, kwargs, checkpoint, audio_checkpoint, video_checkpoint)
        opts.upstream_kwargs = build_kwargs
        # Seeded, so a randomly initialised upstream is the same on every rank and in every run (its cached
        # features are keyed by the spec, not by the weights).
        torch.manual_seed(seed)
        model = load_upstream(upstream, checkpoint if "+" not in upstream else None, **build_kwargs)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        fail(str(e))
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    out_dir, problem = prepare_output_dir(run_dir, "eval", "av-superb", overwrite=overwrite, resume=resume,
                                          can_resume=True, rank=rank, world=world, flag="--run-dir")
    if problem:
        fail(problem)
    say = (lambda msg: err.print(msg, highlight=False)) if rank == 0 else (lambda _m: None)
    say(f"run dir: {out_dir}; upstream {upstream}; tasks {', '.join(opts.tasks)}")
    try:
        summary = Runner(opts, out_dir, model, log=say).run(resume)
    except (ValueError, FileNotFoundError, KeyError) as e:
        fail(str(e))
    if rank != 0:
        return
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        report(summary, TASKS)


def _upstream_kwargs(upstream: str, kwargs: dict, checkpoint: str | None, audio_ckpt: str | None,
                     video_ckpt: str | None) -> dict:
    """Keywords for `load_upstream`: the user's, plus small default models when no weights are given."""
    if upstream == "audio-mae+hiera-video":
        if checkpoint:
            raise ValueError("the fusion upstream takes --audio-checkpoint and --video-checkpoint, not --checkpoint")
        audio = dict(kwargs.get("audio", {}))
        video = dict(kwargs.get("video", {}))
        if audio_ckpt:
            audio["checkpoint"] = audio_ckpt
        elif "model_kwargs" not in audio and "model" not in audio:
            audio["model_kwargs"] = TINY_AUDIO
        if video_ckpt:
            video["checkpoint"] = video_ckpt
        elif "model_kwargs" not in video and "model" not in video:
            video["model_kwargs"] = TINY_VIDEO
        return {**{k: v for k, v in kwargs.items() if k not in ("audio", "video")}, "audio": audio, "video": video}
    if audio_ckpt or video_ckpt:
        raise ValueError("--audio-checkpoint/--video-checkpoint are for the fusion upstream; use --checkpoint")
    if upstream in ("audio-mae", "hiera-video") and not checkpoint and "model_kwargs" not in kwargs \
            and "model" not in kwargs:
        return {**kwargs, "model_kwargs": TINY_AUDIO if upstream == "audio-mae" else TINY_VIDEO}
    return kwargs


def report(summary: dict, tasks: dict) -> None:
    """Human table on stdout (metrics in percent as the paper prints them); scripts use --json."""
    from percli.avsuperb.runner import paper_value

    table = Table("task", "features", "metric", "value (%)", "clips (train/test)", "bad", "top layer",
                  title=f"AV-SUPERB ({summary['upstream']})", title_justify="left")
    for r in summary["results"]:
        weights = r.get("layer_weights") or []
        top = max(range(len(weights)), key=weights.__getitem__) if weights else None
        table.add_row(r["task"], r["features"], r["metric"] + (" (mini)" if r["mini_benchmark"] else ""),
                      f"{paper_value(r):.2f}", f"{r['train_clips']}/{r['test_clips']}", str(r["bad_clips"]),
                      "-" if top is None else f"{top} ({weights[top]:.2f})")
    Console().print(table)
    err.print(f"results: {summary['run_dir']}/results.md, results.csv, results.json", highlight=False)
