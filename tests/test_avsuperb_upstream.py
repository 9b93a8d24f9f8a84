"""AV-SUPERB upstreams obey the feature contract (tiny Audio-MAE / Hiera video models, CPU)."""

import textwrap

import pytest
import torch

from percli.avsuperb.upstream import evenly_spaced, load_upstream, stretch_in_time
from percli.avsuperb.upstream_common import FEATURE_KEYS

TINY_AUDIO = {"model_kwargs": {"img_size": (64, 32), "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 0}}
TINY_VIDEO = {"model_kwargs": {"input_size": (4, 64, 64), "embed_dim": 8, "num_heads": 1, "stages": (1, 1, 1, 2),
                               "num_classes": 2}}


@pytest.fixture(scope="module")
def fusion():
    torch.manual_seed(0)
    return load_upstream("audio-mae+hiera-video", audio=TINY_AUDIO, video=TINY_VIDEO).eval()


def _clip(upstream, seconds: float, frames: int = 10):
    wav = 0.1 * torch.randn(int(16000 * seconds))
    video = torch.randint(0, 256, (frames, 48, 40, 3), dtype=torch.uint8)
    return upstream.preprocess_audio(wav, 16000), upstream.preprocess_video(video, 25.0)


def _assert_layer_list(layers, batch, dim=None):
    assert layers, "expected at least one layer"
    shapes = {tuple(t.shape) for t in layers}
    assert len(shapes) == 1, f"layers differ in shape: {shapes}"
    shape = shapes.pop()
    assert len(shape) == 3 and shape[0] == batch
    if dim is not None:
        assert shape[2] == dim
    return shape


@torch.no_grad()
def test_fusion_upstream_returns_time_aligned_layer_lists(fusion):
    batch = [_clip(fusion, 0.5), _clip(fusion, 1.0)]
    out = fusion(batch)
    assert set(FEATURE_KEYS) <= set(out)
    a = _assert_layer_list(out["audio_feats"], 2, dim=32)
    v = _assert_layer_list(out["video_feats"], 2, dim=64)
    f = _assert_layer_list(out["fusion_feats"], 2, dim=32 + 64)
    assert len(out["audio_feats"]) == 3 and len(out["video_feats"]) == 2 and len(out["fusion_feats"]) == 2
    assert a[1] == 64 // 16 and v[1] == 4 // 2  # time grid of the spectrogram / the video tokens
    assert f[1] == a[1]  # video interpolated to the audio time axis
    # audio part of the fusion = the evenly spaced audio layers (0 and 2 of 3)
    assert torch.equal(out["fusion_feats"][1][..., :32], out["audio_feats"][2])
    # 0.5 s -> 48 fbank frames -> 3 of 4 patch rows hold audio; 1 s is cropped to the 4 rows
    assert out["lengths"].tolist() == [3, 4]
    # the video is stretched over the valid audio rows only: clip 0's padded row gets zeros
    video_part = out["fusion_feats"][0][..., 32:]
    assert torch.equal(video_part[0, 3], torch.zeros(64)) and video_part[0, 2].abs().sum() > 0


def test_stretch_in_time_interpolates_over_valid_frames():
    x = torch.tensor([[[0.0], [2.0]], [[1.0], [1.0]]])  # [B=2, T_v=2, C=1]
    out = stretch_in_time(x, [4, 2], 4)
    # half-pixel linear interpolation of [0, 2] onto 4 frames: 0, 0.5, 1.5, 2
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 0.5, 1.5, 2.0])
    assert out[1, :, 0].tolist() == [1.0, 1.0, 0.0, 0.0]


@torch.no_grad()
def test_single_modality_batches_leave_the_other_keys_empty(fusion):
    audio, video = _clip(fusion, 1.0)
    only_audio = fusion([(audio, None)])
    assert only_audio["video_feats"] == [] and only_audio["fusion_feats"] == [] and only_audio["audio_feats"]
    only_video = fusion.video([(None, video)])
    assert only_video["audio_feats"] == [] and only_video["fusion_feats"] == []
    _assert_layer_list(only_video["video_feats"], 1)
    with pytest.raises(ValueError, match="have no video"):
        fusion([(audio, video), (audio, None)])


def test_preprocessing_follows_the_model():
    up = load_upstream("audio-mae", **TINY_AUDIO)
    fbank = up.preprocess_audio(0.1 * torch.randn(8000 * 3), 8000)  # 3 s at 8 kHz, resampled to 16 kHz
    assert fbank.shape == (64, 32)  # cropped to the model's 64 frames x 32 mel bins
    video = load_upstream("hiera-video", **TINY_VIDEO)
    frames = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 8, 8, 3).contiguous()
    clip = video.preprocess_video(frames, 30.0)
    assert clip.shape == (3, 4, 64, 64)
    # frames 0, 3, 6, 9 spread over the clip, normalised by the model's mean/std
    mean, std = video.model.preprocess["mean"][0], video.model.preprocess["std"][0]
    picked = (clip[0, :, 0, 0] * std + mean) * 255
    assert torch.allclose(picked, torch.tensor([0.0, 3.0, 6.0, 9.0]), atol=1e-3)


@torch.no_grad()
def test_hiera_last_stage_hooks_are_in_raster_order(fusion):
    video = fusion.video
    clips = torch.stack([_clip(fusion, 1.0)[1] for _ in range(2)])
    tokens = video.last_stage_tokens(clips)
    assert len(tokens) == 2  # stages (1, 1, 1, 2): the last stage has two blocks
    hooked = tokens[-1]
    reference = video.model.forward_intermediates(clips)[-1]  # [B, T', H', W', C] in spatial order
    assert torch.allclose(hooked.reshape(reference.shape), reference, atol=1e-6)
    assert len(video.grid) == 3 and reference.shape[1:4] == tuple(video.grid)


def test_evenly_spaced_layers():
    assert evenly_spaced(3, 12) == [0, 6, 11]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced(1, 5) == [4]


def test_user_upstream_module_factory(tmp_path, monkeypatch):
    (tmp_path / "my_expert.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn

        class Expert(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.proj = nn.Linear(1, dim)
            def preprocess_audio(self, wav, sample_rate):
                return wav[::160]
            def preprocess_video(self, frames, fps):
                return frames.float().mean(dim=(1, 2, 3))
            def forward(self, batch):
                a = torch.stack([x for x, _ in batch])[..., None]
                layers = [self.proj(a), self.proj(a) * 2]
                return {"audio_feats": layers, "video_feats": [], "fusion_feats": []}

        def build(dim=4):
            return Expert(dim)

        def not_an_upstream():
            return 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    up = load_upstream("my_expert:build", dim=6)
    out = up([(up.preprocess_audio(torch.randn(1600), 16000), None)] * 2)
    _assert_layer_list(out["audio_feats"], 2, dim=6)
    assert up.modalities == {"audio", "video"}
    with pytest.raises(TypeError, match="must return an nn.Module"):
        load_upstream("my_expert:not_an_upstream")
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_upstream("my_expert:missing")
    with pytest.raises(ValueError, match="cannot import"):
        load_upstream("no_such_module_xyz:build")
    with pytest.raises(ValueError, match="unknown upstream"):
        load_upstream("wav2vec")


@pytest.mark.parametrize(("spec", "kw", "message"), [
    ("audio-mae", {"model": "no_such_model"}, "unknown model"),
    ("hiera-video", {"model": "hiera_tiny_224", "model_kwargs": {"input_size": (64, 64), "embed_dim": 8,
                                                                 "stages": (1, 1, 1, 1)}}, "image model"),
    ("hiera-video", {"model": "audiomae_vit_base_patch16", **TINY_AUDIO}, "not a Hiera"),
    ("audio-mae+hiera-video", {"sound": {}}, "'audio' and 'video'"),
])
def test_bad_builtin_specs_say_what_to_fix(spec, kw, message):
    with pytest.raises(ValueError, match=message):
        load_upstream(spec, **kw)


def test_checkpoint_round_trip(tmp_path):
    from percli.core.checkpoint import save_weights

    torch.manual_seed(0)
    up = load_upstream("audio-mae", **TINY_AUDIO)
    meta = {"name": "audiomae_vit_base_patch16", "kwargs": dict(TINY_AUDIO["model_kwargs"], decoder_mode=1),
            "task": "audio-mae", "mean": -1.0, "std": 2.0, "sample_rate": 16000}
    path = save_weights(tmp_path / "model.safetensors", up.model.state_dict(), meta)
    again = load_upstream("audio-mae", checkpoint=str(path))
    assert again.mean == -1.0 and again.std == 2.0  # preprocessing comes from the checkpoint
    x = [(again.preprocess_audio(0.1 * torch.randn(16000), 16000), None)]
    with torch.no_grad():
        assert torch.allclose(up(x)["audio_feats"][-1], again(x)["audio_feats"][-1])
