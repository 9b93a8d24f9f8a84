"""Altogether captioner training (Xu et al., EMNLP 2024): re-align alt-texts into image-grounded captions.

A frozen CLIP/PE image tower -> TransformerMapper (40 soft tokens) -> OPT decoder reading
[image tokens][alt-text prompt][BOS caption EOS], cross-entropy on the caption only; see
`percli.models.altogether`. Two official stages: `data.stage=pt` (target: an alt-text) then
`data.stage=ft` (target: the re-aligned caption, from the pt checkpoint via `decoder.init`); the
prompt is dropped with probability 0.5 in both.

At the end the held-out captions (sampling, T 0.2, top-p 0.7 as the official inference) and the
input alt-texts are both scored against the true captions (BLEU-4, CIDEr-D) -> summary.json
`caption_eval`; captions.jsonl holds every generated caption and, for the embedded set,
heldout/ holds the held-out images and records.jsonl for `percli caption altogether`.

Examples:
  percli finetune altogether                       # tiny model, embedded scenes, CPU minutes
  percli finetune altogether --preset opt13b_pt data.source='/data/alt/{000..099}.jsonl' \\
      image_encoder.checkpoint=metaclip_h14_2.5b.pt decoder.init=/models/opt-1.3b
  percli finetune altogether --preset opt13b_ft data.source=altogether_ft.jsonl \\
      data.image_field=img_path data.alt_field=alt data.caption_field=round3 decoder.init=runs/pt/checkpoints/step_X
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset

from percli.captioning.triples import RecordTriples, SceneTriples
from percli.core import engine
from percli.core.checkpoint import read_meta, read_weights
from percli.core.config import ConfigError, OptimConfig, TrainConfig
from percli.core.context import RunContext
from percli.core.data.transforms import ImagePreprocess
from percli.core.rundir import write_jsonl_atomic
from percli.models import build_for_checkpoint, list_models
from percli.models.altogether import (
    AltogetherCaptioner,
    CaptionTokenizer,
    OPTConfig,
    OPTForCausalLM,
    image_tower,
    load_opt_state,
    vocabulary_of,
)
from percli.models.common import read_state
from percli.recipes.common import check_shard_sources


@dataclasses.dataclass
class ImageEncoderSection:
    name: str = "clip_vit_h14_quickgelu"
    """Registered CLIP/PE model whose image tower is used (official: MetaCLIP ViT-H/14 quickgelu)."""
    kwargs: dict = dataclasses.field(default_factory=dict)
    checkpoint: str | None = None
    """Its weights: an open_clip/MetaCLIP file or a percli `pretrain clip` checkpoint."""
    frozen: bool = True
    """Official: frozen, run without gradients."""


@dataclasses.dataclass
class DecoderSection:
    init: str | None = None
    """A Hugging Face OPT folder (config.json + weights), or a percli altogether checkpoint (stage pt -> ft)."""
    config: dict = dataclasses.field(default_factory=dict)
    """OPTConfig fields for a decoder from scratch (no init); vocab_size and pad_token_id follow the tokenizer."""
    tokenizer: str = "clip_bpe"
    """`clip_bpe` (offline) or a Hugging Face tokenizer folder (default: decoder.init's when it is an OPT folder)."""
    trim_vocab: bool = False
    """Decoder vocabulary = the tokens of the training texts (from-scratch decoders only; a far smaller softmax)."""


@dataclasses.dataclass
class CaptionerSection:
    prefix_len: int = 40
    mapper_layers: int = 8
    mapper_heads: int = 8
    max_prompt_len: int = 128
    max_target_len: int = 192
    """Official max_seq_len 320 = 128 prompt + 192 target tokens."""


@dataclasses.dataclass
class AltogetherData:
    source: str = "embedded"
    """`embedded` (rendered scenes with web-like alt-texts) or .jsonl/.parquet/.tar record shard patterns
    (space-separated; see `percli.captioning.triples`)."""
    val_source: str | None = None
    """Held-out record shards for the final caption evaluation (embedded: its test split)."""
    stage: Literal["pt", "ft"] = "ft"
    prompt_dropout: float = 0.5
    embedded_size: int = 4000
    eval_size: int = 200
    """Held-out scenes (or the first records of val_source) captioned at the end."""
    image_field: str = "image"
    alt_field: str = "alt_text"
    caption_field: str = "caption"


@dataclasses.dataclass
class GenerationSection:
    strategy: Literal["sample", "greedy", "beam"] = "sample"
    temperature: float = 0.2
    top_p: float = 0.7
    num_beams: int = 4
    max_new_tokens: int = 192


@dataclasses.dataclass
class Config:
    image_encoder: ImageEncoderSection = dataclasses.field(default_factory=ImageEncoderSection)
    decoder: DecoderSection = dataclasses.field(default_factory=DecoderSection)
    captioner: CaptionerSection = dataclasses.field(default_factory=CaptionerSection)
    data: AltogetherData = dataclasses.field(default_factory=AltogetherData)
    generation: GenerationSection = dataclasses.field(default_factory=GenerationSection)
    # Official: batch 32 per GPU x 16 GPUs, AdamW lr 2e-4, 200 warmup steps, cosine to 0.1 x lr.
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=32, mixed_precision="bf16"))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        lr=2e-4, ref_batch_size=512, min_lr=2e-5, weight_decay=0.0, warmup_fraction=0.01))


def _is_percli_checkpoint(path: Path) -> bool:
    """A percli checkpoint dir (a Hugging Face folder also has model.safetensors, beside its config.json)."""
    return path.is_dir() and (path / "model.safetensors").is_file() and not (path / "config.json").is_file()


class AltogetherTask:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    def _tokenizer(self, texts: list[str]) -> CaptionTokenizer:
        dec = self.cfg.decoder
        init = Path(dec.init) if dec.init else None
        if init is not None and _is_percli_checkpoint(init):  # continue a percli run: its vocabulary
            tok = read_meta(init)["tokenizer"]
            return CaptionTokenizer(tok["kind"], tok.get("path"), tok.get("keep_ids"))
        if dec.tokenizer != "clip_bpe" or init is not None:
            return CaptionTokenizer("hf", dec.tokenizer if dec.tokenizer != "clip_bpe" else str(init))
        base = CaptionTokenizer()
        return CaptionTokenizer(keep_ids=vocabulary_of(base, texts)) if dec.trim_vocab else base

    def _decoder(self, tokenizer: CaptionTokenizer) -> tuple[OPTForCausalLM, dict[str, torch.Tensor] | None]:
        """The decoder and, when continuing a percli run, that run's whole captioner state."""
        dec = self.cfg.decoder
        init = Path(dec.init) if dec.init else None
        if init is None:
            # The pad row gets no gradient from lookups: it must be the tokenizer's pad, never BOS.
            sizes = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id}
            return OPTForCausalLM(OPTConfig(**{**dec.config, **sizes})), None
        if _is_percli_checkpoint(init):
            state, meta = read_weights(init)
            # the decoder's sizes come from the checkpoint's metadata: checked against its tensors first
            own = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
            return build_for_checkpoint(lambda: OPTForCausalLM(OPTConfig(**meta["decoder"])), init, own), state
        config = json.loads((init / "config.json").read_text())
        decoder = OPTForCausalLM(OPTConfig.from_hf(config))
        weights = next((init / n for n in ("model.safetensors", "pytorch_model.bin") if (init / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"decoder.init={init}: no model.safetensors or pytorch_model.bin")
        load_opt_state(decoder, read_state(weights))
        return decoder, None

    def build_model(self) -> nn.Module:
        cfg, enc = self.cfg, self.cfg.image_encoder
        self.encoder_meta = {"name": enc.name, "kwargs": dict(enc.kwargs)}
        encoder, dim, self.preprocess = image_tower(enc.name, dict(enc.kwargs), enc.checkpoint)
        pre = ImagePreprocess.of(self.preprocess)  # CLIP and PE describe their input alike
        self.transform = pre.squashed().eval_transform()  # the official fine-tuning input: resized, no crop
        self.train_set = self._dataset(cfg.data.source, "train")
        tokenizer = self._tokenizer(self.train_set.texts() if cfg.decoder.trim_vocab else [])
        decoder, state = self._decoder(tokenizer)
        c = cfg.captioner
        self.model = AltogetherCaptioner(encoder, dim, decoder, tokenizer, c.prefix_len, c.mapper_layers,
                                         c.mapper_heads, c.max_prompt_len, c.max_target_len, enc.frozen)
        if state is not None:
            self.model.load_state_dict(state)
        return self.model

    def model_meta(self) -> dict[str, Any]:
        return {"task": "altogether", "image_encoder": self.encoder_meta, "preprocess": self.preprocess,
                **self.model.config_meta()}

    def _dataset(self, source: str, split: str) -> Dataset:
        data = self.cfg.data
        if source == "embedded":
            size = data.embedded_size if split == "train" else data.eval_size
            return SceneTriples(split, size, self.transform, data.stage, data.prompt_dropout if split == "train" else 0)
        return RecordTriples(source, self.transform, data.stage, data.prompt_dropout if split == "train" else 0,
                             data.image_field, data.alt_field, data.caption_field)

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset | None:
        data = self.cfg.data
        source = data.val_source or ("embedded" if data.source == "embedded" else None)
        self.eval_set = self._dataset(source, "test") if source else None
        return self.eval_set

    def loss_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": model(batch["image"], batch["prompt"], batch["target"])}

    def eval_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, float | torch.Tensor]:
        n = len(batch["target"])
        return {"loss_sum": float(model(batch["image"], batch["prompt"], batch["target"])) * n, "n": n}

    def eval_reduce(self, totals: dict[str, Any]) -> dict[str, float]:
        return {"loss": totals["loss_sum"] / max(totals["n"], 1)}

    def finish(self, model: nn.Module, run_dir: Path, accelerator: Accelerator) -> dict[str, Any]:
        """Caption the held-out set; score captions and alt-texts against the true captions."""
        out: dict[str, Any] = {}
        bad = getattr(self.train_set, "bad_records", None)
        if bad is not None:  # record shards (RecordTriples), not the embedded scenes
            invalid = self.train_set.invalid_alt_text
            out["bad_records"] = {"count": bad.count, "examples": bad.examples}
            out["invalid_alt_text"] = {"count": invalid.count, "examples": invalid.examples}
            out["duplicate_keys"] = bad.duplicate_keys
        if self.eval_set is None:
            return out
        from percli.captioning.metrics import caption_metrics

        rows = caption_heldout(model, self.eval_set, self.cfg.generation, self.cfg.data.eval_size,
                               self.cfg.train.batch_size, accelerator.device)
        write_jsonl_atomic(run_dir / "captions.jsonl", rows)
        references = [[r["caption"]] for r in rows]
        out["caption_eval"] = {
            "n": len(rows), "strategy": self.cfg.generation.strategy,
            "altogether": caption_metrics([r["altogether"] for r in rows], references),
            "alt_text": caption_metrics([r["alt_text"] for r in rows], references),
            "captions": str(run_dir / "captions.jsonl")}
        if self.cfg.data.source == "embedded" and not self.cfg.data.val_source:
            from percli.captioning.scenes import write_scene_folder

            out["caption_eval"]["heldout"] = str(write_scene_folder(run_dir / "heldout", "test", len(rows)))
        return out


def caption_heldout(model: AltogetherCaptioner, dataset: Dataset, gen: GenerationSection, limit: int,
                    batch_size: int, device: torch.device) -> list[dict[str, str]]:
    """{key, alt_text, caption, altogether} for the first `limit` items (sampling seeded: reproducible)."""
    generator = torch.Generator().manual_seed(0)
    subset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    rows = []
    was_training = model.training
    model.eval()
    for batch in DataLoader(subset, batch_size=batch_size):
        captions = model.generate(batch["image"].to(device), batch["alt_text"], strategy=gen.strategy,
                                  temperature=gen.temperature, top_p=gen.top_p, num_beams=gen.num_beams,
                                  max_new_tokens=gen.max_new_tokens, generator=generator)
        rows += [{"key": k, "alt_text": a, "caption": c, "altogether": g}
                 for k, a, c, g in zip(batch["key"], batch["alt_text"], batch["caption"], captions)]
    model.train(was_training)
    return rows


def validate(cfg: Config) -> None:
    """Checks a dry run can make without building anything: encoder name, decoder init, data shards."""
    if cfg.image_encoder.name not in list_models():
        raise ConfigError(f"image_encoder.name: unknown model {cfg.image_encoder.name!r}; see `percli ls models`")
    if cfg.decoder.init and not Path(cfg.decoder.init).exists():
        raise ConfigError(f"decoder.init: {cfg.decoder.init} does not exist; give an OPT folder or a percli "
                          "altogether checkpoint dir")
    if cfg.decoder.trim_vocab and cfg.decoder.init and not _is_percli_checkpoint(Path(cfg.decoder.init)):
        raise ConfigError("decoder.trim_vocab: a pretrained OPT keeps its vocabulary; set decoder.trim_vocab=false")
    check_shard_sources(cfg.data, ".jsonl/.parquet/.tar record shards")


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    return engine.train(AltogetherTask(cfg), cfg.train, cfg.optim, ctx.run_dir, ctx.accelerator, resume=ctx.resume)
