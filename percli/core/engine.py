"""The one training loop every percli method runs through (Accelerate underneath).

A method hands the loop a small task object (see `Task`); the loop owns devices, mixed
precision, gradient accumulation and clipping, the LR schedule, the NaN guard, distributed
sampling, logging, progress, evaluation, checkpoints, signals and exact resume.

Exact resume: every optimizer step reseeds the global RNGs from (seed, step, micro-batch, rank)
and data order/augmentation are pure functions of (seed, epoch, index) (see data/loader.py), so a
run stopped at step k and resumed logs the same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset

from percli.core import checkpoint as ckpt
from percli.core.config import OptimConfig, TrainConfig
from percli.core.data.loader import ResumableSampler, SeededSamples, collate_skip_bad, mix_seed, seed_everything
from percli.core.optim import build_optimizer, lr_at, set_lr
from percli.core.rundir import MetricsLog, write_json_atomic


class Task(Protocol):
    """What a method gives the engine."""

    def build_model(self) -> nn.Module: ...
    def model_meta(self) -> dict[str, Any]: ...
    def train_dataset(self) -> Dataset: ...
    def eval_dataset(self) -> Dataset | None: ...
    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...
    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]: ...
    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]: ...
    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]: ...


class RunStopped(RuntimeError):
    """The run ended early; `summary` says how and `exit_code` is what the CLI returns."""

    def __init__(self, message: str, exit_code: int, summary: dict[str, Any]):
        super().__init__(message)
        self.exit_code = exit_code
        self.summary = summary


@dataclass
class BadInputLog:
    """Unreadable inputs seen so far (counted, listed in summary.json, never fatal)."""

    files: list[dict[str, str]] = field(default_factory=list)

    def add(self, bad: list[dict[str, str]]) -> None:
        known = {f["path"] for f in self.files}
        self.files.extend(b for b in bad if b["path"] not in known)


def make_accelerator(train: TrainConfig) -> Accelerator:
    return Accelerator(cpu=train.cpu, mixed_precision=train.mixed_precision)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process: SLURM and Ctrl-C signal the whole
    process group, and a worker that died first would crash the loop before it can checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(dataset: Dataset, sampler: ResumableSampler, train: TrainConfig, seed: int) -> DataLoader:
    return DataLoader(
        SeededSamples(dataset, seed), batch_size=train.batch_size, sampler=sampler, num_workers=train.num_workers,
        collate_fn=collate_skip_bad, drop_last=False, persistent_workers=False,
        worker_init_fn=_ignore_stop_signals,
        pin_memory=torch.cuda.is_available() and not train.cpu,
        # Our own generator: the loader's base-seed draw must not consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class _SignalStop:
    """SIGTERM/SIGINT (SLURM preemption, Ctrl-C) set a flag; the loop checkpoints and exits."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(t, "max").item() > 0)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled, transient=False,
    )


def evaluate(task: Task, model: nn.Module, dataset: Dataset, accelerator: Accelerator, train: TrainConfig,
             bad_log: BadInputLog) -> dict[str, float]:
    """Sum `task.eval_step` over the dataset (sharded without padding) and reduce across ranks."""
    sampler = ResumableSampler(len(dataset), world_size=accelerator.num_processes, rank=accelerator.process_index,
                               seed=train.seed, shuffle=False, pad=False)
    loader = _loader(dataset, sampler, train, train.seed)
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for item in loader:
            bad_log.add(item["bad"])
            if item["batch"] is None:
                continue
            for k, v in task.eval_step(model, _to_device(item["batch"], accelerator.device)).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    keys = sorted(sums)
    if accelerator.num_processes > 1:  # a rank with no eval batches has no keys of its own
        keys = sorted(set().union(*gather_object([keys])))
    totals = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1 and keys:
        totals = accelerator.reduce(totals, "sum")
    return task.eval_reduce(dict(zip(keys, totals.tolist())))


def train(task: Task, train_cfg: TrainConfig, optim_cfg: OptimConfig, run_dir: Path, accelerator: Accelerator,
          *, resume: bool = False) -> dict[str, Any]:
    """Run the task to `max_steps`; returns the summary (also written to summary.json)."""
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    seed_everything(train_cfg.seed)  # identical init on every rank
    model = task.build_model()
    train_set, eval_set = task.train_dataset(), task.eval_dataset()

    sampler = ResumableSampler(len(train_set), world_size=world, rank=rank, seed=train_cfg.seed)
    micro_per_epoch = sampler.per_rank() // train_cfg.batch_size
    if micro_per_epoch == 0:
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} is larger than the {sampler.per_rank()} samples each of the "
            f"{world} process(es) gets; lower train.batch_size"
        )
    steps_per_epoch = max(micro_per_epoch // train_cfg.grad_accum_steps, 1)
    max_steps = (math.ceil(train_cfg.epochs * steps_per_epoch) if train_cfg.epochs is not None
                 else train_cfg.max_steps)
    effective_batch = train_cfg.batch_size * train_cfg.grad_accum_steps * world
    peak_lr = optim_cfg.lr * effective_batch / optim_cfg.ref_batch_size
    warmup_steps = round(optim_cfg.warmup_fraction * max_steps)

    optimizer = build_optimizer(model, optim_cfg, peak_lr)
    step, bad_log, history = 0, BadInputLog(), {}
    ckpt_root = run_dir / "checkpoints"
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=is_main)
    if resume:
        if is_main:
            ckpt.clean_stale_temps(ckpt_root)
        latest = ckpt.latest_checkpoint(ckpt_root)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_root}; start a new run instead")
        state = ckpt.load_checkpoint(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ts = state["trainer_state"]
        step, history = ts["step"], ts.get("last_metrics", {})
        bad_log.add(ts.get("bad_inputs", []))
        metrics.truncate_after(step)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume and accelerator.scaler is not None and ts.get("grad_scaler"):
        accelerator.scaler.load_state_dict(ts["grad_scaler"])

    def save(at_step: int) -> Path | None:
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        state = {"step": at_step, "max_steps": max_steps, "micro_batches": at_step * train_cfg.grad_accum_steps,
                 "world_size": world, "grad_scaler": scaler, "bad_inputs": bad_log.files, "last_metrics": history}
        accelerator.wait_for_everyone()
        path = None
        if is_main:
            path = ckpt.save_checkpoint(ckpt_root, at_step, accelerator.unwrap_model(model).state_dict(),
                                        task.model_meta(), optimizer.state_dict(), state, train_cfg.keep_last)
        accelerator.wait_for_everyone()
        return path

    def summary(status: str, **extra: Any) -> dict[str, Any]:
        gathered = gather_object([bad_log.files]) if world > 1 else [bad_log.files]
        merged = BadInputLog()
        for files in gathered:
            merged.add(files)
        out = {"status": status, "step": step, "max_steps": max_steps, "world_size": world,
               "effective_batch_size": effective_batch, "peak_lr": peak_lr, "run_dir": str(run_dir),
               "metrics": history, "bad_inputs": {"count": len(merged.files), "files": merged.files},
               "elapsed_s": round(time.time() - t_start, 2), **extra}
        if is_main:
            write_json_atomic(run_dir / "summary.json", out)
        return out

    t_start = time.time()
    model.train()
    window: dict[str, float] = {}
    window_n, window_samples, window_t = 0, 0, time.time()
    micro = step * train_cfg.grad_accum_steps
    epoch, start = divmod(micro, micro_per_epoch)
    sampler.set_epoch(epoch, start * train_cfg.batch_size)
    batches = iter(_loader(train_set, sampler, train_cfg, train_cfg.seed))

    def next_batch() -> dict[str, Any]:
        nonlocal batches, epoch
        while True:
            try:
                item = next(batches)
            except StopIteration:
                epoch += 1
                sampler.set_epoch(epoch, 0)
                batches = iter(_loader(train_set, sampler, train_cfg, train_cfg.seed))
                continue
            if len(item["bad"]) or item["batch"] is None:
                bad_log.add(item["bad"])
            return item

    with _SignalStop() as stopper, _progress(is_main) as bar:
        job = bar.add_task("train", total=max_steps, completed=step, info="")
        while step < max_steps:
            set_lr(optimizer, lr_at(step, max_steps, peak_lr, warmup_steps, optim_cfg.min_lr))
            for m in range(train_cfg.grad_accum_steps):
                item = next_batch()
                seed_everything(mix_seed(train_cfg.seed, step, m, rank))
                last = m == train_cfg.grad_accum_steps - 1
                sync = contextlib.nullcontext() if last or world == 1 else accelerator.no_sync(model)
                with sync:
                    if item["batch"] is None:  # every sample of this micro-batch was unreadable
                        out = {"loss": sum(p.sum() * 0.0 for p in model.parameters())}
                        n = 0
                    else:
                        batch = _to_device(item["batch"], accelerator.device)
                        out = task.loss_step(model, batch)
                        n = len(item["batch"]["path"]) if "path" in item["batch"] else train_cfg.batch_size
                    loss = out["loss"]
                    if _any_rank(accelerator, not bool(torch.isfinite(loss.detach()).all())):
                        raise RunStopped(
                            f"loss became {loss.item()} at step {step}; stopping. The last good checkpoint is kept "
                            f"under {ckpt_root}. Lower optim.lr, enable train.grad_clip, or use bf16 instead of fp16.",
                            3, summary("diverged", error=f"non-finite loss at step {step}"))
                    accelerator.backward(loss / train_cfg.grad_accum_steps)
                for k, v in out.items():
                    window[k] = window.get(k, 0.0) + float(v.detach()) / train_cfg.grad_accum_steps
                window_samples += n
            if train_cfg.grad_clip is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_n += 1
            bar.update(job, completed=step, info=f"loss {float(loss.detach()):.4f}")

            if step % train_cfg.log_every == 0 or step == max_steps:
                values = torch.tensor(list(window.values()), device=accelerator.device) / window_n
                if world > 1:
                    values = accelerator.reduce(values, "mean")
                dt = time.time() - window_t
                record = {"step": step, "epoch": epoch, **dict(zip(window, values.tolist())),
                          "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0),
                          "samples_per_s": round(window_samples * world / max(dt, 1e-9), 2)}
                metrics.write(record)
                history.update({k: v for k, v in record.items() if k not in ("epoch",)})
                window, window_n, window_samples, window_t = {}, 0, 0, time.time()
            if eval_set is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0 and step < max_steps:
                result = {f"eval/{k}": v for k, v in evaluate(task, model, eval_set, accelerator, train_cfg,
                                                              bad_log).items()}
                metrics.write({"step": step, **result})
                history.update(result)
            stop_signal = _any_rank(accelerator, stopper.signum is not None)
            if step % train_cfg.ckpt_every == 0 or stop_signal:
                save(step)
            if stop_signal:
                name = signal.Signals(stopper.signum or signal.SIGTERM).name
                raise RunStopped(f"stopped by {name} at step {step}; checkpoint written, continue with --resume",
                                 128 + (stopper.signum or signal.SIGTERM), summary("interrupted", signal=name))

    if eval_set is not None:
        result = {f"eval/{k}": v for k, v in evaluate(task, model, eval_set, accelerator, train_cfg, bad_log).items()}
        metrics.write({"step": step, **result})
        history.update(result)
    last_ckpt = save(step)
    extra = task.finish(accelerator.unwrap_model(model), run_dir, accelerator) if is_main else {}
    return summary("completed", checkpoint=str(last_ckpt) if last_ckpt else None, **(extra or {}))
