"""Scores generated speech as the VoiceCraft paper does: WER and CER of an offline recogniser against the
transcript, speaker similarity (cosine of speaker embeddings) to the voice prompt or else the reference, and
mel-cepstral distortion (MCD, dB) to the reference: on the unedited regions for an edit (before its
span aligned at the start, after it aligned at the end, frames paired 1:1), on the whole utterance
through DTW for a synthesis. Definitions: `percli.tts.speech_metrics`.

Input (MANIFEST): a JSONL or CSV manifest of rows {"generated": wav, "reference": wav, "prompt": wav,
"transcript": text, "edit": {"start": s, "end": s} or a list of them, "id": ...} (only generated and
transcript required; "audio"/"text" are read as generated/transcript, so the embedded corpus's own
manifest works; relative paths resolve against the manifest's folder), a `percli tts edit` or
`percli tts synthesize` run dir (its output scored against its input, the edit's span taken from its
summary), or `embedded` (eval.embedded_size espeak-ng sentences, built in the run dir). Unreadable,
empty or silent audio and malformed rows are counted and skipped. Per-row results go to results.jsonl
(atomically); summary.json holds the corpus figures and says why a figure is null.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.metrics import ErrorCounts

GENERATED_KEYS = ("generated", "audio", "output")
TRANSCRIPT_KEYS = ("transcript", "text", "target")


@dataclass
class Scoring:
    asr: str = "pocketsphinx"
    """Recogniser for WER/CER: pocketsphinx (offline English model), or a local Hugging Face ASR folder (Whisper,
    wav2vec2-CTC; needs transformers)."""
    speaker_model: str = "auto"
    """Speaker similarity: auto (Resemblyzer's GE2E weights when `resemblyzer` is installed), a GE2E .pt file, a
    local Hugging Face speaker-verification folder (e.g. wavlm-base-plus-sv; needs transformers), or none."""
    mcd: bool = True
    """Mel-cepstral distortion against the reference (rows with one)."""
    embedded_size: int = 12
    """Sentences scored when the manifest is `embedded`."""
    device: str | None = None
    """torch device of the Hugging Face / speaker models (default: cuda if available, else cpu)."""


@dataclass
class Config:
    manifest: str | None = None
    """A JSONL/CSV manifest of {generated, reference, prompt, transcript, edit, id} rows, a `tts edit` /
    `tts synthesize` run dir, or `embedded`."""
    eval: Scoring = field(default_factory=Scoring)


def validate(cfg: Config) -> None:
    if not cfg.manifest:
        raise ConfigError("manifest: not set; pass a JSONL/CSV manifest of {generated, transcript, ...} rows, a "
                          "`percli tts edit|synthesize` run dir, or `embedded`")
    if cfg.manifest != "embedded" and not Path(cfg.manifest).expanduser().exists():
        raise ConfigError(f"manifest: {cfg.manifest}: no such file or directory; pass a JSONL/CSV manifest, a tts run "
                          "dir, or `embedded`")
    if cfg.eval.embedded_size < 1:
        raise ConfigError(f"eval.embedded_size: got {cfg.eval.embedded_size}; expected at least 1")
    if not cfg.eval.asr:
        raise ConfigError("eval.asr: not set; pass pocketsphinx or a local Hugging Face ASR folder")


# --------------------------------------------------------------------------------------------
# Rows


@dataclass
class Row:
    id: str
    generated: Path
    transcript: str
    reference: Path | None = None
    prompt: Path | None = None
    edits: list[tuple[float, float]] | None = None  # spans of the generated audio, seconds


class BadRow(ValueError):
    pass


def _edits(value: Any) -> list[tuple[float, float]] | None:
    """``{"start", "end"}``, ``[s, e]``, a list of either, or a CSV cell ``"s-e"`` -> sorted spans; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):  # a CSV cell: "start-end" or JSON
        try:
            value = json.loads(value) if value.strip().startswith(("[", "{")) else [
                float(v) for v in value.split("-", 1)]
        except ValueError:
            raise BadRow(f"'edit' {value!r} is not start-end seconds or JSON") from None
    items = [value] if isinstance(value, dict) or (isinstance(value, list) and len(value) == 2
                                                   and all(isinstance(v, int | float) for v in value)) else value
    if not isinstance(items, list) or not items:
        raise BadRow("'edit' must be {\"start\": s, \"end\": s}, [s, e] or a non-empty list of them")
    spans = []
    for item in items:
        start, end = (item.get("start"), item.get("end")) if isinstance(item, dict) else (
            item if isinstance(item, list) and len(item) == 2 else (None, None))
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)) \
                or not 0 <= start <= end:
            raise BadRow(f"'edit' span {item!r} is not 0 <= start <= end seconds")
        spans.append((float(start), float(end)))
    return sorted(spans)


def row_from_record(record: dict, base: Path, fallback_id: str) -> Row:
    """A manifest record as a Row (paths resolved against ``base``); BadRow says what is wrong."""
    from percli.core.data.paths import resolve_manifest_path

    def path(key: str) -> Path | None:
        value = record.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise BadRow(f"{key!r} is not a path string")
        return Path(resolve_manifest_path(base, value))

    generated_key = next((k for k in GENERATED_KEYS if record.get(k)), None)
    transcript_key = next((k for k in TRANSCRIPT_KEYS if isinstance(record.get(k), str)), None)
    if generated_key is None:
        raise BadRow(f"no {' / '.join(map(repr, GENERATED_KEYS))} audio path")
    if transcript_key is None or not record[transcript_key].strip():
        raise BadRow(f"no {' / '.join(map(repr, TRANSCRIPT_KEYS))} text")
    rid = record.get("id", record.get("key", fallback_id))
    return Row(str(rid), path(generated_key), record[transcript_key], path("reference"), path("prompt"),
               _edits(record.get("edit")))


def _read_csv(path: Path) -> list[dict]:
    """Rows of a CSV manifest with a header; empty cells are absent values."""
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if v not in (None, "")} for r in csv.DictReader(f)]


def _run_dir_rows(folder: Path) -> list[Row]:
    """The one row of a `percli tts edit` / `tts synthesize` run dir (its summary.json and config.yaml)."""
    import yaml

    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        return _tts_run_row(folder, summary, config)
    except (KeyError, IndexError, TypeError, AttributeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{folder}: summary.json / config.yaml are not those of a completed `percli tts "
                         f"edit|synthesize` run ({type(e).__name__}: {e}); pass a manifest of rows instead") from None


def _tts_run_row(folder: Path, summary: dict, config: dict) -> list[Row]:
    if summary.get("status") != "completed" or not summary.get("output"):
        raise ValueError(f"{folder}: its summary.json has no completed output; re-run the tts job")
    generated = Path(summary["output"])
    if config.get("target"):  # tts edit: the output says the target; its spans moved by the length change
        spans = summary["edit_span_s"]
        shift = summary["duration_s"] - summary["original_duration_s"]
        # one span from the first edit's start to the last one's end, in the generated audio's time
        edit = [(spans[0][0], max(spans[-1][1] + shift, spans[0][0]))]
        return [Row(folder.name, generated, config["target"], Path(config["audio"]), None, edit)]
    if config.get("prompt_text") is not None and config.get("text"):
        text = f"{summary['prompt_text']} {config['text']}" if config.get("include_prompt") else config["text"]
        return [Row(folder.name, generated, text, None, Path(config["prompt"]))]
    raise ValueError(f"{folder}: not a `percli tts edit` or `percli tts synthesize` run dir (its config.yaml has "
                     "neither target nor prompt_text)")


def read_rows(manifest: Path, bad: Any) -> list[Row]:
    """Rows of a manifest file, a tts run dir or a folder holding manifest.jsonl; malformed ones counted in ``bad``."""
    from percli.core.data.shards import read_records

    if manifest.is_dir():
        if (manifest / "summary.json").is_file() and (manifest / "config.yaml").is_file():
            return _run_dir_rows(manifest)
        if not (manifest / "manifest.jsonl").is_file():
            raise ValueError(f"{manifest}: a folder without summary.json + config.yaml (a tts run dir) or "
                             "manifest.jsonl; pass a manifest file")
        manifest = manifest / "manifest.jsonl"
    if manifest.suffix.lower() == ".csv":
        numbered = [(i + 2, r) for i, r in enumerate(_read_csv(manifest))]  # line numbers after the header
    else:
        numbered = [(line, record) for line, record, _ in read_records(manifest, None, bad)]
    rows = []
    for line, record in numbered:
        try:
            rows.append(row_from_record(record, manifest.parent, f"line{line}"))
        except BadRow as e:
            bad.add(manifest, line, str(e))
    return rows


# --------------------------------------------------------------------------------------------
# Scoring


def _load(path: Path):
    from percli.core.data.audio import load_audio
    from percli.tts.speech_models import RATE

    return load_audio(path, RATE)[0].numpy()


def score_row(row: Row, recognizer: Any, speaker: Any, use_mcd: bool) -> tuple[dict, Any, Any]:
    """Per-row figures; raises BadSample for unreadable audio."""
    from percli.tts import speech_metrics as sm
    from percli.tts.speech_models import cosine

    generated = _load(row.generated)
    reference = _load(row.reference) if row.reference else None
    prompt = _load(row.prompt) if row.prompt else None
    hypothesis = recognizer(generated)
    words, chars = sm.word_errors(row.transcript, hypothesis), sm.char_errors(row.transcript, hypothesis)
    out: dict[str, Any] = {"id": row.id, "generated": str(row.generated), "transcript": row.transcript,
                           "hypothesis": hypothesis, "wer": words.rate, "cer": chars.rate,
                           "word_errors": words.as_dict(), "char_errors": chars.as_dict(),
                           "duration_s": len(generated) / sm.MCD_RATE}
    voice = prompt if prompt is not None else reference  # the voice to clone, else the original speaker
    if speaker is not None and voice is not None:
        out["speaker_similarity"] = cosine(speaker.embed(generated), speaker.embed(voice))
        out["speaker_reference"] = "prompt" if prompt is not None else "reference"
    if use_mcd and reference is not None:
        if row.edits:
            mcd, frames = sm.edit_mcd(generated, reference, row.edits)
            out["mcd_mode"] = "unedited regions (1:1)"
        else:
            mcd, frames = sm.dtw_mcd(generated, reference)
            out["mcd_mode"] = "whole utterance (DTW)"
        out["mcd_db"], out["mcd_frames"] = (mcd if frames else None), frames
    return out, words, chars


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run(cfg: Config, ctx: RunContext) -> dict:
    import torch

    from percli.core.data.images import BadSample
    from percli.core.data.shards import BadRecords
    from percli.core.rundir import write_jsonl_atomic
    from percli.tts.speech_models import MissingModel, load_recognizer, load_speaker_model

    device = cfg.eval.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.manifest == "embedded":
        from percli.tts.corpus import build_corpus

        manifest = build_corpus(ctx.run_dir / "embedded_corpus", cfg.eval.embedded_size)
    else:
        manifest = Path(cfg.manifest).expanduser()
    bad = BadRecords()
    rows = read_rows(manifest, bad)
    if not rows:
        raise ValueError(f"{manifest}: no usable row ({bad.count} malformed: {bad.examples[:2]}); each row needs "
                         "'generated' (or 'audio') and 'transcript' (or 'text')")
    try:
        recognizer = load_recognizer(cfg.eval.asr, device)
    except MissingModel as e:
        raise ValueError(str(e)) from None
    speaker, speaker_reason = None, None
    if cfg.eval.speaker_model == "none":
        speaker_reason = "eval.speaker_model=none"
    else:
        try:
            speaker = load_speaker_model(cfg.eval.speaker_model, device)
        except MissingModel as e:
            if cfg.eval.speaker_model != "auto":
                raise ValueError(str(e)) from None
            speaker_reason = str(e)
    ctx.log(f"scoring {len(rows)} rows of {manifest} (ASR {recognizer.name}; speaker model "
            f"{speaker.name if speaker else 'none'})")

    results, skipped = [], []
    words, chars = ErrorCounts(), ErrorCounts()
    with ctx.progress("eval tts", len(rows), unit="rows") as progress:
        for row in rows:
            try:
                result, row_words, row_chars = score_row(row, recognizer, speaker, cfg.eval.mcd)
            except BadSample as e:
                reason = e.args[1] if len(e.args) > 1 else str(e)
                skipped.append({"id": row.id, "file": str(e.args[0]), "reason": reason})
                ctx.log(f"[yellow]skipped {row.id}: {e.args[0]}: {reason}[/]")
            else:
                results.append(result)
                words, chars = words + row_words, chars + row_chars
            progress.advance(1)
    results_path = ctx.run_dir / "results.jsonl"
    write_jsonl_atomic(results_path, results)
    if not results:
        raise ValueError(f"{manifest}: none of the {len(rows)} rows has readable audio ({skipped[:2]}); check the "
                         "paths (relative ones resolve against the manifest's folder)")

    similarities = [r["speaker_similarity"] for r in results if "speaker_similarity" in r]
    if speaker is not None and not similarities:
        speaker_reason = "no row has a reference or prompt recording"
    mcds = [r["mcd_db"] for r in results if r.get("mcd_db") is not None]
    mcd_reason = None if mcds else ("eval.mcd=false" if not cfg.eval.mcd else "no row has a reference recording")
    modes = sorted({r["mcd_mode"] for r in results if r.get("mcd_db") is not None})
    return {
        "status": "completed", "manifest": str(manifest), "asr": recognizer.name,
        "speaker_model": speaker.name if speaker else None, "speaker_similarity_reason": speaker_reason,
        "mcd_mode": modes, "mcd_reason": mcd_reason,
        "metrics": {"wer": words.rate, "cer": chars.rate, "speaker_similarity": _mean(similarities),
                    "mcd_db": _mean(mcds)},
        "word_errors": words.as_dict(), "char_errors": chars.as_dict(),
        "rows": len(rows) + bad.count, "scored": len(results), "skipped_audio": len(skipped),
        "skipped_audio_examples": skipped[:10], "bad_records": bad.count, "bad_record_examples": bad.examples,
        "speaker_pairs": len(similarities), "mcd_rows": len(mcds), "results": str(results_path),
    }
