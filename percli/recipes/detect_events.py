"""Sound event detection from text queries with PE-A-Frame: when in each file does each described sound happen.

Every codec frame (25 per second in the releases) is scored against each ``--text`` query,
p = sigmoid(logit_scale * <frame, text> + logit_bias); runs of frames with p above ``--threshold`` (0.3, the
release's default) become (start, end) spans in seconds, end exclusive. Writes ``events.json`` (``-o`` to
choose): one record per file with its duration and spans per query; ``--json`` prints the summary with the
same records. Files that do not decode are skipped and listed in the summary. Without inputs, the embedded
clips' first eight held-out clips are scanned for the model's training vocabulary (a `percli finetune
pe-a-frame` checkpoint remembers its queries).

Examples:
  percli detect events street.wav --text "a dog barking" --text "a siren" --checkpoint /models/pe-a-frame-large
  percli detect events clips/*.mp4 -t "someone whistles" --threshold 0.5 \\
      --checkpoint runs/pe-a-frame/checkpoints/step_0000300 -o found.json
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.audio import load_audio
from percli.core.data.images import BadSample
from percli.core.rundir import write_json_atomic
from percli.core.sed_metrics import spans_from_probs
from percli.models.pe_av import SPAN_THRESHOLD
from percli.models.pe_av_loading import PEAVModelSection, load_pe_model
from percli.recipes.pe_a_frame import _EmbeddedClips, frame_probabilities

EMBEDDED_CLIPS = 8


@dataclasses.dataclass
class Config:
    inputs: list[str] = dataclasses.field(default_factory=list)
    """Audio or video files (none: the embedded held-out clips)."""
    text: list[str] = dataclasses.field(default_factory=list)
    """Text queries, one per sound to find (none: the checkpoint's training queries)."""
    model: PEAVModelSection = dataclasses.field(default_factory=lambda: PEAVModelSection(name="pe_a_frame"))
    threshold: float = SPAN_THRESHOLD
    """Frame probability above which a frame belongs to a span."""
    output: str | None = None
    """Where to write the spans (default RUN_DIR/events.json)."""


def _clips(cfg: Config, rate: int) -> list[tuple[str, Any]]:
    """(name, loader) per input: a loader returns the waveform [1, T] or raises BadSample."""
    if not cfg.inputs:
        embedded = _EmbeddedClips(EMBEDDED_CLIPS, "test", rate)
        return [(f"embedded:{i}", lambda i=i: embedded[i]["waveform"]) for i in range(len(embedded))]

    def read(path: str) -> torch.Tensor:
        if not Path(path).is_file():
            raise BadSample(path, "missing_file: no such file")
        try:
            waveform = load_audio(path, rate)
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported for this file and skipped
            raise BadSample(path, f"unreadable_audio: {err}") from None
        if waveform.numel() == 0 or not waveform.abs().any():
            raise BadSample(path, "silent_audio: no samples or all zeros")
        return waveform

    return [(path, lambda path=path: read(path)) for path in cfg.inputs]


@torch.no_grad()
def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    model, tokenizer, meta = load_pe_model(cfg.model, "PEAudioFrame")
    queries = list(cfg.text or meta.get("queries") or [])
    if not queries:
        raise ConfigError("text: no query; pass --text \"a dog barking\" (one per sound to find)")
    ids, mask = tokenizer(queries)
    hop_s = model.hop_length / model.sampling_rate
    records, bad = [], []
    for name, load in _clips(cfg, model.sampling_rate):
        try:
            waveform = load()
        except BadSample as err:
            bad.append({"path": str(err.path), "reason": str(err.reason)})
            continue
        if waveform.shape[-1] <= model.hop_length:
            bad.append({"path": name, "reason": f"short_audio: {waveform.shape[-1]} samples, fewer than one codec "
                                                f"frame ({model.hop_length})"})
            continue
        logits, _ = frame_probabilities(model, waveform[None], None, ids, mask)
        probs = logits[0].sigmoid()  # [Q, frames]
        events = [{"text": text, "start": round(start, 4), "end": round(end, 4)}
                  for text, track in zip(queries, probs) for start, end in spans_from_probs(track, cfg.threshold,
                                                                                            hop_s)]
        records.append({"file": name, "duration_s": round(waveform.shape[-1] / model.sampling_rate, 4),
                        "events": events})
    output = Path(cfg.output) if cfg.output else ctx.run_dir / "events.json"
    if output.exists() and cfg.output and not ctx.overwrite:
        raise ConfigError(f"output: {output} exists; pass --overwrite to replace it")
    write_json_atomic(output, {"queries": queries, "threshold": cfg.threshold, "files": records})
    summary = {"status": "completed", "checkpoint": cfg.model.checkpoint, "queries": queries,
               "threshold": cfg.threshold, "files": records, "output": str(output), "run_dir": str(ctx.run_dir),
               "bad_inputs": {"count": len(bad), "files": bad}}
    write_json_atomic(ctx.run_dir / "summary.json", summary)
    if not records:
        raise ValueError(f"no input could be read ({len(bad)} skipped, e.g. {bad[:1]})")
    return summary


def validate(cfg: Config) -> None:
    if not cfg.model.checkpoint:
        raise ConfigError("model.checkpoint: not set; pass --checkpoint with a PE-A-Frame release folder "
                          "(config.json + model.safetensors + tokenizer.json) or a `percli finetune pe-a-frame` "
                          "checkpoint")
    cfg.model.check()
    if not 0 < cfg.threshold < 1:
        raise ConfigError(f"threshold: {cfg.threshold} must lie between 0 and 1")
