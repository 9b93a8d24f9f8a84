"""VideoCLIP (Xu, Ghosh, Huang et al., EMNLP 2021) as fairseq ``examples/MMPT`` builds it, with its names.

Written for percli from the paper and the official model's structure (parameter names, shapes, order of
operations); no MMPT code is copied (MMPT is mostly CC-BY-NC). ``tests/test_golden.py`` checks every output
of the official ``MMFusionSeparate`` / ``MMFusionShare`` on a tiny config (tests/golden_mmpt.py).

Inputs are MMPT's aligned batch:

* ``caps`` [B, C] int64 token ids laid out ``[CLS] [SEP] w_1..w_n [SEP] [PAD]...``: the FIRST [SEP] (index 1)
  is the video's [SEP], the rest is the caption; ``cmasks`` [B, C] bool is True on every non-pad token.
* ``vfeats`` [B, V, 512]: pre-extracted S3D (HowTo100M MIL-NCE) features, one per second, zero rows past the
  clip's end; ``vmasks`` [B, V] bool is True on real frames. ``V <= max_video_len``.

Video tokens go through `VideoTokenMLP` (Linear -> GELU -> LayerNorm(eps 1e-5) -> Linear) and replace the
word embeddings between [CLS] and the video [SEP] in `MMBertEmbeddings`; positions are ``0..V`` for [CLS] and
the frames, then ``max_video_len + 1`` onwards for the video [SEP] and any text, so a short clip's [SEP]
keeps the position a full clip's has (text-only passes start at ``max_video_len + 2``).

VideoCLIP (`MMFusionSeparate`, registered as ``videoclip_how2``) has two towers: ``video_encoder`` (a
``num_hidden_video_layers``-layer BERT over ``[CLS] v_1..v_V [SEP]``, initialised from the first layers of
``bert-base-uncased``) and ``text_encoder`` (a plain 12-layer BERT over ``[CLS] caption [SEP]``). Each side is
the mean of its outputs excluding [CLS] and padding (the video side includes the video [SEP]); scores are
raw dot products and the loss is the symmetric InfoNCE without temperature (`mm_contrastive_loss`).
`MMFusionShare` is the same two-pass retrieval with one shared encoder (``mm_encoder``), as VLM uses it.
VLM's single-stream models are in `percli.models.vlm`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.bert import BertConfig, BertEmbeddings, BertEncoding, BertModel, init_bert_weights
from percli.models.common import LoadReport, read_state

VIDEO_FEATURE_DIM = 512  # S3D features (MMPT's default input_dim)


def mmpt_preprocess(max_video_len: int, input_dim: int) -> dict[str, Any]:
    """What a batch for an MMPT model must look like (stored beside the weights, read by data code)."""
    return {"video_features": "S3D (HowTo100M MIL-NCE) per second" if input_dim == VIDEO_FEATURE_DIM else
            "per-second features", "feature_dim": input_dim, "features_per_second": 1,
            "max_video_len": max_video_len, "tokenizer": "bert-base-uncased", "cls_id": 101, "sep_id": 102,
            "pad_id": 0, "mask_id": 103, "caps_layout": "[CLS] [SEP](video) caption [SEP] [PAD]..."}


class VideoTokenMLP(nn.Module):
    """S3D feature -> one video token: linear1, GELU, LayerNorm (torch's default eps 1e-5, NOT BERT's), linear2."""

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.linear1 = nn.Linear(input_dim, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size)
        self.linear2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, vfeats: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.LayerNorm(F.gelu(self.linear1(vfeats))))  # [B, V, D] -> [B, V, C]


class MMBertEmbeddings(BertEmbeddings):
    """BERT embeddings where video tokens stand in for word embeddings right after [CLS].

    ``use_seg_emb`` adds the ``seg_embeddings`` [256, C] table VLM's checkpoints carry; nothing reads it.
    """

    def __init__(self, cfg: BertConfig, max_video_len: int, use_seg_emb: bool = False):
        super().__init__(cfg)
        self.max_video_len = max_video_len
        if use_seg_emb:
            self.seg_embeddings = nn.Embedding(256, cfg.hidden_size)

    def mm_position_ids(self, num_ids: int, num_video: int | None) -> torch.Tensor:
        """[1, N] positions: ``0..V`` for [CLS] + frames, then from ``max_video_len + 1`` for the rest.

        Without video (`num_video` None) [CLS] takes 0 and the ids from ``max_video_len + 2`` on (the video
        [SEP] of `caps` is not among them).
        """
        start = self.max_video_len + (1 if num_video is not None else 2)
        head = (num_video or 0) + 1
        if (num_video or 0) > self.max_video_len or start + num_ids - 1 > self.position_ids.shape[1]:
            raise ValueError(f"{num_video or 0} frames and {num_ids} ids do not fit max_video_len="
                             f"{self.max_video_len} / max_position_embeddings={self.position_ids.shape[1]}")
        return torch.cat([self.position_ids[:, :head], self.position_ids[:, start:start + num_ids - 1]], dim=1)

    def forward(self, input_ids: torch.Tensor, video_tokens: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        if position_ids is None:
            position_ids = self.mm_position_ids(input_ids.shape[1], None if video_tokens is None
                                                else video_tokens.shape[1])
        words = self.word_embeddings(input_ids)
        if video_tokens is not None:  # [B, 1 + V + (N-1), C]: [CLS], video tokens, then the rest of the ids
            words = torch.cat([words[:, :1], video_tokens, words[:, 1:]], dim=1)
        return self.combine(words, position_ids, token_type_ids)


class MMBertModel(BertModel):
    """A BERT whose embeddings take video tokens (`MMBertEmbeddings`); the encoder is BERT's."""

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None, max_video_len: int,
                 use_seg_emb: bool = False):
        cfg = BertConfig.make(bert_config)
        super().__init__(cfg, MMBertEmbeddings(cfg, max_video_len, use_seg_emb))

    def forward(self, input_ids: torch.Tensor, video_tokens: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, split: int | None = None) -> BertEncoding:
        return self.encode(self.embeddings(input_ids, video_tokens, token_type_ids), attention_mask,
                           output_hidden_states, split)


class MMBertForEncoder(nn.Module):
    """``videomlp`` + ``bert``: the video tower of VideoCLIP, the shared encoder of VLM's retrieval models
    (official ``MMBertForEncoder`` / ``MMBertForJoint``, which hold the same tensors)."""

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None, max_video_len: int = 32,
                 use_seg_emb: bool = False, input_dim: int = VIDEO_FEATURE_DIM):
        super().__init__()
        cfg = BertConfig.make(bert_config)
        self.videomlp = VideoTokenMLP(input_dim, cfg.hidden_size)
        self.bert = MMBertModel(cfg, max_video_len, use_seg_emb)  # initialised by BertModel
        init_bert_weights(self.videomlp, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, input_video_embeds: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, split: int | None = None) -> BertEncoding:
        """`input_ids` [B, N] ([CLS] first), `input_video_embeds` [B, V, D] raw features inserted after it."""
        tokens = None if input_video_embeds is None else self.videomlp(input_video_embeds)
        return self.bert(input_ids, tokens, attention_mask, token_type_ids, output_hidden_states, split)


def masked_mean(sequence: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of `sequence` [B, N, C] over the positions where `weights` [B, N] is True (or by its weights)."""
    w = weights.to(sequence.dtype)
    w = w / w.sum(1, keepdim=True)
    return torch.bmm(sequence.transpose(1, 2), w.unsqueeze(2)).squeeze(-1)  # [B, C, N] @ [B, N, 1] -> [B, C]


def _video_pool_weights(vmasks: torch.Tensor) -> torch.Tensor:
    """[B, V+2] over ``[CLS] v_1..v_V [SEP]``: the real frames and the video [SEP], never [CLS]."""
    ones = torch.ones(vmasks.shape[0], 1, dtype=torch.bool, device=vmasks.device)
    return torch.cat([~ones, vmasks.bool(), ones], dim=1)


class _TwoPassRetrieval(nn.Module):
    """Video and text encoded in separate passes, each mean-pooled without [CLS] (VideoCLIP's retrieval)."""

    def video_tower(self) -> MMBertForEncoder:
        raise NotImplementedError

    def text_sequence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, caps: torch.Tensor, cmasks: torch.Tensor, vfeats: torch.Tensor, vmasks: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """{"pooled_video": [B, C], "pooled_text": [B, C]}; their dot products are the retrieval scores."""
        return {"pooled_video": self.forward_video(vfeats, vmasks, caps, cmasks),
                "pooled_text": self.forward_text(caps, cmasks)}

    def forward_video(self, vfeats: torch.Tensor, vmasks: torch.Tensor, caps: torch.Tensor, cmasks: torch.Tensor,
                      output_hidden_states: bool = False) -> torch.Tensor:
        """Pooled video [B, C]; with `output_hidden_states` (MMPT's name) the sequence [B, V+2, C] instead.

        The pass is ``[CLS] v_1..v_V [SEP]`` with [CLS] and [SEP] taken from ``caps[:, :2]``, token type 0.
        """
        mask = torch.cat([cmasks[:, :1], vmasks, cmasks[:, 1:2]], dim=1)  # [B, V+2]
        types = torch.zeros(mask.shape, dtype=torch.long, device=vmasks.device)
        out = self.video_tower()(caps[:, :2], vfeats, mask, types).last_hidden_state
        return out if output_hidden_states else masked_mean(out, _video_pool_weights(vmasks))

    def forward_text(self, caps: torch.Tensor, cmasks: torch.Tensor, output_hidden_states: bool = False
                     ) -> torch.Tensor:
        """Pooled text [B, C] over ``[CLS] caption [SEP]`` (the video [SEP] of `caps` dropped), or the sequence."""
        input_ids = torch.cat([caps[:, :1], caps[:, 2:]], dim=1)  # [B, C-1]
        mask = torch.cat([cmasks[:, :1], cmasks[:, 2:]], dim=1)
        out = self.text_sequence(input_ids, mask)
        if output_hidden_states:
            return out
        return masked_mean(out, torch.cat([torch.zeros_like(cmasks[:, :1]), cmasks[:, 2:]], dim=1))


class MMFusionSeparate(_TwoPassRetrieval):
    """VideoCLIP: a video BERT (``video_encoder``) and a text BERT (``text_encoder``) of the same width.

    Args:
        bert_config: the text BERT's `BertConfig` (fields or None = bert-base-uncased); the video BERT is
            the same with ``num_hidden_layers = num_hidden_video_layers``.
        num_hidden_video_layers: depth of the video BERT (6 in VideoCLIP).
        max_video_len: the most frames (seconds) a clip has (32); fixes the text positions.
        input_dim: width of the video features (512, S3D).
    """

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None, num_hidden_video_layers: int = 6,
                 max_video_len: int = 32, input_dim: int = VIDEO_FEATURE_DIM):
        super().__init__()
        cfg = BertConfig.make(bert_config)
        self.video_encoder = MMBertForEncoder(BertConfig.make(cfg, num_hidden_layers=num_hidden_video_layers),
                                              max_video_len, False, input_dim)
        self.text_encoder = BertModel(cfg)
        self.preprocess = mmpt_preprocess(max_video_len, input_dim)

    def video_tower(self) -> MMBertForEncoder:
        return self.video_encoder

    def text_sequence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # a plain BERT: positions 0.., token type 0 throughout
        return self.text_encoder(input_ids, attention_mask, torch.zeros_like(input_ids)).last_hidden_state

    def bert_towers(self) -> dict[str, int]:
        """Where a pretrained BERT goes (`load_bert_weights`): tower prefix -> how many of its layers."""
        return {"video_encoder.bert.": len(self.video_encoder.bert.encoder.layer),
                "text_encoder.": len(self.text_encoder.encoder.layer)}


class MMFusionShare(_TwoPassRetrieval):
    """Two-pass retrieval through one shared ``mm_encoder`` (VLM's encoder used as VideoCLIP's towers).

    The text pass has token types ``[0, 1, 1, ...]`` and positions from ``max_video_len + 2``, as the
    text part of VLM's joint sequence has.
    """

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None, max_video_len: int = 32,
                 use_seg_emb: bool = True, input_dim: int = VIDEO_FEATURE_DIM):
        super().__init__()
        self.mm_encoder = MMBertForEncoder(bert_config, max_video_len, use_seg_emb, input_dim)
        self.preprocess = mmpt_preprocess(max_video_len, input_dim)

    def video_tower(self) -> MMBertForEncoder:
        return self.mm_encoder

    def text_sequence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        types = torch.ones_like(input_ids)
        types[:, 0] = 0
        return self.mm_encoder(input_ids, None, attention_mask, types).last_hidden_state

    def bert_towers(self) -> dict[str, int]:
        return {"mm_encoder.bert.": len(self.mm_encoder.bert.encoder.layer)}


# --------------------------------------------------------------------------- losses


def mm_contrastive_loss(pooled_video: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
    """VideoCLIP's symmetric InfoNCE (official ``MMContraLoss``): ``CE(V T^T, I) + CE(T V^T, I)``.

    Raw dot products: no temperature, no normalisation; the two mean cross-entropies are summed. Row i of
    each side is the positive of row i of the other; every other row is a negative.
    """
    targets = torch.arange(pooled_video.shape[0], device=pooled_video.device)
    return F.cross_entropy(pooled_video @ pooled_text.T, targets) + F.cross_entropy(pooled_text @ pooled_video.T,
                                                                                     targets)


def t2v_contrastive_loss(pooled_video: torch.Tensor, pooled_text: torch.Tensor) -> torch.Tensor:
    """Text-to-video InfoNCE only (official ``T2VContraLoss``; MMPT's retrieval fine-tuning loss)."""
    targets = torch.arange(pooled_video.shape[0], device=pooled_video.device)
    return F.cross_entropy(pooled_text @ pooled_video.T, targets)


# --------------------------------------------------------------------------- checkpoints

MMPT_WRAPPER = "mmmodel."  # fairseq's FairseqMMModel holds the MMPT model as `mmmodel`
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TIED_DECODER = "mm_encoder.cls.predictions.decoder.weight"  # VLM's decoder: the word embeddings themselves
_POSITION_IDS = re.compile(r"(^|\.)embeddings\.position_ids$")


def read_fairseq_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a fairseq checkpoint (MMPT's ``checkpoint_best.pt``: ``{"args" | "cfg", "model",
    "criterion", "optimizer_history", "task_state", "extra_state", "last_optimizer_state"}``) or of a plain
    ``.pt`` / ``.bin`` state dict, read by torch's restricted unpickler without running code of the file.

    Allowed besides torch's safe types: the globals a fairseq checkpoint pickles beside the weights
    (`percli.core.pickled_config`: ``argparse.Namespace`` args, numpy scalars in meter states and ``best``,
    OmegaConf containers as inert stand-ins); a file naming anything else raises `RefusedPickleError` unread.
    """
    from percli.core.checkpoint import torch_load_weights
    from percli.core.pickled_config import config_globals

    ckpt = torch_load_weights(path, config_globals())
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds no state dict of tensors (fairseq keeps them under 'model')")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _read(state_or_path: Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a mapping, a .safetensors file, a fairseq / plain .pt / .pth / .bin file, or a Hugging Face
    folder's weight file."""
    if isinstance(state_or_path, str | Path) and Path(state_or_path).is_dir():
        folder = Path(state_or_path)
        found = [folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{folder} holds none of {', '.join(HF_WEIGHT_FILES)}: pass a Hugging Face "
                                    "BERT folder (e.g. bert-base-uncased) or an MMPT checkpoint file")
        state_or_path = found[0]
    if isinstance(state_or_path, str | Path) and Path(state_or_path).suffix != ".safetensors":
        state = read_fairseq_checkpoint(state_or_path)
    else:
        state = read_state(state_or_path)
    return {k.removeprefix(MMPT_WRAPPER): v for k, v in state.items()}


def is_bert_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a Hugging Face BERT state (``bert.embeddings.*`` or bare ``embeddings.*``), not an MMPT one."""
    return any(k.startswith(("bert.embeddings.word_embeddings", "embeddings.word_embeddings")) for k in state)


def bert_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT state under transformers' current names: no ``bert.`` prefix, and the
    TF-converted ``LayerNorm.gamma`` / ``.beta`` (bert-base-uncased's file) as ``.weight`` / ``.bias``."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))
        out[key] = value
    return out


def load_bert_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Initialise every BERT of `model` from one pretrained BERT, as MMPT's ``from_pretrained`` does.

    Each tower of ``model.bert_towers()`` takes the embeddings, the pooler and the FIRST n encoder layers
    (VideoCLIP's 6-layer video BERT: layers 0-5 of bert-base-uncased); VLM's masked-token head also takes
    ``cls.predictions.transform`` (its decoder is tied to the word embeddings). The video MLP and VLM's
    unused ``seg_embeddings`` stay at init (reported as `missing`); BERT's other heads are `dropped`.
    """
    bert = bert_weights(state)
    own = model.state_dict()
    picked: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for prefix, layers in model.bert_towers().items():
        for key in bert:
            found = re.match(r"encoder\.layer\.(\d+)\.", key)
            if key.startswith(("embeddings.", "pooler.")) or (found and int(found[1]) < layers):
                picked[prefix + key] = bert[key]
                used.add(key)
    head = "mm_encoder.cls.predictions.transform."
    for key in bert:
        if key.startswith("cls.predictions.transform.") and head + key.removeprefix("cls.predictions.transform.") \
                in own:
            picked[head + key.removeprefix("cls.predictions.transform.")] = bert[key]
            used.add(key)
    wrong = [f"{k} {list(v.shape)} != {list(own[k].shape)}" for k, v in picked.items() if k in own
             and v.shape != own[k].shape]
    if wrong:
        raise RuntimeError(f"the BERT weights do not fit {type(model).__name__}: {wrong[:4]}; build the model "
                           "with that BERT's config (bert_config)")
    missing = sorted(k for k in own if k not in picked and k != TIED_DECODER and not _POSITION_IDS.search(k))
    short = [k for k in missing if re.search(r"(bert|text_encoder)\.(encoder|embeddings)\.", k)
             and "seg_embeddings" not in k]
    if short:
        raise RuntimeError(f"the BERT weights lack {short[:4]}: it has fewer layers than {type(model).__name__} "
                           "needs")
    model.load_state_dict(picked, strict=False)
    return LoadReport(source_format="huggingface-bert", dropped=sorted(set(bert) - used), missing=missing)


def _fit_mmpt(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    own = model.state_dict()
    report = LoadReport()
    # a VLM pretraining file into a retrieval model: the masked-token head is not used (as MMPT's strict=False)
    report.dropped = sorted(k for k in state if k not in own and k.startswith("mm_encoder.cls."))
    unexpected = sorted(k for k in state if k not in own and k not in report.dropped)
    tolerated = [k for k in own if _POSITION_IDS.search(k) or k.endswith("seg_embeddings.weight")
                 or k == TIED_DECODER]  # buffers, an unused table, a tied copy
    missing = sorted(k for k in own if k not in state)
    wrong = [f"{k} {list(state[k].shape)} != {list(own[k].shape)}" for k in state if k in own
             and state[k].shape != own[k].shape]
    if unexpected or wrong or set(missing) - set(tolerated):
        raise RuntimeError(f"checkpoint does not fit {type(model).__name__}: missing "
                           f"{sorted(set(missing) - set(tolerated))[:6]}, unexpected {unexpected[:6]}, wrong shape "
                           f"{wrong[:4]}; build the model the checkpoint was trained as (videoclip_* for "
                           "video_encoder/text_encoder keys, vlm_* for mm_encoder keys; its bert_config, "
                           "num_hidden_video_layers, max_video_len)")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report.missing = [k for k in missing if not _POSITION_IDS.search(k) and k != TIED_DECODER]
    return report


def load_official_state(model: nn.Module, state_or_path: Mapping[str, torch.Tensor] | str | Path) -> LoadReport:
    """Load an MMPT checkpoint, or initialise from a Hugging Face BERT.

    * MMPT layout (``video_encoder.*`` / ``text_encoder.*`` or ``mm_encoder.*``, optionally under fairseq's
      ``mmmodel.`` and ``{"model": ...}``): strict, except that a VLM pretraining file's ``mm_encoder.cls.*``
      is dropped into a retrieval model and absent ``position_ids`` buffers / ``seg_embeddings`` keep
      their init. A fairseq ``checkpoint_best.pt`` is read with `read_fairseq_checkpoint` (its config, meters
      and optimizer state never run code); ``percli convert`` re-saves it as safetensors once.
    * A Hugging Face BERT folder (``model.safetensors`` or ``pytorch_model.bin``, e.g. ``bert-base-uncased``)
      or its state: `load_bert_weights` (how VideoCLIP and VLM start pretraining).
    """
    state = _read(state_or_path)
    if is_bert_layout(state):
        return load_bert_weights(model, state)
    return _fit_mmpt(model, state)


# --------------------------------------------------------------------------- registered variants


@register_model
def videoclip_how2(**kwargs) -> MMFusionSeparate:
    """VideoCLIP as pretrained on HowTo100M: bert-base text tower, 6-layer video tower, 32 s clips."""
    return MMFusionSeparate(**{"num_hidden_video_layers": 6, "max_video_len": 32, **kwargs})


register_loader(__name__)(load_official_state)
