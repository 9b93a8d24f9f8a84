"""The public Python API (percli.create_model / create_transform / load / train / PercliError): a run trained
from Python loads back as (model, transform) that reproduce the eval job's figures; errors raise PercliError
with the CLI's exit code; `import percli` stays torch-free; eval jobs keep no run dir unless asked."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import percli
from percli.core.checkpoint import read_meta, read_weights
from tests.conftest import TINY_CLS
from tests.summary_schema import assert_common_schema


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run dirs (runs/...) would land here


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    run = tmp_path_factory.mktemp("api") / "ft"
    summary = percli.train("finetune", "hiera", [*TINY_CLS, "train.max_steps=2", "train.eval_every=2"], run_dir=run)
    return run, summary


def test_import_percli_and_its_error_class_load_no_torch():
    code = "import sys, percli; percli.PercliError; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_returns_the_common_summary_with_fractions(finetuned):
    run, summary = finetuned
    assert_common_schema(summary)
    assert summary["status"] == "completed" and summary["run_dir"] == str(run)
    assert 0.0 <= summary["metrics"]["eval/top1"] <= 1.0 and summary["counts"]["bad_inputs"] == 0
    assert (run / "summary.json").is_file()


def test_load_a_run_dir_gives_its_weights_in_eval_mode_and_logits(finetuned):
    run, _ = finetuned
    model, transform = percli.load(run)
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    state, meta = read_weights(ckpt)
    assert not model.training and model.classes == meta["classes"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8))
    x = transform(image)
    assert x.shape == (3, 64, 64)
    with torch.no_grad():
        logits = model(x.unsqueeze(0))
        assert logits.shape == (1, len(meta["classes"]))
        torch.testing.assert_close(model(x.unsqueeze(0), return_probs=True), logits.softmax(-1))
    # a checkpoint dir and its safetensors file load the same model
    for other in (ckpt, ckpt / "model.safetensors"):
        again, _ = percli.load(other)
        torch.testing.assert_close(again.state_dict()["head.projection.weight"], state["head.projection.weight"])


def test_transform_follows_the_checkpoint_preprocessing(finetuned):
    run, _ = finetuned
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    meta = read_meta(ckpt)
    model, transform = percli.load(ckpt)
    assert model.preprocess["crop_pct"] == meta["crop_pct"] == 1.0  # the tiny preset's crop, not the 0.875 default
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    from_meta = percli.create_transform(meta)  # the same transform from the metadata alone
    torch.testing.assert_close(from_meta(image), transform(image))


def test_loaded_model_reproduces_the_eval_job(finetuned, tmp_path):
    run, _ = finetuned
    summary = percli.train("eval", "classify", [f"checkpoint={run / 'checkpoints'}/"
                                                f"{sorted(p.name for p in (run / 'checkpoints').iterdir())[-1]}",
                                                "data.embedded_size=64", "train.batch_size=8",
                                                "train.num_workers=0"])
    assert_common_schema(summary)
    assert summary["run_dir"] is None and not (tmp_path / "runs").exists()  # eval keeps no run dir unless asked
    from percli.core.data import build_dataset

    model, transform = percli.load(run)
    data = build_dataset("embedded", split="val", num_images=16, image_size=64, transform=transform)
    hits = 0
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            hits += int(model(item["image"].unsqueeze(0)).argmax(-1).item() == item["label"])
    assert summary["metrics"]["top1"] == pytest.approx(hits / len(data))


def test_eval_with_a_run_dir_keeps_it(finetuned, tmp_path):
    run, _ = finetuned
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    kept = tmp_path / "ev"
    summary = percli.train("eval", "classify", [f"checkpoint={ckpt}", "data.embedded_size=64",
                                                "train.num_workers=0"], run_dir=kept)
    assert summary["run_dir"] == str(kept) and (kept / "summary.json").is_file()


def test_errors_raise_percli_error_with_the_exit_code(tmp_path):
    with pytest.raises(percli.PercliError, match="train.max_steps") as err:
        percli.train("pretrain", "hiera-mae", ["train.max_step=5"])
    assert err.value.exit_code == 2 and not (tmp_path / "runs").exists()
    with pytest.raises(percli.PercliError, match="unknown job") as err:
        percli.train("pretrain", "nope")
    assert err.value.exit_code == 2
    with pytest.raises(percli.PercliError, match="checkpoint=PATH"):
        percli.train("eval", "classify", ["train.num_workers=0"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        percli.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        percli.load(tmp_path)


def _preprocess_of(name: str, **kwargs) -> dict:
    with torch.device("meta"):
        return dict(percli.create_model(name, **kwargs).preprocess)


def test_create_transform_covers_each_input_kind():
    image = Image.fromarray(np.zeros((90, 120, 3), dtype=np.uint8))
    assert percli.create_transform(_preprocess_of("dinov2_vits14"))(image).shape == (3, 224, 224)
    assert percli.create_transform(_preprocess_of("clip_vit_b32_quickgelu"))(image).shape == (3, 224, 224)
    video = percli.create_transform(_preprocess_of("hiera_base_16x224"))
    assert video(torch.zeros(16, 3, 120, 160, dtype=torch.uint8)).shape == (3, 16, 224, 224)
    pre = _preprocess_of("audiomae_vit_small_patch16", img_size=(128, 64), num_classes=2)
    audio = percli.create_transform(pre)
    assert audio(torch.randn(1, 16000)).shape == (1, 128, 64)
    with pytest.raises(ValueError, match="describes no image"):  # a codec's preprocessing: sample rate only
        percli.create_transform({"sample_rate": 16000, "channels": 1})
