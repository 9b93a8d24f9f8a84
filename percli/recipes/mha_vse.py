"""MHA-VSE pretraining (Huang, Chang, Hauptmann, EMNLP 2019): a multilingual visual-semantic embedding with K
diverse attention heads over words and image regions (`percli.models.mha_vse`).

Per step, each image of the batch contributes one of its captions in every language it has. The loss is VSE++'s
hardest-negative triplet loss (margin ``loss.margin``) over every image-language pair (English-image,
German-image, ...) and, with ``loss.cross_lingual``, every language-language pair of captions of the same image
(English-German), each term over the images of the batch that have both sides; plus ``loss.diversity_weight``
times the diversity regulariser of every encoder (``loss.diversity``: ``hinge`` on head cosines beyond
``loss.delta``, or ``frobenius`` on the attention maps). Images with captions in one language only (monolingual
data) still train their language's image term.

Held-out evaluation, per language of ``data.languages``: image -> text and text -> image R@1/5/10 and their rsum
(``eval/en_rsum``), as Multi30K's retrieval tables report them, and the mean cosine between the heads of one
input (``eval/head_sim_image``, ``eval/head_sim_en``): lower = more diverse heads. At the end of the run the STS
evaluation runs when the data has ``sts.tsv`` (``score<TAB>sentence1<TAB>sentence2``; or ``data.sts``): the
cosine of the two sentences' English embeddings against the gold scores, Pearson and Spearman.

Data: ``embedded`` (generated scenes with English / German / French captions and region features written in
the Multi30K layout, `percli.grounding.scenes`), or a Multi30K folder: ``<split>.<lang>`` caption files with
``<split>_images.txt`` (or ``<split>.<lang>.ids``) and ``features/<image id>.npy`` region or grid features
(`percli.grounding.multi30k`). Subwords: a BPE tokenizer trained on the training captions of every language at
the start of the run (``data.vocab_size``) and saved in the run as ``tokenizer.json``, or ``data.tokenizer`` (a
tokenizer.json or a local Hugging Face tokenizer folder).

Recipe: no official release. VSE++'s optimiser (Adam, lr 2e-4, margin 0.2, gradient clipping 2), batch 128, with
percli's cosine schedule instead of VSE++'s step decay.

Examples:
  percli pretrain mha-vse                                       # tiny preset, embedded scenes, CPU
  percli pretrain mha-vse loss.diversity_weight=0               # no diversity regulariser (the ablation)
  percli pretrain mha-vse loss.diversity=frobenius              # ||A A^T - I||^2 on the attention maps
  percli pretrain mha-vse --preset multi30k data.source=/data/multi30k data.features=/data/multi30k/bottom_up
  percli eval retrieval model.checkpoint=runs/pretrain-mha-vse-X data.source=/data/multi30k data.split=test
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import Dataset

from percli.core import engine
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.grounding.data import GroundingData, grounding_dataset
from percli.grounding.evaluation import RetrievalItems, grounding_report, sts_scores
from percli.grounding.tokenizer import SubwordTokenizer, run_tokenizer
from percli.models import create_model, load_initial_weights
from percli.models.mha_vse import DIVERSITY_FORMS, MHAVSE, diversity_loss, triplet_ranking
from percli.recipes.common import TrainedModelSection


@dataclasses.dataclass
class LossSection:
    margin: float = 0.2
    """Triplet margin (VSE++'s 0.2)."""
    max_violation: bool = True
    """Hardest negative of the batch (VSE++'s MH loss); false: the sum over every negative."""
    cross_lingual: bool = True
    """Also align the captions of one image across languages (English-German)."""
    diversity: str = "hinge"
    """hinge (sum over head pairs of max(0, cos - delta)) or frobenius (||A A^T - I||^2 on the attention maps)."""
    diversity_weight: float = 0.1
    """Weight of the diversity term of every encoder; 0 = no regulariser."""
    delta: float = 0.0
    """hinge: the head cosine allowed before it is penalised."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="mha_vse"))
    data: GroundingData = dataclasses.field(default_factory=GroundingData)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=128, grad_clip=2.0))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=128, weight_decay=0.0, warmup_fraction=0.0))  # AdamW without decay = Adam


class CaptionPicks(Dataset):
    """Per image, one caption of each language it has (random in training, the first in evaluation)."""

    def __init__(self, images: Dataset, languages: list[str], train: bool):
        self.images, self.languages, self.train = images, languages, train
        self.bad_records = getattr(images, "bad_records", None)

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        texts = {}
        for lang in self.languages:
            options = item["captions"].get(lang) or []
            if options:
                texts[lang] = random.choice(options) if self.train else options[0]
        return {"regions": item["regions"], "texts": texts}


def vse_loss(model: MHAVSE, batch: dict[str, Any], tokenizer: SubwordTokenizer, languages: list[str],
             loss: LossSection, max_len: int) -> dict[str, torch.Tensor]:
    """The triplet terms of every image-language (and language-language) pair and the diversity terms."""
    image, image_heads, image_attention = model.encode_image(batch["regions"], batch["region_mask"])
    terms: dict[str, torch.Tensor] = {}
    diversity = [diversity_loss(image_heads, image_attention, loss.diversity, loss.delta)]
    text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # language -> (embeddings of its rows, row ids)
    for lang in languages:
        rows = [i for i, texts in enumerate(batch["texts"]) if lang in texts]
        if len(rows) < 2:
            continue
        ids, mask = tokenizer.batch([batch["texts"][i][lang] for i in rows], max_len)
        embeds, heads, attention = model.encode_text(ids.to(image.device), mask.to(image.device), lang)
        index = torch.tensor(rows, device=image.device)
        text[lang] = (embeds, index)
        terms[f"{lang}_image_loss"] = triplet_ranking(embeds @ image[index].T, loss.margin, loss.max_violation)
        diversity.append(diversity_loss(heads, attention, loss.diversity, loss.delta))
    if loss.cross_lingual:
        names = sorted(text)
        for a_pos, a in enumerate(names):
            for b in names[a_pos + 1:]:
                (ea, ia), (eb, ib) = text[a], text[b]
                both = torch.isin(ia, ib)
                if int(both.sum()) < 2:
                    continue
                pos_b = torch.searchsorted(ib, ia[both])  # rows sorted ascending: where each image sits in b
                terms[f"{a}_{b}_loss"] = triplet_ranking(ea[both] @ eb[pos_b].T, loss.margin, loss.max_violation)
    if not terms:
        raise ValueError("no pair to align in this batch: every image needs a caption (raise train.batch_size)")
    div = torch.stack(diversity).sum()
    total = sum(terms.values()) + loss.diversity_weight * div
    return {"loss": total, "diversity_loss": div.detach(), **{k: v.detach() for k, v in terms.items()}}


class MHAVSETask:
    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir

    def build_model(self) -> nn.Module:
        d = self.cfg.data
        self.images = grounding_dataset(d, d.train_split)
        self.tokenizer = d.run_tokenizer(self.run_dir)
        kwargs = {"vocab_size": self.tokenizer.vocab_size, "languages": list(d.languages),
                  "region_dim": self.images.feature_dim, "pad_id": self.tokenizer.pad_id, **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **kwargs)
        if not isinstance(model, MHAVSE):
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not an MHA-VSE model; use mha_vse or "
                              "mha_vse_tiny")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.kwargs = kwargs
        return model

    def model_meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "mha-vse", "languages": list(d.languages),
                "tokenizer": str(d.tokenizer_path(self.run_dir)), "max_len": d.max_len,
                "data_root": str(d.root().resolve())}

    def train_dataset(self) -> Dataset:
        return CaptionPicks(self.images, list(self.cfg.data.languages), train=True)

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        if not d.val_split:
            return None
        return RetrievalItems(grounding_dataset(d, d.val_split), list(d.languages))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        from percli.grounding.multi30k import collate_regions

        regions, mask = collate_regions(items)
        batch = {"regions": regions, "region_mask": mask}
        for key in ("texts", "text", "image", "language"):
            if key in items[0]:
                values = [item[key] for item in items]
                batch[key] = torch.tensor(values) if key in ("image", "language") else values
        return batch

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inner = getattr(model, "module", model)
        return vse_loss(inner, batch, self.tokenizer, list(self.cfg.data.languages), self.cfg.loss,
                        self.cfg.data.max_len)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return RetrievalItems.embed(getattr(model, "module", model), batch, self.tokenizer, self.cfg.data.languages,
                                    self.cfg.data.max_len)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return grounding_report(totals, list(self.cfg.data.languages))

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        pairs = self.cfg.data.sts_pairs()
        if pairs is None or "en" not in self.cfg.data.languages:
            return {}
        inner = getattr(model, "module", model)
        return {"sts": sts_scores(inner, self.tokenizer, pairs, "en", self.cfg.data.max_len, accelerator.device)}


def validate(cfg: Config) -> None:
    cfg.data.validate()
    if cfg.loss.diversity not in DIVERSITY_FORMS:
        raise ConfigError(f"loss.diversity={cfg.loss.diversity!r}: choose one of {', '.join(DIVERSITY_FORMS)}")
    if cfg.loss.margin <= 0 or cfg.loss.diversity_weight < 0:
        raise ConfigError(f"loss.margin={cfg.loss.margin}, loss.diversity_weight={cfg.loss.diversity_weight}: "
                          "give a positive margin (e.g. 0.2) and a non-negative weight")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    with ctx.accelerator.main_process_first():  # one process writes the embedded scenes, the others reuse them
        cfg.data.root()
    return engine.train(MHAVSETask(cfg, ctx.run_dir), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator,
                        resume=ctx.resume)




class GroundingEvaluator:
    """`percli eval retrieval` on an MHA-VSE run: image <-> text per language, head similarity, and STS."""

    def __init__(self, model: MHAVSE, tokenizer: SubwordTokenizer, data: GroundingData):
        self.model, self.tokenizer, self.data = model, tokenizer, data
        self.task = MHAVSETask(Config(data=data), Path("."))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.task.collate(items)

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return RetrievalItems.embed(getattr(model, "module", model), batch, self.tokenizer, self.data.languages,
                                    self.data.max_len)

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return grounding_report(totals, list(self.data.languages))

    def sts(self, device: torch.device) -> dict[str, float] | None:
        pairs = self.data.sts_pairs()
        if pairs is None or "en" not in self.data.languages:
            return None
        return sts_scores(self.model, self.tokenizer, pairs, "en", self.data.max_len, device)


def load_grounding(checkpoint: str, kwargs: dict[str, Any], source: str, features: str | None, split: str,
                   languages: list[str]) -> tuple[MHAVSE, GroundingEvaluator, RetrievalItems]:
    """(model, evaluator, dataset) of an MHA-VSE run on `split` of a Multi30K folder (embedded: the run's own)."""
    from percli.core.checkpoint import read_meta, run_weights
    from percli.models import create_model_for

    weights = run_weights(checkpoint)
    meta = read_meta(weights)
    model = create_model_for(meta["name"], {**meta.get("kwargs", {}), **kwargs}, weights)
    load_initial_weights(model, weights)
    model.eval()
    root = meta.get("data_root") if source == "embedded" else source
    data = GroundingData(source=str(root) if root else "embedded", features=features,
                         languages=list(languages or meta.get("languages") or model.languages),
                         max_len=int(meta.get("max_len", GroundingData.max_len)))
    tokenizer = run_tokenizer(meta, Path(checkpoint).expanduser().resolve())
    dataset = RetrievalItems(grounding_dataset(data, split), data.languages)
    return model, GroundingEvaluator(model, tokenizer, data), dataset
