"""PerceptionLM model: sizes, image-token stitching, loss, KV-cache generation, checkpoints and converters.

Parity with the official outputs is tests/test_golden.py's ``plm_tiny_cfg`` (tests/golden_plm.py); these tests pin
what the golden case does not reach on the tiny config the case uses.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file

from percli.core.checkpoint import RefusedPickleError
from percli.models import create_model, weights_loader
from percli.models.plm import CONFIGS, STAGE_TRAINABLE, PerceptionLM, from_folder, parameter_group
from percli.models.plm_llama import ffn_hidden_dim, llama3_scale_frequencies
from percli.models.plm_loading import (
    hf_config,
    hf_to_official_state,
    kwargs_from_hf_config,
    kwargs_from_params,
    load_official_state,
    official_to_hf_state,
)
from tests.conftest import GOLDEN_DIR

# plm_tiny_cfg's constructor keywords (as stage 3 plm_1b/3b): 9 vision tokens per 48 px chunk
TINY = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_dim_multiplier=1.5, multiple_of=16,
            norm_eps=1e-5, rope_theta=500000.0, weight_tying=True, rope_scale_factor=32, high_freq_factor=4,
            max_seqlen=512, pooling_ratio=2, mlp_init={"use_gaussian": True},
            vision_model=dict(image_size=48, patch_size=8, width=32, layers=2, heads=2, use_cls_token=True,
                              use_abs_posemb=True, mlp_ratio=4.0, ls_init_value=0.1, drop_path=0.1,
                              use_ln_post=False, pool_type="none"))
IMAGE = 258  # the case's <|image|>
NO_STOP = (511,)  # a stop id the tests' prompts never make the tiny model produce (checked where it matters)


def tiny(seed: int = 0, **overrides) -> PerceptionLM:
    torch.manual_seed(seed)
    model = PerceptionLM(**{**TINY, **overrides}).eval()
    model.generate = functools.partial(model.generate, image_token_id=IMAGE)  # the case's <|image|>, not Llama-3's
    return model


def image_prompt(text: bytes, chunks: int = 1) -> list[int]:
    return [256, *[IMAGE] * (9 * chunks), *text]


# --------------------------------------------------------------------------- sizes


FULL = GOLDEN_DIR / "full_configs" / "plm"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_released_sizes_have_the_official_parameter_counts_per_tower(name):
    if not (FULL / "param_counts_by_tower.json").is_file():
        pytest.skip(f"no {FULL}")
    official = "Perception-LM-" + name.removeprefix("plm_").replace("_stage1", "").upper() + (
        "_stage1" if name.endswith("_stage1") else "")
    expected = json.loads((FULL / "param_counts_by_tower.json").read_text())[official]
    with torch.device("meta"):
        model = create_model(name)
    counts = dict.fromkeys(("vision_model", "vision_projector", "language_model"), 0)
    for key, param in model.named_parameters():
        counts[parameter_group(key)] += param.numel()
    assert counts == {k: v for k, v in expected.items() if k != "total"}
    assert sum(counts.values()) == expected["total"]
    keys = [line.split(" ")[0] for line in (FULL / official / "keys.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert list(model.state_dict()) == keys  # official names in the official order
    assert all(not p.requires_grad for k, p in model.named_parameters()
               if parameter_group(k) != "vision_projector") == name.endswith("_stage1")


@pytest.mark.parametrize("name", ["plm_1b", "plm_3b", "plm_8b_stage1"])
def test_params_json_and_hf_config_json_describe_the_released_sizes(name):
    with torch.device("meta"):
        model = create_model(name)
        params = {"model": {**model.config, "seed": 777, "attn_impl": "sdpa"}, "data": {"tokenizer_name": "plmchat"}}
        from_params = PerceptionLM(**kwargs_from_params(params))
        from_hf = PerceptionLM(**kwargs_from_hf_config(hf_config(model.config)))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for other in (from_params, from_hf):
        assert {k: v.shape for k, v in other.state_dict().items()} == shapes
        assert other.rope_embeddings.scaling == model.rope_embeddings.scaling


def test_llama_width_rule_and_rope_scaling_follow_the_release():
    assert [ffn_hidden_dim(2048, 256, 1.5), ffn_hidden_dim(3072, 256, 1.0), ffn_hidden_dim(4096, 1024, 1.3),
            ffn_hidden_dim(32, 16, 1.5)] == [8192, 8192, 14336, 128]
    head_dim, theta = 64, 500000.0
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    scaled = llama3_scale_frequencies(freqs, 32, 1, 4, 8192)
    for f, s in zip(freqs.tolist(), scaled.tolist()):  # the per-frequency rule, written out
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4:
            want = f
        elif wavelen > 8192:
            want = f / 32
        else:
            smooth = (8192 / wavelen - 1) / 3
            want = (1 - smooth) * f / 32 + smooth * f
        assert s == pytest.approx(want, rel=1e-6)
    assert torch.equal(llama3_scale_frequencies(freqs, 1, 1, 32, 8192), freqs)


# --------------------------------------------------------------------------- forward


def test_image_tokens_replace_the_placeholder_embeddings_in_batch_order_skipping_text_samples():
    model = tiny()
    images = torch.rand(4, 3, 48, 48) * 2 - 1
    tokens = torch.randint(0, 256, (3, 24))
    pos = torch.full((3, 24), -1)
    pos[0, 2:11] = torch.arange(9)  # an image (chunk 0), a text sample with a dummy chunk (1), a 2-frame video
    pos[2, 3:21] = torch.arange(9, 27)
    with torch.no_grad():
        h = model.embed(tokens, images, pos, num_chunks=[1, 1, 2], media_type=["image", "text", "video"])
        projected = model.encode_images(images)
        plain = model.tok_embeddings(tokens)
    assert projected.shape == (4, 9, 32)
    torch.testing.assert_close(h[0, 2:11], projected[0])
    torch.testing.assert_close(h[2, 3:21], projected[2:].flatten(0, 1))
    placed = pos >= 0
    assert torch.equal(h[~placed], plain[~placed])
    with pytest.raises(ValueError, match="26 image positions in the text but 27 vision tokens"):
        model.embed(tokens, images, torch.where(pos == 26, -1, pos), num_chunks=[1, 1, 2],
                    media_type=["image", "text", "video"])


def test_loss_is_the_mean_cross_entropy_of_the_masked_positions():
    model = tiny()
    tokens, target = torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16))
    loss_mask = torch.rand(2, 16) > 0.5
    with torch.no_grad():
        logits = model(tokens)
        loss = model(tokens, target=target, loss_mask=loss_mask)
    assert logits.shape == (2, 16, 512)
    want = torch.nn.functional.cross_entropy(logits[loss_mask], target[loss_mask])
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)


def test_grad_checkpointing_gives_the_same_gradients_and_freeze_follows_the_stages():
    images = torch.rand(1, 3, 48, 48)
    tokens = torch.tensor([image_prompt(b"a red square")])
    pos = torch.where(tokens == IMAGE, torch.cumsum(tokens == IMAGE, 1) - 1, -1)
    grads = []
    for checkpointed in (False, True):
        model = tiny().train()
        model.set_grad_checkpointing(checkpointed)
        torch.manual_seed(1)  # drop-path in the vision blocks
        model(tokens, target=tokens.roll(-1, 1), images=images, image_pos_index=pos).backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5, msg=k)
    groups = model.parameter_groups()
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    model.train_stage("stage1")
    assert {g: all(p.requires_grad for p in ps) for g, ps in groups.items()} == STAGE_TRAINABLE["stage1"]
    assert not any(p.requires_grad for p in groups["vision_model"] + groups["language_model"])
    model.train_stage("stage3")
    assert all(p.requires_grad for p in model.parameters())
    frozen = tiny(freeze_language_model=True)
    assert not frozen.tok_embeddings.weight.requires_grad and frozen.vision_model.conv1.weight.requires_grad


# --------------------------------------------------------------------------- generation


def test_greedy_with_and_without_the_kv_cache_is_identical_and_bounded():
    model = tiny()
    prompts, images = [image_prompt(b"What is this?")], [torch.rand(1, 3, 48, 48) * 2 - 1]
    cached = model.generate(prompts, images, max_new_tokens=12, stop_ids=NO_STOP)
    uncached = model.generate(prompts, images, max_new_tokens=12, stop_ids=NO_STOP, use_cache=False)
    assert cached == uncached and len(cached[0]) == 12
    assert model.generate(prompts, images, max_new_tokens=3, stop_ids=NO_STOP) == [cached[0][:3]]
    long_prompt = [image_prompt(b"x" * 496)]  # 506 tokens: the context of 512 leaves room for 6
    assert len(model.generate(long_prompt, images, max_new_tokens=50, stop_ids=NO_STOP)[0]) == 6


def test_batched_prompts_of_different_lengths_give_the_per_prompt_tokens():
    model = tiny(seed=3)
    prompts = [image_prompt(b"Describe the video.", chunks=2), [256, *b"Hello, how are you?"],
               image_prompt(b"Hi")]
    images = [torch.rand(2, 3, 48, 48) * 2 - 1, None, torch.rand(1, 3, 48, 48) * 2 - 1]
    alone = [model.generate([p], [img], max_new_tokens=6, stop_ids=NO_STOP)[0] for p, img in zip(prompts, images)]
    for use_cache in (True, False):
        assert model.generate(prompts, images, max_new_tokens=6, stop_ids=NO_STOP, use_cache=use_cache) == alone
    # the left-padded rows' logits themselves, after the prefill and after two fed tokens
    with torch.no_grad():
        batch_state, batch = {}, model.decode_step(prompts, images, image_token_id=IMAGE)
        fed = torch.tensor([[65], [66], [67]])
        batched = [batch(None, batch_state), batch(fed, batch_state), batch(fed + 1, batch_state)]
        for i, (p, img) in enumerate(zip(prompts, images)):
            state, single = {}, model.decode_step([p], [img], image_token_id=IMAGE)
            own = [single(None, state), single(fed[i:i + 1], state), single(fed[i:i + 1] + 1, state)]
            for got, want in zip(batched, own):
                torch.testing.assert_close(got[i], want[0], atol=1e-5, rtol=1e-5)


def test_generation_stops_at_any_stop_id_and_sampling_is_seeded():
    model = tiny()
    prompts, images = [image_prompt(b"Tell me.")], [torch.rand(1, 3, 48, 48)]
    free = model.generate(prompts, images, max_new_tokens=8, stop_ids=NO_STOP)[0]
    assert NO_STOP[0] not in free
    first, later = free[0], free[3]
    assert model.generate(prompts, images, max_new_tokens=8, stop_ids=(first,)) == [[]]
    cut = free[:free.index(later)]  # the second stop id ends the row the same way
    assert model.generate(prompts, images, max_new_tokens=8, stop_ids=(NO_STOP[0], later)) == [cut]
    draws = [model.generate(prompts, images, max_new_tokens=8, stop_ids=NO_STOP, greedy=False, temperature=0.8,
                            top_p=0.9, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0] == draws[1] and len(draws[0][0]) == 8


def test_bad_generation_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="shorter than the context of 512"):
        model.generate([[65] * 512])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        model.generate([[65]], max_new_tokens=0)
    with pytest.raises(ValueError, match="image positions in the text but 9 vision tokens"):
        model.generate([[256, 65]], [torch.rand(1, 3, 48, 48)])
    with pytest.raises(ValueError, match="2 prompts but 1 image entries"):
        model.generate([[65], [66]], [None])


# --------------------------------------------------------------------------- checkpoints and converters


def test_hf_names_round_trip_and_configs_rebuild_the_same_model():
    model = tiny()
    state = model.state_dict()
    hf = official_to_hf_state(state, model.n_heads, model.n_kv_heads)
    assert "output.tied_module.weight" not in hf and "lm_head.weight" not in hf
    assert hf["model.vision_tower.timm_model.cls_token"].shape == (1, 1, 32)
    assert "model.language_model.layers.1.self_attn.k_proj.weight" in hf
    assert not torch.equal(hf["model.language_model.layers.0.self_attn.q_proj.weight"],
                           state["layers.0.attention.wq.weight"])  # rows reordered for rotate-half RoPE
    back, dropped = hf_to_official_state({**hf, "model.language_model.rotary_emb.inv_freq": torch.ones(4)},
                                         model.n_heads, model.n_kv_heads, weight_tying=True)
    assert dropped == ["model.language_model.rotary_emb.inv_freq"]
    assert back.keys() == set(state) - {"output.tied_module.weight"}
    assert all(torch.equal(back[k], state[k]) for k in back)
    rebuilt = PerceptionLM(**kwargs_from_hf_config(hf_config(model.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in state.items()}
    untied = tiny(weight_tying=False)
    hf = official_to_hf_state(untied.state_dict(), untied.n_heads, untied.n_kv_heads)
    legacy = {k.replace("model.language_model.", "language_model.model."): v for k, v in hf.items()}
    back, _ = hf_to_official_state(legacy, untied.n_heads, untied.n_kv_heads)
    assert torch.equal(back["output.weight"], untied.output.weight) and len(back) == len(untied.state_dict())


def _write_release(folder, model: PerceptionLM, layout: str) -> None:
    folder.mkdir()
    state = model.state_dict()
    if layout == "consolidated":  # apps/plm's original/ folder: params.json + consolidated.pth without the tied copy
        (folder / "params.json").write_text(json.dumps({"model": {**model.config, "seed": 777}, "data": {}}))
        torch.save({"model": {k: v for k, v in state.items() if k != "output.tied_module.weight"}},
                   folder / "consolidated.pth")
    else:
        (folder / "config.json").write_text(json.dumps(hf_config(model.config)))
        hf = official_to_hf_state(state, model.n_heads, model.n_kv_heads)
        names = sorted(hf)
        for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
            save_file({k: hf[k].contiguous() for k in part}, str(folder / f"model-0000{i + 1}-of-00002.safetensors"))


@pytest.mark.parametrize("layout", ["consolidated", "huggingface"])
def test_release_folders_of_both_layouts_load_to_the_same_outputs(tmp_path, layout):
    model = tiny()
    _write_release(tmp_path / layout, model, layout)
    loaded = from_folder(tmp_path / layout).eval()
    tokens = torch.tensor([image_prompt(b"What is it?")])
    pos = torch.where(tokens == IMAGE, torch.cumsum(tokens == IMAGE, 1) - 1, -1)
    image = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, images=image, image_pos_index=pos),
                                   model(tokens, images=image, image_pos_index=pos), atol=1e-5, rtol=1e-5)
    fresh = tiny(seed=1)
    assert weights_loader(fresh) is load_official_state
    report = load_official_state(fresh, tmp_path / layout)
    assert report.source_format == ("huggingface" if layout == "huggingface" else "official")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    half = from_folder(tmp_path / layout, dtype=torch.bfloat16)
    assert half.tok_embeddings.weight.dtype == torch.bfloat16 and half.output.tied_module is half.tok_embeddings


@dataclass
class _NotATensor:
    value: int = 1


def test_checkpoints_are_read_weights_only_and_must_fit(tmp_path):
    model = tiny()
    path = tmp_path / "consolidated.pth"
    torch.save({"model": model.state_dict(), "extra": _NotATensor()}, path)
    with pytest.raises(RefusedPickleError):
        load_official_state(model, path)
    state = {k: v for k, v in model.state_dict().items() if k != "norm.weight"}
    with pytest.raises(RuntimeError, match="norm.weight"):
        load_official_state(tiny(), state)
    with pytest.raises(ValueError, match="neither a perception_models consolidated folder"):
        from_folder(tmp_path)


def test_the_port_computes_the_same_logits_from_converted_weights():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("timm")
    model = tiny()
    config = transformers.PerceptionLMConfig(**hf_config(model.config, image_token_id=IMAGE, video_token_id=259,
                                                         bos_token_id=256, eos_token_id=(257, 265)))
    port = transformers.PerceptionLMForConditionalGeneration(config).eval()
    missing, unexpected = port.load_state_dict(official_to_hf_state(model.state_dict(), 4, 2), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding by the port itself
    ids = torch.tensor([image_prompt(b"What is in the image?")])
    image = torch.rand(1, 3, 48, 48) * 2 - 1
    pos = torch.where(ids == IMAGE, torch.cumsum(ids == IMAGE, 1) - 1, -1)
    with torch.no_grad():
        theirs = port(input_ids=ids, pixel_values=image[None]).logits
        ours = model(ids, images=image, image_pos_index=pos)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
