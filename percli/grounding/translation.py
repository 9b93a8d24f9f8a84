"""The training signals of unsupervised multimodal MT (Huang et al., ACL 2020) on top of `percli.models.ummt`:
denoising auto-encoding, (multimodal) back-translation, visually-pivoted captioning and cross-lingual retrieval
through a shared visual-semantic embedding; and the word-by-word baseline built from the same monolingual data.

* Noise (Lample et al., 2018, as UNMT applies it to subwords): every token dropped with ``drop``, the rest
  shuffled locally (token i moves to the rank of ``i + U(0, shuffle + 1)``, so no token moves more than
  ``shuffle`` places), then each blanked to ``<mask>`` with ``blank``. The language tag and ``</s>`` stay.
* Back-translation: the current model translates a caption x (language a, with its image v) into b, greedily and
  without gradient; the pair (that translation, v) -> x is then a training pair. Only the second pass carries a
  gradient, so the model learns to map its own outputs back, never to change what it generated.
* Pivoted captioning: the model captions x's image in b from the image alone (no gradient); (caption) -> x
  is a pseudo-parallel pair.
* Retrieval pairs: a multilingual VSE trained on the same monolingual image-caption data (images are the only
  bridge) embeds the images (or the captions) of both languages; the captions of mutual nearest neighbours
  above a threshold become pseudo-parallel pairs, trained in both directions.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from percli.grounding.tokenizer import SubwordTokenizer
from percli.models.ummt import UMMT


def language_batch(tokenizer: SubwordTokenizer, texts: Sequence[str], language: str, max_len: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [B, L] and mask of `texts`, each starting with its language's tag and ending with ``</s>``."""
    ids, mask = tokenizer.batch(list(texts), max_len)
    ids[:, 0] = tokenizer.lang_id(language)  # the tag replaces <s>
    return ids, mask


def add_noise(ids: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, *, drop: float = 0.1,
              shuffle: int = 3, blank: float = 0.1, mask_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise model of the module docstring on rows ``[tag, w_1 .. w_n, </s>]``; returns new padded ids and
    mask (a row keeps at least one of its words)."""
    rows = []
    for row, m in zip(ids, mask):
        tokens = row[m]
        tag, words, end = tokens[:1], tokens[1:-1], tokens[-1:]
        if len(words):
            keep = torch.rand(len(words), generator=generator) >= drop
            if not bool(keep.any()):
                keep[int(torch.randint(len(words), (1,), generator=generator))] = True
            words = words[keep]
            if shuffle > 0 and len(words) > 1:
                order = (torch.arange(len(words)) + torch.rand(len(words), generator=generator) * (shuffle + 1))
                words = words[order.argsort()]
            blanked = torch.rand(len(words), generator=generator) < blank
            words = words.masked_fill(blanked, mask_id)
        rows.append(torch.cat([tag, words, end]))
    length = max(len(r) for r in rows)
    out = torch.full((len(rows), length), pad_id, dtype=ids.dtype)
    new_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, :len(r)], new_mask[i, :len(r)] = r, True
    return out.to(ids.device), new_mask.to(ids.device)


def seq2seq_loss(model: UMMT, src: torch.Tensor | None, src_mask: torch.Tensor | None, tgt: torch.Tensor,
                 tgt_mask: torch.Tensor, regions: torch.Tensor | None = None, region_mask: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Teacher-forced cross-entropy of `tgt` ``[tag, w.., </s>]`` (the tag is the first input, never a target)."""
    logits = model(src, src_mask, tgt[:, :-1], regions, region_mask)
    labels = tgt[:, 1:].masked_fill(~tgt_mask[:, 1:], -100)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing)


def as_source(generated: torch.Tensor, lang_id: int, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded ids [B, L] (padding after the text) -> a source batch ``[tag, w.., </s>]`` and its mask."""
    lengths = (generated != pad_id).sum(dim=1)
    out = torch.full((len(generated), int(lengths.max()) + 2), pad_id, dtype=torch.long, device=generated.device)
    out[:, 0] = lang_id
    for i, n in enumerate(lengths.tolist()):
        out[i, 1:n + 1] = generated[i, :n]
        out[i, n + 1] = eos_id
    return out, out != pad_id


def generate_as_source(model: UMMT, src: torch.Tensor | None, src_mask: torch.Tensor | None, lang_id: int,
                       regions: torch.Tensor | None, region_mask: torch.Tensor | None, max_len: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's greedy output in the language of `lang_id` (eval mode, no gradient) as a source batch."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        generated = model.generate(src, src_mask, lang_id, regions, region_mask, max_len=max_len)
    model.train(was_training)
    return as_source(generated, lang_id, model.eos_id, model.pad_id)


def back_translation_loss(model: UMMT, x: torch.Tensor, x_mask: torch.Tensor, other_lang_id: int,
                          regions: torch.Tensor | None, region_mask: torch.Tensor | None, max_len: int,
                          use_image: bool = True) -> torch.Tensor:
    """x (its own language) -> the model's translation y (no gradient) -> the loss of reconstructing x from
    (y, image when `use_image`)."""
    y, y_mask = generate_as_source(model, x, x_mask, other_lang_id, regions, region_mask, max_len)
    image = (regions, region_mask) if use_image else (None, None)
    return seq2seq_loss(model, y, y_mask, x, x_mask, *image)


def pivot_caption_loss(model: UMMT, x: torch.Tensor, x_mask: torch.Tensor, other_lang_id: int,
                       regions: torch.Tensor, region_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Caption x's image in the other language (no gradient), then the loss of translating that caption to x
    (text only: the image would give x away)."""
    c, c_mask = generate_as_source(model, None, None, other_lang_id, regions, region_mask, max_len)
    return seq2seq_loss(model, c, c_mask, x, x_mask)


def centred(embeddings: torch.Tensor) -> torch.Tensor:
    """Rows minus their mean, renormalised: the pool's shared direction removed, so cosines rank content."""
    return F.normalize(embeddings - embeddings.mean(dim=0), dim=1)


def mutual_pairs(a: torch.Tensor, b: torch.Tensor, threshold: float) -> list[tuple[int, int, float]]:
    """Mutual nearest neighbours (i, j, cosine) of unit rows `a` [N, D] and `b` [M, D] with cosine >= `threshold`."""
    sim = a @ b.T
    best_b, best_a = sim.argmax(dim=1), sim.argmax(dim=0)
    return [(i, int(j), float(sim[i, j])) for i, j in enumerate(best_b.tolist())
            if int(best_a[j]) == i and float(sim[i, j]) >= threshold]


# --------------------------------------------------------------------------- word-by-word baseline

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _WORD.findall(text.lower())


def detokenize(tokens: Sequence[str]) -> str:
    """Tokens joined with spaces, none before a punctuation mark; the first letter upper-cased."""
    text = ""
    for token in tokens:
        text += token if (not text or not token[0].isalnum()) else " " + token
    return text[:1].upper() + text[1:]


class WordByWord:
    """A word-by-word translator built from monolingual image-caption data: each word is the mean of the image
    embeddings of the captions it occurs in, minus the mean over all images (so what every picture shares
    cancels), and translates to the word of the other language with the nearest vector. A word whose vector is
    nearly zero (it occurs with every kind of image: "a", "the", "and") carries no visual signal and is matched
    by frequency instead (the target word whose share of captions is closest). Punctuation, and words seen fewer
    than `min_count` times, are copied; the output takes each target word's usual spelling in the target
    captions (German nouns capitalised), a capital first letter and no space before punctuation, so BLEU
    compares it as it compares the model's output.

    Args:
        captions: Language -> list of (caption, image embedding [D]) of that language's monolingual data.
        min_count: Least number of captions a word must occur in to be translated.
        ungrounded: A vector shorter than this share of the median length counts as nearly zero.
    """

    def __init__(self, captions: dict[str, list[tuple[str, torch.Tensor]]], min_count: int = 2,
                 ungrounded: float = 0.2):
        everything = torch.stack([e for rows in captions.values() for _, e in rows]).mean(dim=0)
        self.ungrounded = ungrounded
        self.vectors: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}
        # lower-cased word -> its spellings inside sentences (German nouns keep their capital)
        self.surface: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        for lang, rows in captions.items():
            sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros_like(everything))
            counts: Counter[str] = Counter()
            for text, embedding in rows:
                for surface in _WORD.findall(text)[1:]:  # a sentence's first word is capitalised anyway
                    self.surface[lang][surface.lower()][surface] += 1
                for w in set(words(text)):
                    if w.isalnum():
                        sums[w] += embedding
                        counts[w] += 1
            vocab = sorted(w for w, n in counts.items() if n >= min_count)
            if vocab:
                table = torch.stack([sums[w] / counts[w] - everything for w in vocab])
                share = torch.tensor([counts[w] / len(rows) for w in vocab])
                self.vectors[lang] = (vocab, table, share)

    def lexicon(self, source: str, target: str) -> dict[str, str]:
        """Source word -> its target word (nearest vector, or nearest caption share when ungrounded)."""
        (src_words, src, src_share), (tgt_words, tgt, tgt_share) = self.vectors[source], self.vectors[target]
        nearest = (F.normalize(src, dim=1) @ F.normalize(tgt, dim=1).T).argmax(dim=1)
        norms = src.norm(dim=1)
        flat = norms < self.ungrounded * norms.median()
        by_share = (src_share[:, None].log() - tgt_share[None, :].log()).abs().argmin(dim=1)
        chosen = torch.where(flat, by_share, nearest)
        return {w: tgt_words[int(j)] for w, j in zip(src_words, chosen, strict=True)}

    def translate(self, texts: Sequence[str], source: str, target: str) -> list[str]:
        """Each text word by word, in the target words' usual spelling, detokenised (`detokenize`)."""
        table = self.lexicon(source, target)
        spelling = self.surface[target]

        def spell(word: str) -> str:
            forms = spelling.get(word)
            return forms.most_common(1)[0][0] if forms else word

        return [detokenize([spell(table.get(w, w)) for w in words(t)]) for t in texts]
