"""The CLIP BPE tokenizer against open_clip's `SimpleTokenizer` and hand-derived ids."""

from __future__ import annotations

import gzip
import importlib.resources

import pytest
import torch

from percli.models.clip_tokenizer import NUM_MERGES, VOCAB_PATH, CLIPTokenizer, clean_text

SOT, EOT = 49406, 49407

# open_clip 3.3.0 `open_clip.tokenize(s)` (with ftfy 6.3.1 installed) minus the SOT/EOT/padding.
OPEN_CLIP_IDS = [
    ('a photo of a cat', [320, 1125, 539, 320, 2368]),
    ('A diagram of the MetaCLIP data-curation pipeline!',
     [320, 22697, 539, 518, 613, 3145, 8546, 2281, 268, 1092, 656, 14151, 256]),
    ('two dogs playing in the snow, 2024', [1237, 3255, 1629, 530, 518, 2583, 267, 273, 271, 273, 275]),
    ('  Hello,\tWORLD!!  \n\n ', [3306, 267, 1002, 748]),
    ("It's the dog's bone, they'll say we've I'm you'd",
     [585, 568, 518, 1929, 568, 6195, 267, 889, 1342, 1451, 649, 1200, 328, 880, 592, 1896]),
    ('caf\xe9 na\xefve r\xe9sum\xe9', [15304, 1097, 35689, 563, 29106, 7054, 4166]),
    ('cafe\u0301 (decomposed)', [15304, 263, 561, 19916, 264]),
    ('\u201cquoted\u201d and \u2018single\u2019', [257, 27706, 257, 537, 568, 17005, 262]),
    ('\ufb01ne \ufb02ower', [3797, 4055]),
    ('\uff21\uff22\uff23\u3000\uff11\uff12', [5334, 272, 273]),
    ('&amp;lt;b&amp;gt; bold &quot;x&quot; &amp;amp;', [283, 321, 285, 8911, 257, 343, 257, 261]),
    ('\u4e00\u4e8c\u4e09 \u732b\u306e\u5199\u771f',
     [19759, 222, 21078, 234, 19759, 487, 163, 234, 104, 21575, 44653, 33440, 509]),
    ('emoji \U0001f431\U0001f436 \u2764\ufe0f', [16327, 35710, 10631, 1752]),
    ('3.14159 and 1,000,000', [274, 269, 272, 275, 272, 276, 280, 537, 272, 267, 271, 271, 271, 267, 271, 271, 271]),
    ('<start_of_text> literal <end_of_text>', [49406, 24269, 49407]),
    ('', []),
    ('x\xb2 \u2167 \xbd', [343, 41175, 158, 227, 371, 33613]),
    ('under_score snake_case', [1798, 318, 4431, 8798, 318, 2068]),
    ('supercalifragilisticexpialidocious antidisestablishmentarianism',
     [1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466, 3120, 4262, 7726, 12658, 1585, 44351]),
    ('ctrl\x07char\u200bzero\xa0nbsp', [35602, 75, 16017, 9844, 5848, 6459, 4393]),
    ('URL https://example.com/a?b=c#d', [23464, 30901, 12441, 6228, 269, 2464, 270, 320, 286, 321, 284, 322, 258, 323]),
    ('\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd',
     [12986, 10948, 25722, 16378, 22625, 147, 102, 147, 250, 147, 243, 147, 507]),
]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer()


def test_vocabulary_ships_inside_the_package(tokenizer: CLIPTokenizer) -> None:
    packaged = importlib.resources.files("percli.models") / "data" / "bpe_simple_vocab_16e6.txt.gz"
    assert packaged.is_file() and VOCAB_PATH.is_file()
    assert tokenizer.vocab_size == 49408 and (tokenizer.sot_token_id, tokenizer.eot_token_id) == (SOT, EOT)


def test_ids_follow_the_vocabulary_layout(tokenizer: CLIPTokenizer) -> None:
    # bytes 0..255 (printable ones first, '!' = 0), the same with </w> from 256, then one id per merge
    assert tokenizer.encoder["!"] == 0 and tokenizer.encoder["a"] == ord("a") - ord("!")
    assert tokenizer.encoder["a</w>"] == 256 + 64
    merges = gzip.open(VOCAB_PATH, "rt", encoding="utf-8").read().split("\n")[1:NUM_MERGES + 1]
    assert merges[1] == "t h" and merges[6] == "th e</w>"  # file lines 3 and 8
    assert tokenizer.encoder["the</w>"] == 512 + 6


def test_hand_derived_ids(tokenizer: CLIPTokenizer) -> None:
    # "a" -> a</w> (320); "cat" -> c a t</w>: merge "a t</w>" (rank 24) before "c a" (rank 260), then
    # "c at</w>" (rank 1856) -> 512 + 1856; "of" -> "o f</w>" (rank 27); "the" -> rank 6; digits are
    # single pre-tokens: "2" -> 256 + (ord("2") - 33) = 273, "0" -> 271, "4" -> 275.
    ids = tokenizer.encode("A cat of the 2024")
    assert ids == [320, 512 + 1856, 512 + 27, 512 + 6, 273, 271, 273, 275]


@pytest.mark.parametrize(("text", "expected"), OPEN_CLIP_IDS, ids=range(len(OPEN_CLIP_IDS)))
def test_matches_open_clip_on_tricky_strings(tokenizer: CLIPTokenizer, text: str, expected: list[int]) -> None:
    row = tokenizer(text)[0].tolist()
    assert row == [SOT, *expected, EOT] + [0] * (77 - len(expected) - 2)


def test_mojibake_is_repaired_with_ftfy(tokenizer: CLIPTokenizer) -> None:
    pytest.importorskip("ftfy")
    assert tokenizer.encode("caf\xc3\xa9 mojibake") == [15304, 617, 3252, 11878]  # open_clip's ids for "cafe" + acute


def test_long_text_is_cut_and_ends_with_eot(tokenizer: CLIPTokenizer) -> None:
    tokens = tokenizer(["a photo of a cat. " * 30, "a dog"], context_length=16)
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long
    assert tokens[0].tolist() == [SOT, *tokenizer.encode("a photo of a cat. " * 3)[:14], EOT]
    assert tokens[1].tolist() == [SOT, 320, 1929, EOT] + [0] * 12
    assert int(tokens[0].argmax()) == 15  # text encoders pool at the EOT, the highest id


def test_cleaning_and_decoding(tokenizer: CLIPTokenizer) -> None:
    assert clean_text("  A\tB&amp;amp;C\n\n ") == "a b&c"
    assert tokenizer.decode(tokenizer.encode("A photo of a CAT!")) == "a photo of a cat ! "
    assert tokenizer.decode([SOT, 320, EOT]) == "<start_of_text>a <end_of_text>"
