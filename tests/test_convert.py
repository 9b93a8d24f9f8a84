"""`percli convert`: official -> percli -> official round trips, and the errors."""

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import read_weights
from percli.models import create_model

TINY = {"input_size": [64, 64], "embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1]}
runner = CliRunner()


def test_official_to_percli_and_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run dirs (runs/convert-<time>: config.yaml, env.json, summary.json) land here
    torch.manual_seed(0)
    source = create_model("hiera_tiny_224", **TINY)
    official = tmp_path / "hiera_tiny.pth"
    torch.save({"model_state": source.state_dict()}, official)  # the official release wraps the state

    out = runner.invoke(app, ["convert", str(official), "-o", str(tmp_path / "w.safetensors"), "--model",
                              "hiera_tiny_224", "--kwargs", json.dumps(TINY), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["tensors"] == len(source.state_dict())
    state, meta = read_weights(tmp_path / "w.safetensors")
    assert meta["name"] == "hiera_tiny_224" and meta["kwargs"] == TINY
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())

    back = runner.invoke(app, ["convert", str(tmp_path / "w.safetensors"), "--to", "official", "-o",
                               str(tmp_path / "back.pth")])  # model and kwargs come from the metadata
    assert back.exit_code == 0, back.output
    again = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(again) == set(source.state_dict()) and all(torch.equal(again[k], v) for k, v in state.items())
    plain = runner.invoke(app, ["convert", str(tmp_path / "w.safetensors"), "--to", "official", "-o",
                                str(tmp_path / "back.safetensors")])
    assert plain.exit_code == 0 and set(load_file(tmp_path / "back.safetensors")) == set(state)


def test_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"nonsense.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    out = runner.invoke(app, ["convert", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "o.safetensors")])
    assert out.exit_code == 2 and "--model is required" in out.output
    out = runner.invoke(app, ["convert", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "o.safetensors"),
                              "--model", "hiera_tiny_224", "--kwargs", json.dumps(TINY)])
    assert out.exit_code == 2 and "does not load into hiera_tiny_224" in out.output
    (tmp_path / "o.safetensors").write_text("x")
    out = runner.invoke(app, ["convert", str(tmp_path / "bad.pth"), "-o", str(tmp_path / "o.safetensors"),
                              "--model", "hiera_tiny_224"])
    assert out.exit_code == 2 and "--overwrite" in out.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # failed runs leave no run dir
