"""Predictions (--captions) and references (--references) are JSONL files joined on a key field (--key).
Each --field of the predictions is scored on the same joined records, so a captioner's output can be
compared with the alt-texts it started from (--field altogether --field alt_text, as `percli caption
altogether` writes them). With --clip-checkpoint and --images, the CLIP-score of each field is computed
too (reference-free: image vs caption). Unmatched, repeated and malformed records are counted in
summary.json, not fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError
from percli.core.context import RunContext

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class Config:
    captions: str | None = None
    """Predicted captions: JSONL records with the key and each field (e.g. percli caption altogether's output)."""
    references: str | None = None
    """Reference captions: JSONL records with the key and reference_field (a string or a list of strings)."""
    fields: list[str] = field(default_factory=lambda: ["altogether"])
    """Fields of the predictions to score, each on the same joined records."""
    reference_field: str = "caption"
    key: str = "key"
    """Field (a string) that joins predictions and references."""
    clip_checkpoint: str | None = None
    """CLIP for the CLIP-score: a `percli pretrain clip` checkpoint dir / .safetensors, or an open_clip/MetaCLIP
    file with clip_model."""
    clip_model: str | None = None
    """Model name of an official CLIP file, e.g. clip_vit_b32_quickgelu."""
    images: str | None = None
    """Folder of the images (CLIP-score): the records' 'image' paths are relative to it, else <key>.png."""
    batch_size: int = 64
    """CLIP batch size."""


def validate(cfg: Config) -> None:
    for key in ("captions", "references"):
        path = getattr(cfg, key)
        if not path:
            raise ConfigError(f"{key}: not set; pass --{key} with a JSONL file of records with a {cfg.key!r} field")
        if not Path(path).is_file():
            raise ConfigError(f"{key}: {path}: no such file; pass a JSONL file of records with a {cfg.key!r} field")
    if not cfg.fields:
        raise ConfigError("fields: empty; pass --field with the prediction field to score")
    if (cfg.clip_checkpoint is None) != (cfg.images is None):
        raise ConfigError("clip_checkpoint: --clip-checkpoint and --images go together: the CLIP-score needs a "
                          "model and the images")
    if cfg.images is not None and not Path(cfg.images).is_dir():
        raise ConfigError(f"images: {cfg.images} is not a directory; pass the folder holding the images")
    if cfg.clip_checkpoint is not None and not Path(cfg.clip_checkpoint).exists():
        raise ConfigError(f"clip_checkpoint: {cfg.clip_checkpoint}: no such file or directory")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: got {cfg.batch_size}; expected an integer >= 1")


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.captioning.metrics import bleu4, cider_d
    from percli.core.data.shards import BadRecords

    captions, references = Path(cfg.captions), Path(cfg.references)
    bad = BadRecords()
    preds, pred_repeats = _read_keyed(captions, cfg.key, bad)
    refs, ref_repeats = _read_keyed(references, cfg.key, bad)
    joined, unmatched = _join(cfg, preds, refs, bad)
    ctx.log(f"scoring {len(joined)} captions per field ({', '.join(cfg.fields)})")
    reference_lists = [r for _, _, r in joined]
    texts = {f: [pred[f] for _, pred, _ in joined] for f in cfg.fields}
    metrics = {f: {"bleu4": bleu4(texts[f], reference_lists), "cider": cider_d(texts[f], reference_lists)}
               for f in cfg.fields}
    summary: dict[str, Any] = {
        "status": "completed", "captions": str(captions), "references": str(references), "key": cfg.key,
        "reference_field": cfg.reference_field, "scored": len(joined),
        "references_without_prediction": len(refs) - (len(preds) - unmatched),
        "predictions_without_reference": unmatched, "repeated_keys": pred_repeats + ref_repeats,
        "bad_records": bad.count, "bad_record_examples": bad.examples, "metrics": metrics,
    }
    if cfg.clip_checkpoint is not None:
        keys = [k for k, _, _ in joined]
        pairs = [(refs[k], pred) for k, pred, _ in joined]
        scores, summary["clip"] = _clip_scores(cfg, Path(cfg.images), keys, pairs, texts, ctx)
        for f, score in scores.items():
            metrics[f]["clip_score"] = score
    summary["output_dir"] = str(ctx.run_dir)
    return summary


def _read_keyed(path: Path, key: str, bad: Any) -> tuple[dict[str, dict[str, Any]], int]:
    """{key: record} of a JSONL file (the first record of a repeated key wins) and the number of repeats."""
    from percli.core.data.shards import read_records

    records: dict[str, dict[str, Any]] = {}
    repeats = 0
    for _, record, record_key in read_records(path, key, bad):
        if record_key in records:
            repeats += 1
        else:
            records[record_key] = record
    return records, repeats


def _reference_list(value: Any) -> list[str] | None:
    """A reference field as a list of strings (a string or a non-empty list of strings), else None."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def _join(cfg: Config, preds: dict[str, dict], refs: dict[str, dict], bad: Any
          ) -> tuple[list[tuple[str, dict, list[str]]], int]:
    """(key, prediction, references) of every usable pair, and the number of predictions without a reference."""
    joined: list[tuple[str, dict, list[str]]] = []
    unmatched = 0
    for k, pred in preds.items():
        if k not in refs:
            unmatched += 1
            continue
        ref_list = _reference_list(refs[k].get(cfg.reference_field))
        missing = [f for f in cfg.fields if not isinstance(pred.get(f), str)]
        if ref_list is None:
            bad.add(Path(cfg.references), k, f"{cfg.reference_field!r} is not a string or a list of strings", "key")
        elif missing:
            bad.add(Path(cfg.captions), k, f"no string field {', '.join(map(repr, missing))}", "key")
        else:
            joined.append((k, pred, ref_list))
    if not joined:
        raise ValueError(f"no prediction in {cfg.captions} matches a usable reference in {cfg.references} on "
                         f"{cfg.key!r} ({len(preds)} predictions, {len(refs)} references, {bad.count} malformed); "
                         "check --key, --field and --reference-field")
    return joined, unmatched


def _image_path(images: Path, key: str, *records: dict[str, Any]) -> Path | None:
    """The image of `key`: a record's "image" field (relative to --images), else <images>/<key>.<png|jpg|...>."""
    for record in records:
        if isinstance(record.get("image"), str):
            candidate = images / record["image"]
            return candidate if candidate.exists() else images / Path(record["image"]).name
    return next((images / f"{key}{s}" for s in IMAGE_SUFFIXES if (images / f"{key}{s}").exists()), None)


def load_clip_scorer(checkpoint: str, model_name: str | None) -> tuple[Any, dict[str, Any]]:
    """The CLIP (or PE) model of a percli checkpoint (its metadata rebuilds it) or of an official file + its
    model name, and its preprocessing; built by `create_model_for` (sizes checked against the file first)."""
    from percli.core.checkpoint import read_meta, read_weights
    from percli.models import create_model_for, family_fit

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"--clip-checkpoint {path}: no such file or directory")
    percli_layout = path.is_dir() or path.suffix == ".safetensors"
    meta: dict[str, Any] = read_meta(path) if percli_layout else {}
    if meta and meta.get("task") != "clip" and not model_name:
        raise ValueError(f"--clip-checkpoint {path} is a {meta.get('task')} checkpoint, not a CLIP one; train one "
                         "with `percli pretrain clip` or pass --clip-model")
    name = model_name or meta.get("name")
    if not name:
        raise ValueError(f"--clip-checkpoint {path} carries no model name; pass --clip-model (e.g. "
                         "clip_vit_b32_quickgelu)")
    model = create_model_for(name, meta.get("kwargs", {}), path)
    family_fit(model, read_weights(path)[0] if percli_layout else path)
    return model, {**model.preprocess, **meta}


def _clip_scores(cfg: Config, images: Path, keys: list[str], records: list[tuple[dict, dict]],
                 captions: dict[str, list[str]], ctx: RunContext) -> tuple[dict[str, float], dict[str, Any]]:
    """CLIP-score of each field's captions on the readable images, and what was skipped.

    `records[i]` is the (reference, prediction) record pair of `keys[i]`, where an "image" field is looked up.
    """
    import torch

    from percli.captioning.metrics import clip_score
    from percli.core.data.images import BadSample, load_rgb
    from percli.core.data.transforms import ImagePreprocess
    from percli.models.clip_tokenizer import CLIPTokenizer

    model, meta = load_clip_scorer(cfg.clip_checkpoint, cfg.clip_model)
    model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
    transform = ImagePreprocess.of(meta).eval_transform()  # CLIP centre-crops, PE squashes
    tokenizer = CLIPTokenizer(context_length=model.context_length)
    sums = dict.fromkeys(captions, 0.0)
    scored, bad_examples = 0, []
    # Batch by batch, so only one batch of decoded images is ever in memory.
    for start in range(0, len(keys), cfg.batch_size):
        tensors, kept = [], []
        for i in range(start, min(start + cfg.batch_size, len(keys))):
            path = _image_path(images, keys[i], *records[i])
            try:
                if path is None:
                    raise BadSample(images / keys[i], "no image file for this key")
                tensors.append(transform(load_rgb(str(path))))
                kept.append(i)
            except BadSample as e:
                if len(bad_examples) < 5:
                    bad_examples.append(str(e))
        if not kept:
            continue
        batch = torch.stack(tensors)
        for name, texts in captions.items():
            sums[name] += clip_score(model, tokenizer, batch, [texts[i] for i in kept]) * len(kept)
        scored += len(kept)
    if not scored:
        raise ValueError(f"--images {images}: none of the {len(keys)} scored keys has a readable image (looked for "
                         "the records' 'image' field, then <key>.png/.jpg); point --images at the folder holding them")
    ctx.log(f"CLIP-score: {scored} images ({len(keys) - scored} missing or unreadable)")
    return {name: total / scored for name, total in sums.items()}, {
        "checkpoint": cfg.clip_checkpoint, "images_scored": scored, "bad_images": len(keys) - scored,
        "bad_image_examples": bad_examples}
