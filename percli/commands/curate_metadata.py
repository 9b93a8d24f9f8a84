"""`percli curate metaclip build-metadata`: build (or check) MetaCLIP's metadata list."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from percli.commands.run import err, fail
from percli.core.rundir import write_json_atomic
from percli.curation import metadata_build as mb
from percli.curation.metaclip import BadRecords, load_metadata

WORDFREQ = Path("wordfreq")  # --unigrams wordfreq: the package, unless a file of that name exists


def build_metadata(
    wordnet: Path = typer.Option(
        mb.DEFAULT_WORDNET_DIR, "--wordnet", help="Folder with the WordNet 3.0 database files data.{noun,verb,adj,adv} "
                                                  "(Debian/Ubuntu: apt-get install wordnet-base)."),
    no_wordnet: bool = typer.Option(False, "--no-wordnet", help="Leave the WordNet synsets out."),
    unigrams: list[Path] | None = typer.Option(
        None, "--unigrams", help="Word counts: the official enwiki-unigram.txt (\"word count\"), or word<TAB>count "
                                 "TSV (.gz read too). Repeatable. The word 'wordfreq' instead takes the "
                                 "--wordfreq-top most frequent English words of the wordfreq package."),
    min_unigram_count: int = typer.Option(mb.MIN_UNIGRAM_COUNT, "--min-unigram-count",
                                          help="Keep words counted at least this often."),
    wordfreq_top: int = typer.Option(mb.PAPER_UNIGRAM_COUNT, "--wordfreq-top",
                                     help="Words taken by --unigrams wordfreq (default: the paper's unigram count)."),
    bigrams: Path | None = typer.Option(
        None, "--bigrams",
        help="Bigram counts: the official 2gram.txt.gz (count<TAB>w1<TAB>w2), or \"w1 w2\"<TAB>count."),
    bigram_unigrams: Path | None = typer.Option(
        None, "--bigram-unigrams", help="Unigram counts the PMI is computed over: the official 1gram.txt.gz "
                                        "(count<TAB>word) or word<TAB>count (default: the single --unigrams file)."),
    min_pmi: float = typer.Option(mb.MIN_BIGRAM_PMI, "--min-pmi", help="Keep bigrams with PMI at least this."),
    titles: list[Path] | None = typer.Option(
        None, "--titles", help="Wikipedia pageview dumps (pageviews-YYYYMMDD-HH0000.gz), the official "
                               "title_counts.json, or title<TAB>views TSV. Repeatable; quote a pattern "
                               "to pass many: --titles 'pageviews/*.gz'."),
    min_title_views: int = typer.Option(mb.MIN_TITLE_VIEWS, "--min-title-views",
                                        help="Keep titles viewed at least this often in total."),
    max_entries: int = typer.Option(mb.MAX_ENTRIES, "--max-entries", help="Stop adding entries at this size."),
    from_file: Path | None = typer.Option(
        None, "--from", help="Check and re-write an existing metadata.json instead of building one (ids unchanged)."),
    output: Path = typer.Option(Path("metadata.json"), "--output", "-o", help="Where to write the JSON list."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Build MetaCLIP's metadata list ("0".."99", WordNet, Wikipedia unigrams, bigrams, titles), official rules.

    Entries are merged in that source order, empty and single-punctuation terms dropped, up to
    --max-entries (500,000). The order is deterministic: within a source by count (PMI for bigrams)
    descending, then alphabetically; WordNet in NLTK's order. Example:
    [bold]percli curate metaclip build-metadata --unigrams enwiki-unigram.txt --bigrams 2gram.txt.gz
    --bigram-unigrams 1gram.txt.gz --titles 'pageviews/*.gz' -o metadata.json[/]
    (with no sources: WordNet only). [bold]--from metadata.json[/] checks a list you have.
    """
    if output.is_dir():
        fail(f"--output {output} is a folder; give a file path such as {output / 'metadata.json'}")
    if output.exists() and not overwrite:
        fail(f"{output} exists; pass --overwrite to replace it or -o to choose another path")
    bad = BadRecords()
    summary: dict = {"output": str(output)}
    if from_file is not None:
        if unigrams or bigrams or titles or bigram_unigrams:
            fail("--from re-writes an existing list; drop --unigrams/--bigrams/--titles or drop --from")
        try:
            entries = load_metadata(from_file)
        except (FileNotFoundError, ValueError) as e:
            fail(f"--from: {e}")
        summary["from"] = str(from_file)
    else:
        unigrams, titles = _expand_globs(unigrams or []), _expand_globs(titles or [])
        use_wordfreq = WORDFREQ in unigrams and not WORDFREQ.exists()
        if use_wordfreq:
            unigrams.remove(WORDFREQ)
            if wordfreq_top < 1:
                fail(f"--wordfreq-top must be >= 1 (got {wordfreq_top})")
        if no_wordnet and not (unigrams or use_wordfreq or bigrams or titles):
            fail("nothing to build: --no-wordnet and no --unigrams/--bigrams/--titles given")
        for path in [*unigrams, *([bigrams] if bigrams else []), *titles,
                     *([bigram_unigrams] if bigram_unigrams else [])]:
            if not path.is_file():
                fail(f"input {path} does not exist")
        if bigrams and bigram_unigrams is None:
            if len(unigrams) != 1:
                fail("--bigrams needs the unigram counts its PMI is computed over: pass --bigram-unigrams "
                     "(the official 1gram.txt.gz) or exactly one --unigrams file")
            bigram_unigrams = unigrams[0]
        if max_entries < len(mb.NUMBER_ENTRIES):
            fail(f"--max-entries must be >= {len(mb.NUMBER_ENTRIES)}: the entries '0'..'99' always come first")
        try:
            sources, extra = _read_sources(None if no_wordnet else wordnet, unigrams, min_unigram_count,
                                           wordfreq_top if use_wordfreq else 0, bigrams, bigram_unigrams, min_pmi,
                                           titles, min_title_views, bad)
        except mb.WordNetMissing as e:
            fail(f"{e}. Install it with `apt-get install wordnet-base` (Debian/Ubuntu), pass --wordnet DIR "
                 f"(a folder with data.noun, data.verb, data.adj, data.adv), or --no-wordnet")
        except ValueError as e:
            fail(str(e))
        entries, summary["sources"] = mb.merge_sources(sources, max_entries)
        summary.update(extra, max_entries=max_entries)
    summary["check"] = mb.check_entries(entries)
    summary["bad_lines"] = bad.count
    summary["bad_line_examples"] = bad.examples
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, entries)
    if json_out:
        print(json.dumps(summary, indent=1))
    else:
        report(summary)


def _expand_globs(paths: list[Path]) -> list[Path]:
    """Expand quoted patterns ('pageviews/*.gz': hundreds of hourly dumps) into sorted file lists."""
    expanded: list[Path] = []
    for path in paths:
        if any(c in str(path) for c in "*?[") and not path.exists():
            matches = sorted(Path(p) for p in glob.glob(str(path)))
            if not matches:
                fail(f"no file matches {path}")
            expanded.extend(matches)
        else:
            expanded.append(path)
    return expanded


def _read_sources(wordnet: Path | None, unigrams: list[Path], min_unigram_count: int, wordfreq_top: int,
                  bigrams: Path | None, bigram_unigrams: Path | None, min_pmi: float, titles: list[Path],
                  min_title_views: int, bad: BadRecords) -> tuple[list[tuple[str, list[str]]], dict]:
    """Each requested source's terms in merge order, plus facts for the summary."""
    sources: list[tuple[str, list[str]]] = []
    extra: dict = {}
    if wordnet is not None:
        err.print(f"reading WordNet synsets from {wordnet}", highlight=False)
        sources.append(("wordnet", mb.wordnet_names(wordnet, bad)))
    if unigrams:
        err.print(f"reading unigram counts ({len(unigrams)} file(s)), keeping count >= {min_unigram_count}")
        sources.append(("wiki unigrams", mb.wiki_unigrams(unigrams, bad, min_unigram_count)))
    if wordfreq_top:
        err.print(f"taking the {wordfreq_top:,} most frequent English words of wordfreq")
        sources.append(("wordfreq unigrams", mb.wordfreq_unigrams(wordfreq_top)))
    if bigrams:
        err.print(f"scoring bigrams of {bigrams} by PMI over {bigram_unigrams}, keeping PMI >= {min_pmi:g}",
                  highlight=False)
        table = mb.read_unigram_table(bigram_unigrams, bad)
        terms, extra["bigrams_missing_word"] = mb.wiki_bigrams(bigrams, table, bad, min_pmi)
        sources.append(("wiki bigrams", terms))
    if titles:
        err.print(f"summing title views over {len(titles)} file(s), keeping total >= {min_title_views}")
        sources.append(("wiki titles", mb.wiki_titles(mb.title_views(titles, bad), min_title_views)))
    return sources, extra


def report(summary: dict) -> None:
    """Human summary on stdout; scripts use --json."""
    console = Console()
    if "sources" in summary:
        table = Table("source", "candidates", "added", "already in", "dropped", "over cap",
                      title="MetaCLIP metadata", title_justify="left")
        for row in summary["sources"]:
            table.add_row(row["source"], *(f"{row[k]:,}" for k in ("candidates", "added", "duplicates", "dropped",
                                                                     "over_cap")))
        console.print(table)
    check = summary["check"]
    lines = [f"entries: {check['entries']:,} written to {summary['output']}",
             f"duplicates: {check['duplicates']:,}, empty: {check['empty']:,}, "
             f"single punctuation: {check['single_punctuation']:,}",
             f"never matched by MetaCLIP's matcher (hold , . ; : ? ! or `): {check['never_match']:,}"]
    if "bigrams_missing_word" in summary:
        lines.append(f"bigram lines skipped (word missing from the unigram table): {summary['bigrams_missing_word']:,}")
    if check["duplicates"]:
        first = check["duplicate_examples"][0]
        lines.append(f"first duplicate: {first['entry']!r} at id {first['id']:,} (first at {first['first_id']:,})")
    if summary["bad_lines"]:
        first = summary["bad_line_examples"][0]
        lines.append(f"malformed lines skipped: {summary['bad_lines']:,} (first: {first['file']} line "
                     f"{first['line']}: {first['reason']})")
    for line in lines:
        console.print(line, highlight=False)
