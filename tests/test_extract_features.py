"""`percli extract features`: per-second features of videos with a frozen image-text model or video Hiera."""

import json

import pytest
import torch
from typer.testing import CliRunner

from percli.avsuperb.job import TINY_VIDEO
from percli.cli import app
from percli.core.checkpoint import read_weights, save_weights
from percli.models import create_model

runner = CliRunner()
CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three 4 s embedded clips (8 fps mp4), an empty file, a truncated one and a non-video."""
    from percli.core.data.av_events import make_av_events

    root = tmp_path_factory.mktemp("videos")
    make_av_events(root / "made", 3, seed=5)
    folder = root / "clips"
    folder.mkdir()
    for mp4 in sorted((root / "made" / "clips").glob("*.mp4")):
        (folder / mp4.name).write_bytes(mp4.read_bytes())
    good = (folder / "train_00000.mp4").read_bytes()
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (folder / "text.mp4").write_bytes(b"this is not a video")
    return folder


def _checkpoint(tmp_path, name, kwargs, meta=None):
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    return str(save_weights(tmp_path / f"{name}.safetensors", model.state_dict(),
                            {"name": name, "kwargs": kwargs, **(meta or {})}))


def _extract(out, *args):
    result = runner.invoke(app, ["extract", "features", *args, "-o", str(out), "--json"])
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def test_image_tower_gives_one_row_per_second_and_resume_skips_what_is_written(tmp_path, videos):
    ckpt = _checkpoint(tmp_path, "clip_vit_b32_quickgelu", CLIP, {"task": "clip"})
    out = tmp_path / "out"
    result, summary = _extract(out, str(videos), "--checkpoint", ckpt, "--frames-per-step", "2")
    assert result.exit_code == 0, result.output[-3000:]
    assert summary["written"] == 3 and summary["encoder"] == "image"
    assert summary["bad_inputs"]["count"] == 3
    assert {"empty_file", "corrupt_video"} <= set(summary["skipped"])
    tensors, meta = read_weights(out / "features" / "train_00001.safetensors")
    assert tensors["features"].shape == (4, 16)  # 4 s at 1 row per second, the image tower's width
    assert meta["fps"] == 1.0 and meta["source"].endswith("train_00001.mp4")
    # rows are the mean of each second's frames through the image tower: second 0 checked by hand
    from percli.api import load
    from percli.core.data.video import read_clip

    model, transform = load(ckpt)
    frames = read_clip(str(videos / "train_00001.mp4"), 32, 1, train=False)  # all 32 frames (8 fps)
    with torch.no_grad():
        first = model.encode_image(torch.stack([transform(f) for f in frames[[0, 4]]])).mean(dim=0)
    assert torch.allclose(tensors["features"][0], first, atol=1e-3)
    before = (out / "features" / "train_00000.safetensors").stat().st_mtime_ns
    (out / "features" / "train_00002.safetensors").unlink()  # as if the run had stopped before it
    result, summary = _extract(out, str(videos), "--checkpoint", ckpt, "--frames-per-step", "2", "--resume")
    assert result.exit_code == 0, result.output[-3000:]
    assert summary["written"] == 1 and summary["resumed"] == 2
    assert (out / "features" / "train_00000.safetensors").stat().st_mtime_ns == before


def test_video_hiera_takes_one_clip_per_step(tmp_path, videos):
    ckpt = _checkpoint(tmp_path, "hiera_base_16x224", TINY_VIDEO)
    result, summary = _extract(tmp_path / "out", str(videos / "train_00000.mp4"), "--checkpoint", ckpt, "--fps", "2")
    assert result.exit_code == 0, result.output[-3000:]
    assert summary["encoder"] == "video" and summary["written"] == 1
    tensors, _ = read_weights(tmp_path / "out" / "features" / "train_00000.safetensors")
    assert tensors["features"].shape[0] == 8  # 4 s at 2 rows per second
    assert not torch.allclose(tensors["features"][0], tensors["features"][-1])  # different clips


def test_a_manifest_counts_malformed_lines_and_repeated_ids(tmp_path, videos):
    ckpt = _checkpoint(tmp_path, "clip_vit_b32_quickgelu", CLIP, {"task": "clip"})
    manifest = tmp_path / "videos.jsonl"
    lines = [{"id": "a", "video": str(videos / "train_00000.mp4")}, {"id": "a", "video": str(videos / "x.mp4")},
             {"id": 3, "video": "y.mp4"}, {"id": "b", "video": str(videos / "missing.mp4")}]
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken")
    result, summary = _extract(tmp_path / "out", str(manifest), "--checkpoint", ckpt)
    assert result.exit_code == 0, result.output[-3000:]
    assert summary["written"] == 1 and summary["skipped"]["duplicate_id"] == 1
    assert summary["skipped"]["missing_file"] == 1 and summary["skipped"]["malformed_record"] == 2


def test_bad_settings_and_encoders_are_named(tmp_path, videos):
    result, _ = _extract(tmp_path / "a", str(videos))
    assert result.exit_code == 2 and "checkpoint (--checkpoint): not set" in result.output
    audio = _checkpoint(tmp_path, "audiomae_vit_small_patch16", {"img_size": [64, 128], "embed_dim": 16, "depth": 1,
                                                                 "num_heads": 2})
    result, _ = _extract(tmp_path / "b", str(videos), "--checkpoint", audio)
    assert result.exit_code == 2 and "gives no per-frame or per-clip features" in result.output
    result, _ = _extract(tmp_path / "c", str(videos), "--checkpoint", audio, "--fps", "0")
    assert result.exit_code == 2 and "fps=0" in result.output
