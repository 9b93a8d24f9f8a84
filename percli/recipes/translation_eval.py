"""Translate with a UMMT run and score it (`percli eval translation`; the end of `percli pretrain ummt`).

Every caption of a parallel split (``<split>.<lang>``, the first caption of each image per language) is translated
into every other language, with its image and without, greedily or with a beam, and scored against that image's
caption in the target language: corpus BLEU and chrF from sacreBLEU (its default 13a tokenisation; the
signature is in the summary). Next to it, the word-by-word baseline built from the same monolingual data: the
run's VSE embeds the monolingual images, every word becomes the mean embedding of the images whose captions hold
it, and translates to the nearest word of the other language (`percli.grounding.translation.WordByWord`).
Translations are written to ``translations/<a>-<b>.txt`` (``.no_image.txt``, ``.word_by_word.txt``).

Examples:
  percli eval translation --checkpoint runs/pretrain-ummt-X --json
  percli eval translation --checkpoint runs/pretrain-ummt-X --beam 4 data.source=/data/multi30k --split test_2016
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import sacrebleu
import torch
from torch.utils.data import Dataset

from percli.core.checkpoint import run_weights
from percli.core.config import ConfigError
from percli.core.context import RunContext
from percli.core.rundir import write_text_atomic
from percli.grounding.data import GroundingData, grounding_dataset
from percli.grounding.evaluation import embed_images
from percli.grounding.multi30k import collate_regions
from percli.grounding.tokenizer import SubwordTokenizer, run_tokenizer
from percli.grounding.translation import WordByWord, language_batch
from percli.models import load_run_model
from percli.models.ummt import UMMT


class ParallelCaptions(Dataset):
    """Images of a parallel split with their first caption in every language: ``{"regions", "texts": {lang}}``."""

    def __init__(self, images: Dataset, languages: list[str]):
        self.images, self.languages = images, languages
        self.bad_records = getattr(images, "bad_records", None)
        self.keep = [i for i in range(len(images))  # type: ignore[arg-type]
                     if all(images.captions_of(i).get(lang) for lang in languages)]

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[self.keep[index]]
        return {"regions": item["regions"], "texts": {lang: item["captions"][lang][0] for lang in self.languages}}


@torch.no_grad()
def translate(model: UMMT, tokenizer: SubwordTokenizer, texts: list[str], source: str, target: str, max_len: int,
              device: torch.device, regions: list[torch.Tensor] | None = None, beam: int = 1,
              batch_size: int = 64) -> list[str]:
    """Translations of `texts` from `source` to `target`, each with its image's regions [R, D] when given."""
    model.eval()
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        src, mask = language_batch(tokenizer, chunk, source, max_len)
        image: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        if regions is not None:
            padded, region_mask = collate_regions([{"regions": r} for r in regions[start:start + batch_size]])
            image = (padded.to(device), region_mask.to(device))
        ids = model.generate(src.to(device), mask.to(device), tokenizer.lang_id(target), *image, max_len=max_len,
                             beam=beam)
        out += [tokenizer.decode(row[row != tokenizer.pad_id].tolist()) for row in ids.cpu()]
    return out


def _scores(hypotheses: list[str], references: list[str]) -> tuple[dict[str, float], str]:
    """Corpus BLEU and chrF, and the sacreBLEU signatures of the two."""
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    scores = {"bleu": bleu.corpus_score(hypotheses, [references]).score,
              "chrf": chrf.corpus_score(hypotheses, [references]).score}
    return scores, f"{bleu.get_signature()} / {chrf.get_signature()}"


def word_by_word(vse_run: str | Path, data: GroundingData, device: torch.device) -> WordByWord:
    """The baseline of the module docstring, from the run's VSE and its monolingual training split."""
    from percli.recipes.mha_vse import load_grounding

    vse, _, _ = load_grounding(str(vse_run), {}, data.source, data.features, data.train_split, list(data.languages))
    images = grounding_dataset(data, data.train_split)
    embeddings = embed_images(vse.to(device), images, device)
    captions: dict[str, list[tuple[str, torch.Tensor]]] = {lang: [] for lang in data.languages}
    for i in range(len(images)):
        for lang, texts in images.captions_of(i).items():
            captions[lang] += [(text, embeddings[i]) for text in texts]
    return WordByWord(captions)


def score_translations(model: UMMT, tokenizer: SubwordTokenizer, data: GroundingData, split: str,
                       vse_run: str | Path | None, *, beam: int, max_len: int, device: torch.device,
                       out_dir: Path) -> dict[str, Any]:
    """BLEU / chrF of every direction with and without images, and of the word-by-word baseline (module
    docstring); the translations are written to `out_dir`."""
    languages = list(data.languages)
    pairs = ParallelCaptions(grounding_dataset(data, split), languages)
    items = [pairs[i] for i in range(len(pairs))]
    if not items:
        raise ValueError(f"split {split!r} has no image with a caption in every one of {', '.join(languages)}")
    regions = [item["regions"] for item in items]
    baseline = word_by_word(vse_run, data, device) if vse_run else None
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"split": split, "sentences": len(items), "beam": beam}
    for a in languages:
        for b in languages:
            if a == b:
                continue
            sources = [item["texts"][a] for item in items]
            references = [item["texts"][b] for item in items]
            runs = {"": translate(model, tokenizer, sources, a, b, max_len, device, regions, beam),
                    ".no_image": translate(model, tokenizer, sources, a, b, max_len, device, None, beam)}
            if baseline is not None:
                runs[".word_by_word"] = baseline.translate(sources, a, b)
            scores: dict[str, float] = {}
            for suffix, hypotheses in runs.items():
                write_text_atomic(out_dir / f"{a}-{b}{suffix}.txt", "".join(h + "\n" for h in hypotheses))
                values, result["signature"] = _scores(hypotheses, references)
                scores.update({f"{k}{suffix.replace('.', '_')}": v for k, v in values.items()})
            result[f"{a}-{b}"] = scores
    return result


def load_ummt(checkpoint: str) -> tuple[UMMT, SubwordTokenizer, dict[str, Any]]:
    """A `percli pretrain ummt` run's model (eval mode), tokenizer and metadata."""
    model, meta = load_run_model(checkpoint, "ummt", "percli pretrain ummt")
    return model, run_tokenizer(meta, run_weights(checkpoint)), meta


@dataclasses.dataclass
class Config:
    checkpoint: str | None = None
    """A `percli pretrain ummt` run dir, checkpoint dir or .safetensors file."""
    split: str = "test"
    """The parallel split translated (<split>.<lang> captions)."""
    source: str | None = None
    """A Multi30K folder; null: the data the run trained on."""
    features: str | None = None
    """Its features folder; null: <source>/features."""
    beam: int = 1
    max_len: int = 48
    baseline: bool = True
    """Also score the word-by-word baseline (needs the run's VSE)."""


def validate(cfg: Config) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: not set; give a `percli pretrain ummt` run (--checkpoint runs/pretrain-ummt-X)")
    if cfg.beam < 1 or cfg.max_len < 2:
        raise ConfigError(f"beam={cfg.beam}, max_len={cfg.max_len}: need beam >= 1 and max_len >= 2")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, meta = load_ummt(cfg.checkpoint)
    data = GroundingData(source=cfg.source or meta["data_root"], features=cfg.features,
                         languages=list(meta["languages"]), max_len=int(meta.get("max_len", 48)),
                         train_split=meta.get("train_split", "mono"))  # the baseline's monolingual data
    vse = meta.get("vse") if cfg.baseline else None
    if vse and not Path(vse).exists():
        raise ConfigError(f"the run's VSE {vse} is gone: pass baseline=false, or restore it")
    result = score_translations(model.to(device), tokenizer, data, cfg.split, vse, beam=cfg.beam,
                                max_len=cfg.max_len, device=device, out_dir=ctx.run_dir / "translations")
    scores = {f"{direction}/{k}": v for direction, values in result.items() if isinstance(values, dict)
              for k, v in values.items()}
    return {"status": "completed", "checkpoint": cfg.checkpoint, "metrics": scores, "split": cfg.split,
            "sentences": result["sentences"], "beam": cfg.beam, "signature": result["signature"],
            "translations": str(ctx.run_dir / "translations"),
            "model": {k: meta.get(k) for k in ("name", "languages", "mined_pairs")}}
