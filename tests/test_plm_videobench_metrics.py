"""PLM-VideoBench metrics and annotation readers pinned on hand-made predictions (lmms-eval's definitions)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from percli.core.data.plm_videobench import (
    AnnotationError,
    DenseCaption,
    FGQASample,
    RDCapSample,
    RegionSample,
    SGQASample,
    read_fgqa,
    read_plm_videobench,
    read_rdcap,
    read_region_boxes,
    read_rtloc,
    read_sgqa,
)
from percli.core.plm_videobench import (
    JudgePrompt,
    fgqa_is_correct,
    load_judge_prompt,
    max_ordered_matching,
    multi_binary_accuracy,
    parse_caption_judge_reply,
    parse_dense_captions,
    parse_fgqa_answer,
    parse_rtloc_window,
    parse_sgqa_judge_reply,
    read_judge_prompt,
    rescale_frame,
    score_fgqa,
    score_rcap,
    score_rdcap,
    score_rtloc,
    score_sgqa,
    segment_iou,
    soda_c,
)

EPS = 1e-8  # the benchmark's IoU denominator slack


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# FGQA


@pytest.mark.parametrize("prediction, answer_index, correct", [
    ("A", 0, True),
    ("(A) cut the onion", 0, True),
    ("Answer: (b).", 1, True),
    ("a.", 0, True),
    ("B) stir", 1, True),
    ("(A)\nbecause the knife", 0, True),  # "(a)" inside the first word
    ("B", 0, False),
    ("The answer is A", 0, False),  # first word "the"
    (" A", 0, False),  # leading space: the first word is empty
    ("", 0, False),
    ("A\nbecause", 0, False),  # split on spaces only: the word "a\nbecause" names nothing
    ("(", 0, False),  # no letter (lmms-eval's substring test would accept it for every option)
    (".", 1, False),
])
def test_fgqa_answer_rule(prediction, answer_index, correct):
    assert fgqa_is_correct(prediction, answer_index) is correct


def test_fgqa_parse_names_the_option_or_none():
    assert parse_fgqa_answer("(b) pour", 2) == 1
    assert parse_fgqa_answer("C", 2) is None  # only two options
    assert parse_fgqa_answer("I am not sure", 2) is None


def fgqa(uid: str, group: str, answer_index: int) -> FGQASample:
    return FGQASample(uid, group, "v.mp4", "q?", ("yes", "no"), answer_index)


def test_mbacc_counts_a_group_only_when_every_variant_is_right():
    samples = [fgqa("g1_0", "g1", 0), fgqa("g1_1", "g1", 1),  # both right
               fgqa("g2_0", "g2", 0), fgqa("g2_1", "g2", 1),  # one variant wrong
               fgqa("g3_0", "g3", 1),  # unparseable answer
               fgqa("g4_0", "g4", 0)]  # no prediction
    predictions = {"g1_0": "A", "g1_1": "(B) no", "g2_0": "(A)", "g2_1": "A", "g3_0": "maybe"}
    score = score_fgqa(samples, predictions)
    # groups: g1 right, g2 wrong (one of two), g3 wrong (unparsed), g4 wrong (missing) -> 1 / 4
    assert score.summary["MBAcc"] == pytest.approx(1 / 4)
    assert score.summary["accuracy"] == pytest.approx(3 / 6)  # g1_0, g1_1, g2_0
    assert (score.summary["groups"], score.summary["questions"]) == (4, 6)
    assert (score.summary["unparsed"], score.summary["missing"]) == (1, 1)
    assert [r["correct"] for r in score.per_sample] == [True, True, True, False, False, False]
    assert score.per_sample[4]["predicted_index"] is None


def test_multi_binary_accuracy_direct():
    assert multi_binary_accuracy([True, True, False, True], ["a", "a", "b", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="verdicts"):
        multi_binary_accuracy([True], ["a", "b"])


# ---------------------------------------------------------------------------------------------
# RTLoc


@pytest.mark.parametrize("reply, window", [
    ("[3, 10]", (3.0, 10.0)),
    ("The event happens in frames [3,10].", (3.0, 10.0)),
    ("[3.5, 10]", (3.5, 10.0)),
    ("[00, 12]", (0.0, 12.0)),  # a valid Python literal
    ("[ 3, 10]", None),  # no space allowed after "["
    ("[3 , 10]", None),  # nor before the comma
    ("[05, 12]", None),  # ast.literal_eval rejects an integer with a leading zero
    ("[05, 12] or rather [5, 12]", None),  # only the first bracket counts
    ("[-1, 5]", None),
    ("from frame 3 to frame 10", None),
])
def test_rtloc_window_parsing(reply, window):
    assert parse_rtloc_window(reply) == window


def test_rescale_frame_truncates_to_sampled_frames():
    assert rescale_frame(100, 300) == 10  # 100 / (300 / 32) = 10.67
    assert rescale_frame(299, 300) == 31
    assert rescale_frame(20, 64) == 10


def region(uid: str, start: int, end: int, total: int = 64) -> RegionSample:
    return RegionSample(uid, "sav_000001.mp4", 0, total, "the person opens the door", start, end)


def test_rtloc_iou_thresholds_are_strict_at_exact_boundaries():
    # Ground truth frames [0, 20] of 64 -> [0, 10] on 32 frames. IoU with [0, x] is x / (10 + 1e-8), a hair
    # under x / 10, and recall needs IoU > t: an exact 0.5 overlap does not count at 0.5.
    samples = [region(str(i), 0, 20) for i in range(7)]
    predictions = {"0": "[0, 10]", "1": "[0, 5]", "2": "[0, 7]", "3": "[0, 3]", "4": "[0, 9]",
                   "5": "no idea", "6": "[10, 0]"}  # 6: a reversed window is sorted
    score = score_rtloc(samples, predictions)
    # counted at:  0.3  0.5  0.7  0.9
    # [0, 10]       x    x    x    x
    # [0, 5]        x
    # [0, 7]        x    x
    # [0, 3]        -
    # [0, 9]        x    x    x
    # no idea       -
    # [10, 0]       x    x    x    x
    assert score.summary["R@0.3"] == pytest.approx(5 / 7)
    assert score.summary["R@0.5"] == pytest.approx(4 / 7)
    assert score.summary["R@0.7"] == pytest.approx(3 / 7)
    assert score.summary["R@0.9"] == pytest.approx(2 / 7)
    assert score.summary["meanR"] == pytest.approx((5 + 4 + 3 + 2) / 28)
    assert score.summary["mIoU"] == pytest.approx((10 + 5 + 7 + 3 + 9 + 0 + 10) / (10 + EPS) / 7, abs=1e-12)
    assert score.summary["parse_failures"] == 1
    assert score.per_sample[1]["iou"] < 0.5


def test_rtloc_parse_failure_is_a_miss_even_for_short_videos():
    # 16 frames: ground truth [0, 15] -> [0, 30]. lmms-eval's stand-in window [25, 35] would overlap it; a reply
    # without a window is a miss here.
    score = score_rtloc([region("a", 0, 15, total=16), region("b", 0, 15, total=16)], {"a": "soon"})
    assert score.summary["mIoU"] == 0.0 and score.summary["meanR"] == 0.0
    assert (score.summary["parse_failures"], score.summary["missing"]) == (1, 1)


def test_segment_iou_of_disjoint_and_empty_windows():
    assert segment_iou((0, 10), (10, 20)) == 0.0
    assert segment_iou((5, 5), (5, 5)) == 0.0
    assert segment_iou((12, 20), (10, 20)) == pytest.approx(8 / 10)


# ---------------------------------------------------------------------------------------------
# RDCap: parsing, the matching, SODA_c


def test_dense_caption_parsing():
    reply = "[0, 5]: A man picks up a cup.\n[6, 12]: He drinks, \n"
    assert parse_dense_captions(reply) == [(0, 5, "A man picks up a cup."), (6, 12, "He drinks")]
    framed = "Frame [0, 5]: walks left\nFrame [6, 9]: time: noon"
    assert parse_dense_captions(framed) == [(0, 5, "walks left"), (6, 9, "time  noon")]  # ":" -> " "
    assert parse_dense_captions("The person walks, then sits.") == []
    assert parse_dense_captions("[1.5, 4]: decimals are not events") == []


def test_max_ordered_matching_keeps_both_orders():
    assert max_ordered_matching([[3, 0], [0, 3]]) == 6
    assert max_ordered_matching([[1, 5], [4, 1]]) == 5  # (0,0)+(1,1) = 2 < (0,1) = 5; (0,1)+(1,0) would cross
    assert max_ordered_matching([[0.2, 0.9, 0.1]]) == pytest.approx(0.9)


def test_soda_c_small_case_by_hand():
    # Ground truth g1 [0, 10], g2 [10, 20]; predictions p1 [0, 10], p2 [12, 20], p3 [20, 30].
    # IoU (rows g, columns p): g1-p1 = 10 / (10 + eps); g2-p2: intersection 8, union min(10, 10 + 8) = 10 ->
    # 8 / (10 + eps); every other pair is disjoint -> 0.
    # Similarity (judge score / 10): g1-p1 0.8, g2-p2 0.5, others 0.2 (multiplied by IoU 0).
    # IoU x similarity = [[0.8, 0, 0], [0, 0.4, 0]]; best ordered matching g1-p1 + g2-p2 = 1.2.
    # precision = 1.2 / 3 = 0.4, recall = 1.2 / 2 = 0.6, F = 2 * 0.4 * 0.6 / 1.0 = 0.48.
    similarity = [[0.8, 0.2, 0.2], [0.2, 0.5, 0.2]]
    value = soda_c([(0, 10), (10, 20)], [(0, 10), (12, 20), (20, 30)], similarity)
    assert value == pytest.approx(0.48, abs=1e-8)


def test_soda_c_order_of_written_events_matters():
    # Predictions written in reverse time order: p1 = g2's window, p2 = g1's, every similarity 1.
    # Scores [[0, 1], [1, 0]]: the two pairs cross, only one counts -> P = R = 1/2, F = 0.5 (lmms-eval).
    # Sorted by start as the SODA release does: [[1, 0], [0, 1]] -> 2 -> F = 1.
    gt, pred, ones = [(0, 10), (10, 20)], [(10, 20), (0, 10)], [[1.0, 1.0], [1.0, 1.0]]
    assert soda_c(gt, pred, ones) == pytest.approx(0.5, abs=1e-8)
    assert soda_c(gt, pred, ones, sort_by_start=True) == pytest.approx(1.0, abs=1e-8)
    assert soda_c(gt, [], []) == 0.0


class ScriptedJudge:
    """Replies from a table keyed by (ground truth, prediction) found in the prompt; records every prompt."""

    def __init__(self, replies: dict[tuple[str, str], str]):
        self.replies, self.prompts = replies, []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        text = prompt if isinstance(prompt, str) else prompt[1]["content"]
        for (truth, predicted), reply in self.replies.items():
            if f"Predicted caption: {predicted}\n" in text and text.endswith(f"Ground truth caption: {truth}"):
                return reply
        raise AssertionError(f"unexpected prompt {text!r}")


def test_score_rdcap_end_to_end_with_a_scripted_judge():
    # Video of 64 frames: ground-truth frames [0, 20] and [20, 40] -> [0, 10] and [10, 20] on 32 frames.
    sample = RDCapSample("7", "sav_000007.mp4", 1, 64, (DenseCaption(0, 20, "picks up a cup"),
                                                         DenseCaption(20, 40, "drinks from it")))
    judge = ScriptedJudge({("picks up a cup", "grabs a cup"): '{"score": 8, "explanation": "same"}',
                           ("picks up a cup", "sips"): '{"score": 2, "explanation": "no"}',
                           ("drinks from it", "grabs a cup"): '{"score": 2, "explanation": "no"}',
                           ("drinks from it", "sips"): "five out of ten"})  # unparsed -> similarity 0
    predictions = {7: "[0, 10]: grabs a cup\n[12, 20]: sips", "8": "nothing happens"}
    empty = RDCapSample("8", "sav_000008.mp4", 1, 64, (DenseCaption(0, 64, "stands still"),))
    score = score_rdcap([sample, empty], predictions, judge)
    # sample 7: IoU x similarity = [[0.8, 0], [0, 0.8 * 0]] -> 0.8; P = 0.8 / 2, R = 0.8 / 2 -> F = 0.4.
    # sample 8: no "[s, e]" event -> 0, no judge call.
    assert score.per_sample[0]["SODA_c"] == pytest.approx(0.4, abs=1e-8)
    assert score.summary["SODA_c"] == pytest.approx(0.2, abs=1e-8)
    assert (score.summary["judge_calls"], score.summary["judge_parse_failures"]) == (4, 1)
    assert (score.summary["no_events"], score.summary["missing"]) == (1, 0)
    assert score.summary["judge_prompt"] == "plm-videobench/caption-judge/percli-v1"
    assert score.per_sample[0]["targets"] == [(0, 10), (10, 20)]


# ---------------------------------------------------------------------------------------------
# Judge replies and judged tasks


@pytest.mark.parametrize("reply, lenient, expected", [
    ('{"score": 7, "explanation": "close"}', False, 0.7),
    ('{"score": 7.5, "explanation": "close"}', False, 0.75),
    ('```json\n{"score": 7, "explanation": "close"}\n```', False, None),  # strict, as lmms-eval
    ('```json\n{"score": 7, "explanation": "close"}\n```', True, 0.7),
    ("Score: 7", True, None),
    ('{"score": "7"}', False, None),
    ('{"score": 11}', False, None),
    ('{"score": -1}', False, None),
    ('{"score": true}', False, None),
    ('{"score": NaN}', False, None),
    ('{"explanation": "no score"}', False, None),
    ("[7]", False, None),
    ("", False, None),
])
def test_caption_judge_reply_parsing(reply, lenient, expected):
    got = parse_caption_judge_reply(reply, lenient=lenient)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("reply, lenient, correct, score, parsed", [
    ('{"pred": "yes", "score": 4}', False, True, 4.0, True),
    ('{"pred": "no", "score": 1}', False, False, 1.0, True),
    ('{"pred": "Yes", "score": 5}', False, False, 5.0, True),  # JSON verdicts compare exactly with "yes"
    ("{'pred': 'yes', 'score': 4}", False, True, None, False),  # Python quotes: the "yes" fallback
    ('{"pred": "yes", "score": 4.8}}', False, True, None, False),  # the original prompt's example reply
    ('{"pred": "yes", "score": 4.8}}', True, True, 4.8, True),
    ("No, they differ.", False, False, None, False),
    ('{"score": 3}', False, False, None, False),  # no "pred": a parse failure (lmms-eval raises KeyError)
])
def test_sgqa_judge_reply_parsing(reply, lenient, correct, score, parsed):
    verdict = parse_sgqa_judge_reply(reply, lenient=lenient)
    assert (verdict.correct, verdict.score, verdict.parsed) == (correct, score, parsed)


def test_score_sgqa_builds_the_request_and_counts_failures():
    samples = [SGQASample("q1", "a.mp4", "What did I put in the bag?", "a red apple"),
               SGQASample("q2", "b.mp4", "Where are my keys?", "on the table"),
               SGQASample("q3", "c.mp4", "Did I lock the door?", "yes")]
    replies = iter(['{"pred": "yes", "score": 5}', "I cannot judge this."])
    prompts = []

    def judge(prompt: str) -> str:
        prompts.append(prompt)
        return next(replies)

    score = score_sgqa(samples, {"q1": "an apple", "q2": "in the kitchen"}, judge)
    assert score.summary["accuracy"] == pytest.approx(1 / 3)
    assert (score.summary["judge_parse_failures"], score.summary["missing"]) == (1, 1)
    assert score.summary["mean_judge_score"] == 5.0
    assert score.summary["judge_prompt"] == "plm-videobench/sgqa-judge/percli-v1"
    assert len(prompts) == 2  # no judge call for the missing prediction
    assert "Question: What did I put in the bag?\nCorrect answer: a red apple\nPredicted answer: an apple" in prompts[0]


def test_score_rcap_mean_of_score_over_ten_with_messages():
    samples = [region("1", 0, 20), region("2", 0, 20), region("3", 0, 20)]
    seen = []

    def chat_judge(messages) -> str:
        seen.append(messages)
        return {"one": '{"score": 9, "explanation": "ok"}', "two": "garbage"}[messages[1]["content"].split(
            "Predicted caption: ")[1].split("\n")[0]]

    score = score_rcap(samples, {"1": "one", "2": "two"}, chat_judge, messages=True)
    assert score.summary["judge_score"] == pytest.approx((0.9 + 0 + 0) / 3)
    assert score.summary["judge_success_rate"] == pytest.approx(1 / 2)
    assert (score.summary["judge_parse_failures"], score.summary["missing"]) == (1, 1)
    assert [m["role"] for m in seen[0]] == ["system", "user"]
    assert seen[0][1]["content"].endswith("Ground truth caption: the person opens the door")


def test_shipped_judge_prompts_and_custom_ones(tmp_path):
    for kind, fields in (("caption", {"prediction", "ground_truth"}), ("sgqa", {"question", "answer", "prediction"})):
        prompt = load_judge_prompt(kind)
        assert prompt.fields == fields and prompt.version.endswith("percli-v1")
        assert "#" not in prompt.system[:1] and "version:" not in prompt.system
    assert '{"score": <int>, "explanation": "<str>"}' in load_judge_prompt("caption").system
    with pytest.raises(ValueError, match="shipped"):
        load_judge_prompt("sgqa", "v9")
    custom = tmp_path / "mine.txt"
    custom.write_text("# mine\nversion: my-judge-2\n=== system\nBe fair.\n=== user\nQ ${question} A ${answer}\n")
    prompt = read_judge_prompt(custom)
    assert prompt == JudgePrompt("my-judge-2", "Be fair.", "Q ${question} A ${answer}")
    with pytest.raises(ValueError, match="exactly the fields"):  # no ${prediction}: refused before any call
        score_sgqa([SGQASample("q", "v", "q?", "a")], {"q": "a"}, lambda p: "", prompt=prompt)
    (tmp_path / "bad.txt").write_text("=== system\nx\n=== user\ny\n")
    with pytest.raises(ValueError, match="version"):
        read_judge_prompt(tmp_path / "bad.txt")


# ---------------------------------------------------------------------------------------------
# Annotation readers


FGQA_RECORD = {"uid": "100_0", "qa_uid": "100", "video": "clip.mp4", "question": "What is cut?",
               "answer": "an onion", "options": {"option_0": "a carrot", "option_1": "an onion"},
               "answer_index": 1, "metadata": {"source_dataset": "coin", "question_type": "object"}}


def test_read_fgqa_jsonl_and_parquet_agree(tmp_path):
    second = {**FGQA_RECORD, "uid": "100_1", "answer": "a carrot", "answer_index": 0}
    records = [FGQA_RECORD, second]
    from_jsonl = read_fgqa(write_jsonl(tmp_path / "plm_fgqa_test.jsonl", records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "fgqa.parquet")
    from_parquet = read_fgqa(tmp_path / "fgqa.parquet")
    assert from_jsonl == from_parquet
    assert from_jsonl[0].options == ("a carrot", "an onion") and from_jsonl[0].answer_index == 1
    assert from_jsonl[1].answer == "a carrot" and from_jsonl[0].qa_uid == "100"
    assert from_jsonl[0].extra["metadata"]["source_dataset"] == "coin"


def test_read_fgqa_groups_by_uid_prefix_without_qa_uid(tmp_path):
    record = {k: v for k, v in FGQA_RECORD.items() if k != "qa_uid"}
    (sample,) = read_fgqa(write_jsonl(tmp_path / "f.jsonl", [record]))
    assert sample.qa_uid == "100"


@pytest.mark.parametrize("change, message", [
    ({"answer": "a potato"}, "none of the options"),
    ({"question": None}, "'question' must be a non-empty string"),
    ({"options": {"option_0": "only one"}}, "at least two"),
    ({"options": {"option_0": "a", "option_2": "b"}}, "option_0..option_<N-1>"),
])
def test_read_fgqa_errors_name_the_line(tmp_path, change, message):
    path = write_jsonl(tmp_path / "f.jsonl", [FGQA_RECORD, {**FGQA_RECORD, "uid": "100_1", **change}])
    with pytest.raises(AnnotationError, match=rf"f\.jsonl line 2: .*{message}"):
        read_fgqa(path)


def test_reader_rejects_bad_json_duplicates_and_unknown_formats(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text(json.dumps({"uid": "a", "video": "v", "question": "q", "answer": "x"}) + "\n{oops\n")
    with pytest.raises(AnnotationError, match=r"s\.jsonl line 2: bad JSON"):
        read_sgqa(bad)
    twice = write_jsonl(tmp_path / "t.jsonl", [{"uid": "a", "video": "v", "question": "q", "answer": "x"}] * 2)
    with pytest.raises(AnnotationError, match=r"t\.jsonl line 2: uid 'a' repeats"):
        read_sgqa(twice)
    (tmp_path / "s.csv").write_text("uid,video,question,answer\n")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        read_sgqa(tmp_path / "s.csv")
    with pytest.raises(AnnotationError, match="unknown PLM-VideoBench task"):
        read_plm_videobench("vqa", twice)


REGION = {"uid": 3, "video": "sav_000003.mp4", "masklet_id": 2, "total_frames": 120,
          "caption": "the dog jumps", "start_frame": 12, "end_frame": 60}


def test_read_region_tasks_and_rdcap(tmp_path):
    (sample,) = read_rtloc(write_jsonl(tmp_path / "plm_rtloc_test.jsonl", [REGION]))
    assert sample == RegionSample("3", "sav_000003.mp4", 2, 120, "the dog jumps", 12, 60)
    with pytest.raises(AnnotationError, match=r"line 1: field 'total_frames' must be an integer >= 1"):
        read_plm_videobench("rcap", write_jsonl(tmp_path / "r.jsonl", [{**REGION, "total_frames": 0}]))
    dense = {k: v for k, v in REGION.items() if k not in ("caption", "start_frame", "end_frame")}
    dense["dense_captions"] = [{"start_frame": 0, "end_frame": 30, "caption": "runs"},
                               {"start_frame": 31, "end_frame": 90, "caption": "jumps"}]
    pq.write_table(pa.Table.from_pylist([dense]), tmp_path / "rdcap.parquet")
    (item,) = read_rdcap(tmp_path / "rdcap.parquet")
    assert item.events == (DenseCaption(0, 30, "runs"), DenseCaption(31, 90, "jumps")) and item.uid == "3"
    pq.write_table(pa.Table.from_pylist([{**dense, "dense_captions": []}]), tmp_path / "empty.parquet")
    with pytest.raises(AnnotationError, match=r"empty\.parquet row 0: field 'dense_captions' must be a non-empty"):
        read_rdcap(tmp_path / "empty.parquet")
    bad_event = {**dense, "dense_captions": [{"start_frame": 0, "end_frame": 5}]}
    with pytest.raises(AnnotationError, match=r"line 1 dense_captions\[0\]: field 'caption'"):
        read_rdcap(write_jsonl(tmp_path / "d.jsonl", [bad_event]))


def test_read_region_boxes(tmp_path):
    path = write_jsonl(tmp_path / "metadata_test.jsonl", [
        {"video": "sav_000003.mp4", "masklet_id": 2, "bbox": {"0": [1, 2, 30, 40], "6": None}}])
    assert read_region_boxes(path) == {("sav_000003.mp4", 2): {0: (1.0, 2.0, 30.0, 40.0), 6: None}}
    bad = write_jsonl(tmp_path / "m.jsonl", [{"video": "v", "masklet_id": 0, "bbox": {"0": [1, 2]}}])
    with pytest.raises(AnnotationError, match=r"m\.jsonl line 1 bbox\['0'\]: a box must be"):
        read_region_boxes(bad)
