"""MoDE (Ma et al., CVPR 2024): cluster caption embeddings into fine clusters and coarse data experts,
assign a pool to them and weight the experts for a task.

Balanced k-means (as MoDE) into --fine clusters on L2-normalised caption embeddings, fitted on a
seeded --fit-fraction of the pool; the fine centers are clustered again into --coarse data experts.
Every record goes to its nearest fine center and that center's expert. Writes
mode_centers.safetensors (fine centers, coarse centers, fine_to_coarse), mode_config.json,
assign/<input>.jsonl (key, index, fine, coarse, distance per record), summary.json with the cluster
sizes and, with --classes, ensemble_weights.json (each expert's weight by the paper's formula).
--expert-shards also writes experts/expert_<k>.jsonl, the training set of data expert k: the JSONL
records of its clusters plus a seeded --ooc-ratio share (official 0.02) of the other clusters' records,
image paths made absolute; train each expert from a seed run with
`percli pretrain clip data.source=RUN/experts/expert_<k>.jsonl model.checkpoint=SEED_CHECKPOINT`.
--centers reuses fitted centers: assign and weight only. With no inputs: the first 2,000 texts of
the built-in demo pool, 32 fine clusters and a few demo class names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.shards import BadRecords
from percli.core.rundir import write_json_atomic
from percli.curation.text_encoder import DEFAULT_TEXT_ENCODER

DEMO_POOL_SIZE = 2000  # the first 2,000 demo alt-texts, as `curate cit`: MiniLM embeds them in ~15 s on 2 cores
DEMO_FINE = 32  # ~60 demo texts per fine cluster
DEMO_CLASSES = ["dog", "cat", "car", "beach", "pizza", "guitar", "mountain", "flower"]
DEFAULT_TEMPLATES = ["a photo of a {}."]


@dataclass
class Config:
    inputs: list[str] = field(default_factory=list)
    """JSONL or Parquet shards (braces and globs expand); none: the embedded demo pool."""
    fine: int | None = None
    """Fine clusters m (MoDE: 1024, the default with inputs; 32 for the demo pool)."""
    coarse: int = 4
    """Coarse clusters n = data experts (MoDE: 4)."""
    distance: Literal["euclidean", "cosine"] = "euclidean"
    balanced: bool = True
    """Size-constrained (balanced) k-means, as MoDE; false: plain k-means."""
    init: Literal["k-means++", "random"] = "k-means++"
    encoder: str = DEFAULT_TEXT_ENCODER
    """minilm (all-MiniLM-L6-v2, offline), hashing, a sentence-transformers folder, or module:factory."""
    batch_size: int = 256
    """Texts per encoder batch."""
    fit_fraction: float = 1.0
    """Seeded share of the pool the clusters are fitted on (MoDE: ~5%)."""
    seed: int = 0
    """Seed of the fit sample and of the k-means initialisation."""
    classes: str | None = None
    """Task class names, one per line: writes ensemble_weights.json (the demo has its own)."""
    templates: str | None = None
    """Prompt templates with {}, one per line (default: 'a photo of a {}.')."""
    expert_shards: bool = False
    """Write experts/expert_<k>.jsonl, each data expert's training records (JSONL inputs)."""
    ooc_ratio: float = 0.02
    """Share of the other clusters' records added to each expert's shard (MoDE's ooc_ratio: 0.02)."""
    image_field: str = "image"
    """The records' image path field (made absolute in the expert shards)."""
    centers: str | None = None
    """A mode_centers.safetensors to reuse: assign and weight only, no refit."""
    text_field: str = "text"
    """Record field holding the caption."""


def fine_clusters(cfg: Config) -> int:
    return cfg.fine if cfg.fine is not None else (1024 if cfg.inputs else DEMO_FINE)


def read_lines(path: str, key: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file (class names, templates)."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {path} cannot be read ({e}); pass a UTF-8 text file, one item per line") from None
    if not lines:
        raise ConfigError(f"{key}: {path} is empty; put one item per line")
    return lines


def validate(cfg: Config) -> None:
    from percli.curation.selection import resolve_inputs

    if not cfg.inputs and cfg.text_field != "text":
        raise ConfigError("text_field: the demo pool stores its texts in 'text'; drop --text-field or pass input files")
    if not 1 <= cfg.coarse <= fine_clusters(cfg):
        raise ConfigError(f"coarse: need 1 <= coarse <= fine (got coarse {cfg.coarse}, fine {fine_clusters(cfg)})")
    if not 0 <= cfg.ooc_ratio < 1:
        raise ConfigError(f"ooc_ratio: must be in [0, 1) (got {cfg.ooc_ratio:g})")
    if cfg.expert_shards and not cfg.inputs:
        raise ConfigError("expert_shards: the demo pool has no images; pass JSONL image-text shards as inputs")
    if cfg.expert_shards and any(not str(p).endswith((".jsonl", ".jsonl.gz")) for p in cfg.inputs):
        raise ConfigError("expert_shards: written from JSONL inputs; for Parquet or tar pools read the assign/ "
                          "files (record index -> coarse cluster) instead")
    if not 0 < cfg.fit_fraction <= 1:
        raise ConfigError(f"fit_fraction: must be in (0, 1] (got {cfg.fit_fraction:g})")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1 (got {cfg.batch_size})")
    if cfg.classes is not None:
        read_lines(cfg.classes, "classes")
    if cfg.templates is not None and any("{}" not in p for p in read_lines(cfg.templates, "templates")):
        raise ConfigError("templates: every line needs a {} where the class name goes, like 'a photo of a {}.'")
    if cfg.centers is not None and not Path(cfg.centers).is_file():
        raise ConfigError(f"centers: {cfg.centers} does not exist; pass the mode_centers.safetensors of a run")
    if cfg.inputs:
        try:
            resolve_inputs(cfg.inputs)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"inputs: {e}") from None


@dataclass
class Pool:
    """The records to cluster, read batch by batch, and which of them form the fit sample."""

    inputs: list[Path]
    text_field: str
    batch_size: int
    fit_fraction: float
    seed: int
    sample_fit: bool

    def batches(self, bad: BadRecords) -> Iterator[tuple[Path, Any, list[str], np.ndarray]]:
        """(path, batch, record keys, in-fit-sample mask) over all inputs; the sample is seeded per record key
        (uuid/id, else the text), so it does not depend on the order or sharding of the pool."""
        from percli.core.data.shards import read_batches
        from percli.curation.metaclip import keep_uniform

        for path in self.inputs:
            for batch in read_batches(path, self.text_field, bad, self.batch_size):
                keys = [k if k is not None else t for k, t in zip(batch.keys, batch.texts)]
                sampled = np.array([self.sample_fit and keep_uniform(k, self.seed) < self.fit_fraction for k in keys],
                                   dtype=bool)
                yield path, batch, keys, sampled


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.curation.mode import ModeClusters
    from percli.curation.text_encoder import load_text_encoder

    enc = load_text_encoder(cfg.encoder)
    clusters = ModeClusters.load(cfg.centers) if cfg.centers is not None else None
    _check_centers(clusters, enc)
    ctx.log(f"encoder {enc.name} ({enc.dim}-d)")
    pool = Pool(_inputs(cfg, ctx), cfg.text_field, cfg.batch_size, cfg.fit_fraction, cfg.seed, clusters is None)
    sample, texts_read, bad = _embed_fit_sample(pool, enc, ctx)
    if clusters is None:
        clusters = _fit(cfg, sample, enc, ctx)
    config = {"method": "mode", "fine": clusters.fine, "coarse": clusters.coarse, "distance": clusters.distance,
              "balanced": cfg.balanced, "init": cfg.init, "encoder": enc.name, "dim": enc.dim,
              "fit_fraction": cfg.fit_fraction, "seed": cfg.seed, "text_field": cfg.text_field,
              "fitted_on": None if cfg.centers else len(sample), "centers_from": cfg.centers or "fit",
              "templates": read_lines(cfg.templates, "templates") if cfg.templates else DEFAULT_TEMPLATES}
    write_json_atomic(ctx.run_dir / "mode_config.json", config)
    ctx.log(f"assigning {texts_read:,} texts")
    fine_sizes, outputs = _assign_pool(pool, sample, enc, clusters, ctx.run_dir)
    to_coarse = clusters.fine_to_coarse.numpy()
    summary = {"status": "completed", **config, "texts_read": texts_read, "bad_records": bad.count,
               "bad_examples": bad.examples, "duplicate_keys": bad.duplicate_keys, "fine_sizes": fine_sizes.tolist(),
               "coarse_sizes": [int(c) for c in np.bincount(to_coarse, weights=fine_sizes, minlength=clusters.coarse)],
               "fine_per_coarse": np.bincount(to_coarse, minlength=clusters.coarse).tolist(),
               "inputs": [str(p) for p in pool.inputs], "outputs": outputs, "output_dir": str(ctx.run_dir),
               "demo": not cfg.inputs}
    if cfg.expert_shards:
        summary["expert_shards"] = write_expert_shards(pool.inputs, outputs, ctx.run_dir / "experts", clusters.coarse,
                                                       cfg.ooc_ratio, cfg.seed, cfg.image_field)
    class_names = read_lines(cfg.classes, "classes") if cfg.classes else (None if cfg.inputs else DEMO_CLASSES)
    if class_names:
        summary["expert_weights"] = _ensemble_weights(enc, clusters, class_names, config["templates"], cfg, ctx)
    return summary


def write_expert_shards(inputs: list[Path], assignments: list[str], folder: Path, experts: int, ooc_ratio: float,
                        seed: int, image_field: str) -> list[dict[str, Any]]:
    """experts/expert_<k>.jsonl for every coarse cluster k: its records, plus each other record with
    probability `ooc_ratio` (seeded per record key and expert), image paths resolved against the input's
    folder; written to temp names and renamed."""
    from percli.core.data.paths import resolve_manifest_path
    from percli.core.data.shards import read_records
    from percli.curation.metaclip import keep_uniform

    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"expert_{k}.jsonl" for k in range(experts)]
    temps = [t.with_name(f".{t.name}.tmp-{os.getpid()}") for t in targets]
    counts = [{"in_cluster": 0, "out_of_cluster": 0} for _ in range(experts)]
    handles = [t.open("w", encoding="utf-8") for t in temps]
    try:
        for path, assignment in zip(inputs, assignments):
            coarse_of = {}
            with open(assignment, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    coarse_of[row["index"]] = (row["coarse"], row["key"])
            for line_no, record, _ in read_records(path, None, BadRecords()):
                if line_no - 1 not in coarse_of:  # a record the clustering skipped (no usable text)
                    continue
                home, key = coarse_of[line_no - 1]
                if isinstance(record.get(image_field), str) and record[image_field]:
                    record = {**record, image_field: os.path.abspath(resolve_manifest_path(path.parent,
                                                                                          record[image_field]))}
                text = json.dumps(record, ensure_ascii=False) + "\n"
                for k in range(experts):
                    if k == home:
                        handles[k].write(text)
                        counts[k]["in_cluster"] += 1
                    elif ooc_ratio and keep_uniform(str(key), seed * 1000 + k + 1) < ooc_ratio:
                        handles[k].write(text)
                        counts[k]["out_of_cluster"] += 1
    finally:
        for handle in handles:
            handle.close()
    for tmp, target in zip(temps, targets):
        os.replace(tmp, target)
    return [{"expert": k, "path": str(t), **c} for k, (t, c) in enumerate(zip(targets, counts))]


def _check_centers(clusters: Any, enc: Any) -> None:
    if clusters is not None and clusters.encoder and clusters.encoder != enc.name:
        raise ValueError(f"--centers were fitted on {clusters.encoder!r} embeddings; pass --encoder {clusters.encoder}")
    if clusters is not None and clusters.fine_centers.shape[1] != enc.dim:
        raise ValueError(f"--centers have dimension {clusters.fine_centers.shape[1]}, encoder {enc.name!r} "
                         f"gives {enc.dim}; pass the encoder they were fitted with")


def _inputs(cfg: Config, ctx: RunContext) -> list[Path]:
    """The input shards; with none, the demo pool written into the run dir."""
    from percli.core.rundir import write_jsonl_atomic
    from percli.curation import demo
    from percli.curation.selection import resolve_inputs

    if cfg.inputs:
        return resolve_inputs(cfg.inputs)
    pool = ctx.run_dir / "demo_pool.jsonl"
    write_jsonl_atomic(pool, demo.demo_pool()[:DEMO_POOL_SIZE])
    ctx.log(f"no inputs: the embedded demo pool ({pool}), {fine_clusters(cfg)} fine and {cfg.coarse} coarse clusters")
    return [pool]


def _embed_fit_sample(pool: Pool, enc: Any, ctx: RunContext) -> tuple[np.ndarray, int, BadRecords]:
    """Pass 1: embed the fit sample (kept for pass 2, so no caption is encoded twice) and count the records."""
    bad = BadRecords()
    texts_read = 0
    parts = []
    for _, batch, _, sampled in pool.batches(bad):
        texts_read += len(batch.texts)
        if sampled.any():
            parts.append(enc.encode([t for t, s in zip(batch.texts, sampled) if s], pool.batch_size))
            ctx.log(f"embedded {sum(len(p) for p in parts):,} fit texts of {texts_read:,} read")
    if texts_read == 0:
        raise ValueError(f"no usable records in the inputs ({bad.count} bad); each record needs a string "
                         f"{pool.text_field!r} field (see --text-field)")
    sample = np.concatenate(parts) if parts else np.zeros((0, enc.dim), dtype=np.float32)
    return sample, texts_read, bad


def _fit(cfg: Config, sample: np.ndarray, enc: Any, ctx: RunContext) -> Any:
    from percli.curation.mode import fit_mode

    fine = fine_clusters(cfg)
    if len(sample) < fine:
        raise ValueError(f"the fit sample holds {len(sample)} texts, fewer than --fine {fine}; lower --fine or raise "
                         f"--fit-fraction")
    ctx.log(f"fitting {fine} fine and {cfg.coarse} coarse {'balanced ' if cfg.balanced else ''}k-means clusters "
            f"on {len(sample):,} texts")
    clusters = fit_mode(sample, fine, cfg.coarse, distance=cfg.distance, balanced=cfg.balanced, init=cfg.init,
                        seed=cfg.seed, encoder=enc.name)
    clusters.save(ctx.run_dir / "mode_centers.safetensors")
    return clusters


def _assign_pool(pool: Pool, sample: np.ndarray, enc: Any, clusters: Any, run_dir: Path) -> tuple[np.ndarray, list]:
    """Pass 2: every record to its nearest fine center and that center's coarse expert, written to
    assign/<input>.jsonl (via temp files renamed at the end). Returns the fine cluster sizes and outputs."""
    from percli.curation.metaclip import shard_names
    from percli.curation.mode import assign

    (run_dir / "assign").mkdir(exist_ok=True)
    targets = {path: run_dir / "assign" / f"{name}.jsonl" for path, name in zip(pool.inputs, shard_names(pool.inputs))}
    temps = {path: target.with_name(f".{target.name}.tmp-{os.getpid()}") for path, target in targets.items()}
    for tmp in temps.values():
        tmp.write_text("")
    fine_sizes = np.zeros(clusters.fine, dtype=np.int64)
    sample_start = 0
    for path, batch, keys, sampled in pool.batches(BadRecords()):
        features = np.empty((len(keys), enc.dim), dtype=np.float32)
        n_sampled = int(sampled.sum())
        features[sampled] = sample[sample_start:sample_start + n_sampled]
        sample_start += n_sampled
        if (~sampled).any():
            features[~sampled] = enc.encode([t for t, s in zip(batch.texts, sampled) if not s], pool.batch_size)
        result = assign(features, clusters)
        np.add.at(fine_sizes, result["fine"], 1)
        with temps[path].open("a", encoding="utf-8") as f:
            for key, index, fine_id, coarse_id, dist in zip(keys, batch.index.tolist(), result["fine"],
                                                            result["coarse"], result["distance"]):
                f.write(json.dumps({"key": key, "index": index, "fine": int(fine_id), "coarse": int(coarse_id),
                                    "distance": round(float(dist), 6)}, ensure_ascii=False) + "\n")
    for path in pool.inputs:
        os.replace(temps[path], targets[path])
    return fine_sizes, [str(targets[p]) for p in pool.inputs]


def _ensemble_weights(enc: Any, clusters: Any, class_names: list[str], prompts: list[str], cfg: Config,
                      ctx: RunContext) -> list[float]:
    """Each expert's weight for the task (MoDE's formula); writes ensemble_weights.json."""
    from percli.curation.mode import ensemble_weights, mode_class_embeddings

    ctx.log(f"ensemble weights for {len(class_names)} classes over {len(prompts)} template(s)")
    weights = ensemble_weights(mode_class_embeddings(enc, class_names, prompts, cfg.batch_size), clusters)
    per_class = [{"name": c, "fine": f, "coarse": k, "distance": d}
                 for c, f, k, d in zip(class_names, weights["fine"], weights["coarse"], weights["distance"])]
    write_json_atomic(ctx.run_dir / "ensemble_weights.json",
                {"n_class": len(class_names), "expert_weights": weights["weights"], "raw_weights": weights["raw"],
                 "scale": weights["scale"], "shift": weights["shift"], "classes": per_class})
    return weights["weights"]
