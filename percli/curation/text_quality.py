"""Model-agnostic text quality score and percentile pruning (Sharma et al. 2024, arXiv 2405.01582).

Each document is split into lines (blank lines dropped). Binary line filters I_i (1 = pass) are
weighted by how much they lower a reference LM's perplexity:

    w_i = max(0, (PPL_all - PPL_i) / PPL_all)

PPL_all is the perplexity of all lines, PPL_i that of the lines passing filter i (token-weighted:
exp(-sum log p / sum tokens)). Then

    score_line = sum_i w_i I_i(line) / sum_i w_i
    score_doc  = sum_line tc_line score_line / sum_line tc_line    (tc = token count)

and the documents with the lowest scores are pruned (the paper prunes 20-40%).

Filters. The paper has 14. The 10 below need no parser; they follow the filter table reproduced
in issue jpcompartir/LimpiaR#65 (which side of a threshold passes is our reading). Not
implemented: "has an object" and "has a noun" need a dependency parser / POS tagger, and filters
13-14 are cut off in every source we have (probably "has a verb"-like parser checks); a filter we
cannot define exactly would only add noise to the score.

Reference LM. The paper scores perplexity with a pretrained reference language model (not
confirmed by our notes). Here, to run offline with no weights, it is an interpolated bigram
model fitted on the first `lm_docs` documents of the corpus itself:
p(w | v) = 0.7 c(v, w) / c(v) + 0.3 p1(w), with add-one unigrams p1(w) = (c(w) + 1) / (N + V + 1)
(unseen tokens share one <unk> slot, so probabilities sum to 1). Tokens are words and single
punctuation marks, case kept (so shouting and hashes look rare). Weights can instead be given as
JSON ({filter name: weight}); the weights.json a run writes has that form.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from percli.core.data.shards import BadRecords
from percli.curation.selection import iter_texts, write_selected

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"\w+", re.UNICODE)
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
TERMINAL_PUNCTUATION = ('.', '!', '?', '"', "\u201d")
BANNED_PHRASES = ("javascript", "lorem ipsum")


def tokenize(line: str) -> list[str]:
    """Words and single punctuation marks: what the reference LM and the token counts use."""
    return _TOKEN.findall(line)


def _digit_punct_per_word(line: str) -> float:
    words = line.split()
    marks = sum(ch.isdigit() or (not ch.isalnum() and not ch.isspace()) for ch in line)
    return marks / len(words) if words else math.inf


def _word_repetition(line: str) -> float:
    words = _WORD.findall(line.lower())
    return 1.0 - len(set(words)) / len(words) if words else 0.0


LINE_FILTERS: dict[str, Callable[[str], bool]] = {
    "starts_capitalised": lambda line: line.lstrip()[:1].isupper(),
    "not_all_caps": lambda line: not line.isupper(),
    "word_repetition_le_0.2": lambda line: _word_repetition(line) <= 0.2,
    "digit_punct_per_word_le_0.25": lambda line: _digit_punct_per_word(line) <= 0.25,
    "no_curly_bracket": lambda line: "{" not in line,
    "ends_with_terminal_punct": lambda line: line.rstrip().endswith(TERMINAL_PUNCTUATION),
    "two_stop_words": lambda line: sum(w in STOP_WORDS for w in _WORD.findall(line.lower())) >= 2,
    "no_javascript_lorem_ipsum": lambda line: not any(p in line.lower() for p in BANNED_PHRASES),
    "more_than_3_tokens": lambda line: len(tokenize(line)) > 3,
    "word_count_4_to_255": lambda line: 3 < len(line.split()) < 256,
}
FILTER_NAMES = tuple(LINE_FILTERS)


def lines_of(document: str) -> list[str]:
    return [line for line in document.splitlines() if line.strip()]


def filter_passes(line: str) -> np.ndarray:
    """I_i(line) for every filter, in FILTER_NAMES order."""
    return np.array([f(line) for f in LINE_FILTERS.values()], dtype=bool)


class BigramLM:
    """Interpolated bigram LM with add-one unigrams (see the module docstring); "<s>" starts each line."""

    def __init__(self, bigram_weight: float = 0.7):
        self.bigram_weight = bigram_weight
        self.unigrams: Counter[str] = Counter()
        self.bigrams: Counter[tuple[str, str]] = Counter()
        self.contexts: Counter[str] = Counter()

    def fit(self, lines: Iterable[Sequence[str]]) -> BigramLM:
        for tokens in lines:
            self.unigrams.update(tokens)
            pairs = list(zip(["<s>", *tokens[:-1]], tokens))
            self.bigrams.update(pairs)
            self.contexts.update(prev for prev, _ in pairs)
        self._unigram_norm = sum(self.unigrams.values()) + len(self.unigrams) + 1
        return self

    def prob(self, token: str, prev: str) -> float:
        p_unigram = (self.unigrams[token] + 1) / self._unigram_norm
        context = self.contexts[prev]
        if not context:
            return p_unigram
        lam = self.bigram_weight
        return lam * self.bigrams[(prev, token)] / context + (1 - lam) * p_unigram

    def logprob(self, tokens: Sequence[str]) -> float:
        return sum(math.log(self.prob(tok, prev)) for prev, tok in zip(["<s>", *tokens[:-1]], tokens))


def perplexity(logprob_sum: float, tokens: int) -> float:
    return math.exp(-logprob_sum / tokens)


def filter_weights(logprob_all: float, tokens_all: int, logprob_passing: np.ndarray,
                   tokens_passing: np.ndarray) -> tuple[np.ndarray, dict]:
    """w_i = max(0, (PPL_all - PPL_i) / PPL_all) from summed log-probs and token counts.

    `logprob_passing[i]` and `tokens_passing[i]` sum over the lines that pass filter i. A filter no
    line (with tokens) passes gets weight 0. Returns (weights [F], perplexities for the summary).
    """
    ppl_all = perplexity(logprob_all, tokens_all)
    weights = np.zeros(len(tokens_passing))
    ppl_by_filter: dict[str, float | None] = {}
    for i, name in enumerate(FILTER_NAMES[:len(tokens_passing)]):
        if tokens_passing[i] == 0:
            ppl_by_filter[name] = None
            continue
        ppl_i = perplexity(float(logprob_passing[i]), int(tokens_passing[i]))
        ppl_by_filter[name] = ppl_i
        weights[i] = max(0.0, (ppl_all - ppl_i) / ppl_all)
    return weights, {"all_lines": ppl_all, "by_filter": ppl_by_filter}


def estimate_weights(documents: Callable[[], Iterable[str]]) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the reference LM on `documents()` (called twice: fit, then score), then the filter weights."""
    lm = BigramLM().fit(tokenize(line) for doc in documents() for line in lines_of(doc))
    logprob_passing = np.zeros(len(FILTER_NAMES))
    tokens_passing = np.zeros(len(FILTER_NAMES), dtype=np.int64)
    logprob_all, tokens_all, lines = 0.0, 0, 0
    for doc in documents():
        for line in lines_of(doc):
            toks = tokenize(line)
            logprob = lm.logprob(toks)
            passes = filter_passes(line)
            logprob_passing[passes] += logprob
            tokens_passing[passes] += len(toks)
            logprob_all += logprob
            tokens_all += len(toks)
            lines += 1
    if tokens_all == 0:
        raise ValueError("no text to estimate the filter weights from (every document is empty)")
    weights, ppl = filter_weights(logprob_all, tokens_all, logprob_passing, tokens_passing)
    return weights, {"perplexity": ppl, "lm_lines": lines, "lm_tokens": tokens_all, "lm_vocabulary": len(lm.unigrams)}


def line_score(passes: np.ndarray, weights: np.ndarray) -> float:
    return float(passes @ weights / weights.sum())


def document_score(document: str, weights: np.ndarray) -> float:
    """Token-count-weighted mean line score; 0 for a document without tokens."""
    num = den = 0.0
    for line in lines_of(document):
        tc = len(tokenize(line))
        num += tc * line_score(filter_passes(line), weights)
        den += tc
    return num / den if den else 0.0


def prune_mask(scores: np.ndarray, prune: float) -> np.ndarray:
    """Keep mask dropping the round(prune * n) lowest scores (among equal scores the earlier record goes first)."""
    keep = np.ones(len(scores), dtype=bool)
    keep[np.argsort(scores, kind="stable")[:round(prune * len(scores))]] = False
    return keep


def weights_dict(weights: np.ndarray) -> dict[str, float]:
    return {name: float(w) for name, w in zip(FILTER_NAMES, weights)}


def load_weights(path: str | Path) -> np.ndarray:
    """Weights from JSON {filter name: weight >= 0}; filters it leaves out get 0."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"weights file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"weights file {path} must hold a JSON object {{filter name: weight}}")
    unknown = sorted(set(data) - set(FILTER_NAMES))
    if unknown:
        raise ValueError(f"weights file {path}: unknown filters {unknown}; known: {', '.join(FILTER_NAMES)}")
    weights = np.zeros(len(FILTER_NAMES))
    for i, name in enumerate(FILTER_NAMES):
        value = data.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
            raise ValueError(f"weights file {path}: weight of {name!r} must be a finite number >= 0 (got {value!r})")
        weights[i] = value
    return weights


def curate_text_quality(inputs: Sequence[Path], output_dir: Path, prune: float = 0.3,
                        weights: np.ndarray | None = None, lm_docs: int = 100_000, text_field: str = "text",
                        log: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Score every document, drop the `prune` fraction with the lowest scores, write curated/<input>.jsonl.

    Kept records gain "quality_score". Without `weights`, they are estimated from the first `lm_docs`
    documents with the reference LM (equal weights when every estimated weight is 0).
    """
    if not 0.0 <= prune < 1.0:
        raise ValueError(f"prune: is the fraction of documents dropped, in [0, 1) (got {prune:g}); the paper prunes "
                         f"0.2-0.4")
    estimate: dict[str, Any] = {"weights_source": "given"}
    if weights is None:
        log(f"estimating filter weights with a bigram LM on the first {lm_docs:,} documents")
        weights, estimate = estimate_weights(lambda: iter_texts(inputs, text_field, limit=lm_docs))
        estimate["weights_source"] = f"perplexity of a bigram LM fitted on the first {lm_docs:,} documents"
        if not weights.sum() > 0:  # no filter lowers the perplexity (e.g. every line passes every filter)
            weights = np.ones(len(FILTER_NAMES))
            estimate["weights_source"] = "uniform: no filter lowered the reference LM's perplexity"
    if not weights.sum() > 0:
        raise ValueError("every filter weight given is 0, so no score can be formed; give some filter a weight > 0")
    log(f"weights: {', '.join(f'{n} {w:.3f}' for n, w in weights_dict(weights).items())}")
    scores = np.array([document_score(doc, weights) for doc in iter_texts(inputs, text_field)])
    keep = prune_mask(scores, prune)

    def annotate(i: int, record: dict[str, Any]) -> None:
        record["quality_score"] = round(float(scores[i]), 6)

    bad = BadRecords()
    outputs = write_selected(inputs, output_dir / "curated", keep, text_field, annotate, bad)
    kept = int(keep.sum())
    return {
        "method": "text-quality",
        "documents_read": len(scores),
        "kept": kept,
        "pruned": len(scores) - kept,
        "prune": prune,
        "score_cutoff": float(scores[~keep].max()) if kept < len(scores) else None,
        "mean_score_kept": float(scores[keep].mean()) if kept else None,
        "mean_score_pruned": float(scores[~keep].mean()) if kept < len(scores) else None,
        "weights": weights_dict(weights),
        **estimate,
        "filters_not_implemented": ["has_object (parser)", "has_noun (parser)", "filters 13-14 (unverified)"],
        "bad_records": bad.count,
        "bad_examples": bad.examples,
        "outputs": outputs,
        "output_dir": str(output_dir),
    }
