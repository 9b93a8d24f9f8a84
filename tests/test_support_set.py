"""Support-set bottlenecks: the byte tokenizer, the cross-captioning attention, the decoder and the ranking loss."""

import pytest
import torch

from percli.models import create_model
from percli.models.support_set import ByteTokenizer, SupportSetAttention, max_margin_ranking


def test_byte_tokenizer_round_trips_any_language_and_keeps_eos_when_cutting():
    tok = ByteTokenizer(context_length=12)
    ids, mask = tok(["ein grüner Kreis", "a dog"])
    assert ids.shape == (2, 12) and ids[0, 0] == tok.bos and ids[0, -1] == tok.eos  # cut: eos kept last
    assert tok.decode(ids[1].tolist()[1:]) == "a dog" and mask[1].sum() == 7  # bos + 5 bytes + eos
    assert tok.decode(tok("grün")[0][0].tolist()[1:]) == "grün"  # two-byte ü survives


def test_cross_captioning_never_attends_to_the_sample_itself():
    torch.manual_seed(0)
    attention = SupportSetAttention(8)
    query, video = torch.randn(4, 8), torch.randn(4, 8)
    e, weights = attention(query, video, cross=True)
    assert torch.equal(weights.diagonal(), torch.zeros(4)) and torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert torch.allclose(e, weights @ attention.v(video))
    _, own = attention(query, video, cross=False)  # the "captioning" ablation may
    assert (own.diagonal() > 0).all()
    with pytest.raises(ValueError, match="at least 2 samples"):
        attention(query[:1], video[:1], cross=True)


def test_max_margin_ranking_on_a_hand_computed_case():
    sim = torch.tensor([[0.9, 0.5], [0.85, 0.7]])
    # rows (video i vs caption j): i=0,j=1: 0.1 + 0.5 - 0.9 < 0 -> 0; i=1,j=0: 0.1 + 0.85 - 0.7 = 0.25
    # cols (caption j vs video i): j=1,i=0: 0.1 + 0.5 - 0.7 < 0 -> 0; j=0,i=1: 0.1 + 0.85 - 0.9 = 0.05
    assert max_margin_ranking(sim, margin=0.1) == pytest.approx((0.25 + 0.05) / 2)


def _batch(model, n=4):
    torch.manual_seed(1)
    features = torch.randn(n, 6, 16)
    video_mask = torch.ones(n, 6, dtype=torch.bool)
    video_mask[0, 4:] = False
    ids, text_mask = model.tokenizer([f"a {c} circle jumps" for c in ("red", "blue", "green", "grey")][:n])
    return features, video_mask, ids, text_mask


def test_padding_is_ignored_and_the_decoder_is_causal():
    model = create_model("support_set_tiny", feature_dim=16, embed_dim=16, width=16, heads=2, layers=1,
                         decoder_layers=1, max_video_len=8, context_length=24).eval()
    features, video_mask, ids, text_mask = _batch(model)
    with torch.no_grad():
        base = model.encode_video(features, video_mask)
        features[0, 5] = 100.0  # a padded second
        assert torch.allclose(model.encode_video(features, video_mask), base, atol=1e-6)
        e = torch.randn(4, 16)
        logits = model.decoder.logits(ids, e)
        changed = ids.clone()
        changed[:, 10] = 50
        assert torch.allclose(model.decoder.logits(changed, e)[:, :10], logits[:, :10], atol=1e-5)


def test_caption_loss_reaches_the_video_encoder_through_the_bottleneck_and_training_lowers_it():
    model = create_model("support_set_tiny", feature_dim=16, embed_dim=16, width=16, heads=2, layers=1,
                         decoder_layers=1, max_video_len=8, context_length=24)
    features, video_mask, ids, text_mask = _batch(model)
    out = model(features, video_mask, ids, text_mask, cross=True)
    out["caption_loss"].backward()
    assert model.video_in.weight.grad.abs().sum() > 0 and model.bottleneck.k.weight.grad.abs().sum() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = model(features, video_mask, ids, text_mask, cross=True)
        sim = out["video_embeds"] @ out["text_embeds"].T
        loss = max_margin_ranking(sim) + out["caption_loss"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first
