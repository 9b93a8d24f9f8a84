"""Embedded captioning scenes: deterministic, disjoint splits, alt-texts that are not the caption,
true captions that the pixels confirm, and the folder writer."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from percli.captioning.scenes import COUNT_WORDS, POSITIONS, SceneDataset, make_scene, write_scene_folder
from percli.core.data.captioned import COLOURS


def test_same_arguments_give_the_same_scene():
    a, b = make_scene("train", 7, seed=3), make_scene("train", 7, seed=3)
    assert np.array_equal(a.image, b.image) and (a.caption, a.alt_text, a.key) == (b.caption, b.alt_text, b.key)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64, 3)
    assert not np.array_equal(a.image, make_scene("train", 7, seed=4).image)
    assert make_scene("val", 0, size=96).image.shape == (96, 96, 3)


def test_splits_are_disjoint_streams():
    images = {split: {make_scene(split, i).image.tobytes() for i in range(100)} for split in ("train", "val", "test")}
    assert all(len(v) == 100 for v in images.values())
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    keys = {make_scene(split, 0).key for split in ("train", "val", "test")}
    assert len(keys) == 3


def test_alt_texts_are_corrupted_captions():
    scenes = [make_scene("train", i) for i in range(300)]
    alts = [s.alt_text for s in scenes]
    assert all(s.alt_text != s.caption for s in scenes)
    assert 0.03 < sum(a == "" for a in alts) / len(alts) < 0.15  # some pages carry no alt-text at all
    assert any(a.endswith(".jpg") for a in alts) and any("stock photo" in a or "click to enlarge" in a for a in alts)
    # Mostly about the picture, yet often naming a colour or shape the caption does not have.
    colours = set(COLOURS)
    wrong = [s for s in scenes if any(w in colours and w not in s.caption.split() for w in s.alt_text.lower().split())]
    assert 0.05 < len(wrong) / len(scenes) < 0.5


def _nearest_colour(rgb):
    return min(COLOURS, key=lambda name: np.linalg.norm(np.array(COLOURS[name]) - rgb))


@pytest.mark.parametrize("index", range(40))
def test_caption_is_read_off_the_pixels(index):
    """Count, background, left-to-right order, colour, position and size all follow from the image."""
    scene = make_scene("val", index)
    pixels = scene.image.astype(np.float64) / 255.0
    background = _nearest_colour(np.median(pixels.reshape(-1, 3), axis=0))
    # The noise (std 0.03 a channel) stays far below 0.2; the closest two colours are 0.43 apart.
    mask = np.linalg.norm(pixels - np.array(COLOURS[background]), axis=-1) > 0.2
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    objects_at = [label for label in range(1, len(sizes)) if sizes[label] >= 6]  # not an anti-aliased star tip
    count, found = len(objects_at), []
    for label in objects_at:
        ys, xs = np.nonzero(labels == label)
        colour = _nearest_colour(np.median(pixels[ys, xs], axis=0))
        diameter = np.max(np.hypot(xs[:, None] - xs[None], ys[:, None] - ys[None]))
        size = "large" if diameter > 13.3 else "small"  # widest small 12.5 px, narrowest large 14.0
        found.append((xs.mean(), f"a {size} {colour}", POSITIONS[int(xs.mean() // (64 / 3))]))
    found.sort()
    assert scene.caption.startswith(f"{COUNT_WORDS[count - 1]} on a{'n' if background[0] in 'aeiou' else ''} "
                                    f"{background} background: ")
    objects = scene.caption.split(": ", 1)[1].rstrip(".").replace(" and ", ", ").split(", ")
    assert len(objects) == count
    for (_, start, position), phrase in zip(found, objects):
        assert phrase.startswith(start + " ") and phrase.endswith(position), (scene.caption, found)


def test_dataset_items():
    data = SceneDataset("val", 5, seed=1)
    item = data[2]
    scene = make_scene("val", 2, seed=1)
    assert len(data) == 5 and item["image"].shape == (3, 64, 64) and str(item["image"].dtype) == "torch.uint8"
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), scene.image)
    assert (item["caption"], item["alt_text"], item["key"]) == (scene.caption, scene.alt_text, scene.key)
    with pytest.raises(IndexError):
        data[5]
    with pytest.raises(ValueError, match="split"):
        SceneDataset("dev", 5)


def test_folder_writer(tmp_path):
    out = write_scene_folder(tmp_path / "scenes", "test", 4, seed=2)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == [make_scene("test", i, seed=2).key for i in range(4)]
    for i, record in enumerate(records):
        scene = make_scene("test", i, seed=2)
        assert set(record) == {"key", "image", "alt_text", "caption"}
        assert (record["caption"], record["alt_text"]) == (scene.caption, scene.alt_text)
        assert np.array_equal(np.asarray(Image.open(out / record["image"])), scene.image)  # PNG is lossless
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
