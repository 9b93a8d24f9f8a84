import math

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


# --------------------------------------------------------------------------- ScaledAdam and Eden


def _rms(v):
    return math.sqrt(sum(x * x for x in v) / len(v))


def test_scaled_adam_first_steps_match_hand_computation():
    """Three steps on a 3-element tensor and a scalar, computed by hand from icefall's rules: step 0 an
    RMS-sized Adam step; step 1 also the first scale update (every 2 steps here) with a fresh RMS; step 2
    clipped to 2x the median of the last 2 gradient norms (each gradient times its tensor's RMS)."""
    import torch

    from percli.core.scaled_adam import ScaledAdam

    lr, b1, b2, eps, slr = 0.1, 0.9, 0.98, 1e-8, 0.1  # slr: scalar_lr_scale
    p = torch.nn.Parameter(torch.tensor([0.6, -0.8, 1.5], dtype=torch.float64))
    q = torch.nn.Parameter(torch.tensor([0.3], dtype=torch.float64))
    opt = ScaledAdam([p, q], lr=lr, betas=(b1, b2), clipping_scale=2.0, clipping_update_period=2,
                     size_update_period=2, eps=eps)
    gp = [[1.0, -2.0, 2.0], [0.5, 0.5, -1.0], [10.0, 10.0, 10.0]]
    gq = [0.4, -0.2, 1.0]
    got = []
    for g, h in zip(gp, gq):
        p.grad, q.grad = torch.tensor(g, dtype=torch.float64), torch.tensor([h], dtype=torch.float64)
        opt.step()
        got.append((p.detach().tolist(), q.item()))

    # step 0: no clipping yet; v = (1 - b2) g^2, bias-corrected by (1 - b2): the step is lr (1 - b1) rms(p0) sign(g)
    p0, rms0 = [0.6, -0.8, 1.5], _rms([0.6, -0.8, 1.5])
    v_p = [(1 - b2) * g * g for g in gp[0]]
    d_p = [-lr * (1 - b1) * rms0 * g / (math.sqrt(v / (1 - b2)) + eps) for g, v in zip(gp[0], v_p)]
    p1 = [a + d for a, d in zip(p0, d_p)]
    v_q = (1 - b2) * gq[0] ** 2
    d_q = -lr * slr * (1 - b1) * gq[0] / (math.sqrt(v_q / (1 - b2)) + eps)
    q1 = 0.3 + d_q
    assert got[0][0] == pytest.approx(p1, abs=1e-12) and got[0][1] == pytest.approx(q1, abs=1e-12)
    assert p1[0] == pytest.approx(0.6 - 0.01 * rms0)  # the size of the step: lr (1 - b1) rms

    # step 1: norm recorded (no threshold until step 2); the scale gradients sum(p * g) of steps 0 and 1
    # make one Adam step on log-scale (beta2^2 per scale step, times sqrt of its bias correction), then the RMS
    # is re-measured on p1 and sizes the regular step
    norm1 = math.sqrt(sum((g * rms0) ** 2 for g in gp[1]) + gq[1] ** 2)
    s0, s1 = sum(a * g for a, g in zip(p0, gp[0])), sum(a * g for a, g in zip(p1, gp[1]))
    b2s = b2**2
    v_s = (1 - b2s) * (s0 * s0 + s1 * s1) / 2
    scale_step = -lr * slr * math.sqrt(1 - b2s) * (s0 + s1) / (math.sqrt(v_s) + eps)
    d_p = [b1 * d + (1 - b1) * a * scale_step for d, a in zip(d_p, p1)]
    v_p = [b2 * v + (1 - b2) * g * g for v, g in zip(v_p, gp[1])]
    rms1 = _rms(p1)
    d_p = [d - lr * (1 - b1) * rms1 * g / (math.sqrt(v / (1 - b2s)) + eps) for d, g, v in zip(d_p, gp[1], v_p)]
    p2 = [a + d for a, d in zip(p1, d_p)]
    v_q = b2 * v_q + (1 - b2) * gq[1] ** 2
    d_q = b1 * d_q - lr * slr * (1 - b1) * gq[1] / (math.sqrt(v_q / (1 - b2s)) + eps)
    q2 = q1 + d_q
    assert got[1][0] == pytest.approx(p2, abs=1e-12) and got[1][1] == pytest.approx(q2, abs=1e-12)

    # step 2: threshold = 2 x the median of [norm1, norm2] (index (2 // 4) * 2 = 0 of the sorted two: the
    # smaller), the big gradient is scaled to it; no scale update (step 2 is not the end of a period)
    norm2 = math.sqrt(sum((g * rms1) ** 2 for g in gp[2]) + gq[2] ** 2)
    clip = min(1.0, 2.0 * min(norm1, norm2) / norm2)
    assert clip < 0.5
    g2 = [g * clip for g in gp[2]]
    b2c = 1 - b2**3
    v_p = [b2 * v + (1 - b2) * g * g for v, g in zip(v_p, g2)]
    d_p = [b1 * d - lr * (1 - b1) * rms1 * g / (math.sqrt(v / b2c) + eps) for d, g, v in zip(d_p, g2, v_p)]
    p3 = [a + d for a, d in zip(p2, d_p)]
    h2 = gq[2] * clip
    v_q = b2 * v_q + (1 - b2) * h2**2
    q3 = q2 + b1 * d_q - lr * slr * (1 - b1) * h2 / (math.sqrt(v_q / b2c) + eps)
    assert got[2][0] == pytest.approx(p3, abs=1e-12) and got[2][1] == pytest.approx(q3, abs=1e-12)
    assert opt.state[p]["model_norm_threshold"] == pytest.approx(2.0 * norm1)


def test_scaled_adam_state_round_trips_through_a_checkpoint(tmp_path):
    """The engine's safetensors optimizer file restores ScaledAdam (norm history, threshold, RMS, step count):
    steps after a reload equal the uninterrupted ones."""
    import torch

    from percli.core import checkpoint as ckpt
    from percli.core.scaled_adam import ScaledAdam

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
        return model, ScaledAdam(model.parameters(), lr=0.05, clipping_scale=2.0, clipping_update_period=3)

    def train(model, opt, steps):
        for s in steps:
            x = torch.randn(8, 3, generator=torch.Generator().manual_seed(s))
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()

    model, opt = make()
    train(model, opt, range(10))
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt = make()
    train(model, opt, range(5))
    ckpt.write_optimizer(tmp_path, opt.state_dict())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model, opt = make()
    model.load_state_dict(weights)
    opt.load_state_dict(ckpt.read_optimizer(tmp_path / ckpt.OPTIMIZER_FILE))
    train(model, opt, range(5, 10))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected))


def test_eden_factor_and_the_step_lr():
    from percli.core.optim import lr_for_step
    from percli.core.scaled_adam import eden_factor

    # warmup from half the LR; the decay terms are 1 at step 0 / epoch 0
    assert eden_factor(0, 0, 3000, 4, 500) == pytest.approx(0.5)
    expected = 0.75 * (1 + 250**2 / 3000**2) ** -0.25 * (17 / 16) ** -0.25  # warmup 3/4 of the way from 0.5
    assert eden_factor(250, 1, 3000, 4, 500) == pytest.approx(expected)
    # at step = lr_steps and epoch = lr_epochs each term is 2^-0.25
    assert eden_factor(3000, 4, 3000, 4, 500) == pytest.approx(0.5**0.5)
    assert eden_factor(30000, 0, 3000, 4, 500) == pytest.approx(101**-0.25)
    # the release's counting: its step s = our step + 1 runs at Eden epoch s // epoch_steps + 1
    cfg = OptimConfig(name="scaled_adam")
    assert lr_for_step(cfg, 2998, 50000, 0.05, 500) == pytest.approx(0.05 * eden_factor(2998, 1, 3000, 4, 500))
    assert lr_for_step(cfg, 2999, 50000, 0.05, 500) == pytest.approx(0.05 * eden_factor(2999, 2, 3000, 4, 500))
    # adamw keeps warmup + cosine; schedule=eden asks for Eden with adamw too
    assert lr_for_step(OptimConfig(), 55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_for_step(OptimConfig(schedule="eden"), 0, 100, 1.0, 0) == pytest.approx((17 / 16) ** -0.25)


def test_optim_name_builds_scaled_adam():
    from percli.core.optim import build_optimizer
    from percli.core.scaled_adam import ScaledAdam

    opt = build_optimizer(TinyViT(), OptimConfig(name="scaled_adam", clipping_update_period=7), 0.05)
    assert isinstance(opt, ScaledAdam) and opt.param_groups[0]["clipping_update_period"] == 7
    assert {g["lr"] for g in opt.param_groups} == {0.05}
