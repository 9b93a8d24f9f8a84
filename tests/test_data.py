import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from percli.core.data import (
    HIERA_VIDEO_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadSample,
    EmbeddedShapesDataset,
    ImageFolderDataset,
    JsonlImageDataset,
    MixupCutmix,
    VideoClipDataset,
    build_dataset,
    finetune_transform,
    mae_transform,
    parse_rand_augment,
    video_transform,
)
from percli.core.data.video import clip_indices, decord_available


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    write_image(root / "cat" / "a.jpg", (255, 0, 0))
    write_image(root / "cat" / "nested" / "b.png", (250, 0, 0))
    write_image(root / "dog" / "c.png", (0, 0, 255))
    (root / "dog" / "notes.txt").write_text("not an image")
    write_image(root / ".hidden" / "d.png", (0, 255, 0))
    return root


def test_image_folder_reads_classes_and_labels(class_folder: Path) -> None:
    ds = ImageFolderDataset(class_folder)
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 3  # the .txt and the hidden folder are ignored
    items = [ds[i] for i in range(len(ds))]
    assert [it["label"] for it in items] == [0, 0, 1]
    assert items[0]["image"].shape == (3, 30, 40)
    assert items[0]["image"].dtype == torch.float32
    assert items[0]["image"][0].mean() == pytest.approx(1.0, abs=0.02)  # red channel of a red jpg
    assert items[2]["path"].endswith("c.png")


def test_flat_folder_is_unlabeled(tmp_path: Path) -> None:
    write_image(tmp_path / "x.png", (1, 2, 3))
    write_image(tmp_path / "y.webp", (1, 2, 3))
    ds = build_dataset(str(tmp_path))
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == [] and len(ds) == 2 and ds[0]["label"] == -1


def test_manifest_resolves_paths_and_class_names(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.png", (255, 255, 255))
    write_image(tmp_path / "imgs" / "b.png", (0, 0, 0))
    lines = [
        {"path": "imgs/a.png", "label": "zebra"},
        {"path": str(tmp_path / "imgs" / "b.png"), "label": "ant"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = build_dataset(str(manifest))
    assert isinstance(ds, JsonlImageDataset)
    assert ds.classes == ["ant", "zebra"]
    assert [ds[i]["label"] for i in range(2)] == [1, 0]
    assert ds[0]["image"].mean() == pytest.approx(1.0)


def test_manifest_with_integer_labels_infers_class_count(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", (0, 0, 0))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "label": 3}\n{"path": "a.png"}\n')
    ds = JsonlImageDataset(manifest)
    assert ds.classes == ["0", "1", "2", "3"]
    assert [ds[0]["label"], ds[1]["label"]] == [3, -1]


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        '["a.png", 1]',
        '{"label": 1}',
        '{"path": "a.png", "label": 1.5}',
        '{"path": "a.png", "label": true}',
    ],
)
def test_malformed_manifest_line_is_counted_with_file_and_line(tmp_path: Path, bad_line: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.png", "label": 0}\n\n' + bad_line + "\n")
    ds = JsonlImageDataset(manifest)  # one record policy for every reader: counted, named, skipped
    assert len(ds) == 1 and ds.bad_records.count == 1
    assert ds.bad_records.examples[0]["file"] == str(manifest) and ds.bad_records.examples[0]["line"] == 3
    manifest.write_text(bad_line + "\n")
    with pytest.raises(ValueError, match="no usable entries"):
        JsonlImageDataset(manifest)


def test_corrupt_image_raises_bad_sample_with_its_path(class_folder: Path) -> None:
    bad = class_folder / "cat" / "x.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    truncated = class_folder / "dog" / "t.png"
    truncated.write_bytes((class_folder / "dog" / "c.png").read_bytes()[:40])
    ds = ImageFolderDataset(class_folder, transform=mae_transform(16))
    by_path = {path: i for i, (path, _) in enumerate(ds.samples)}
    for path in (bad, truncated):
        with pytest.raises(BadSample) as info:
            ds[by_path[str(path)]]
        assert info.value.path == str(path) and info.value.reason
    assert ds[by_path[str(class_folder / "dog" / "c.png")]]["image"].shape == (3, 16, 16)


def test_missing_manifest_file_is_a_bad_sample(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "gone.png", "label": 0}\n')
    with pytest.raises(BadSample, match="gone.png"):
        JsonlImageDataset(manifest)[0]


def test_bad_sample_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(BadSample("/x.jpg", "truncated")))
    assert (err.path, err.reason, str(err)) == ("/x.jpg", "truncated", "/x.jpg: truncated")


def test_datasets_and_transforms_pickle_for_dataloader_workers(class_folder: Path) -> None:
    ds = ImageFolderDataset(class_folder, transform=finetune_transform(16, train=True))
    clone = pickle.loads(pickle.dumps(ds))
    torch.manual_seed(0)
    a = ds[0]["image"]
    torch.manual_seed(0)
    assert torch.equal(clone[0]["image"], a)
    for obj in (video_transform(16, train=True), MixupCutmix(3), EmbeddedShapesDataset()):
        pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("source", ["/no/such/folder", "notes.txt"])
def test_build_dataset_rejects_unknown_source(tmp_path: Path, source: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="expected 'embedded'"):
        build_dataset(source)


def _pil(seed: int = 0, size: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        lambda: mae_transform(32),
        lambda: finetune_transform(32, train=True),
        lambda: finetune_transform(32, train=False),
    ],
    ids=["mae", "finetune-train", "eval"],
)
def test_transforms_shape_and_reproducible_under_manual_seed(make) -> None:
    transform, img = make(), _pil()
    torch.manual_seed(7)
    a = transform(img)
    torch.manual_seed(7)
    b = transform(img)
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)


def test_normalisation_maps_mean_colour_to_zero() -> None:
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    img = Image.new("RGB", (40, 40), mean_colour)
    for transform in (mae_transform(24), finetune_transform(24, train=False)):
        out = transform(img)
        assert out.abs().max() < 0.01
    white = finetune_transform(24, train=False)(Image.new("RGB", (40, 40), (255, 255, 255)))
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert white.mean((1, 2)).tolist() == pytest.approx(expected, abs=1e-3)


def test_eval_transform_resizes_by_crop_pct_then_centre_crops() -> None:
    # A 64 px image with a bright 56 px centre: 56/64 = crop_pct, so the crop is all bright.
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[4:60, 4:60] = 255
    out = finetune_transform(56, (0, 0, 0), (1, 1, 1), train=False, crop_pct=0.875)(Image.fromarray(arr))
    assert out.shape == (3, 56, 56) and out.min() > 0.9


def test_training_transforms_vary_between_draws() -> None:
    transform, img = finetune_transform(32, train=True), _pil()
    torch.manual_seed(0)
    assert not torch.equal(transform(img), transform(img))


def test_rand_augment_string_parsing() -> None:
    ra = parse_rand_augment("rand-m7-n3-mstd0.25-inc1")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std) == (7.0, 3, 0.25)
    with pytest.raises(ValueError, match="unsupported augmentation policy"):
        parse_rand_augment("augmix-m5")
    with pytest.raises(ValueError, match="'w0'"):
        parse_rand_augment("rand-m9-w0")


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0), (0.0, 0.0)], ids=str)
def test_mixup_cutmix_soft_targets_sum_to_one(mixup_alpha: float, cutmix_alpha: float) -> None:
    mix = MixupCutmix(5, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=0.1)
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    for seed in range(5):
        torch.manual_seed(seed)
        mixed, targets = mix(images, labels)
        assert mixed.shape == images.shape and targets.shape == (6, 5)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        assert targets.min() >= 0.1 / 5 - 1e-6  # smoothing keeps every class above zero
        torch.manual_seed(seed)
        again, targets_again = mix(images, labels)
        assert torch.equal(mixed, again) and torch.equal(targets, targets_again)
    if mixup_alpha == cutmix_alpha == 0:
        assert torch.equal(mixed, images)
        assert targets[0].tolist() == pytest.approx([0.92, 0.02, 0.02, 0.02, 0.02])


def test_cutmix_target_weight_matches_pasted_area() -> None:
    mix = MixupCutmix(2, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    images = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])  # sample 1 is all ones
    torch.manual_seed(3)
    mixed, targets = mix(images, torch.tensor([0, 1]))
    pasted = mixed[0].mean().item()  # fraction of sample 0 now taken from sample 1
    assert targets[0].tolist() == pytest.approx([1 - pasted, pasted])
    assert torch.equal(images[0], torch.zeros(1, 16, 16))  # input not modified in place


def test_embedded_dataset_is_deterministic_balanced_and_splits_disjoint() -> None:
    train = EmbeddedShapesDataset("train", num_images=200, image_size=32, seed=0)
    again = EmbeddedShapesDataset("train", num_images=200, image_size=32, seed=0)
    val = EmbeddedShapesDataset("val", num_images=200, image_size=32, seed=0)
    other_seed = EmbeddedShapesDataset("train", num_images=200, image_size=32, seed=1)
    assert len(train.classes) == 10
    item = train[5]
    assert item["image"].shape == (3, 32, 32) and 0.0 <= item["image"].min() <= item["image"].max() <= 1.0
    assert np.array_equal(train.render(17), again.render(17))
    assert not np.array_equal(train.render(17), other_seed.render(17))
    train_hashes = {train.render(i).tobytes() for i in range(len(train))}
    assert len(train_hashes) == len(train)
    assert train_hashes.isdisjoint(val.render(i).tobytes() for i in range(len(val)))
    counts = np.bincount([train[i]["label"] for i in range(len(train))], minlength=10)
    assert counts.min() >= 0.8 * counts.mean()
    assert pickle.loads(pickle.dumps(train)).render(3).tobytes() == train.render(3).tobytes()


def test_embedded_dataset_generates_1000_images_in_under_2s() -> None:
    ds = EmbeddedShapesDataset("train", num_images=1000, image_size=64)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds.render(i)
    assert time.perf_counter() - start < 2.0


def test_embedded_classes_are_separable_by_a_trivial_classifier() -> None:
    # Nearest class mean on gradient-magnitude histograms is far from a real model, but it must
    # already beat chance (10%) clearly if the classes carry shape information.
    def features(ds: EmbeddedShapesDataset) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for i in range(len(ds)):
            grey = ds.render(i).astype(np.float32).mean(-1)
            gy, gx = np.abs(np.diff(grey, axis=0))[:, :-1], np.abs(np.diff(grey, axis=1))[:-1]
            edges = (gx + gy) > 40
            feats.append([gx[edges].sum() / (gy[edges].sum() + 1), edges.mean(), (gx > 40).mean(), (gy > 40).mean()])
            labels.append(ds.label(i))
        return np.array(feats), np.array(labels)

    x_train, y_train = features(EmbeddedShapesDataset("train", num_images=400, image_size=48))
    x_val, y_val = features(EmbeddedShapesDataset("val", num_images=200, image_size=48))
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mu) / sd, (x_val - mu) / sd
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(10)])
    pred = np.argmin(((x_val[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y_val).mean() > 0.2


def write_brightness_video(path: Path, num_frames: int = 40, size: int = 64) -> None:
    """MP4 whose frame i is uniformly grey at brightness 6 * i."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": "0"}  # lossless, so brightness identifies the frame exactly
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 6 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """Frame index of each frame of a [C, T, H, W] clip in [0, 1], read back from its brightness."""
    return (clip.mean((0, 2, 3)) * 255 / 6).round().int().tolist()


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    (root / "walk").mkdir()
    (root / "run").mkdir()
    write_brightness_video(root / "walk" / "long.mp4", num_frames=40)
    write_brightness_video(root / "run" / "short.mp4", num_frames=10)
    return root


BACKENDS = ["pyav"] + (["decord"] if decord_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_clip_frame_order_and_stride(video_folder: Path, backend: str) -> None:
    ds = VideoClipDataset(video_folder, num_frames=16, sampling_rate=2, train=False, backend=backend)
    assert ds.classes == ["run", "walk"]
    item = ds[1]
    assert item["video"].shape == (3, 16, 64, 64) and item["label"] == 1
    # 40 frames, span 31: the centred clip starts at frame (40 - 31) // 2 = 4.
    assert frame_numbers(item["video"]) == list(range(4, 36, 2))

    train_ds = VideoClipDataset(video_folder, num_frames=8, sampling_rate=4, train=True, backend=backend)
    starts = set()
    for seed in range(6):
        torch.manual_seed(seed)
        frames = frame_numbers(train_ds[1]["video"])
        assert frames == list(range(frames[0], frames[0] + 29, 4))
        starts.add(frames[0])
    assert len(starts) > 1 and max(starts) <= 40 - 29


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_video_repeats_last_frame(video_folder: Path, backend: str) -> None:
    ds = VideoClipDataset(video_folder, num_frames=16, sampling_rate=4, train=True, backend=backend)
    assert frame_numbers(ds[0]["video"]) == [0, 4, 8] + [9] * 13


def test_clip_indices_centre_and_padding() -> None:
    assert clip_indices(100, 16, 4, train=False) == list(range(19, 80, 4))
    assert clip_indices(5, 4, 2, train=False) == [0, 2, 4, 4]


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_corrupt_video_raises_bad_sample(tmp_path: Path, video_folder: Path, backend: str) -> None:
    folder = tmp_path / "vids" / "cls"
    folder.mkdir(parents=True)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    truncated = (video_folder / "walk" / "long.mp4").read_bytes()[:300]
    (folder / "truncated.mp4").write_bytes(truncated)
    ds = VideoClipDataset(tmp_path / "vids", num_frames=4, sampling_rate=1, backend=backend)
    for i, (path, _) in enumerate(ds.samples):
        with pytest.raises(BadSample) as info:
            ds[i]
        assert info.value.path == path


def test_video_transform_shares_crop_across_frames_and_normalises(video_folder: Path) -> None:
    transform = video_transform(32, train=True)
    ds = build_dataset(str(video_folder), kind="video", transform=transform, num_frames=4, sampling_rate=1, train=False)
    torch.manual_seed(0)
    clip = ds[1]["video"]
    assert clip.shape == (3, 4, 32, 32)
    # Uniform frames stay uniform after any crop; undoing the normalisation (std 0.225 on every
    # channel) gives back the brightness of frames 18..21, the centred 4-frame clip of 40.
    brightness = clip.mean((2, 3)) * torch.tensor(HIERA_VIDEO_STD)[:, None] + torch.tensor(IMAGENET_MEAN)[:, None]
    assert (brightness * 255 / 6).round().tolist() == [[18.0, 19.0, 20.0, 21.0]] * 3

    frames = torch.randint(0, 256, (4, 3, 40, 48), dtype=torch.uint8)
    torch.manual_seed(1)
    out = transform(frames)
    assert out.shape == (4, 3, 32, 32)
    # Same crop on every frame: frame k of the clip's output equals the output for frame k alone.
    torch.manual_seed(1)
    assert torch.allclose(transform(frames[2:3])[0], out[2], atol=1e-5)
