"""PerceptionLM (Cho et al., 2025): a Perception Encoder, an MLP projector and a Llama-3 decoder.

Parameter names, constructor keywords and outputs follow the release (facebookresearch/perception_models@3e352cc,
``apps/plm/transformer.py::LMTransformer``), so ``tests/test_golden.py`` matches the official outputs and the
released checkpoints load strictly:

* ``vision_model.*``: `PEVisionTransformer` built from the ``vision_model`` keywords (no pooling, no projection;
  the release truncates PE to the layer it uses by its ``layers``). Its tokens after ``ln_post`` with the cls
  token removed go to
* ``vision_projector.projector.{0,2}``: Linear(width -> dim) -> exact GELU -> Linear(dim -> dim) per token, then
  a 2D adaptive average pooling of the square token grid by ``pooling_ratio`` (2x2 -> 256 tokens per 448 px tile).
* the Llama decoder at the top level (`LlamaTransformer` in ``plm_llama.py``): ``tok_embeddings``, ``layers.N``,
  ``norm``, ``output``. The embeddings of the ``<|image|>`` positions (``image_pos_index >= 0``, row-major) are
  replaced by the projected vision tokens of every image/video chunk in batch order (chunks of ``"text"``
  samples skipped); the values of ``image_pos_index`` are not used, only where it is >= 0.

``model(token_values, images=..., image_pos_index=..., num_chunks=..., media_type=...)`` gives the logits; with
``target`` and ``loss_mask`` the mean cross-entropy of the masked positions (the release's loss). `generate`
decodes greedily or by temperature / top-p over a KV cache (`percli.models.text_decoding`), batched with left
padding. Training: `freeze` / `parameter_groups` (the three towers), `set_grad_checkpointing`.

Checkpoints: `from_folder` reads a release folder in either layout, the perception_models consolidated one
(``params.json`` + ``consolidated.pth``, read with ``weights_only``) or the Hugging Face ``perception_lm`` one
(``config.json`` + ``model*.safetensors``); the loaders and the converters between the layouts are in
`percli.models.plm_loading`.
Images are RGB in [-1, 1] (mean = std = 0.5) of ``image_size``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.common import plain
from percli.models.pe import PEVisionTransformer
from percli.models.plm_llama import (
    END_OF_TEXT_ID,
    EOT_ID,
    IMAGE_TOKEN_ID,
    LlamaTransformer,
    cross_entropy,
)
from percli.models.plm_loading import load_official_state, read_folder_kwargs
from percli.models.text_decoding import StepFn, sample_or_greedy

DEFAULT_MAX_NEW_TOKENS = 256  # the release's max_gen_len (its 11264 is the KV cache size, not a length)
GROUPS = ("vision_model", "vision_projector", "language_model")
# what each training stage of the release trains (apps/plm/configs/stage_{1,2,3}: freeze_* keys)
STAGE_TRAINABLE = {
    "stage1": {"vision_model": False, "vision_projector": True, "language_model": False},
    "stage2": {"vision_model": True, "vision_projector": True, "language_model": True},
    "stage3": {"vision_model": True, "vision_projector": True, "language_model": True},
}


# --------------------------------------------------------------------------- projector


class AdaptiveAvgPooling(nn.Module):
    """[B, h * h, C] -> [B, (h / r)^2, C]: the square token grid (row-major) average-pooled by ratio r."""

    def __init__(self, pooling_ratio: int = 2):
        super().__init__()
        self.pooling_ratio = pooling_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"the projector pools a square token grid; got {n} tokens per chunk")
        out = side // self.pooling_ratio
        x = x.permute(0, 2, 1).reshape(b, c, side, side)  # [B, N, C] -> [B, C, h, h]
        return F.adaptive_avg_pool2d(x, (out, out)).flatten(2).transpose(1, 2)  # -> [B, (h/r)^2, C]


class MLPProjector(nn.Module):
    """Linear -> GELU -> Linear on every vision token, then `AdaptiveAvgPooling` (official ``MLPProjector``)."""

    def __init__(self, width: int, dim: int, pooling_ratio: int = 1):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pooling_ratio = pooling_ratio
        self.adaptive_avg_pool = AdaptiveAvgPooling(pooling_ratio)

    def init_tensors(self, use_gaussian: bool = True, coeff_std: float | None = None, no_init: bool = False) -> None:
        """The release's ``mlp_init``: weights and biases N(0, std) cut at 3 std (or uniform), std = dim^-0.5."""
        if no_init:
            return
        std = self.projector[2].in_features ** -0.5 * (coeff_std or 1.0)
        for t in (self.projector[0].weight, self.projector[0].bias, self.projector[2].weight, self.projector[2].bias):
            if use_gaussian:
                nn.init.trunc_normal_(t, mean=0.0, std=std, a=-3 * std, b=3 * std)
            else:
                nn.init.uniform_(t, -math.sqrt(3) * std, math.sqrt(3) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adaptive_avg_pool(self.projector(x))


# --------------------------------------------------------------------------- the model


def parameter_group(name: str) -> str:
    """The tower a parameter belongs to: vision_model, vision_projector or language_model (everything else)."""
    head = name.split(".", 1)[0]
    return head if head in ("vision_model", "vision_projector") else "language_model"


def _padded_causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, L] real-token flags -> [B, 1, L, L]: causal, padded keys hidden; a pad query sees itself (no NaN)."""
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    own = torch.eye(L, dtype=torch.bool, device=valid.device)
    return (causal & (valid[:, None, :] | own))[:, None]


class PerceptionLM(LlamaTransformer):
    """The PLM model (official ``LMTransformer``; same keywords).

    Args:
        vision_model: `PEVisionTransformer` keywords (None: a text-only Llama).
        pooling_ratio: the projector's average pooling of the token grid.
        freeze_language_model / freeze_vision_model: built with those towers' ``requires_grad`` off.
        mlp_init: the projector init (``use_gaussian``, ``coeff_std``, ``no_init``).
        **decoder: `LlamaTransformer` keywords (dim, n_layers, n_heads, n_kv_heads, ffn_dim_multiplier,
            multiple_of, norm_eps, rope_theta, rope_scale_factor, low/high_freq_factor, old_context_len,
            max_seqlen, vocab_size, weight_tying, head_dim).
    """

    def __init__(self, vision_model: Mapping[str, Any] | None = None, pooling_ratio: int = 1,
                 freeze_language_model: bool = False, freeze_vision_model: bool = False,
                 mlp_init: Mapping[str, Any] | None = None, **decoder: Any):
        super().__init__(**decoder)
        self.config = plain({**decoder, "vision_model": dict(vision_model) if vision_model else None,
                             "pooling_ratio": pooling_ratio, "freeze_language_model": freeze_language_model,
                             "freeze_vision_model": freeze_vision_model, "mlp_init": dict(mlp_init or {})})
        self.arch = type(self).__name__
        self.init_language_weights()
        self.vision_model = self.vision_projector = None
        self.preprocess: dict[str, Any] = {}
        if vision_model:
            self.vision_model = PEVisionTransformer(**vision_model, output_dim=None)
            self.vision_projector = MLPProjector(self.vision_model.width, self.dim, pooling_ratio)
            self.vision_projector.init_tensors(**(mlp_init or {}))
            self.preprocess = dict(self.vision_model.preprocess)
        self.freeze(vision_model=freeze_vision_model or None, language_model=freeze_language_model or None)

    def checkpoint_meta(self) -> dict:
        """Name, constructor arguments and preprocessing, to store beside the weights."""
        return {"name": self.arch, "class": type(self).__name__, "config": dict(self.config),
                "preprocess": dict(self.preprocess)}

    # ----------------------------------------------------------------------- towers

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The parameters of each tower (`GROUPS`), e.g. for per-tower learning rates."""
        groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
        for name, param in self.named_parameters():
            groups[parameter_group(name)].append(param)
        return groups

    def freeze(self, vision_model: bool | None = None, vision_projector: bool | None = None,
               language_model: bool | None = None) -> None:
        """Freeze (True) or unfreeze (False) towers; None leaves one as it is (`STAGE_TRAINABLE`: the release's)."""
        wanted = {"vision_model": vision_model, "vision_projector": vision_projector, "language_model": language_model}
        for name, param in self.named_parameters():
            frozen = wanted[parameter_group(name)]
            if frozen is not None:
                param.requires_grad_(not frozen)

    def train_stage(self, stage: str) -> None:
        """Set what the release trains in ``stage1`` (the projector only), ``stage2`` or ``stage3`` (everything)."""
        if stage not in STAGE_TRAINABLE:
            raise ValueError(f"stage {stage!r}: use one of {sorted(STAGE_TRAINABLE)}")
        self.freeze(**{g: not trainable for g, trainable in STAGE_TRAINABLE[stage].items()})

    # ----------------------------------------------------------------------- forward

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected vision tokens [chunks, tokens per chunk, dim] of image/frame chunks [chunks, 3, H, W]."""
        if self.vision_model is None:
            raise ValueError("this PerceptionLM has no vision_model (built with vision_model=None)")
        dtype = self.vision_model.conv1.weight.dtype
        tokens = self.vision_model.forward_features(images.to(dtype), norm=True, strip_cls_token=True)
        return self.vision_projector(tokens)

    def stitch_images_into_text(self, h_tok: torch.Tensor, h_img: torch.Tensor, image_pos_index: torch.Tensor,
                                num_chunks: Sequence[int], media_type: Sequence[str]) -> torch.Tensor:
        """Write the vision tokens of the non-text samples' chunks, in order, at the ``image_pos_index >= 0``
        positions (row-major); positions beyond the sequence are dropped with their tokens, as officially."""
        starts = list(itertools.accumulate(num_chunks, initial=0))
        chunks = [i for start, end, kind in zip(starts[:-1], starts[1:], media_type) if kind != "text"
                  for i in range(start, end)]
        rows, cols = torch.where(image_pos_index >= 0)
        tokens = h_img[chunks].flatten(0, 1)  # [chunks * tokens per chunk, dim]
        if tokens.shape[0] != rows.numel():
            raise ValueError(f"{rows.numel()} image positions in the text but {tokens.shape[0]} vision tokens "
                             f"({len(chunks)} chunks of {h_img.shape[1]}): the prompt's <|image|> tokens must "
                             "match the images' chunks")
        inside = cols < h_tok.shape[1]
        return h_tok.index_put((rows[inside], cols[inside]), tokens[inside].to(h_tok.dtype))

    def embed(self, token_values: torch.Tensor, images: torch.Tensor | None = None,
              image_pos_index: torch.Tensor | None = None, num_chunks: Sequence[int] | torch.Tensor | None = None,
              media_type: Sequence[str] | None = None) -> torch.Tensor:
        """Token embeddings [B, L, dim] with the images' projected tokens stitched in."""
        h = self.tok_embeddings(token_values)
        if images is None:
            return h
        if image_pos_index is None:
            raise ValueError("images were given without image_pos_index (where their tokens go)")
        num_chunks = [images.shape[0]] if num_chunks is None else [int(n) for n in num_chunks]
        media_type = ["image"] * len(num_chunks) if media_type is None else list(media_type)
        return self.stitch_images_into_text(h, self.encode_images(images), image_pos_index, num_chunks, media_type)

    def forward(self, token_values: torch.Tensor, target: torch.Tensor | None = None,
                tok_idx: torch.Tensor | None = None, mask: str | torch.Tensor | None = None,
                images: torch.Tensor | None = None, image_pos_index: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, aspect_ratios: torch.Tensor | None = None,
                num_chunks: Sequence[int] | torch.Tensor | None = None, media_type: Sequence[str] | None = None,
                attn_impl: str = "sdpa") -> torch.Tensor:
        """Logits [B, L, vocab] of tokens [B, L]; with ``target`` the mean cross-entropy over ``loss_mask``.

        ``tok_idx``: RoPE positions ([L] or [B, L]; default 0 .. L-1). ``mask``: "causal" (default) or a boolean
        [B, 1, L, L] (True = attend). ``num_chunks`` per sample (default: all images one sample) and
        ``media_type`` per sample ("image", "video", "multi_image"; "text" samples' chunks are skipped).
        ``aspect_ratios`` is accepted and unused, as officially.
        """
        if attn_impl != "sdpa":
            raise ValueError(f"attn_impl {attn_impl!r}: percli runs PyTorch SDPA only")
        h = self.embed(token_values, images, image_pos_index, num_chunks, media_type)
        h = self.run_layers(h, tok_idx, "causal" if mask is None else mask)
        if target is None:
            return self.logits(h)
        if loss_mask is not None:  # only the scored positions go through the output projection
            h, target = h[loss_mask], target[loss_mask]
        return cross_entropy(self.logits(h), target)

    # ----------------------------------------------------------------------- generation

    def _batch_prompts(self, prompts: Sequence[Sequence[int]], images: Sequence[torch.Tensor | None],
                       image_pos: Sequence[Sequence[int]], device: torch.device) -> dict[str, Any]:
        """Left-padded tokens, real-token flags and the stitching inputs of a batch of prompts."""
        width = max(len(p) for p in prompts)
        tokens = torch.zeros(len(prompts), width, dtype=torch.long)
        valid = torch.zeros(len(prompts), width, dtype=torch.bool)
        image_pos_index = torch.full((len(prompts), width), -1, dtype=torch.long)
        count = 0
        for b, (ids, positions) in enumerate(zip(prompts, image_pos)):
            pad = width - len(ids)
            tokens[b, pad:], valid[b, pad:] = torch.tensor(list(ids), dtype=torch.long), True
            for p in positions:
                image_pos_index[b, pad + p], count = count, count + 1
        media = [img for img in images if img is not None]
        return {"token_values": tokens.to(device), "valid": valid.to(device),
                "images": torch.cat(media).to(device) if media else None,
                "image_pos_index": image_pos_index.to(device),
                "num_chunks": [0 if img is None else img.shape[0] for img in images],
                "media_type": ["text" if img is None else "image" for img in images]}

    def decode_step(self, prompts: Sequence[Sequence[int]], images: Sequence[torch.Tensor | None] | None = None, *,
                    image_pos: Sequence[Sequence[int]] | None = None, image_token_id: int = IMAGE_TOKEN_ID,
                    use_cache: bool = True) -> StepFn:
        """The ``step(new_ids, state) -> logits [N, V]`` of `percli.models.text_decoding` for these prompts.

        ``step(None, state)`` prefills (vision encoded once, stitched at each prompt's ``image_pos``, by default
        where it holds ``image_token_id``) and keeps every layer's keys/values (``state["cache"]``), the next
        RoPE position of each row and which cache slots are real tokens (rows are left-padded). Each later call
        feeds ``new_ids`` [N, 1]. With ``use_cache=False`` every call recomputes the whole sequence instead.
        """
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image entries (None for a text-only prompt)")
        if image_pos is None:
            image_pos = [[i for i, t in enumerate(p) if t == image_token_id] if img is not None else []
                         for p, img in zip(prompts, images)]
        device = self.tok_embeddings.weight.device

        def prefill(state: dict[str, Any]) -> torch.Tensor:
            batch = self._batch_prompts(prompts, images, image_pos, device)
            valid = batch.pop("valid")
            h = self.embed(**batch)
            positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # [N, L]: left pads share position 0
            if use_cache:
                mask = "causal" if bool(valid.all()) else _padded_causal_mask(valid)
                h, state["cache"] = self.run_layers_cached(h, positions, mask, None)
                state["positions"] = positions[:, -1] + 1
            else:
                state["embeds"] = h
                h = self._uncached(h, valid)
            state["key_mask"] = valid
            return self.logits(h[:, -1]).float()

        def step(new_ids: torch.Tensor | None, state: dict[str, Any]) -> torch.Tensor:
            if new_ids is None:
                return prefill(state)
            key_mask = torch.cat([state["key_mask"], torch.ones_like(new_ids, dtype=torch.bool)], dim=1)
            state["key_mask"] = key_mask
            new = self.tok_embeddings(new_ids)
            if use_cache:
                mask = None if bool(key_mask.all()) else key_mask[:, None, None, :]  # [N, 1, 1, S]
                h, state["cache"] = self.run_layers_cached(new, state["positions"][:, None], mask, state["cache"])
                state["positions"] = state["positions"] + 1
            else:
                state["embeds"] = torch.cat([state["embeds"], new], dim=1)
                h = self._uncached(state["embeds"], key_mask)
            return self.logits(h[:, -1]).float()

        return step

    def _uncached(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        return self.run_layers(h, positions, "causal" if bool(valid.all()) else _padded_causal_mask(valid))

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], images: Sequence[torch.Tensor | None] | None = None, *,
                 image_pos: Sequence[Sequence[int]] | None = None, image_token_id: int = IMAGE_TOKEN_ID,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, stop_ids: Sequence[int] = (EOT_ID, END_OF_TEXT_ID),
                 greedy: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
        """New token ids of each prompt, up to (without) its first stop id, at most ``max_new_tokens``.

        Args:
            prompts: token ids (with ``<|image|>`` placeholders where the images' tokens go).
            images: per prompt its chunks [chunks, 3, H, W] (image tiles or video frames) or None.
            image_pos / image_token_id: where each prompt's vision tokens go (default: its image_token_id slots).
            max_new_tokens: a bound, cut further to what the context (``max_seqlen``) leaves after the longest prompt.
            stop_ids: a row ends at the first of these (the release stops at <|eot_id|> and <|end_of_text|>).
            greedy / temperature / top_p / generator: argmax, or nucleus sampling.
            use_cache: False recomputes every step without a KV cache (same tokens; for tests).
        """
        if not prompts:
            return []
        longest = max(len(p) for p in prompts)
        if longest == 0 or longest >= self.max_seqlen:
            raise ValueError(f"a prompt of {longest} tokens: prompts must be non-empty and shorter than the "
                             f"context of {self.max_seqlen} tokens")
        if max_new_tokens < 1 or not stop_ids:
            raise ValueError(f"max_new_tokens must be >= 1 (got {max_new_tokens}) and stop_ids non-empty")
        budget = min(max_new_tokens, self.max_seqlen - longest)
        inner = self.decode_step(prompts, images, image_pos=image_pos, image_token_id=image_token_id,
                                 use_cache=use_cache)
        eos, other_stops = int(stop_ids[0]), [int(s) for s in stop_ids[1:]]

        def step(new_ids: torch.Tensor | None, state: dict[str, Any]) -> torch.Tensor:
            logits = inner(new_ids, state)
            if new_ids is not None and other_stops:
                # the shared decoder knows one eos: a row that gave another stop id is made to give it next
                stopped = torch.isin(new_ids[:, 0], torch.tensor(other_stops, device=new_ids.device))
                forced = torch.full_like(logits[0], float("-inf")).index_fill(0, torch.tensor([eos],
                                                                                device=logits.device), 0.0)
                logits = torch.where(stopped[:, None], forced, logits)
            return logits

        rows = sample_or_greedy(step, len(prompts), eos, budget, greedy=greedy, temperature=temperature,
                                top_p=top_p, generator=generator)
        stops = {eos, *other_stops}
        return [row[:next((i for i, t in enumerate(row) if t in stops), len(row))] for row in rows]


def from_folder(folder: str | Path, weights: bool = True, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> PerceptionLM:
    """The model a release folder describes, with its weights (built on the meta device first, then filled).

    ``folder``: a local copy of ``facebook/Perception-LM-{1B,3B,8B}`` (Hugging Face layout) or its ``original/``
    subfolder (params.json + consolidated.pth). ``dtype`` casts the parameters (e.g. torch.bfloat16).
    """
    folder = Path(folder)
    kwargs = read_folder_kwargs(folder)
    if not weights:
        model = PerceptionLM(**kwargs)
        return model.to(device=device, dtype=dtype) if dtype else model.to(device)
    with torch.device("meta"):
        model = PerceptionLM(**kwargs)
    model.to_empty(device=device)
    if dtype is not None:
        model.to(dtype)
    load_official_state(model, folder)
    model.rope_embeddings.reset_parameters()
    return model


# --------------------------------------------------------------------------- released configs

# apps/plm/configs/stage_3/plm_{1b,3b,8b}.yaml (= stage 2 but max_seqlen); stage 1: PE without LayerScale,
# pooling_ratio 1, LM and vision frozen
_PE_L14 = dict(image_size=448, patch_size=14, width=1024, layers=23, heads=16, use_cls_token=True,
               use_abs_posemb=True, mlp_ratio=4.0, use_ln_post=False, pool_type="none")
_PE_G14 = dict(image_size=448, patch_size=14, width=1536, layers=47, heads=16, use_cls_token=False,
               use_abs_posemb=True, mlp_ratio=5.833333334, use_ln_post=False, pool_type="none")
_LLAMA3 = dict(vocab_size=128256, norm_eps=1e-5, rope_theta=500000.0, n_kv_heads=8, mlp_init={"use_gaussian": True})
_SCALED = dict(rope_scale_factor=32, high_freq_factor=4, weight_tying=True)
CONFIGS: dict[str, dict[str, Any]] = {
    "plm_1b": dict(_LLAMA3, **_SCALED, dim=2048, n_layers=16, n_heads=32, ffn_dim_multiplier=1.5, multiple_of=256,
                   max_seqlen=11520, pooling_ratio=2, vision_model=dict(_PE_L14, ls_init_value=0.1, drop_path=0.1)),
    "plm_3b": dict(_LLAMA3, **_SCALED, dim=3072, n_layers=28, n_heads=24, ffn_dim_multiplier=1.0, multiple_of=256,
                   max_seqlen=11520, pooling_ratio=2, vision_model=dict(_PE_L14, ls_init_value=0.1, drop_path=0.1)),
    "plm_8b": dict(_LLAMA3, dim=4096, n_layers=32, n_heads=32, ffn_dim_multiplier=1.3, multiple_of=1024,
                   weight_tying=False, max_seqlen=11520, pooling_ratio=2,
                   vision_model=dict(_PE_G14, ls_init_value=0.1, drop_path=0.1)),
}
for _size, _vision in (("1b", _PE_L14), ("3b", _PE_L14), ("8b", _PE_G14)):
    CONFIGS[f"plm_{_size}_stage1"] = dict(CONFIGS[f"plm_{_size}"], max_seqlen=1280, pooling_ratio=1,
                                          freeze_language_model=True, freeze_vision_model=True,
                                          vision_model=dict(_vision))


def _build(name: str, overrides: dict[str, Any]) -> PerceptionLM:
    config = dict(CONFIGS[name])
    if "vision_model" in overrides and overrides["vision_model"] is not None and config["vision_model"]:
        overrides = {**overrides, "vision_model": {**config["vision_model"], **overrides["vision_model"]}}
    model = PerceptionLM(**{**config, **overrides})
    model.arch = name
    return model


@register_model
def plm_1b(**kwargs) -> PerceptionLM:
    return _build("plm_1b", kwargs)


@register_model
def plm_3b(**kwargs) -> PerceptionLM:
    return _build("plm_3b", kwargs)


@register_model
def plm_8b(**kwargs) -> PerceptionLM:
    return _build("plm_8b", kwargs)


@register_model
def plm_1b_stage1(**kwargs) -> PerceptionLM:
    return _build("plm_1b_stage1", kwargs)


@register_model
def plm_3b_stage1(**kwargs) -> PerceptionLM:
    return _build("plm_3b_stage1", kwargs)


@register_model
def plm_8b_stage1(**kwargs) -> PerceptionLM:
    return _build("plm_8b_stage1", kwargs)


register_loader(__name__)(load_official_state)
