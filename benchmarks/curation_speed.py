"""MetaCLIP sub-string matching speed: percli's `MetadataMatcher` against the official Aho-Corasick method.

Both matchers run in one process on the same metadata and the same texts:

* ``official``  what MetaCLIP's v1 `substr_matching_ahocorasick.py` does: every entry is added to a
                pyahocorasick `Automaton` as ``" " + entry + " "`` with value ``(id, entry)``,
                ``make_automaton()`` is called, and each text is normalised with the official
                ``str.replace`` chain, then the ids from ``automaton.iter(spaced_text)`` are collected
                into a set and returned as ``list(set)`` (unsorted, as upstream).
* ``percli``    ``MetadataMatcher(entries).match_many(texts)``: the batched trie walk, returning the same
                per-text lists of ids (sorted).

Reported: build time of each matcher, matching throughput in texts/s per core (best of ``--repeats``
interleaved passes, the process pinned to ``--cores`` cores where `os.sched_setaffinity` exists),
the ratio percli / official, a check that both give the same sorted ids on every text (exit code 1
if not), and percli's 1 vs 2 process scaling (texts split into shards, one matcher built per
process, only matching timed, each worker pinned to its own core when there are enough).

Data (deterministic from ``--seed``, nothing downloaded) unless files are given:

* metadata: a proxy shaped like MetaCLIP's 500k list: "0".."99", lower-case single words from a
  synthetic Zipfian vocabulary (about half), 2-3 word phrases (~20%), capitalised titles (~12%),
  capitalised single words as top-up, a few hyphenated and never-matchable (``St. Louis``-like)
  entries. ``--metadata FILE`` reads the official ``metadata.json`` (or one entry per line) instead.
* texts: alt-text-like strings: 70% with a lognormal word count (median ~7) drawn Zipf-weighted
  from the same vocabulary, some with a metadata phrase, a capital, inner commas, a junk token or
  trailing punctuation; 30% junk only (file names, hashes, camera codes). ``--texts-file FILE.jsonl``
  reads a ``text`` field (``--text-field``) instead.

Example (about a minute on 2 cores):
    python benchmarks/curation_speed.py --entries 500000 --texts 100000
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from percli.core.data.shards import read_records
from percli.curation.matcher import MetadataMatcher, spaced_entry, spacing

try:
    import ahocorasick
except ImportError:  # pragma: no cover - reported at run time
    ahocorasick = None

# ---------------------------------------------------------------------------------------------
# The official method (described in /work/shared/research/curation.md §1.2; re-written, not copied)

_OFFICIAL_PUNCTS = ",.;:?!`"


def official_spacing(text: str) -> str:
    """v1 `spacing`, as the official chain of str.replace calls."""
    text = f" {text} "
    for p in _OFFICIAL_PUNCTS:
        text = text.replace(p, f" {p} ")
    for c in "\t\n\r":
        text = text.replace(c, " ")
    return text


def build_official(entries: Sequence[str]):
    automaton = ahocorasick.Automaton()
    for entry_id, entry in enumerate(entries):
        automaton.add_word(spaced_entry(entry), (entry_id, entry))
    automaton.make_automaton()
    return automaton


def official_match(automaton, text: str) -> list[int]:
    ids = set()
    for _end, (entry_id, _entry) in automaton.iter(official_spacing(text)):
        ids.add(entry_id)
    return list(ids)


# ---------------------------------------------------------------------------------------------
# Synthetic metadata and texts

_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sk", "st", "str", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ou", "ai", "y"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rt", "x"]
_JUNK_STEMS = ["IMG", "DSC", "DCIM", "image", "photo", "screenshot", "untitled", "file", "pic", "P"]
_JUNK_EXTS = ["jpg", "jpeg", "png", "gif", "webp", "JPG"]
_UNMATCHABLE = ["St. Louis", "U.S.", "e.g.", "Mr. Smith", "Yahoo!", "what?", "a, b", "C:"]


def _word(rng: random.Random) -> str:
    n = rng.choices((1, 2, 3, 4), (0.35, 0.42, 0.18, 0.05))[0]
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))


def make_vocabulary(size: int, seed: int) -> list[str]:
    """`size` distinct lower-case words in Zipf rank order (frequent words tend to be short)."""
    rng = random.Random(f"vocab-{seed}")
    words: set[str] = set()
    while len(words) < size:
        w = _word(rng)
        if len(w) >= 2:
            words.add(w)
    ordered = sorted(words)  # set order is not deterministic across runs; sort, then shuffle by key
    keyed = [(len(w) + rng.gauss(0.0, 2.5), w) for w in ordered]
    keyed.sort()
    return [w for _, w in keyed]


def _zipf_cum(n: int, s: float = 1.0) -> list[float]:
    cum, total = [], 0.0
    for r in range(n):
        total += 1.0 / (r + 1) ** s
        cum.append(total)
    return cum


def make_metadata(num_entries: int, vocab: list[str], seed: int) -> list[str]:
    """A MetaCLIP-shaped proxy list of `num_entries` distinct entries."""
    rng = random.Random(f"meta-{seed}")
    entries: list[str] = [str(i) for i in range(100)]
    seen = set(entries)

    def add(e: str) -> None:
        if e not in seen and len(entries) < num_entries:
            seen.add(e)
            entries.append(e)

    for e in _UNMATCHABLE:
        add(e)
    n_uni = int(num_entries * 0.50)
    n_phrase = int(num_entries * 0.20)
    n_title = int(num_entries * 0.12)
    for w in vocab[: min(n_uni, len(vocab))]:
        add(w)
    # phrases: words from the frequent half so that texts contain them now and then
    head = vocab[: min(len(vocab), 60000)]
    cum = _zipf_cum(len(head), 0.8)
    while len(entries) < 100 + n_uni + n_phrase and len(entries) < num_entries:
        k = 2 if rng.random() < 0.85 else 3
        words = rng.choices(head, cum_weights=cum, k=k)
        sep = "-" if rng.random() < 0.03 else " "
        add(sep.join(words))
    target = len(entries) + n_title
    while len(entries) < min(target, num_entries):
        k = rng.choices((1, 2, 3), (0.4, 0.45, 0.15))[0]
        add(" ".join(w.capitalize() for w in rng.choices(vocab, k=k)))
    for w in vocab:  # top-up: capitalised single words, frequent first
        if len(entries) >= num_entries:
            break
        add(w.capitalize())
    while len(entries) < num_entries:  # only for tiny vocabularies
        add(_word(rng) + str(rng.randrange(1000)))
    return entries


def _junk(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return f"{rng.choice(_JUNK_STEMS)}_{rng.randrange(10000):04d}.{rng.choice(_JUNK_EXTS)}"
    if kind < 0.7:
        return "".join(rng.choice("0123456789abcdef") for _ in range(rng.randrange(8, 33)))
    if kind < 0.85:
        return "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(rng.randrange(4, 12)))
    return f"{rng.choice(_JUNK_STEMS)}{rng.randrange(100000)}"


def make_texts(n: int, vocab: list[str], phrases: list[str], seed: int) -> list[str]:
    """`n` alt-text-like strings (see the module docstring)."""
    rng = random.Random(f"texts-{seed}")
    head = vocab[: min(len(vocab), 60000)]
    cum = _zipf_cum(len(head))
    texts = []
    for _ in range(n):
        if rng.random() < 0.3:
            texts.append(" ".join(_junk(rng) for _ in range(rng.randrange(1, 3))))
            continue
        k = max(1, min(40, round(math.exp(rng.gauss(math.log(7), 0.55)))))
        words = rng.choices(head, cum_weights=cum, k=k)
        if phrases and rng.random() < 0.35:
            words.insert(rng.randrange(len(words) + 1), rng.choice(phrases))
        if rng.random() < 0.15:
            i = rng.randrange(len(words))
            words[i] += rng.choice([",", ",", ";", ":"])
        if rng.random() < 0.10:
            words.insert(rng.randrange(len(words) + 1), _junk(rng))
        text = " ".join(words)
        if rng.random() < 0.30:
            text = text[:1].upper() + text[1:]
        if rng.random() < 0.25:
            text += rng.choice([".", "!", "?", " - stock photo", ", free download", " | wallpaper", "..."])
        if rng.random() < 0.03:
            text = text.replace(" ", "\t", 1)
        texts.append(text)
    return texts


# ---------------------------------------------------------------------------------------------
# Measurement helpers


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _pin(cores: Sequence[int]) -> list[int] | None:
    if hasattr(os, "sched_setaffinity") and cores:
        os.sched_setaffinity(0, set(cores))
        return sorted(os.sched_getaffinity(0))
    return None


def _time_pass(fn, texts: Sequence[str]) -> tuple[float, list]:
    """Time `fn(texts) -> one id list per text`."""
    start = time.perf_counter()
    out = fn(texts)
    return time.perf_counter() - start, out


def _worker(args: tuple) -> None:
    """One scaling worker: pin, build a matcher, then `repeats` times wait for the others and time its shard."""
    entries, shard, core, barrier, queue, repeats = args
    if core is not None:
        _pin([core])
    matcher = MetadataMatcher(entries)
    times = []
    n_ids = 0
    for _ in range(repeats):
        barrier.wait()
        start = time.perf_counter()
        n_ids = len(matcher.match_batch(shard)[1])
        times.append(time.perf_counter() - start)
    queue.put({"texts": len(shard), "seconds": times, "ids": n_ids, "core": core})


def scaling(entries: list[str], texts: list[str], procs: int, cores: list[int], ctx_name: str,
            repeats: int = 1) -> dict[str, Any]:
    """Aggregate percli throughput with `procs` worker processes (texts split into `procs` shards).

    Every round starts all workers together (a barrier); a round lasts as long as its slowest worker;
    the best round is reported.
    """
    ctx = mp.get_context(ctx_name)
    barrier = ctx.Barrier(procs)
    queue = ctx.Queue()
    shards = [texts[i::procs] for i in range(procs)]
    pin = len(cores) >= procs
    workers = [ctx.Process(target=_worker, args=((entries, shard, cores[i] if pin else None, barrier, queue, repeats),))
               for i, shard in enumerate(shards)]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"scaling worker exited with {w.exitcode}")
    rounds = [max(r["seconds"][k] for r in results) for k in range(repeats)]
    best_round = min(range(repeats), key=rounds.__getitem__)
    wall = rounds[best_round]
    total = sum(r["texts"] for r in results)
    return {
        "processes": procs,
        "pinned_cores": [r["core"] for r in results] if pin else None,
        "texts": total,
        "matching_s": wall,
        "texts_per_s": total / wall,
        "texts_per_s_per_process": [r["texts"] / r["seconds"][best_round] for r in results],
        "rounds_texts_per_s": [total / w for w in rounds],
        "ids": sum(r["ids"] for r in results),
    }


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=500000, help="size of the synthetic metadata (default 500000)")
    p.add_argument("--texts", type=int, default=100000, help="number of synthetic texts (default 100000)")
    p.add_argument("--metadata", help="official metadata.json (JSON list) or one entry per line, instead")
    p.add_argument("--texts-file", help="JSONL file whose --text-field holds the texts, instead")
    p.add_argument("--text-field", default="text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, default=1, help="cores the single-process comparison may use (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed passes (interleaved) and scaling rounds; the best is reported (default 3)")
    p.add_argument("--procs", type=int, default=2, help="processes for the scaling test (default 2; 0 skips it)")
    p.add_argument("--mp-context", default="fork" if "fork" in mp.get_all_start_methods() else "spawn",
                   choices=mp.get_all_start_methods())
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if ahocorasick is None:
        print("pyahocorasick is not installed (pip install pyahocorasick)", file=sys.stderr)
        return 2
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))

    t0 = time.perf_counter()
    vocab = make_vocabulary(max(300000, args.entries * 3 // 5), args.seed) if not (
        args.metadata and args.texts_file) else []
    if args.metadata:
        from percli.curation.metaclip import load_metadata

        entries = load_metadata(args.metadata)
        meta_src = args.metadata
    else:
        entries = make_metadata(args.entries, vocab, args.seed)
        meta_src = f"synthetic(seed={args.seed})"
    if args.texts_file:
        texts = [text for _, _, text in read_records(args.texts_file, args.text_field)]
        text_src = args.texts_file
    else:
        phrases = [e for e in entries if " " in e and not any(p in e for p in _OFFICIAL_PUNCTS)]
        texts = make_texts(args.texts, vocab, phrases, args.seed)
        text_src = f"synthetic(seed={args.seed})"
    if not texts:
        print("no texts", file=sys.stderr)
        return 2
    n_dup = len(entries) - len(set(entries))
    log(f"data: {len(entries)} entries ({meta_src}), {len(texts)} texts ({text_src}, "
        f"mean {sum(map(len, texts)) / len(texts):.1f} chars) in {time.perf_counter() - t0:.1f}s")

    cores = _pin(allowed[: max(1, args.cores)])
    log(f"pinned to cores {cores}" if cores is not None else "os.sched_setaffinity unavailable: not pinned")
    n_cores = len(cores) if cores is not None else (os.cpu_count() or 1)

    # build: official first, then percli (RSS deltas are approximate: freed memory may be reused)
    rss0 = _rss_mb()
    start = time.perf_counter()
    automaton = build_official(entries)
    build_official_s = time.perf_counter() - start
    rss1 = _rss_mb()
    start = time.perf_counter()
    matcher = MetadataMatcher(entries)
    build_percli_s = time.perf_counter() - start
    rss2 = _rss_mb()
    log(f"build: official automaton {build_official_s:.2f}s, percli matcher {build_percli_s:.2f}s")

    def off(texts: Sequence[str]) -> list[list[int]]:
        return [official_match(automaton, text) for text in texts]

    best = {"official": math.inf, "percli": math.inf}
    out_off = out_per = None
    for r in range(max(1, args.repeats)):
        s, o = _time_pass(off, texts)
        best["official"] = min(best["official"], s)
        s2, p = _time_pass(matcher.match_many, texts)
        best["percli"] = min(best["percli"], s2)
        if r == 0:
            out_off, out_per = o, p
        log(f"pass {r + 1}: official {len(texts) / s:,.0f} texts/s, percli {len(texts) / s2:,.0f} texts/s")

    # verification: identical sorted id lists on every text (and the two spacings agree)
    canon = None
    if n_dup:  # the automaton keeps only the last id of a repeated string; map percli ids the same way
        last = {e: i for i, e in enumerate(entries)}
        canon = [last[e] for e in entries]
    mismatches = []
    n_ids = 0
    for i, (o, p) in enumerate(zip(out_off, out_per)):
        po = sorted({canon[e] for e in p}) if canon else p
        n_ids += len(p)
        if sorted(o) != po or (canon is None and p != sorted(p)):
            mismatches.append(i)
    spacing_diff = sum(official_spacing(t) != spacing(t) for t in texts)
    matched = sum(bool(p) for p in out_per)

    scale: dict[str, Any] = {}
    if args.procs > 1:
        log(f"scaling: percli, 1 vs {args.procs} processes ({args.mp_context})")
        one = scaling(entries, texts, 1, allowed, args.mp_context, max(1, args.repeats))
        many = scaling(entries, texts, args.procs, allowed, args.mp_context, max(1, args.repeats))
        scale = {"one": one, "many": many, "speedup": many["texts_per_s"] / one["texts_per_s"],
                 "efficiency": many["texts_per_s"] / one["texts_per_s"] / args.procs}
        if one["ids"] != n_ids or many["ids"] != n_ids:
            mismatches.append(-1)
            log(f"SCALING MISMATCH: id totals {one['ids']} / {many['ids']} vs {n_ids}")

    tps_off = len(texts) / best["official"]
    tps_per = len(texts) / best["percli"]
    result = {
        "entries": len(entries),
        "duplicate_entries": n_dup,
        "texts": len(texts),
        "metadata_source": meta_src,
        "texts_source": text_src,
        "texts_matched": matched,
        "matches": n_ids,
        "cores": cores,
        "n_cores": n_cores,
        "repeats": args.repeats,
        "official": {"build_s": build_official_s, "texts_per_s": tps_off, "texts_per_s_per_core": tps_off / n_cores,
                     "rss_delta_mb": (rss1 - rss0) if rss0 is not None else None},
        "percli": {"build_s": build_percli_s, "texts_per_s": tps_per, "texts_per_s_per_core": tps_per / n_cores,
                   "rss_delta_mb": (rss2 - rss1) if rss1 is not None else None},
        "ratio_percli_over_official": tps_per / tps_off,
        "build_ratio_percli_over_official": build_percli_s / build_official_s,
        "ids_identical": not mismatches,
        "mismatched_texts": len(mismatches),
        "first_mismatches": mismatches[:5],
        "spacing_differences": spacing_diff,
        "scaling": scale,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        w = 34
        print()
        print(f"{'':{w}} {'official (AC)':>15} {'percli':>15} {'percli/official':>16}")
        print(f"{'build (s)':{w}} {build_official_s:15.2f} {build_percli_s:15.2f} "
              f"{build_percli_s / build_official_s:16.2f}")
        if rss0 is not None:
            print(f"{'build RSS delta (MB, approx.)':{w}} {rss1 - rss0:15.0f} {rss2 - rss1:15.0f}")
        print(f"{f'match texts/s/core ({n_cores} core)':{w}} {tps_off / n_cores:15,.0f} {tps_per / n_cores:15,.0f} "
              f"{tps_per / tps_off:16.2f}")
        print(f"texts {len(texts)}, matched {matched} ({matched / len(texts):.1%}), {n_ids} (text, entry) matches, "
              f"{n_ids / max(matched, 1):.1f} per matched text")
        if scale:
            one, many = scale["one"], scale["many"]
            print(f"percli scaling: 1 process {one['texts_per_s']:,.0f} texts/s, {many['processes']} processes "
                  f"{many['texts_per_s']:,.0f} texts/s -> speedup {scale['speedup']:.2f}x "
                  f"(efficiency {scale['efficiency']:.0%}, pinned {many['pinned_cores']})")
        print("ids identical on all texts: " + ("yes" if not mismatches else f"NO ({len(mismatches)} texts)"))
    if mismatches:
        print(f"MISMATCH: percli and official ids differ on {len(mismatches)} texts, e.g. "
              f"{[texts[i] for i in mismatches[:3] if i >= 0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
