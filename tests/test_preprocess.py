"""One image preprocessing description for every family: each registered image model declares it the same way,
every command reads it through `ImagePreprocess`, and every image-text model runs `eval zero-shot`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

import percli
from percli.cli import app
from percli.core.data.transforms import ImagePreprocess
from percli.models import create_model, list_models
from percli.recipes.common import DataSection
from percli.recipes.knn_eval import image_datasets

runner = CliRunner()
CLIP_TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16,
                                             "layers": 1},
             "text_cfg": {"width": 16, "heads": 2, "layers": 1}}
PE_TINY = {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "output_dim": 16},
           "text_cfg": {"width": 32, "heads": 2, "layers": 1, "output_dim": 16}}
IMAGE_TEXT = [n for n in list_models() if n.startswith(("clip_", "pe_core_"))]


def _photo(width: int = 90, height: int = 60) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _normalised(image: torch.Tensor, pre: ImagePreprocess) -> torch.Tensor:
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(pre.mean), list(pre.std))


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith(("hiera_", "mae_hiera_", "dinov2_",
                                                                           "clip_", "pe_"))
                                  and n != "pe_a_frame"])  # PE-A-Frame takes audio and text only
def test_every_image_family_describes_its_preprocessing_alike(name):
    with torch.device("meta"):
        model = create_model(name)
    pre = ImagePreprocess.of(model.preprocess)
    expected = {"hiera": ("shortest", "bicubic", 0.875), "mae": ("shortest", "bicubic", 0.875),
                "dinov2": ("shortest", "bicubic", 224 / 256), "clip": ("shortest", "bicubic", 1.0),
                "pe": ("squash", "bilinear", 1.0)}[name.split("_")[0]]
    if "_16x224" in name:  # video Hiera: frames are preprocessed by the video transform
        assert len(model.preprocess["input_size"]) == 4
        return
    assert (pre.resize_mode, pre.interpolation, pre.crop_pct) == expected
    assert {"image_size", "resize_mode", "crop_pct", "interpolation", "mean", "std"} <= set(model.preprocess)
    if name.startswith("dinov2_"):  # the official linear / k-NN evaluation crop, not the 518 px training size
        assert pre.size == (224, 224) and model.preprocess["input_size"][-1] == 518


def test_pe_squashes_as_a_hand_made_resize_and_clip_crops_its_short_side():
    pe = ImagePreprocess.of(create_model("pe_core_t16_384", **PE_TINY).preprocess)
    clip = ImagePreprocess.of(create_model("clip_vit_b32_quickgelu", **CLIP_TINY).preprocess)
    image = _photo()
    by_hand = _normalised(TF.pil_to_tensor(image.resize((32, 32), Image.BILINEAR)), pe)
    assert torch.allclose(pe.eval_transform()(image), by_hand, atol=2 / 255 / 0.5)
    resized = image.resize((48, 32), Image.BICUBIC)  # short side 60 -> 32, long 90 -> 48, centre 32
    by_hand = _normalised(TF.center_crop(TF.pil_to_tensor(resized), [32, 32]), clip)
    assert torch.allclose(clip.eval_transform()(image), by_hand, atol=3 / 255 / 0.26)


def test_rectangular_sizes_resize_to_cover_then_crop():
    pre = ImagePreprocess.of({"image_size": [32, 48], "mean": [0.5] * 3, "std": [0.5] * 3})
    out = pre.eval_transform()(_photo(60, 60))  # a square photo covers 32 x 48 at 48 x 48, cropped to 32 rows
    assert out.shape == (3, 32, 48)
    by_hand = _normalised(TF.center_crop(TF.pil_to_tensor(_photo(60, 60).resize((48, 48), Image.BICUBIC)),
                                         [32, 48]), pre)
    assert torch.allclose(out, by_hand, atol=3 / 255 / 0.5)
    squash = ImagePreprocess.of({"image_size": [32, 48], "resize_mode": "squash", "mean": [0.5] * 3,
                                 "std": [0.5] * 3})
    assert squash.eval_transform()(_photo(90, 20)).shape == (3, 32, 48)
    clip = create_model("clip_vit_b32_quickgelu", **{**CLIP_TINY, "vision_cfg": {**CLIP_TINY["vision_cfg"],
                                                                                  "image_size": [32, 48]}})
    transform = percli.create_transform(clip)
    assert clip.encode_image(transform(_photo())[None]).shape == (1, 16)


def test_knn_reads_the_models_own_preprocessing():
    """k-NN / linear probe / classify take what `percli.create_transform` takes: DINOv2 224 of 256, CLIP's
    normalisation (not ImageNet's)."""
    for model in (create_model("dinov2_vits14", img_size=518, patch_size=14, embed_dim=32, depth=1, num_heads=2),
                  create_model("clip_vit_b32_quickgelu", **CLIP_TINY)):
        train, _ = image_datasets(model, {}, DataSection(embedded_size=8))
        image = _photo()
        assert torch.equal(train.transform(image), percli.create_transform(model)(image))
    assert isinstance(train.transform, v2.Compose)


def _tiny(name: str) -> dict:
    return PE_TINY if name.startswith("pe_") else CLIP_TINY


@pytest.mark.parametrize("name", IMAGE_TEXT)
def test_every_image_text_model_runs_zero_shot_on_the_embedded_data(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, **_tiny(name))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"percli": json.dumps({"name": name, "kwargs": _tiny(name), "task": "clip"})})
    result = runner.invoke(app, ["eval", "zero-shot", "--json", f"model.checkpoint={path}", "data.source=embedded",
                                 "data.embedded_size=40", "train.num_workers=0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0 and metrics["chance_top1"] == 0.1
