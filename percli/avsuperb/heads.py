"""AV-SUPERB task heads, after the official downstream experts (github.com/roger-tseng/av-superb).

Every head starts with the official ``connector``: a Linear from the upstream width to
``input_dim: 256`` (all task configs). Frames beyond a clip's length are padding and are ignored.

* `UtteranceHead` (audioset, vggsound, kinetics_sounds, ucf101, emotion ``model.py``): mean over
  frames -> Linear; cross-entropy, or BCE for multi-label AudioSet.
* `SpeakerHead` (``sv/expert.py`` + ``sv/model.py:AMSoftmaxLoss``): the official expert
  mean-pools the projected frames (its XVector/statistics-pooling modules are commented out)
  and trains AM-softmax (s=30, m=0.4) on that vector; trials are scored by the cosine of the
  L2-normalised pooled vectors (`embed`).
* `CTCHead` (``av_asr/model.py``, ``config_best.yaml``): upsample x2 in time (nearest), two
  bidirectional LSTMs of 1024 units each way with dropout 0.2 after each, Linear to the characters
  plus a blank (index 0, as the official dictionary's ``bos``); CTC loss, greedy decoding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PROJECTION_DIM = 256  # official `modelrc.input_dim` of every task


def valid_mask(lengths: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """Bool [B, T], True on real frames (all of them when `lengths` is None)."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device)[None] < lengths.to(device)[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Mean over the valid frames of [B, T, D] -> [B, D]."""
    mask = valid_mask(lengths, x.shape[0], x.shape[1], x.device).to(x.dtype).unsqueeze(-1)  # [B, T, 1]
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class UtteranceHead(nn.Module):
    """Projection -> mean over valid frames -> Linear (classification and multi-label tagging)."""

    def __init__(self, in_dim: int, num_classes: int, multilabel: bool = False, proj_dim: int = PROJECTION_DIM):
        super().__init__()
        self.multilabel = multilabel
        self.connector = nn.Linear(in_dim, proj_dim)
        self.linear = nn.Linear(proj_dim, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) features -> (B, num_classes) logits."""
        return self.linear(masked_mean(self.connector(feats), lengths))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on class indices (B,), or BCE on multi-hot targets (B, C) when multi-label."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        return F.cross_entropy(logits, targets)


def am_softmax_logits(cosine: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """Additive-margin softmax logits ``s * (cos - m * onehot(label))`` (Wang et al. 2018).

    Cross-entropy on these equals the official ``AMSoftmaxLoss``:
    ``-log(e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}))``.
    """
    return s * (cosine - m * F.one_hot(labels, cosine.shape[-1]).to(cosine.dtype))


class SpeakerHead(nn.Module):
    """Projection -> mean over valid frames; AM-softmax over training speakers, cosine scoring of trials."""

    def __init__(self, in_dim: int, num_speakers: int, s: float = 30.0, m: float = 0.4,
                 proj_dim: int = PROJECTION_DIM):
        super().__init__()
        self.s, self.m = s, m
        self.connector = nn.Linear(in_dim, proj_dim)
        self.speakers = nn.Parameter(torch.empty(proj_dim, num_speakers))  # official `W` [hidden, speakers]
        nn.init.xavier_normal_(self.speakers)

    def pooled(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(self.connector(feats), lengths)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, num_speakers) cosine similarities to the speaker weights (argmax = prediction)."""
        return F.normalize(self.pooled(feats, lengths), dim=-1) @ F.normalize(self.speakers, dim=0)

    def loss(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """AM-softmax loss of `forward` output and speaker indices (B,)."""
        return F.cross_entropy(am_softmax_logits(cosine, labels, self.s, self.m), labels)

    def embed(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised utterance embeddings (B, proj_dim); a trial's score is their dot product."""
        return F.normalize(self.pooled(feats, lengths), dim=-1)


class CTCHead(nn.Module):
    """Projection -> x`upsample` in time -> 2 BiLSTMs -> Linear to ``vocab_size + 1`` (blank = 0).

    Token ``i`` of the vocabulary is class ``i + 1``.
    """

    blank = 0

    def __init__(self, in_dim: int, vocab_size: int, upsample: int = 2, hidden: int = 1024, dropout: float = 0.2,
                 proj_dim: int = PROJECTION_DIM):
        super().__init__()
        self.upsample = upsample
        self.connector = nn.Linear(in_dim, proj_dim)
        self.lstm1 = nn.LSTM(proj_dim, hidden, bidirectional=True, batch_first=True)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(2 * hidden, vocab_size + 1)

    def _lstm(self, lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) -> log-probabilities (B, T * upsample, vocab_size + 1) and their lengths (B,)."""
        B, T = feats.shape[:2]
        lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.long().clamp(1, T)
        x = self.connector(feats).repeat_interleave(self.upsample, dim=1)  # nearest upsampling in time
        lengths = lengths * self.upsample
        x = self.dropout(self._lstm(self.lstm1, x, lengths))
        x = self.dropout(self._lstm(self.lstm2, x, lengths))
        return F.log_softmax(self.linear(x), dim=-1), lengths

    def loss(self, log_probs: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """CTC loss (mean over the batch of per-target-length losses, as ``nn.CTCLoss``); `targets` are
        vocabulary indices (0-based, blank excluded)."""
        flat = torch.tensor([t + 1 for seq in targets for t in seq], dtype=torch.long, device=log_probs.device)
        target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
        return F.ctc_loss(log_probs.transpose(0, 1).float(), flat, lengths.cpu(), target_lengths, blank=self.blank,
                          zero_infinity=True)

    @staticmethod
    def decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Greedy CTC: best class per frame, repeats merged, blanks dropped -> vocabulary indices per clip."""
        best = log_probs.argmax(dim=-1).cpu()
        out = []
        for seq, n in zip(best, lengths.tolist(), strict=True):
            merged = torch.unique_consecutive(seq[:n])
            out.append([int(c) - 1 for c in merged if c != CTCHead.blank])
        return out
