"""Video zero-shot (`eval zero-shot data.kind=video`): frames spread over each clip, PE's `encode_video`."""

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data import build_dataset
from percli.core.data.video import clip_indices
from percli.models import create_model
from percli.recipes.zero_shot import encode_video
from tests.test_data import frame_numbers, write_brightness_video

runner = CliRunner()
PE = {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "output_dim": 16},
      "text_cfg": {"width": 32, "heads": 2, "layers": 1, "output_dim": 16}}


def test_frames_are_spread_from_the_first_to_the_last(tmp_path):
    assert clip_indices(40, 8, 0, train=False) == [0, 6, 11, 17, 22, 28, 33, 39]
    assert clip_indices(3, 8, 0, train=True) == [0, 0, 1, 1, 1, 1, 2, 2]  # short video: frames repeat
    (tmp_path / "a").mkdir()
    write_brightness_video(tmp_path / "a" / "v.mp4", num_frames=40)
    clip = build_dataset(str(tmp_path), kind="video", num_frames=8, sampling_rate=0, train=False)[0]["video"]
    assert frame_numbers(clip) == [0, 6, 11, 17, 22, 28, 33, 39]


@torch.no_grad()
def test_clip_embedding_is_pes_encode_video_and_the_frame_mean_for_clip():
    torch.manual_seed(0)
    pe = create_model("pe_core_t16_384", **PE).eval()
    video = torch.randn(2, 3, 4, 32, 32)  # [B, C, T, H, W]
    expected = torch.nn.functional.normalize(pe.encode_video(video.transpose(1, 2), normalize=True), dim=-1)
    assert torch.allclose(encode_video(pe, video), expected, atol=1e-6)
    clip = create_model("clip_vit_b32_quickgelu", embed_dim=16, vision_cfg={
        "image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
        text_cfg={"width": 16, "heads": 2, "layers": 1}).eval()
    frames = [clip.encode_image(video[:, :, t], normalize=True) for t in range(4)]
    assert torch.allclose(encode_video(clip, video),
                          torch.nn.functional.normalize(torch.stack(frames).mean(0), dim=-1), atol=1e-6)


def test_command_scores_video_clips_with_a_pe_checkpoint(tmp_path):
    pytest.importorskip("av")
    for label in ("dark", "bright"):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for i in range(2):
            write_brightness_video(tmp_path / "clips" / label / f"{i}.mp4", num_frames=12 + 6 * i, size=40)
    torch.manual_seed(0)
    path = tmp_path / "pe.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("pe_core_t16_384", **PE).state_dict().items()}, str(path),
              metadata={"percli": json.dumps({"name": "pe_core_t16_384", "kwargs": PE, "task": "clip"})})
    result = runner.invoke(app, ["eval", "zero-shot", "--json", f"model.checkpoint={path}", "data.kind=video",
                                 f"data.source={tmp_path / 'clips'}", "data.num_frames=4", "train.num_workers=0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["chance_top1"] == 0.5 and metrics["zero_shot_top5"] == 1.0 and 0 <= metrics["zero_shot_top1"] <= 1
    embedded = runner.invoke(app, ["eval", "zero-shot", f"model.checkpoint={path}", "data.kind=video"])
    assert embedded.exit_code == 2 and "needs real clips" in embedded.output
