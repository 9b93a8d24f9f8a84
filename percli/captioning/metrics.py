"""Caption metrics: corpus BLEU-4, CIDEr-D and CLIP-score.

Tokenisation (`tokenize`, every text metric): lower-case, then the maximal runs of letters, digits
and underscores; punctuation is dropped, as coco-caption's PTB tokenizer + punctuation filter does
for ordinary English ("A red star, on the left." -> a red star on the left).

- `bleu4` (Papineni et al., 2002), as coco-caption's corpus BLEU: n-gram precisions (n = 1..4)
  with counts clipped by the largest count in any one reference, pooled over the corpus, geometric
  mean, times the brevity penalty exp(1 - r / c) when c < r (c: candidate words, r: for each
  candidate the length of its reference closest in length, the shorter on a tie). No smoothing: a
  corpus without any matching 4-gram scores 0.
- `cider_d` (Vedantam et al., CVPR 2015), as coco-caption's CIDEr-D: per n = 1..4, tf-idf vectors
  (term frequency x log(#images / #images whose references hold the n-gram), document frequencies
  from the references of the corpus scored), the candidate's weights clipped by the reference's,
  cosine-normalised, times the Gaussian length penalty exp(-(l_c - l_r)^2 / (2 * 6^2)); averaged
  over n and references, times 10, then averaged over images. Lengths are word counts (the paper;
  coco-caption counts bigrams, words - 1, which gives the same difference: an empty text scores 0
  either way). As in coco-caption, a corpus of one image scores 0 (every idf is log(1/1) = 0).

Both agree with pycocoevalcap 1.2's `Bleu(4)` and `Cider` on the same tokens (pinned in the tests).
- `clip_score` (Hessel et al., EMNLP 2021): w * max(cos(image, caption), 0), averaged, w = 2.5.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch

MAX_N = 4
CIDER_SIGMA = 6.0
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_counts(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _check_pairs(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists; give one list "
                         "of references per candidate")
    if not candidates:
        raise ValueError("no captions to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("a candidate has no reference; every candidate needs at least one")


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 in [0, 1] of `candidates[i]` against `references[i]` (see the module docstring)."""
    _check_pairs(candidates, references)
    matches, totals = [0] * MAX_N, [0] * MAX_N
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        words = tokenize(cand)
        ref_words = [tokenize(r) for r in refs]
        cand_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for n in range(1, MAX_N + 1):
            counts = ngram_counts(words, n)
            best_ref: Counter = Counter()
            for r in ref_words:
                best_ref |= ngram_counts(r, n)  # per-n-gram maximum over the references
            matches[n - 1] += sum(min(c, best_ref[g]) for g, c in counts.items())
            totals[n - 1] += max(len(words) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / MAX_N
    brevity = 1.0 if cand_len >= ref_len else math.exp(1.0 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def _tfidf(words: list[str], df: Counter, log_images: float) -> tuple[list[dict], list[float]]:
    """Per n: {n-gram: tf * idf} and the vector's L2 norm."""
    vectors, norms = [], []
    for n in range(1, MAX_N + 1):
        vec = {g: tf * (log_images - math.log(max(1.0, df[g]))) for g, tf in ngram_counts(words, n).items()}
        vectors.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vectors, norms


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (coco-caption scale, x10) of `candidates[i]` against `references[i]`."""
    _check_pairs(candidates, references)
    ref_words = [[tokenize(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in ref_words:  # document frequency: the number of images whose references hold the n-gram
        df.update({g for r in refs for n in range(1, MAX_N + 1) for g in ngram_counts(r, n)})
    log_images = math.log(len(candidates))
    total = 0.0
    for cand, refs in zip(candidates, ref_words):
        words = tokenize(cand)
        cand_vecs, cand_norms = _tfidf(words, df, log_images)
        score = 0.0
        for ref in refs:
            ref_vecs, ref_norms = _tfidf(ref, df, log_images)
            penalty = math.exp(-((len(words) - len(ref)) ** 2) / (2 * CIDER_SIGMA ** 2))
            for cv, rv, cn, rn in zip(cand_vecs, ref_vecs, cand_norms, ref_norms):
                if cn == 0 or rn == 0:
                    continue
                clipped = sum(min(w, rv[g]) * rv[g] for g, w in cv.items() if g in rv)
                score += clipped / (cn * rn) * penalty
        total += 10.0 * score / (MAX_N * len(refs))
    return total / len(candidates)


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"bleu4", "cider"} of the candidates against their references."""
    return {"bleu4": bleu4(candidates, references), "cider": cider_d(candidates, references)}


@torch.no_grad()
def clip_score(model: torch.nn.Module, tokenizer, images: torch.Tensor, captions: Sequence[str], w: float = 2.5,
               batch_size: int = 64) -> float:
    """Mean CLIP-S = w * max(cos(image_i, caption_i), 0).

    Args:
        model: A CLIP with `encode_image` / `encode_text` (percli.models.clip).
        tokenizer: Texts -> token ids [N, L] (e.g. `CLIPTokenizer`).
        images: Preprocessed images [N, 3, H, W] (the model's size and mean/std normalisation).
        captions: One caption per image.
        w: Hessel et al.'s rescaling weight.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
    if not len(captions):
        raise ValueError("no captions to score")
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(captions), batch_size):
        image = model.encode_image(images[start:start + batch_size].to(device), normalize=True)
        text = model.encode_text(tokenizer(list(captions[start:start + batch_size])).to(device), normalize=True)
        total += (w * (image * text).sum(dim=-1).clamp(min=0)).sum().item()
    return total / len(captions)
