"""Evaluation of grounded multilingual embeddings: image <-> text retrieval per language (R@1/5/10 and rsum, as
Multi30K's retrieval tables), the diversity of the attention heads, and semantic textual similarity (STS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from scipy.stats import pearsonr, spearmanr
from torch.utils.data import Dataset

from percli.core.retrieval_metrics import RECALL_KS, two_way_retrieval
from percli.grounding.tokenizer import SubwordTokenizer
from percli.models.mha_vse import MHAVSE, head_similarity


class RetrievalItems(Dataset):
    """Every caption of every language of a held-out split, one item each, with its image's regions.

    Items: ``{"regions" [R, D], "image": image index, "language": position in `languages`, "text": caption}``.
    """

    def __init__(self, images: Dataset, languages: Sequence[str]):
        self.images, self.languages = images, list(languages)
        self.bad_records = getattr(images, "bad_records", None)
        self.index = [(i, pos, text) for i in range(len(images))  # type: ignore[arg-type]
                      for pos, lang in enumerate(self.languages)
                      for text in images.captions_of(i).get(lang, [])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, language, text = self.index[index]
        return {"regions": self.images[image]["regions"], "image": image, "language": language, "text": text}

    @staticmethod
    @torch.no_grad()
    def embed(model: MHAVSE, batch: dict[str, Any], tokenizer: SubwordTokenizer, languages: Sequence[str],
              max_len: int) -> dict[str, torch.Tensor]:
        """Image and caption embeddings of a batch of items (each caption through its language's encoder) and
        the mean head cosine of each."""
        image, image_heads, _ = model.encode_image(batch["regions"], batch["region_mask"])
        text = torch.zeros_like(image)
        text_sim = image.new_zeros(len(image))
        for pos, lang in enumerate(languages):
            rows = (batch["language"] == pos).nonzero().flatten()
            if not len(rows):
                continue
            ids, mask = tokenizer.batch([batch["text"][int(i)] for i in rows], max_len)
            embeds, heads, _ = model.encode_text(ids.to(image.device), mask.to(image.device), lang)
            text[rows], text_sim[rows] = embeds, head_similarity(heads)
        return {"image_embeds": image.float(), "text_embeds": text.float(), "image": batch["image"],
                "language": batch["language"], "image_head_sim": head_similarity(image_heads).float(),
                "text_head_sim": text_sim.float()}


def language_retrieval(image_embeds: torch.Tensor, text_embeds: torch.Tensor, image: torch.Tensor
                       ) -> dict[str, float]:
    """Image <-> text retrieval of one language's captions: rows [N] of caption embeddings with their image's
    embedding and index. Returns ``i2t_R@K``, ``t2i_R@K``, ranks, and ``rsum`` (the six recalls in percent)."""
    images, column_item = torch.unique(image, return_inverse=True)  # each caption's image among the unique ones
    first = torch.full((len(images),), len(image), dtype=torch.long)
    first = first.scatter_reduce(0, column_item, torch.arange(len(image)), "amin")
    similarity = image_embeds[first] @ text_embeds.T  # [images, captions]
    metrics = two_way_retrieval(similarity, column_item, row_name="i", column_name="t")
    metrics["rsum"] = 100 * sum(metrics[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    return metrics


def grounding_report(totals: dict[str, Any], languages: Sequence[str]) -> dict[str, float]:
    """Per language ``<lang>_i2t_R@1`` ... ``<lang>_rsum`` and ``head_sim_<lang>``, and ``head_sim_image``."""
    if "language" not in totals:
        return {}
    metrics: dict[str, float] = {"head_sim_image": float(totals["image_head_sim"].mean())}
    for pos, lang in enumerate(languages):
        rows = totals["language"] == pos
        if int(rows.sum()) < 2:
            continue
        part = language_retrieval(totals["image_embeds"][rows], totals["text_embeds"][rows],
                                  totals["image"][rows].long())
        metrics.update({f"{lang}_{k}": v for k, v in part.items()})
        metrics[f"head_sim_{lang}"] = float(totals["text_head_sim"][rows].mean())
    return metrics


@torch.no_grad()
def embed_texts(model: MHAVSE, tokenizer: SubwordTokenizer, texts: Sequence[str], language: str, max_len: int,
                device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Unit embeddings [N, D] of `texts` through `language`'s encoder (eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        ids, mask = tokenizer.batch(list(texts[start:start + batch_size]), max_len)
        out.append(model.encode_text(ids.to(device), mask.to(device), language)[0].float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def embed_images(model: MHAVSE, images: Dataset, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Unit embeddings [N, D] of the images of a `GroundedCaptions`-style dataset, in order (eval mode)."""
    from percli.grounding.multi30k import collate_regions

    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):  # type: ignore[arg-type]
        regions, mask = collate_regions([images[i] for i in range(start, min(start + batch_size, len(images)))])
        out.append(model.encode_image(regions.to(device), mask.to(device))[0].float().cpu())
    model.train(was_training)
    return torch.cat(out)


def sts_scores(model: MHAVSE, tokenizer: SubwordTokenizer, pairs: Sequence[tuple[float, str, str]], language: str,
               max_len: int, device: torch.device) -> dict[str, float]:
    """Cosine of the two sentences' embeddings against the gold scores: Pearson and Spearman (x 100, as STS
    tables), over `pairs` of (score, sentence 1, sentence 2)."""
    first = embed_texts(model, tokenizer, [p[1] for p in pairs], language, max_len, device)
    second = embed_texts(model, tokenizer, [p[2] for p in pairs], language, max_len, device)
    predicted = (first * second).sum(dim=1).numpy()
    gold = [p[0] for p in pairs]
    return {"pearson": 100 * float(pearsonr(predicted, gold)[0]),
            "spearman": 100 * float(spearmanr(predicted, gold)[0]), "pairs": len(pairs)}
