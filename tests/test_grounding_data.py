"""Grounding data: multilingual scenes (deterministic, disjoint, grammatical, boxes on the objects), region
features, the Multi30K-layout writer and reader (bad files counted and skipped), and the subword tokenizer."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from percli.core.data.captioned import COLOURS
from percli.core.data.images import BadSample
from percli.core.data.shards import BadRecords
from percli.grounding.multi30k import FeatureStore, GroundedCaptions, collate_regions, read_captions
from percli.grounding.scenes import (
    DESCRIPTOR_DIM,
    LANGUAGES,
    SHAPE_CLASSES,
    TEMPLATES,
    GroundedScene,
    SceneObject,
    _render,
    caption,
    make_scene,
    region_descriptors,
    region_features,
    sts_gold,
    write_multi30k,
)
from percli.grounding.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

SPLITS = ("train", "val", "test", "mono")


# ------------------------------------------------------------------------------------------------ scenes


def test_same_arguments_give_the_same_scene_and_splits_are_disjoint():
    a, b = make_scene("train", 7, seed=3), make_scene("train", 7, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert (a.key, a.objects, a.captions, a.background) == (b.key, b.objects, b.captions, b.background)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8 and a.boxes.dtype == np.float32
    assert not np.array_equal(a.image, make_scene("train", 7, seed=4).image)
    images = {split: {make_scene(split, i).image.tobytes() for i in range(40)} for split in SPLITS}
    assert all(len(v) == 40 for v in images.values())
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            assert not images[first] & images[second], (first, second)
    assert make_scene("val", 12).key == "val_00012"


# German and French word of each shape and colour, as a reader would check them (colour: stem / both genders).
_GERMAN_NOUNS = {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "star": "Stern", "ring": "Ring",
                 "cross": "Kreuz", "ellipse": "Ellipse"}
_FRENCH_NOUNS = {"circle": "cercle", "square": "carré", "triangle": "triangle", "star": "étoile", "ring": "anneau",
                 "cross": "croix", "ellipse": "ellipse"}
_GERMAN_COLOURS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "violett",
                   "orange": "orangefarben", "white": "weiß", "black": "schwarz"}
_FRENCH_COLOURS = {"red": ("rouge",), "green": ("vert", "verte"), "blue": ("bleu", "bleue"), "yellow": ("jaune",),
                   "purple": ("violet", "violette"), "orange": ("orange",), "white": ("blanc", "blanche"),
                   "black": ("noir", "noire")}


def test_captions_name_every_object_in_every_language_in_the_same_order():
    for index in range(60):
        scene = make_scene("train", index)
        en, de, fr = (scene.captions[lang].rstrip(".").split() for lang in LANGUAGES)
        for obj in scene.objects:
            assert obj.shape in en and obj.colour in en and obj.size in en
            assert _GERMAN_NOUNS[obj.shape] in de
            assert any(w.startswith(_GERMAN_COLOURS[obj.colour]) for w in de)
            assert _FRENCH_NOUNS[obj.shape] in fr and set(_FRENCH_COLOURS[obj.colour]) & set(fr)
        # Parallel: the shapes come in the same order in all three languages.
        order = [o.shape for o in (scene.objects[::-1] if TEMPLATES[scene.template] == "right_to_left"
                                   else scene.objects)]
        assert [w for w in en if w in SHAPE_CLASSES] == order
        assert [w for w in de if w in _GERMAN_NOUNS.values()] == [_GERMAN_NOUNS[s] for s in order]
        assert [w for w in fr if w in _FRENCH_NOUNS.values()] == [_FRENCH_NOUNS[s] for s in order]
    assert len({make_scene("train", i).template for i in range(60)}) == len(TEMPLATES)


_STAR = SceneObject("star", "red", "large", "left")
_ELLIPSE = SceneObject("ellipse", "blue", "small", "middle")
_TRIANGLE = SceneObject("triangle", "yellow", "small", "right")


@pytest.mark.parametrize(("objects", "background", "language", "template", "expected"), [
    ((_STAR, _ELLIPSE, _TRIANGLE), "green", "de", 0,
     "Ein großer roter Stern links, eine kleine blaue Ellipse in der Mitte und ein kleines gelbes Dreieck rechts."),
    ((_STAR, _ELLIPSE, _TRIANGLE), "green", "de", 1,  # "es gibt" + accusative: only the masculine changes
     "Es gibt einen großen roten Stern links, eine kleine blaue Ellipse in der Mitte und ein kleines gelbes "
     "Dreieck rechts."),
    ((_STAR, _ELLIPSE, _TRIANGLE), "green", "fr", 0,
     "Une grande étoile rouge à gauche, une petite ellipse bleue au milieu et un petit triangle jaune à droite."),
    ((SceneObject("star", "green", "large", "left"), SceneObject("cross", "white", "small", "right")), "black",
     "fr", 2, "Sur fond noir : une grande étoile verte à gauche et une petite croix blanche à droite."),
    ((SceneObject("circle", "white", "large", "middle"),), "orange", "de", 2,
     "Auf orangefarbenem Hintergrund: ein großer weißer Kreis in der Mitte."),
    ((SceneObject("square", "purple", "small", "left"),), "orange", "en", 3,
     "One shape on an orange background: a small purple square on the left."),
    ((_STAR, _TRIANGLE), "green", "en", 4, "From right to left: a small yellow triangle on the right and a large red "
     "star on the left."),
    ((_STAR, _TRIANGLE), "green", "fr", 3,
     "Deux formes sur fond vert : une grande étoile rouge à gauche et un petit triangle jaune à droite."),
])
def test_captions_agree_in_gender_case_and_order(objects, background, language, template, expected):
    assert caption(objects, background, language, template) == expected


def _background_distance(scene: GroundedScene) -> np.ndarray:
    return np.linalg.norm(scene.image / 255.0 - np.array(COLOURS[scene.background]), axis=-1)  # [H, W]


def test_boxes_cover_the_rendered_objects():
    for index in range(40):
        scene = make_scene("val", index)
        far = _background_distance(scene) > 0.2  # noise stays below 0.2; the closest two colours are 0.43 apart
        inside = np.zeros_like(far)
        assert len(scene.boxes) == len(scene.objects)
        assert np.all((scene.boxes >= 0) & (scene.boxes <= 1))
        assert np.all(np.diff(scene.boxes[:, 0]) > 0)  # left to right
        for x0, y0, x1, y1 in np.round(scene.boxes * 64).astype(int):
            assert far[y0:y1, x0:x1].sum() >= 8  # the object is in its box
            inside[y0:y1, x0:x1] = True
        assert not (far & ~inside).any()  # and nothing of it outside


def test_region_features_are_deterministic_and_tell_shapes_apart():
    scene = make_scene("test", 3)
    features = region_features(scene.image, scene.boxes)
    assert features.shape == (len(scene.objects) + 1, 256) and features.dtype == np.float32
    assert np.array_equal(features, region_features(scene.image.copy(), scene.boxes.copy()))
    assert region_features(scene.image, scene.boxes, dim=0).shape == (len(scene.objects) + 1, DESCRIPTOR_DIM)
    assert region_features(scene.image, scene.boxes, dim=64).shape[1] == 64
    # Leave-one-out nearest neighbour on the shape columns of the raw descriptor, over rotations and colours.
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for label, shape in enumerate(SHAPE_CLASSES):
        for r in range(6):
            background = list(COLOURS)[r]
            fill = [c for c in COLOURS if c != background][r]
            image, boxes = _render([SceneObject(shape, fill, "large", "middle")], background, rng, 64)
            rows.append(region_descriptors(image, boxes)[0, 3:18])
            labels.append(label)
    x, y = np.array(rows), np.array(labels)
    z = (x - x.mean(0)) / (x.std(0) + 1e-6)
    distance = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    assert (y[distance.argmin(1)] == y).mean() >= 0.9


def test_sts_gold_counts_matching_attributes_aligned_by_position():
    def scene(objects, background):
        return GroundedScene("k", np.zeros((1, 1, 3), np.uint8), np.zeros((len(objects), 4), np.float32),
                             tuple(objects), background, {}, 0)

    a = scene([SceneObject("star", "red", "large", "left")], "green")
    b = scene([SceneObject("star", "red", "small", "left"), SceneObject("circle", "blue", "small", "right")], "green")
    c = scene([SceneObject("circle", "blue", "small", "middle")], "white")
    gold = sts_gold([a, b, c], 0)
    assert gold[0] == 5.0
    # slots: background + 2 positions x 3; matched: background, shape and colour on the left
    assert gold[1] == pytest.approx(5 * 3 / 7)
    assert gold[2] == 0.0


# ------------------------------------------------------------------------------------------------ corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_multi30k(tmp_path_factory.mktemp("m30k") / "corpus", seed=1, num_train=10, num_mono=11, num_val=6,
                          num_test=6, feature_dim=32, num_sts=60)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_write_multi30k_layout(corpus: Path):
    for split, n in (("train", 10), ("val", 6), ("test", 6)):
        images = _lines(corpus / f"{split}_images.txt")
        assert len(images) == n and all(name.endswith(".png") for name in images)
        assert all(len(_lines(corpus / f"{split}.{lang}")) == n for lang in LANGUAGES)
        assert (corpus / "images" / images[0]).is_file()
    parallel = {split: {n[:-4] for n in _lines(corpus / f"{split}_images.txt")} for split in ("train", "val", "test")}
    mono = {lang: _lines(corpus / f"mono.{lang}.ids") for lang in LANGUAGES}
    assert sorted(len(v) for v in mono.values()) == [3, 4, 4]
    assert all(len(_lines(corpus / f"mono.{lang}")) == len(mono[lang]) for lang in LANGUAGES)
    sets = [set(v) for v in (*mono.values(), *parallel.values())]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 10 + 11 + 6 + 6  # all disjoint
    store = FeatureStore(corpus / "features")
    for image_id in set().union(*sets):
        assert store.get(image_id).shape[1] == 32
    sts = [line.split("\t") for line in _lines(corpus / "sts.tsv")]
    assert len(sts) == 60 and all(len(row) == 3 and 0 <= float(row[0]) <= 5 for row in sts)
    assert len({round(float(row[0]), 1) for row in sts}) >= 5  # a spread of similarities
    assert any(float(row[0]) == 5 and row[1] != row[2] for row in sts)  # one scene, two templates
    assert "STS gold" in (corpus / "README.txt").read_text(encoding="utf-8")
    marker_time = (corpus / ".complete").stat().st_mtime_ns
    assert write_multi30k(corpus, seed=1, num_train=10, num_mono=11, num_val=6, num_test=6, feature_dim=32,
                          num_sts=60) == corpus
    assert (corpus / ".complete").stat().st_mtime_ns == marker_time  # reused, not rebuilt


def test_grounded_captions_group_languages_and_collate(corpus: Path):
    parallel = GroundedCaptions(corpus, "train", LANGUAGES)
    assert len(parallel) == 10 and parallel.bad.count == 0
    item = parallel[0]
    assert item["image_id"] == "train_00000" and set(item["captions"]) == set(LANGUAGES)
    assert item["captions"]["de"] == [make_scene("train", 0, seed=1).captions["de"]]
    mono = GroundedCaptions(corpus, "mono", LANGUAGES, max_regions=2)
    assert len(mono) == 11 and all(len(mono[i]["captions"]) == 1 for i in range(len(mono)))
    assert all(mono[i]["regions"].shape[0] <= 2 for i in range(len(mono)))
    regions, mask = collate_regions([parallel[i] for i in range(4)])
    counts = [parallel[i]["regions"].shape[0] for i in range(4)]
    assert len(set(counts)) > 1  # something to pad
    assert regions.shape == (4, max(counts), 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == counts
    assert torch.equal(regions[0, : counts[0]], parallel[0]["regions"])
    assert (regions[~mask] == 0).all()


@pytest.fixture
def broken(corpus: Path, tmp_path: Path) -> Path:
    """A copy of the corpus with one bad thing per train image 1..8."""
    root = tmp_path / "broken"
    shutil.copytree(corpus, root)
    features = root / "features"
    english = _lines(root / "train.en")
    english[1] = "   "  # empty caption
    (root / "train.en").write_text("\n".join(english) + "\n", encoding="utf-8")
    (features / "train_00002.npy").unlink()  # unknown image id
    good = (features / "train_00003.npy").read_bytes()
    (features / "train_00003.npy").write_bytes(good[: len(good) - 40])  # truncated
    (features / "train_00004.npy").write_bytes(b"")  # zero-length
    (features / "train_00005.npy").write_text("0.1 0.2 0.3\n")  # text named .npy
    np.save(features / "train_00006.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)  # pickled objects
    np.save(features / "train_00007.npy", np.zeros((3, 16), np.float32))  # wrong width
    np.save(features / "train_00008.npy", np.zeros(32, np.float32))  # not [R, D]
    return root


def test_reader_counts_and_skips_bad_captions_and_features(broken: Path):
    bad = BadRecords()
    dataset = GroundedCaptions(broken, "train", "en", bad=bad)
    assert [dataset[i]["image_id"] for i in range(len(dataset))] == ["train_00000", "train_00009"]
    assert bad.count == 8
    reasons = " | ".join(e["reason"] for e in bad.examples)
    for expected in ("empty caption", "no feature file", "truncated", "not a .npy array", "dtype object",
                     "width 16", "shape (32,)"):
        assert expected in reasons
    store = FeatureStore(broken / "features")
    for image_id in ("train_00003", "train_00004", "train_00005", "train_00006", "train_00008"):
        with pytest.raises(BadSample):
            store.get(image_id)
    with pytest.raises(BadSample, match="bad image id"):
        store.get("../train_00000")


def test_caption_and_id_line_mismatch_and_missing_files_are_errors(corpus: Path, tmp_path: Path):
    (tmp_path / "train.de").write_text("Ein Kreis.\nEin Stern.\n", encoding="utf-8")
    (tmp_path / "train_images.txt").write_text("1.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.de has 2 lines but .*train_images\.txt has 1"):
        read_captions(tmp_path, "train", "de")
    with pytest.raises(ValueError, match=r"train\.fr is missing"):
        read_captions(tmp_path, "train", "fr")


def test_multi30k_image_names_resolve_to_feature_ids(tmp_path: Path):
    """Multi30K's train_images.txt names .jpg files; several captions of one image are grouped."""
    (tmp_path / "features").mkdir()
    for image_id, regions in (("1000092795", 3), ("10002456", 5)):
        np.save(tmp_path / "features" / f"{image_id}.npy", np.ones((regions, 8), np.float64))
    (tmp_path / "train.en").write_text("Two young guys outside.\nSeveral men in hard hats.\nTwo men.\n", "utf-8")
    (tmp_path / "train_images.txt").write_text("1000092795.jpg\n10002456.jpg\n1000092795.jpg\n", "utf-8")
    assert read_captions(tmp_path, "train", "en")[1] == ("10002456", "Several men in hard hats.")
    dataset = GroundedCaptions(tmp_path, "train", ["en"])
    assert len(dataset) == 2 and dataset[0]["captions"] == {"en": ["Two young guys outside.", "Two men."]}
    assert dataset[1]["regions"].dtype == torch.float32 and dataset[1]["regions"].shape == (5, 8)
    np.savez(tmp_path / "features.npz", **{"1000092795": np.ones((2, 8), np.float32)})
    from_archive = GroundedCaptions(tmp_path, "train", "en", features=tmp_path / "features.npz")
    assert len(from_archive) == 1 and from_archive.bad.count == 1 and from_archive[0]["regions"].shape == (2, 8)


# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    texts = [make_scene("train", i).captions[lang] for i in range(80) for lang in LANGUAGES]
    texts += ["Très bien, ça marche à côté!", "Über Größe und Maße."]
    folder = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, 400, folder)
    return folder


@pytest.mark.parametrize("text", ["Es gibt einen großen weißen Kreis rechts.", "Über Größe und Maße.",
                                  "Sur fond vert : une petite étoile blanche à côté, très bien!"])
def test_tokenizer_round_trips_accented_text(tokenizer_dir: Path, text: str):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids and tokenizer.decode(ids) == text


def test_tokenizer_specials_batch_and_reload(tokenizer_dir: Path):
    tokenizer = load_tokenizer(tokenizer_dir / "tokenizer.json")
    specials = [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id]
    assert specials == [0, 1, 2, 3, 4]
    assert [tokenizer.lang_id(lang) for lang in LANGUAGES] == [5, 6, 7]
    assert tokenizer.vocab_size <= 400 and len(SPECIAL_TOKENS) == 8
    with pytest.raises(ValueError, match="no tag for language 'it'"):
        tokenizer.lang_id("it")
    texts = ["Ein Kreis.", "Une grande étoile rouge à gauche et un petit cercle bleu à droite."]
    ids, mask = tokenizer.batch(texts, max_len=12)
    short = tokenizer.encode(texts[0])
    assert ids.shape == mask.shape and ids.shape[1] == 12 and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0, : len(short) + 2].tolist() == [2, *short, 3]
    assert mask[0].sum() == len(short) + 2 and (ids[0][~mask[0]] == 0).all()
    assert mask[1].all() and ids[1, -1] == 3  # cut to max_len, </s> kept
    assert tokenizer.batch(texts, 40, add_bos_eos=False)[0][0, : len(short)].tolist() == short
    # The same ids after a reload, and through the Hugging Face wrapper.
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, pad_token="<pad>", unk_token="<unk>",
                                 bos_token="<s>", eos_token="</s>", mask_token="<mask>")
    hf.save_pretrained(tokenizer_dir / "hf")
    for other in (load_tokenizer(tokenizer_dir), load_tokenizer(tokenizer_dir / "hf")):
        assert torch.equal(other.batch(texts, 40)[0], tokenizer.batch(texts, 40)[0])
        assert other.pad_id == 0 and other.decode(other.encode(texts[1])) == texts[1]
