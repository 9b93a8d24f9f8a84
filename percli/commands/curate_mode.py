"""`percli curate mode`: MoDE's two-level clustering of a JSONL caption pool, assignment and expert weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import emit_summary, err, fail
from percli.core.rundir import write_json_atomic
from percli.curation.text_encoder import DEFAULT_TEXT_ENCODER

DEMO_POOL_SIZE = 2000  # the first 2,000 demo alt-texts, as `curate cit`: MiniLM embeds them in ~15 s on 2 cores
DEMO_FINE = 32  # ~60 demo texts per fine cluster
DEMO_CLASSES = ["dog", "cat", "car", "beach", "pizza", "guitar", "mountain", "flower"]
DEFAULT_TEMPLATES = ["a photo of a {}."]


def mode(
    inputs: list[Path] | None = typer.Argument(
        None, metavar="[INPUT]...", help="JSONL or Parquet shards (braces and globs expand; default: the embedded "
                                         "demo pool)."),
    fine: int | None = typer.Option(
        None, "--fine", help=f"Fine clusters m (MoDE: 1024; {DEMO_FINE} for the demo pool)."),
    coarse: int = typer.Option(4, "--coarse", help="Coarse clusters n = data experts (MoDE: 4)."),
    distance: str = typer.Option("euclidean", "--distance", help="k-means distance: euclidean or cosine."),
    balanced: bool = typer.Option(True, "--balanced/--no-balanced",
                                  help="Size-constrained (balanced) k-means, as MoDE; or plain k-means."),
    init: str = typer.Option("k-means++", "--init", help="Center initialisation: k-means++ or random."),
    encoder: str = typer.Option(
        DEFAULT_TEXT_ENCODER, "--encoder", "-e", help="Text encoder: minilm (all-MiniLM-L6-v2, offline), hashing, "
                                                      "a sentence-transformers folder, or module:factory."),
    batch_size: int = typer.Option(256, "--batch-size", help="Texts per encoder batch."),
    fit_fraction: float = typer.Option(
        1.0, "--fit-fraction", help="Seeded share of the pool the clusters are fitted on (MoDE: ~5%)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fit sample and of the k-means initialisation."),
    classes: Path | None = typer.Option(
        None, "--classes", help="Task class names, one per line: writes ensemble_weights.json."),
    templates: Path | None = typer.Option(
        None, "--templates", help="Prompt templates with {}, one per line (default: 'a photo of a {}.')."),
    centers: Path | None = typer.Option(
        None, "--centers", help="Reuse a mode_centers.safetensors: assign and weight only, no refit."),
    text_field: str = typer.Option("text", "--text-field", help="Record field holding the caption."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Output dir (default runs/curate-mode-<UTC time>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --output dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """MoDE: cluster caption embeddings into fine clusters and coarse data experts, assign a pool, weight experts.

    Writes mode_centers.safetensors (fine centers, coarse centers, fine_to_coarse), mode_config.json,
    assign/<input>.jsonl (key, line, fine, coarse, distance per record), summary.json with the cluster
    sizes and, with --classes, ensemble_weights.json. Example: [bold]percli curate mode pool.jsonl
    --fine 1024 --coarse 4 --classes imagenet_classes.txt[/] (no inputs: a built-in synthetic demo pool).
    """
    from percli.core.data.shards import BadRecords, read_batches
    from percli.core.rundir import prepare_output_dir, write_jsonl_atomic
    from percli.curation import demo
    from percli.curation.metaclip import keep_uniform, shard_names
    from percli.curation.mode import (
        DISTANCES,
        INITS,
        ModeClusters,
        assign,
        ensemble_weights,
        fit_mode,
        mode_class_embeddings,
    )
    from percli.curation.selection import resolve_inputs
    from percli.curation.text_encoder import load_text_encoder

    use_demo = not inputs
    if use_demo and text_field != "text":
        fail("the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    fine = fine if fine is not None else (DEMO_FINE if use_demo else 1024)
    if distance not in DISTANCES:
        fail(f"--distance {distance!r} is unknown; use one of {', '.join(DISTANCES)}")
    if init not in INITS:
        fail(f"--init {init!r} is unknown; use one of {', '.join(INITS)}")
    if not 1 <= coarse <= fine:
        fail(f"need 1 <= --coarse <= --fine (got --coarse {coarse}, --fine {fine})")
    if not 0 < fit_fraction <= 1:
        fail(f"--fit-fraction must be in (0, 1] (got {fit_fraction:g})")
    if batch_size < 1:
        fail(f"--batch-size must be >= 1 (got {batch_size})")
    class_names = _read_lines(classes, "--classes") if classes else (DEMO_CLASSES if use_demo else None)
    prompts = _read_lines(templates, "--templates") if templates else DEFAULT_TEMPLATES
    if any("{}" not in p for p in prompts):
        fail("--templates: every line needs a {} where the class name goes, like 'a photo of a {}.'")
    clusters = None
    try:
        inputs = resolve_inputs(inputs) if inputs else []
        if centers is not None:
            clusters = ModeClusters.load(centers)
        enc = load_text_encoder(encoder)
        if clusters is not None and clusters.encoder and clusters.encoder != enc.name:
            raise ValueError(f"--centers were fitted on {clusters.encoder!r} embeddings; pass --encoder "
                             f"{clusters.encoder}")
        if clusters is not None and clusters.fine_centers.shape[1] != enc.dim:
            raise ValueError(f"--centers have dimension {clusters.fine_centers.shape[1]}, encoder {enc.name!r} "
                             f"gives {enc.dim}; pass the encoder they were fitted with")
        out_dir, problem = prepare_output_dir(output, "curate", "mode", overwrite=overwrite)
        if problem:
            raise ValueError(problem)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    say = lambda msg: err.print(msg, highlight=False)  # noqa: E731
    say(f"output dir: {out_dir}; encoder {enc.name} ({enc.dim}-d)")
    if use_demo:
        pool = out_dir / "demo_pool.jsonl"
        write_jsonl_atomic(pool, demo.demo_pool()[:DEMO_POOL_SIZE])
        say(f"no inputs: the embedded demo pool ({pool}), {fine} fine and {coarse} coarse clusters")
        inputs = [pool]

    clusters_given = clusters is not None

    def batches(bad: BadRecords):
        """(path, batch, record keys, in-fit-sample mask) over all inputs; the sample is seeded per record key
        (uuid/id, else the text), so it does not depend on the order or sharding of the pool."""
        for path in inputs:
            for batch in read_batches(path, text_field, bad, batch_size):
                keys = [k if k is not None else t for k, t in zip(batch.keys, batch.texts)]
                sampled = np.array([not clusters_given and keep_uniform(k, seed) < fit_fraction for k in keys],
                                   dtype=bool)
                yield path, batch, keys, sampled

    # Pass 1: embed the fit sample; its embeddings are kept for pass 2, so no caption is encoded twice.
    bad = BadRecords()
    texts_read = 0
    sample_parts = []
    for _, batch, _, sampled in batches(bad):
        texts_read += len(batch.texts)
        if sampled.any():
            sample_parts.append(enc.encode([t for t, s in zip(batch.texts, sampled) if s], batch_size))
            say(f"embedded {sum(len(p) for p in sample_parts):,} fit texts of {texts_read:,} read")
    if texts_read == 0:
        fail(f"no usable records in the inputs ({bad.count} bad); each record needs a string {text_field!r} field "
             f"(see --text-field)")
    sample = np.concatenate(sample_parts) if sample_parts else np.zeros((0, enc.dim), dtype=np.float32)
    if clusters is None:
        if len(sample) < fine:
            fail(f"the fit sample holds {len(sample)} texts, fewer than --fine {fine}; lower --fine or raise "
                 f"--fit-fraction")
        say(f"fitting {fine} fine and {coarse} coarse {'balanced ' if balanced else ''}k-means clusters "
            f"on {len(sample):,} texts")
        try:
            clusters = fit_mode(sample, fine, coarse, distance=distance, balanced=balanced, init=init, seed=seed,
                                encoder=enc.name)
        except ValueError as e:
            fail(str(e))
        clusters.save(out_dir / "mode_centers.safetensors")
    config = {"method": "mode", "fine": clusters.fine, "coarse": clusters.coarse, "distance": clusters.distance,
              "balanced": balanced, "init": init, "encoder": enc.name, "dim": enc.dim, "fit_fraction": fit_fraction,
              "seed": seed, "text_field": text_field, "fitted_on": None if clusters_given else len(sample),
              "centers_from": str(centers) if clusters_given else "fit", "templates": prompts}
    write_json_atomic(out_dir / "mode_config.json", config)

    # Pass 2: every record to its nearest fine center and that center's coarse expert.
    names = dict(zip(inputs, shard_names(inputs)))
    (out_dir / "assign").mkdir(exist_ok=True)
    fine_sizes = np.zeros(clusters.fine, dtype=np.int64)
    sample_start = 0
    targets = {path: out_dir / "assign" / f"{names[path]}.jsonl" for path in inputs}
    temps = {path: target.with_name(f".{target.name}.tmp-{os.getpid()}") for path, target in targets.items()}
    for tmp in temps.values():
        tmp.write_text("")
    say(f"assigning {texts_read:,} texts")
    for path, batch, keys, sampled in batches(BadRecords()):
        features = np.empty((len(keys), enc.dim), dtype=np.float32)
        n_sampled = int(sampled.sum())
        features[sampled] = sample[sample_start:sample_start + n_sampled]
        sample_start += n_sampled
        if (~sampled).any():
            features[~sampled] = enc.encode([t for t, s in zip(batch.texts, sampled) if not s], batch_size)
        result = assign(features, clusters)
        np.add.at(fine_sizes, result["fine"], 1)
        with temps[path].open("a", encoding="utf-8") as f:
            for key, index, fine_id, coarse_id, dist in zip(keys, batch.index.tolist(), result["fine"],
                                                            result["coarse"], result["distance"]):
                f.write(json.dumps({"key": key, "index": index, "fine": int(fine_id), "coarse": int(coarse_id),
                                    "distance": round(float(dist), 6)}, ensure_ascii=False) + "\n")
    for path in inputs:
        os.replace(temps[path], targets[path])

    coarse_sizes = np.bincount(clusters.fine_to_coarse.numpy(), weights=fine_sizes, minlength=clusters.coarse)
    summary = {**config, "texts_read": texts_read, "bad_records": bad.count, "bad_examples": bad.examples,
               "duplicate_keys": bad.duplicate_keys,
               "fine_sizes": fine_sizes.tolist(), "coarse_sizes": [int(c) for c in coarse_sizes],
               "fine_per_coarse": np.bincount(clusters.fine_to_coarse.numpy(), minlength=clusters.coarse).tolist(),
               "inputs": [str(p) for p in inputs],
               "outputs": [str(targets[p]) for p in inputs],
               "output_dir": str(out_dir), "demo": use_demo}
    if class_names:
        say(f"ensemble weights for {len(class_names)} classes over {len(prompts)} template(s)")
        weights = ensemble_weights(mode_class_embeddings(enc, class_names, prompts, batch_size), clusters)
        per_class = [{"name": c, "fine": f, "coarse": k, "distance": d}
                     for c, f, k, d in zip(class_names, weights["fine"], weights["coarse"], weights["distance"])]
        write_json_atomic(out_dir / "ensemble_weights.json",
                          {"n_class": len(class_names), "expert_weights": weights["weights"],
                           "raw_weights": weights["raw"], "scale": weights["scale"], "shift": weights["shift"],
                           "classes": per_class})
        summary["expert_weights"] = weights["weights"]
    emit_summary(out_dir, summary, json_out, report)


def _read_lines(path: Path, option: str) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        fail(f"{option} {path} cannot be read ({e}); pass a UTF-8 text file, one item per line")
    if not lines:
        fail(f"{option} {path} is empty; put one item per line")
    return lines


def report(summary: dict) -> None:
    """Human summary on stdout; scripts use --json or summary.json."""
    table = Table("", "value", title="MoDE clustering", title_justify="left")
    sizes = summary["fine_sizes"]
    rows = [
        ("texts read", f"{summary['texts_read']:,}"),
        ("fitted on", "saved centers" if summary["fitted_on"] is None else f"{summary['fitted_on']:,} texts"),
        ("encoder, distance", f"{summary['encoder']}, {summary['distance']}"
                              f"{', balanced' if summary['balanced'] else ''}"),
        ("fine clusters (sizes)", f"{summary['fine']} ({min(sizes):,} .. {max(sizes):,})"),
        ("coarse experts (sizes)", f"{summary['coarse']} ({', '.join(f'{c:,}' for c in summary['coarse_sizes'])})"),
    ]
    if "expert_weights" in summary:
        rows.append(("expert weights", ", ".join(f"{w:.3f}" for w in summary["expert_weights"])))
    rows += [("bad records", f"{summary['bad_records']:,}"), ("output dir", summary["output_dir"])]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
