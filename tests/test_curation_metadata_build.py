"""`curate metaclip build-metadata`: WordNet names as NLTK gives them, Wikipedia rules, merge order, CLI."""

from __future__ import annotations

import gzip
import json
import math
import sys
import types

import pytest
from typer.testing import CliRunner

from percli.cli import app
from percli.curation import metadata_build as mb
from percli.curation.metaclip import BadRecords

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
# Hand-written lines in the WordNet 3.0 data-file format:
# offset lex_filenum ss_type w_cnt(hex) word lex_id ... p_cnt [pointers] | gloss
WORDNET_DATA = {
    "adj": [
        "00001740 00 a 01 able 0 000 | having the necessary means  \n",
        "00002000 00 s 02 outdoor(a) 0 open-air 0 001 & 00001740 a 0000 | located outside  \n",
        "00002100 00 s 02 ready_to_hand(p) 0 handy 0 001 & 00001740 a 0000 | easy to reach  \n",
    ],
    "adv": ["00001000 02 r 01 a_priori 0 000 | reasoning from cause to effect  \n"],
    "noun": [
        "02084071 05 n 03 Canis_familiaris 0 dog 0 domestic_dog 0 000 | a member of the genus Canis  \n",
        "07676602 13 n 02 hot_dog 1 frank 0 000 | a smooth-textured sausage  \n",
        "03000000 06 n 01 .22_caliber 0 000 | a ammunition size  \n",
        "03000100 15 n 01 St._Louis 0 000 | a city in Missouri  \n",
        "03000200 05 n 0a dog 1 d1 0 d2 0 d3 0 d4 0 d5 0 d6 0 d7 0 d8 0 d9 0 000 | ten lemmas, hex count  \n",
        "this line is broken\n",
    ],
    "verb": ["00001740 29 v 02 Dog 0 chase 0 000 | go after with the intent to catch  \n",
             "00001800 29 v 01 breathe 0 000 | draw air into the lungs  \n"],
}
# What NLTK's synset.name() gives, cut at the first "." with "_" -> " ", in all_synsets() order
# (adj, adv, noun, verb); "dog" repeats and is kept once.
WORDNET_NAMES = ["able", "outdoor", "ready to hand", "a priori", "canis familiaris", "hot dog", "", "st", "dog",
                 "breathe"]


@pytest.fixture
def wordnet_dir(tmp_path):
    folder = tmp_path / "wordnet"
    folder.mkdir()
    for pos, lines in WORDNET_DATA.items():
        (folder / f"data.{pos}").write_text(HEADER * 3 + "".join(lines))
    return folder


def test_wordnet_names_match_nltk_synset_names(wordnet_dir):
    bad = BadRecords()
    assert mb.wordnet_names(wordnet_dir, bad) == WORDNET_NAMES
    assert bad.count == 1 and bad.examples[0]["file"].endswith("data.noun")


@pytest.mark.parametrize("lemma, name", [("hot_dog", "hot dog"), ("Canis_familiaris", "canis familiaris"),
                                         ("outdoor(a)", "outdoor"), ("out_of_reach(p)", "out of reach"),
                                         ("galore(ip)", "galore"), ("St._Louis", "st"), ("a.d.", "a")])
def test_synset_entry_name(lemma, name):
    assert mb.synset_entry_name(lemma) == name


def test_missing_wordnet_names_the_missing_files(tmp_path):
    with pytest.raises(mb.WordNetMissing, match="data.adj, data.adv, data.noun, data.verb"):
        mb.wordnet_names(tmp_path, BadRecords())


def _write(path, text):
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, text", [
    ("enwiki-unigram.txt", "the 500\n1990 120\ncat 100\n"),  # official: "word count"
    ("1gram.txt.gz", "500\tthe\n120\t1990\n100\tcat\n"),  # official 1gram: count<TAB>word
    ("words.tsv", "the\t500\n1990\t120\ncat\t100\n"),  # simple TSV
])
def test_count_tables_in_every_layout(tmp_path, name, text):
    bad = BadRecords()
    rows = list(mb.iter_term_counts(_write(tmp_path / name, text), bad))
    assert rows == [("the", 500), ("1990", 120), ("cat", 100)] and bad.count == 0


def test_unigram_threshold_order_and_last_count_wins(tmp_path):
    path = _write(tmp_path / "u.txt", "cat 100\ndog 99\nzebra 300\nant 300\nbee 150\nbee 20\nbroken\nx -5\n")
    bad = BadRecords()
    assert mb.wiki_unigrams([path], bad) == ["ant", "zebra", "cat"]  # count desc, then alphabetical
    assert bad.count == 2


def test_pmi_is_nltk_formula_on_a_hand_computed_case(tmp_path):
    # N = 4 + 2 + 2 = 8.  (b, c): log2(2 * 8 / (2 * 2)) = 2;  (a, b): log2(2 * 8 / (4 * 2)) = 1;
    # (c, a): log2(1 * 8 / (2 * 4)) = 0;  (a, z): z is not in the unigram table -> skipped.
    table = mb.read_unigram_table(_write(tmp_path / "1gram.txt.gz", "4\ta\n2\tb\n2\tc\n"), BadRecords())
    bigrams = _write(tmp_path / "2gram.txt.gz", "2\ta\tb\n2\tb\tc\n1\tc\ta\n7\ta\tz\n")
    assert mb.bigram_pmi(2, 2, 2, 8) == 2.0
    assert mb.wiki_bigrams(bigrams, table, BadRecords(), min_pmi=1) == (["b c", "a b"], 1)
    assert mb.wiki_bigrams(bigrams, table, BadRecords(), min_pmi=0)[0] == ["b c", "a b", "c a"]


def test_default_pmi_threshold_30(tmp_path):
    # N = 2**30 + 2: (a, b) scores log2(N) just above 30, (a, z) about 0.
    table = {"a": 1, "b": 1, "z": 2**30}
    bigrams = _write(tmp_path / "pairs.tsv", "a b\t1\na z\t1\n")  # simple TSV: "w1 w2<TAB>count"
    assert mb.bigram_pmi(1, 1, 1, 2**30 + 2) == pytest.approx(math.log2(2**30 + 2))
    assert mb.wiki_bigrams(bigrams, table, BadRecords()) == (["a b"], 0)


def test_titles_pageview_rule(tmp_path):
    hour1 = _write(tmp_path / "pageviews-20200101-000000.gz", "\n".join([
        "en Hot_dog 60 0",
        "en Hot_dog 49 0",  # under 50 in this hourly line: not counted
        "en Category:Dogs 500 0",  # ':' in the title
        "de Hund 900 0",  # not English Wikipedia
        "en.m Hot_dog 300 0",  # mobile domain, not "en"
        "en Cat 50 0",
        "en Rare 55 0",  # 55 in total < 70
        "en Broken x 0",
    ]) + "\n")
    hour2 = _write(tmp_path / "pageviews-20200101-010000", "en Hot_dog 60 0\nen Cat 50 0\n")
    bad = BadRecords()
    views = mb.title_views([hour1, hour2], bad)
    assert views == {"Hot dog": 120, "Cat": 100, "Rare": 55} and bad.count == 1
    assert mb.wiki_titles(views) == ["Hot dog", "Cat"]


def test_titles_from_json_and_tsv_totals(tmp_path):
    official = tmp_path / "title_counts.json"
    official.write_text(json.dumps({"Paris": 40, "Rome": 80}))
    tsv = _write(tmp_path / "titles.tsv", "Paris\t40\nHelp:Contents\t999\n")
    views = mb.title_views([official, tsv], BadRecords())
    assert views == {"Paris": 80, "Rome": 80}
    assert mb.wiki_titles(views) == ["Paris", "Rome"]


def test_merge_order_dedup_drop_and_cap():
    sources = [("first", ["dog", "", "!", "7", "cat"]), ("second", ["cat", "bird", "fish"])]
    entries, stats = mb.merge_sources(sources, max_entries=103)
    assert entries == [str(i) for i in range(100)] + ["dog", "cat", "bird"]
    assert stats[1] == {"source": "first", "candidates": 5, "added": 2, "duplicates": 1, "dropped": 2, "over_cap": 0}
    assert stats[2] == {"source": "second", "candidates": 3, "added": 1, "duplicates": 1, "dropped": 0,
                        "over_cap": 1}
    with pytest.raises(ValueError, match=">= 100"):
        mb.merge_sources(sources, max_entries=99)


def test_check_entries_reports_duplicates_and_unmatchable():
    report = mb.check_entries(["dog", "St. Louis", "dog", "rock-n-roll", ""])
    assert report["duplicates"] == 1 and report["duplicate_examples"] == [{"entry": "dog", "id": 2, "first_id": 0}]
    assert report["never_match_examples"] == ["St. Louis"] and report["empty"] == 1


@pytest.fixture
def cli():
    return lambda *args: CliRunner().invoke(app, ["curate", "metaclip", "build-metadata", *map(str, args)])


def test_command_builds_all_sources_in_order(cli, wordnet_dir, tmp_path):
    unigrams = _write(tmp_path / "enwiki-unigram.txt", "dog 1000\nzebu 200\nrare 5\n")
    one = _write(tmp_path / "1gram.txt.gz", "4\ta\n2\tb\n2\tc\n")
    two = _write(tmp_path / "2gram.txt.gz", "2\ta\tb\n2\tb\tc\n1\tc\ta\n")
    (tmp_path / "pv").mkdir()
    _write(tmp_path / "pv" / "pageviews-1.gz", "en Hot_dog 80 0\nen New_York 90 0\nen zebu 75 0\n")
    _write(tmp_path / "pv" / "pageviews-2.gz", "en New_York 60 0\n")
    run_dir = tmp_path / "out"
    out = run_dir / "metadata.json"  # the list is written into the output (run) dir
    result = cli("--wordnet", wordnet_dir, "--unigrams", unigrams, "--bigrams", two, "--bigram-unigrams", one,
                 "--min-pmi", 1, "--titles", tmp_path / "pv" / "*.gz", "-o", run_dir, "--json")
    assert result.exit_code == 0, result.output
    expected = [str(i) for i in range(100)] + [n for n in WORDNET_NAMES if n] + ["zebu", "b c", "a b"]
    expected += ["New York", "Hot dog"]  # titles by views; case-sensitive, so "Hot dog" is new
    assert json.loads(out.read_text()) == expected
    summary = json.loads(result.stdout)
    assert [(r["source"], r["added"], r["duplicates"]) for r in summary["sources"]] == [
        ("numbers 0-99", 100, 0), ("wordnet", 9, 0), ("wiki unigrams", 1, 1), ("wiki bigrams", 2, 0),
        ("wiki titles", 2, 1)]
    assert summary["bad_lines"] == 1 and summary["check"]["entries"] == len(expected)

    again = cli("--wordnet", wordnet_dir, "-o", run_dir)
    assert again.exit_code == 2 and "--overwrite" in again.output
    capped = cli("--wordnet", wordnet_dir, "--unigrams", unigrams, "--max-entries", 105, "-o", run_dir, "--overwrite")
    assert capped.exit_code == 0 and "added.wordnet" in capped.stdout  # the one generic summary table
    assert json.loads(out.read_text())[100:] == ["able", "outdoor", "ready to hand", "a priori", "canis familiaris"]


def test_command_explains_missing_wordnet_and_bad_input(cli, tmp_path):
    result = cli("--wordnet", tmp_path / "nowhere", "-o", tmp_path / "m.json")
    assert result.exit_code == 2 and "apt-get install wordnet-base" in result.output
    assert not (tmp_path / "m.json").exists()
    result = cli("--no-wordnet", "--bigrams", _write(tmp_path / "2.tsv", "a b\t1\n"), "-o", tmp_path / "m.json")
    assert result.exit_code == 2 and "--bigram-unigrams" in result.output
    result = cli("--no-wordnet", "-o", tmp_path / "m.json")
    assert result.exit_code == 2 and "nothing to build" in result.output


def test_command_from_checks_and_rewrites_unchanged(cli, tmp_path):
    given = tmp_path / "given.json"
    given.write_text(json.dumps(["dog", "cat", "dog", "U.S."]))
    out = tmp_path / "checked" / "metadata.json"
    result = cli("--from", given, "-o", out.parent, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == ["dog", "cat", "dog", "U.S."]  # ids are kept
    check = json.loads(result.stdout)["check"]
    assert check["duplicates"] == 1 and check["never_match"] == 1
    given.write_text(json.dumps({"not": "a list"}))
    result = cli("--from", given, "-o", tmp_path / "other")
    assert result.exit_code == 2 and "list of strings" in result.output


def test_wordfreq_unigrams_source(cli, tmp_path, monkeypatch):
    fake = types.ModuleType("wordfreq")
    fake.iter_wordlist = lambda lang, wordlist: iter(["the", "dog", "able", "of"])
    monkeypatch.setitem(sys.modules, "wordfreq", fake)
    out = tmp_path / "m" / "metadata.json"
    result = cli("--no-wordnet", "--unigrams", "wordfreq", "--wordfreq-top", 3, "-o", out.parent)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())[100:] == ["the", "dog", "able"]
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import fails as when it is not installed
    result = cli("--no-wordnet", "--unigrams", "wordfreq", "-o", tmp_path / "n")
    assert result.exit_code == 2 and "pip install wordfreq" in result.output
