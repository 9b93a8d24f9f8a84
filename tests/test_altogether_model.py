"""Altogether captioner: OPT parity with transformers, mapper shapes, target-only loss, decoding identities."""

from __future__ import annotations

import pytest
import torch

from percli.models.altogether import (
    AltogetherCaptioner,
    CaptionTokenizer,
    OPTConfig,
    OPTForCausalLM,
    TransformerMapper,
    build_captioner,
    image_tower,
    load_opt_state,
    vocabulary_of,
)
from percli.models.text_decoding import beam_search, top_p_filter

TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                             "head_width": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
TEXTS = ["two shapes on a red background: a large blue star on the left.", "red star", "a small green circle."]


def tiny_captioner(**kwargs) -> AltogetherCaptioner:
    torch.manual_seed(0)
    tokenizer = CaptionTokenizer(keep_ids=vocabulary_of(CaptionTokenizer(), TEXTS))
    encoder, dim, _ = image_tower("clip_vit_b32_quickgelu", TINY_CLIP)
    decoder = OPTForCausalLM(OPTConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                       ffn_dim=64, num_attention_heads=4, max_position_embeddings=128, dropout=0.0))
    args = dict(prefix_len=3, mapper_layers=1, mapper_heads=2, max_prompt_len=12, max_target_len=24)
    return AltogetherCaptioner(encoder, dim, decoder, tokenizer, **{**args, **kwargs}).eval()


def test_opt_logits_match_transformers_with_left_padding():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.OPTConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, ffn_dim=48,
                                    num_attention_heads=4, max_position_embeddings=40, word_embed_proj_dim=32)
    torch.manual_seed(0)
    reference = transformers.OPTForCausalLM(hf_cfg).eval()
    ours = OPTForCausalLM(OPTConfig.from_hf(hf_cfg.to_dict())).eval()
    load_opt_state(ours, reference.state_dict())
    ids = torch.randint(3, 50, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding moves the positions as OPT's cumsum rule says
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    assert torch.allclose(got[mask.bool()], expected[mask.bool()], atol=1e-5)
    assert set(ours.state_dict()) == set(reference.state_dict())


def test_opt_rejects_post_norm_variant():
    with pytest.raises(ValueError, match="opt-350m"):
        OPTConfig.from_hf({"hidden_size": 1024, "do_layer_norm_before": False})


def test_mapper_gives_prefix_tokens_of_decoder_width():
    mapper = TransformerMapper(image_dim=24, dim=16, prefix_len=5, layers=2, heads=2)
    assert mapper(torch.randn(3, 24)).shape == (3, 5, 16)


def test_loss_depends_on_targets_only_not_on_their_padding():
    model = tiny_captioner()
    images = torch.randn(2, 3, 16, 16)
    short, long = "red star", "two shapes on a red background: a large blue star on the left."
    # Row 0's loss alone, vs. row 0 batched with a longer target (so row 0 gets right padding):
    alone = model(images[:1], ["red star"], [short])
    ids, mask = model.tokenize_targets([short, long])
    assert mask[0].sum() < mask[1].sum()
    with torch.no_grad():
        both = model(images, ["red star", ""], [short, long])
        other = model(images[1:], [""], [long])
    n0, n1 = len(model.tokenizer.encode(short)) + 1, len(model.tokenizer.encode(long)) + 1
    assert torch.allclose(both, (alone * n0 + other * n1) / (n0 + n1), atol=1e-5)


def test_loss_ignores_the_prompt_tokens_as_targets():
    model = tiny_captioner()
    images = torch.randn(1, 3, 16, 16)
    # Changing the target changes the loss; the loss is finite with an empty prompt (all padding).
    a, b = model(images, [""], ["red star"]), model(images, [""], ["a small green circle."])
    assert torch.isfinite(a) and not torch.allclose(a, b)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_equals_beam_one_and_top_p_zero(use_cache):
    model = tiny_captioner()
    images, prompts = torch.randn(3, 3, 16, 16), ["red star", "", "a small green circle."]
    greedy = model.generate(images, prompts, strategy="greedy", max_new_tokens=8, use_cache=use_cache)
    assert model.generate(images, prompts, strategy="beam", num_beams=1, max_new_tokens=8) == greedy
    assert model.generate(images, prompts, strategy="sample", top_p=1e-6, temperature=1.0, max_new_tokens=8,
                          generator=torch.Generator().manual_seed(0)) == greedy


def test_kv_cache_gives_the_same_beams_as_recomputing():
    model = tiny_captioner()
    images, prompts = torch.randn(2, 3, 16, 16), ["red star", ""]
    with_cache = model.generate(images, prompts, strategy="beam", num_beams=3, max_new_tokens=6)
    assert model.generate(images, prompts, strategy="beam", num_beams=3, max_new_tokens=6, use_cache=False) \
        == with_cache


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # Vocabulary {0: eos, 1, 2}. Greedy takes 1 (p .6) then a flat tail; 2 (p .4) leads to eos with p 1.
    def step(new_ids, state):
        if new_ids is None:
            state["last"] = torch.zeros(1, dtype=torch.long)
            return torch.tensor([[1e-12, 0.6, 0.4]]).log()
        state["last"] = new_ids[:, 0]
        rows = [[1.0, 0.0, 0.0] if int(t) == 2 else [0.34, 0.33, 0.33] for t in state["last"]]
        return torch.tensor(rows).clamp_min(1e-12).log()

    assert beam_search(step, 1, 2, eos=0, max_new_tokens=4) == [[2]]
    assert beam_search(step, 1, 1, eos=0, max_new_tokens=1) == [[1]]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False]]


def test_captioner_rebuilds_from_its_metadata():
    model = tiny_captioner()
    meta = {"image_encoder": {"name": "clip_vit_b32_quickgelu", "kwargs": TINY_CLIP}, **model.config_meta()}
    rebuilt = build_captioner(meta).eval()
    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(1, 3, 16, 16)
    assert rebuilt.generate(images, ["red star"], strategy="greedy", max_new_tokens=5) == \
        model.generate(images, ["red star"], strategy="greedy", max_new_tokens=5)


def test_trimmed_tokenizer_round_trips_known_words_and_marks_unknown():
    tok = CaptionTokenizer(keep_ids=vocabulary_of(CaptionTokenizer(), TEXTS))
    assert tok.decode(tok.encode("a large blue star on the left.")) == "a large blue star on the left."
    assert tok.unk_id in tok.encode("purple hexagon")


def test_opt_style_tokenizer_from_vocab_and_merges(tmp_path):
    import json

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "r": 4, "e": 5, "d": 6, "re": 7, "red": 8, "Ġ": 9,
             "Ġred": 10}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nr e\nre d\nĠ red\n")
    tok = CaptionTokenizer("hf", str(tmp_path))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 2, 1)
    assert tok.encode("red red") == [8, 10] and tok.decode([2, 8, 10, 2]) == "red red"
