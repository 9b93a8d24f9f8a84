"""`percli eval caption`: BLEU-4, CIDEr-D and CLIP-score of predicted captions against references.

Predictions and references are JSONL files joined on a key field. Each `--field` of the
predictions is scored on the same joined records, so a captioner's output can be compared with
the alt-texts it started from (`--field altogether --field alt_text`, as `percli caption
altogether` writes them). With `--clip-checkpoint` and `--images`, the CLIP-score of each field is
computed too (reference-free: image vs caption).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import emit_summary, err, fail
from percli.core.rundir import prepare_output_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _read_keyed(path: Path, key: str, bad: Any) -> tuple[dict[str, dict[str, Any]], int]:
    """{key: record} of a JSONL file (the first record of a repeated key wins) and the number of repeats."""
    from percli.core.data.shards import read_records

    if not path.is_file():
        fail(f"{path}: no such file; pass a JSONL file of records with a {key!r} field")
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


def _image_path(images: Path, key: str, *records: dict[str, Any]) -> Path | None:
    """The image of `key`: a record's "image" field (relative to --images), else <images>/<key>.<png|jpg|...>."""
    for record in records:
        if isinstance(record.get("image"), str):
            candidate = images / record["image"]
            return candidate if candidate.exists() else images / Path(record["image"]).name
    return next((images / f"{key}{s}" for s in IMAGE_SUFFIXES if (images / f"{key}{s}").exists()), None)


def _clip_scores(checkpoint: str, model_name: str | None, images: Path, keys: list[str],
                 records: list[tuple[dict, dict]], captions: dict[str, list[str]], batch_size: int,
                 ) -> tuple[dict[str, float], dict[str, Any]]:
    """CLIP-score of each field's captions on the readable images, and what was skipped.

    `records[i]` is the (reference, prediction) record pair of `keys[i]`, where an "image" field is looked up.
    """
    import torch

    from percli.captioning.metrics import clip_score
    from percli.core.data.images import BadSample, load_rgb
    from percli.core.data.transforms import ImagePreprocess
    from percli.models.clip_tokenizer import CLIPTokenizer
    from percli.recipes.common import ModelSection
    from percli.recipes.zero_shot import load_clip

    try:
        model, meta = load_clip(ModelSection(name=model_name or "", checkpoint=checkpoint))
    except (FileNotFoundError, ValueError) as e:
        fail(f"--clip-checkpoint: {e}")
    model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
    transform = ImagePreprocess.of(meta).eval_transform()  # CLIP centre-crops, PE squashes
    tokenizer = CLIPTokenizer(context_length=model.context_length)
    sums = dict.fromkeys(captions, 0.0)
    scored, bad_examples = 0, []
    # Batch by batch, so only one batch of decoded images is ever in memory.
    for start in range(0, len(keys), batch_size):
        tensors, kept = [], []
        for i in range(start, min(start + batch_size, len(keys))):
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
        for field, texts in captions.items():
            sums[field] += clip_score(model, tokenizer, batch, [texts[i] for i in kept]) * len(kept)
        scored += len(kept)
    if not scored:
        fail(f"--images {images}: none of the {len(keys)} scored keys has a readable image (looked for the "
             "records' 'image' field, then <key>.png/.jpg); point --images at the folder holding them")
    err.print(f"CLIP-score: {scored} images ({len(keys) - scored} missing or unreadable)", highlight=False)
    return {field: total / scored for field, total in sums.items()}, {
        "checkpoint": checkpoint, "images_scored": scored, "bad_images": len(keys) - scored,
        "bad_image_examples": bad_examples}


def eval_caption(
    captions: Path = typer.Option(..., "--captions", help="Predicted captions: JSONL records with the key and "
                                                          "each --field (e.g. percli caption altogether's output)."),
    references: Path = typer.Option(..., "--references", help="Reference captions: JSONL records with the key and "
                                                              "--reference-field (a string or a list of strings)."),
    fields: list[str] = typer.Option(
        ["altogether"], "--field", help="Field of the predictions to score; repeat to compare, e.g. --field "
                                        "altogether --field alt_text."),
    reference_field: str = typer.Option("caption", "--reference-field", help="Field of the references."),
    key: str = typer.Option("key", "--key", help="Field (a string) that joins predictions and references."),
    clip_checkpoint: str | None = typer.Option(
        None, "--clip-checkpoint", help="CLIP for the CLIP-score: a percli pretrain-clip checkpoint dir / "
                                        ".safetensors, or an open_clip/MetaCLIP file with --clip-model."),
    clip_model: str | None = typer.Option(None, "--clip-model", help="Model name of an official CLIP file, e.g. "
                                                                     "clip_vit_b32_quickgelu."),
    images: Path | None = typer.Option(None, "--images", help="Folder of the images (CLIP-score): the records' "
                                                              "'image' paths are relative to it, else <key>.png."),
    batch_size: int = typer.Option(64, "--batch-size", help="CLIP batch size."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output dir for summary.json "
                                                                    "(default runs/eval-caption-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Score captions with BLEU-4 and CIDEr-D (and CLIP-score) against references, joined on a key.

    Example (the held-out scenes of a `percli finetune altogether` run): [bold]percli eval caption --captions
    runs/finetune-altogether-X/captions.jsonl --references runs/finetune-altogether-X/heldout/records.jsonl
    --field altogether --field alt_text[/]
    """
    from percli.captioning.metrics import bleu4, cider_d
    from percli.core.data.shards import BadRecords

    if (clip_checkpoint is None) != (images is None):
        fail("--clip-checkpoint and --images go together: the CLIP-score needs a model and the images")
    if images is not None and not images.is_dir():
        fail(f"--images {images} is not a directory; pass the folder holding the images")
    if batch_size < 1:
        fail(f"--batch-size must be >= 1, got {batch_size}")
    bad = BadRecords()
    preds, pred_repeats = _read_keyed(captions, key, bad)
    refs, ref_repeats = _read_keyed(references, key, bad)
    joined: list[tuple[str, dict, list[str]]] = []
    unmatched = 0
    for k, pred in preds.items():
        if k not in refs:
            unmatched += 1
            continue
        ref_list = _reference_list(refs[k].get(reference_field))
        missing = [f for f in fields if not isinstance(pred.get(f), str)]
        if ref_list is None:
            bad.add(references, k, f"{reference_field!r} is not a string or a list of strings", "key")
        elif missing:
            bad.add(captions, k, f"no string field {', '.join(map(repr, missing))}", "key")
        else:
            joined.append((k, pred, ref_list))
    if not joined:
        fail(f"no prediction in {captions} matches a usable reference in {references} on {key!r} "
             f"({len(preds)} predictions, {len(refs)} references, {bad.count} malformed); check --key, --field "
             "and --reference-field")
    out_dir, problem = prepare_output_dir(output, "eval", "caption", overwrite=overwrite)
    if problem:
        fail(problem)
    err.print(f"scoring {len(joined)} captions per field ({', '.join(fields)})", highlight=False)
    reference_lists = [r for _, _, r in joined]
    texts = {f: [pred[f] for _, pred, _ in joined] for f in fields}
    metrics = {f: {"bleu4": bleu4(texts[f], reference_lists), "cider": cider_d(texts[f], reference_lists)}
               for f in fields}
    summary: dict[str, Any] = {
        "captions": str(captions), "references": str(references), "key": key, "reference_field": reference_field,
        "scored": len(joined), "references_without_prediction": len(refs) - (len(preds) - unmatched),
        "predictions_without_reference": unmatched, "repeated_keys": pred_repeats + ref_repeats,
        "bad_records": bad.count, "bad_record_examples": bad.examples, "metrics": metrics,
    }
    if clip_checkpoint is not None:
        keys = [k for k, _, _ in joined]
        pairs = [(refs[k], pred) for k, pred, _ in joined]
        scores, clip_info = _clip_scores(clip_checkpoint, clip_model, images, keys, pairs, texts, batch_size)
        for f, score in scores.items():
            metrics[f]["clip_score"] = score
        summary["clip"] = clip_info
    summary["output_dir"] = str(out_dir)
    emit_summary(out_dir, summary, json_out, report)


def report(summary: dict) -> None:
    with_clip = "clip" in summary
    table = Table("field", "BLEU-4", "CIDEr-D", *(["CLIP-score"] if with_clip else []),
                  title=f"{summary['scored']} captions vs {summary['references']}")
    for field, m in summary["metrics"].items():
        table.add_row(field, f"{100 * m['bleu4']:.1f}", f"{100 * m['cider']:.1f}",
                      *([f"{100 * m['clip_score']:.1f}"] if with_clip else []))
    Console().print(table)
    skipped = {k: summary[k] for k in ("predictions_without_reference", "references_without_prediction",
                                        "repeated_keys", "bad_records") if summary[k]}
    if skipped:
        err.print("skipped: " + json.dumps(skipped), highlight=False)
    err.print(f"summary: {summary['output_dir']}/summary.json", highlight=False)
