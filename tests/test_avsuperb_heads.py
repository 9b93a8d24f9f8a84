"""AV-SUPERB featurizer and task heads: shapes, gradient flow, margin math, CTC decoding, tiny overfits."""

import math

import pytest
import torch
import torch.nn as nn

from percli.avsuperb.featurizer import Featurizer
from percli.avsuperb.heads import CTCHead, SpeakerHead, UtteranceHead, am_softmax_logits, masked_mean


def _layers(n=3, B=2, T=5, D=4):
    return [torch.full((B, T, D), float(i)) for i in range(n)]


def test_featurizer_starts_as_the_mean_and_follows_softmax_weights():
    feat = Featurizer(3)
    assert feat.layer_weights() == pytest.approx([1 / 3] * 3)
    assert torch.allclose(feat(_layers()), torch.full((2, 5, 4), 1.0))  # (0 + 1 + 2) / 3
    with torch.no_grad():
        feat.weights.copy_(torch.tensor([0.0, 0.0, math.log(2.0)]))  # softmax -> 1/4, 1/4, 1/2
    assert feat.layer_weights() == pytest.approx([0.25, 0.25, 0.5])
    assert torch.allclose(feat(_layers()), torch.full((2, 5, 4), 0.25 + 1.0))


def test_featurizer_single_layer_and_normalize():
    assert torch.equal(Featurizer(3, layer=-1)(_layers()), _layers()[2])
    assert Featurizer(3, layer=1).layer_weights() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="out of range"):
        Featurizer(3, layer=3)
    x = [torch.randn(2, 5, 4) * 10 + 3 for _ in range(2)]
    mixed = Featurizer(2, normalize=True)(x)
    assert mixed.mean(-1).abs().max() < 1e-5  # average of layer-normed layers is zero-mean per frame


def test_gradients_reach_only_featurizer_and_head_when_upstream_frozen():
    upstream = nn.Linear(4, 4)
    upstream.requires_grad_(False)
    feat, head = Featurizer(2), UtteranceHead(4, 3)
    x = torch.randn(2, 5, 4)
    layers = [upstream(x), upstream(x).relu()]
    head.loss(head(feat(layers)), torch.tensor([0, 2])).backward()
    assert feat.weights.grad is not None and feat.weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is None for p in upstream.parameters())


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    assert masked_mean(x, torch.tensor([2, 3])).flatten().tolist() == [2.0, 4.0]
    assert masked_mean(x, None).flatten().tolist() == pytest.approx([104 / 3, 4.0])


def _overfit(head, feats, lengths, targets, loss_of, steps=60, lr=3e-3):
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_of(head, feats, lengths, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("multilabel", [False, True])
def test_utterance_head_shapes_and_overfit(multilabel):
    torch.manual_seed(0)
    head = UtteranceHead(12, 5, multilabel=multilabel)
    assert head.connector.out_features == 256
    feats, lengths = torch.randn(6, 7, 12), torch.tensor([7, 5, 3, 7, 1, 6])
    assert head(feats, lengths).shape == (6, 5)
    targets = (torch.rand(6, 5) > 0.5).float() if multilabel else torch.tensor([0, 1, 2, 3, 4, 0])
    losses = _overfit(head, feats, lengths, targets, lambda h, f, n, t: h.loss(h(f, n), t))
    assert losses[-1] < 0.2 * losses[0]


def test_am_softmax_margin_hand_case():
    cosine = torch.tensor([[0.8, 0.2, -0.5]], dtype=torch.float64)
    label = torch.tensor([0])
    logits = am_softmax_logits(cosine, label, s=30.0, m=0.4)
    assert logits[0].tolist() == pytest.approx([30 * 0.4, 30 * 0.2, 30 * -0.5])
    # the official AMSoftmaxLoss: -(s(cos_y - m) - log(e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}))
    numerator = 30 * (0.8 - 0.4)
    expected = -(numerator - math.log(math.exp(numerator) + math.exp(30 * 0.2) + math.exp(30 * -0.5)))
    head = SpeakerHead(4, 3)
    assert float(head.loss(cosine, label)) == pytest.approx(expected, rel=1e-5)


def test_speaker_head_embeddings_and_overfit():
    torch.manual_seed(0)
    head = SpeakerHead(10, 4)
    feats, lengths = torch.randn(8, 6, 10), torch.tensor([6, 4, 6, 2, 6, 5, 3, 6])
    cos = head(feats, lengths)
    assert cos.shape == (8, 4) and cos.abs().max() <= 1 + 1e-6
    emb = head.embed(feats, lengths)
    assert emb.shape == (8, 256) and torch.allclose(emb.norm(dim=-1), torch.ones(8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    losses = _overfit(head, feats, lengths, labels, lambda h, f, n, t: h.loss(h(f, n), t), lr=1e-2)
    assert losses[-1] < 0.3 * losses[0]


def test_ctc_greedy_decode_hand_case():
    # classes: 0 = blank, 1 = 'a', 2 = 'b'; frames a a _ a b b _ | padding
    best = [1, 1, 0, 1, 2, 2, 0, 2]
    log_probs = torch.full((1, 8, 3), -10.0)
    log_probs[0, torch.arange(8), torch.tensor(best)] = 0.0
    assert CTCHead.decode(log_probs, torch.tensor([7])) == [[0, 0, 1]]  # "aab": the 8th frame is padding
    assert CTCHead.decode(log_probs, torch.tensor([8])) == [[0, 0, 1, 1]]


def test_ctc_head_shapes_and_overfit():
    torch.manual_seed(0)
    head = CTCHead(8, vocab_size=4, hidden=16, dropout=0.0, proj_dim=16)
    feats, lengths = torch.randn(2, 6, 8), torch.tensor([6, 4])
    log_probs, out_lengths = head(feats, lengths)
    assert log_probs.shape == (2, 12, 5) and out_lengths.tolist() == [12, 8]
    assert CTCHead(8, vocab_size=4).lstm2.hidden_size == 1024  # official sizes by default
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 12), atol=1e-5)
    targets = [[0, 1, 2], [3, 3]]
    losses = _overfit(head, feats, lengths, targets, lambda h, f, n, t: h.loss(*h(f, n), t), steps=60, lr=3e-2)
    assert losses[-1] < 0.1 * losses[0]
    assert head.decode(*head.eval()(feats, lengths)) == targets
