"""Caption metrics on hand-computed cases: BLEU-4 (clipping, brevity penalty, closest reference,
corpus pooling), CIDEr-D (idf, clipping, length penalty), CLIP-score, and coco-caption's values."""

import math

import pytest
import torch
import torch.nn as nn

from percli.captioning.metrics import bleu4, caption_metrics, cider_d, clip_score, tokenize
from percli.captioning.scenes import make_scene


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A red Star, on the LEFT.") == ["a", "red", "star", "on", "the", "left"]
    assert bleu4(["A red star, on the LEFT."], [["a red star on the left"]]) == 1.0


def test_identical_candidate_scores_the_maximum():
    refs = [["a small red star on the left"], ["two shapes on a blue background"]]
    assert bleu4([r[0] for r in refs], refs) == 1.0
    assert cider_d([r[0] for r in refs], refs) == pytest.approx(10.0)


def test_bleu_brevity_penalty():
    # 6 candidate words vs an 8-word reference; precisions 6/6, 4/5, 3/4, 2/3.
    score = bleu4(["the cat sat on the mat"], [["the cat sat on the red mat today"]])
    assert score == pytest.approx(math.exp(1 - 8 / 6) * (1 * 0.8 * 0.75 * (2 / 3)) ** 0.25)


def test_bleu_clips_counts_by_the_reference():
    # "a" twice in the candidate, once in the reference: 4/5, 3/4, 2/3, 1/2; no penalty (5 >= 4 words).
    assert bleu4(["a a b c d"], [["a b c d"]]) == pytest.approx((0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25)


def test_bleu_effective_reference_is_the_closest_shorter_on_a_tie():
    # 4 words between references of 3 and 5: the 3-word one counts, so there is no brevity penalty.
    tie = bleu4(["a b c d"], [["a b c d e", "a b c"]])
    assert tie == 1.0
    assert bleu4(["a b c d"], [["a b c d e"]]) == pytest.approx(math.exp(1 - 5 / 4))


def test_bleu_pools_counts_over_the_corpus():
    # Alone, "w x y" has no 4-gram and would score 0; pooled with a perfect 4-gram match the corpus is perfect.
    assert bleu4(["w x y"], [["w x y"]]) == 0.0
    assert bleu4(["w x y", "a b c d"], [["w x y"], ["a b c d"]]) == 1.0


def test_cider_hand_computed_with_length_penalty():
    # idf: "a" is in both images' references (idf 0), "b", "c", "a b", "a c" in one (idf log 2).
    # Image 1: "a b" == its reference: cos 1 for n=1 and n=2, no 3/4-grams -> 10 * 2 / 4 = 5.
    # Image 2: "c" vs "a c": unigram cos 1 ("a" weighs 0), no bigram, lengths 1 vs 2 -> 10 * exp(-1/72) / 4.
    score = cider_d(["a b", "c"], [["a b"], ["a c"]])
    assert score == pytest.approx((5 + 2.5 * math.exp(-1 / 72)) / 2)


def test_cider_clips_the_candidate_weights():
    # "b b": tf-idf of "b" is 2 log 2 against the reference's log 2; clipped: cos = log2^2 / (2 log2 * log2) = 0.5.
    score = cider_d(["b b", "a c"], [["a b"], ["a c"]])
    assert score == pytest.approx((10 * 0.5 / 4 + 5) / 2)


def test_cider_averages_over_references_and_one_image_scores_zero():
    two_refs = cider_d(["a b", "c"], [["a b", "a c"], ["a c"]])
    one_ref = cider_d(["a b", "c"], [["a b"], ["a c"]])
    assert 0 < two_refs < one_ref
    assert cider_d(["a b"], [["a b"]]) == 0.0  # coco-caption: idf = log(1/1) = 0 for every n-gram


def test_matches_coco_caption():
    """Pinned values of pycocoevalcap 1.2 (Bleu(4), Cider) on these texts after `tokenize`."""
    candidates = ["a large red star on the left", "two shapes: a small blue circle and a red square", "IMG_2041.jpg",
                  "a yellow ring on a green background", "three shapes on a white background", ""]
    references = [
        ["one shape on a blue background: a large red star on the left."],
        ["two shapes on a black background: a small blue circle on the left and a large red square on the right.",
         "a blue circle and a red square"],
        ["one shape on a white background: a small green cross in the middle."],
        ["one shape on a green background: a large yellow ring in the middle.", "a yellow ring"],
        ["three shapes on a white background: a small red ellipse on the left, a large red triangle in the middle "
         "and a small yellow star on the right."],
        ["two shapes on a red background: a large blue triangle on the left and a small blue triangle in the middle."],
    ]
    assert bleu4(candidates, references) == pytest.approx(0.15670905586934433, rel=1e-9)  # coco adds 1e-15 / 1e-9
    assert cider_d(candidates, references) == pytest.approx(1.860524138642566, rel=1e-12)


def test_metrics_rank_true_captions_over_corrupted_ones_over_alt_texts():
    scenes = [make_scene("val", i) for i in range(60)]
    refs = [[s.caption] for s in scenes]
    # One wrong word per caption: the first colour swapped.
    swapped = [s.caption.replace(" red ", " green ", 1) if " red " in s.caption else s.caption.replace(
        " blue ", " red ", 1) if " blue " in s.caption else s.caption.replace(" large ", " small ", 1)
        for s in scenes]
    truth, corrupt, alt = (caption_metrics(c, refs) for c in ([s.caption for s in scenes], swapped,
                                                               [s.alt_text for s in scenes]))
    assert truth["cider"] > corrupt["cider"] > alt["cider"] and truth["bleu4"] > corrupt["bleu4"] > alt["bleu4"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="reference lists"):
        bleu4(["a"], [])
    with pytest.raises(ValueError, match="at least one"):
        cider_d(["a", "b"], [["a"], []])


class _AxisClip(nn.Module):
    """Images are their own features; text i has feature e_i - the cosine of each pair is known."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # for the device lookup

    def encode_image(self, image, normalize=False):
        return nn.functional.normalize(image, dim=-1) if normalize else image

    def encode_text(self, ids, normalize=False):
        x = nn.functional.one_hot(ids[:, 0], 2).float()
        return nn.functional.normalize(x, dim=-1) if normalize else x


def test_clip_score_is_w_times_clamped_cosine():
    images = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])  # cos with e_0: 1, 1/sqrt2, -1 (-> 0)
    tokenizer = lambda texts: torch.tensor([[0] for _ in texts])  # noqa: E731 - every caption is axis 0
    score = clip_score(_AxisClip(), tokenizer, images, ["x", "y", "z"], batch_size=2)
    assert score == pytest.approx(2.5 * (1 + 2 ** -0.5 + 0) / 3)
    with pytest.raises(ValueError, match="one caption per image"):
        clip_score(_AxisClip(), tokenizer, images, ["x"])
