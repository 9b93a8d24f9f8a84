"""Weighted k-NN accuracy of an encoder's frozen features (DINO / DINOv2 k-NN evaluation).

Any percli image or Audio-MAE encoder works: a percli checkpoint, an official backbone file, or a
registered model left at random init (a baseline). Features: DINOv2 gives its normalised cls token,
or with `features.n_last_blocks` / `features.avgpool` the concatenated cls tokens of the last n
blocks plus the average-pooled patch tokens of the last one, as DINOv2's linear evaluation builds
them; Audio-MAE pretraining models (`percli pretrain audio-mae` checkpoints, decoder unused) give
the mean of the encoder's patch tokens after its final norm, Audio-MAE classifiers and Hiera their
`forward_features` (the pooled, normalised final tokens their head reads). Train and val images get
the eval transform (resize + centre crop); audio clips become normalised fbanks with the
checkpoint's settings (sample rate, mean/std; frames and mel bins from the model's input size,
AudioSet's statistics without a percli checkpoint). The train split is the neighbour bank.

Examples:
  percli eval knn model.name=dinov2_vits14 model.checkpoint=dinov2_vits14_pretrain.pth data.source=/data/in1k/train \
      data.val_source=/data/in1k/val
  percli eval knn model.name=dinov2_vits14 model.kwargs='{img_size: 56, embed_dim: 64, depth: 2, num_heads: 2}' --json
  percli eval knn model.checkpoint=runs/pretrain-audio-mae-X/checkpoints/step_0000300 data.embedded_size=800
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn as nn
from accelerate import Accelerator
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from percli.core import checkpoint as ckpt
from percli.core.config import TrainConfig
from percli.core.context import RunContext
from percli.core.data.loader import SeededSamples, collate_skip_bad
from percli.core.engine import BadInputLog, NoUsableData, no_usable_data_message
from percli.core.knn import knn_classify
from percli.core.rundir import write_json_atomic
from percli.models import create_model_for, load_initial_weights
from percli.models.audio_mae import AudioMaskedAutoencoderViT, AudioViT
from percli.models.dinov2 import DinoVisionTransformer
from percli.models.hub import resolve_weights
from percli.recipes.audio_common import audio_dataset, eval_audio_section
from percli.recipes.classification import classification_dataset, eval_preprocess
from percli.recipes.common import (
    DataSection,
    ModelSection,
    validate,  # noqa: F401  run by the command before anything is built
)
from percli.recipes.layer_features import (
    encoder_blocks,
    layer_features,
    parse_layers,
    pool_tokens,
    prefix_tokens,
    sweep,
)

DEFAULT_MODEL = "dinov2_vits14"


@dataclasses.dataclass
class FeatureSection:
    n_last_blocks: int = 1
    """DINOv2: concatenate the cls tokens of the last n blocks (its linear eval uses 1 or 4)."""
    avgpool: bool = False
    """DINOv2: append the average-pooled patch tokens of the last block."""
    layer: int | None = None
    """Any encoder block's output instead of the final features (0-based; -1 = last block), pooled by `pool`."""
    pool: Literal["auto", "cls", "mean"] = "auto"
    """An intermediate block's tokens -> one vector: the class token, the mean of the other tokens, or auto
    (cls where the encoder has one)."""


@dataclasses.dataclass
class FrozenFeatureConfig:
    """What `percli eval knn` and `percli eval linear-probe` share: the encoder, the data and the features."""

    model: ModelSection = dataclasses.field(default_factory=lambda: ModelSection(name=""))
    """model.name unset = a percli checkpoint's own model (dinov2_vits14 without one); model.checkpoint
    unset = random init (a baseline)."""
    data: DataSection = dataclasses.field(default_factory=DataSection)
    label_csv: str | None = None
    """Audio: label CSV for AST-style JSON data."""
    features: FeatureSection = dataclasses.field(default_factory=FeatureSection)
    layers: str | None = None
    """Layer sweep (--layers): `all` or block indices like 0,4,8,-1; every block's pooled features are
    evaluated, a layer-vs-accuracy table goes in the summary and layers.png in the run dir."""


@dataclasses.dataclass
class Config(FrozenFeatureConfig):
    ks: list[int] = dataclasses.field(default_factory=lambda: [10, 20, 100, 200])
    """Neighbour counts, as DINOv2 reports them."""
    temperature: float = 0.07
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(batch_size=64))
    """Only batch_size, num_workers, cpu and seed are used."""


def build_encoder(model_cfg: ModelSection) -> tuple[nn.Module, dict[str, Any]]:
    """The registered model, with a percli checkpoint's constructor arguments and the given weights;
    also the checkpoint's metadata with the model name resolved."""
    meta: dict[str, Any] = {}
    path = resolve_weights(model_cfg.checkpoint)  # a path, or an hf-hub: spec's file in the Hugging Face cache
    if path is not None and path.exists() and (path.is_dir() or path.suffix == ".safetensors"):
        meta = ckpt.read_meta(path)
    name = model_cfg.name or meta.get("name") or DEFAULT_MODEL
    model = create_model_for(name, {**meta.get("kwargs", {}), **model_cfg.kwargs}, path)
    if path is not None:
        load_initial_weights(model, str(path))
    else:
        Console(stderr=True).print(f"no model.checkpoint: {name} features at random init (a baseline)")
    return model.eval(), {**meta, "name": name}


def is_audio(model: nn.Module) -> bool:
    return isinstance(model, (AudioViT, AudioMaskedAutoencoderViT))


def encode(model: nn.Module, inputs: torch.Tensor, features: FeatureSection) -> torch.Tensor:
    """Frozen features [B, D] of one batch (images, or fbanks for Audio-MAE)."""
    if features.layer is not None:
        layer = parse_layers(str(features.layer), len(encoder_blocks(model)))[0]
        final = dataclasses.replace(features, layer=None, n_last_blocks=1, avgpool=False)
        return layer_features(model, lambda: encode(model, inputs, final), [layer], features.pool)[layer]
    if hasattr(model, "encode_image"):  # CLIP / PE: the image embedding
        return model.encode_image(inputs)
    if isinstance(model, DinoVisionTransformer):
        if features.n_last_blocks == 1 and not features.avgpool:
            return model.forward_features(inputs)["x_norm_clstoken"]
        layers = model.get_intermediate_layers(inputs, features.n_last_blocks, return_class_token=True)
        parts = [cls for _, cls in layers]  # n x [B, C]
        if features.avgpool:
            parts.append(layers[-1][0].mean(dim=1))  # last block's patches [B, L, C] -> [B, C]
        return torch.cat(parts, dim=-1)
    if features.n_last_blocks != 1 or features.avgpool:
        raise ValueError(f"features.n_last_blocks / features.avgpool apply to DINOv2 only, not {type(model).__name__}")
    if isinstance(model, AudioMaskedAutoencoderViT):
        # every token kept, in order (ascending noise = identity shuffle); latent = norm(blocks(...))
        order = torch.arange(model.patch_embed.num_patches, device=inputs.device, dtype=torch.float32)
        latent = model.forward_encoder(inputs, 0.0, noise=order.expand(inputs.shape[0], -1))[0]
        return latent[:, 1:].mean(dim=1)  # patch tokens averaged, cls dropped (the global-pool head's tokens)
    out = model.forward_features(inputs)
    if isinstance(out, dict):
        return out["x_norm_clstoken"]
    # token outputs (PE-Lang / PE-Spatial towers have no pooling): the class token, else the patch mean
    return pool_tokens(out, prefix_tokens(model), "auto") if out.dim() == 3 else out


def image_datasets(model: nn.Module, meta: dict[str, Any], data: DataSection) -> tuple[Dataset, Dataset]:
    """Train (neighbour bank / probe training) and val sets, both with the model's eval preprocessing
    (a checkpoint's normalisation and crop win over the model's defaults)."""
    if len(model.preprocess.get("input_size") or ()) == 4:  # [C, T, H, W]
        raise ValueError(f"{type(model).__name__} is not an image encoder; feature evaluation takes image and "
                         "Audio-MAE models")
    pre = eval_preprocess(model.preprocess, data, meta)
    val_source = data.val_source or data.source
    train = classification_dataset(data.source, "train", False, data, pre.size, False, preprocess=pre)
    val = classification_dataset(val_source, "val", False, data, pre.size, False, preprocess=pre,
                                 classes=list(getattr(train, "classes", [])) or None)
    return train, val


def audio_datasets(model: nn.Module, meta: dict[str, Any], data: DataSection,
                   label_csv: str | None) -> tuple[Dataset, Dataset]:
    """Train and val fbank sets without augmentation: frames and mel bins fit the model's input; sample
    rate and mean/std are the percli checkpoint's, else the model's defaults (16 kHz, AudioSet's)."""
    if data.mean is not None or data.std is not None:
        raise ValueError("data.mean / data.std are image normalisation; Audio-MAE takes the fbank mean/std from "
                         "its percli checkpoint (AudioSet's otherwise): unset them")
    audio = eval_audio_section(model, meta, data.source, label_csv, data.embedded_size)
    train = audio_dataset(audio, data.source, "train", train=False)
    val = audio_dataset(audio, data.val_source or data.source, "val", train=False)
    return train, val


@torch.no_grad()
def extract(model: nn.Module, dataset: Dataset, features: FeatureSection, train: TrainConfig,
            device: torch.device, bad: BadInputLog, layers: list[int] | None = None
            ) -> tuple[torch.Tensor | dict[int, torch.Tensor], torch.Tensor]:
    """Features [N, D] (float32, on CPU; with `layers`, {layer: [N, D]} read in one pass) and labels [N]
    of a whole dataset's readable samples, in dataset order; unreadable files are skipped and added to `bad`."""
    loader = DataLoader(SeededSamples(dataset, train.seed), batch_size=train.batch_size,
                        num_workers=train.num_workers, shuffle=False, collate_fn=collate_skip_bad)
    key = "fbank" if is_audio(model) else "image"
    final = dataclasses.replace(features, layer=None, n_last_blocks=1, avgpool=False)
    feats: dict[Any, list[torch.Tensor]] = {}
    labels = []
    for item in loader:
        bad.add(item["bad"])
        if item["batch"] is None:
            continue
        x = item["batch"][key].to(device)
        got = (layer_features(model, lambda x=x: encode(model, x, final), layers, features.pool) if layers
               else {None: encode(model, x, features)})
        for k, v in got.items():
            feats.setdefault(k, []).append(v.float().cpu())
        labels.append(torch.as_tensor(item["batch"]["label"]))
    if not labels:
        raise NoUsableData(no_usable_data_message("the features' data", None, dataset, bad.files))
    out = {k: torch.cat(v) for k, v in feats.items()}
    return (out if layers else out[None]), torch.cat(labels).long()


def num_classes_of(dataset: Dataset, labels: torch.Tensor) -> int:
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes else int(labels.max()) + 1


def frozen_features(model_cfg: ModelSection, data: DataSection, features: FeatureSection, train: TrainConfig,
                    accelerator: Accelerator, label_csv: str | None = None, layers: str | None = None
                    ) -> dict[str, Any]:
    """Build the encoder and extract train/val features once (shared with the linear probe); with `layers`
    (a sweep spec) `train_x` / `val_x` map each chosen block to its features and `layers` lists them."""
    model, meta = build_encoder(model_cfg)
    chosen = parse_layers(layers, len(encoder_blocks(model))) if layers else None
    model = model.to(accelerator.device)
    if is_audio(model):
        train_set, val_set = audio_datasets(model, meta, data, label_csv)
    else:
        train_set, val_set = image_datasets(model, meta, data)
    if getattr(train_set, "multilabel", False):
        raise ValueError(f"data.source={data.source!r} is multi-label (clips with several labels); k-NN and the "
                         "linear probe take single-label data (AudioSet: percli finetune audio-mae, eval classify)")
    bad = BadInputLog()
    train_x, train_y = extract(model, train_set, features, train, accelerator.device, bad, chosen)
    val_x, val_y = extract(model, val_set, features, train, accelerator.device, bad, chosen)
    if (train_y < 0).any() or (val_y < 0).any():
        raise ValueError("some inputs have no label (a flat folder?); give class sub-folders or a labelled manifest")
    return {"model": meta["name"], "train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y,
            "num_classes": max(num_classes_of(train_set, train_y), int(val_y.max()) + 1), "layers": chosen,
            "bad_inputs": {"count": len(bad.files), "files": bad.files}}


def run(cfg: Config, ctx: RunContext) -> dict[str, Any]:
    run_dir, accelerator = ctx.run_dir, ctx.accelerator
    if not cfg.ks or min(cfg.ks) < 1:
        raise ValueError(f"ks={cfg.ks}: give positive neighbour counts, e.g. ks=[10,20,100,200]")
    f = frozen_features(cfg.model, cfg.data, cfg.features, cfg.train, accelerator, cfg.label_csv, cfg.layers)

    def score(train_x: torch.Tensor, val_x: torch.Tensor) -> dict[str, float]:
        out = {}
        for k in cfg.ks:
            acc = knn_classify(train_x, f["train_y"], val_x, f["val_y"], f["num_classes"], k=k,
                               temperature=cfg.temperature)
            out[f"k{k}/top1"], out[f"k{k}/top5"] = acc["top1"], acc["top5"]
        return out

    counts = {"train_count": len(f["train_y"]), "count": len(f["val_y"])}
    if f["layers"]:
        swept = sweep(f, score, f"k{cfg.ks[0]}/top1", f"k-NN (k={cfg.ks[0]}) top-1 per block: {f['model']}", run_dir,
                      draw=accelerator.is_main_process)
        swept["metrics"].update(counts)
    else:
        swept = {"metrics": {**counts, "feature_dim": f["train_x"].shape[1], **score(f["train_x"], f["val_x"])}}
    summary = {"status": "completed", "model": f["model"], "checkpoint": cfg.model.checkpoint,
               "bad_inputs": f["bad_inputs"], "data": cfg.data.source, **swept, "run_dir": str(run_dir)}
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "summary.json", summary)
    return summary
