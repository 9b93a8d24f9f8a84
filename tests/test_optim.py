import pytest
import torch.nn as nn

from percli.core.config import OptimConfig
from percli.core.optim import layer_id, lr_at, param_groups


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(4, 8)
        self.pos_embed = nn.Parameter(nn.init.zeros_(nn.Linear(8, 3).weight))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(3))
        self.head = nn.Linear(8, 2)


def test_no_decay_on_norms_biases_and_pos_embed():
    model = TinyViT()
    groups = param_groups(model, OptimConfig(weight_decay=0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "pos_embed" in no_decay and "blocks.0.0.weight" in no_decay and "head.bias" in no_decay
    assert decay == {"patch_embed.weight", "blocks.0.1.weight", "blocks.1.1.weight", "blocks.2.1.weight",
                     "head.weight"}


def test_decay_embeddings_decays_pos_embed_and_tokens_but_not_norms():
    model = TinyViT()
    model.cls_token = nn.Parameter(nn.init.zeros_(nn.Linear(8, 1).weight).view(1, 1, 8))
    groups = param_groups(model, OptimConfig(weight_decay=0.05, decay_embeddings=True))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "patch_embed.weight"} <= decay
    assert "blocks.0.0.weight" not in decay and "head.bias" not in decay


def test_layer_decay_scales():
    model = TinyViT()
    groups = param_groups(model, OptimConfig(weight_decay=0.05, layer_decay=0.5))
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert scale["head.weight"] == 1.0
    assert scale["blocks.2.1.weight"] == 0.5
    assert scale["blocks.0.1.weight"] == 0.125
    assert scale["patch_embed.weight"] == scale["pos_embed"] == 0.0625
    assert layer_id("decoder_blocks.3.attn.qkv.weight", 3) == 4


def test_warmup_then_cosine():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10, min_lr=0.01) == pytest.approx(0.01)


def test_patch_embed_lr_mult_stacks_on_layer_decay():
    model = TinyViT()
    groups = param_groups(model, OptimConfig(weight_decay=0.05, layer_decay=0.5, patch_embed_lr_mult=0.2))
    scale = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert scale["patch_embed.weight"] == scale["patch_embed.bias"] == pytest.approx(0.0625 * 0.2)
    assert scale["pos_embed"] == 0.0625 and scale["blocks.0.1.weight"] == 0.125  # only the patch embedding
    wd = {n: g["wd_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert wd["patch_embed.weight"] == 1.0 and wd["patch_embed.bias"] == 0.0


def test_sqrt_and_linear_lr_scaling():
    from percli.core.optim import scaled_lr
    assert scaled_lr(OptimConfig(lr=4e-3, ref_batch_size=1024), 256) == pytest.approx(1e-3)
    assert scaled_lr(OptimConfig(lr=4e-3, ref_batch_size=1024, lr_scaling="sqrt"), 256) == pytest.approx(2e-3)


def test_weight_decay_schedule_sets_decay_groups_only():
    import torch

    from percli.core.optim import set_lr
    model = TinyViT()
    optimizer = torch.optim.AdamW(param_groups(model, OptimConfig(weight_decay=0.04)))
    wd = [lr_at(step, 100, 0.04, 0, 0.4) for step in (0, 50, 100)]
    assert wd == pytest.approx([0.04, 0.22, 0.4])  # half-cosine up, no warmup
    set_lr(optimizer, 1e-3, weight_decay=wd[1])
    assert sorted({g["weight_decay"] for g in optimizer.param_groups}) == pytest.approx([0.0, 0.22])
