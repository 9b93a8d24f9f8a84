import csv
import json
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from percli.core.data import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    AudioDataset,
    BadSample,
    EmbeddedAudioDataset,
    build_dataset,
    compute_fbank_stats,
    kaldi_fbank,
    load_audio,
    normalize_fbank,
    sample_weights,
)

SR = 16000
FEATS = {"num_mel_bins": 32, "target_length": 64}  # small features keep the tests fast


def tone(freq: float, seconds: float = 0.5, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path, data: np.ndarray, sr: int = SR) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr)
    return str(path)


def test_fbank_matches_official_call_and_pads_or_crops():
    torch.manual_seed(0)
    wave = torch.randn(1, SR) * 0.1 + 0.05  # an offset, so the mean removal matters
    official = torchaudio.compliance.kaldi.fbank(
        wave - wave.mean(), htk_compat=True, sample_frequency=SR, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    assert official.shape == (98, 128)  # 1 s, 25 ms windows every 10 ms
    padded = kaldi_fbank(wave, SR, 128, 1024)
    assert padded.shape == (1024, 128)
    torch.testing.assert_close(padded[:98], official)
    assert padded[98:].abs().max() == 0  # zero padding, as the official ZeroPad2d
    torch.testing.assert_close(kaldi_fbank(wave, SR, 128, 50), official[:50])
    torch.testing.assert_close(kaldi_fbank(wave[0], SR, 128, None), official)


def test_normalization_constants():
    assert AUDIOSET_MEAN == pytest.approx(-4.2677393)
    assert AUDIOSET_STD == pytest.approx(4.5689974)
    x = torch.tensor([AUDIOSET_MEAN, AUDIOSET_MEAN + 2 * AUDIOSET_STD])
    torch.testing.assert_close(normalize_fbank(x), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("sr", [22050, 44100])
def test_resampling_and_stereo_to_mono(tmp_path, sr):
    left, right = tone(440, 1.0, sr), tone(440, 1.0, sr, amp=0.1)
    path = write(tmp_path / "s.wav", np.stack([left, right], axis=1), sr)
    wave = load_audio(path, SR)
    assert wave.shape == (1, SR) and wave.dtype == torch.float32
    assert float(wave.abs().max()) == pytest.approx(0.3, abs=0.01)  # channels averaged
    # Still a 440 Hz tone after resampling.
    spectrum = torch.fft.rfft(wave[0]).abs()
    assert int(spectrum.argmax()) == pytest.approx(440, abs=2)


def test_corrupt_and_silent_files_raise_bad_sample(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF garbage" * 50)
    silent = write(tmp_path / "silent.wav", np.zeros(SR, dtype=np.float32))
    empty = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    for path in (str(corrupt), silent, empty, str(tmp_path / "missing.wav")):
        with pytest.raises(BadSample) as info:
            load_audio(path)
        assert info.value.path == path
    ok = write(tmp_path / "a" / "ok.wav", tone(300))
    (tmp_path / "a" / "bad.wav").write_bytes(b"\x00\x01" * 100)
    ds = AudioDataset(tmp_path / "a", **FEATS)  # flat folder: unlabeled
    assert ds.classes == [] and [ds.path_of(i) for i in range(2)] == [str(tmp_path / "a" / "bad.wav"), ok]
    with pytest.raises(BadSample):
        ds[0]
    assert ds[1]["label"] == -1


def test_jsonl_manifest_multilabel_targets(tmp_path):
    a = write(tmp_path / "a.wav", tone(300))
    write(tmp_path / "b.wav", tone(900))
    lines = [{"path": a, "labels": ["dog", "cat"]}, {"path": "b.wav", "label": "bird"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = build_dataset(manifest, kind="audio", **FEATS)
    assert isinstance(ds, AudioDataset) and ds.classes == ["bird", "cat", "dog"] and ds.multilabel
    item = ds[0]
    assert item["fbank"].shape == (1, 64, 32) and item["path"] == a
    assert item["target"].tolist() == [0.0, 1.0, 1.0] and item["label"] == 1
    assert ds[1]["target"].tolist() == [1.0, 0.0, 0.0] and ds[1]["path"] == str(tmp_path / "b.wav")
    ints = tmp_path / "i.jsonl"
    ints.write_text(json.dumps({"path": a, "labels": [0, 2]}) + "\n")
    assert AudioDataset(ints, **FEATS).classes == ["0", "1", "2"]
    with pytest.raises(ValueError, match="multilabel=False"):
        AudioDataset(manifest, multilabel=False)


def test_ast_json_with_label_csv(tmp_path):
    write(tmp_path / "w" / "a.wav", tone(300))
    write(tmp_path / "w" / "b.wav", tone(900))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([[0, "/m/09x0r", "Speech"], [1, "/m/04rlf", "Music"], [2, "/m/0jbk", "Animal"]])
    data = {"data": [{"wav": "w/a.wav", "labels": "/m/04rlf,/m/0jbk"}, {"wav": "w/b.wav", "labels": "/m/09x0r"}]}
    (tmp_path / "train.json").write_text(json.dumps(data))
    ds = build_dataset(tmp_path / "train.json", kind="audio", label_csv=tmp_path / "labels.csv", **FEATS)
    assert ds.classes == ["Speech", "Music", "Animal"] and ds.multilabel
    assert ds[0]["target"].tolist() == [0.0, 1.0, 1.0] and ds[1]["label"] == 0


def test_folder_source(tmp_path):
    for name, freq in (("high", 3000), ("low", 200)):
        for i in range(2):
            write(tmp_path / name / f"{i}.wav", tone(freq + 10 * i))
    ds = build_dataset(tmp_path, kind="audio", **FEATS)
    assert ds.classes == ["high", "low"] and not ds.multilabel and len(ds) == 4
    assert [ds[i]["label"] for i in range(4)] == [0, 0, 1, 1]
    assert ds[3]["target"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="audio"):
        build_dataset(tmp_path / "high" / "0.wav", kind="audio")


def _two_class_set(tmp_path, **kw) -> AudioDataset:
    write(tmp_path / "a" / "0.wav", tone(300, 0.6))
    write(tmp_path / "b" / "0.wav", tone(2000, 0.4))
    return AudioDataset(tmp_path, **FEATS, **kw)


def test_augmentations_reproducible_and_mixup_targets(tmp_path):
    aug = {"train": True, "freqm": 8, "timem": 16, "roll_mag_aug": True, "mixup": 1.0}
    ds = _two_class_set(tmp_path, **aug)
    plain = AudioDataset(tmp_path, **FEATS)
    torch.manual_seed(3)
    first = ds[0]
    torch.manual_seed(3)
    again = ds[0]
    torch.testing.assert_close(first["fbank"], again["fbank"])
    torch.testing.assert_close(first["target"], again["target"])
    assert not torch.equal(first["fbank"], plain[0]["fbank"])
    assert not torch.equal(ds[0]["fbank"], first["fbank"])  # a fresh draw differs
    # Mixup targets: lambda on the item's own label, 1 - lambda on its partner's, summing to 1.
    torch.manual_seed(0)
    targets = torch.stack([ds[0]["target"] for _ in range(20)])
    torch.testing.assert_close(targets.sum(1), torch.ones(20))
    mixed = targets[targets[:, 1] > 0]
    assert len(mixed) > 0 and ((mixed[:, 0] > 0.15) & (mixed[:, 0] < 0.85)).all()  # Beta(10, 10) is near 0.5
    # Evaluation (train=False) never augments.
    evaluation = _two_class_set(tmp_path / "eval", **{**aug, "train": False})
    torch.testing.assert_close(evaluation[0]["fbank"], plain[0]["fbank"])
    assert evaluation[0]["target"].tolist() == [1.0, 0.0]


def test_mixup_matches_manual_waveform_mix(tmp_path):
    ds = _two_class_set(tmp_path, train=True, mixup=1.0)
    torch.manual_seed(5)
    item = ds[0]
    torch.manual_seed(5)
    torch.rand(())  # the mixup coin
    other = int(torch.randint(2, ()))
    lam = float(torch.distributions.Beta(torch.tensor(10.0), torch.tensor(10.0)).sample())
    w1 = ds.waveform(0) - ds.waveform(0).mean()
    w2 = ds.waveform(other) - ds.waveform(other).mean()
    w2 = torch.nn.functional.pad(w2, (0, max(0, w1.shape[1] - w2.shape[1])))[:, : w1.shape[1]]
    expected = normalize_fbank(kaldi_fbank(lam * w1 + (1 - lam) * w2, SR, 32, 64))
    # Same arithmetic up to float32 rounding of the extra mean removal.
    torch.testing.assert_close(item["fbank"][0], expected, atol=1e-3, rtol=1e-4)
    expected_target = torch.tensor([1.0, 0.0]) * lam + ds[other]["target"] * (1 - lam)
    torch.testing.assert_close(item["target"], expected_target)


def test_embedded_deterministic_balanced_disjoint_and_picklable():
    a = EmbeddedAudioDataset("train", num_clips=16, seed=1, **FEATS)
    b = pickle.loads(pickle.dumps(EmbeddedAudioDataset("train", num_clips=16, seed=1, **FEATS)))
    val = EmbeddedAudioDataset("val", num_clips=16, seed=1, **FEATS)
    assert len(a.classes) == 8 and not a.multilabel
    for i in (0, 5, 15):
        torch.testing.assert_close(a[i]["fbank"], b[i]["fbank"])
    assert np.array_equal(a.render(3), b.render(3))
    assert not np.array_equal(a.render(3)[:SR], EmbeddedAudioDataset("train", num_clips=16, seed=2).render(3)[:SR])
    train_clips = {a.render(i).tobytes() for i in range(16)}
    assert train_clips.isdisjoint(val.render(i).tobytes() for i in range(16))
    assert np.bincount([a[i]["label"] for i in range(16)]).tolist() == [2] * 8
    lengths = [a.render(i).size / SR for i in range(16)]
    assert 1.0 <= min(lengths) and max(lengths) <= 4.0
    item = a[0]
    assert item["fbank"].shape == (1, 64, 32) and item["path"].startswith("embedded://audio/train/")
    assert isinstance(build_dataset("embedded", kind="audio", num_clips=4), EmbeddedAudioDataset)


def _pooled(ds: EmbeddedAudioDataset) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    for i in range(len(ds)):
        item = ds[i]
        fbank = item["fbank"][0]
        fbank = fbank[fbank.std(1) > 1e-6]  # drop the padding frames
        energy = fbank.mean(1)
        event = fbank[energy > energy.median()]  # the louder half of the frames holds the sound
        profile = event.mean(0) - event.mean()  # spectral shape, loudness removed
        feats.append(torch.cat([profile, event.std(0), (event[1:] - event[:-1]).abs().mean(0)]))
        labels.append(item["label"])
    return torch.stack(feats), torch.tensor(labels)


def test_embedded_is_separable_by_nearest_class_mean():
    x, y = _pooled(EmbeddedAudioDataset("train", num_clips=240))
    xv, yv = _pooled(EmbeddedAudioDataset("val", num_clips=160))
    centres = torch.stack([x[y == c].mean(0) for c in range(8)])
    accuracy = float((torch.cdist(xv, centres).argmin(1) == yv).float().mean())
    assert accuracy > 0.4  # chance is 0.125


def test_compute_fbank_stats_on_known_signal(tmp_path):
    sig = tone(1000, 1.0)
    path = write(tmp_path / "t.wav", sig)
    reference = kaldi_fbank(load_audio(path), SR, 32, None).double()  # the file holds 16-bit PCM
    mean, std = compute_fbank_stats([path, str(tmp_path / "missing.wav")], num_mel_bins=32)
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(float(reference.mean()), rel=1e-6)
    assert std == pytest.approx(float(reference.std(unbiased=False)), rel=1e-6)
    ds = AudioDataset(tmp_path, num_mel_bins=32)
    assert compute_fbank_stats(ds) == pytest.approx((mean, std), rel=1e-6)


def test_sample_weights_inverse_frequency(tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [["a"], ["a"], ["a"], ["b"], ["a", "b"], []]
    manifest.write_text("\n".join(json.dumps({"path": f"{i}.wav", "labels": r}) for i, r in enumerate(rows)))
    weights = sample_weights(AudioDataset(manifest))
    wa, wb = 1000 / 4.01, 1000 / 2.01  # "a" appears 4 times, "b" twice
    torch.testing.assert_close(weights, torch.tensor([wa, wa, wa, wb, wa + wb, 0.0], dtype=torch.float64))
    sampler = torch.utils.data.WeightedRandomSampler(weights, 10)
    assert len(list(sampler)) == 10
