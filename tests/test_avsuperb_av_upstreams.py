"""The joint audio-visual AV-SUPERB upstreams (`mavil`, `pe-av`): feature contract, preprocessing, and a
mini-benchmark run through `percli eval av-superb`."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from percli.avsuperb.job import TINY_MAVIL, TINY_PE_AV
from percli.avsuperb.upstream import load_upstream
from percli.cli import app


def _clip(upstream, seconds: float, frames: int = 12):
    g = torch.Generator().manual_seed(int(seconds * 10))
    wav = 0.1 * torch.randn(int(16000 * seconds), generator=g)
    video = torch.randint(0, 256, (frames, 48, 40, 3), dtype=torch.uint8, generator=g)
    return upstream.preprocess_audio(wav, 16000), upstream.preprocess_video(video, 8.0)


@torch.no_grad()
def test_pe_av_upstream_gives_every_layer_of_its_three_towers():
    torch.manual_seed(0)
    up = load_upstream("pe-av", model_kwargs=TINY_PE_AV)
    assert up.feature_rate == 16000 / 320
    batch = [_clip(up, 2.0), _clip(up, 1.3)]
    assert batch[0][1].shape == (16, 3, 32, 32) and batch[0][1].min() >= -1 and batch[0][1].max() <= 1
    out = up(batch)
    for key in ("audio_feats", "video_feats", "fusion_feats"):
        assert len(out[key]) == 2 and {tuple(t.shape[::2]) for t in out[key]} == {(2, 32)}, key
    assert out["audio_feats"][0].shape[1] == 100 and out["video_feats"][0].shape[1] == 16
    assert out["lengths"].tolist() == [100, 65]
    # a clip alone gets the same features as in a batch of clips as long (no padding at all)
    pair = up([batch[1], batch[1]])
    torch.testing.assert_close(up([batch[1]])["fusion_feats"][1][0], pair["fusion_feats"][1][1])
    audio_only = up([(batch[0][0], None)])
    assert audio_only["audio_feats"] and not audio_only["video_feats"] and not audio_only["fusion_feats"]


@torch.no_grad()
def test_mavil_upstream_is_the_official_expert_features():
    torch.manual_seed(0)
    up = load_upstream("mavil", model_kwargs=TINY_MAVIL)
    (fbank, frames), other = _clip(up, 2.0), _clip(up, 3.0)
    assert fbank.shape == (256, 128) and abs(float(fbank.mean())) < 1e-4  # each clip by its own statistics
    assert frames.shape == (3, 4, 64, 64)
    out = up([(fbank, frames), other])
    expected = up.model.avsuperb_features(torch.stack([fbank, other[0]])[:, None], torch.stack([frames, other[1]]))
    for key in ("audio_feats", "video_feats", "fusion_feats"):
        assert len(out[key]) == len(expected[key])
        for got, want in zip(out[key], expected[key]):
            torch.testing.assert_close(got, want)
    assert out["audio_feats"][0].shape == (2, 1, 32) and out["fusion_feats"][0].shape == (2, 1, 64)
    with pytest.raises(ValueError, match="needs audio and video"):
        up([(fbank, None)])


@pytest.mark.parametrize("upstream", ["pe-av", "mavil"])
def test_eval_av_superb_runs_the_joint_upstreams_on_the_minibench(tmp_path_factory, upstream):
    mini = tmp_path_factory.getbasetemp() / "av-upstreams-mini"  # generated once, shared by both cases
    run = tmp_path_factory.mktemp(upstream)
    result = CliRunner().invoke(app, ["eval", "av-superb", "--upstream", upstream, "--tasks", "ks", "--features",
                                      "fusion", "--steps", "2", "--batch-size", "4", "--minibench", str(mini),
                                      "--run-dir", str(run), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    (row,) = summary["results"]
    assert (row["task"], row["features"]) == ("ks", "fusion") and 0.0 <= row["metrics"]["accuracy"] <= 1.0
