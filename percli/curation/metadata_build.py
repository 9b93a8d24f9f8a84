"""Build MetaCLIP 1's metadata list: WordNet synsets, Wikipedia unigrams, bigrams and titles.

Rules follow the paper ("Demystifying CLIP Data", §3.1) and the official builder
(facebookresearch/MetaCLIP `metaclip/metaclip1/build_metadata.py`), rewritten from their definitions:

- WordNet: every synset's NLTK name (`hot_dog.n.01`) cut before its first "." with "_" -> " ".
  NLTK names a synset after its first lemma in the data file, adjective marker ("(a)", "(p)",
  "(ip)") stripped, lower-cased; the cut at the first "." truncates lemmas that hold a dot
  ("st._louis" -> "st", ".22_caliber" -> "").
- Unigrams: words with count >= 100.
- Bigrams: PMI >= 30 as NLTK's BigramCollocationFinder scores it from a unigram and a bigram
  table: log2(n_ii * N) - log2(n_i * n_j), N = the sum of all unigram counts; bigrams with a word
  missing from the unigram table are skipped.
- Titles: English pageview dump lines ("en Title views bytes") with views >= 50 in that hourly
  line (the official `int(count / 50) > 0`) and no ":" in the title, "_" -> " ", views summed over
  all files; titles with total >= 70 are kept.
- Merge: "0".."99", then WordNet, unigrams, bigrams, titles; empty strings and single punctuation
  characters dropped; stop at 500,000 entries.

Unlike the official `list(set)`, the order is deterministic: source order, then within a source
WordNet in NLTK's `all_synsets()` order (data.adj, data.adv, data.noun, data.verb by offset),
unigrams and titles by count descending then alphabetically, bigrams by PMI descending then
alphabetically (NLTK's `score_ngrams` order). A term listed twice in a count table keeps its last
count, as the official FreqDist assignment does.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
import re
import string
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from percli.curation.matcher import spaced_entry, spacing
from percli.curation.metaclip import BadRecords

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("adj", "adv", "noun", "verb")  # the order of NLTK's WordNetCorpusReader._FILEMAP
MIN_UNIGRAM_COUNT = 100
MIN_BIGRAM_PMI = 30.0
MIN_HOURLY_VIEWS = 50  # the official int(count / 50) > 0
MIN_TITLE_VIEWS = 70
MAX_ENTRIES = 500_000
PAPER_UNIGRAM_COUNT = 251_465  # the paper's English Wikipedia unigrams (also MetaCLIP 2's unigram cap)
NUMBER_ENTRIES = [str(i) for i in range(100)]
SINGLE_PUNCTUATION = frozenset(string.punctuation)
LAYOUT_SNIFF_LINES = 1000

# Adjective markers in data.adj ("(a)", "(p)", "(ip)"). NLTK strips from the first "(" of a trailing
# "(...)" (its regex `(.*?)(\(.*\))?$`); a leftmost re.sub of this pattern does the same.
_SYNTACTIC_MARKER = re.compile(r"\(.*\)$")


class WordNetMissing(FileNotFoundError):
    """The WordNet database files are not where we looked."""


# ---------------------------------------------------------------- reading files


def _lines(path: Path, bad: BadRecords) -> Iterator[tuple[int, str]]:
    """(line number, line without its ending) of a text or .gz file; undecodable lines are counted bad."""
    # GzipFile.readline is pure Python; a BufferedReader on top saves that per-line overhead.
    opener = (lambda p, mode: io.BufferedReader(gzip.open(p, mode))) if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                yield line_no, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                bad.add(path, line_no, "not UTF-8")


def _is_count(field: str) -> bool:
    return field.isascii() and field.isdigit()


def _fields(line: str) -> list[str]:
    # Tab-separated tables (the official 1gram/2gram files, simple TSV) may hold spaces inside a
    # term; the official enwiki-unigram.txt is "word count" split on whitespace.
    return [f.strip() for f in line.split("\t")] if "\t" in line else line.split()


def _count_first(rows: list[list[str]]) -> bool:
    """Whether a table puts the count first ("count<TAB>term", the official 1gram/2gram files).

    The first row where exactly one end is a number decides; numeric terms ("1990") make a row
    ambiguous. Default: count last ("term count").
    """
    for fields in rows:
        first, last = _is_count(fields[0]), _is_count(fields[-1])
        if first != last:
            return first
    return False


def iter_term_counts(path: Path, bad: BadRecords, words: int = 1) -> Iterator[tuple[Any, ...]]:
    """Yield (words..., count) from a count table; malformed lines are counted in `bad` and skipped.

    Layouts: "word count" (official enwiki-unigram.txt), "count<TAB>word" and
    "count<TAB>word1<TAB>word2" (official 1gram/2gram files), "term<TAB>count" (simple TSV; a bigram
    term is "word1 word2"). Lines with count 0 are skipped as the official reader does.
    """
    lines = ((n, line) for n, line in _lines(path, bad) if line.strip())
    head = list(itertools.islice(lines, LAYOUT_SNIFF_LINES))
    count_first = _count_first([_fields(line) for _, line in head])
    for line_no, line in itertools.chain(head, lines):
        fields = _fields(line)
        count_field, term = (fields[0], fields[1:]) if count_first else (fields[-1], fields[:-1])
        if len(term) == 1 and words > 1:
            term = term[0].split(" ")
        if not _is_count(count_field):
            bad.add(path, line_no, f"no count in {'first' if count_first else 'last'} field")
        elif len(term) != words or not all(term):
            bad.add(path, line_no, f"expected {words} non-empty word(s) beside the count")
        elif int(count_field) > 0:
            yield (*term, int(count_field))


# ---------------------------------------------------------------- sources


def synset_entry_name(first_lemma: str) -> str:
    """The official WordNet entry for a synset whose first lemma in the data file is `first_lemma`.

    NLTK names the synset `lemma.pos.nn` from that lemma with its syntactic marker stripped and
    lower-cased; the official builder keeps what precedes the first "." and turns "_" into spaces.
    """
    name = _SYNTACTIC_MARKER.sub("", first_lemma, count=1).lower()
    return name.split(".", 1)[0].replace("_", " ")


def wordnet_names(wordnet_dir: Path, bad: BadRecords) -> list[str]:
    """Distinct synset entry names in NLTK's all_synsets() order (first occurrence kept)."""
    missing = [f"data.{pos}" for pos in WORDNET_FILES if not (wordnet_dir / f"data.{pos}").is_file()]
    if missing:
        raise WordNetMissing(f"WordNet database not found in {wordnet_dir} (missing {', '.join(missing)})")
    names: dict[str, None] = {}
    for pos in WORDNET_FILES:
        path = wordnet_dir / f"data.{pos}"
        for line_no, line in _lines(path, bad):
            if not line or line[0].isspace():  # the license header lines start with spaces
                continue
            # data line: offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id...] ...
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not re.fullmatch(r"[0-9a-fA-F]+", fields[3]) or int(fields[3], 16) < 1:
                bad.add(path, line_no, "not a WordNet data line")
                continue
            names.setdefault(synset_entry_name(fields[4]))
    return list(names)


def _by_count(counts: dict[str, float]) -> list[str]:
    return sorted(counts, key=lambda term: (-counts[term], term))


def wiki_unigrams(paths: Iterable[Path], bad: BadRecords, min_count: int = MIN_UNIGRAM_COUNT) -> list[str]:
    """Words with count >= min_count, by count descending then alphabetically."""
    kept: dict[str, int] = {}
    for path in paths:
        for word, count in iter_term_counts(path, bad):
            if count >= min_count:
                kept[word] = count
            else:
                kept.pop(word, None)  # a later line overrides an earlier one
    return _by_count(kept)


def wordfreq_unigrams(top: int = PAPER_UNIGRAM_COUNT) -> list[str]:
    """The `top` most frequent English words of the `wordfreq` package ("large" list), an offline stand-in.

    wordfreq lists casefolded tokens from many corpora, not Wikipedia counts, so the count >= 100
    rule cannot apply; the paper's unigram count is the default size instead.
    """
    try:
        import wordfreq
    except ImportError:
        raise ValueError("the wordfreq unigram source needs the wordfreq package: pip install wordfreq") from None
    return list(itertools.islice(wordfreq.iter_wordlist("en", "large"), top))


def read_unigram_table(path: Path, bad: BadRecords) -> dict[str, int]:
    """The unigram table the PMI is computed over (the official 1gram.txt.gz)."""
    return {word: count for word, count in iter_term_counts(path, bad)}


def bigram_pmi(n_ii: int, n_i: int, n_j: int, total: int) -> float:
    """NLTK's BigramAssocMeasures.pmi as BigramCollocationFinder calls it (window 2: n_ii / 1.0)."""
    return math.log2(float(n_ii) * total) - math.log2(n_i * n_j)


def wiki_bigrams(path: Path, unigram_counts: dict[str, int], bad: BadRecords,
                 min_pmi: float = MIN_BIGRAM_PMI) -> tuple[list[str], int]:
    """Bigrams "w1 w2" with PMI >= min_pmi, by PMI descending then alphabetically.

    Streams the bigram table, keeping only bigrams that pass. Returns (bigrams, number of bigram
    lines skipped because a word is missing from the unigram table).
    """
    total = sum(unigram_counts.values())
    kept: dict[tuple[str, str], float] = {}
    missing_word = 0
    for w1, w2, count in iter_term_counts(path, bad, words=2):
        if w1 not in unigram_counts or w2 not in unigram_counts:
            missing_word += 1
            continue
        pmi = bigram_pmi(count, unigram_counts[w1], unigram_counts[w2], total)
        if pmi >= min_pmi:
            kept[w1, w2] = pmi
        else:
            kept.pop((w1, w2), None)
    ranked = sorted(kept, key=lambda pair: (-kept[pair], pair))
    return [f"{w1} {w2}" for w1, w2 in ranked], missing_word


def title_views(paths: Iterable[Path], bad: BadRecords) -> dict[str, int]:
    """Total views per title over pageview files, the official title_counts.json, or "title<TAB>views" TSV.

    Pageview dump lines ("en Some_title 57 0") count only for domain "en", views >= 50 in that line
    and no ":" in the title ("_" -> " "). JSON and TSV totals are summed as given, ":" titles dropped.
    """
    totals: dict[str, int] = {}

    def add(title: str, views: int) -> None:
        if ":" not in title:
            totals[title] = totals.get(title, 0) + views

    for path in paths:
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"title file {path} is not valid JSON ({e})") from None
            if not isinstance(data, dict):
                raise ValueError(f"title file {path} must hold a JSON object {{title: views}} "
                                 f"(like the official title_counts.json)")
            for title, views in data.items():
                if isinstance(views, int) and not isinstance(views, bool) and views >= 0:
                    add(title, views)
                else:
                    bad.add(path, 0, f"views of {title!r} are not a count")
            continue
        for line_no, line in _lines(path, bad):
            if not line.strip():
                continue
            if "\t" in line:
                fields = line.split("\t")
                if len(fields) == 2 and fields[0] and _is_count(fields[1].strip()):
                    add(fields[0], int(fields[1]))
                else:
                    bad.add(path, line_no, "expected title<TAB>views")
                continue
            fields = line.strip().split(" ")
            if len(fields) < 3 or not _is_count(fields[2]):
                bad.add(path, line_no, "expected a pageview line: domain title views [bytes]")
            elif fields[0] == "en" and int(fields[2]) >= MIN_HOURLY_VIEWS:
                add(fields[1].replace("_", " "), int(fields[2]))
    return totals


def wiki_titles(totals: dict[str, int], min_views: int = MIN_TITLE_VIEWS) -> list[str]:
    """Titles with total views >= min_views, by views descending then alphabetically."""
    return _by_count({title: views for title, views in totals.items() if views >= min_views})


# ---------------------------------------------------------------- merging and checking


def merge_sources(sources: list[tuple[str, list[str]]],
                  max_entries: int = MAX_ENTRIES) -> tuple[list[str], list[dict[str, Any]]]:
    """The official union: "0".."99", then each source in order, skipping what is already in.

    Empty strings and single punctuation characters are dropped; adding stops at max_entries.
    Returns (entries, one stats row per source: candidates, added, duplicates, dropped, over_cap).
    """
    if max_entries < len(NUMBER_ENTRIES):
        raise ValueError(f"max_entries must be >= {len(NUMBER_ENTRIES)} (the entries '0'..'99' always come first)")
    entries = list(NUMBER_ENTRIES)
    seen = set(entries)
    stats = [{"source": "numbers 0-99", "candidates": len(entries), "added": len(entries), "duplicates": 0,
              "dropped": 0, "over_cap": 0}]
    for name, terms in sources:
        row = {"source": name, "candidates": len(terms), "added": 0, "duplicates": 0, "dropped": 0, "over_cap": 0}
        for term in terms:
            if not term or term in SINGLE_PUNCTUATION:
                row["dropped"] += 1
            elif term in seen:
                row["duplicates"] += 1
            elif len(entries) >= max_entries:
                row["over_cap"] += 1
            else:
                entries.append(term)
                seen.add(term)
                row["added"] += 1
        stats.append(row)
    return entries, stats


def unmatchable(entry: str) -> bool:
    """Whether MetaCLIP's matcher can never match `entry` (it holds one of the respaced marks, e.g. "St. Louis")."""
    return spaced_entry(entry) not in spacing(entry)


def check_entries(entries: list[str], examples: int = 5) -> dict[str, Any]:
    """Problems of a metadata list: duplicate, empty, single-punctuation and never-matching entries."""
    first_id: dict[str, int] = {}
    duplicates: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if entry in first_id:
            duplicates.append({"entry": entry, "id": i, "first_id": first_id[entry]})
        else:
            first_id[entry] = i
    never = [e for e in first_id if unmatchable(e)]
    return {
        "entries": len(entries),
        "distinct": len(first_id),
        "duplicates": len(duplicates),
        "duplicate_examples": duplicates[:examples],
        "empty": sum(1 for e in entries if not e),
        "single_punctuation": sum(1 for e in entries if e in SINGLE_PUNCTUATION),
        "never_match": len(never),
        "never_match_examples": never[:examples],
    }
