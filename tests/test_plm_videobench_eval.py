"""`percli eval plm-videobench`: the benchmark's prompts, frame sampling and boxes, predictions that survive a crash,
judges over HTTP and in-process, and summaries equal to the metrics functions on the written predictions."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.core import plm_videobench as bench
from percli.core.data.embedded_plm import write_mp4
from percli.core.data.plm_videobench import (
    DenseCaption,
    FGQASample,
    RDCapSample,
    RegionSample,
    SGQASample,
    read_plm_videobench,
)
from percli.core.plm_judges import EndpointJudge, JudgeUnavailable, TextJudge
from percli.core.plm_videobench_prompts import task_prompt
from percli.models.plm import PerceptionLM
from percli.recipes import plm_videobench_eval
from percli.recipes.plm_videobench_media import draw_region_boxes, uniform_indices
from tests.summary_schema import assert_common_schema

runner = CliRunner()
FAST = ["--num-frames", "8", "--max-new-tokens", "6", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------
# Inputs: a tiny trained PLM, short videos, annotations in the hub layout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("plm") / "run"
    # a 1024-token context: the region prompts (byte-level tokens) with 8 frames of 9 tokens fit
    result = runner.invoke(app, ["finetune", "plm", "--run-dir", str(run), "train.max_steps=2",
                                 "data.embedded_size=40", "data.val_size=8", "model.kwargs.max_seqlen=1024"])
    assert result.exit_code == 0, result.output[-2000:]
    return str(run)


def _video(path: Path, frames: int) -> None:
    pixels = np.zeros((frames, 48, 64, 3), dtype=np.uint8)
    for t in range(frames):  # a white square moving right
        pixels[t, 16:32, 2 * t % 48:2 * t % 48 + 16] = 255
    write_mp4(path, pixels, fps=6)


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("PLM-VideoBench")
    (root / "videos").mkdir()
    _video(root / "videos" / "a.mp4", 40)
    _video(root / "videos" / "b.mp4", 12)
    (root / "videos" / "broken.mp4").write_bytes(b"not a video at all")
    options = {"option_0": "a knife", "option_1": "a spoon"}
    _jsonl(root / "fgqa" / "plm_fgqa_test.jsonl", [
        {"uid": "q1_0", "qa_uid": "q1", "video": "a.mp4", "question": "What is used?", "answer": "a knife",
         "options": options},
        {"uid": "q1_1", "qa_uid": "q1", "video": "a.mp4", "question": "What is used?", "answer": "a spoon",
         "options": {"option_0": "a spoon", "option_1": "a knife"}},
        {"uid": "q2_0", "qa_uid": "q2", "video": "b.mp4", "question": "What moves?", "answer": "a square",
         "options": {"option_0": "a circle", "option_1": "a square", "option_2": "nothing"}},
        {"uid": "q3_0", "qa_uid": "q3", "video": "broken.mp4", "question": "Which?", "answer": "a knife",
         "options": options}])
    _jsonl(root / "sgqa" / "plm_sgqa_test.jsonl", [
        {"uid": "s1", "video": "a.mp4", "question": "Where is the square?", "answer": "On the left."},
        {"uid": "s2", "video": "b.mp4", "question": "What colour is it?", "answer": "White."}])
    region = {"masklet_id": 0, "total_frames": 40}
    _jsonl(root / "rcap" / "plm_rcap_test.jsonl", [
        {"uid": 1, "video": "a.mp4", "caption": "The square moves right.", "start_frame": 4, "end_frame": 30,
         **region},
        {"uid": 2, "video": "b.mp4", "caption": "It slides.", "start_frame": 0, "end_frame": 11, "masklet_id": 1,
         "total_frames": 12}])
    _jsonl(root / "rtloc" / "plm_rtloc_test.jsonl", [
        {"uid": 3, "video": "a.mp4", "caption": "the square enters", "start_frame": 10, "end_frame": 25, **region},
        {"uid": 4, "video": "broken.mp4", "caption": "nothing", "start_frame": 0, "end_frame": 5, **region}])
    _jsonl(root / "rdcap" / "plm_rdcap_test.jsonl", [
        {"uid": 5, "video": "a.mp4", **region, "dense_captions": [
            {"start_frame": 0, "end_frame": 19, "caption": "The square appears."},
            {"start_frame": 20, "end_frame": 39, "caption": "The square moves right."}]}])
    box = {str(f): [4, 4, 40, 40] for f in range(0, 40, 2)}
    _jsonl(root / "metadata" / "metadata_test.jsonl", [
        {"video": "a.mp4", "masklet_id": 0, "bbox": box}, {"video": "b.mp4", "masklet_id": 1, "bbox": {"0": None}},
        {"video": "broken.mp4", "masklet_id": 0, "bbox": {}}])
    return root


# ---------------------------------------------------------------------------------------------
# A scripted judge: the same replies over HTTP and in-process


def scripted_reply(text: str) -> str:
    """Caption judge: a score from the prediction's length; SGQA judge: yes for an even-length prediction."""
    prediction = text.split("Predicted caption: " if "Predicted caption: " in text else "Predicted answer: ")[1]
    prediction = prediction.split("\n")[0]
    if "Predicted caption: " in text:
        return json.dumps({"score": len(prediction) % 11, "explanation": "scripted"})
    return json.dumps({"pred": "yes" if len(prediction) % 2 == 0 else "no", "score": 3})


class _Judge(BaseHTTPRequestHandler):
    requests: list[dict] = []
    busy_first: int = 0  # answer this many requests with HTTP 429 first

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, **body})
        if type(self).busy_first > 0:
            type(self).busy_first -= 1
            self.send_response(429)
            self.end_headers()
            return
        if body["model"] != "judge-7b":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "no such model"}')
            return
        content = scripted_reply(body["messages"][-1]["content"])
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    _Judge.requests, _Judge.busy_first = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def generate_calls(monkeypatch) -> list[int]:
    """How many prompts each PerceptionLM.generate call was given."""
    calls: list[int] = []
    original = PerceptionLM.generate

    def counting(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(PerceptionLM, "generate", counting)
    return calls


def _run(*args: str):
    return runner.invoke(app, ["eval", "plm-videobench", "--json", *args])


def _predictions(run: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (run / task / "predictions.jsonl").read_text().splitlines()]


def _expected(benchmark: Path, run: Path, task: str, judge=None):
    """The metrics functions on the predictions the run wrote."""
    samples = read_plm_videobench(task, benchmark / task / f"plm_{task}_test.jsonl")
    predictions = {r["uid"]: r["prediction"] for r in _predictions(run, task)}
    if task == "fgqa":
        return bench.score_fgqa(samples, predictions)
    if task == "rtloc":
        return bench.score_rtloc(samples, predictions, num_frames=8)
    if task == "rdcap":
        return bench.score_rdcap(samples, predictions, judge, num_frames=8)
    return (bench.score_sgqa if task == "sgqa" else bench.score_rcap)(samples, predictions, judge)


# ---------------------------------------------------------------------------------------------
# Prompts, frames, boxes


def test_prompts_equal_the_benchmark_format_on_a_hand_written_example():
    fgqa = FGQASample("u", "g", "v.mp4", "What does the person cut?", ("an onion", "a carrot "), 1)
    assert task_prompt("fgqa", fgqa) == ("Question: What does the person cut?\nOptions:\n(A) an onion\n(B) a carrot\n"
                                         "Only give the best option.{answer}")
    sgqa = SGQASample("u", "v.mp4", "Where did I put the keys?", "On the table.")
    assert task_prompt("sgqa", sgqa) == (
        "The following question is asked by the camera wearer at the end of the video.  Provide a detailed answer "
        "even if unsure.  Try to answer in around 20-30 words.  Now answer the following question based on the "
        "video content: Where did I put the keys?{answer}")
    region = RegionSample("u", "v.mp4", 0, 180, "the dog jumps", 30, 95)  # 180 / 32 = 5.625 frames per sample
    assert task_prompt("rcap", region) == (
        "Give a detailed description of the events occurring in the region marked by the red rectangle within "
        "frames [5, 16] in this 180 frame video.")
    assert task_prompt("rtloc", region) == (
        "Given the region marked by the red rectangle in the video, please provide the start and end frame of when "
        "'the dog jumps' happens. Use the format [start, end] where start and end are frame numbers between 0 and "
        "31 in this 32 frame video.")
    rdcap = RDCapSample("u", "v.mp4", 0, 180, (DenseCaption(0, 10, "x"),))
    assert task_prompt("rdcap", rdcap) == (
        "Create a dense caption of the subject's actions within the red rectangles, including action frames ids and "
        "brief descriptions. For each item use the format [start, end]: [description] separated by a newline, where "
        "start and end are frame numbers between 0 and 31 in this 32 frame video.")


def test_frames_are_spread_as_lmms_eval_samples_them_and_boxes_are_drawn_red():
    assert uniform_indices(40, 8) == [0, 6, 11, 17, 22, 28, 33, 39]
    assert uniform_indices(5, 8) == [0, 1, 2, 3, 4]  # a short video: every frame
    frames = torch.zeros((2, 3, 30, 30), dtype=torch.uint8)
    boxed, plain = draw_region_boxes(frames, [6, 7], {6: (2.0, 2.0, 20.0, 20.0), 7: None}, "v.mp4")
    pixels = np.asarray(boxed)
    assert tuple(pixels[2, 10]) == (255, 0, 0) and tuple(pixels[5, 10]) == (255, 0, 0)  # 4 px wide edge
    assert tuple(pixels[6, 10]) == (0, 0, 0) and tuple(pixels[10, 10]) == (0, 0, 0)  # inside stays
    assert not np.asarray(plain).any()


# ---------------------------------------------------------------------------------------------
# End to end


def test_every_task_runs_end_to_end_with_an_http_judge(checkpoint, benchmark, judge_server, tmp_path):
    run = tmp_path / "run"
    result = _run("--checkpoint", checkpoint, "--annotations", str(benchmark), "--media-root",
                  str(benchmark / "videos"), "--judge-endpoint", judge_server, "--judge-model", "judge-7b",
                  "--run-dir", str(run), *FAST)
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    assert_common_schema(summary)
    assert list(summary["metrics"]) == ["fgqa/MBAcc", "sgqa/accuracy", "rcap/judge_score", "rtloc/meanR",
                                        "rtloc/mIoU", "rdcap/SODA_c"]
    assert summary == json.loads((run / "summary.json").read_text())
    # the broken video: counted per task, its questions unanswered and scored as wrong
    assert summary["tasks"]["fgqa"]["unreadable_videos"] == 1 and summary["tasks"]["fgqa"]["missing"] == 1
    assert summary["tasks"]["rtloc"]["unreadable_videos"] == 1 and summary["tasks"]["rtloc"]["missing"] == 1
    assert summary["bad_inputs"]["count"] == 2 and summary["counts"]["bad_inputs"] == 2
    assert "broken.mp4" in summary["bad_inputs"]["files"][0]["path"]
    fake = TextJudge(scripted_reply, "fake")
    for task in ("fgqa", "sgqa", "rcap", "rtloc", "rdcap"):
        expected = _expected(benchmark, run, task, fake)
        reported = summary["tasks"][task]
        assert {k: reported[k] for k in expected.summary} == expected.summary, task
        scores = [json.loads(line) for line in (run / task / "scores.jsonl").read_text().splitlines()]
        assert scores == json.loads(json.dumps(expected.per_sample)), task
    assert summary["benchmark"]["fgqa_test"] == {"multibinary_accuracy": summary["tasks"]["fgqa"]["MBAcc"],
                                                 "num_instances": 4}
    assert summary["benchmark"]["rtloc_test"]["mIOU"] == summary["tasks"]["rtloc"]["mIoU"]
    # the judge: the benchmark's request, the prompt versions recorded
    assert _Judge.requests and all(r["path"] == "/v1/chat/completions" and r["temperature"] == 0 and
                                   r["max_tokens"] == 256 and r["messages"][0]["role"] == "system"
                                   for r in _Judge.requests)
    assert summary["judge"]["calls"] == len(_Judge.requests)
    assert summary["judge_prompts"] == {"sgqa": "plm-videobench/sgqa-judge/percli-v1",
                                        "caption": "plm-videobench/caption-judge/percli-v1"}
    # the prompts the model saw are the benchmark's, at 8 frames; the model's budget was respected
    sgqa = read_plm_videobench("sgqa", benchmark / "sgqa" / "plm_sgqa_test.jsonl")
    assert [r["prompt"] for r in _predictions(run, "sgqa")] == [task_prompt("sgqa", s) for s in sgqa]
    rtloc = _predictions(run, "rtloc")
    assert [r["uid"] for r in rtloc] == ["3"] and "between 0 and 7 in this 8 frame video" in rtloc[0]["prompt"]


def test_a_crash_mid_benchmark_loses_nothing_and_resume_asks_only_the_rest(checkpoint, benchmark, generate_calls,
                                                                           monkeypatch, tmp_path):
    run = tmp_path / "run"
    args = ["--checkpoint", checkpoint, "--annotations", str(benchmark), "--media-root", str(benchmark / "videos"),
            "--judge", "none", *FAST, "--batch-size", "1"]
    original = PerceptionLM.generate

    def crash_on_third(self, prompts, *a, **k):
        if len(generate_calls) == 3:
            raise RuntimeError("power cut")
        return original(self, prompts, *a, **k)

    monkeypatch.setattr(PerceptionLM, "generate", crash_on_third)
    crashed = _run(*args, "--run-dir", str(run))
    assert isinstance(crashed.exception, RuntimeError)
    assert [r["uid"] for r in _predictions(run, "fgqa")] == ["q1_0", "q1_1", "q2_0"]  # q3_0: unreadable
    assert not (run / "rtloc").exists() or not _predictions(run, "rtloc")
    # the crash also left half a line behind
    with open(run / "fgqa" / "predictions.jsonl", "a") as f:
        f.write('{"uid": "q2_0", "pro')
    monkeypatch.undo()
    calls: list[int] = []
    monkeypatch.setattr(PerceptionLM, "generate", lambda self, prompts, *a, **k: (
        calls.append(len(prompts)), original(self, prompts, *a, **k))[1])
    resumed = _run("--run-dir", str(run), "--resume")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    summary = json.loads(resumed.stdout)
    assert sum(calls) == 1  # only rtloc's readable question; fgqa's three were on disk
    assert summary["resumed"] == 3 and summary["predicted"] == 1
    assert sorted(summary["tasks"]) == ["fgqa", "rtloc"]  # --judge none: the judged tasks are skipped
    assert [r["uid"] for r in _predictions(run, "fgqa")] == ["q1_0", "q1_1", "q2_0"]
    for task in ("fgqa", "rtloc"):
        expected = _expected(benchmark, run, task).summary
        assert {k: summary["tasks"][task][k] for k in expected} == expected


def test_stored_predictions_are_judged_by_an_in_process_judge(checkpoint, benchmark, generate_calls, monkeypatch,
                                                             tmp_path):
    fake = TextJudge(scripted_reply, "fake")
    monkeypatch.setattr(plm_videobench_eval, "build_judge", lambda cfg, device, dtype: fake)
    run = tmp_path / "run"
    args = ["--checkpoint", checkpoint, "--tasks", "rdcap,rcap", "--annotations", str(benchmark),
            "--media-root", str(benchmark / "videos"), "--judge-checkpoint", checkpoint, *FAST]
    assert _run(*args, "--run-dir", str(run)).exit_code == 0
    asked = sum(generate_calls)
    # dense captions written by hand replace the tiny model's reply: the judge scores every caption pair
    reply = "[0, 3]: The square appears.\n[4, 7]: It moves right."
    (run / "rdcap" / "predictions.jsonl").write_text(json.dumps({"uid": "5", "prompt": "p", "raw": reply,
                                                                 "prediction": reply}) + "\n")
    calls_before = fake.calls
    resumed = _run("--run-dir", str(run), "--resume")
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert sum(generate_calls) == asked  # nothing asked of the model again
    summary = json.loads(resumed.stdout)
    expected = _expected(benchmark, run, "rdcap", TextJudge(scripted_reply, "again"))
    assert summary["tasks"]["rdcap"]["SODA_c"] == expected.summary["SODA_c"] > 0
    assert summary["tasks"]["rdcap"]["judge_calls"] == 4  # 2 ground-truth x 2 predicted events
    assert fake.calls - calls_before == 4 + 2  # and the two rcap captions
    assert summary["judge"]["name"] == "fake"


def test_an_unreachable_judge_exits_2_naming_the_url_and_keeps_the_predictions(checkpoint, benchmark, judge_server,
                                                                               generate_calls, tmp_path):
    run, dead = tmp_path / "run", f"http://127.0.0.1:{_closed_port()}/v1"
    args = ["--checkpoint", checkpoint, "--tasks", "sgqa,fgqa", "--annotations", str(benchmark), "--media-root",
            str(benchmark / "videos"), "--judge-model", "judge-7b", *FAST]
    result = _run(*args, "--judge-endpoint", dead, "--run-dir", str(run))
    assert result.exit_code == 2
    assert f"{dead}/chat/completions" in result.stderr and "--resume" in result.stderr
    assert len(_predictions(run, "sgqa")) == 2 and len(_predictions(run, "fgqa")) == 3
    asked = sum(generate_calls)
    resumed = _run("--run-dir", str(run), "--resume", "--judge-endpoint", judge_server)
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert sum(generate_calls) == asked
    assert json.loads(resumed.stdout)["tasks"]["sgqa"]["instances"] == 2


@pytest.mark.parametrize("args,message", [
    (["--tasks", "sgqa", "--judge", "none"], "sgqa need an LLM judge"),
    (["--tasks", "rcap"], "rcap need an LLM judge and none is given"),
    (["--judge-endpoint", "http://localhost:8000/v1"], "judge_model (--judge-model): not set"),
    (["--tasks", "fgqa,vqa"], "unknown ['vqa']"),
    (["--max-new-tokens", "100000"], "max_new_tokens (--max-new-tokens): got 100000"),
    (["--annotations", "nope=x.jsonl"], "unknown task 'nope'"),
])
def test_bad_options_exit_2_with_a_clear_message(checkpoint, benchmark, tmp_path, args, message):
    result = _run("--checkpoint", checkpoint, "--annotations", str(benchmark), "--run-dir", str(tmp_path / "r"),
                  *args)
    assert result.exit_code == 2 and message in result.stderr, result.output[-2000:]
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# Judges


def test_endpoint_judge_retries_rate_limits_and_names_refusals(judge_server):
    _Judge.busy_first = 2
    judge = EndpointJudge(judge_server, "judge-7b", backoff=0.01)
    request = bench.load_judge_prompt("sgqa").render(question="q", answer="a", prediction="ab")
    assert json.loads(judge(request.messages)) == {"pred": "yes", "score": 3}
    assert len(_Judge.requests) == 3
    with pytest.raises(JudgeUnavailable, match="HTTP 404.*no such model"):
        EndpointJudge(judge_server, "other")(request.messages)


def test_a_plm_checkpoint_judges_text_and_refuses_a_prompt_beyond_its_context(checkpoint):
    judge = plm_videobench_eval.plm_text_judge(checkpoint, None, "cpu", None, max_tokens=4)
    assert isinstance(judge("Is a square round?"), str) and judge.calls == 1
    with pytest.raises(JudgeUnavailable, match="does not fit its context of 1024 tokens"):
        judge("x" * 2000)
