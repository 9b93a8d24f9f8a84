"""Features of any encoder block (`features.layer`, `--layers`): equal to each family's own intermediate-layer
API, and the layer sweep's table and chart for a PE and a Hiera checkpoint."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from percli.cli import app
from percli.models import create_model
from percli.recipes.knn_eval import FeatureSection, encode
from percli.recipes.layer_features import encoder_blocks, parse_layers, prefix_tokens

runner = CliRunner()
PE = {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "heads": 2, "output_dim": 16},
      "text_cfg": {"width": 32, "heads": 2, "layers": 1, "output_dim": 16}}
CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 3},
        "text_cfg": {"width": 16, "heads": 2, "layers": 1}}
HIERA = {"input_size": [64, 64], "embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1]}


def _layer(model, x, layer, pool="auto"):
    return encode(model, x, FeatureSection(layer=layer, pool=pool))


@torch.no_grad()
def test_pe_layers_equal_its_forward_features():
    torch.manual_seed(0)
    model = create_model("pe_core_t16_384", **PE).eval()
    x = torch.randn(2, 3, 32, 32)
    assert len(encoder_blocks(model)) == 3 and prefix_tokens(model) == 1
    for layer in (0, 1, -1):
        tokens = model.visual.forward_features(x, layer_idx=layer)
        assert torch.allclose(_layer(model, x, layer), tokens[:, 0], atol=1e-6)
        assert torch.allclose(_layer(model, x, layer, "mean"), tokens[:, 1:].mean(1), atol=1e-6)


@torch.no_grad()
def test_clip_and_dinov2_layers_equal_their_intermediates():
    torch.manual_seed(0)
    clip = create_model("clip_vit_b32_quickgelu", **CLIP).eval()
    x = torch.randn(2, 3, 32, 32)
    out = clip.visual.forward_intermediates(x, indices=[1], output_fmt="NLC", output_extra_tokens=True)
    assert torch.allclose(_layer(clip, x, 1), out["image_intermediates_prefix"][0][:, 0], atol=1e-6)
    assert torch.allclose(_layer(clip, x, 1, "mean"), out["image_intermediates"][0].mean(1), atol=1e-6)
    dino = create_model("dinov2_vits14", img_size=28, patch_size=14, embed_dim=32, depth=3, num_heads=2,
                        num_register_tokens=2).eval()
    x = torch.randn(2, 3, 28, 28)
    assert prefix_tokens(dino) == 3  # cls + 2 registers
    ((patches, cls),) = dino.get_intermediate_layers(x, [1], return_class_token=True, norm=False)
    assert torch.allclose(_layer(dino, x, 1), cls, atol=1e-6)
    assert torch.allclose(_layer(dino, x, 1, "mean"), patches.mean(1), atol=1e-6)  # registers left out


def test_hiera_has_no_class_token_so_auto_means_and_cls_is_refused():
    model = create_model("hiera_tiny_224", **HIERA).eval()
    x = torch.randn(2, 3, 64, 64)
    assert prefix_tokens(model) == 0 and len(encoder_blocks(model)) == 4
    assert torch.equal(_layer(model, x, 2), _layer(model, x, 2, "mean"))
    with pytest.raises(ValueError, match="no class token"):
        _layer(model, x, 2, "cls")
    assert parse_layers("all", 4) == [0, 1, 2, 3] and parse_layers("-1, 0,3", 4) == [0, 3]
    for bad in ("4", "x", ""):
        with pytest.raises(ValueError, match="layers="):
            parse_layers(bad, 4)


def _checkpoint(tmp_path, name, kwargs, task):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"percli": json.dumps({"name": name, "kwargs": kwargs, "task": task})})
    return path, len(encoder_blocks(model))


@pytest.mark.parametrize("name,kwargs,task", [("pe_core_t16_384", PE, "clip"), ("hiera_tiny_224", HIERA, "hiera")])
def test_linear_probe_layer_sweep_writes_the_table_and_the_chart(name, kwargs, task, tmp_path):
    path, depth = _checkpoint(tmp_path, name, kwargs, task)
    run = tmp_path / "sweep"
    result = runner.invoke(app, ["eval", "linear-probe", "--layers", "all", "--run-dir", str(run), "--json",
                                 f"model.checkpoint={path}", "data.embedded_size=40", "train.num_workers=0",
                                 "epochs=3", "lrs=[0.1]"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [row["layer"] for row in summary["layers"]] == list(range(depth))
    assert all(0 <= row["top1"] <= 1 for row in summary["layers"])
    best = max(summary["layers"], key=lambda r: r["top1"])
    assert summary["metrics"]["best_layer"] == best["layer"] and summary["metrics"]["best/top1"] == best["top1"]
    assert summary["metrics"][f"layer{depth - 1}/top1"] == summary["layers"][-1]["top1"]
    assert (run / "layers.png").stat().st_size > 0 and summary["chart"] == str(run / "layers.png")


def test_a_layer_out_of_range_is_a_config_error(tmp_path):
    path, depth = _checkpoint(tmp_path, "hiera_tiny_224", HIERA, "hiera")
    result = runner.invoke(app, ["eval", "knn", "--layers", "9", f"model.checkpoint={path}",
                                 "data.embedded_size=40", "train.num_workers=0"])
    assert result.exit_code == 2 and "encoder has 4 blocks" in result.output
