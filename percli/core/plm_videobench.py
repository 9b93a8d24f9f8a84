"""PLM-VideoBench metrics (Cho et al., "PerceptionLM", 2025), as lmms-eval's ``plm_videobench`` tasks define them.

Samples come from :mod:`percli.core.data.plm_videobench`; predictions are the model's raw text outputs keyed by
``str(uid)``. A sample without a prediction is scored as wrong (0) without asking a judge and counted in
``missing``. Scores are fractions in [0, 1]; the paper's tables show them x 100. Every scorer returns a
:class:`TaskScore`: a ``summary`` (figures and counts, for ``summary.json``) and one record per sample.

- **FGQA, MBAcc** (``fgqa_utils.py``): an answer is right when the first space-separated word of the lower-cased
  prediction (after removing any ``answer:``), with its dots removed, is part of the right option's ``(x)``
  (``a``, ``(a``, ``a)``, ``(a)``, ``a.``), or contains ``(x)``. ``A``, ``(A) the knife`` and ``Answer: (a).``
  are right for option A; ``The answer is A``, ``A\\n`` (no space after the letter) and an empty reply are
  wrong. One deliberate difference: a word without the letter (``(``, ``)``, ``.``) is a substring of every
  ``(x)`` and counts as right in lmms-eval; here it is wrong (and counted in ``unparsed``). MBAcc: the
  questions are grouped by ``qa_uid``; a group counts only when every question in it is right; the mean
  over groups.
- **RTLoc, meanR and mIoU** (``rtloc_utils.py``, ``eval_utils.py``): the ground truth [start_frame, end_frame]
  is rescaled to the 32 sampled frames, ``int(frame / (total_frames / 32))``; the prediction is the first
  ``[a, b]`` in the reply (non-negative integers or decimals, optional spaces after the comma only). An
  integer written with a leading zero (``[05, 12]``) fails, as Python's ``ast.literal_eval`` in lmms-eval
  rejects it. IoU of two windows (each sorted) is ``inter / (min(hull, len_a + len_b) + 1e-8)`` (SODA's
  ``utils.iou``), so an exact 0.5 overlap is 0.49999... A window counts at threshold t when IoU > t
  (strictly), t in {0.3, 0.5, 0.7, 0.9}; meanR is the mean over the thresholds of the recall, mIoU the mean
  IoU. A reply without a window scores IoU 0: lmms-eval substitutes [end_frame + 10, end_frame + 20] in
  source-video frames, which misses the rescaled ground truth whenever total_frames >= 32.
- **RDCap, SODA_c** (``rdcap_utils.py``; Fujita et al., ECCV 2020, github fujiso/SODA): the reply is cut into
  events ``[s, e]`` followed by their caption text (integers; in the caption ``:`` becomes a space, ``\\nFrame ``
  is dropped, a trailing comma is removed, newlines become spaces). The caption similarity is not METEOR but
  the caption judge's score / 10 (0 when its reply does not parse), for every (ground truth, prediction)
  pair. SODA_c with IoU threshold 0 only: the largest sum of IoU x similarity over order-preserving one-to-one
  matchings of ground-truth and predicted events (dynamic programming, events in the order they were
  written; the SODA release sorts them by start, ``sort_by_start=True``), divided by the number of
  predicted (precision) and ground-truth (recall) events, and their harmonic mean. A reply without any event
  scores 0. The mean over videos.
- **SGQA, accuracy** (``sgqa_utils.py``): a judge compares question, correct answer and prediction and replies
  with ``{"pred": "yes"|"no", "score": 0-5}``. A reply that is a JSON object with ``pred`` counts as right
  when ``pred == "yes"``; any other reply (Python-dict quotes, prose) counts as right when it contains
  ``yes`` or ``Yes``, and is counted in ``judge_parse_failures``. Accuracy is the fraction right.
- **RCap, judge score** (``rcap_utils.py``): the caption judge's ``score`` / 10, 0 when the reply is not a
  JSON object with a numeric score; the mean over samples, and the fraction of replies that parsed.

Judge replies are parsed strictly (the whole reply must be JSON) as in lmms-eval; ``lenient=True`` also takes
the first JSON object inside a longer reply (code fences, a preamble), for local judges that add them.
Where lmms-eval would crash (a JSON reply without ``score``/``pred``, a score that is not a number) the
reply counts as a parse failure; a caption score outside [0, 10] does too. Judge prompts are versioned text
files (``plm_judge_prompts/``, :func:`load_judge_prompt`) and their version is written into every summary.
A judge is any callable from the prompt text to the reply text (``messages=True``: from a chat message list
``[{"role": "system", ...}, {"role": "user", ...}]``, for chat endpoints); an exception it raises stops the
scoring, as a judge that cannot be reached must not turn into zeros.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from percli.core.data.plm_videobench import FGQASample, RDCapSample, RegionSample, SGQASample

NUM_VIDEO_FRAMES = 32  # frames sampled per video by lmms-eval's PLM-VideoBench tasks (num_video_frames)
RTLOC_IOU_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
SODA_IOU_THRESHOLDS = (0.0,)  # lmms-eval's rdcap: SODA_c at IoU threshold 0 only
IOU_EPS = 1e-8
CAPTION_SCORE_MAX = 10.0
PROMPT_DIR = Path(__file__).parent / "plm_judge_prompts"
JUDGE_FIELDS = {"caption": ("prediction", "ground_truth"), "sgqa": ("question", "answer", "prediction")}

Judge = Callable[[Any], str]  # prompt text (or chat messages with messages=True) -> reply text


@dataclass
class TaskScore:
    """``summary``: figures (fractions) and counts; ``per_sample``: one record per sample, in sample order."""

    summary: dict[str, Any]
    per_sample: list[dict[str, Any]]


def _predictions(predictions: Mapping[Any, str | None]) -> dict[str, str]:
    return {str(uid): text for uid, text in predictions.items() if isinstance(text, str)}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _check_samples(samples: Sequence[Any], kind: type | tuple[type, ...], task: str) -> None:
    if not samples:
        raise ValueError(f"no {task} samples to score")
    wrong = next((s for s in samples if not isinstance(s, kind)), None)
    if wrong is not None:
        raise TypeError(f"{task} scoring needs samples from read_plm_videobench({task!r}, ...), "
                        f"got a {type(wrong).__name__}")


# ---------------------------------------------------------------------------------------------
# Windows: rescaling and IoU


def rescale_frame(frame: float, total_frames: int, num_frames: int = NUM_VIDEO_FRAMES) -> int:
    """A source-video frame index on the `num_frames` sampled frames, truncated as lmms-eval does."""
    return int(frame / (total_frames / num_frames))


def segment_iou(window_a: Sequence[float], window_b: Sequence[float]) -> float:
    """Temporal IoU of two [start, end] windows (either order), SODA's formula with its 1e-8 in the union."""
    start_a, end_a = float(min(window_a)), float(max(window_a))
    start_b, end_b = float(min(window_b)), float(max(window_b))
    intersection = max(0.0, min(end_a, end_b) - max(start_a, start_b))
    union = min(max(end_a, end_b) - min(start_a, start_b), (end_a - start_a) + (end_b - start_b))
    return intersection / (union + IOU_EPS)


# ---------------------------------------------------------------------------------------------
# FGQA


def _first_word(prediction: str) -> str:
    text = prediction.lower()
    if "answer:" in text:
        text = text.replace("answer:", "").strip()
    return text.split(" ")[0]


def fgqa_is_correct(prediction: str, answer_index: int) -> bool:
    """Whether `prediction` names option `answer_index` (0 = A) by the benchmark's rule (module docstring)."""
    word = _first_word(prediction)
    letter = chr(ord("a") + answer_index)
    option = f"({letter})"
    if letter not in word:  # "(", ")", "." are substrings of every "(x)": no letter, no answer
        return False
    return word.replace(".", "") in option or option in word


def parse_fgqa_answer(prediction: str, num_options: int) -> int | None:
    """The option index (0 = A) the prediction names, the first one if it names several; None if none."""
    return next((i for i in range(num_options) if fgqa_is_correct(prediction, i)), None)


def multi_binary_accuracy(correct: Sequence[bool], groups: Sequence[Hashable]) -> float:
    """The fraction of groups whose questions are all correct (question i belongs to ``groups[i]``)."""
    if len(correct) != len(groups):
        raise ValueError(f"{len(correct)} verdicts but {len(groups)} group keys")
    if not correct:
        raise ValueError("no questions to score")
    group_ok: dict[Hashable, bool] = {}
    for ok, group in zip(correct, groups):
        group_ok[group] = group_ok.get(group, True) and bool(ok)
    return sum(group_ok.values()) / len(group_ok)


def score_fgqa(samples: Sequence[FGQASample], predictions: Mapping[Any, str | None]) -> TaskScore:
    """FGQA: ``MBAcc`` (the benchmark figure), per-question ``accuracy``, ``groups``, ``questions``,
    ``unparsed`` (replies naming no option) and ``missing``."""
    _check_samples(samples, FGQASample, "fgqa")
    preds = _predictions(predictions)
    records, unparsed, missing = [], 0, 0
    for sample in samples:
        text = preds.get(sample.uid)
        chosen = None if text is None else parse_fgqa_answer(text, len(sample.options))
        correct = text is not None and fgqa_is_correct(text, sample.answer_index)
        missing += text is None
        unparsed += text is not None and chosen is None
        records.append({"uid": sample.uid, "qa_uid": sample.qa_uid, "prediction": text, "predicted_index": chosen,
                        "answer_index": sample.answer_index, "correct": correct})
    correct = [r["correct"] for r in records]
    summary = {"MBAcc": multi_binary_accuracy(correct, [s.qa_uid for s in samples]), "accuracy": _mean(correct),
               "groups": len({s.qa_uid for s in samples}), "questions": len(samples), "unparsed": unparsed,
               "missing": missing}
    return TaskScore(summary, records)


# ---------------------------------------------------------------------------------------------
# RTLoc

_WINDOW = re.compile(r"\[([0-9]+(?:\.[0-9]+)?),\s*([0-9]+(?:\.[0-9]+)?)\]")
_LEADING_ZERO_INT = re.compile(r"0+[1-9][0-9]*")  # "05": not a Python integer literal


def parse_rtloc_window(reply: str) -> tuple[float, float] | None:
    """The first ``[start, end]`` of a reply as lmms-eval reads it; None when there is none or it is invalid."""
    match = _WINDOW.search(reply)
    if match is None or any(_LEADING_ZERO_INT.fullmatch(number) for number in match.groups()):
        return None  # only the first bracket counts: a bad one is a failure even if a good one follows
    return float(match.group(1)), float(match.group(2))


def score_rtloc(samples: Sequence[RegionSample], predictions: Mapping[Any, str | None],
                num_frames: int = NUM_VIDEO_FRAMES,
                thresholds: Sequence[float] = RTLOC_IOU_THRESHOLDS) -> TaskScore:
    """RTLoc: ``meanR`` (the benchmark figure), ``R@<t>`` per IoU threshold, ``mIoU``, ``parse_failures``,
    ``missing`` and ``instances``. Windows are on `num_frames` sampled frames."""
    _check_samples(samples, RegionSample, "rtloc")
    preds = _predictions(predictions)
    records, failures, missing = [], 0, 0
    for sample in samples:
        text = preds.get(sample.uid)
        window = None if text is None else parse_rtloc_window(text)
        missing += text is None
        failures += text is not None and window is None
        target = (rescale_frame(sample.start_frame, sample.total_frames, num_frames),
                  rescale_frame(sample.end_frame, sample.total_frames, num_frames))
        iou = 0.0 if window is None else segment_iou(window, target)
        records.append({"uid": sample.uid, "prediction": text, "window": window, "target": target, "iou": iou,
                        "recall": {f"R@{t}": float(iou > t) for t in thresholds}})
    summary: dict[str, Any] = {
        f"R@{t}": _mean([r["recall"][f"R@{t}"] for r in records]) for t in thresholds}
    summary["meanR"] = _mean([summary[f"R@{t}"] for t in thresholds])
    summary["mIoU"] = _mean([r["iou"] for r in records])
    summary.update(parse_failures=failures, missing=missing, instances=len(samples))
    return TaskScore(summary, records)


# ---------------------------------------------------------------------------------------------
# RDCap: dense-caption parsing and SODA_c

_DENSE_EVENT = re.compile(r"\[(\d+),\s*(\d+)\]([^[]*)")


def parse_dense_captions(reply: str) -> list[tuple[int, int, str]]:
    """The (start, end, caption) events of a dense-caption reply (``[s, e]: text`` per event), in reply order."""
    events = []
    for start, end, text in _DENSE_EVENT.findall(reply):
        caption = text.replace(":", " ").replace("\nFrame ", "").strip()
        caption = caption[:-1] if caption.endswith(",") else caption
        events.append((int(start), int(end), caption.strip().replace("\n", " ").strip()))
    return events


def max_ordered_matching(scores: Sequence[Sequence[float]]) -> float:
    """The largest total score of a one-to-one matching of rows to columns that keeps both orders (no two
    pairs cross), SODA's dynamic programme: best[i][j] = max(best[i-1][j], best[i][j-1],
    best[i-1][j-1] + scores[i][j]). Scores must be >= 0."""
    cols = len(scores[0]) if len(scores) else 0
    previous = [0.0] * (cols + 1)  # best over rows < i; index j + 1 = columns <= j
    for row in scores:
        if len(row) != cols:
            raise ValueError("scores must be a rectangular matrix")
        current = [0.0] * (cols + 1)
        for j, value in enumerate(row):
            if value < 0:
                raise ValueError(f"scores must be >= 0, got {value}")
            current[j + 1] = max(previous[j + 1], current[j], previous[j] + value)
        previous = current
    return previous[-1]


def soda_c(gt_windows: Sequence[Sequence[float]], pred_windows: Sequence[Sequence[float]],
           similarity: Sequence[Sequence[float]], iou_thresholds: Sequence[float] = SODA_IOU_THRESHOLDS,
           sort_by_start: bool = False) -> float:
    """SODA_c F-measure of one video.

    Args:
        gt_windows: [start, end] of each ground-truth event.
        pred_windows: [start, end] of each predicted event (none: 0).
        similarity: [len(gt_windows)][len(pred_windows)] caption similarities in [0, 1].
        iou_thresholds: IoUs below a threshold are zeroed; the F-measures are averaged over the thresholds.
        sort_by_start: Order both event lists by start first, as the SODA release does (lmms-eval does not).
    """
    num_gt, num_pred = len(gt_windows), len(pred_windows)
    if num_gt == 0:
        raise ValueError("SODA needs at least one ground-truth event")
    if num_pred == 0:
        return 0.0
    if len(similarity) != num_gt or any(len(row) != num_pred for row in similarity):
        raise ValueError(f"similarity must be {num_gt} x {num_pred} (ground truth x predictions)")
    gt_order, pred_order = list(range(num_gt)), list(range(num_pred))
    if sort_by_start:
        gt_order.sort(key=lambda i: gt_windows[i][0])
        pred_order.sort(key=lambda j: pred_windows[j][0])
    iou = [[segment_iou(pred_windows[j], gt_windows[i]) for j in pred_order] for i in gt_order]
    f_measures = []
    for threshold in iou_thresholds:
        scores = [[(v if v >= threshold else 0.0) * similarity[i][j] for v, j in zip(row, pred_order)]
                  for row, i in zip(iou, gt_order)]
        total = max_ordered_matching(scores)
        precision, recall = total / num_pred, total / num_gt
        f_measures.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return _mean(f_measures)


# ---------------------------------------------------------------------------------------------
# Judge prompts


@dataclass(frozen=True)
class JudgeRequest:
    version: str
    system: str
    user: str

    @property
    def text(self) -> str:
        """System and user parts as one prompt, for judges that take a single text."""
        return f"{self.system}\n\n{self.user}"

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


@dataclass(frozen=True)
class JudgePrompt:
    """A versioned judge prompt: a system text and a user template with ``${name}`` fields."""

    version: str
    system: str
    user: str

    @property
    def fields(self) -> set[str]:
        return set(string.Template(self.user).get_identifiers()) | set(string.Template(self.system).get_identifiers())

    def render(self, **values: str) -> JudgeRequest:
        return JudgeRequest(self.version, string.Template(self.system).substitute(values),
                            string.Template(self.user).substitute(values))


def read_judge_prompt(path: str | Path) -> JudgePrompt:
    """A judge prompt file: ``#`` comments, a ``version: ...`` line, then ``=== system`` and ``=== user`` sections.

    Raises:
        ValueError: when the file lacks the version line or one of the two sections.
    """
    path = Path(path)
    version, section, parts = None, None, {"system": [], "user": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("=== "):
            section = line[4:].strip()
            if section not in parts:
                raise ValueError(f"{path}: unknown section {section!r}; use '=== system' and '=== user'")
        elif section is not None:
            parts[section].append(line)
        elif line.startswith("version:"):
            version = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}: {line[:60]!r} before the first section is neither a comment nor 'version:'")
    texts = {name: "\n".join(lines).strip("\n") for name, lines in parts.items()}
    if not version or not texts["system"] or not texts["user"]:
        raise ValueError(f"{path}: a judge prompt needs a 'version:' line and non-empty '=== system' and "
                         "'=== user' sections")
    return JudgePrompt(version, texts["system"], texts["user"])


def load_judge_prompt(kind: str, version: str = "v1") -> JudgePrompt:
    """A shipped judge prompt: `kind` ``caption`` (RCap, RDCap) or ``sgqa``, e.g. ``plm_judge_prompts/sgqa_v1.txt``."""
    path = PROMPT_DIR / f"{kind}_{version}.txt"
    if kind not in JUDGE_FIELDS or not path.is_file():
        shipped = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
        raise ValueError(f"no judge prompt {kind!r} version {version!r}; shipped: {', '.join(shipped)}")
    return read_judge_prompt(path)


def _judge_prompt(prompt: JudgePrompt | None, kind: str) -> JudgePrompt:
    prompt = load_judge_prompt(kind) if prompt is None else prompt
    needed = set(JUDGE_FIELDS[kind])
    if prompt.fields != needed:
        raise ValueError(f"judge prompt {prompt.version!r} must use exactly the fields "
                         f"{', '.join(sorted(needed))}; it uses {', '.join(sorted(prompt.fields)) or 'none'}")
    return prompt


def _ask(judge: Judge, request: JudgeRequest, messages: bool) -> str:
    reply = judge(request.messages if messages else request.text)
    return reply if isinstance(reply, str) else ""  # None (an empty completion) parses as nothing


# ---------------------------------------------------------------------------------------------
# Judge replies


def _json_object(reply: str, lenient: bool) -> Any:
    """The reply as JSON (None when it is not); `lenient`: else the first JSON object inside it."""
    try:
        return json.loads(reply)
    except ValueError:
        pass
    if lenient:
        decoder = json.JSONDecoder()
        for start in (m.start() for m in re.finditer(r"\{", reply)):
            try:
                found, _ = decoder.raw_decode(reply, start)
            except ValueError:
                continue
            if isinstance(found, dict):
                return found
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def parse_caption_judge_reply(reply: str, lenient: bool = False) -> float | None:
    """The caption judge's ``score`` / 10 in [0, 1]; None when the reply is not a JSON object holding a number
    in [0, 10] under ``score``."""
    found = _json_object(reply, lenient)
    score = _number(found.get("score")) if isinstance(found, dict) else None
    if score is None or not 0 <= score <= CAPTION_SCORE_MAX:
        return None
    return score / CAPTION_SCORE_MAX


@dataclass(frozen=True)
class SGQAVerdict:
    correct: bool
    score: float | None  # the judge's 0-5 score when it gave a number
    parsed: bool  # False: the reply was not a JSON object with "pred"; `correct` fell back to "yes"/"Yes" in it


def parse_sgqa_judge_reply(reply: str, lenient: bool = False) -> SGQAVerdict:
    """The SGQA judge's verdict, with lmms-eval's fallback for replies that are not JSON (module docstring)."""
    found = _json_object(reply, lenient)
    if isinstance(found, dict) and "pred" in found:
        return SGQAVerdict(found["pred"] == "yes", _number(found.get("score")), True)
    return SGQAVerdict("yes" in reply or "Yes" in reply, None, False)


# ---------------------------------------------------------------------------------------------
# Judged tasks


def _judge_each(samples: Sequence[Any], predictions: Mapping[Any, str | None], judge: Judge, messages: bool,
                missing_fields: dict[str, Any], request: Callable[[Any, str], JudgeRequest],
                judged: Callable[[Any, str, str], dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One judge call per sample with a prediction: (per-sample records, how many had none). A missing prediction is
    recorded with `missing_fields` and never sent to the judge; `judged(sample, prediction, reply)` gives the rest."""
    preds = _predictions(predictions)
    records, missing = [], 0
    for sample in samples:
        text = preds.get(sample.uid)
        if text is None:
            missing += 1
            records.append({"uid": sample.uid, "prediction": None, **missing_fields, "judge_reply": None})
            continue
        reply = _ask(judge, request(sample, text), messages)
        records.append({"uid": sample.uid, "prediction": text, **judged(sample, text, reply), "judge_reply": reply})
    return records, missing


def score_sgqa(samples: Sequence[SGQASample], predictions: Mapping[Any, str | None], judge: Judge,
               prompt: JudgePrompt | None = None, messages: bool = False, lenient: bool = False) -> TaskScore:
    """SGQA: ``accuracy`` (the benchmark figure), ``mean_judge_score`` (0-5, over the replies that gave one;
    None if none did), ``judge_parse_failures``, ``missing``, ``instances`` and ``judge_prompt`` (its version).

    Args:
        judge: Prompt text -> reply (chat messages -> reply with ``messages=True``).
        prompt: The judge prompt; None = the shipped ``sgqa`` v1.
        lenient: Also accept a JSON object inside a longer reply.
    """
    _check_samples(samples, SGQASample, "sgqa")
    prompt = _judge_prompt(prompt, "sgqa")
    failures = 0

    def judged(sample: SGQASample, text: str, reply: str) -> dict[str, Any]:
        nonlocal failures
        verdict = parse_sgqa_judge_reply(reply, lenient)
        failures += not verdict.parsed
        return {"correct": verdict.correct, "judge_score": verdict.score, "judge_parsed": verdict.parsed}

    records, missing = _judge_each(
        samples, predictions, judge, messages, {"correct": False},
        lambda sample, text: prompt.render(question=sample.question, answer=sample.answer, prediction=text), judged)
    scores = [r["judge_score"] for r in records if r.get("judge_score") is not None]
    summary = {"accuracy": _mean([r["correct"] for r in records]),
               "mean_judge_score": _mean(scores) if scores else None, "judge_parse_failures": failures,
               "missing": missing, "instances": len(samples), "judge_prompt": prompt.version}
    return TaskScore(summary, records)


def score_rcap(samples: Sequence[RegionSample], predictions: Mapping[Any, str | None], judge: Judge,
               prompt: JudgePrompt | None = None, messages: bool = False, lenient: bool = False) -> TaskScore:
    """RCap: ``judge_score`` (mean score / 10, the benchmark figure; 0 for an unparsed reply or a missing
    prediction), ``judge_success_rate`` (the fraction of judged replies that parsed), ``judge_parse_failures``,
    ``missing``, ``instances`` and ``judge_prompt``. Arguments as :func:`score_sgqa` (shipped ``caption`` v1)."""
    _check_samples(samples, RegionSample, "rcap")
    prompt = _judge_prompt(prompt, "caption")
    failures = 0

    def judged(sample: RegionSample, text: str, reply: str) -> dict[str, Any]:
        nonlocal failures
        score = parse_caption_judge_reply(reply, lenient)
        failures += score is None
        return {"score": 0.0 if score is None else score, "judge_parsed": score is not None}

    records, missing = _judge_each(
        samples, predictions, judge, messages, {"score": 0.0},
        lambda sample, text: prompt.render(prediction=text, ground_truth=sample.caption), judged)
    judged = len(samples) - missing
    summary = {"judge_score": _mean([r["score"] for r in records]),
               "judge_success_rate": (judged - failures) / judged if judged else None,
               "judge_parse_failures": failures, "missing": missing, "instances": len(samples),
               "judge_prompt": prompt.version}
    return TaskScore(summary, records)


def score_rdcap(samples: Sequence[RDCapSample], predictions: Mapping[Any, str | None], judge: Judge,
                prompt: JudgePrompt | None = None, messages: bool = False, lenient: bool = False,
                num_frames: int = NUM_VIDEO_FRAMES, sort_by_start: bool = False) -> TaskScore:
    """RDCap: ``SODA_c`` (the benchmark figure), ``no_events`` (replies without any ``[s, e]`` event, scored
    0), ``judge_calls``, ``judge_parse_failures`` (pairs scored 0), ``missing``, ``instances`` and
    ``judge_prompt``. The judge scores every (ground truth, predicted) caption pair of a video. Other
    arguments as :func:`score_sgqa` (shipped ``caption`` v1) and :func:`soda_c`."""
    _check_samples(samples, RDCapSample, "rdcap")
    prompt = _judge_prompt(prompt, "caption")
    preds = _predictions(predictions)
    records, failures, missing, no_events, calls = [], 0, 0, 0, 0
    for sample in samples:
        text = preds.get(sample.uid)
        events = [] if text is None else parse_dense_captions(text)
        missing += text is None
        no_events += text is not None and not events
        if not events:
            records.append({"uid": sample.uid, "prediction": text, "events": [], "SODA_c": 0.0})
            continue
        similarity = []
        for gt in sample.events:
            row = []
            for _, _, caption in events:
                reply = _ask(judge, prompt.render(prediction=caption, ground_truth=gt.caption), messages)
                score = parse_caption_judge_reply(reply, lenient)
                calls, failures = calls + 1, failures + (score is None)
                row.append(0.0 if score is None else score)
            similarity.append(row)
        gt_windows = [(rescale_frame(e.start_frame, sample.total_frames, num_frames),
                       rescale_frame(e.end_frame, sample.total_frames, num_frames)) for e in sample.events]
        value = soda_c(gt_windows, [(s, e) for s, e, _ in events], similarity, sort_by_start=sort_by_start)
        records.append({"uid": sample.uid, "prediction": text, "events": events, "targets": gt_windows,
                        "similarity": similarity, "SODA_c": value})
    summary = {"SODA_c": _mean([r["SODA_c"] for r in records]), "no_events": no_events, "judge_calls": calls,
               "judge_parse_failures": failures, "missing": missing, "instances": len(samples),
               "judge_prompt": prompt.version}
    return TaskScore(summary, records)
