"""Unsupervised multimodal MT with pseudo visual pivoting (Huang, Hu, Chang, Hauptmann, ACL 2020): a translation
model trained from monolingual image-caption data only (`percli.models.ummt`, `percli.grounding.translation`).

Two stages, one engine:

1. The shared multilingual visual-semantic embedding: an MHA-VSE (`percli pretrain mha-vse`) trained on the same
   monolingual splits in ``<run>/vse``, where images are the only bridge between the languages (skipped with
   ``vse=RUN``, or when it already finished on ``--resume``).
2. The translator. Per step, each language's captions x (with their images v) give
   * denoising auto-encoding, ``loss.dae``: noised x (and v) -> x;
   * captioning, ``loss.caption``: v -> x (the visually-pivoted captioner is the model with an empty source);
   and from step ``loss.pivot_start`` on, for every other language b:
   * multimodal back-translation, ``loss.back_translation``: the model translates x to b (no gradient), then
     (that translation, v) -> x;
   * pivoted captioning, ``loss.pivot_caption``: the model captions v in b (no gradient), then caption -> x;
   * cross-lingual retrieval pairs, ``loss.retrieval``: mined once before training through the VSE, translated
     both ways (``loss.retrieval_pairs`` pairs a step): the captions of a language-a image and a language-b image
     that are mutual nearest neighbours in the VSE's image space (``loss.retrieval_by=image``), or captions that
     are mutual nearest neighbours across languages (``text``), with cosine >= ``loss.retrieval_threshold``
     after centring each pool (its mean direction removed: an embedding space's hubs would otherwise pair
     everything with a few captions).
   The image of a DAE / back-translation input is dropped with ``loss.image_dropout`` (per language and step),
   so the model translates with or without an image. ``loss.pivot_caption=0 loss.retrieval=0`` is the UNMT
   baseline without visual pivoting.

Held-out evaluation (parallel captions, used only to measure): the teacher-forced loss of translating each
language's caption into each other language, with the image. At the end, the ``eval.split`` captions are
translated in every direction with and without their image: BLEU and chrF (sacreBLEU), next to the word-by-word
baseline built from the same monolingual data (`WordByWord`); translations in ``translations/``.

No code is public and the paper's text could not be read here: the loss weights, the staging, the noise
(Lample et al.'s) and the mining rule are percli's choices, each an option. The paper initialises from XLM;
percli trains from scratch.

Examples:
  percli pretrain ummt                                      # tiny preset: embedded scenes, en <-> de (CPU)
  percli pretrain ummt loss.pivot_caption=0 loss.retrieval=0   # no visual pivoting (DAE + back-translation)
  percli pretrain ummt --preset multi30k data.source=/data/multi30k data.features=/data/multi30k/bottom_up
  percli translate "a small red circle on the left" --checkpoint runs/pretrain-ummt-X --from en --to de
  percli eval translation --checkpoint runs/pretrain-ummt-X --json
"""

from __future__ import annotations

import dataclasses
import json
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
from percli.grounding.evaluation import RetrievalItems, embed_images, embed_texts
from percli.grounding.multi30k import collate_regions
from percli.grounding.translation import (
    add_noise,
    back_translation_loss,
    centred,
    language_batch,
    mutual_pairs,
    pivot_caption_loss,
    seq2seq_loss,
)
from percli.models import create_model, load_initial_weights
from percli.models.ummt import UMMT
from percli.recipes import mha_vse
from percli.recipes.common import TrainedModelSection
from percli.recipes.translation_eval import ParallelCaptions, score_translations


@dataclasses.dataclass
class LossSection:
    dae: float = 1.0
    caption: float = 1.0
    back_translation: float = 1.0
    pivot_caption: float = 1.0
    retrieval: float = 1.0
    pivot_start: int = 500
    """Optimizer steps of DAE + captioning alone before back-translation and the pivot pairs start."""
    image_dropout: float = 0.5
    """Chance that a language's DAE / back-translation inputs of a step go without their images."""
    noise_drop: float = 0.1
    noise_shuffle: int = 3
    noise_blank: float = 0.1
    retrieval_by: str = "image"
    """image: pair the captions of images that are mutual nearest neighbours in the VSE (the image as pivot);
    text: pair captions that are mutual nearest neighbours across languages in the VSE."""
    retrieval_threshold: float = 0.95
    """Least cosine of a mined pair (after centring each pool)."""
    retrieval_pairs: int = 16
    """Mined pairs trained per step (each in both directions)."""
    label_smoothing: float = 0.1


@dataclasses.dataclass
class EvalSection:
    split: str = "test"
    """Parallel split translated at the end (every direction, with and without images)."""
    beam: int = 1
    """Beam size of the final translations (1 = greedy)."""
    max_len: int = 48
    """Longest generated translation, in tokens."""


@dataclasses.dataclass
class Config:
    model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="ummt_base"))
    data: GroundingData = dataclasses.field(default_factory=lambda: GroundingData(train_split="mono"))
    vse: str | None = None
    """An MHA-VSE run on the same monolingual data; null: stage 1 trains one in <run>/vse (vse_* sections)."""
    vse_model: TrainedModelSection = dataclasses.field(default_factory=lambda: TrainedModelSection(name="mha_vse"))
    vse_loss: mha_vse.LossSection = dataclasses.field(default_factory=mha_vse.LossSection)
    vse_train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=128, grad_clip=2.0))
    vse_optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=128, weight_decay=0.0, warmup_fraction=0.0))
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64, grad_clip=1.0))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=1e-4, ref_batch_size=64, weight_decay=0.0, betas=(0.9, 0.98), warmup_fraction=0.05))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    regions, mask = collate_regions(items)
    batch: dict[str, Any] = {"regions": regions, "region_mask": mask}
    if "text" in items[0]:
        batch["text"] = [item["text"] for item in items]
        batch["language"] = torch.tensor([item["language"] for item in items])
    else:
        batch["texts"] = [item["texts"] for item in items]
    return batch


def vse_config(cfg: Config) -> mha_vse.Config:
    """The stage-1 MHA-VSE config: the same data and languages, no cross-lingual term (no parallel captions)."""
    data = dataclasses.replace(cfg.data, val_split=None)
    return mha_vse.Config(model=cfg.vse_model, data=data,
                          loss=dataclasses.replace(cfg.vse_loss, cross_lingual=False),
                          train=cfg.vse_train, optim=cfg.vse_optim)


def mine_pairs(vse_run: str | Path, data: GroundingData, images: Dataset, by: str, threshold: float,
               device: torch.device) -> list[tuple[str, str, str, str, float]]:
    """(language a, caption a, language b, caption b, cosine) of every language pair: the first captions of the
    images whose embeddings (``by="image"``: the images are the pivot) or whose captions' embeddings
    (``by="text"``) are mutual nearest neighbours in the VSE, each pool centred first (`centred`)."""
    model, evaluator, _ = mha_vse.load_grounding(str(vse_run), {}, data.source, data.features, data.train_split,
                                                 list(data.languages))
    model.to(device)
    image_embeds = embed_images(model, images, device) if by == "image" else None
    pools: dict[str, tuple[list[str], torch.Tensor]] = {}
    for lang in data.languages:
        rows = [i for i in range(len(images)) if images.captions_of(i).get(lang)]  # type: ignore[arg-type]
        texts = [images.captions_of(i)[lang][0] for i in rows]
        if not texts:
            continue
        embeds = image_embeds[rows] if image_embeds is not None else \
            embed_texts(model, evaluator.tokenizer, texts, lang, data.max_len, device)
        pools[lang] = (texts, centred(embeds))
    pairs = []
    langs = sorted(pools)
    for i, a in enumerate(langs):
        for b in langs[i + 1:]:
            for ia, ib, score in mutual_pairs(pools[a][1], pools[b][1], threshold):
                pairs.append((a, pools[a][0][ia], b, pools[b][0][ib], score))
    return pairs


class UMMTTask:
    def __init__(self, cfg: Config, run_dir: Path, vse_run: Path | str):
        self.cfg, self.run_dir, self.vse_run = cfg, run_dir, vse_run
        self.generator = torch.Generator()

    def build_model(self) -> nn.Module:
        d = self.cfg.data
        self.images = grounding_dataset(d, d.train_split)
        self.tokenizer = d.run_tokenizer(self.run_dir)
        kwargs = {"vocab_size": self.tokenizer.vocab_size, "region_dim": self.images.feature_dim,
                  "pad_id": self.tokenizer.pad_id, "eos_id": self.tokenizer.eos_id, **self.cfg.model.kwargs}
        model = create_model(self.cfg.model.name, **kwargs)
        if not isinstance(model, UMMT):
            raise ConfigError(f"model.name={self.cfg.model.name!r} is not a UMMT model; use ummt_base or ummt_tiny")
        if self.cfg.model.checkpoint:
            load_initial_weights(model, self.cfg.model.checkpoint)
        self.kwargs = kwargs
        self.train_set = RetrievalItems(self.images, list(d.languages))  # every caption, one item each
        self.pairs = []
        if self.cfg.loss.retrieval > 0:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.pairs = mine_pairs(self.vse_run, d, self.images, self.cfg.loss.retrieval_by,
                                    self.cfg.loss.retrieval_threshold, device)
        return model

    def model_meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {"name": self.cfg.model.name, "kwargs": self.kwargs, "task": "ummt", "languages": list(d.languages),
                "tokenizer": str(d.tokenizer_path(self.run_dir)), "max_len": d.max_len,
                "data_root": str(d.root().resolve()), "train_split": d.train_split,
                "vse": str(Path(self.vse_run).resolve()),
                "mined_pairs": len(self.pairs)}

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset | None:
        d = self.cfg.data
        return ParallelCaptions(grounding_dataset(d, d.val_split), list(d.languages)) if d.val_split else None

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items)

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inner: UMMT = getattr(model, "module", model)
        cfg, d, tok = self.cfg.loss, self.cfg.data, self.tokenizer
        with torch.no_grad():
            inner.trained_steps += 1
        micro = int(inner.trained_steps)
        step = micro // self.cfg.train.grad_accum_steps
        self.generator.manual_seed(self.cfg.train.seed * 1_000_003 + micro)  # noise and drops: a function of the step
        device = batch["regions"].device
        terms: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor, weight: float) -> None:
            terms[name] = terms.get(name, 0) + weight * value

        for pos, lang in enumerate(d.languages):
            rows = (batch["language"] == pos).nonzero().flatten()
            if not len(rows):
                continue
            x, x_mask = (t.to(device) for t in language_batch(tok, [batch["text"][int(i)] for i in rows], lang,
                                                              d.max_len))
            regions, region_mask = batch["regions"][rows], batch["region_mask"][rows]
            with_image = bool(torch.rand((), generator=self.generator) >= cfg.image_dropout)
            image = (regions, region_mask) if with_image else (None, None)
            if cfg.dae > 0:
                noisy, noisy_mask = add_noise(x, x_mask, self.generator, drop=cfg.noise_drop, shuffle=cfg.noise_shuffle,
                                              blank=cfg.noise_blank, mask_id=tok.mask_id, pad_id=tok.pad_id)
                add("dae_loss", seq2seq_loss(inner, noisy, noisy_mask, x, x_mask, *image, cfg.label_smoothing),
                    cfg.dae)
            if cfg.caption > 0:
                add("caption_loss", seq2seq_loss(inner, None, None, x, x_mask, regions, region_mask,
                                                 cfg.label_smoothing), cfg.caption)
            if step < cfg.pivot_start:
                continue
            for other in d.languages:
                if other == lang:
                    continue
                limit = min(x.shape[1] + 8, self.cfg.eval.max_len)
                if cfg.back_translation > 0:
                    add("bt_loss", back_translation_loss(inner, x, x_mask, tok.lang_id(other), regions, region_mask,
                                                         limit, use_image=with_image), cfg.back_translation)
                if cfg.pivot_caption > 0:
                    add("pivot_caption_loss", pivot_caption_loss(inner, x, x_mask, tok.lang_id(other), regions,
                                                                 region_mask, limit), cfg.pivot_caption)
        if step >= cfg.pivot_start and cfg.retrieval > 0 and self.pairs:
            picks = torch.randint(len(self.pairs), (min(cfg.retrieval_pairs, len(self.pairs)),),
                                  generator=self.generator).tolist()
            for a_first in (True, False):
                for a, text_a, b, text_b, _ in (self.pairs[i] for i in picks):
                    src_lang, src, tgt_lang, tgt = (a, text_a, b, text_b) if a_first else (b, text_b, a, text_a)
                    s, s_mask = (t.to(device) for t in language_batch(tok, [src], src_lang, d.max_len))
                    t, t_mask = (t.to(device) for t in language_batch(tok, [tgt], tgt_lang, d.max_len))
                    add("retrieval_loss", seq2seq_loss(inner, s, s_mask, t, t_mask) / (2 * len(picks)),
                        cfg.retrieval)
        if not terms:
            raise ValueError("nothing to train in this batch: every loss weight is 0")
        loss = sum(terms.values())
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float]:
        inner: UMMT = getattr(model, "module", model)
        d, tok = self.cfg.data, self.tokenizer
        device = batch["regions"].device
        sums: dict[str, float] = {}
        for a in d.languages:
            for b in d.languages:
                if a == b:
                    continue
                s, s_mask = (t.to(device) for t in language_batch(tok, [t[a] for t in batch["texts"]], a, d.max_len))
                t, t_mask = (t.to(device) for t in language_batch(tok, [t[b] for t in batch["texts"]], b, d.max_len))
                loss = seq2seq_loss(inner, s, s_mask, t, t_mask, batch["regions"], batch["region_mask"])
                sums[f"{a}_{b}_loss_sum"] = float(loss) * len(s)
        sums["count"] = float(len(batch["texts"]))
        return sums

    def eval_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("count", 0.0), 1.0)
        return {k.removesuffix("_sum"): v / n for k, v in sums.items() if k.endswith("_loss_sum")}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        if not accelerator.is_main_process:
            return {}
        inner = getattr(model, "module", model)
        result = score_translations(inner, self.tokenizer, self.cfg.data, self.cfg.eval.split, self.vse_run,
                                    beam=self.cfg.eval.beam, max_len=self.cfg.eval.max_len,
                                    device=accelerator.device, out_dir=run_dir / "translations")
        return {"translation": result, "mined_pairs": len(self.pairs)}


def _stage_done(folder: Path) -> bool:
    summary = folder / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def validate(cfg: Config) -> None:
    cfg.data.validate()
    if len(cfg.data.languages) < 2:
        raise ConfigError(f"data.languages={cfg.data.languages}: translation needs two languages, e.g. [en,de]")
    if cfg.vse and not Path(cfg.vse).expanduser().exists():
        raise ConfigError(f"vse: {cfg.vse} does not exist; give a `percli pretrain mha-vse` run on the same data, "
                          "or leave it unset to train one first")
    weights = dataclasses.asdict(cfg.loss)
    if any(weights[k] < 0 for k in ("dae", "caption", "back_translation", "pivot_caption", "retrieval")):
        raise ConfigError("loss.dae / caption / back_translation / pivot_caption / retrieval: weights must be >= 0")
    if cfg.loss.retrieval_by not in ("image", "text"):
        raise ConfigError(f"loss.retrieval_by={cfg.loss.retrieval_by!r}: choose image or text")
    if not 0 <= cfg.loss.image_dropout <= 1 or cfg.eval.beam < 1:
        raise ConfigError(f"loss.image_dropout={cfg.loss.image_dropout}, eval.beam={cfg.eval.beam}: need a "
                          "probability and a beam of at least 1")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    with ctx.accelerator.main_process_first():
        cfg.data.root()
    vse_run: Path | str | None = cfg.vse
    vse_summary = None
    if not vse_run:
        vse_dir = ctx.run_dir / "vse"
        vse_dir.mkdir(exist_ok=True)
        if not _stage_done(vse_dir):
            vse_cfg = vse_config(cfg)
            resume = ctx.resume and (vse_dir / "checkpoints").is_dir()
            vse_summary = engine.train(mha_vse.MHAVSETask(vse_cfg, vse_dir), vse_cfg.train, vse_cfg.optim, vse_dir,
                                       ctx.accelerator, resume=resume)
        vse_run = vse_dir
    resume = ctx.resume and (ctx.run_dir / "checkpoints").is_dir()
    summary = engine.train(UMMTTask(cfg, ctx.run_dir, vse_run), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator,
                           resume=resume)
    if vse_summary is not None:
        summary["vse"] = {k: vse_summary[k] for k in ("status", "step", "metrics", "run_dir")}
    return summary
