import json

import pytest
import torch

from percli.core import checkpoint as ckpt


def _optimizer_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_roundtrip_restores_optimizer_exactly(tmp_path):
    model, opt = _optimizer_state()
    path = ckpt.save_checkpoint(tmp_path, 5, model.state_dict(), {"name": "lin"}, opt.state_dict(),
                                {"step": 5}, keep_last=2)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["trainer_state"]["step"] == 5 and loaded["model_meta"] == {"name": "lin"}
    model2 = torch.nn.Linear(3, 2)
    model2.load_state_dict(loaded["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95) and opt2.param_groups[0]["lr"] == 0.1
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        s1, s2 = opt.state[p1], opt2.state[p2]
        torch.testing.assert_close(s1["exp_avg"], s2["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(s1["exp_avg_sq"], s2["exp_avg_sq"], rtol=0, atol=0)


def test_keep_last_and_latest(tmp_path):
    model, opt = _optimizer_state()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model.state_dict(), {}, opt.state_dict(), {"step": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000004"


def test_half_written_checkpoint_is_never_picked(tmp_path):
    model, opt = _optimizer_state()
    ckpt.save_checkpoint(tmp_path, 1, model.state_dict(), {}, opt.state_dict(), {"step": 1})
    stale = tmp_path / ".tmp-step_0000002-999"  # what a SIGKILL during a save leaves behind
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"trunc")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000001"
    ckpt.clean_stale_temps(tmp_path)
    assert not stale.exists()


def test_weights_carry_metadata(tmp_path):
    meta = {"name": "hiera_tiny_224", "kwargs": {"embed_dim": 8}, "mean": [0.5, 0.5, 0.5]}
    ckpt.save_weights(tmp_path / "w.safetensors", {"a": torch.ones(2)}, meta)
    state, got = ckpt.read_weights(tmp_path / "w.safetensors")
    assert got == meta and torch.equal(state["a"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(FileNotFoundError):
        ckpt.read_weights(tmp_path / "missing.safetensors")
    assert json.loads(json.dumps(got)) == meta
