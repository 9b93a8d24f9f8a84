"""Embedded multilingual grounding scenes: rendered shapes with parallel English, German and French captions,
region features, and a Multi30K-style corpus on disk.

Origin: written for percli (no published dataset). Scene ``index`` of a split is a pure function of
``(seed, split, index)``: a NumPy generator seeded with those numbers draws one to three objects on a plain
background (a colour of :data:`percli.core.data.captioned.COLOURS`), each in its own third of the picture
(left, middle, right) with a shape of :data:`SHAPE_CLASSES`, a fill colour other than the background and a
size (small or large, radii far enough apart to be read off the pixels at 64 px), then renders them with the
signed-distance shapes of :mod:`percli.core.data.embedded` and light pixel noise. ``train``, ``val``,
``test`` and ``mono`` (the images of the monolingual splits) draw from disjoint seed streams.

Every scene has one caption per language, all in the same template (drawn from the seed), so the captions
of one scene are translations of each other, e.g.

    en: "There is a large red star on the left and a small blue ellipse on the right."
    de: "Es gibt einen großen roten Stern links und eine kleine blaue Ellipse rechts."
    fr: "Il y a une grande étoile rouge à gauche et une petite ellipse bleue à droite."

German adjectives follow gender and case after the indefinite article, French ones gender (size before the
noun, colour after it). :func:`region_features` stands in for bottom-up detector features (one row per
object box plus one for the whole image). :func:`write_multi30k` writes the Multi30K layout that
:mod:`percli.grounding.multi30k` reads. Rendering plus region features cost about 2 ms per 64 px scene on one
CPU core.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from percli.core.data.captioned import COLOURS
from percli.core.data.embedded import CLASSES, _pixel_grid, _shape_sdf
from percli.core.data.paths import build_once

LANGUAGES: tuple[str, ...] = ("en", "de", "fr")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2, "mono": 3}  # seed stream of each split
# The untextured shapes: stripes and checkerboards cannot be told from a square at a 5 px radius.
SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse")
assert set(SHAPE_CLASSES) <= set(CLASSES)
POSITIONS: tuple[str, ...] = ("left", "middle", "right")
SIZES: tuple[str, ...] = ("small", "large")
TEMPLATES: tuple[str, ...] = ("list", "there_is", "background", "count", "right_to_left")
DESCRIPTOR_DIM = 26
_SCENE_STREAM = 47  # keeps these scenes apart from the other embedded sets' seed streams
_STS_STREAM = 48
_PROJECTION_SEED = 0x6A0_0D_ED  # fixed: every call, seed and split share one projection
_FORMAT_VERSION = 1  # bump when rendering, captions or features change, so cached folders are rebuilt
# Radius / image side, as percli.captioning.scenes: the smallest large shape is wider than the widest small one.
_RADIUS = {"small": 0.085, "large": 0.14}

# shape -> (English, German noun, German gender, French noun, French gender)
_SHAPE_WORDS: dict[str, tuple[str, str, str, str, str]] = {
    "circle": ("circle", "Kreis", "m", "cercle", "m"),
    "square": ("square", "Quadrat", "n", "carré", "m"),
    "triangle": ("triangle", "Dreieck", "n", "triangle", "m"),
    "star": ("star", "Stern", "m", "étoile", "f"),
    "ring": ("ring", "Ring", "m", "anneau", "m"),
    "cross": ("cross", "Kreuz", "n", "croix", "f"),
    "ellipse": ("ellipse", "Ellipse", "f", "ellipse", "f"),
}
# colour -> (German adjective stem, French masculine, French feminine)
_COLOUR_WORDS: dict[str, tuple[str, str, str]] = {
    "red": ("rot", "rouge", "rouge"),
    "green": ("grün", "vert", "verte"),
    "blue": ("blau", "bleu", "bleue"),
    "yellow": ("gelb", "jaune", "jaune"),
    "purple": ("violett", "violet", "violette"),
    "orange": ("orangefarben", "orange", "orange"),  # German "orange" does not decline; "orangefarben" does
    "white": ("weiß", "blanc", "blanche"),
    "black": ("schwarz", "noir", "noire"),
}
assert set(_COLOUR_WORDS) == set(COLOURS)
# German article and adjective ending after "ein" (mixed declension), by case and gender
_GERMAN_ARTICLE = {"nom": {"m": ("ein", "er"), "f": ("eine", "e"), "n": ("ein", "es")},
                   "acc": {"m": ("einen", "en"), "f": ("eine", "e"), "n": ("ein", "es")}}
_SIZE_WORDS = {"en": {"small": "small", "large": "large"}, "de": {"small": "klein", "large": "groß"},
               "fr": {"small": ("petit", "petite"), "large": ("grand", "grande")}}
_POSITION_WORDS = {"en": ("on the left", "in the middle", "on the right"), "de": ("links", "in der Mitte", "rechts"),
                   "fr": ("à gauche", "au milieu", "à droite")}
_AND = {"en": "and", "de": "und", "fr": "et"}
_THERE_IS = {"en": "there is", "de": "es gibt", "fr": "il y a"}
_RIGHT_TO_LEFT = {"en": "from right to left", "de": "von rechts nach links", "fr": "de droite à gauche"}
_COUNTS = {"en": ("one shape", "two shapes", "three shapes"), "de": ("eine Form", "zwei Formen", "drei Formen"),
           "fr": ("une forme", "deux formes", "trois formes")}


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: ``shape`` of SHAPE_CLASSES, ``colour`` of COLOURS, ``size`` of SIZES and
    ``position`` of POSITIONS."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class GroundedScene:
    """One rendered scene.

    Attributes:
        key: ``<split>_<index:05d>``, also the image id on disk.
        image: uint8 [H, W, 3].
        boxes: float32 [R, 4], (x0, y0, x1, y1) in [0, 1], one per object, left to right: the tight box of
            every pixel the object touches.
        objects: The R objects, left to right.
        background: Background colour name.
        captions: Language -> caption, all in template ``TEMPLATES[template]``.
        template: Index of the caption template.
    """

    key: str
    image: np.ndarray
    boxes: np.ndarray
    objects: tuple[SceneObject, ...]
    background: str
    captions: dict[str, str]
    template: int


# ---------------------------------------------------------------------------------------------- captions


def _noun_phrase(obj: SceneObject, language: str, case: str = "nom") -> str:
    """"a large red star on the left" in ``language`` (German in ``case``, "nom" or "acc")."""
    english, noun_de, gender_de, noun_fr, gender_fr = _SHAPE_WORDS[obj.shape]
    colour_de, colour_fr_m, colour_fr_f = _COLOUR_WORDS[obj.colour]
    where = _POSITION_WORDS[language][POSITIONS.index(obj.position)]
    if language == "en":
        return f"a {_SIZE_WORDS['en'][obj.size]} {obj.colour} {english} {where}"
    if language == "de":
        article, ending = _GERMAN_ARTICLE[case][gender_de]
        return f"{article} {_SIZE_WORDS['de'][obj.size]}{ending} {colour_de}{ending} {noun_de} {where}"
    feminine = gender_fr == "f"
    size_fr = _SIZE_WORDS["fr"][obj.size][feminine]
    return f"{'une' if feminine else 'un'} {size_fr} {noun_fr} {colour_fr_f if feminine else colour_fr_m} {where}"


def _background_phrase(background: str, language: str) -> str:
    if language == "en":
        return f"on {'an' if background[0] in 'aeiou' else 'a'} {background} background"
    if language == "de":  # strong dative without an article: "auf grünem Hintergrund"
        return f"auf {_COLOUR_WORDS[background][0]}em Hintergrund"
    return f"sur fond {_COLOUR_WORDS[background][1]}"  # "fond" is masculine


def caption(scene_objects: tuple[SceneObject, ...] | list[SceneObject], background: str, language: str,
            template: int) -> str:
    """The caption of a scene in one language; the same ``template`` gives translations across languages.

    Args:
        scene_objects: The scene's objects, left to right (one to three).
        background: Background colour name.
        language: One of LANGUAGES.
        template: Index into TEMPLATES: a plain list, "there is"/"es gibt"/"il y a", background first, count and
            background first, or the objects right to left.

    Returns:
        One sentence, capitalised, ending in a full stop, naming every object's size, colour, shape and position.
    """
    if language not in LANGUAGES:
        raise ValueError(f"grounding captions come in {', '.join(LANGUAGES)}, not {language!r}")
    if not 0 <= template < len(TEMPLATES):
        raise ValueError(f"caption template must be 0..{len(TEMPLATES) - 1}, got {template}")
    if not 1 <= len(scene_objects) <= 3:
        raise ValueError(f"a scene holds one to three objects, got {len(scene_objects)}")
    kind = TEMPLATES[template]
    objects = list(scene_objects)[::-1] if kind == "right_to_left" else list(scene_objects)
    # "es gibt" takes the accusative: "es gibt einen großen roten Stern"
    phrases = [_noun_phrase(o, language, "acc" if kind == "there_is" else "nom") for o in objects]
    listed = phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} {_AND[language]} {phrases[-1]}"
    colon = " :" if language == "fr" else ":"  # French typography puts a space before a colon
    if kind == "there_is":
        text = f"{_THERE_IS[language]} {listed}"
    elif kind == "background":
        text = f"{_background_phrase(background, language)}{colon} {listed}"
    elif kind == "count":
        count = _COUNTS[language][len(objects) - 1]
        text = f"{count} {_background_phrase(background, language)}{colon} {listed}"
    elif kind == "right_to_left":
        text = f"{_RIGHT_TO_LEFT[language]}{colon} {listed}"
    else:
        text = listed
    return text[0].upper() + text[1:] + "."


# ------------------------------------------------------------------------------------------------ scenes


def _render(objects: list[SceneObject], background: str, rng: np.random.Generator,
            size: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat background, each object centred in its third, light noise -> uint8 [H, W, 3] and boxes [R, 4]."""
    x, y = _pixel_grid(size)
    pixels = np.broadcast_to(np.array(COLOURS[background], dtype=np.float32), (size, size, 3)).copy()
    boxes = np.zeros((len(objects), 4), dtype=np.float32)
    for i, obj in enumerate(objects):
        radius = size * _RADIUS[obj.size]
        # A large square's corner reaches 1.13 radii < 1/6 of the side: neighbours never touch.
        cx = (POSITIONS.index(obj.position) + 0.5) * size / 3
        cy = float(rng.uniform(radius * 1.15, size - radius * 1.15))
        angle = float(rng.uniform(0, 2 * math.pi))
        cos_a, sin_a = math.cos(angle), math.sin(angle)
        u = (x - cx) * cos_a + (y - cy) * sin_a  # shape-local coordinates
        v = -(x - cx) * sin_a + (y - cy) * cos_a
        coverage = np.clip(0.5 - _shape_sdf(obj.shape, u, v, radius, rng), 0.0, 1.0)  # [H, W]
        rows, cols = np.flatnonzero(coverage.any(axis=1)), np.flatnonzero(coverage.any(axis=0))
        boxes[i] = (cols[0] / size, rows[0] / size, (cols[-1] + 1) / size, (rows[-1] + 1) / size)
        pixels += (np.array(COLOURS[obj.colour], dtype=np.float32) - pixels) * coverage[..., None]
    pixels += rng.normal(0.0, 0.03, size=pixels.shape).astype(np.float32)
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), boxes


def make_scene(split: str, index: int, seed: int = 0, size: int = 64) -> GroundedScene:
    """Scene ``index`` of ``split`` (see the module docstring); the same arguments give the same scene.

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` or ``"mono"`` (disjoint seed streams).
        index: Scene number (>= 0).
        seed: Base seed of the corpus.
        size: Image side in pixels (>= 32).
    """
    if split not in SPLITS:
        raise ValueError(f"scene split must be one of {', '.join(SPLITS)}, got {split!r}")
    if index < 0 or size < 32:
        raise ValueError(f"index={index}, size={size}: need index >= 0 and size >= 32")
    rng = np.random.default_rng([seed, _SCENE_STREAM, SPLITS[split], index])
    colours = list(COLOURS)
    background = colours[int(rng.integers(len(colours)))]
    fills = [c for c in colours if c != background]
    count = int(rng.choice(3, p=[0.3, 0.4, 0.3])) + 1
    columns = sorted(rng.choice(3, size=count, replace=False).tolist())
    objects = [SceneObject(shape=SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))],
                           colour=fills[int(rng.integers(len(fills)))], size=SIZES[int(rng.integers(2))],
                           position=POSITIONS[column]) for column in columns]
    template = int(rng.integers(len(TEMPLATES)))
    image, boxes = _render(objects, background, rng, size)
    captions = {lang: caption(objects, background, lang, template) for lang in LANGUAGES}
    return GroundedScene(f"{split}_{index:05d}", image, boxes, tuple(objects), background, captions, template)


# ------------------------------------------------------------------------------------------------ features


_RADIAL_EDGES = np.array([0.3, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0], dtype=np.float32)  # in radii of a disc of equal area


def _background_colour(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Median colour of the pixels outside every box (the border when the boxes cover everything): float [3]."""
    height, width = image.shape[:2]
    outside = np.ones((height, width), dtype=bool)
    for x0, y0, x1, y1 in _pixel_boxes(boxes, height, width):
        outside[y0:y1, x0:x1] = False
    if not outside.any():
        outside[[0, -1], :] = outside[:, [0, -1]] = True
    return np.median(image[outside].astype(np.float32), axis=0)


def _pixel_boxes(boxes: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Boxes in [0, 1] -> pixel ranges (x0, y0, x1, y1), rounded outwards, at least one pixel wide."""
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        px0 = min(max(math.floor(x0 * width + 1e-3), 0), width - 1)
        py0 = min(max(math.floor(y0 * height + 1e-3), 0), height - 1)
        px1 = max(min(math.ceil(x1 * width - 1e-3), width), px0 + 1)
        py1 = max(min(math.ceil(y1 * height - 1e-3), height), py0 + 1)
        out.append((px0, py0, px1, py1))
    return out


def _crop_descriptor(crop: np.ndarray, background: np.ndarray, side: int) -> np.ndarray:
    """Rotation-invariant statistics of the foreground of one crop (uint8 [h, w, 3]): 18 numbers.

    Colour (3), radial mass profile around the centroid (8), elongation, spread, size (sqrt of the foreground
    area over the image side), fill (foreground share of the crop), and the magnitudes of the 3rd, 4th and 5th
    angular harmonics of the radius-weighted mass (triangles, squares and crosses, stars).
    """
    pixels = crop.astype(np.float32)
    distance = np.linalg.norm(pixels - background, axis=-1) / 255.0
    fg = np.clip((distance - 0.12) / 0.12, 0.0, 1.0)  # [h, w]: 1 on an object; noise stays below 0.12
    area = float(fg.sum())
    if area < 1.0:
        return np.zeros(18, dtype=np.float32)
    ys, xs = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]].astype(np.float32) + 0.5
    cx, cy = float((fg * xs).sum()) / area, float((fg * ys).sum()) / area
    dx, dy = xs - cx, ys - cy
    m20, m02, m11 = (float((fg * d).sum()) / area for d in (dx * dx, dy * dy, dx * dy))
    half_trace = (m20 + m02) / 2
    root = math.sqrt(max(half_trace**2 - (m20 * m02 - m11**2), 0.0))
    elongation = 1.0 - (half_trace - root) / max(half_trace + root, 1e-6)
    spread = 2 * half_trace / area  # 1 / (2 pi) for a disc, more for rings, stars and crosses
    radius = np.hypot(dx, dy) / math.sqrt(area / math.pi)
    radial = np.bincount(np.digitize(radius, _RADIAL_EDGES).ravel(), fg.ravel(), 8) / area
    angle = np.arctan2(dy, dx)
    weight = fg * radius
    harmonics = [abs(complex((weight * np.cos(k * angle)).sum(), (weight * np.sin(k * angle)).sum()))
                 / max(float(weight.sum()), 1e-6) for k in (3, 4, 5)]
    colour = np.einsum("hw,hwc->c", fg, pixels) / area / 255.0
    return np.concatenate([colour, radial, [elongation, spread, math.sqrt(area) / side, area / fg.size],
                           harmonics]).astype(np.float32)


def region_descriptors(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The 26 raw numbers of each box and of the whole image: float32 [R + 1, 26].

    Columns: the crop's foreground statistics (18, see ``_crop_descriptor``; foreground = pixels whose colour
    differs from the background, the median colour outside all boxes), the box geometry (centre x, y, width,
    height, in [0, 1]), the background colour (3) and the number of objects the row covers over 3.
    """
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    background = _background_colour(image, boxes)
    rows = []
    regions = np.concatenate([boxes, np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float32)])  # the whole image last
    for i, (box, (x0, y0, x1, y1)) in enumerate(zip(regions, _pixel_boxes(regions, height, width))):
        covered = 1 if i < len(boxes) else len(boxes)
        geometry = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]]
        rows.append(np.concatenate([_crop_descriptor(image[y0:y1, x0:x1], background, max(height, width)),
                                    geometry, background / 255.0, [covered / 3]]))
    return np.stack(rows).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _projection(dim: int) -> np.ndarray:
    """The fixed [26, dim] random projection (Gaussian, variance 1 / 26), read-only."""
    rng = np.random.default_rng(_PROJECTION_SEED)
    matrix = (rng.standard_normal((DESCRIPTOR_DIM, dim)) / math.sqrt(DESCRIPTOR_DIM)).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def region_features(image: np.ndarray, boxes: np.ndarray, dim: int = 256) -> np.ndarray:
    """Region features of a scene, a stand-in for bottom-up detector (Faster R-CNN) features.

    The raw descriptors of :func:`region_descriptors` (pixel statistics of each box crop plus its geometry)
    mapped to ``dim`` by a fixed random projection, the same for every call. Deterministic.

    Args:
        image: uint8 [H, W, 3].
        boxes: [R, 4] (x0, y0, x1, y1) in [0, 1].
        dim: Feature width; 0 keeps the raw 26 numbers.

    Returns:
        float32 [R + 1, dim]: one row per box, then one for the whole image.
    """
    if dim < 0:
        raise ValueError(f"region feature dim must be >= 0, got {dim}")
    raw = region_descriptors(image, boxes)  # [R + 1, 26]
    return raw if dim == 0 else np.ascontiguousarray(raw @ _projection(dim))  # [R + 1, 26] -> [R + 1, dim]


# --------------------------------------------------------------------------------------------- the corpus


def _attributes(scene: GroundedScene) -> np.ndarray:
    """int [3, 3]: (shape, colour, size) index at each position, -1 where the position is empty."""
    table = np.full((3, 3), -1, dtype=np.int64)
    for obj in scene.objects:
        table[POSITIONS.index(obj.position)] = (SHAPE_CLASSES.index(obj.shape), list(COLOURS).index(obj.colour),
                                                SIZES.index(obj.size))
    return table


def sts_gold(scenes: list[GroundedScene], anchor: int) -> np.ndarray:
    """Similarity in [0, 5] of scene ``anchor`` to every scene of ``scenes``: float [N].

    Objects are aligned by position. A position that holds an object in either scene gives 3 slots (shape,
    colour, size), matched where both scenes have an object there with that attribute equal; the background
    gives 1 slot. Gold = 5 x matched slots / slots; a scene is 5 to itself.
    """
    table = np.stack([_attributes(s) for s in scenes])  # [N, 3, 3]
    backgrounds = np.array([list(COLOURS).index(s.background) for s in scenes])
    occupied = table[:, :, 0] >= 0  # [N, 3]
    both = occupied & occupied[anchor]
    matched = ((table == table[anchor]) & both[:, :, None]).sum(axis=(1, 2)) + (backgrounds == backgrounds[anchor])
    slots = 1 + 3 * (occupied | occupied[anchor]).sum(axis=1)
    return 5.0 * matched / slots


def _sts_pairs(scenes: list[GroundedScene], count: int, seed: int) -> list[tuple[float, str, str]]:
    """``count`` English caption pairs with their gold: a sixth are one scene in two templates (gold 5), the rest
    pair an anchor with the scene whose gold is closest to a target drawn uniformly from [0, 5]."""
    rng = np.random.default_rng([seed, _STS_STREAM])
    pairs = []
    for _ in range(count):
        a = int(rng.integers(len(scenes)))
        first = scenes[a]
        if rng.random() < 1 / 6:
            other = (first.template + 1 + int(rng.integers(len(TEMPLATES) - 1))) % len(TEMPLATES)
            pairs.append((5.0, first.captions["en"], caption(first.objects, first.background, "en", other)))
            continue
        gold = sts_gold(scenes, a)
        distance = np.abs(gold - rng.uniform(0.0, 5.0)) + rng.random(len(scenes)) * 1e-3  # random tie-break
        distance[a] = np.inf
        b = int(np.argmin(distance))
        pairs.append((float(gold[b]), first.captions["en"], scenes[b].captions["en"]))
    return pairs


def _readme(sizes: dict[str, int], seed: int, size: int, dim: int, num_sts: int) -> str:
    return f"""percli embedded Multi30K-style grounding corpus, seed {seed}
Synthetic, written by percli.grounding.scenes (no published data). Same arguments, same bytes.

Scenes: one to three shapes ({", ".join(SHAPE_CLASSES)}) in colours ({", ".join(COLOURS)}), small or large, on the
left, in the middle or on the right of a plain background, {size}x{size} px. Captions in {", ".join(LANGUAGES)};
the captions of one image are translations of each other.

Image ids are scene keys, <split>_<index:05d> (e.g. train_00012): images/<id>.png, features/<id>.npy.

  train.en train.de train.fr     {sizes["train"]} parallel captions, line i of each describes line i of
  train_images.txt               <id>.png (Multi30K task 1 layout; readers strip the extension)
  val.{{en,de,fr}} val_images.txt  {sizes["val"]} parallel captions, images disjoint from train
  test.{{en,de,fr}} test_images.txt {sizes["test"]} parallel captions, images disjoint from train and val
  mono.en mono.en.ids            monolingual splits for unsupervised MT: {sizes["mono"]} images split into
  mono.de mono.de.ids            thirds, one language each, disjoint from each other and from train/val/test
  mono.fr mono.fr.ids            (line i of mono.<lang>.ids: the image id of caption line i, no extension)
  images/<id>.png                uint8 RGB
  features/<id>.npy              float32 [R + 1, {dim or DESCRIPTOR_DIM}]: one row per object box (left to right), then
                                 the whole image; a stand-in for bottom-up detector features (no pickle)
  sts.tsv                        {num_sts} English pairs, score<TAB>sentence1<TAB>sentence2, no header, from
                                 val and test scenes

STS gold (0..5): objects aligned by position; every position holding an object in either scene gives 3 slots
(shape, colour, size), matched where both have an object there with the attribute equal; the background is
1 slot. gold = 5 * matched / slots. A sixth of the pairs are one scene captioned in two templates (gold 5).
"""


def _write_corpus(folder: Path, seed: int, sizes: dict[str, int], size: int, dim: int, num_sts: int) -> None:
    (folder / "images").mkdir()
    (folder / "features").mkdir()

    def render(split: str, index: int) -> GroundedScene:
        scene = make_scene(split, index, seed, size)
        Image.fromarray(scene.image).save(folder / "images" / f"{scene.key}.png", format="PNG")
        np.save(folder / "features" / f"{scene.key}.npy", region_features(scene.image, scene.boxes, dim),
                allow_pickle=False)
        return scene

    def write_lines(name: str, lines: list[str]) -> None:
        (folder / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    held_out = []
    for split in ("train", "val", "test"):
        scenes = [render(split, i) for i in range(sizes[split])]
        for lang in LANGUAGES:
            write_lines(f"{split}.{lang}", [s.captions[lang] for s in scenes])
        write_lines(f"{split}_images.txt", [f"{s.key}.png" for s in scenes])
        held_out += scenes if split != "train" else []
    start = 0
    for i, lang in enumerate(LANGUAGES):  # thirds of the mono stream, one language each
        count = sizes["mono"] // 3 + (i < sizes["mono"] % 3)
        scenes = [render("mono", index) for index in range(start, start + count)]
        start += count
        write_lines(f"mono.{lang}", [s.captions[lang] for s in scenes])
        write_lines(f"mono.{lang}.ids", [s.key for s in scenes])
    pairs = _sts_pairs(held_out, num_sts, seed) if len(held_out) >= 2 else []
    write_lines("sts.tsv", [f"{gold:.3f}\t{a}\t{b}" for gold, a, b in pairs])
    (folder / "README.txt").write_text(_readme(sizes, seed, size, dim, len(pairs)), encoding="utf-8")


def write_multi30k(root: str | Path, seed: int = 0, num_train: int = 1000, num_mono: int = 1500, num_val: int = 100,
                   num_test: int = 200, size: int = 64, feature_dim: int = 256, num_sts: int = 300) -> Path:
    """Write (or reuse) the embedded corpus in the Multi30K layout (see README.txt written beside it).

    Built beside ``root`` and renamed into place with a ``.complete`` marker holding the arguments
    (:func:`~percli.core.data.paths.build_once`): a folder whose marker matches is reused.

    Args:
        root: Output folder (new, empty, or an earlier output of this function).
        seed: Base seed; the same seed writes the same bytes.
        num_train: Images of the parallel ``train`` split (MHA-VSE).
        num_mono: Images of the monolingual splits ``mono.{en,de,fr}`` (unsupervised MT), split into thirds.
        num_val: Images of ``val``.
        num_test: Images of ``test``.
        size: Image side in pixels.
        feature_dim: Width of ``features/<id>.npy`` (0: the raw 26 descriptor numbers).
        num_sts: English sentence pairs in ``sts.tsv`` (none when val and test hold fewer than 2 images).

    Returns:
        ``root``, resolved.
    """
    sizes = {"train": num_train, "mono": num_mono, "val": num_val, "test": num_test}
    if min(sizes.values()) < 0 or num_sts < 0 or feature_dim < 0:
        raise ValueError(f"split sizes {sizes}, num_sts={num_sts}, feature_dim={feature_dim}: none may be negative")
    wanted = {"version": _FORMAT_VERSION, "seed": seed, **sizes, "size": size, "feature_dim": feature_dim,
              "num_sts": num_sts}
    return build_once(root, wanted, lambda folder: _write_corpus(folder, seed, sizes, size, feature_dim, num_sts),
                      "embedded Multi30K corpus")
