"""`model.grad_checkpointing`: every family's blocks recompute in backward, with the same gradients."""

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.rundir import read_metrics
from percli.core.scale import block_class_names, repeated_blocks, set_grad_checkpointing
from percli.models import create_model
from tests.conftest import TINY_MAE

HIERA = dict(input_size=(64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), q_pool=2, decoder_embed_dim=16,
             decoder_depth=1, decoder_num_heads=1)
AUDIO = dict(img_size=(128, 64), embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
             decoder_num_heads=2, decoder_mode=1, local_decoder_depth=2, local_decoder_heads=2)
CLIP = dict(embed_dim=16, vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
            text_cfg={"width": 16, "heads": 2, "layers": 2})

CASES = {  # model, its blocks' class, a scalar to differentiate (seeded: masking and drop-path are random)
    "mae_hiera": ("mae_hiera_tiny_224", HIERA, "HieraBlock",
                  lambda m: m(torch.randn(2, 3, 64, 64), mask_ratio=0.6)[0]),
    "dinov2": ("dinov2_vits14", dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                                     drop_path_rate=0.5), "DinoBlock",
               lambda m: m.forward_features(torch.randn(2, 3, 28, 28))["x_norm_clstoken"].square().sum()),
    "clip": ("clip_vit_b32_quickgelu", CLIP, "ResidualAttentionBlock",
             lambda m: sum(f.square().sum() for f in m(torch.randn(2, 3, 32, 32), torch.randint(1, 400, (2, 77)))[:2])),
    "audio_mae": ("audiomae_mae_vit_base_patch16", AUDIO, "Block",
                  lambda m: m(torch.randn(2, 1, 128, 64), mask_ratio=0.8)[0]),
}


def _grads(name, kwargs, loss_of, checkpointed):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).train()
    if checkpointed:
        assert set_grad_checkpointing(model) == len(repeated_blocks(model))
    torch.manual_seed(1)
    loss_of(model).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}, model


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpointed_blocks_give_the_same_gradients(case):
    name, kwargs, block_class, loss_of = CASES[case]
    plain, model = _grads(name, kwargs, loss_of, checkpointed=False)
    ckpt, ckpt_model = _grads(name, kwargs, loss_of, checkpointed=True)
    assert block_class in block_class_names(model)
    assert plain.keys() == ckpt.keys() and plain
    for k in plain:
        assert torch.allclose(plain[k], ckpt[k], atol=1e-6, rtol=1e-5), k
    assert model.state_dict().keys() == ckpt_model.state_dict().keys()


def test_blocks_run_twice_when_training_and_once_in_eval():
    torch.manual_seed(0)
    model = create_model("mae_hiera_tiny_224", **HIERA)
    runs = []
    for block in repeated_blocks(model):  # count the blocks' own forward calls, then checkpoint around them
        block.forward = lambda *a, _f=block.forward, **k: (runs.append(1), _f(*a, **k))[1]
    set_grad_checkpointing(model)
    n = len(repeated_blocks(model))
    model.train()(torch.randn(2, 3, 64, 64), mask_ratio=0.6)[0].backward()
    assert len(runs) == 2 * n  # forward + recomputation in backward
    runs.clear()
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 64, 64), mask_ratio=0.6)
    assert len(runs) == n
    set_grad_checkpointing(model, enable=False)
    runs.clear()
    model.train()(torch.randn(2, 3, 64, 64), mask_ratio=0.6)[0].backward()
    assert len(runs) == n


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="grad_checkpointing=false"):
        set_grad_checkpointing(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_cli_run_with_grad_checkpointing_logs_the_same_losses(tmp_path):
    runner = CliRunner()
    args = [*TINY_MAE, "train.max_steps=3", "train.log_every=1", "recon_images=0"]
    for run, extra in (("plain", []), ("ckpt", ["model.grad_checkpointing=true"])):
        result = runner.invoke(app, ["pretrain", "hiera-mae", "--run-dir", str(tmp_path / run), *args, *extra])
        assert result.exit_code == 0, result.output
    assert [r["loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl")] == \
        [r["loss"] for r in read_metrics(tmp_path / "ckpt" / "metrics.jsonl")]
