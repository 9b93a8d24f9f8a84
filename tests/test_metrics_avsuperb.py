"""AV-SUPERB metrics against hand-computed cases."""

import pytest
import torch

from percli.core.metrics import accuracy, char_error_rate, edit_distance, equal_error_rate, word_error_rate


def test_accuracy_from_scores_and_from_predictions():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    targets = torch.tensor([1, 0, 0, 0])
    assert accuracy(scores, targets) == pytest.approx(0.75)
    assert accuracy(torch.tensor([2, 1, 0]), torch.tensor([2, 0, 0])) == pytest.approx(2 / 3)


@pytest.mark.parametrize(("scores", "labels", "eer"), [
    # ROC (FAR, TPR): (0,0) (0,.5) (.5,.5) (.5,1) (1,1); FRR = FAR = 0.5 at the third point
    ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 0.5),
    # segment (0, 2/3) -> (0.5, 2/3): FRR stays 1/3, FAR reaches 1/3 two thirds of the way along
    ([0.9, 0.8, 0.3, 0.2, 0.1], [1, 1, 0, 1, 0], 1 / 3),
    ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 0.0),  # perfectly separated
    ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 1.0),  # perfectly inverted
    # all scores tied: the ROC is the diagonal, crossing FAR = FRR at 0.5
    ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),
])
def test_equal_error_rate_hand_cases(scores, labels, eer):
    assert equal_error_rate(scores, labels) == pytest.approx(eer)


def test_equal_error_rate_needs_both_trial_kinds():
    with pytest.raises(ValueError, match="both same and different"):
        equal_error_rate([0.1, 0.2], [1, 1])


def test_edit_distance_counts_substitutions_insertions_deletions():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance(["a", "b"], ["a", "b"]) == 0


def test_error_rates_sum_edits_over_reference_lengths():
    # CER: "abd" vs "abc" (1 edit) and "hello world" vs "hello word" (1 insertion) -> 2 / (3 + 10)
    assert char_error_rate(["abd", "hello world"], ["abc", "hello word"]) == pytest.approx(2 / 13)
    # WER: 1 substitution + 1 insertion against 3 words, 0 edits against 2 words -> 2 / 5
    assert word_error_rate(["a b c d", "x y"], ["a x c", "x y"]) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="empty references"):
        word_error_rate([""], [""])
