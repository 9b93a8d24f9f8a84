"""Sound event detection metrics on hand-made cases: segment counts and substitutions, collar edges,
optimal matching, thresholded spans and frame AUROC."""

import pytest
import torch

from percli.core.data.caption_manifest import Event
from percli.core.sed_metrics import (
    event_metrics,
    event_roll,
    events_from_probs,
    frame_auroc,
    segment_metrics,
    spans_from_probs,
)

REFERENCE = [Event("a.wav", 0.5, 2.2, "dog"), Event("a.wav", 3.0, 4.0, "cat"), Event("b.wav", 1.0, 3.0, "siren")]


@pytest.mark.parametrize("metrics", [segment_metrics, event_metrics])
def test_perfect_prediction_scores_f1_one_and_no_errors(metrics):
    out = metrics(REFERENCE, list(reversed(REFERENCE)))
    assert out["f1_micro"] == 1.0 and out["f1_macro"] == 1.0 and out["error_rate"] == 0.0


@pytest.mark.parametrize("metrics", [segment_metrics, event_metrics])
def test_empty_prediction_scores_f1_zero_and_deletes_everything(metrics):
    out = metrics(REFERENCE, [])
    assert out["f1_micro"] == 0.0 and out["f1_macro"] == 0.0 and out["precision_micro"] == 0.0
    assert out["error_rate"] == 1.0 and out["deletion_rate"] == 1.0 and out["estimated_count"] == 0.0


def test_segment_counts_substitutions_deletions_and_insertions():
    reference = [Event("a.wav", 0.5, 2.2, "dog")]  # segments 0, 1, 2
    estimated = [Event("a.wav", 1.1, 1.9, "dog"), Event("a.wav", 2.5, 3.5, "cat")]  # dog: 1; cat: 2, 3
    out = segment_metrics(reference, estimated)
    # segment 0: deletion; 1: hit; 2: dog vs cat, a substitution; 3: insertion.
    assert out["reference_count"] == 3.0 and out["estimated_count"] == 3.0
    assert out["precision_micro"] == pytest.approx(1 / 3) and out["recall_micro"] == pytest.approx(1 / 3)
    assert out["f1_micro"] == pytest.approx(1 / 3)
    assert (out["substitution_rate"], out["deletion_rate"], out["insertion_rate"]) == pytest.approx((1 / 3,) * 3)
    assert out["error_rate"] == pytest.approx(1.0)
    assert out["f1_macro"] == pytest.approx(0.5)  # dog: P 1, R 1/3; cat has no reference and is left out


def test_segment_resolution_and_boundaries():
    reference = [Event("a.wav", 0.3, 0.6, "dog")]
    assert event_roll(reference, ["dog"], 0.1)[:, 0].nonzero().flatten().tolist() == [3, 4, 5]  # 0.3/0.1 < 3
    assert event_roll(reference, ["dog"], 0.25)[:, 0].nonzero().flatten().tolist() == [1, 2]
    assert event_roll(reference, ["dog", "cat"], 0.25, num_frames=2).tolist() == [[False, False], [True, False]]
    # At 1 s both events fill segment 0 only: a hit although they barely overlap in time.
    assert segment_metrics(reference, [Event("a.wav", 0.7, 0.9, "dog")])["f1_micro"] == 1.0
    assert segment_metrics(reference, [Event("a.wav", 0.7, 0.9, "dog")], resolution_s=0.1)["f1_micro"] == 0.0


def test_predictions_in_a_file_without_reference_are_insertions():
    out = segment_metrics([Event("a.wav", 0.0, 1.0, "dog")],
                          [Event("a.wav", 0.0, 1.0, "dog"), Event("quiet.wav", 0.0, 2.0, "dog")])
    assert out["precision_micro"] == pytest.approx(1 / 3) and out["insertion_rate"] == 2.0


@pytest.mark.parametrize("onset, offset, hit", [
    (1.2, 3.0, True), (0.8, 3.0, True), (1.21, 3.0, False), (0.79, 3.0, False),  # onset collar 0.2 s
    (1.0, 3.4, True), (1.0, 2.6, True), (1.0, 3.41, False), (1.0, 2.59, False),  # offset: 0.2 x 2 s = 0.4 s
])
def test_event_collars_just_inside_and_just_outside(onset, offset, hit):
    out = event_metrics([Event("a.wav", 1.0, 3.0, "dog")], [Event("a.wav", onset, offset, "dog")])
    assert out["f1_micro"] == (1.0 if hit else 0.0)


def test_short_events_keep_the_fixed_offset_collar_and_boundaries_are_inclusive():
    reference = [Event("a.wav", 2.5, 3.0, "dog")]  # 0.2 x 0.5 s < 0.2 s: the offset collar stays 0.2 s
    assert event_metrics(reference, [Event("a.wav", 2.5, 3.2, "dog")])["f1_micro"] == 1.0
    assert event_metrics(reference, [Event("a.wav", 2.5, 3.21, "dog")])["f1_micro"] == 0.0
    assert event_metrics(reference, [Event("a.wav", 2.7, 3.0, "dog")])["f1_micro"] == 1.0  # |2.7 - 2.5| > 0.2 in floats


def test_onset_only_ignores_offsets():
    reference, estimated = [Event("a.wav", 1.0, 3.0, "dog")], [Event("a.wav", 1.1, 9.0, "dog")]
    assert event_metrics(reference, estimated)["f1_micro"] == 0.0
    assert event_metrics(reference, estimated, evaluate_offset=False)["f1_micro"] == 1.0


def test_matching_is_maximal_where_greedy_first_fit_loses_a_pair():
    reference = [Event("a.wav", 0.3, 2.0, "dog"), Event("a.wav", 0.4, 2.3, "dog")]
    # e1 fits both references; e2 fits only the first. First-fit gives the first reference e1 and
    # leaves the second unmatched; the maximum matching pairs all.
    estimated = [Event("a.wav", 0.35, 2.1, "dog"), Event("a.wav", 0.45, 1.7, "dog")]
    out = event_metrics(reference, estimated)
    assert out["f1_micro"] == 1.0 and out["error_rate"] == 0.0


def test_each_event_matches_once():
    out = event_metrics([Event("a.wav", 1.0, 2.0, "dog")], [Event("a.wav", 1.0, 2.0, "dog")] * 2)
    assert out["precision_micro"] == 0.5 and out["recall_micro"] == 1.0 and out["insertion_rate"] == 1.0


def test_event_substitution_needs_fitting_times_and_another_label():
    reference = [Event("a.wav", 1.0, 2.0, "dog"), Event("a.wav", 5.0, 6.0, "cat")]
    estimated = [Event("a.wav", 1.05, 2.0, "cat"), Event("a.wav", 8.0, 9.0, "cat")]
    out = event_metrics(reference, estimated)
    assert out["f1_micro"] == 0.0
    # dog -> cat at 1 s is a substitution; the cat at 5 s is deleted, the cat at 8 s inserted.
    assert (out["substitution_rate"], out["deletion_rate"], out["insertion_rate"]) == (0.5, 0.5, 0.5)
    assert out["error_rate"] == 1.5


def test_macro_f1_averages_classes_with_a_reference():
    reference = [Event("a.wav", 0.0, 1.0, "dog"), Event("a.wav", 2.0, 3.0, "cat"), Event("a.wav", 4.0, 5.0, "cat")]
    estimated = [Event("a.wav", 0.0, 1.0, "dog"), Event("a.wav", 2.0, 3.0, "cat"), Event("a.wav", 7.0, 8.0, "owl")]
    out = event_metrics(reference, estimated)
    assert out["f1_macro"] == pytest.approx((1.0 + 2 / 3) / 2)  # owl has no reference
    assert out["f1_micro"] == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    restricted = event_metrics(reference, estimated, labels=["dog"])
    assert restricted["f1_micro"] == 1.0 and restricted["reference_count"] == 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: segment_metrics([], [Event("a.wav", 0, 1, "dog")]), "no reference event"),
    (lambda: event_metrics(REFERENCE, [], labels=["owl"]), "no reference event"),
    (lambda: event_metrics(REFERENCE, [], labels=["dog", "dog"]), "distinct"),
    (lambda: segment_metrics(REFERENCE, [], resolution_s=0), "resolution_s"),
    (lambda: event_metrics(REFERENCE, [], collar_s=-1), "collar_s"),
    (lambda: Event("a.wav", 2.0, 1.0, "dog"), "onset <= offset"),
    (lambda: Event("a.wav", float("nan"), 1.0, "dog"), "finite"),
    (lambda: Event("a.wav", -0.5, 1.0, "dog"), "0 <= onset"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_spans_from_probs_follow_pe_a_frame():
    probs = torch.tensor([0.1, 0.6, 0.7, 0.2, 0.9, 0.5])
    assert spans_from_probs(probs, 0.5, 0.5) == [(0.5, 1.5), (2.0, 2.5)]  # 0.5 is not above 0.5
    assert spans_from_probs(torch.ones(3), 0.5, 0.04) == [(0.0, pytest.approx(0.12))]  # runs to the end
    assert spans_from_probs(torch.zeros(4), 0.5, 0.04) == []
    assert spans_from_probs(torch.zeros(0), 0.5, 0.04) == []


def test_span_post_processing_merges_gaps_then_drops_short_spans():
    probs = torch.tensor([0.9, 0.9, 0.0, 0.9, 0.0, 0.0, 0.0, 0.9])
    assert spans_from_probs(probs, 0.5, 1.0) == [(0.0, 2.0), (3.0, 4.0), (7.0, 8.0)]
    assert spans_from_probs(probs, 0.5, 1.0, merge_gap_s=1.0) == [(0.0, 4.0), (7.0, 8.0)]
    assert spans_from_probs(probs, 0.5, 1.0, merge_gap_s=1.0, min_duration_s=2.0) == [(0.0, 4.0)]


@pytest.mark.parametrize("probs, message", [(torch.ones(2, 2), "one class track"),
                                            (torch.tensor([float("nan")]), "NaN")])
def test_spans_from_probs_rejects_bad_tracks(probs, message):
    with pytest.raises(ValueError, match=message):
        spans_from_probs(probs, 0.5, 0.04)


def test_events_from_frame_targets_score_perfectly():
    labels, hop = ["dog", "cat", "siren"], 0.04
    reference = [e for e in REFERENCE if e.file == "a.wav"]
    snapped = [Event(e.file, round(e.onset / hop) * hop, round(e.offset / hop) * hop, e.label) for e in reference]
    probs = event_roll(snapped, labels, hop).float()  # [frames, 3]
    estimated = events_from_probs("a.wav", probs, labels, 0.5, hop)
    assert [e.label for e in estimated] == ["dog", "cat"]
    assert event_metrics(reference, estimated)["f1_micro"] == 1.0


def test_frame_auroc_of_a_separable_track_is_one():
    labels, hop = ["dog", "cat"], 0.5
    reference = [Event("a.wav", 1.0, 2.0, "dog"), Event("b.wav", 0.0, 1.0, "cat")]
    probs = {"a.wav": torch.tensor([[0.1, 0.2], [0.2, 0.1], [0.9, 0.3], [0.8, 0.0]]),
             "b.wav": torch.tensor([[0.3, 0.7], [0.0, 0.9], [0.1, 0.2]]),
             "quiet.wav": torch.tensor([[0.05, 0.1]])}  # no events: negatives only
    out = frame_auroc(probs, reference, labels, hop)
    assert out == {"auroc": 1.0, "auroc/dog": 1.0, "auroc/cat": 1.0, "classes_scored": 2.0, "frames": 8.0}
    flipped = frame_auroc({f: 1 - p for f, p in probs.items()}, reference, labels, hop)
    assert flipped["auroc"] == 0.0


def test_frame_auroc_leaves_out_classes_without_positives():
    probs = {"a.wav": torch.tensor([[0.1, 0.5], [0.9, 0.5]])}
    out = frame_auroc(probs, [Event("a.wav", 0.5, 1.0, "dog")], ["dog", "owl"], 0.5)
    assert out["auroc"] == 1.0 and "auroc/owl" not in out and out["classes_scored"] == 1.0


@pytest.mark.parametrize("probs, message", [
    ({}, "no probability track for 1 file"),
    ({"a.wav": torch.ones(4)}, "must be \\[frames, 1 labels\\]"),
    ({"a.wav": torch.tensor([[float("nan")], [0.5]])}, "NaN"),
    ({"a.wav": torch.ones(8, 1)}, "no class has both"),
])
def test_frame_auroc_rejects_bad_tracks(probs, message):
    with pytest.raises(ValueError, match=message):
        frame_auroc(probs, [Event("a.wav", 0.0, 4.0, "dog")], ["dog"], 0.5)
