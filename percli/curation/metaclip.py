"""MetaCLIP 1 curation: sub-string matching against metadata, entry counts, balancing.

Semantics follow the official v1 code (facebookresearch/MetaCLIP, `metaclip1/substr_matching.py`
and `balancing.py`), rewritten from the formulas:

* Matching. A text matches entry e when `" " + e + " "` is a substring of `spacing(text)`:
  whole words, case-sensitive, overlaps allowed, no Unicode normalisation.
* Counts. c_e is the number of texts that match e; a text counts once per distinct entry.
* Balancing (the paper's Algorithm 1). A text with matched set m(x) is kept with probability
  P(x) = 1 - prod_{e in m(x)} (1 - min(1, t / c_e)); texts that match a tail entry (c_e <= t) are
  always kept, texts that match nothing never. The expected curated size is sum_x P(x).

The official script flips one coin per matched entry with the process-global `random`; here one
uniform per text, drawn from a hash of (seed, record key), is compared with P(x). The keep
probability is the same, and the decision no longer depends on record order, sharding or the
number of processes. The record key is its uuid/id field (or WebDataset sample key), else its text.

The pipeline has three stages, each shard-parallel (process `rank` of `world`, passed in from
`percli.core.dist.init()` once per run, takes shards rank::world)
and resumable per shard (a marker in progress/ is written after each shard's output is renamed
into place): `match_shards` (matches/<name>.npz, CSR entry ids per usable record),
`count_matches` (entry counts, all-reduced) and `balance_shards` (curated/<name>, in the input's
format, see `percli.core.data.shards`); `curate_shards` runs all three in one output dir.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from percli.core import dist
from percli.core.data.shards import (
    BAD_EXAMPLES_KEPT,
    OUTPUT_FORMATS,
    BadRecords,
    open_writer,
    output_suffix,
    read_batches,
    read_records,  # noqa: F401 -- re-exported: benchmarks/curation_speed.py reads JSONL through it
    shard_suffix,
)
from percli.core.progress import ProgressFactory, plain_progress
from percli.core.rundir import write_json_atomic
from percli.curation.matcher import MetadataMatcher


def entry_counts(ids: np.ndarray, num_entries: int) -> np.ndarray:
    """c_e for every entry (uint64) from the flat ids of a CSR match list (distinct ids per text)."""
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=num_entries).astype(np.uint64)


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p_e = min(1, t / c_e); entries with c_e = 0 (seen by no counted text) count as tail, p_e = 1."""
    _check_t(t)
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(c > t, t / np.maximum(c, 1.0), 1.0)


def keep_probability(ids: Sequence[int], counts: np.ndarray, t: float) -> float:
    """P(x) = 1 - prod_{e in ids} (1 - min(1, t / c_e)); 0 when `ids` is empty, 1 when one entry is tail.

    The formula for one text, as the paper writes it; `keep_probabilities` is the batched form.
    """
    _check_t(t)
    miss = 1.0
    for e in set(ids):
        c = float(counts[e])
        if c <= t:
            return 1.0
        miss *= 1.0 - t / c
    return 0.0 if not ids else 1.0 - miss


def keep_probabilities(offsets: np.ndarray, ids: np.ndarray, p_entry: np.ndarray) -> np.ndarray:
    """P(x) for every text of a CSR match list (`ids[offsets[i]:offsets[i + 1]]` are text i's distinct ids)."""
    probs = np.zeros(len(offsets) - 1, dtype=np.float64)
    nonempty = np.diff(offsets) > 0
    if nonempty.any():
        # reduceat over the non-empty segments only: an empty segment would repeat its neighbour's value.
        starts = offsets[:-1][nonempty] - offsets[0]
        probs[nonempty] = 1.0 - np.multiply.reduceat(1.0 - p_entry[ids], starts)
    return probs


def keep_uniform(key: str, seed: int) -> float:
    """A uniform in [0, 1) from a stable hash of (seed, key): the same on every machine and process."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def keep_decision(key: str, prob: float, seed: int) -> bool:
    """Keep the record `key` with probability `prob`; deterministic per (seed, key)."""
    return keep_uniform(key, seed) < prob


def _check_t(t: float) -> None:
    if not t > 0:  # also rejects NaN
        raise ValueError(f"t must be > 0 (got {t}); use a large t (or inf) to keep every matched text")


# ---------------------------------------------------------------------------------------------
# Metadata and counts files


def load_metadata(path: str | Path) -> list[str]:
    """Read metadata: the official `metadata.json` (a JSON list of strings) or text, one entry per line.

    Text files keep every character of a line except its line ending (entries are case- and
    space-sensitive); empty lines are skipped. A folder stands for its `metadata.json` (the run dir
    of `percli curate metaclip build-metadata`).
    """
    path = Path(path)
    if path.is_dir() and (path / "metadata.json").is_file():
        path = path / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"metadata file {path} is not UTF-8 text ({e})") from None
    if path.suffix == ".json" or raw.lstrip().startswith("["):
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"metadata file {path} is not valid JSON ({e})") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ValueError(f"metadata file {path} must hold a JSON list of strings (like MetaCLIP's metadata.json)")
    else:
        entries = [line for line in raw.splitlines() if line]
    if not entries:
        raise ValueError(f"metadata file {path} holds no entries")
    return entries


def load_entry_counts(path: str | Path, entries: Sequence[str]) -> np.ndarray:
    """Counts saved as {entry: count} (our `entry_counts.json`, or the official `entry_counts_400m.json`)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{entry: count}}")
    return np.array([int(data.get(e, 0)) for e in entries], dtype=np.uint64)


def metadata_digest(entries: Sequence[str]) -> str:
    """A short hash of the metadata list: entry ids in match files mean something only with it."""
    return hashlib.sha256(json.dumps(list(entries)).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def counts_digest(counts: np.ndarray) -> str:
    """A short hash of the entry counts; a resumed shard must have been balanced with the same counts."""
    return hashlib.sha256(np.ascontiguousarray(counts, dtype=np.uint64).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Shards, per-shard progress markers (for --resume) and stats


def shard_names(inputs: Sequence[Path]) -> list[str]:
    """A unique name per input (its file name without the format extension), from the whole list.

    Every process derives the same names, so they can name match files and outputs independently.
    """
    stems = [Path(p).name.removesuffix(shard_suffix(p)) for p in inputs]
    return [stem if stems.count(stem) == 1 else f"{stem}-{i}" for i, stem in enumerate(stems)]


def _check_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"input {path} does not exist")
        shard_suffix(path)
    return paths


def _load_done_shard(marker: Path, result: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The saved stats of a shard finished by an earlier run with the same config, else None."""
    if not marker.is_file() or not result.is_file():
        return None  # a crash between the result's rename and the marker's write: redo the shard
    saved = json.loads(marker.read_text())
    if saved.get("config") != config:
        raise ValueError(f"--resume: {marker} was written with other settings ({saved.get('config')}); "
                         f"start a new output dir or drop --resume")
    return saved["stats"]


def _remove_stale_temps(target: Path) -> None:
    """Drop temp files left by a crashed earlier run on this shard (they are never renamed into place)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def _run_shards(paths: Sequence[Path], results: Sequence[Path], markers: Sequence[Path],
                configs: Sequence[dict[str, Any]], work: Callable[[int], dict[str, Any]], resume: bool,
                say: Callable[[str], None], stage: str, rank: int, world: int,
                progress: ProgressFactory | None = None) -> tuple[list[dict[str, Any]], int]:
    """Run `work(i)` on this process's shards (i = rank, rank + world, ...), skipping finished ones on resume;
    one progress line per shard (shards done, records/s, ETA) through `progress`, else into `say`.

    Returns every shard's stats in input order (gathered from all processes) and the number resumed.
    """
    mine: dict[int, dict[str, Any]] = {}
    resumed = 0
    indices = range(rank, len(paths), world)
    label = stage if world == 1 else f"{stage} (rank {rank} of {world})"
    with (progress or plain_progress(say))(label, len(indices), "shards") as bar:
        for i in indices:
            done = _load_done_shard(markers[i], results[i], configs[i]) if resume else None
            if done is not None:
                mine[i] = done
                resumed += 1
                bar.advance(skipped=True, note=f"{paths[i]} already done, skipped (--resume)")
                continue
            _remove_stale_temps(results[i])
            stats = work(i)
            write_json_atomic(markers[i], {"config": configs[i], "stats": stats})
            mine[i] = stats
            bar.advance(records=stats.get("texts", 0), note=f"{paths[i]} -> {results[i]}")
    gathered = dist.all_gather((mine, resumed), world)
    every: dict[int, dict[str, Any]] = {}
    for part, _ in gathered:
        every.update(part)
    return [every[i] for i in range(len(paths))], sum(n for _, n in gathered)


def _merge_stats(per_shard: list[dict[str, Any]]) -> dict[str, Any]:
    """Add per-shard stats in input order, so the floating-point sums do not depend on the process count."""
    total: dict[str, Any] = {"bad_examples": []}
    for stats in per_shard:
        for key, value in stats.items():
            if key == "bad_examples":
                total[key].extend(value)
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    total["bad_examples"] = total["bad_examples"][:BAD_EXAMPLES_KEPT]
    return total


def _save_npz_atomic(target: Path, **arrays: np.ndarray) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------
# Stage 1: match. matches/<name>.npz per shard holds the CSR match lists of its usable records.


MANIFEST = "manifest.json"


def _match_shard(path: Path, target: Path, matcher: MetadataMatcher, text_field: str) -> dict[str, Any]:
    """Match every usable text of one shard; save offsets (int64), ids (int32) and record positions."""
    bad = BadRecords()
    offsets, ids, index = [np.zeros(1, dtype=np.int64)], [], []
    total = 0
    for batch in read_batches(path, text_field, bad):
        batch_offsets, batch_ids = matcher.match_batch(batch.texts)
        offsets.append(batch_offsets[1:] + total)
        ids.append(batch_ids.astype(np.int32))  # 500k entries fit; halves the files
        index.append(batch.index)
        total += len(batch_ids)
    offsets_all = np.concatenate(offsets)
    _save_npz_atomic(target, offsets=offsets_all, ids=np.concatenate(ids or [np.zeros(0, np.int32)]),
                     index=np.concatenate(index or [np.zeros(0, np.int64)]))
    texts = len(offsets_all) - 1
    return {"texts": texts, "matched": int((np.diff(offsets_all) > 0).sum()), "bad": bad.count,
            "bad_examples": bad.examples, "duplicate_keys": bad.duplicate_keys}


def match_shards(inputs: Sequence[str | Path], output_dir: str | Path, entries: Sequence[str],
                 text_field: str = "text", resume: bool = False, log: Callable[[str], None] | None = None,
                 *, rank: int = 0, world: int = 1, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Stage 1: write `output_dir/matches/<name>.npz` for every input shard; returns the stats.

    Process `rank` of `world` (see `percli.core.dist`) matches `inputs[rank::world]`. Rank 0 then writes
    `matches/manifest.json` (inputs, names, text field, metadata hash), which `count` and
    `balance --matches` read.
    """
    inputs = _check_inputs(inputs)
    output_dir = Path(output_dir)
    say = log or (lambda _msg: None)
    (output_dir / "matches").mkdir(parents=True, exist_ok=True)
    (output_dir / "progress").mkdir(exist_ok=True)
    names = shard_names(inputs)
    digest = metadata_digest(entries)
    matcher = MetadataMatcher(entries)
    results = [output_dir / "matches" / f"{name}.npz" for name in names]
    markers = [output_dir / "progress" / f"{name}.match.json" for name in names]
    configs = [{"input": str(p.resolve()), "text_field": text_field, "metadata": digest} for p in inputs]
    per_shard, resumed = _run_shards(
        inputs, results, markers, configs,
        lambda i: _match_shard(inputs[i], results[i], matcher, text_field), resume, say, "match", rank, world,
        progress)
    if rank == 0:
        write_json_atomic(output_dir / "matches" / MANIFEST, {
            "inputs": [str(p.resolve()) for p in inputs], "names": names, "text_field": text_field,
            "metadata": digest, "num_entries": len(entries), "shards": per_shard})
    dist.barrier(world)  # `count` and `balance --matches` read the manifest next
    return {**match_totals(per_shard), "resumed_shards": resumed, "world_size": world}


def match_totals(per_shard: list[dict[str, Any]]) -> dict[str, Any]:
    """Texts read, matched, bad records and duplicate tar keys over the shards of a match run (e.g. its manifest's)."""
    total = _merge_stats(per_shard)
    return {"texts_read": total.get("texts", 0), "matched": total.get("matched", 0), "bad_records": total.get("bad", 0),
            "bad_examples": total["bad_examples"], "duplicate_keys": total.get("duplicate_keys", 0),
            "shards": len(per_shard)}


def load_manifest(match_dir: str | Path, entries: Sequence[str]) -> dict[str, Any]:
    """The manifest of a finished `match` run in `match_dir`, checked against the metadata."""
    path = Path(match_dir) / "matches" / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{match_dir} holds no finished match run ({path} is missing); "
                                f"run `percli curate metaclip match` into it first")
    manifest = json.loads(path.read_text())
    if manifest["metadata"] != metadata_digest(entries):
        raise ValueError(f"{match_dir} was matched with other metadata (entry ids would not line up); "
                         f"pass the same --metadata or match again")
    return manifest


# ---------------------------------------------------------------------------------------------
# Stage 2: count. c_e summed over shards and processes.


def count_matches(match_dir: str | Path, entries: Sequence[str], *, rank: int = 0,
                  world: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Entry counts over every shard of a match run (each process counts shards rank::world, the
    counts of disjoint shards are summed over processes) and its manifest."""
    match_dir = Path(match_dir)
    manifest = load_manifest(match_dir, entries)
    counts = np.zeros(len(entries), dtype=np.uint64)
    for name in manifest["names"][rank::world]:
        with np.load(match_dir / "matches" / f"{name}.npz", allow_pickle=False) as stored:
            counts += entry_counts(stored["ids"], len(entries))
    return dist.all_reduce_sum(counts, world), manifest


def save_counts(counts: np.ndarray, entries: Sequence[str], output_dir: Path, *, rank: int = 0) -> None:
    """entry_counts.json ({entry: count}, the official format), written by rank 0."""
    if rank == 0:
        write_json_atomic(output_dir / "entry_counts.json", {e: int(c) for e, c in zip(entries, counts)})


# ---------------------------------------------------------------------------------------------
# Stage 3: balance. One coin per record, kept records written in the input's format.


class _StoredMatches:
    """A shard's saved CSR matches, handed out batch by batch in reading order."""

    def __init__(self, path: Path, source: Path):
        with np.load(path, allow_pickle=False) as stored:
            self.offsets, self.ids, self.index = stored["offsets"], stored["ids"], stored["index"]
        self.path, self.source, self.row = path, source, 0

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(self.row, self.row + len(index))
        if not np.array_equal(self.index[rows], index):
            raise ValueError(f"{self.source} changed since its matches {self.path} were written; match it again")
        offsets = self.offsets[self.row:self.row + len(index) + 1]
        self.row += len(index)
        return offsets - offsets[0], self.ids[offsets[0]:offsets[-1]].astype(np.int64)

    def check_finished(self) -> None:
        if self.row != len(self.index):
            raise ValueError(f"{self.source} changed since its matches {self.path} were written; match it again")


def _balance_shard(path: Path, target: Path, matches: MetadataMatcher | Path, p_entry: np.ndarray, seed: int,
                   text_field: str, output_format: str) -> dict[str, Any]:
    """Balance one shard into `target` (via a temp file), with its saved matches or by matching again."""
    bad = BadRecords()
    stored = _StoredMatches(matches, path) if isinstance(matches, Path) else None
    texts = matched = kept_total = 0
    prob_sum = var_sum = 0.0
    with open_writer(target, path, output_format) as writer:
        for batch in read_batches(path, text_field, bad):
            offsets, ids = stored.take(batch.index) if stored else matches.match_batch(batch.texts)
            probs = keep_probabilities(offsets, ids, p_entry)
            coins = np.fromiter((keep_uniform(text if key is None else key, seed)
                                 for key, text in zip(batch.keys, batch.texts)), dtype=np.float64, count=len(probs))
            kept = np.flatnonzero(coins < probs)
            writer.write(batch, kept, [ids[offsets[k]:offsets[k + 1]].tolist() for k in kept.tolist()])
            texts += len(probs)
            matched += int((probs > 0).sum())
            kept_total += len(kept)
            prob_sum += float(probs.sum())
            var_sum += float((probs * (1.0 - probs)).sum())
        if stored:
            stored.check_finished()
        writer.commit()
    return {"texts": texts, "matched": matched, "kept": kept_total, "prob_sum": prob_sum, "var_sum": var_sum,
            "bad": bad.count, "bad_examples": bad.examples, "duplicate_keys": bad.duplicate_keys, "output": str(target)}


def balance_shards(inputs: Sequence[str | Path], output_dir: str | Path, entries: Sequence[str], counts: np.ndarray,
                   t: float, seed: int = 0, text_field: str = "text", output_format: str = "same",
                   match_dir: str | Path | None = None, resume: bool = False,
                   log: Callable[[str], None] | None = None, counts_from: str = "given", *, rank: int = 0,
                   world: int = 1, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Stage 3: write each input's kept records to `output_dir/curated/`; returns the summary.

    Uses the saved matches of `match_dir` (a `match` run over these inputs) when given, else
    matches again. Process `rank` of `world` balances `inputs[rank::world]`; rank 0 writes summary.json and
    entry_counts.png. After each shard's rename a marker `progress/<name>.json` records it as done.
    """
    _check_t(t)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    inputs = _check_inputs(inputs)
    output_dir = Path(output_dir)
    say = log or (lambda _msg: None)
    counts = np.asarray(counts, dtype=np.uint64)
    if counts.shape != (len(entries),):
        raise ValueError(f"counts has shape {counts.shape}, expected ({len(entries)},) for this metadata")
    names = shard_names(inputs)
    sources: list[MetadataMatcher | Path]
    if match_dir is None:
        sources = [MetadataMatcher(entries)] * len(inputs)
    else:
        manifest = load_manifest(match_dir, entries)
        if manifest["text_field"] != text_field:
            raise ValueError(f"{match_dir} was matched with --text-field {manifest['text_field']}, not {text_field}")
        by_input = dict(zip(manifest["inputs"], manifest["names"]))
        missing = [str(p) for p in inputs if str(p.resolve()) not in by_input]
        if missing:
            raise ValueError(f"{match_dir} holds no matches of {', '.join(missing)}; match those inputs too")
        sources = [Path(match_dir) / "matches" / f"{by_input[str(p.resolve())]}.npz" for p in inputs]
    p_entry = entry_probabilities(counts, t)
    digest = counts_digest(counts)
    (output_dir / "curated").mkdir(parents=True, exist_ok=True)
    (output_dir / "progress").mkdir(exist_ok=True)
    results = [output_dir / "curated" / f"{name}{output_suffix(p, output_format)}" for p, name in zip(inputs, names)]
    markers = [output_dir / "progress" / f"{name}.json" for name in names]
    configs = [{"input": str(p.resolve()), "t": t, "seed": seed, "text_field": text_field, "counts": digest,
                "output_format": output_format} for p in inputs]
    per_shard, resumed = _run_shards(
        inputs, results, markers, configs,
        lambda i: _balance_shard(inputs[i], results[i], sources[i], p_entry, seed, text_field, output_format),
        resume, say, "balance", rank, world, progress)
    summary = _summary(_merge_stats(per_shard), counts, entries, t, seed, text_field, inputs, results, output_dir)
    summary.update(world_size=world, resumed_shards=resumed, output_format=output_format, counts_from=counts_from)
    if rank == 0:
        write_json_atomic(output_dir / "summary.json", summary)
        from percli.curation.plot import save_entry_counts_png

        save_entry_counts_png(counts, t, output_dir / "entry_counts.png")
    dist.barrier(world)  # no process returns before the summary exists
    return summary


def curate_shards(inputs: Sequence[str | Path], output_dir: str | Path, entries: Sequence[str], t: float,
                  seed: int = 0, text_field: str = "text", output_format: str = "same",
                  log: Callable[[str], None] | None = None, resume: bool = False, *, rank: int = 0,
                  world: int = 1, progress: ProgressFactory | None = None) -> dict[str, Any]:
    """MetaCLIP-curate shards in one go (match, count, balance) into `output_dir`; returns the summary.

    Match files go to `output_dir/matches/` (so each text is matched once), entry_counts.json,
    summary.json and entry_counts.png to `output_dir`, kept records to `output_dir/curated/<name>`
    in the input's format (see `percli.core.data.shards`), each with its matched entry ids. All
    files are written to a temp name, then renamed.

    Under `accelerate launch` or torchrun every process calls this with the same arguments and its
    `rank` of `world` (from `percli.core.dist.init()`, computed once per run): it handles
    `inputs[rank::world]`, the entry counts are summed over processes, and the outputs equal those of
    one process.

    Args:
        inputs: shard files (.jsonl, .jsonl.gz, .parquet, WebDataset .tar).
        output_dir: where everything goes (created if missing).
        entries: the metadata list.
        t: the balancing threshold (20,000 for MetaCLIP-400M); must be > 0; inf keeps all matched texts.
        seed: seeds the per-record keep coins.
        text_field: the record field (or tar member extension) holding the alt-text.
        output_format: "same" (records in the input's format) or "index" (positions and entry ids).
        log: called with progress lines.
        progress: makes the per-stage progress (`RunContext.progress`); without it, plain lines go to `log`.
        resume: skip shards whose markers show they were matched / balanced with the same settings.
        rank, world: this process and the number of processes (0 and 1 for one process).
    """
    _check_t(t)
    say = log or (lambda _msg: None)
    match_shards(inputs, output_dir, entries, text_field, resume, say, rank=rank, world=world, progress=progress)
    counts, _ = count_matches(output_dir, entries, rank=rank, world=world)
    say(f"count: {int((counts > 0).sum())} entries matched over {len(inputs)} shard(s)")
    save_counts(counts, entries, Path(output_dir), rank=rank)
    return balance_shards(inputs, output_dir, entries, counts, t, seed, text_field, output_format,
                          match_dir=output_dir, resume=resume, log=say, counts_from="inputs", rank=rank, world=world,
                          progress=progress)


def _summary(total: dict[str, Any], counts: np.ndarray, entries: Sequence[str], t: float, seed: int,
             text_field: str, inputs: Sequence[Path], outputs: Sequence[Path], output_dir: Path) -> dict[str, Any]:
    """The summary.json object from the merged shard stats."""
    return {
        "method": "metaclip",
        "texts_read": total.get("texts", 0),
        "matched": total.get("matched", 0),
        "kept": total.get("kept", 0),
        "expected_kept": total.get("prob_sum", 0.0),
        "kept_sd": math.sqrt(total.get("var_sum", 0.0)),
        "kept_fraction_of_matched": total["kept"] / total["matched"] if total.get("matched") else 0.0,
        "bad_records": total.get("bad", 0),
        "bad_examples": total["bad_examples"],
        "duplicate_keys": total.get("duplicate_keys", 0),
        "t": t,
        "seed": seed,
        "text_field": text_field,
        "num_entries": len(entries),
        "entries_matched": int((counts > 0).sum()),
        "head_entries": int((counts > t).sum()),
        "inputs": [str(p) for p in inputs],
        "outputs": [str(p) for p in outputs],
        "output_dir": str(output_dir),
    }
