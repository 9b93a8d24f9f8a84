"""The data section of the grounding recipes (MHA-VSE, UMMT) and the datasets it names: the embedded scenes,
written once in the Multi30K layout, or a Multi30K folder with region / grid features."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from percli.core.config import ConfigError
from percli.core.data.shards import BadRecords
from percli.grounding.multi30k import GroundedCaptions, read_captions
from percli.grounding.scenes import LANGUAGES, write_multi30k
from percli.grounding.tokenizer import TOKENIZER_FILE, SubwordTokenizer, load_tokenizer, train_tokenizer

EMBEDDED = "embedded"


@dataclasses.dataclass
class GroundingData:
    source: str = EMBEDDED
    """embedded (generated scenes, en/de/fr captions, region features) or a Multi30K folder: <split>.<lang>
    captions with <split>_images.txt (or <split>.<lang>.ids) and features/<image id>.npy."""
    features: str | None = None
    """Folder of <image id>.npy region or grid features [R, D]; null: <source>/features."""
    languages: list[str] = dataclasses.field(default_factory=lambda: ["en", "de"])
    """Caption languages used (file suffixes)."""
    train_split: str = "train"
    """Training split name (file prefix)."""
    val_split: str | None = "val"
    """Held-out split scored during training; null: none."""
    max_regions: int | None = None
    """Keep the first R regions of each image; null: all."""
    max_len: int = 48
    """Subword tokens per caption (longer ones are cut)."""
    vocab_size: int = 8000
    """Size of the BPE vocabulary trained on the training captions (when no tokenizer is given)."""
    tokenizer: str | None = None
    """A tokenizer.json or a local Hugging Face tokenizer folder; null: train one (saved as <run>/tokenizer.json)."""
    sts: str | None = None
    """STS pairs (score<TAB>sentence1<TAB>sentence2, score 0-5); null: <source>/sts.tsv when present."""
    cache_dir: str | None = None
    """Where the embedded scenes are written; null: ~/.cache/percli/grounding (reused when it matches)."""
    embedded_train: int = 1000
    """Embedded: images of the parallel training split."""
    embedded_mono: int = 1500
    """Embedded: images of the monolingual splits (mono.<lang>, a third per language, disjoint)."""
    embedded_val: int = 100
    embedded_test: int = 200
    embedded_seed: int = 0

    def root(self) -> Path:
        """The Multi30K-layout folder: `source`, or the embedded scenes written (once) to the cache."""
        if self.source != EMBEDDED:
            return Path(self.source).expanduser()
        cache = Path(self.cache_dir).expanduser() if self.cache_dir else Path("~/.cache/percli/grounding").expanduser()
        name = (f"scenes-s{self.embedded_seed}-{self.embedded_train}-{self.embedded_mono}-{self.embedded_val}-"
                f"{self.embedded_test}")
        return write_multi30k(cache / name, seed=self.embedded_seed, num_train=self.embedded_train,
                              num_mono=self.embedded_mono, num_val=self.embedded_val, num_test=self.embedded_test)

    def tokenizer_path(self, run_dir: Path) -> Path:
        """Where the run's tokenizer is: `tokenizer`, or the run's own tokenizer.json."""
        return Path(self.tokenizer).expanduser().resolve() if self.tokenizer else run_dir / TOKENIZER_FILE

    def run_tokenizer(self, run_dir: Path) -> SubwordTokenizer:
        """`tokenizer`; else the run's tokenizer.json (--resume); else BPE trained on the training captions of
        every language and saved there."""
        path = self.tokenizer_path(run_dir)
        if self.tokenizer or path.is_file():
            return load_tokenizer(path)
        return train_tokenizer(training_texts(self, self.languages), self.vocab_size, path)

    def feature_dir(self, root: Path | None = None) -> Path:
        return Path(self.features).expanduser() if self.features else (root or self.root()) / "features"

    def sts_pairs(self) -> list[tuple[float, str, str]] | None:
        """The STS pairs, or None when there are none."""
        path = Path(self.sts).expanduser() if self.sts else self.root() / "sts.tsv"
        return read_sts(path) if path.is_file() else None

    def validate(self) -> None:
        if not self.languages:
            raise ConfigError("data.languages: not set; give the caption languages, e.g. data.languages=[en,de]")
        if self.source == EMBEDDED:
            unknown = sorted(set(self.languages) - set(LANGUAGES))
            if unknown:
                raise ConfigError(f"data.languages: the embedded scenes have {', '.join(LANGUAGES)}, not "
                                  f"{', '.join(unknown)}")
        elif not Path(self.source).expanduser().is_dir():
            raise ConfigError(f"data.source: {self.source} is not a folder; give 'embedded' or a Multi30K folder "
                              "(<split>.<lang> captions, <split>_images.txt, features/<id>.npy)")
        if self.features and not Path(self.features).expanduser().is_dir():
            raise ConfigError(f"data.features: {self.features} is not a folder of <image id>.npy files")
        if self.tokenizer and not Path(self.tokenizer).expanduser().exists():
            raise ConfigError(f"data.tokenizer: {self.tokenizer} does not exist; give a tokenizer.json or a local "
                              "Hugging Face tokenizer folder, or leave it unset to train one")
        if self.max_len < 4 or self.vocab_size < 100:
            raise ConfigError(f"data.max_len={self.max_len}, data.vocab_size={self.vocab_size}: need max_len >= 4 "
                              "and vocab_size >= 100")


def grounding_dataset(data: GroundingData, split: str, languages: list[str] | None = None) -> GroundedCaptions:
    """The images of `split` with their captions in `languages` (default: the section's); bad captions and
    features are counted in the dataset's ``bad_records``."""
    root = data.root()
    return GroundedCaptions(root, split, list(languages or data.languages), features=data.feature_dir(root),
                            max_regions=data.max_regions, bad=BadRecords())


def training_texts(data: GroundingData, languages: list[str], split: str | None = None) -> Iterator[str]:
    """Every caption of the training split in `languages` (what the tokenizer is trained on)."""
    root = data.root()
    for lang in languages:
        for _, caption in read_captions(root, split or data.train_split, lang, BadRecords()):
            yield caption


def read_sts(path: Path) -> list[tuple[float, str, str]]:
    """``score<TAB>sentence1<TAB>sentence2`` lines (a header line whose score is not a number is skipped)."""
    pairs = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 3:
                continue
            try:
                pairs.append((float(row[0]), row[1], row[2]))
            except ValueError:
                continue
    if not pairs:
        raise ValueError(f"{path}: no 'score<TAB>sentence1<TAB>sentence2' line")
    return pairs
