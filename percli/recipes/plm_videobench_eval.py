"""PLM-VideoBench (Cho et al., 2025) of any PerceptionLM percli can load: FGQA, SGQA, RCap, RTLoc and RDCap with
the benchmark's prompts, frame sampling, red region boxes, greedy generation budgets and metrics.

The model answers every question first (prompts: :mod:`percli.core.plm_videobench_prompts`, videos:
:mod:`percli.recipes.plm_videobench_media`), then each task is scored (:mod:`percli.core.plm_videobench`): FGQA
MBAcc and RTLoc meanR/mIoU need no judge; SGQA accuracy, the RCap judge score and RDCap SODA_c ask an LLM judge
(--judge-endpoint URL --judge-model NAME: an OpenAI-compatible chat endpoint such as a local vLLM;
--judge-checkpoint PATH: a PerceptionLM used text-only). --judge none runs only FGQA and RTLoc.

Annotations: ``--annotations TASK=FILE`` (repeat; .jsonl, .parquet or .json) or a folder laid out as the hub data
set ``facebook/PLM-VideoBench`` (``<task>/plm_<task>_<split>.jsonl`` or ``.parquet``, region boxes in
``metadata/metadata_<split>.jsonl``). Videos: ``--media-root DIR`` for every task or ``TASK=DIR`` (``stc=DIR``:
the three SA-V region tasks), default the annotation file's folder.

Run dir: ``<task>/predictions.jsonl`` (``uid``, ``prompt``, ``raw`` generation and the scored ``prediction``,
which drops one trailing ``.`` as lmms-eval's PLM model does), appended batch by batch and flushed to disk, so
``--resume`` asks the model only the questions not answered yet (a half-written last line is dropped);
``<task>/scores.jsonl`` (one record per question) and ``summary.json`` (``metrics``: the headline figures;
``benchmark``: the figures under lmms-eval's names; ``tasks``: every count; ``judge`` and its prompt versions).
A video that cannot be read, or a prompt longer than the model's context, is counted and skipped; the
question then has no prediction and counts as wrong. A judge that cannot be reached stops the run (exit 2)
with the predictions kept: start it and continue with --resume (the judge is asked again for every task).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.plm_videobench import TASKS
from percli.core.plm_videobench_prompts import JUDGED_TASKS, MAX_NEW_TOKENS, REGION_TASKS

HEADLINE = {"fgqa": ("MBAcc",), "sgqa": ("accuracy",), "rcap": ("judge_score",), "rtloc": ("meanR", "mIoU"),
            "rdcap": ("SODA_c",)}
"""The figures each task reports in the paper's tables (percli's metric names)."""
MAX_NEW_TOKENS_LIMIT = 4096
ANNOTATION_SUFFIXES = (".jsonl", ".parquet", ".json", ".jsonl.gz")


@dataclasses.dataclass
class Config:
    checkpoint: str = ""
    """The model under test: a PLM release folder or a `percli finetune plm` run / checkpoint."""
    tokenizer: str | None = None
    """Where the model's vocabulary is read from, when not beside the checkpoint."""
    tasks: list[str] | str = "all"
    """Comma-separated tasks, or all: every task with annotations (judge-free ones only with --judge none)."""
    annotations: list[str] = dataclasses.field(default_factory=list)
    """TASK=FILE, or a folder in the hub layout."""
    split: str = "test"
    """The split a hub-layout folder is read at (test, val)."""
    region_boxes: str | None = None
    """The region metadata of RCap/RTLoc/RDCap (default: <folder>/metadata/metadata_<split>.jsonl)."""
    media_root: list[str] = dataclasses.field(default_factory=list)
    """DIR for every task, or TASK=DIR (stc=DIR: rcap, rtloc, rdcap)."""
    limit: int | None = None
    """Only the first N questions of each task."""
    max_new_tokens: int | None = None
    """Tokens generated per answer; default each task's budget (FGQA/SGQA/RTLoc 16, RCap/RDCap 512)."""
    num_frames: int = 32
    """Frames of the SGQA and region-task videos, and the frame range the region prompts and metrics use."""
    batch_size: int = 8
    num_workers: int = 4
    """Processes decoding videos ahead of the model."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU, float32 on the CPU."""
    judge: Literal["auto", "none"] = "auto"
    """none: run only the judge-free tasks (fgqa, rtloc)."""
    judge_endpoint: str | None = None
    """An OpenAI-compatible chat-completions endpoint, e.g. http://localhost:8000/v1."""
    judge_model: str | None = None
    """The model name the endpoint serves."""
    judge_api_key_env: str | None = None
    """An environment variable holding the endpoint's API key (sent as a Bearer token)."""
    judge_timeout: float = 120.0
    judge_checkpoint: str | None = None
    """A PerceptionLM used as a text-only judge (percli-loadable, like --checkpoint)."""
    judge_prompt_version: str = "v1"
    """The shipped judge prompts' version (percli/core/plm_judge_prompts/)."""
    judge_lenient: bool = False
    """Also read a JSON verdict inside a longer judge reply (local judges that add prose or code fences)."""


def task_names(value: list[str] | str) -> list[str]:
    """The tasks of a list or a comma-separated string, in the benchmark's order when ``all``."""
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    return list(TASKS) if names == ["all"] else names


def _pairs(items: list[str], key: str, allowed: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """({name: value} of NAME=VALUE items whose name is allowed, [the other items])."""
    named, plain = {}, []
    for item in items:
        name, sep, value = item.partition("=")
        if sep and name.strip().lower() in allowed:
            if not value.strip():
                raise ConfigError(f"{key}: {item!r} names no path after '='")
            named[name.strip().lower()] = value.strip()
        elif sep and os.sep not in name and not Path(item).exists():
            raise ConfigError(f"{key}: {item!r}: unknown task {name!r}; use one of {', '.join(allowed)}")
        else:
            plain.append(item)
    return named, plain


def judge_kind(cfg: Config) -> str:
    """``endpoint``, ``checkpoint`` or ``none``."""
    if cfg.judge == "none":
        return "none"
    return "endpoint" if cfg.judge_endpoint else "checkpoint" if cfg.judge_checkpoint else "none"


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; give the model under test (a PLM release folder or a "
                          "`percli finetune plm` run)")
    tasks = task_names(cfg.tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks: unknown {unknown or 'empty list'}; choose from {', '.join(TASKS)} or all")
    _pairs(cfg.annotations, "annotations", TASKS)
    _pairs(cfg.media_root, "media_root", (*TASKS, "stc"))
    for key, low in (("batch_size", 1), ("num_frames", 1), ("limit", 1), ("num_workers", 0)):
        value = getattr(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{key}: got {value}; expected an integer >= {low}")
    if cfg.max_new_tokens is not None and not 1 <= cfg.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise ConfigError(f"max_new_tokens: got {cfg.max_new_tokens}; expected 1 to {MAX_NEW_TOKENS_LIMIT} (the "
                          "benchmark's budgets are 16 and 512)")
    if cfg.judge_endpoint and cfg.judge_checkpoint:
        raise ConfigError("judge_endpoint: give --judge-endpoint or --judge-checkpoint, not both")
    if cfg.judge == "none" and (cfg.judge_endpoint or cfg.judge_checkpoint):
        raise ConfigError("judge: --judge none runs without a judge; drop --judge-endpoint/--judge-checkpoint")
    if cfg.judge_endpoint and not cfg.judge_model:
        raise ConfigError("judge_model: not set; --judge-endpoint needs the model name the server serves "
                          "(--judge-model)")
    if cfg.judge_endpoint and not cfg.judge_endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"judge_endpoint: {cfg.judge_endpoint!r} is not an http(s) URL; e.g. "
                          "http://localhost:8000/v1")
    if cfg.judge_api_key_env and cfg.judge_api_key_env not in os.environ:
        raise ConfigError(f"judge_api_key_env: the environment variable {cfg.judge_api_key_env} is not set")
    if cfg.judge_checkpoint and not Path(cfg.judge_checkpoint).expanduser().exists():
        raise ConfigError(f"judge_checkpoint: {cfg.judge_checkpoint} does not exist")
    if not cfg.judge_timeout > 0:
        raise ConfigError(f"judge_timeout: got {cfg.judge_timeout}; expected seconds > 0")
    judged = [t for t in tasks if t in JUDGED_TASKS]
    if judged and not _all(cfg) and judge_kind(cfg) == "none":
        why = "--judge none runs without one" if cfg.judge == "none" else "none is given"
        raise ConfigError(f"tasks: {', '.join(judged)} need an LLM judge and {why}; give --judge-endpoint URL "
                          "--judge-model NAME or --judge-checkpoint PATH, or run --tasks fgqa,rtloc --judge none")


def _all(cfg: Config) -> bool:
    return isinstance(cfg.tasks, str) and cfg.tasks.strip().lower() == "all"


# ---------------------------------------------------------------------------------------------
# What each task reads


@dataclasses.dataclass
class TaskInputs:
    task: str
    annotations: Path
    media_root: str | None
    samples: list


def _hub_file(folder: Path, name: str, suffixes: tuple[str, ...] = ANNOTATION_SUFFIXES) -> Path | None:
    return next((folder / f"{name}{suffix}" for suffix in suffixes if (folder / f"{name}{suffix}").is_file()), None)


def annotation_files(cfg: Config) -> tuple[dict[str, Path], Path | None]:
    """({task: annotation file} of the TASK=FILE items and hub-layout folders, the region-box file if found).

    Raises:
        FileNotFoundError: a folder that does not exist.
    """
    files, folders = _pairs(cfg.annotations, "annotations", TASKS)
    paths = {task: Path(path).expanduser() for task, path in files.items()}
    boxes = Path(cfg.region_boxes).expanduser() if cfg.region_boxes else None
    for folder in (Path(f).expanduser() for f in folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"--annotations {folder}: no such folder; give a folder in the hub layout "
                                    "(<task>/plm_<task>_<split>.jsonl) or TASK=FILE")
        for task in TASKS:
            found = _hub_file(folder, f"{task}/plm_{task}_{cfg.split}") or _hub_file(folder, f"plm_{task}_{cfg.split}")
            if found is not None:
                paths.setdefault(task, found)
        boxes = boxes or _hub_file(folder, f"metadata/metadata_{cfg.split}", (".jsonl", ".parquet"))
    return paths, boxes


def _tasks_to_run(cfg: Config, paths: dict[str, Path], log: Any) -> list[str]:
    wanted = task_names(cfg.tasks)
    if not _all(cfg):  # validate() refused named judged tasks without a judge
        missing = [t for t in wanted if t not in paths]
        if missing:
            raise ConfigError(f"annotations: no annotation file for {', '.join(missing)}; give --annotations "
                              "TASK=FILE or a folder in the hub layout (<task>/plm_<task>_<split>.jsonl)")
        return wanted
    wanted = [t for t in wanted if t in paths]
    dropped = [t for t in wanted if t in JUDGED_TASKS and judge_kind(cfg) == "none"]
    if dropped and cfg.judge != "none":
        raise ConfigError(f"judge_endpoint: {', '.join(dropped)} need an LLM judge; give --judge-endpoint URL "
                          "--judge-model NAME or --judge-checkpoint PATH, or --judge none to run only fgqa and rtloc")
    if dropped:
        log(f"--judge none: skipping {', '.join(dropped)} (they need an LLM judge)")
    if len(dropped) == len(wanted):
        raise ConfigError("annotations: no task to run; give --annotations TASK=FILE or a folder holding "
                          f"<task>/plm_<task>_{cfg.split}.jsonl")
    return [t for t in wanted if t not in dropped]


def plan_tasks(cfg: Config, log: Any = print) -> tuple[list[TaskInputs], Path | None]:
    """The tasks to run with their samples (the first `limit`) and video folders, and the region-box file when a
    region task runs.

    Raises:
        ConfigError / FileNotFoundError: a named task without annotations, a region task without boxes, a judged
            task without a judge, nothing to run.
    """
    from percli.core.data.plm_videobench import read_plm_videobench

    paths, boxes = annotation_files(cfg)
    wanted = _tasks_to_run(cfg, paths, log)
    named_roots, roots = _pairs(cfg.media_root, "media_root", (*TASKS, "stc"))
    if len(roots) > 1:
        raise ConfigError(f"media_root: {len(roots)} folders for every task; give one DIR, or TASK=DIR each")
    plans = []
    for task in wanted:
        root = named_roots.get(task) or (named_roots.get("stc") if task in REGION_TASKS else None)
        root = root or (roots[0] if roots else str(paths[task].parent))
        plans.append(TaskInputs(task, paths[task], root, read_plm_videobench(task, paths[task])[: cfg.limit]))
    if not any(t in REGION_TASKS for t in wanted):
        return plans, None
    if boxes is None:
        raise ConfigError("region_boxes: rcap, rtloc and rdcap draw the subject's box; give --region-boxes "
                          f"metadata_{cfg.split}.jsonl (the hub's metadata/ folder)")
    return plans, boxes


# ---------------------------------------------------------------------------------------------
# Predictions: read (resume) and append


def read_predictions(path: Path, log: Any = print) -> dict[str, dict[str, Any]]:
    """{uid: record} of a predictions.jsonl; a half-written last line (a crash mid-write) is dropped from the file.

    Raises:
        ValueError: a complete line that is not a prediction record.
    """
    if not path.is_file():
        return {}
    from percli.core.rundir import write_text_atomic

    text = path.read_text(encoding="utf-8")
    *lines, tail = text.split("\n")
    if tail:
        log(f"{path}: dropping a half-written last line ({len(tail)} characters); that question is asked again")
        write_text_atomic(path, "".join(line + "\n" for line in lines))
    records = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            uid = str(record["uid"])
            if not isinstance(record.get("prediction"), str):
                raise ValueError("no prediction text")
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} line {number} is not a prediction record ({e}); remove the line, or start a "
                             "new run with --overwrite") from None
        records[uid] = record
    return records


class _Videos:
    """Pending samples of a task -> (position, video [T, 3, S, S] or None, bad-input record or None)."""

    def __init__(self, plan: TaskInputs, pending: list, boxes: dict, size: int, num_frames: int,
                 max_video_frames: int, backend: str):
        self.plan, self.pending, self.boxes = plan, pending, boxes
        self.size, self.num_frames, self.max_video_frames, self.backend = size, num_frames, max_video_frames, backend

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, index: int) -> tuple[int, Any, dict[str, str] | None]:
        from percli.core.data.images import BadSample
        from percli.recipes.plm_videobench_media import load_task_video

        sample = self.pending[index]
        boxes = self.boxes.get((sample.video, getattr(sample, "masklet_id", None)), {})
        try:
            video = load_task_video(self.plan.task, sample, self.plan.media_root, self.size, self.num_frames,
                                    self.max_video_frames, boxes, self.backend)
        except BadSample as bad:
            return index, None, {"uid": sample.uid, "path": bad.path, "reason": bad.reason}
        return index, video, None


def _as_list(batch: list) -> list:
    return batch


def answer_batch(ready: list[tuple[Any, str, list[int], list[int], Any]], model: Any, tokenizer: Any,
                 budget: int) -> list[dict[str, str]]:
    """Greedy answers to (sample, prompt, ids, image_pos, video) -> prediction records."""
    from percli.core.plm_videobench_prompts import scored_text

    generated = model.generate([r[2] for r in ready], [r[4] for r in ready], image_pos=[r[3] for r in ready],
                               image_token_id=tokenizer.image_id, stop_ids=tokenizer.stop_ids,
                               max_new_tokens=budget, greedy=True)
    records = []
    for (sample, prompt, *_), new_ids in zip(ready, generated):
        raw = tokenizer.decode(new_ids)
        records.append({"uid": sample.uid, "prompt": prompt, "raw": raw, "prediction": scored_text(raw)})
    return records


def predict_task(plan: TaskInputs, model: Any, processor: Any, boxes: dict, cfg: Config, ctx: RunContext
                 ) -> dict[str, Any]:
    """Ask the model every question of `plan` not yet in ``<task>/predictions.jsonl``; returns the counts."""
    from torch.utils.data import DataLoader

    from percli.core.plm_videobench_prompts import task_prompt

    out_path = ctx.run_dir / plan.task / "predictions.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_predictions(out_path, ctx.log) if ctx.resume else {}
    pending = [s for s in plan.samples if s.uid not in done]
    budget, dtype = cfg.max_new_tokens or MAX_NEW_TOKENS[plan.task], next(model.parameters()).dtype
    settings = processor.config
    videos = _Videos(plan, pending, boxes, settings.image_size, cfg.num_frames, settings.max_video_frames,
                     settings.video_backend)
    loader = DataLoader(videos, batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=_as_list)
    bad, too_long, written = [], [], 0
    ctx.log(f"{plan.task}: {len(plan.samples)} questions, {len(done)} already answered, max {budget} new tokens")
    with open(out_path, "a", encoding="utf-8") as out, \
            ctx.progress(plan.task, len(plan.samples), "questions", completed=len(plan.samples) - len(pending)) as bar:
        for batch in loader:
            ready = []
            for index, video, problem in batch:
                if problem is not None:
                    bad.append(problem)
                    continue
                prompt = task_prompt(plan.task, pending[index], cfg.num_frames)
                ids, image_pos = processor.prompt(prompt, video)
                if len(ids) >= model.max_seqlen:
                    too_long.append({"uid": pending[index].uid, "tokens": len(ids)})
                    continue
                ready.append((pending[index], prompt, ids, image_pos, video.to(dtype)))
            if ready:
                records = answer_batch(ready, model, processor.tokenizer, budget)
                # whole lines in one write, then to disk: a crash loses at most this batch (one torn line)
                out.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                out.flush()
                os.fsync(out.fileno())
                written += len(records)
            bar.advance(len(batch), records=len(ready))
    if bad:
        ctx.log(f"{plan.task}: {len(bad)} unreadable video(s) skipped, e.g. {bad[0]['path']} ({bad[0]['reason']})")
    if too_long:
        ctx.log(f"{plan.task}: {len(too_long)} prompt(s) longer than the context of {model.max_seqlen} tokens skipped")
    return {"predicted": written, "resumed": len(done), "unreadable_videos": bad, "prompt_too_long": too_long,
            "max_new_tokens": budget}


# ---------------------------------------------------------------------------------------------
# Judges and scores


def _device_and_dtype(cfg: Config) -> tuple[str, Any]:
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if cfg.dtype != "auto":
        return device, getattr(torch, cfg.dtype)
    return device, torch.bfloat16 if device.startswith("cuda") else torch.float32


def plm_text_judge(checkpoint: str, tokenizer: str | None, device: str, dtype: Any, max_tokens: int) -> Any:
    """A PerceptionLM as a text-only judge: the judge prompt as one question, greedy, at most `max_tokens`."""
    from percli.core.plm_judges import JudgeUnavailable, TextJudge
    from percli.recipes.plm_common import load_plm

    model, processor, _ = load_plm(checkpoint, tokenizer, device=device, dtype=dtype)
    vocab = processor.tokenizer

    def complete(text: str) -> str:
        ids, _ = processor.prompt(text)
        if len(ids) >= model.max_seqlen:
            raise JudgeUnavailable(f"judge checkpoint {checkpoint}: a judge prompt of {len(ids)} tokens does not fit "
                                   f"its context of {model.max_seqlen} tokens; use a judge with a longer context")
        new_ids = model.generate([ids], [None], image_pos=[[]], image_token_id=vocab.image_id,
                                 stop_ids=vocab.stop_ids, max_new_tokens=max_tokens, greedy=True)[0]
        return vocab.decode(new_ids)

    return TextJudge(complete, "checkpoint", checkpoint=str(checkpoint), max_tokens=max_tokens)


def build_judge(cfg: Config, device: str, dtype: Any) -> Any:
    """The judge the config names (None for --judge none): a callable with ``messages`` and ``describe()``."""
    from percli.core.plm_judges import JUDGE_MAX_TOKENS, EndpointJudge

    kind = judge_kind(cfg)
    if kind == "endpoint":
        key = os.environ.get(cfg.judge_api_key_env) if cfg.judge_api_key_env else None
        return EndpointJudge(cfg.judge_endpoint, cfg.judge_model, api_key=key, timeout=cfg.judge_timeout)
    if kind == "checkpoint":
        return plm_text_judge(cfg.judge_checkpoint, None, device, dtype, JUDGE_MAX_TOKENS)
    return None


def score_task(plan: TaskInputs, predictions: dict[str, str], judge: Any, cfg: Config) -> Any:
    """The task's :class:`TaskScore` on `predictions` ({uid: scored text}; absent uids count as wrong)."""
    from percli.core import plm_videobench as bench

    if plan.task == "fgqa":
        return bench.score_fgqa(plan.samples, predictions)
    if plan.task == "rtloc":
        return bench.score_rtloc(plan.samples, predictions, num_frames=cfg.num_frames)
    kind = "sgqa" if plan.task == "sgqa" else "caption"
    options = {"prompt": bench.load_judge_prompt(kind, cfg.judge_prompt_version), "messages": judge.messages,
               "lenient": cfg.judge_lenient}
    if plan.task == "rdcap":
        return bench.score_rdcap(plan.samples, predictions, judge, num_frames=cfg.num_frames, **options)
    return (bench.score_sgqa if plan.task == "sgqa" else bench.score_rcap)(plan.samples, predictions, judge, **options)


def _task_summary(plan: TaskInputs, scores: Any, counts: dict[str, Any]) -> dict[str, Any]:
    return {**scores.summary, "annotations": str(plan.annotations), "media_root": plan.media_root,
            "predicted": counts["predicted"], "resumed": counts["resumed"],
            "unreadable_videos": len(counts["unreadable_videos"]), "prompt_too_long": len(counts["prompt_too_long"]),
            "max_new_tokens": counts["max_new_tokens"]}


def score_all(plans: list[TaskInputs], counts: dict[str, dict[str, Any]], judge: Any, cfg: Config,
              ctx: RunContext) -> dict[str, Any]:
    """Score every task on its predictions.jsonl (judge-free tasks first), write ``<task>/scores.jsonl`` and return
    the summary's figures. A judge that cannot answer stops the run (exit 2) with what was scored so far."""
    from percli.core.engine import RunStopped
    from percli.core.plm_judges import JudgeUnavailable
    from percli.core.plm_videobench_prompts import lmms_eval_figures
    from percli.core.rundir import write_jsonl_atomic

    metrics, benchmark, tasks, prompts = {}, {}, {}, {}
    for plan in sorted(plans, key=lambda p: p.task in JUDGED_TASKS):
        stored = read_predictions(ctx.run_dir / plan.task / "predictions.jsonl", ctx.log)
        try:
            scores = score_task(plan, {uid: r["prediction"] for uid, r in stored.items()}, judge, cfg)
        except JudgeUnavailable as e:
            partial = {"status": "failed", "error": str(e), "metrics": metrics, "tasks": tasks}
            raise RunStopped(f"{plan.task}: {e}. The predictions are kept in {ctx.run_dir}; continue with --resume",
                             2, partial) from None
        write_jsonl_atomic(ctx.run_dir / plan.task / "scores.jsonl", scores.per_sample)
        tasks[plan.task] = _task_summary(plan, scores, counts[plan.task])
        metrics[plan.task] = {name: scores.summary[name] for name in HEADLINE[plan.task]}
        benchmark[plan.task] = lmms_eval_figures(plan.task, scores.summary)
        if "judge_prompt" in scores.summary:
            prompts["sgqa" if plan.task == "sgqa" else "caption"] = scores.summary["judge_prompt"]
        ctx.log(f"{plan.task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[plan.task].items()))
    order = [p.task for p in plans]  # the benchmark's
    return {"metrics": {t: metrics[t] for t in order}, "benchmark": {f"{t}_test": benchmark[t] for t in order},
            "tasks": {t: tasks[t] for t in order}, "judge_prompts": prompts}


def _check_boxes(plans: list[TaskInputs], boxes: dict, path: Path | None) -> None:
    for plan in (p for p in plans if p.task in REGION_TASKS):
        lacking = next((s for s in plan.samples if (s.video, s.masklet_id) not in boxes), None)
        if lacking is not None:
            raise ValueError(f"{path} has no box track for video {lacking.video} masklet {lacking.masklet_id} "
                             f"({plan.task} uid {lacking.uid}); give the metadata file of the same split")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    from percli.core.data.plm_videobench import read_region_boxes
    from percli.recipes.plm_common import load_plm

    if ctx.world > 1:
        raise ValueError("percli eval plm-videobench runs in one process; start it without accelerate launch / "
                         "torchrun (split a large benchmark with --tasks, one process per task)")
    plans, boxes_path = plan_tasks(cfg, ctx.log)
    boxes = read_region_boxes(boxes_path) if boxes_path else {}
    _check_boxes(plans, boxes, boxes_path)
    device, dtype = _device_and_dtype(cfg)
    model, processor, meta = load_plm(cfg.checkpoint, cfg.tokenizer, device=device, dtype=dtype)
    ctx.log(f"model {cfg.checkpoint} on {device} ({str(dtype).removeprefix('torch.')}); tasks "
            f"{', '.join(p.task for p in plans)}")
    counts = {plan.task: predict_task(plan, model, processor, boxes, cfg, ctx) for plan in plans}
    del model  # a judge checkpoint loads next
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    judge = build_judge(cfg, device, dtype) if any(p.task in JUDGED_TASKS for p in plans) else None
    summary = score_all(plans, counts, judge, cfg, ctx)
    bad = [b for c in counts.values() for b in c["unreadable_videos"]]
    return {**summary, "judge": judge.describe() if judge is not None else None,
            "bad_inputs": {"count": len(bad), "files": bad[:100]}, "checkpoint": cfg.checkpoint,
            "model": meta.get("name"), "num_frames": cfg.num_frames, "questions": sum(len(p.samples) for p in plans),
            "predicted": sum(c["predicted"] for c in counts.values()),
            "resumed": sum(c["resumed"] for c in counts.values())}
