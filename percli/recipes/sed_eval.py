"""Sound event detection scores of a PE-A-Frame model on strong labels: segment F1, event F1 and frame AUROC.

Each label's text query scores every frame; spans above ``threshold`` (0.3) are the detected events.
Segment-based F1 on 1 s segments and event-based F1 (200 ms onset collar, offset collar max(200 ms, 20 %))
are computed as sed_eval does (micro and macro), with their error rates, and the frame-level ROC AUC of
the probabilities against the labels (mean over classes) as PE-A-Frame's README reports it. Data: the
embedded held-out clips (default) or a strong-label TSV (AudioSet-Strong / DESED layout) and the folder of
its audio; unreadable files are skipped and counted in ``summary.json``.

Examples:
  percli eval sed model.checkpoint=runs/finetune-pe-a-frame-.../checkpoints/step_0000300
  percli eval sed model.checkpoint=/models/pe-a-frame-small data.source=desed/validation.tsv \\
      data.audio_root=desed/audio/validation data.queries=desed_queries.json
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.rundir import write_json_atomic
from percli.models.pe_av import SPAN_THRESHOLD
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model
from percli.recipes.pe_a_frame import SEDDataSection, query_texts, sed_dataset, sed_scores


@dataclasses.dataclass
class Config:
    model: PEAVModelSection = dataclasses.field(default_factory=lambda: PEAVModelSection(name="pe_a_frame"))
    data: SEDDataSection = dataclasses.field(default_factory=lambda: SEDDataSection(embedded_size=400))
    threshold: float = SPAN_THRESHOLD
    batch_size: int = 16


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    model, tokenizer, meta = load_pe_model(cfg.model, "PEAudioFrame")
    data = dataclasses.replace(cfg.data, val_source=cfg.data.source, val_audio_root=cfg.data.audio_root)
    dataset = sed_dataset(data, "test", model.sampling_rate)
    labels = list(dataset.classes)
    trained = dict(zip(meta.get("labels", []), meta.get("queries", [])))
    queries = [trained.get(label) or text for label, text in zip(labels, query_texts(labels, cfg.data.queries))]
    metrics, bad = sed_scores(model, dataset, tokenizer, labels, queries, cfg.threshold, cfg.batch_size)
    counts = getattr(dataset, "labels", None)
    summary = {"status": "completed", "checkpoint": cfg.model.checkpoint, "data": cfg.data.source,
               "threshold": cfg.threshold, "queries": dict(zip(labels, queries)), "metrics": metrics,
               "run_dir": str(ctx.run_dir), "bad_inputs": {"count": len(bad), "files": bad},
               **({"labels": counts.counts, "bad_records": {"count": counts.counts.get("bad_rows", 0),
                                                            "examples": counts.bad_examples}} if counts else {})}
    write_json_atomic(ctx.run_dir / "summary.json", summary)
    return summary


def validate(cfg: Config) -> None:
    if not cfg.model.checkpoint:
        raise ConfigError("model.checkpoint: not set; give a PE-A-Frame release folder or a `percli finetune "
                          "pe-a-frame` checkpoint")
    cfg.model.check()
    for key in ("source", "audio_root", "queries"):
        value = getattr(cfg.data, key)
        if value and value != "embedded" and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}: {value} does not exist")
