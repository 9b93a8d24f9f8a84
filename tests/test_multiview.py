"""Multi-view testing of video classifiers (`percli eval classify eval.views_spatial / eval.views_temporal`):
the views are the configured clips and crops, and their class probabilities are averaged."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core.data.embedded_motion import CLASSES, EmbeddedMotionClips
from percli.core.data.embedded_plm import write_mp4
from percli.core.data.transforms import video_transform
from percli.core.data.video import VideoClipDataset, clip_indices

runner = CliRunner()


def test_temporal_views_start_evenly_from_the_first_to_the_last_possible_frame():
    starts = [clip_indices(30, 4, 2, train=False, view=v, views=3)[0] for v in range(3)]
    assert starts == [0, 12, 23]  # slack 30 - 7 = 23
    assert clip_indices(30, 4, 2, train=False) == [11, 13, 15, 17]  # one view: the centred clip
    assert clip_indices(5, 4, 2, train=False, view=2, views=3)[0] == 0  # too short: every view starts at 0


def test_a_video_gives_its_temporal_and_spatial_views_in_order(tmp_path):
    frames = np.zeros((30, 32, 64, 3), dtype=np.uint8)
    frames += (6 * np.arange(30, dtype=np.uint8))[:, None, None, None]  # brightness = time
    frames[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :]  # green = column
    (tmp_path / "a").mkdir()
    write_mp4(tmp_path / "a" / "clip.mp4", frames, fps=10)
    transform = video_transform(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=False, spatial_views=3)
    data = VideoClipDataset(tmp_path, transform, num_frames=4, sampling_rate=2, train=False, views_temporal=3)
    video = data[0]["video"]
    assert video.shape == (9, 3, 4, 32, 32)  # 3 temporal x 3 spatial, temporal-major
    red = video[:, 0].mean(dim=(1, 2, 3)).view(3, 3)  # time shows in the red channel
    assert (red[1] - red[0]).mean() * 255 == pytest.approx(6 * 12, abs=8)  # the second clip starts 12 frames on
    assert (red[2] - red[0]).mean() * 255 == pytest.approx(6 * 23, abs=8)
    green = video[:, 1].mean(dim=(1, 2, 3)).view(3, 3)  # column shows in the green channel: left < centre < right
    assert (green[:, 0] < green[:, 1]).all() and (green[:, 1] < green[:, 2]).all()
    with pytest.raises(ValueError, match="views only for held-out"):
        VideoClipDataset(tmp_path, transform, train=True, views_temporal=2)


def test_eval_classify_averages_the_views_of_a_video_classifier(tmp_path):
    result = runner.invoke(app, ["finetune", "diffmae", "--preset", "tiny-video", "--run-dir", str(tmp_path / "ft"),
                                 "train.max_steps=1", "train.eval_every=0", "train.batch_size=4",
                                 "train.num_workers=0", "data.embedded_size=8", "model.kwargs.embed_dim=32",
                                 "model.kwargs.depth=1", "model.kwargs.num_heads=2"])
    assert result.exit_code == 0, result.output[-3000:]
    clips = EmbeddedMotionClips("val", 8, 12, 48)
    for i in range(8):  # 12 frames of 48 px: longer and larger than the model's 8 x 32, so views differ
        (tmp_path / "clips" / CLASSES[i]).mkdir(parents=True)
        write_mp4(tmp_path / "clips" / CLASSES[i] / f"{i}.mp4", clips.render(i), fps=8)
    summaries = {}
    for views in ((1, 1), (3, 2)):
        result = runner.invoke(app, ["eval", "classify", "--run-dir", str(tmp_path / f"ev{views}"), "--json",
                                     f"checkpoint={tmp_path / 'ft'}", f"data.source={tmp_path / 'clips'}",
                                     "data.sampling_rate=1", "train.num_workers=0", "train.batch_size=4",
                                     f"eval.views_spatial={views[0]}", f"eval.views_temporal={views[1]}"])
        assert result.exit_code == 0, result.output[-3000:]
        summaries[views] = json.loads(result.stdout)["metrics"]
    assert summaries[(1, 1)]["count"] == summaries[(3, 2)]["count"] == 8  # one prediction per video
    assert summaries[(1, 1)]["loss"] != pytest.approx(summaries[(3, 2)]["loss"], abs=1e-6)  # other inputs seen
    result = runner.invoke(app, ["eval", "classify", "--run-dir", str(tmp_path / "bad"),
                                 f"checkpoint={tmp_path / 'ft'}", "eval.views_spatial=3"])  # embedded: no files
    assert result.exit_code != 0 and "eval.views_spatial" in result.output


def test_averaging_probabilities_is_what_the_eval_step_scores():
    from percli.recipes.classify_eval import _EvalTask

    logits = torch.tensor([[[4.0, 0.0], [0.0, 1.0]]])  # one clip, two views, two classes

    class Views(torch.nn.Module):
        def forward(self, x):
            return logits.flatten(0, 1)

    sums = _EvalTask(video=True).eval_step(Views(), {"video": torch.zeros(1, 2, 3, 1, 1, 1),
                                                     "label": torch.tensor([0])})
    mean = logits.softmax(-1).mean(1)
    assert sums["loss_sum"] == pytest.approx(-mean[0, 0].log().item(), rel=1e-5)
    assert sums["top1_correct"] == 1.0  # mean probability of class 0: (0.982 + 0.269) / 2 > 0.5
