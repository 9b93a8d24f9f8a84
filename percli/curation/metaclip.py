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
number of processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from percli.core.rundir import write_json_atomic
from percli.curation.matcher import MetadataMatcher


def entry_counts(matches: Iterable[Sequence[int]], num_entries: int) -> np.ndarray:
    """c_e for every entry (uint64): the number of texts whose match list holds e, once per text."""
    counts = np.zeros(num_entries, dtype=np.uint64)
    flat: list[int] = []
    for ids in matches:
        flat.extend(set(ids))
        if len(flat) > 1 << 20:  # bound memory on large pools
            counts += np.bincount(np.asarray(flat, dtype=np.int64), minlength=num_entries).astype(np.uint64)
            flat.clear()
    if flat:
        counts += np.bincount(np.asarray(flat, dtype=np.int64), minlength=num_entries).astype(np.uint64)
    return counts


def entry_probabilities(counts: np.ndarray, t: float) -> np.ndarray:
    """p_e = min(1, t / c_e); entries with c_e = 0 (seen by no counted text) count as tail, p_e = 1."""
    _check_t(t)
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(c > t, t / np.maximum(c, 1.0), 1.0)


def keep_probability(ids: Sequence[int], counts: np.ndarray, t: float) -> float:
    """P(x) = 1 - prod_{e in ids} (1 - min(1, t / c_e)); 0 when `ids` is empty, 1 when one entry is tail."""
    _check_t(t)
    miss = 1.0
    for e in set(ids):
        c = float(counts[e])
        if c <= t:
            return 1.0
        miss *= 1.0 - t / c
    return 0.0 if not ids else 1.0 - miss


def keep_probabilities(matches: Sequence[Sequence[int]], counts: np.ndarray, t: float) -> np.ndarray:
    """`keep_probability` for many texts at once (float64 array, one value per text)."""
    p_entry = entry_probabilities(counts, t)
    distinct = [sorted(set(ids)) for ids in matches]
    lengths = np.fromiter((len(ids) for ids in distinct), dtype=np.int64, count=len(distinct))
    probs = np.zeros(len(distinct), dtype=np.float64)
    nonempty = lengths > 0
    if not nonempty.any():
        return probs
    flat = np.fromiter((e for ids in distinct for e in ids), dtype=np.int64, count=int(lengths.sum()))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[nonempty]
    # reduceat over the non-empty segments only: an empty segment would repeat its neighbour's value.
    probs[nonempty] = 1.0 - np.multiply.reduceat(1.0 - p_entry[flat], starts)
    return probs


def expected_kept(probs: Iterable[float]) -> float:
    """E|D*| = sum of the keep probabilities."""
    return float(np.sum(np.fromiter(probs, dtype=np.float64)))


def keep_uniform(key: str, seed: int) -> float:
    """A uniform in [0, 1) from a stable hash of (seed, key): the same on every machine and process."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def keep_decision(key: str, prob: float, seed: int) -> bool:
    """Keep the record `key` with probability `prob`; deterministic per (seed, key)."""
    return keep_uniform(key, seed) < prob


def record_key(record: dict[str, Any], text: str) -> str:
    """What the keep coin is tied to: the record's uuid or id when it has one, else the text."""
    for field in ("uuid", "id"):
        value = record.get(field)
        if value is not None and not isinstance(value, (dict, list)):
            return str(value)
    return text


def _check_t(t: float) -> None:
    if not t > 0:  # also rejects NaN
        raise ValueError(f"t must be > 0 (got {t}); use a large t (or inf) to keep every matched text")


# ---------------------------------------------------------------------------------------------
# Metadata and JSONL streaming


def load_metadata(path: str | Path) -> list[str]:
    """Read metadata: the official `metadata.json` (a JSON list of strings) or text, one entry per line.

    Text files keep every character of a line except its line ending (entries are case- and
    space-sensitive); empty lines are skipped.
    """
    path = Path(path)
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


BAD_EXAMPLES_KEPT = 10


class BadRecords:
    """Counts malformed input lines and remembers the first few, for the summary."""

    def __init__(self, keep: int = BAD_EXAMPLES_KEPT):
        self.count = 0
        self.examples: list[dict[str, Any]] = []
        self._keep = keep

    def add(self, path: Path, line_no: int, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self._keep:
            self.examples.append({"file": str(path), "line": line_no, "reason": reason})


def read_records(path: str | Path, text_field: str = "text",
                 bad: BadRecords | None = None) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Yield (line number, record, text) for each usable line of a JSONL file.

    Lines that are not UTF-8 JSON objects with a string `text_field` are skipped and counted in
    `bad`; blank lines are skipped silently.
    """
    path = Path(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            reason = None
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                reason = "not UTF-8"
            except json.JSONDecodeError as e:
                reason = f"bad JSON: {e.msg}"
            else:
                if not isinstance(record, dict):
                    reason = "not a JSON object"
                elif text_field not in record:
                    reason = f"no {text_field!r} field"
                elif not isinstance(record[text_field], str):
                    reason = f"{text_field!r} is not a string"
            if reason is not None:
                if bad is not None:
                    bad.add(path, line_no, reason)
                continue
            yield line_no, record, record[text_field]


def count_jsonl(inputs: Sequence[Path], matcher: MetadataMatcher, text_field: str = "text",
                bad: BadRecords | None = None) -> tuple[np.ndarray, int, int]:
    """Pass 1: entry counts over JSONL files. Returns (counts, texts read, texts matched).

    Counts of disjoint shards add up: sum the vectors of separate runs to get the pool's counts.
    """
    texts = matched = 0

    def matches() -> Iterator[list[int]]:
        nonlocal texts, matched
        for path in inputs:
            for _, _, text in read_records(path, text_field, bad):
                ids = matcher.match(text)
                texts += 1
                matched += bool(ids)
                yield ids

    counts = entry_counts(matches(), len(matcher))
    return counts, texts, matched


def _output_names(inputs: Sequence[Path]) -> list[str]:
    stems = [Path(p).name.removesuffix(".jsonl") for p in inputs]
    return [f"{stem}.jsonl" if stems.count(stem) == 1 else f"{stem}-{i}.jsonl" for i, stem in enumerate(stems)]


# ---------------------------------------------------------------------------------------------
# Processes: shard-parallel over torch.distributed (gloo), one process when WORLD_SIZE is unset


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the gloo process group when launched with WORLD_SIZE > 1.

    `accelerate launch` and torchrun set WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT; gloo is enough
    because only a count vector and a few small objects travel between processes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_counts(counts: np.ndarray, world: int) -> np.ndarray:
    """Sum each process's entry counts (counts of disjoint shards add up)."""
    if world <= 1:
        return counts
    import torch
    import torch.distributed as dist

    # int64 is exact for any realistic count; gloo has no uint64 reduction.
    tensor = torch.from_numpy(counts.astype(np.int64))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.numpy().astype(np.uint64)


def _all_gather(obj: Any, world: int) -> list[Any]:
    """Every process's `obj`, in rank order."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------------------------
# Per-shard progress markers, for --resume


def counts_digest(counts: np.ndarray) -> str:
    """A short hash of the entry counts; a resumed shard must have been balanced with the same counts."""
    return hashlib.sha256(np.ascontiguousarray(counts, dtype=np.uint64).tobytes()).hexdigest()[:16]


def _marker_path(output_dir: Path, name: str) -> Path:
    return output_dir / "progress" / f"{name}.json"


def _shard_config(path: Path, t: float, seed: int, text_field: str, digest: str) -> dict[str, Any]:
    """What a finished shard's output depends on; a marker is reused only when all of it matches."""
    return {"input": str(path.resolve()), "t": t, "seed": seed, "text_field": text_field, "counts": digest}


def _load_done_shard(output_dir: Path, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The saved stats of a shard finished by an earlier run with the same config, else None."""
    marker = _marker_path(output_dir, name)
    if not marker.is_file() or not (output_dir / "curated" / name).is_file():
        return None  # a crash between the output's rename and the marker's write: redo the shard
    saved = json.loads(marker.read_text())
    if saved.get("config") != config:
        raise ValueError(f"--resume: {marker} was written with other settings ({saved.get('config')}); "
                         f"start a new output dir or drop --resume")
    return saved["stats"]


# ---------------------------------------------------------------------------------------------
# The two passes, one shard at a time


def _curate_shard(path: Path, target: Path, matcher: MetadataMatcher, p_entry: np.ndarray, seed: int,
                  text_field: str, bad: BadRecords | None) -> dict[str, Any]:
    """Pass 2 on one input: write its kept records to `target` (via a temp file); returns the shard's stats."""
    texts = matched = kept = 0
    prob_sum = var_sum = 0.0
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as out:
        for _, record, text in read_records(path, text_field, bad):
            texts += 1
            ids = matcher.match(text)
            if not ids:
                continue
            matched += 1
            prob = 1.0 - math.prod(1.0 - float(p_entry[e]) for e in ids)
            prob_sum += prob
            var_sum += prob * (1.0 - prob)
            if keep_decision(record_key(record, text), prob, seed):
                kept += 1
                record["metaclip_entries"] = ids
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return {"texts": texts, "matched": matched, "kept": kept, "prob_sum": prob_sum, "var_sum": var_sum,
            "output": str(target)}


def _remove_stale_temps(target: Path) -> None:
    """Drop temp files left by a crashed earlier run on this shard (they are never renamed into place)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def _merge_stats(per_file: list[dict[str, Any]]) -> dict[str, Any]:
    """Add per-shard stats in input order, so the floating-point sums do not depend on the process count."""
    total: dict[str, Any] = {"texts": 0, "matched": 0, "kept": 0, "prob_sum": 0.0, "var_sum": 0.0, "bad": 0,
                             "bad_examples": []}
    for stats in per_file:
        for key in ("texts", "matched", "kept", "prob_sum", "var_sum", "bad"):
            total[key] += stats[key]
        total["bad_examples"].extend(stats["bad_examples"])
    total["bad_examples"] = total["bad_examples"][:BAD_EXAMPLES_KEPT]
    return total


def curate_jsonl(inputs: Sequence[str | Path], output_dir: str | Path, entries: Sequence[str], t: float,
                 seed: int = 0, text_field: str = "text", counts: np.ndarray | None = None,
                 log: Callable[[str], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """MetaCLIP-curate JSONL files into `output_dir`; returns the summary (also saved as summary.json).

    Pass 1 matches every text of every input and counts entries (skipped when `counts` is given,
    e.g. the summed counts of a whole pool when this call handles one shard of it). Pass 2 matches
    again and writes the kept records to `output_dir/curated/<input name>.jsonl`, each with a
    `"metaclip_entries"` list of matched ids. All files are written to a temp name, then renamed;
    after each rename a marker `progress/<name>.json` records the shard as done.

    With WORLD_SIZE > 1 (`accelerate launch`, torchrun) every process calls this with the same
    arguments: rank r handles `inputs[r::world]`, the entry counts are summed over processes, and
    rank 0 writes entry_counts.json, summary.json and entry_counts.png (see `percli.curation.plot`).
    The outputs equal those of one process.

    Args:
        inputs: JSONL files with one record (a JSON object) per line.
        output_dir: where curated/, entry_counts.json and summary.json go (created if missing).
        entries: the metadata list.
        t: the balancing threshold (20,000 for MetaCLIP-400M); must be > 0; inf keeps all matched texts.
        seed: seeds the per-record keep coins.
        text_field: the record field holding the alt-text.
        counts: global entry counts to balance with, instead of counting `inputs`.
        log: called with progress lines.
        resume: skip shards whose marker shows they were finished with the same settings and counts.
            Pass 1 always reruns, so the counts (and the bad-record tally) are the same as uninterrupted.
    """
    _check_t(t)
    inputs = [Path(p) for p in inputs]
    for path in inputs:
        if not path.is_file():
            raise FileNotFoundError(f"input {path} does not exist")
    output_dir = Path(output_dir)
    say = log or (lambda _msg: None)
    rank, world = init_distributed()
    names = _output_names(inputs)  # from the whole list, so every process names files alike
    mine = list(range(rank, len(inputs), world))
    matcher = MetadataMatcher(entries)
    counted_here = counts is None
    # One BadRecords per input, so the examples can be merged in input order across processes.
    bad = {i: BadRecords() for i in mine}
    if counts is None:
        counts = np.zeros(len(entries), dtype=np.uint64)
        for i in mine:
            counts += count_jsonl([inputs[i]], matcher, text_field, bad[i])[0]
        counts = _all_reduce_counts(counts, world)
        say(f"pass 1: counted {int((counts > 0).sum())} matched entries over {len(inputs)} file(s)")
    else:
        counts = np.asarray(counts, dtype=np.uint64)
        if counts.shape != (len(entries),):
            raise ValueError(f"counts has shape {counts.shape}, expected ({len(entries)},) for this metadata")
    p_entry = entry_probabilities(counts, t)
    digest = counts_digest(counts)

    (output_dir / "curated").mkdir(parents=True, exist_ok=True)
    (output_dir / "progress").mkdir(exist_ok=True)
    per_file: dict[int, dict[str, Any]] = {}
    resumed = 0
    for i in mine:
        path, name = inputs[i], names[i]
        target = output_dir / "curated" / name
        config = _shard_config(path, t, seed, text_field, digest)
        done = _load_done_shard(output_dir, name, config) if resume else None
        if done is not None:
            if counted_here:  # this run's pass 1 re-counted the shard's bad lines
                done.update(bad=bad[i].count, bad_examples=bad[i].examples)
            per_file[i] = done
            resumed += 1
            say(f"pass 2: {path} already done, skipped (--resume)")
            continue
        _remove_stale_temps(target)
        # Pass 2 re-reads the files; bad lines are counted here only when pass 1 did not run.
        stats = _curate_shard(path, target, matcher, p_entry, seed, text_field, None if counted_here else bad[i])
        stats.update(bad=bad[i].count, bad_examples=bad[i].examples)
        write_json_atomic(_marker_path(output_dir, name), {"config": config, "stats": stats})
        per_file[i] = stats
        say(f"pass 2: {path} -> {target}")

    gathered = _all_gather((per_file, resumed), world)
    all_files: dict[int, dict[str, Any]] = {}
    for part, _ in gathered:
        all_files.update(part)
    total = _merge_stats([all_files[i] for i in range(len(inputs))])
    summary = _summary(total, counts, entries, t, seed, text_field, counted_here, inputs, output_dir)
    summary.update(world_size=world, resumed_shards=sum(n for _, n in gathered))
    if rank == 0:
        write_json_atomic(output_dir / "entry_counts.json", {e: int(c) for e, c in zip(entries, counts)})
        write_json_atomic(output_dir / "summary.json", summary)
        from percli.curation.plot import save_entry_counts_png

        save_entry_counts_png(counts, t, output_dir / "entry_counts.png")
    _barrier(world)  # no process returns before the summary exists
    return summary


def _summary(total: dict[str, Any], counts: np.ndarray, entries: Sequence[str], t: float, seed: int,
             text_field: str, counted_here: bool, inputs: Sequence[Path], output_dir: Path) -> dict[str, Any]:
    """The summary.json object from the merged shard stats."""
    names = _output_names(inputs)
    return {
        "method": "metaclip",
        "texts_read": total["texts"],
        "matched": total["matched"],
        "kept": total["kept"],
        "expected_kept": total["prob_sum"],
        "kept_sd": math.sqrt(total["var_sum"]),
        "kept_fraction_of_matched": total["kept"] / total["matched"] if total["matched"] else 0.0,
        "bad_records": total["bad"],
        "bad_examples": total["bad_examples"],
        "t": t,
        "seed": seed,
        "text_field": text_field,
        "num_entries": len(entries),
        "entries_matched": int((counts > 0).sum()),
        "head_entries": int((counts > t).sum()),
        "counts_from": "inputs" if counted_here else "given",
        "inputs": [str(p) for p in inputs],
        "outputs": [str(output_dir / "curated" / name) for name in names],
        "output_dir": str(output_dir),
    }
