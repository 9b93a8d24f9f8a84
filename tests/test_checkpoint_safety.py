"""Checkpoint files are untrusted input (issue 26, items 10 and 12).

Item 10: the model sizes in a percli checkpoint's metadata are checked against the file's tensor
shapes on the meta device before anything is allocated. Item 12: damaged safetensors files and
refused pickles end in exit 2 with one line naming the file, never a traceback, never running the
pickle, and never advising to unpickle it anyway.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.checkpoint import CheckpointError, read_header, read_weights, save_weights
from percli.models import build_for_checkpoint, create_model, create_model_for

runner = CliRunner()
DINO = {"img_size": 28, "embed_dim": 32, "depth": 2, "num_heads": 2}
HIERA = {"input_size": [64, 64], "embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1]}
KNN = ["data.embedded_size=16", "train.batch_size=16", "train.num_workers=0", "ks=[1]"]
SMALL = ["data.embedded_size=16", "train.batch_size=8", "train.num_workers=0"]
REPO = Path(__file__).resolve().parents[1]


def flat(text: str) -> str:
    """Output without whitespace: the console wraps long lines (and paths) anywhere."""
    return "".join(text.split())


def names(output: str, path: Path) -> bool:
    return flat(str(path)) in flat(output)


def dinov2_checkpoint(path: Path, **claims) -> Path:
    """A tiny DINOv2 backbone's real tensors, saved with metadata that claims `claims` on top of its kwargs."""
    torch.manual_seed(0)
    model = create_model("dinov2_vits14", **DINO)
    save_weights(path, model.state_dict(), {"name": "dinov2_vits14", "kwargs": {**DINO, **claims}})
    return path


def hiera_classifier_checkpoint(path: Path, **claims) -> Path:
    torch.manual_seed(0)
    model = create_model("hiera_tiny_224", **HIERA, num_classes=10)
    save_weights(path, model.state_dict(), {"name": "hiera_tiny_224", "kwargs": {**HIERA, "num_classes": 10, **claims},
                                            "task": "classify", "input_size": [3, 64, 64]})
    return path


def knn(tmp_path: Path, *args: str):
    return runner.invoke(app, ["eval", "knn", "--run-dir", str(tmp_path / "knn"), *args, *KNN])


def classify(tmp_path: Path, *args: str):
    return runner.invoke(app, ["eval", "classify", "--run-dir", str(tmp_path / "ev"), *args, *SMALL])


# --------------------------------------------------------------------------- item 10: sizes from metadata


@pytest.mark.parametrize("claim", [{"embed_dim": 200000}, {"embed_dim": 48}, {"depth": 3}])
def test_eval_knn_refuses_metadata_sizes_the_tensors_do_not_have(tmp_path, claim):
    # embed_dim=200000 asked for 480 GB per layer before any check; 48 / depth 3 misfit more quietly
    path = dinov2_checkpoint(tmp_path / "w.safetensors", **claim)
    start = time.monotonic()
    out = knn(tmp_path, f"model.checkpoint={path}")
    assert out.exit_code == 2, out.output
    assert names(out.output, path) and "nothing was allocated" in out.output
    assert "Traceback" not in out.output
    assert time.monotonic() - start < 60
    if claim == {"embed_dim": 48}:  # the first mismatching keys, with both shapes
        assert "cls_token [1, 1, 32] in the file, [1, 1, 48] in the model" in " ".join(out.output.split())


def test_eval_knn_still_rebuilds_an_honest_checkpoint(tmp_path):
    path = dinov2_checkpoint(tmp_path / "w.safetensors")
    out = knn(tmp_path, f"model.checkpoint={path}", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["metrics"]["feature_dim"] == 32


def test_a_huge_metadata_depth_is_refused_fast_under_a_memory_limit(tmp_path):
    """depth=100000 took minutes and gigabytes (even a meta-device build makes every module); under a
    6 GiB address-space limit the command must answer with exit 2 in seconds."""
    path = dinov2_checkpoint(tmp_path / "w.safetensors", depth=100000)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        from typer.testing import CliRunner
        from percli.cli import app
        out = CliRunner().invoke(app, ["eval", "knn", "--run-dir", {str(tmp_path / "knn")!r},
                                       "model.checkpoint={path}", *{KNN!r}])
        print(out.output)
        sys.exit(out.exit_code)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=env)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert names(done.stdout, path) and "far larger than the file's tensors" in done.stdout
    assert time.monotonic() - start < 120


@pytest.mark.parametrize(("classes", "says"), [
    (10**9, "far larger than the file's tensors"),  # 10**9 x 64 features: 256 GB
    (20, "head.projection.weight [10, 64] in the file, [20, 64] in the model")])
def test_eval_classify_refuses_a_head_the_file_does_not_have(tmp_path, classes, says):
    # the hiera loader drops a head of another num_classes (finetuning does so); a checkpoint's own must fit
    path = hiera_classifier_checkpoint(tmp_path / "cls.safetensors", num_classes=classes)
    out = classify(tmp_path, f"checkpoint={path}")
    assert out.exit_code == 2, out.output
    assert names(out.output, path) and says in " ".join(out.output.split())
    assert "Traceback" not in out.output


def test_nothing_is_built_for_real_before_the_check():
    tensors = read_header_of(create_model("dinov2_vits14", **DINO))
    devices: list[str] = []

    def build():
        devices.append(str(torch.get_default_device()))
        return create_model("dinov2_vits14", **{**DINO, "embed_dim": 64})

    with pytest.raises(CheckpointError, match=r"pos_embed \[1, 5, 32\] in the file, \[1, 5, 64\] in the model"):
        build_for_checkpoint(build, "w.safetensors", tensors)
    assert devices == ["meta"]
    devices.clear()
    model = build_for_checkpoint(lambda: (devices.append(str(torch.get_default_device())),
                                          create_model("dinov2_vits14", **DINO))[1], "w.safetensors", tensors)
    assert devices == ["meta", "cpu"] and model.pos_embed.device.type == "cpu"


def read_header_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in model.state_dict().items()}


def test_mae_checkpoint_still_loads_into_its_classifier_with_the_family_rules(tmp_path):
    # the family loader's tolerances (MAE-only tensors dropped, new head) still apply on the meta device
    torch.manual_seed(0)
    mae_kwargs = {**HIERA, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 1}
    mae = create_model("mae_hiera_tiny_224", **mae_kwargs)
    path = save_weights(tmp_path / "mae.safetensors", mae.state_dict(), {"name": "mae_hiera_tiny_224",
                                                                        "kwargs": mae_kwargs})
    model = create_model_for("hiera_tiny_224", {**HIERA, "num_classes": 10}, path)
    assert model.head.projection.weight.shape == (10, 64)
    with pytest.raises(CheckpointError, match="does not fit"):  # a deeper classifier than the file holds
        create_model_for("hiera_tiny_224", {**HIERA, "stages": [1, 1, 1, 2], "num_classes": 10}, path)


@pytest.mark.parametrize(("bins", "says"), [(10**8, "far larger than the file's tensors"),
                                            (32, r"quantizer.vq.layers.0._codebook.embed \[16, 8\] in the file")])
def test_a_codec_whose_metadata_claims_other_sizes_is_refused(tmp_path, bins, says):
    from percli.models.encodec import EncodecModel
    from percli.tts.inference import WeightsError, load_codec

    tiny = dict(n_filters=4, dimension=8, bins=16)
    path = save_weights(tmp_path / "codec.safetensors", EncodecModel(**tiny).state_dict(),
                        {"config": {**tiny, "bins": bins}})
    with pytest.raises(WeightsError, match=says) as info:
        load_codec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("claim", [{}, {"num_hidden_layers": 5000}, {"hidden_size": 64}])
def test_a_captioner_rebuilt_from_metadata_is_checked_against_its_tensors(tmp_path, claim):
    from percli.models.altogether import build_captioner
    from tests.test_altogether_model import TINY_CLIP, tiny_captioner

    model = tiny_captioner()
    meta = {"image_encoder": {"name": "clip_vit_b32_quickgelu", "kwargs": TINY_CLIP}, **model.config_meta()}
    meta["decoder"] = {**meta["decoder"], **claim}
    path = save_weights(tmp_path / "captioner.safetensors", model.state_dict(), meta)
    tensors, meta = read_header(path)
    if not claim:
        rebuilt = build_captioner(meta, tensors, path)
        rebuilt.load_state_dict(model.state_dict())
        return
    with pytest.raises(CheckpointError, match="nothing was allocated") as info:
        build_captioner(meta, tensors, path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- item 12: damaged safetensors


def _damaged(path: Path, kind: str) -> Path:
    good = dinov2_checkpoint(path.with_name("good.safetensors"))
    data = good.read_bytes()
    path.write_bytes({
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "oversized-header": struct.pack("<Q", 2**40) + data[8:],
        "header-past-the-end": struct.pack("<Q", len(data)) + data[8:],
        "not-json": struct.pack("<Q", 8) + b"{nojson}" + b"\0" * 16,
    }[kind])
    return path


KINDS = ["empty", "truncated", "oversized-header", "header-past-the-end", "not-json"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_safetensors_raise_a_value_error_naming_the_file(tmp_path, kind):
    path = _damaged(tmp_path / "bad.safetensors", kind)
    for read in (read_weights, read_header):
        with pytest.raises(CheckpointError, match="not a readable safetensors file") as info:
            read(path)
        assert isinstance(info.value, ValueError) and str(path) in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["knn", "classify", "convert"])
def test_damaged_safetensors_exit_2_naming_the_file(tmp_path, kind, command):
    path = _damaged(tmp_path / "bad.safetensors", kind)
    if command == "convert":
        out = runner.invoke(app, ["convert", str(path), "-o", str(tmp_path / "out.safetensors")])
    elif command == "knn":
        out = knn(tmp_path, f"model.checkpoint={path}")
    else:
        out = classify(tmp_path, f"checkpoint={path}")
    assert out.exit_code == 2, out.output
    assert names(out.output, path) and "not a readable safetensors file" in " ".join(out.output.split())
    assert "Traceback" not in out.output


# --------------------------------------------------------------------------- item 12: refused pickles


class _Payload:
    """Creates the marker file when unpickled by an unrestricted loader."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _evil_pth(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PAYLOAD_RAN"
    state = create_model("hiera_tiny_224", **HIERA, num_classes=10).state_dict()
    path = tmp_path / "evil.pth"
    torch.save({"model": state, "args": _Payload(marker)}, path)
    return path, marker


def _assert_refused(out, path: Path, marker: Path) -> None:
    assert out.exit_code == 2, out.output
    assert not marker.exists()
    assert names(out.output, path) and "will not unpickle" in out.output
    assert "percli convert" in " ".join(out.output.split())
    assert "weights_only=False" not in flat(out.output) and "Traceback" not in out.output


def test_finetune_refuses_a_hostile_pickle_without_running_it(tmp_path):
    path, marker = _evil_pth(tmp_path)
    out = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(tmp_path / "ft"),
                              f"model.kwargs={json.dumps(HIERA)}", f"model.checkpoint={path}", "train.max_steps=1",
                              *SMALL])
    _assert_refused(out, path, marker)


def test_eval_classify_refuses_a_hostile_pickle_without_running_it(tmp_path):
    path, marker = _evil_pth(tmp_path)
    out = classify(tmp_path, f"checkpoint={path}", "model.name=hiera_tiny_224",
                   f"model.kwargs={json.dumps({**HIERA, 'num_classes': 10})}")
    _assert_refused(out, path, marker)


def test_eval_knn_refuses_a_hostile_pickle_without_running_it(tmp_path):
    path, marker = _evil_pth(tmp_path)
    out = knn(tmp_path, f"model.checkpoint={path}", "model.name=hiera_tiny_224", f"model.kwargs={json.dumps(HIERA)}")
    _assert_refused(out, path, marker)


def test_a_hostile_voicecraft_release_is_refused_with_the_same_advice(tmp_path):
    from percli.tts.inference import WeightsError, read_voicecraft_weights

    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "giga830M.pth"
    torch.save({"config": {}, "phn2num": {"a": 0}, "model": {}, "hook": _Payload(marker)}, path)
    with pytest.raises(WeightsError) as info:
        read_voicecraft_weights(path)
    assert not marker.exists()
    assert str(path) in str(info.value) and "percli convert" in str(info.value)
    assert "weights_only=False" not in str(info.value)


def test_no_message_in_the_package_advises_unpickling_with_weights_only_false():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "percli").rglob("*.py")
                 if "weights_only=False" in p.read_text() or "weights_only = False" in p.read_text()]
    assert offenders == []
