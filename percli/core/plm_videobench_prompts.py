"""PLM-VideoBench's model-side prompts, generation budgets and reported figure names, as lmms-eval builds them.

Source: ``lmms_eval/tasks/plm_videobench/<task>/<task>_test.yaml`` (the ``prompt`` of ``lmms_eval_specific_kwargs``
and ``generation_kwargs``) and ``<task>_utils.py`` (``*_doc_to_text``, ``*_aggregate_results``). Quirks kept on
purpose, since they are what the published numbers were measured with:

* FGQA and SGQA fill their template ``...{question}{answer}`` with ``answer="{answer}"``, so the prompt the model
  sees ends with the literal text ``{answer}``.
* RCap names the event's frames rescaled to the sampled frames (``int(frame / (total_frames / 32))``) but the
  *source* video's ``total_frames`` ("within frames [3, 9] in this 180 frame video"); RTLoc and RDCap name the
  sampled range (0 to 31 of 32 frames).
* The SGQA prompt has two spaces after each sentence.

lmms-eval's PLM model drops one trailing ``.`` from every generation before scoring
(``lmms_eval/models/simple/plm.py``); :func:`scored_text` does the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from percli.core.data.plm_videobench import FGQASample
from percli.core.plm_videobench import NUM_VIDEO_FRAMES, rescale_frame

FGQA_TEMPLATE = "{question}{answer}"
FGQA_INSTRUCTION = "\nOnly give the best option."
SGQA_TEMPLATE = ("The following question is asked by the camera wearer at the end of the video.  Provide a detailed "
                 "answer even if unsure.  Try to answer in around 20-30 words.  Now answer the following question "
                 "based on the video content: {question}{answer}")
RCAP_TEMPLATE = ("Give a detailed description of the events occurring in the region marked by the red rectangle "
                 "within frames [{start_frame}, {end_frame}] in this {total_frames} frame video.")
RTLOC_TEMPLATE = ("Given the region marked by the red rectangle in the video, please provide the start and end frame "
                  "of when '{caption}' happens. Use the format [start, end] where start and end are frame numbers "
                  "between {min_frame_idx} and {max_frame_idx} in this {num_frames} frame video.")
RDCAP_TEMPLATE = ("Create a dense caption of the subject's actions within the red rectangles, including action frames "
                  "ids and brief descriptions. For each item use the format [start, end]: [description] separated by "
                  "a newline, where start and end are frame numbers between {start_frame} and {end_frame} in this "
                  "{total_frames} frame video.")

MAX_NEW_TOKENS = {"fgqa": 16, "sgqa": 16, "rcap": 512, "rtloc": 16, "rdcap": 512}
"""Each task's ``generation_kwargs.max_new_tokens`` (greedy: ``temperature: 0``)."""
JUDGED_TASKS = ("sgqa", "rcap", "rdcap")
REGION_TASKS = ("rcap", "rtloc", "rdcap")


def fgqa_question(sample: FGQASample) -> str:
    """``Question: ...`` then ``Options:`` and one ``(A) text`` line per option, then the instruction."""
    lines = [f"Question: {sample.question}", "Options:"]
    lines += [f"({chr(ord('A') + i)}) {text}" for i, text in enumerate(sample.options)]
    return "\n".join(lines).rstrip() + FGQA_INSTRUCTION


def task_prompt(task: str, sample: Any, num_frames: int = NUM_VIDEO_FRAMES) -> str:
    """The question the model is asked for one sample of `task`, `num_frames` frames sampled per video."""
    if task == "fgqa":
        return FGQA_TEMPLATE.format(question=fgqa_question(sample), answer="{answer}")
    if task == "sgqa":
        return SGQA_TEMPLATE.format(question=sample.question, answer="{answer}")
    if task == "rcap":
        return RCAP_TEMPLATE.format(start_frame=rescale_frame(sample.start_frame, sample.total_frames, num_frames),
                                    end_frame=rescale_frame(sample.end_frame, sample.total_frames, num_frames),
                                    total_frames=sample.total_frames)
    if task == "rtloc":
        return RTLOC_TEMPLATE.format(caption=sample.caption, min_frame_idx=0, max_frame_idx=num_frames - 1,
                                     num_frames=num_frames)
    if task == "rdcap":
        return RDCAP_TEMPLATE.format(start_frame=0, end_frame=num_frames - 1, total_frames=num_frames)
    raise ValueError(f"unknown PLM-VideoBench task {task!r}")


def scored_text(generation: str) -> str:
    """The reply lmms-eval scores: the generation without one trailing ``.``."""
    return generation[:-1] if generation.endswith(".") else generation


def lmms_eval_figures(task: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """A task's figures under the names lmms-eval's ``*_aggregate_results`` print (unrounded; lmms-eval rounds
    the region tasks' to 4 decimals). RTLoc's ``mean_precision`` equals ``mean_recall`` with one window per
    question; RCap's ``success_rate`` is the share of judge replies that parsed."""
    count = summary.get("questions", summary.get("instances"))
    if task == "fgqa":
        return {"multibinary_accuracy": summary["MBAcc"], "num_instances": count}
    if task == "sgqa":
        return {"success": summary["accuracy"], "num_instances": count}
    if task == "rcap":
        return {"llm_judge_score": summary["judge_score"], "success_rate": summary["judge_success_rate"],
                "num_instances": count}
    if task == "rtloc":
        return {"mean_precision": summary["meanR"], "mean_recall": summary["meanR"], "mIOU": summary["mIoU"],
                "num_instances": count}
    if task == "rdcap":
        return {"SODA_c": summary["SODA_c"], "num_instances": count}
    raise ValueError(f"unknown PLM-VideoBench task {task!r}")
