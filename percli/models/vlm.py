"""VLM ("Task-agnostic Video-Language Model Pre-training", Xu et al., Findings of ACL 2021), fairseq MMPT names.

One BERT (``mm_encoder.bert``) reads the joint sequence ``[CLS] v_1..v_V [SEP] w_1..w_n [SEP] [PAD]...``
(video tokens from the same `VideoTokenMLP` as VideoCLIP; see `percli.models.mmpt` for the batch layout of
``caps`` / ``cmasks`` / ``vfeats`` / ``vmasks`` and the position ids). Token types are 0 for the first
V + 2 positions and 1 for the text. Written for percli from the paper and the official model's structure;
``tests/test_golden.py`` checks every output of the official classes on a tiny config.

* `MMFusionMTM` (``vlm_how2``): pretraining with the masked token model. A masked frame (``video_label``,
  its features zeroed before the MLP) is classified over [its own frame, every non-masked real frame of the
  batch, every word of the vocabulary]; a masked word (``text_label`` != -100) over [the vocabulary, every
  non-masked frame]. Frames are scored by dot products with their video tokens, words by the decoder tied to
  the word embeddings, both after BERT's prediction-head transform. `mtm_loss` is one cross-entropy over both.
* `MMFusionJoint` (``vlm_retrieval_how2``): retrieval fine-tuning/testing. The first ``num_iso_layer`` layers
  attend within each modality only (video + video [SEP] among themselves, text among itself, [CLS] to
  itself); video and text are the masked means of that layer's output (as VideoCLIP's pooling). With every
  layer isolated, inference (``is_train`` False) encodes the two halves as separate passes: the same values.
* `MMFusionShare` (`percli.models.mmpt`): the same encoder used in two passes, as VideoCLIP's towers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from percli.models import register_loader, register_model
from percli.models.bert import BertConfig, init_bert_weights
from percli.models.mmpt import VIDEO_FEATURE_DIM, MMBertForEncoder, load_official_state, mmpt_preprocess


def mask_frames(vfeats: torch.Tensor, video_label: torch.Tensor) -> torch.Tensor:
    """`vfeats` [B, V, D] with the masked frames (`video_label` [B, V] True) set to 0 (a copy; MMPT zeroes
    the caller's tensor in place)."""
    return vfeats.masked_fill(video_label.unsqueeze(-1), 0.0)


def mtm_loss(video_logits: torch.Tensor, text_logits: torch.Tensor, text_label: torch.Tensor) -> torch.Tensor:
    """VLM's masked token loss (official ``MTM``): one mean cross-entropy over masked frames and words.

    A frame's target is column 0 (its own frame); a word's is its id. The text rows get one zero column so
    both blocks are ``1 + N + vocab`` wide ([vocab + N] text logits: the columns do not line up by meaning,
    as in the official loss).
    """
    text_logits = torch.cat([text_logits, text_logits.new_zeros(text_logits.shape[0], 1)], dim=1)
    labels = text_label.reshape(-1)
    targets = torch.cat([labels.new_zeros(video_logits.shape[0]), labels[labels != -100]])
    return F.cross_entropy(torch.cat([video_logits, text_logits]), targets)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MTMPredictionHead(nn.Module):
    """``transform`` + a bias-free ``decoder`` tied to the word embeddings (no output bias, unlike BERT's MLM)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, masked_frames: torch.Tensor, target_tokens: torch.Tensor, non_masked_tokens: torch.Tensor,
                masked_words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of [M_v, 1 + N + vocab] masked frames and [M_t, vocab + N] masked words.

        Args:
            masked_frames: encoder outputs at the masked frames [M_v, C].
            target_tokens: the video tokens of those frames' original features [M_v, C].
            non_masked_tokens: video tokens of every real non-masked frame of the batch [N, C].
            masked_words: encoder outputs at the masked words [M_t, C].
        """
        h = self.transform(masked_frames)
        own = (h * target_tokens).sum(-1, keepdim=True)  # [M_v, 1]
        video_logits = torch.cat([own, h @ non_masked_tokens.T, self.decoder(h)], dim=1)
        t = self.transform(masked_words)
        text_logits = torch.cat([self.decoder(t), t @ non_masked_tokens.T], dim=1)
        return video_logits, text_logits


class MTMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.predictions = MTMPredictionHead(cfg)


class MMBertForMTM(MMBertForEncoder):
    """``videomlp`` + ``bert`` + ``cls`` (the masked token head, decoder tied to ``bert``'s word embeddings)."""

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None, max_video_len: int = 32,
                 use_seg_emb: bool = True, input_dim: int = VIDEO_FEATURE_DIM):
        super().__init__(bert_config, max_video_len, use_seg_emb, input_dim)
        cfg = self.bert.config
        self.cls = MTMHead(cfg)
        init_bert_weights(self.cls.predictions.transform, cfg.initializer_range)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight


class _SingleStream(nn.Module):
    """What MMPT's single-stream wrappers share: the joint sequence's masks and token types."""

    mm_encoder: MMBertForEncoder
    last_iso_layer = 0  # layers [0, last_iso_layer) attend within each modality only

    @property
    def num_hidden_layers(self) -> int:
        return len(self.mm_encoder.bert.encoder.layer)

    def mm_attention_mask(self, cmasks: torch.Tensor, vmasks: torch.Tensor) -> torch.Tensor:
        """[B, V+C] bool over ``[CLS] video [SEP] caption``; with isolated layers [B, L, V+C, V+C] per layer."""
        mask = torch.cat([cmasks[:, :1], vmasks, cmasks[:, 1:]], dim=1)
        if self.last_iso_layer == 0:
            return mask
        B, N = mask.shape
        V = vmasks.shape[1]
        iso = torch.zeros(B, N, N, dtype=torch.bool, device=mask.device)  # [B, query, key]
        iso[:, 0, 0] = True  # [CLS] attends only itself
        iso[:, 1:V + 2, 1:V + 2] = torch.cat([vmasks, cmasks[:, 1:2]], dim=1)[:, None, :]  # video + video [SEP]
        iso[:, V + 2:, V + 2:] = cmasks[:, None, 2:]  # text
        full = mask[:, None, :].expand(B, N, N)
        layers = [iso] * self.last_iso_layer + [full] * (self.num_hidden_layers - self.last_iso_layer)
        return torch.stack(layers, dim=1)  # [B, L, N, N]

    def mm_mask_and_token_types(self, cmasks: torch.Tensor, vmasks: torch.Tensor,
                                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask, token types [B, V+C]: 0 for [CLS] video [SEP], 1 for the text)."""
        if attention_mask is None:
            attention_mask = self.mm_attention_mask(cmasks, vmasks)
        B, V, C = vmasks.shape[0], vmasks.shape[1], cmasks.shape[1]
        types = torch.ones(B, V + C, dtype=torch.long, device=vmasks.device)
        types[:, :V + 2] = 0
        return attention_mask, types

    def bert_towers(self) -> dict[str, int]:
        return {"mm_encoder.bert.": self.num_hidden_layers}


class MMFusionMTM(_SingleStream):
    """VLM pretraining: the masked token model over a shared BERT (``mm_encoder``: `MMBertForMTM`).

    Args:
        bert_config: `BertConfig` fields (None: bert-base-uncased).
        max_video_len: the most frames a clip has (32).
        use_seg_emb: hold the unused ``seg_embeddings`` table VLM's checkpoints carry (True).
        input_dim: width of the video features (512, S3D).
    """

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None, max_video_len: int = 32,
                 use_seg_emb: bool = True, input_dim: int = VIDEO_FEATURE_DIM):
        super().__init__()
        self.mm_encoder = MMBertForMTM(bert_config, max_video_len, use_seg_emb, input_dim)
        self.preprocess = mmpt_preprocess(max_video_len, input_dim)

    def forward(self, caps: torch.Tensor, cmasks: torch.Tensor, vfeats: torch.Tensor, vmasks: torch.Tensor,
                attention_mask: torch.Tensor | None = None, video_label: torch.Tensor | None = None,
                text_label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Masked token logits; ``mtm_loss(out["video_logits"], out["text_logits"], text_label)`` trains them.

        Args:
            caps: [B, C] ids with the masked words already replaced ([MASK] / random / kept, BERT's 80/10/10).
            video_label: [B, V] bool, the masked frames (their features are zeroed here, not in `vfeats`).
            text_label: [B, C] the original ids at masked words, -100 elsewhere.

        Returns:
            ``video_logits`` [M_v, 1 + N + vocab] (rows: masked frames, batch-major), ``text_logits``
            [M_t, vocab + N] (rows: masked words), N = real non-masked frames of the whole batch.
        """
        if video_label is None or text_label is None:
            raise ValueError("MMFusionMTM scores masked frames and words: pass video_label and text_label (an "
                             "all-False / all -100 label masks nothing)")
        enc = self.mm_encoder
        targets = enc.videomlp(vfeats[video_label])  # [M_v, C]: the frames' original features
        tokens = enc.videomlp(mask_frames(vfeats, video_label))  # [B, V, C]
        non_masked = tokens[vmasks.bool() & ~video_label]  # [N, C], batch-major
        attention_mask, types = self.mm_mask_and_token_types(cmasks, vmasks, attention_mask)
        seq = enc.bert(caps, tokens, attention_mask, types).last_hidden_state  # [B, V+C, C]
        V = vmasks.shape[1]
        frames = seq[:, 1:V + 1]  # [B, V, C]
        words = torch.cat([seq[:, :1], seq[:, V + 1:]], dim=1)  # [B, C, C]: aligned with caps
        video_logits, text_logits = enc.cls.predictions(frames[video_label], targets, non_masked,
                                                        words[text_label != -100])
        return {"video_logits": video_logits, "text_logits": text_logits}


class MMFusionJoint(_SingleStream):
    """VLM retrieval: one pass over the joint sequence with modality-isolated attention, pooled per modality.

    Args:
        bert_config, max_video_len, use_seg_emb, input_dim: as `MMFusionMTM` (a VLM pretraining file loads
            into it, its ``mm_encoder.cls`` dropped).
        num_iso_layer: how many first layers isolate the modalities (None: all, as MMPT's retrieval configs);
            the pooled outputs are read after the last of them.
        is_train: False (MMPT at test time) encodes the two halves as separate passes when every layer is
            isolated (cheaper, equal values); True runs one pass with the per-layer mask.
    """

    def __init__(self, bert_config: BertConfig | Mapping[str, Any] | None = None, max_video_len: int = 32,
                 use_seg_emb: bool = True, input_dim: int = VIDEO_FEATURE_DIM, num_iso_layer: int | None = None,
                 is_train: bool = False):
        super().__init__()
        self.mm_encoder = MMBertForEncoder(bert_config, max_video_len, use_seg_emb, input_dim)
        self.preprocess = mmpt_preprocess(max_video_len, input_dim)
        layers = self.num_hidden_layers
        self.last_iso_layer = layers if num_iso_layer is None else num_iso_layer
        if not 1 <= self.last_iso_layer <= layers:
            raise ValueError(f"num_iso_layer={num_iso_layer}: must be 1..{layers} (isolated layers keep the "
                             "video and text pooled features apart)")
        self.is_train = is_train

    def forward(self, caps: torch.Tensor, cmasks: torch.Tensor, vfeats: torch.Tensor, vmasks: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"pooled_video": [B, C], "pooled_text": [B, C]}: means of the last isolated layer's output over the
        real frames + video [SEP] and over the caption + its [SEP] ([CLS] excluded)."""
        hidden = self._isolated_output(caps, cmasks, vfeats, vmasks, attention_mask)
        V = vmasks.shape[1]
        return {"pooled_video": self._pool_video(hidden, vmasks), "pooled_text": self._pool_text(hidden[:, V:], cmasks)}

    def forward_video(self, vfeats: torch.Tensor, vmasks: torch.Tensor, caps: torch.Tensor, cmasks: torch.Tensor
                      ) -> torch.Tensor:
        """Pooled video [B, C] alone, from ``[CLS] v_1..v_V [SEP]`` (``caps[:, :2]``): the isolated layers make it
        equal to `forward`'s ``pooled_video`` whatever caption the pair has."""
        hidden = self._isolated_output(caps[:, :2], cmasks[:, :2], vfeats, vmasks, split=False)
        return self._pool_video(hidden, vmasks)

    def forward_text(self, caps: torch.Tensor, cmasks: torch.Tensor) -> torch.Tensor:
        """Pooled text [B, C] alone (no frames: the caption keeps its joint-sequence positions and token types),
        equal to `forward`'s ``pooled_text``."""
        mlp = self.mm_encoder.videomlp.linear1
        no_video = mlp.weight.new_zeros(len(caps), 0, mlp.in_features)
        hidden = self._isolated_output(caps, cmasks, no_video, cmasks[:, :0], split=False)
        return self._pool_text(hidden, cmasks)

    def _isolated_output(self, caps: torch.Tensor, cmasks: torch.Tensor, vfeats: torch.Tensor, vmasks: torch.Tensor,
                         attention_mask: torch.Tensor | None = None, split: bool = True) -> torch.Tensor:
        """[B, V+C, C] output of the last isolated layer over ``[CLS] video [SEP] caption``."""
        attention_mask, types = self.mm_mask_and_token_types(cmasks, vmasks, attention_mask)
        V = vmasks.shape[1]
        parts = V + 2 if split and not self.is_train and cmasks.shape[1] > 2 else None  # [CLS] video [SEP] | caption
        out = self.mm_encoder(caps, vfeats, attention_mask, types, output_hidden_states=True, split=parts)
        return out.hidden_states[self.last_iso_layer]

    @staticmethod
    def _pool_video(hidden: torch.Tensor, vmasks: torch.Tensor) -> torch.Tensor:
        weights = torch.cat([vmasks, torch.ones_like(vmasks[:, :1])], dim=1).to(hidden.dtype)  # frames + [SEP]
        V = vmasks.shape[1]
        return (hidden[:, 1:V + 2] * weights.unsqueeze(-1)).sum(1) / weights.sum(1, True)

    @staticmethod
    def _pool_text(hidden: torch.Tensor, cmasks: torch.Tensor) -> torch.Tensor:
        """`hidden` [B, 2+C', C] aligned with `cmasks` ([CLS] and the video [SEP] first, then the caption)."""
        weights = cmasks[:, 2:].to(hidden.dtype)
        return (hidden[:, 2:] * weights.unsqueeze(-1)).sum(1) / weights.sum(1, True)


# --------------------------------------------------------------------------- registered variants


@register_model
def vlm_how2(**kwargs) -> MMFusionMTM:
    """VLM pretraining on HowTo100M (projects/mtm/vlm.yaml): bert-base, 32 s clips, masked token model."""
    return MMFusionMTM(**{"max_video_len": 32, **kwargs})


@register_model
def vlm_retrieval_how2(**kwargs) -> MMFusionJoint:
    """VLM's retrieval model (projects/mtm/vlm/vtt.yaml): every layer modality-isolated."""
    return MMFusionJoint(**{"max_video_len": 32, **kwargs})


register_loader(__name__)(load_official_state)
