"""Build MetaCLIP's metadata list by the official rules, or check one you have.

Sources, merged in this order: "0".."99", WordNet synset names, Wikipedia unigrams, bigrams and
titles; empty and single-punctuation terms dropped, up to --max-entries (500,000). The order is
deterministic: within a source by count (PMI for bigrams) descending, then alphabetically; WordNet
in NLTK's order. With no sources: WordNet only (86,654 entries with "0".."99", the paper's count).
`--from metadata.json` checks a list and rewrites it with the same ids.

Writes metadata.json (a JSON list, read by `--metadata` of the other stages, which also accept this
run dir) and summary.json (entries added per source, duplicates, unmatchable entries, bad lines) in
the output dir.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.data.shards import BadRecords
from percli.core.rundir import write_json_atomic
from percli.curation import metadata_build as mb

WORDFREQ = "wordfreq"  # --unigrams wordfreq: the package, unless a file of that name exists


@dataclass
class Config:
    wordnet: str = str(mb.DEFAULT_WORDNET_DIR)
    """Folder with the WordNet 3.0 files data.{noun,verb,adj,adv} (Debian/Ubuntu: apt-get install wordnet-base)."""
    no_wordnet: bool = False
    """Leave the WordNet synsets out."""
    unigrams: list[str] = field(default_factory=list)
    """Word counts: the official enwiki-unigram.txt ("word count"), or word<TAB>count TSV (.gz read too);
    the word 'wordfreq' takes the wordfreq_top most frequent English words of the wordfreq package."""
    min_unigram_count: int = mb.MIN_UNIGRAM_COUNT
    wordfreq_top: int = mb.PAPER_UNIGRAM_COUNT
    """Words taken by --unigrams wordfreq (the paper's unigram count)."""
    bigrams: str | None = None
    """Bigram counts: the official 2gram.txt.gz (count<TAB>w1<TAB>w2), or "w1 w2"<TAB>count."""
    bigram_unigrams: str | None = None
    """Unigram counts the PMI is computed over: the official 1gram.txt.gz (default: the one unigrams file)."""
    min_pmi: float = mb.MIN_BIGRAM_PMI
    titles: list[str] = field(default_factory=list)
    """Wikipedia pageview dumps, the official title_counts.json, or title<TAB>views TSV; patterns expand."""
    min_title_views: int = mb.MIN_TITLE_VIEWS
    max_entries: int = mb.MAX_ENTRIES
    from_file: str | None = None
    """Check and re-write this metadata.json instead of building one (ids unchanged)."""


def _expand_globs(paths: list[str], key: str) -> list[Path]:
    """Quoted patterns ('pageviews/*.gz': hundreds of hourly dumps) as sorted file lists."""
    expanded: list[Path] = []
    for path in paths:
        if any(c in path for c in "*?[") and not Path(path).exists():
            matches = sorted(Path(p) for p in glob.glob(path))
            if not matches:
                raise ConfigError(f"{key}: no file matches {path}")
            expanded.extend(matches)
        else:
            expanded.append(Path(path))
    return expanded


def _unigram_files(cfg: Config) -> tuple[list[Path], bool]:
    """The unigram count files and whether the wordfreq package is a source too."""
    files = _expand_globs(cfg.unigrams, "unigrams")
    wordfreq = Path(WORDFREQ) in files and not Path(WORDFREQ).exists()
    return [f for f in files if not (wordfreq and f == Path(WORDFREQ))], wordfreq


def validate(cfg: Config) -> None:
    if cfg.from_file is not None:
        if cfg.unigrams or cfg.bigrams or cfg.titles or cfg.bigram_unigrams:
            raise ConfigError("from_file: --from re-writes an existing list; drop --unigrams/--bigrams/--titles "
                              "or drop --from")
        from percli.curation.metaclip import load_metadata

        try:
            load_metadata(cfg.from_file)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"from_file: {e}") from None
        return
    unigrams, wordfreq = _unigram_files(cfg)
    titles = _expand_globs(cfg.titles, "titles")
    if wordfreq and cfg.wordfreq_top < 1:
        raise ConfigError(f"wordfreq_top: must be >= 1 (got {cfg.wordfreq_top})")
    if cfg.no_wordnet and not (unigrams or wordfreq or cfg.bigrams or titles):
        raise ConfigError("no_wordnet: nothing to build: --no-wordnet and no --unigrams/--bigrams/--titles given")
    for key, paths in (("unigrams", unigrams), ("bigrams", [cfg.bigrams]), ("titles", titles),
                       ("bigram_unigrams", [cfg.bigram_unigrams])):
        for path in (p for p in paths if p is not None):
            if not Path(path).is_file():
                raise ConfigError(f"{key}: input {path} does not exist")
    if cfg.bigrams and cfg.bigram_unigrams is None and len(unigrams) != 1:
        raise ConfigError("bigram_unigrams: --bigrams needs the unigram counts its PMI is computed over: pass "
                          "--bigram-unigrams (the official 1gram.txt.gz) or exactly one --unigrams file")
    if cfg.max_entries < len(mb.NUMBER_ENTRIES):
        raise ConfigError(f"max_entries: must be >= {len(mb.NUMBER_ENTRIES)} (got {cfg.max_entries}): the entries "
                          f"'0'..'99' always come first")
    missing = [f"data.{pos}" for pos in mb.WORDNET_FILES if not (Path(cfg.wordnet) / f"data.{pos}").is_file()]
    if not cfg.no_wordnet and missing:
        raise ConfigError(f"wordnet: WordNet database not found in {cfg.wordnet} (missing {', '.join(missing)}). "
                          "Install it with `apt-get install wordnet-base` (Debian/Ubuntu), pass --wordnet DIR (a "
                          "folder with data.noun, data.verb, data.adj, data.adv), or --no-wordnet")


def run(cfg: Config, ctx: RunContext) -> dict:
    from percli.curation.metaclip import load_metadata

    bad = BadRecords()
    summary: dict[str, Any] = {"status": "completed", "output": str(ctx.run_dir / "metadata.json")}
    if cfg.from_file is not None:
        entries = load_metadata(cfg.from_file)
        summary["from"] = cfg.from_file
    else:
        sources, extra = _read_sources(cfg, bad, ctx.log)
        entries, rows = mb.merge_sources(sources, cfg.max_entries)
        summary.update(sources=rows, added={row["source"]: row["added"] for row in rows}, **extra,
                       max_entries=cfg.max_entries)
    summary["check"] = mb.check_entries(entries)
    summary["bad_lines"] = bad.count
    summary["bad_line_examples"] = bad.examples
    write_json_atomic(ctx.run_dir / "metadata.json", entries)
    ctx.log(f"{len(entries):,} entries written to {summary['output']}")
    return summary


def _read_sources(cfg: Config, bad: BadRecords,
                  log: Callable[[str], None]) -> tuple[list[tuple[str, list[str]]], dict[str, Any]]:
    """Each requested source's terms in merge order, plus facts for the summary."""
    unigrams, wordfreq = _unigram_files(cfg)
    titles = _expand_globs(cfg.titles, "titles")
    sources: list[tuple[str, list[str]]] = []
    extra: dict[str, Any] = {}
    if not cfg.no_wordnet:
        log(f"reading WordNet synsets from {cfg.wordnet}")
        sources.append(("wordnet", mb.wordnet_names(Path(cfg.wordnet), bad)))
    if unigrams:
        log(f"reading unigram counts ({len(unigrams)} file(s)), keeping count >= {cfg.min_unigram_count}")
        sources.append(("wiki unigrams", mb.wiki_unigrams(unigrams, bad, cfg.min_unigram_count)))
    if wordfreq:
        log(f"taking the {cfg.wordfreq_top:,} most frequent English words of wordfreq")
        sources.append(("wordfreq unigrams", mb.wordfreq_unigrams(cfg.wordfreq_top)))
    if cfg.bigrams:
        table_path = Path(cfg.bigram_unigrams) if cfg.bigram_unigrams else unigrams[0]
        log(f"scoring bigrams of {cfg.bigrams} by PMI over {table_path}, keeping PMI >= {cfg.min_pmi:g}")
        table = mb.read_unigram_table(table_path, bad)
        terms, extra["bigrams_missing_word"] = mb.wiki_bigrams(Path(cfg.bigrams), table, bad, cfg.min_pmi)
        sources.append(("wiki bigrams", terms))
    if titles:
        log(f"summing title views over {len(titles)} file(s), keeping total >= {cfg.min_title_views}")
        sources.append(("wiki titles", mb.wiki_titles(mb.title_views(titles, bad), cfg.min_title_views)))
    return sources, extra
