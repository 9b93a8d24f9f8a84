"""An embedded demo pool for `percli curate metaclip`, generated here, deterministically.

Nothing is downloaded: the alt-texts are synthetic, composed from a built-in vocabulary drawn
with Zipf-like frequencies, so a few entries are "head" (matched by thousands of texts) and most
are "tail", the shape balancing exists for. About a fifth of the texts are junk (file names,
hashes, camera codes) that match no entry. The metadata mixes single words, multi-word phrases,
capitalised titles, digits, entries that the pool never contains, and entries with punctuation
(`St. Louis`, `U.S.`) that MetaCLIP's matching can never find. The same `seed` gives the same
pool on every machine.
"""

from __future__ import annotations

import random

NOUNS = """
dog cat bird horse cow sheep fish car bus truck bicycle motorcycle train boat airplane house building
bridge church castle tower street road city village beach mountain river lake forest tree flower garden
park field sky sunset cloud snow rain ocean island desert person man woman child girl boy baby family
friend team player student teacher doctor chef artist musician dancer soldier king queen table chair
sofa bed lamp window door kitchen bathroom bedroom office school hospital restaurant cafe shop market
book phone computer camera guitar piano clock watch bag shoe hat shirt dress jacket glasses ring
necklace cake pizza bread coffee tea wine beer apple banana orange strawberry salad soup sandwich
burger pasta rice chocolate cookie logo icon poster map flag sign painting drawing photo portrait
illustration pattern texture background wallpaper vector cartoon sticker card ticket toy ball game
""".split()
ADJECTIVES = """
red blue green yellow black white pink purple brown golden small large little big old new young
modern vintage beautiful cute happy funny wooden wild dark bright colorful abstract empty quiet
""".split()
VERBS = "running sitting standing walking playing eating sleeping flying swimming smiling".split()
PHRASES = [
    "hot dog", "ice cream", "living room", "coffee table", "fire truck", "golden retriever", "sea turtle",
    "teddy bear", "wedding dress", "birthday cake", "christmas tree", "swimming pool", "traffic light",
    "mountain bike", "baseball cap", "polar bear", "red wine", "black and white", "high school",
    "real estate", "solar panel", "street art", "rock-n-roll", "t-shirt", "hand-made", "self portrait",
    "night sky", "full moon", "city skyline", "farmers market",
]
TITLES = [
    "New York", "Eiffel Tower", "Golden Gate Bridge", "Grand Canyon", "Mona Lisa", "Star Wars",
    "Harry Potter", "Mount Fuji", "Tower Bridge", "Central Park", "London", "Paris", "Tokyo",
    "Christmas", "Halloween", "iPhone", "Lego", "Van Gogh",
]
FILLER = "a an the of with in on at and by for from near under two three".split()
# In the metadata only: never produced by the pool (zero counts), or never matchable (punctuation).
ABSENT = """
aardvark quokka axolotl narwhal pangolin tapir okapi gharial numbat saiga zither theremin bagpipe
harpsichord sextant astrolabe abacus quill inkwell anvil
""".split() + ["spotted hyena", "snow leopard", "blue whale", "Machu Picchu", "Angkor Wat"]
UNMATCHABLE = ["St. Louis", "U.S.", "e.g.", "Mr. Smith", "Dr. Who", "Yahoo!", "what?", "a, b", "C:", "`quoted`"]
JUNK_STEMS = ["IMG", "DSC", "DCIM", "image", "photo", "screenshot", "untitled", "file", "pic", "P"]
JUNK_EXTS = ["jpg", "jpeg", "png", "gif", "webp", "JPG"]


def demo_metadata() -> list[str]:
    """The demo metadata (about 400 entries); an entry's index is its id."""
    entries = [str(i) for i in range(20)] + NOUNS + ADJECTIVES + VERBS + PHRASES + TITLES
    entries += FILLER + ABSENT + UNMATCHABLE
    entries += [f"{noun}s" for noun in NOUNS[:40]]  # plurals the pool never writes: zero counts
    entries += [noun.capitalize() for noun in NOUNS[:30]]  # matched only where a text starts with the noun
    entries += [f"{adj} {noun}" for adj, noun in zip(ADJECTIVES, NOUNS[::3])]  # bigrams, most rare
    return entries


def _vocabulary() -> tuple[list[str], list[float]]:
    """Everything the texts are made of, with Zipf weights 1/rank in a fixed shuffled order."""
    items = NOUNS + ADJECTIVES + VERBS + PHRASES + TITLES + [f"{a} {n}" for a, n in zip(ADJECTIVES, NOUNS[::3])]
    random.Random(1234).shuffle(items)
    return items, [1.0 / (rank + 1) for rank in range(len(items))]


def _junk(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return f"{rng.choice(JUNK_STEMS)}_{rng.randrange(10000):04d}.{rng.choice(JUNK_EXTS)}"
    if kind < 0.8:
        return "".join(rng.choice("0123456789abcdef") for _ in range(rng.randrange(8, 33)))
    return f"{rng.choice(JUNK_STEMS)}{rng.randrange(100000)}"


def _alt_text(rng: random.Random, items: list[str], weights: list[float]) -> str:
    words = []
    for item in rng.choices(items, weights, k=rng.randrange(1, 6)):
        if rng.random() < 0.3:
            words.append(rng.choice(FILLER))
        words.append(item)
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text[:1].upper() + text[1:]  # "Dog on a beach" no longer matches "dog"
    if rng.random() < 0.2:
        text += rng.choice([".", "!", " - stock photo", ", free download", " | wallpaper"])
    if rng.random() < 0.1:
        text = text.replace(" ", "  ", 1)
    return text


def demo_pool(n: int = 20000, seed: int = 0) -> list[dict[str, str]]:
    """`n` synthetic records `{"id": "demo-000000", "text": ...}`; about 20% junk that matches nothing."""
    rng = random.Random(seed)
    items, weights = _vocabulary()
    return [{"id": f"demo-{i:06d}", "text": _junk(rng) if rng.random() < 0.2 else _alt_text(rng, items, weights)}
            for i in range(n)]
