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
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset

from percli.core import checkpoint as ckpt
from percli.core import scale, trackers
from percli.core.config import OptimConfig, TrainConfig, to_dict
from percli.core.data.loader import ResumableSampler, SeededSamples, collate_skip_bad, mix_seed, seed_everything
from percli.core.optim import build_optimizer, lr_at, lr_for_step, scaled_lr, set_lr
from percli.core.progress import Progress
from percli.core.rundir import MetricsLog, write_json_atomic


class Task(Protocol):
    """What a method gives the engine: a model, its checkpoint metadata, training data and a loss.

    Optional, each used only when the task defines it:
    - `eval_dataset() -> Dataset | None` with `eval_step(model, batch)` (floats summed over the eval set
      and/or per-sample tensors, e.g. scores and targets for mAP, concatenated) and
      `eval_reduce(totals) -> metrics`;
    - `finish(model, run_dir, accelerator) -> dict` (extra summary entries, pictures) on rank 0;
    - `sample_weights()` (a tensor, for weighted sampling), `epoch_len` (samples drawn per epoch when it
      is smaller than the dataset) and `collate(samples) -> batch` (instead of torch's default_collate,
      e.g. for variable-length inputs kept as lists);
    - `curate(epoch, model, previous) -> (indices, stats)`: data curation in training (CiT): called on every
      rank at the start of each epoch with the model being trained and the previous epoch's indices (also
      after a resume; None at the start), it returns the training-set indices that epoch draws from (the
      same list on every rank; an epoch is then `epoch_len` of them) and scalars logged to metrics.jsonl;
      the list is saved in checkpoints, so a resumed epoch uses it again. With `keep_curated_order` true the
      epoch walks the list in its order instead of a shuffle (rank r takes items r, r + world, ...), so a
      global batch is a run of consecutive items: VideoCLIP's retrieved groups;
    - `batch_sampler(world_size, rank, seed, grad_accum_steps)`: batches of the task's own making (e.g.
      `core.data.dynamic_batches.BucketBatchSampler`, up to a token count), or None for fixed batches of
      train.batch_size. It yields lists of `SeededSamples` keys (`epoch * len(dataset) + i`), each a micro-batch
      (`grad_accum_steps` of them make an optimizer step), has `num_batches` (micro-batches per epoch, the
      same on every rank) and `num_samples` (items per epoch and rank) and `set_epoch(epoch, start)`, which
      skips the epoch's first `start` micro-batches (resume). Not with sample_weights, epoch_len or curate.
    """

    def build_model(self) -> nn.Module: ...
    def model_meta(self) -> dict[str, Any]: ...
    def train_dataset(self) -> Dataset: ...
    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...


class RunStopped(RuntimeError):
    """The run ended early; `summary` says how and `exit_code` is what the CLI returns."""

    def __init__(self, message: str, exit_code: int, summary: dict[str, Any]):
        super().__init__(message)
        self.exit_code = exit_code
        self.summary = summary


class NoUsableData(ValueError):
    """Every sample read was unreadable: the run would learn (or measure) nothing."""


def no_usable_data_message(what: str, task: Any, dataset: Dataset, bad: list[dict[str, str]]) -> str:
    """One line naming the data source, the counts and the first unreadable file."""
    data = getattr(getattr(task, "cfg", None), "data", None)
    source = getattr(data, "source", None) or getattr(dataset, "source", None) or type(dataset).__name__
    first = f"; first: {bad[0]['path']} ({bad[0].get('reason', '')})" if bad else ""
    return (f"no usable sample in {what} from {source}: all {len(bad)} file(s) read were unreadable "
            f"({len(dataset)} in the set; listed in summary.json){first}. Check the data source and the files")


@dataclass
class BadInputLog:
    """Unreadable inputs seen so far (counted, listed in summary.json, never fatal)."""

    files: list[dict[str, str]] = field(default_factory=list)

    def add(self, bad: list[dict[str, str]]) -> None:
        known = {f["path"] for f in self.files}
        self.files.extend(b for b in bad if b["path"] not in known)


def mixed_precision(configured: str, launcher: str | None) -> str | None:
    """The precision to ask the Accelerator for: None (it reads the launcher's ACCELERATE_MIXED_PRECISION,
    else "no") when the config says auto, else the config's. A launcher's other choice is named in a warning;
    its "no" is not, since `accelerate launch` exports "no" whenever --mixed_precision is not given."""
    if configured == "auto":
        return None
    if launcher and launcher.lower() not in ("no", configured) and os.environ.get("RANK", "0") == "0":  # once
        print(f"warning: train.mixed_precision={configured} (config) overrides the launcher's mixed precision "
              f"{launcher.lower()} (accelerate launch --mixed_precision / ACCELERATE_MIXED_PRECISION); set "
              "train.mixed_precision=auto to use the launcher's", file=sys.stderr, flush=True)
    return configured


def make_accelerator(train: TrainConfig) -> Accelerator:
    """The run's Accelerator: the launcher's processes and precision, FSDP2 when `train.fsdp` asks."""
    precision = mixed_precision(train.mixed_precision, os.environ.get("ACCELERATE_MIXED_PRECISION"))
    plugin = scale.fsdp_plugin() if train.fsdp else None
    accelerator = Accelerator(cpu=train.cpu, mixed_precision=precision, fsdp_plugin=plugin)
    if plugin is not None:
        scale.enable_fsdp(accelerator, plugin)
    if scale.is_fsdp(accelerator) and not accelerator.is_fsdp2:
        raise ValueError("the launcher turned on FSDP version 1; percli trains with FSDP2: pass --fsdp_version 2 "
                         "to accelerate launch (or drop --use_fsdp and set train.fsdp=true)")
    return accelerator


def _model_section(task: Task) -> Any:
    return getattr(getattr(task, "cfg", None), "model", None)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGINT to the main process: SLURM and Ctrl-C signal the whole
    process group, and a worker that died first would crash the loop before it can checkpoint.
    Workers are forked with the signals blocked (see `_start_workers`), so none can arrive before
    this runs; a signal that came meanwhile stays pending and is ignored on unblocking."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _start_workers(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """`iter(loader)` with stop signals blocked while worker processes are forked (the main
    process gets any signal that arrived meanwhile as soon as they are unblocked)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop_workers(items: Iterator[dict[str, Any]]) -> None:
    """Shut a loader iterator's worker processes down now. They ignore SIGTERM, so when an exception leaves
    them running, multiprocessing's exit hook (terminate, then join) would wait for them forever."""
    shutdown = getattr(items, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _loader(dataset: Dataset, sampler: Any, train: TrainConfig, seed: int, task: Task,
            drop_last: bool = False, persistent: bool = False, batched: bool = False) -> DataLoader:
    """`batched`: `sampler` is a task's batch sampler (it yields whole batches)."""
    collate = getattr(task, "collate", None)
    sampling = {"batch_sampler": sampler} if batched else \
        {"batch_size": train.batch_size, "sampler": sampler, "drop_last": drop_last}
    return DataLoader(
        SeededSamples(dataset, seed), **sampling, num_workers=train.num_workers,
        collate_fn=functools.partial(collate_skip_bad, collate=collate) if collate else collate_skip_bad,
        persistent_workers=persistent and train.num_workers > 0,
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


def _lockstep(items: Iterator[dict[str, Any]], batches: int, accelerator: Accelerator,
              stand_in: dict[str, Any] | None) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """(item, batch to run) for as many batches as the busiest rank has: under FSDP every rank must run
    each forward. Past its own end, or on an unreadable batch, a rank runs a stand-in (its last readable
    batch, else `stand_in`) and the caller keeps nothing of it (item None or its batch None)."""
    most = int(accelerator.reduce(torch.tensor(batches, device=accelerator.device), "max").item())
    for i in range(most):
        item = next(items) if i < batches else None
        batch = item["batch"] if item is not None else None
        if batch is not None:
            stand_in = batch
        if _any_rank(accelerator, stand_in is None):
            raise NoUsableData("under FSDP every process needs a readable evaluation batch; one has none "
                               "(fewer evaluation samples than processes, or all of its samples unreadable)")
        yield item, batch if batch is not None else stand_in


def evaluate(task: Task, model: nn.Module, dataset: Dataset, accelerator: Accelerator, train: TrainConfig,
             bad_log: BadInputLog, lockstep: bool = False, stand_in: dict[str, Any] | None = None
             ) -> dict[str, float]:
    """Sum `task.eval_step` over the dataset (sharded without padding) and reduce across ranks.

    `lockstep` (FSDP): every rank runs the same number of forwards (see `_lockstep`)."""
    sampler = ResumableSampler(len(dataset), world_size=accelerator.num_processes, rank=accelerator.process_index,
                               seed=train.seed, shuffle=False, pad=False)
    loader = _loader(dataset, sampler, train, train.seed, task)
    sums: dict[str, float] = {}
    parts: dict[str, list[torch.Tensor]] = {}  # per-sample outputs (scores, targets) for set-level metrics
    usable = 0
    was_training = model.training
    model.eval()
    items = _start_workers(loader)
    steps = _lockstep(items, len(loader), accelerator, stand_in) if lockstep else ((i, i["batch"]) for i in items)
    try:
        with torch.no_grad():
            for item, batch in steps:
                if item is not None:
                    bad_log.add(item["bad"])
                    usable += item["good"]
                if batch is None:
                    continue
                out = task.eval_step(model, _to_device(batch, accelerator.device))
                if item is None or item["batch"] is None:  # a stand-in's forward, run for the collectives
                    continue
                for k, v in out.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        parts.setdefault(k, []).append(v.detach().float().cpu())
                    else:
                        sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        _stop_workers(items)
    model.train(was_training)
    if not _any_rank(accelerator, usable > 0) and len(dataset):
        raise NoUsableData(no_usable_data_message("the evaluation data", task, dataset, bad_log.files))
    keys = sorted(sums)
    if accelerator.num_processes > 1:  # a rank with no eval batches has no keys of its own
        keys = sorted(set().union(*gather_object([keys])))
    totals = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64, device=accelerator.device)
    if accelerator.num_processes > 1 and keys:
        totals = accelerator.reduce(totals, "sum")
    result: dict[str, Any] = dict(zip(keys, totals.tolist()))
    local = {k: torch.cat(v) for k, v in parts.items()}
    if accelerator.num_processes > 1:
        shards = gather_object([local])
        local = {k: torch.cat([s[k] for s in shards if k in s]) for k in set().union(*shards)}
    result.update(local)
    return task.eval_reduce(result)


@dataclass
class Plan:
    """Run length and LR derived from the config, the data size and the number of processes."""

    max_steps: int
    micro_per_epoch: int
    effective_batch: int
    peak_lr: float
    warmup_steps: int


def plan_run(samples_per_rank: float, world: int, train_cfg: TrainConfig, optim_cfg: OptimConfig,
             micro_batches: int | None = None) -> Plan:
    """`micro_batches`: micro-batches per epoch and rank when a task's batch sampler makes them (their size
    then varies: the effective batch is their mean), else samples_per_rank // train.batch_size."""
    if micro_batches is None:  # fixed batches; the loader drops the last partial one
        batch, micro_per_epoch = train_cfg.batch_size, int(samples_per_rank // train_cfg.batch_size)
    else:
        batch, micro_per_epoch = samples_per_rank / max(micro_batches, 1), micro_batches
    if micro_per_epoch == 0:
        raise ValueError(f"train.batch_size={train_cfg.batch_size} is larger than the {samples_per_rank} samples "
                         f"each of the {world} process(es) gets; lower train.batch_size")
    steps_per_epoch = max(micro_per_epoch // train_cfg.grad_accum_steps, 1)
    max_steps = (math.ceil(train_cfg.epochs * steps_per_epoch) if train_cfg.epochs is not None
                 else train_cfg.max_steps)
    effective_batch = max(round(batch * train_cfg.grad_accum_steps * world), 1)
    return Plan(max_steps, micro_per_epoch, effective_batch,
                peak_lr=scaled_lr(optim_cfg, effective_batch),
                warmup_steps=round(optim_cfg.warmup_fraction * max_steps))


class _Trainer:
    """State of one training run; `run()` is the loop, read top to bottom."""

    def __init__(self, task: Task, train_cfg: TrainConfig, optim_cfg: OptimConfig, run_dir: Path,
                 accelerator: Accelerator):
        self.task, self.cfg, self.optim_cfg, self.run_dir, self.acc = task, train_cfg, optim_cfg, run_dir, accelerator
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.is_main = accelerator.is_main_process
        seed_everything(train_cfg.seed)  # identical init on every rank
        self.model = task.build_model()
        self.fsdp = scale.is_fsdp(accelerator)
        if getattr(_model_section(task), "grad_checkpointing", False):
            scale.set_grad_checkpointing(self.model)
        if self.fsdp:
            if optim_cfg.name == "scaled_adam":  # its steps need each tensor's RMS, FSDP holds a shard of it
                raise ValueError("optim.name=scaled_adam does not run under FSDP (train.fsdp / --use_fsdp); train "
                                 "with DDP (as VoiceCraft's release does) or set optim.name=adamw")
            scale.prepare_for_fsdp(self.model)
        self.stand_in: dict[str, Any] | None = None  # FSDP: a batch to run when a rank's own is unreadable
        self.optimizer_state: dict[str, Any] | None = None  # read by restore(), loaded once prepared
        self.train_set = task.train_dataset()
        self.eval_set = task.eval_dataset() if hasattr(task, "eval_dataset") else None
        weights = getattr(task, "sample_weights", lambda: None)()
        self.curate = getattr(task, "curate", None)
        self.subset: dict[str, Any] | None = None  # {"epoch": e, "indices": [...]} of the current curation
        make_batches = getattr(task, "batch_sampler", None)
        self.batch_sampler = make_batches(self.world, self.rank, train_cfg.seed, train_cfg.grad_accum_steps) \
            if make_batches else None
        if self.batch_sampler is not None:
            if weights is not None or self.curate is not None or getattr(task, "epoch_len", None):
                raise ValueError("a task's batch_sampler cannot be combined with sample_weights, epoch_len or curate")
            self.sampler = self.batch_sampler
            self.plan = plan_run(self.sampler.num_samples, self.world, train_cfg, optim_cfg,
                                 micro_batches=self.sampler.num_batches)
        else:
            self.sampler = ResumableSampler(len(self.train_set), world_size=self.world, rank=self.rank,
                                            seed=train_cfg.seed, weights=weights,
                                            num_samples=getattr(task, "epoch_len", None),
                                            subsets=self.curate is not None,
                                            shuffle=not getattr(task, "keep_curated_order", False))
            self.plan = plan_run(self.sampler.per_rank(), self.world, train_cfg, optim_cfg)
        self.optimizer = build_optimizer(self.model, optim_cfg, self.plan.peak_lr)
        self.ckpt_root = run_dir / "checkpoints"
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=self.is_main)
        self.step, self.epoch, self.bad_log, self.history = 0, 0, BadInputLog(), {}
        self.samples_used, self.empty_micro_batches = 0, 0  # this session's good samples; empty batches in a row
        self.t_start = time.time()

    def restore(self) -> dict[str, Any]:
        """Load the latest checkpoint (before `accelerator.prepare`); returns its trainer state."""
        if self.is_main:
            ckpt.clean_stale_temps(self.ckpt_root)
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.ckpt_root}; start a new run instead")
        state = ckpt.load_checkpoint(latest)
        self.model.load_state_dict(state["model"])
        ts = state["trainer_state"]
        self.optimizer_state = self.read_optimizer(latest, state["optimizer"], ts)
        if not self.fsdp:  # plain parameters: before `prepare`; FSDP's sharded ones after it
            self.optimizer.load_state_dict(self.optimizer_state)
        self.step, self.history = ts["step"], ts.get("last_metrics", {})
        self.subset = ts.get("subset")
        self.bad_log.add(ts.get("bad_inputs", []))
        self.metrics.truncate_after(self.step)
        return ts

    def read_optimizer(self, path: Path, whole: dict[str, Any] | None, ts: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's optimizer state for this process: its own shard when the checkpoint was
        sharded over as many processes and this run shards too, else the whole state (put together from
        every shard when it was sharded; `scale.shard_like_params` cuts it to the current layout)."""
        shards = ts.get("optimizer_shards")
        if not shards:
            if whole is None:
                raise FileNotFoundError(f"--resume: {path} has no {ckpt.OPTIMIZER_FILE}; the checkpoint is "
                                        "incomplete, remove it to resume from the one before")
            return whole
        if self.fsdp and shards == self.world:
            return ckpt.read_optimizer(path / ckpt.optimizer_file(self.rank))
        return scale.full_optimizer_state([ckpt.read_optimizer(path / ckpt.optimizer_file(r)) for r in range(shards)])

    def batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches from the current data position on, epoch after epoch."""
        epoch, start = divmod(self.step * self.cfg.grad_accum_steps, self.plan.micro_per_epoch)
        batched = self.batch_sampler is not None  # a batch sampler skips micro-batches, the other samples
        self.sampler.set_epoch(epoch, start if batched else start * self.cfg.batch_size)
        # One loader with persistent workers: no worker start/stop churn at every epoch boundary
        # (the sampler lives in this process, so set_epoch still steers the order).
        loader = _loader(self.train_set, self.sampler, self.cfg, self.cfg.seed, self.task, drop_last=True,
                         persistent=True, batched=batched)
        while True:
            self.epoch = epoch
            if self.curate is not None:
                self.curate_epoch(epoch)
            for item in _start_workers(loader):
                self.bad_log.add(item["bad"])
                yield item
            epoch += 1
            self.sampler.set_epoch(epoch, 0)

    def curate_epoch(self, epoch: int) -> None:
        """The task's curation round for `epoch` (the saved one when a resumed run restarts inside it)."""
        if self.subset is None or self.subset["epoch"] != epoch:
            model = self.acc.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            with torch.no_grad():
                indices, stats = self.curate(epoch, model, self.subset["indices"] if self.subset else None)
            model.train(was_training)
            self.subset = {"epoch": epoch, "indices": list(indices)}
            # logged at the first step trained on it (a resume from step k redoes a round begun at k)
            self.record({"step": self.step + 1, "epoch": epoch, **{f"curation/{k}": v for k, v in stats.items()}})
        self.sampler.set_subset(self.subset["indices"])

    def optimizer_step(self, batches: Iterator[dict[str, Any]], window: dict[str, float]) -> int:
        """One optimizer step over `grad_accum_steps` micro-batches; returns the samples used."""
        accum, samples = self.cfg.grad_accum_steps, 0
        for m in range(accum):
            item = next(batches)
            seed_everything(mix_seed(self.cfg.seed, self.step, m, self.rank))
            last = m == accum - 1
            with contextlib.nullcontext() if last or self.world == 1 else self.acc.no_sync(self.model):
                samples += item["good"]
                self.empty_micro_batches = 0 if item["good"] else self.empty_micro_batches + 1
                out = self.micro_step(item["batch"])
                loss = out["loss"]
                if _any_rank(self.acc, not bool(torch.isfinite(loss.detach()).all())):
                    raise RunStopped(
                        f"loss became {loss.item()} at step {self.step}; stopping. The last good checkpoint is kept "
                        f"under {self.ckpt_root}. Lower optim.lr, set train.grad_clip, or use bf16 instead of fp16.",
                        3, self.summary("diverged", error=f"non-finite loss at step {self.step}"))
                self.acc.backward(loss / accum)
            for k, v in out.items():
                window[k] = window.get(k, 0.0) + float(v.detach()) / accum
        if self.cfg.grad_clip is not None:
            self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples_used += samples
        return samples

    def micro_step(self, batch: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        """The task's losses on a micro-batch; a zero loss when all its samples were unreadable. Under FSDP
        every rank must run the forward (its collectives gather the parameters), so such a rank runs its
        last good batch and keeps nothing of it (a rank that has none yet stops every rank together)."""
        if self.fsdp:
            if _any_rank(self.acc, batch is None and self.stand_in is None):
                raise self.no_data("under FSDP every process needs a readable sample in its first micro-batch; "
                                   "a process got none. Check the data source (summary.json lists unreadable files)")
            if batch is not None:
                self.stand_in = batch
            out = self.task.loss_step(self.model, _to_device(batch or self.stand_in, self.acc.device))
            return out if batch is not None else {"loss": out["loss"] * 0.0}
        if batch is None:
            return {"loss": sum(p.sum() * 0.0 for p in self.model.parameters())}
        return self.task.loss_step(self.model, _to_device(batch, self.acc.device))

    def weight_decay_now(self) -> float | None:
        """The scheduled weight decay of this step (a half-cosine, no warmup), or None when it is constant."""
        cfg = self.optim_cfg
        if cfg.weight_decay_end is None:
            return None
        return lr_at(self.step, self.plan.max_steps, cfg.weight_decay, 0, cfg.weight_decay_end)

    def record(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl, the same scalars at the same step to the trackers (train.log_with)."""
        self.metrics.write(record)
        trackers.log_metrics(self.acc, record)

    def log(self, window: dict[str, float], steps: int, samples: int, seconds: float) -> dict[str, Any]:
        values = torch.tensor(list(window.values()), device=self.acc.device) / steps
        if self.world > 1:
            values = self.acc.reduce(values, "mean")
        group = self.optimizer.param_groups[0]
        record = {"step": self.step, "epoch": self.epoch, **dict(zip(window, values.tolist())),
                  "lr": group["lr"] / group.get("lr_scale", 1.0),
                  "samples_per_s": round(samples * self.world / max(seconds, 1e-9), 2)}
        if self.optim_cfg.weight_decay_end is not None:  # the scheduled value (0 in the no-decay groups)
            record["weight_decay"] = max(g["weight_decay"] for g in self.optimizer.param_groups)
        self.record(record)
        self.history.update({k: v for k, v in record.items() if k != "epoch"})
        return record

    def no_data(self, message: str) -> RunStopped:
        return RunStopped(message, 2, self.summary("failed", error="no usable sample"))

    def evaluate(self) -> None:
        try:
            result = evaluate(self.task, self.model, self.eval_set, self.acc, self.cfg, self.bad_log,
                              lockstep=self.fsdp, stand_in=self.stand_in)
        except NoUsableData as e:
            self.save()  # the training done so far is kept
            raise self.no_data(str(e)) from None
        result = {f"eval/{k}": v for k, v in result.items()}
        self.record({"step": self.step, **result})
        self.history.update(result)

    def full_state(self) -> dict[str, torch.Tensor]:
        """The whole model's weights (under FSDP gathered from every rank: call it on all of them)."""
        return self.acc.get_state_dict(self.model)

    def save(self) -> Path | None:
        """`checkpoints/step_<N>`: the full weights (model.safetensors, loadable anywhere), the optimizer
        (one file, or under FSDP each rank's shard), the trainer state; renamed into place when complete."""
        scaler = self.acc.scaler.state_dict() if self.acc.scaler is not None else None
        state = {"step": self.step, "max_steps": self.plan.max_steps, "world_size": self.world,
                 "micro_batches": self.step * self.cfg.grad_accum_steps, "grad_scaler": scaler,
                 "bad_inputs": self.bad_log.files, "last_metrics": self.history,
                 "optimizer_shards": self.world if self.fsdp else None, "subset": self.subset}
        self.acc.wait_for_everyone()
        weights = self.full_state()
        if self.is_main:
            ckpt.start_checkpoint(self.ckpt_root, self.step)
        self.acc.wait_for_everyone()
        tmp = ckpt.pending_dir(self.ckpt_root, self.step)
        if self.fsdp:
            ckpt.write_optimizer(tmp, scale.local_optimizer_state(self.optimizer.state_dict()), self.rank)
        elif self.is_main:
            ckpt.write_optimizer(tmp, self.optimizer.state_dict())
        self.acc.wait_for_everyone()
        path = None
        if self.is_main:
            path = ckpt.finish_checkpoint(tmp, self.step, weights, self.task.model_meta(), state, self.cfg.keep_last)
        self.acc.wait_for_everyone()
        return path

    def bad_records(self) -> dict[str, Any]:
        """Malformed records (manifest lines, shard records) the datasets skipped when they were indexed:
        `bad_records` / `duplicate_keys` of the training data, `eval_bad_records` of the evaluation data."""
        out: dict[str, Any] = {}
        for prefix, dataset in (("", self.train_set), ("eval_", self.eval_set)):
            bad = getattr(dataset, "bad_records", None)
            if bad is not None and bad.count:
                out[f"{prefix}bad_records"] = {"count": bad.count, "examples": bad.examples}
            if bad is not None and bad.duplicate_keys:
                out[f"{prefix}duplicate_keys"] = bad.duplicate_keys
        return out

    def summary(self, status: str, **extra: Any) -> dict[str, Any]:
        merged = BadInputLog()
        for files in gather_object([self.bad_log.files]) if self.world > 1 else [self.bad_log.files]:
            merged.add(files)
        out = {"status": status, "step": self.step, "max_steps": self.plan.max_steps, "world_size": self.world,
               "effective_batch_size": self.plan.effective_batch, "peak_lr": self.plan.peak_lr,
               "run_dir": str(self.run_dir), "metrics": self.history,
               "bad_inputs": {"count": len(merged.files), "files": merged.files},
               **self.bad_records(), "elapsed_s": round(time.time() - self.t_start, 2), **extra}
        if self.is_main:
            write_json_atomic(self.run_dir / "summary.json", out)
        return out

    def run(self, resume: bool) -> dict[str, Any]:
        trainer_state = self.restore() if resume else {}
        self.start_step = self.step
        if self.cfg.compile:  # in place: the module (and its state_dict keys) stay as they are
            self.model.compile(backend=self.cfg.compile_backend)
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)
        if resume and self.fsdp:
            self.optimizer.load_state_dict(scale.shard_like_params(self.optimizer_state, self.optimizer))
        self.optimizer_state = None
        if self.acc.scaler is not None and trainer_state.get("grad_scaler"):
            self.acc.scaler.load_state_dict(trainer_state["grad_scaler"])
        self.model.train()
        trackers.start_trackers(self.acc, self.cfg.log_with, self.run_dir,
                                {"train": to_dict(self.cfg), "optim": to_dict(self.optim_cfg)})
        batches = self.batches()
        try:
            return self._loop(batches)
        finally:
            batches.close()  # stops the loader's persistent workers now, not at garbage collection
            trackers.end_trackers(self.acc)

    def progress_fields(self, record: dict[str, Any]) -> dict[str, str]:
        """What a progress line shows of a metrics record: loss, lr, throughput."""
        fields = {"loss": f"{record['loss']:.4f}"} if "loss" in record else {}
        return {**fields, "lr": f"{record['lr']:.3g}", "samples/s": f"{record['samples_per_s']:,.1f}"}

    def finished_model(self) -> nn.Module:
        """The trained model for `finish` on rank 0 alone: under FSDP a plain copy built from the saved
        weights (the sharded one would wait for the other ranks in every forward)."""
        if not self.fsdp:
            return self.acc.unwrap_model(self.model)
        model = self.task.build_model()
        model.load_state_dict(ckpt.load_tensors(ckpt.latest_checkpoint(self.ckpt_root) / ckpt.MODEL_FILE))
        return model.to(self.acc.device)

    def _loop(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        cfg, plan = self.cfg, self.plan
        window: dict[str, float] = {}
        window_steps, window_samples, window_t = 0, 0, time.time()
        with _SignalStop() as stopper, Progress("train", plan.max_steps, "steps", completed=self.step,
                                                enabled=self.is_main) as bar:
            while self.step < plan.max_steps:
                set_lr(self.optimizer, lr_for_step(self.optim_cfg, self.step, plan.max_steps, plan.peak_lr,
                                                   plan.warmup_steps), self.weight_decay_now())
                window_samples += self.optimizer_step(batches, window)
                window_steps += 1
                # A whole epoch's worth of micro-batches in a row without one readable sample (on every rank).
                if not _any_rank(self.acc, self.empty_micro_batches < plan.micro_per_epoch):
                    raise self.no_data(no_usable_data_message("a whole epoch", self.task, self.train_set,
                                                              self.bad_log.files))
                if self.step % cfg.log_every == 0 or self.step == plan.max_steps:  # a terminal-less log: a line
                    record = self.log(window, window_steps, window_samples, time.time() - window_t)
                    bar.update(self.step, self.progress_fields(record), line=True)
                    window, window_steps, window_samples, window_t = {}, 0, 0, time.time()
                else:
                    bar.update(self.step, {"loss": f"{window.get('loss', 0.0) / window_steps:.4f}"})
                if self.eval_set is not None and cfg.eval_every and self.step % cfg.eval_every == 0 \
                        and self.step < plan.max_steps:
                    self.evaluate()
                stop = _any_rank(self.acc, stopper.signum is not None)
                if self.step % cfg.ckpt_every == 0 or stop:
                    self.save()
                if stop:
                    signum = stopper.signum or signal.SIGTERM
                    name = signal.Signals(signum).name
                    raise RunStopped(f"stopped by {name} at step {self.step}; checkpoint written, continue with "
                                     "--resume", 128 + signum, self.summary("interrupted", signal=name))
        if not _any_rank(self.acc, self.samples_used > 0) and self.step > self.start_step:
            raise self.no_data(no_usable_data_message("the training data", self.task, self.train_set,
                                                      self.bad_log.files))
        if self.eval_set is not None:
            self.evaluate()
        last = self.save()
        finish = getattr(self.task, "finish", None)
        extra = finish(self.finished_model(), self.run_dir, self.acc) if finish and self.is_main else {}
        trackers.log_pictures(self.acc, extra or {}, self.step)
        return self.summary("completed", checkpoint=str(last) if last else None, **(extra or {}))


def train(task: Task, train_cfg: TrainConfig, optim_cfg: OptimConfig, run_dir: Path, accelerator: Accelerator,
          *, resume: bool = False) -> dict[str, Any]:
    """Run the task to its planned step count; returns the summary (also written to summary.json)."""
    return _Trainer(task, train_cfg, optim_cfg, run_dir, accelerator).run(resume)
