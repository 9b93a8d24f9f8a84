"""`percli extract regions`: grid features of a frozen ViT, the grounding recipes' region input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from percli.cli import app
from percli.grounding.multi30k import FeatureStore
from percli.recipes.extract_regions import grid_regions

runner = CliRunner()


def test_grid_cells_average_their_patches_and_the_last_row_is_the_class_token():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)  # cls + a 4 x 4 patch grid
    out = grid_regions(tokens, prefix=1, grid=2)
    assert out.shape == (2, 5, 3)
    patches = tokens[:, 1:].reshape(2, 4, 4, 3)
    assert torch.allclose(out[:, 0], patches[:, :2, :2].mean(dim=(1, 2)))  # top-left cell
    assert torch.allclose(out[:, 3], patches[:, 2:, 2:].mean(dim=(1, 2)))  # bottom-right cell
    assert torch.equal(out[:, 4], tokens[:, 0])
    assert grid_regions(tokens, prefix=1, grid=0).shape == (2, 17, 3)  # the model's own grid
    with pytest.raises(ValueError, match="square grid"):
        grid_regions(tokens[:, :15], prefix=1, grid=2)


def test_extract_regions_writes_files_the_reader_loads(tmp_path):
    clip = tmp_path / "clip"
    trained = runner.invoke(app, ["pretrain", "clip", "--run-dir", str(clip), "train.max_steps=1",
                                  "train.batch_size=8", "train.num_workers=0", "data.embedded_size=16",
                                  "optim.ref_batch_size=8"])
    assert trained.exit_code == 0, trained.output[-3000:]
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("1000092795", "1000268201"):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{name}.jpg")
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "m30k"
    result = runner.invoke(app, ["extract", "regions", str(images), "--checkpoint", str(clip), "--grid", "2",
                                 "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert summary["written"] == 2 and summary["bad_inputs"]["count"] == 1
    store = FeatureStore(out / "features")
    features = store.get("1000092795")
    assert features.shape[0] == 5 and features.dtype == torch.float32  # 2 x 2 cells + the global row
    again = runner.invoke(app, ["extract", "regions", str(images), "--checkpoint", str(clip), "--grid", "2",
                                "-o", str(out), "--resume", "--json"])
    assert again.exit_code == 0, again.output[-3000:]
    assert json.loads(again.stdout)["resumed"] == 2
    assert not list((out / "features").glob(".*"))  # no temporary file left
