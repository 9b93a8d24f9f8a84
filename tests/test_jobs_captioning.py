"""The captioning and speech jobs on the job registry (`caption altogether`, `eval caption`, `tts edit`,
`tts synthesize`): they dry-run like every job, show their config, write config.yaml / env.json /
summary.json, print one JSON object with --json; `caption altogether --resume` continues from the run dir's
config alone; the tts jobs' -o is the audio file, their run dir --run-dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from typer.testing import CliRunner

from percli.captioning.scenes import write_scene_folder
from percli.cli import app
from percli.jobs import get_job
from tests import test_caption_command, test_plm_chat, test_tts_commands
from tests.summary_schema import assert_common_schema

runner = CliRunner()
checkpoint = test_caption_command.checkpoint  # the tiny captioner fixture
phn2num, weights = test_tts_commands.phn2num, test_tts_commands.weights  # the tiny VoiceCraft fixtures
plm_checkpoint = test_plm_chat.plm_checkpoint  # the tiny PerceptionLM fixture

JOBS = [("caption", "altogether", "images"), ("caption", "plm", "inputs"), ("eval", "caption", "captions"),
        ("tts", "edit", "transcript"), ("tts", "synthesize", "prompt_text")]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = write_scene_folder(tmp_path_factory.mktemp("scenes"), "test", 5)
    preds = folder.parent / "preds.jsonl"
    preds.write_text("".join(json.dumps({"key": r["key"], "altogether": r["caption"]}) + "\n"
                             for r in map(json.loads, (folder / "records.jsonl").read_text().splitlines())))
    return folder, preds


@pytest.fixture()
def job_args(request, scenes, tmp_path):
    """The arguments of a tiny run of each job (the tts ones write tmp_path/out.wav)."""
    folder, preds = scenes

    def args(verb: str, method: str) -> list[str]:
        if (verb, method) == ("caption", "plm"):
            ckpt = request.getfixturevalue("plm_checkpoint")
            return [str(folder), "--checkpoint", str(ckpt), "--chunk-size", "2", "--batch-size", "2",
                    "--max-new-tokens", "4"]
        if verb == "caption":
            ckpt = request.getfixturevalue("checkpoint")
            return ["--images", str(folder), "--checkpoint", str(ckpt), "--chunk-size", "2", "--batch-size", "2"]
        if verb == "eval":
            return ["--captions", str(preds), "--references", str(folder / "records.jsonl")]
        files = request.getfixturevalue("weights")
        recording = _recording(tmp_path)
        common = ["--checkpoint", str(files["pth"]), "--codec", str(files["codec"]), "--device", "cpu",
                  "-o", str(tmp_path / "out.wav"), "--num-samples", "1"]
        if method == "edit":
            return [str(recording["wav"]), "--transcript", test_tts_commands.TRANSCRIPT, "--target",
                    test_tts_commands.TARGET, "--alignment", str(recording["alignment"]), *common]
        return ["--prompt", str(recording["wav"]), "--prompt-text", test_tts_commands.TRANSCRIPT, "--text", "hello",
                *common]

    return args


def _recording(folder: Path) -> dict[str, Path]:
    """A 2 s noise recording and its word timings, as test_tts_commands makes them."""
    wav, alignment = folder / "talk.wav", folder / "talk.json"
    if not wav.exists():
        noise = 0.3 * np.random.default_rng(0).standard_normal(2 * test_tts_commands.SR)
        soundfile.write(str(wav), noise.astype(np.float32), test_tts_commands.SR, subtype="PCM_16")
        alignment.write_text(json.dumps({"words": test_tts_commands.WORDS}))
    return {"wav": wav, "alignment": alignment}


def _dir_flag(verb: str) -> str:
    return "--run-dir" if verb == "tts" else "-o"  # tts: -o is the audio file


@pytest.mark.parametrize(("verb", "method", "required"), JOBS)
def test_dry_run_of_the_default_names_the_required_key(verb, method, required, monkeypatch):
    monkeypatch.delenv("PERCLI_VOICECRAFT_CHECKPOINT", raising=False)
    result = runner.invoke(app, [verb, method, "--dry-run"])
    assert result.exit_code == 2 and required in result.output
    assert get_job(verb, method).resumable == (verb == "caption")


@pytest.mark.parametrize(("verb", "method", "required"), JOBS)
def test_dry_run_prints_the_resolved_config_and_creates_nothing(verb, method, required, job_args, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [verb, method, *job_args(verb, method), _dir_flag(verb), str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg[required] and not out.exists() and not (tmp_path / "out.wav").exists()
    if method == "plm":  # greedy by default (--max-new-tokens 4 given)
        assert cfg["chunk_size"] == 2 and cfg["generation"] == {"max_new_tokens": 4, "temperature": 0.0,
                                                                "top_p": 1.0, "greedy": False, "stop": [], "seed": 0}
    elif verb == "caption":
        assert cfg["chunk_size"] == 2 and cfg["generation"] == {"strategy": "sample", "temperature": 0.2, "top_p": 0.7,
                                                                "num_beams": 4, "max_new_tokens": None, "seed": 0}
    elif verb == "eval":
        assert cfg["fields"] == ["altogether"] and cfg["reference_field"] == "caption"
    else:  # the official sampling defaults of each, --num-samples 1 given
        assert cfg["output"] == str(tmp_path / "out.wav") and cfg["sampling"] == {
            "top_k": 40, "top_p": 1.0, "temperature": 1.0, "stop_repetition": -1 if method == "edit" else 3,
            "num_samples": 1, "seed": 1, "kv_cache": True}


def test_tts_no_kv_cache_switch_reaches_the_config(job_args):
    result = runner.invoke(app, ["tts", "edit", *job_args("tts", "edit"), "--no-kv-cache", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sampling"]["kv_cache"] is False


@pytest.mark.parametrize(("verb", "method", "required"), JOBS)
def test_show_config(verb, method, required):
    shown = runner.invoke(app, ["show-config", method, "--verb", verb, "--json"])
    assert shown.exit_code == 0, shown.output
    assert required in json.loads(shown.stdout)


@pytest.mark.parametrize(("verb", "method", "required"), JOBS)
def test_tiny_run_writes_the_run_dir_and_one_json_object(verb, method, required, job_args, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [verb, method, *job_args(verb, method), _dir_flag(verb), str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # exactly one JSON object: anything else on stdout fails to parse
    assert_common_schema(summary)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["run_dir"] == str(out)
    assert yaml.safe_load((out / "config.yaml").read_text())[required]
    assert json.loads((out / "env.json").read_text())["world_size"] == 1
    if verb == "caption":
        assert summary["captioned"] == 5 and summary["chunks"] == 3
    elif verb == "eval":
        assert summary["scored"] == 5 and summary["metrics"]["altogether/bleu4"] == 1.0
    else:
        assert summary["output"] == str(tmp_path / "out.wav") and (tmp_path / "out.wav").is_file()
        assert summary["frames"] > 0


@pytest.mark.parametrize("method", ["edit", "synthesize"])
def test_tts_default_output_goes_into_the_run_dir_and_a_taken_output_is_kept(method, job_args, tmp_path):
    args = [a for a in job_args("tts", method) if a not in ("-o", str(tmp_path / "out.wav"))]
    result = runner.invoke(app, ["tts", method, *args, "--run-dir", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    name = "talk_edited.wav" if method == "edit" else "talk_tts.wav"
    assert json.loads(result.stdout)["output"] == str(tmp_path / "run" / name) and (tmp_path / "run" / name).is_file()
    (tmp_path / "out.wav").write_bytes(b"keep me")
    taken = runner.invoke(app, ["tts", method, *job_args("tts", method), "--run-dir", str(tmp_path / "run2")])
    assert taken.exit_code == 2 and "--overwrite" in taken.output
    assert (tmp_path / "out.wav").read_bytes() == b"keep me" and not (tmp_path / "run2").exists()
    replaced = runner.invoke(app, ["tts", method, *job_args("tts", method), "--run-dir", str(tmp_path / "run2"),
                                   "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (tmp_path / "out.wav").read_bytes()[:4] == b"RIFF"


def test_caption_resume_continues_from_the_run_dirs_config(job_args, tmp_path):
    out = tmp_path / "out"
    first = runner.invoke(app, ["caption", "altogether", *job_args("caption", "altogether"), "-o", str(out), "--json"])
    assert first.exit_code == 0, first.output
    captions = (out / "captions.jsonl").read_text()
    (out / "parts" / "00000-000002.jsonl").unlink()  # as if the run had stopped before its last chunk
    (out / "captions.jsonl").unlink()
    resumed = runner.invoke(app, ["caption", "altogether", "-o", str(out), "--resume", "--json"])  # no inputs given
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["chunks"] == 3 and summary["chunks_resumed"] == 2 and summary["chunks_written"] == 1
    assert (out / "captions.jsonl").read_text() == captions  # seeded per chunk: the same captions
    again = runner.invoke(app, ["caption", "altogether", *job_args("caption", "altogether"), "-o", str(out), "--json"])
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output


def test_eval_caption_failing_on_its_inputs_leaves_no_run_dir(scenes, tmp_path):
    folder, preds = scenes
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "caption", "--captions", str(preds), "--references",
                                 str(folder / "records.jsonl"), "--key", "nope", "-o", str(out)])
    assert result.exit_code == 2 and "no prediction" in result.output and not out.exists()


@pytest.mark.parametrize("method", ["edit", "synthesize"])
def test_tts_weights_default_to_the_environment(method, monkeypatch, tmp_path):
    monkeypatch.setenv("PERCLI_VOICECRAFT_CHECKPOINT", str(tmp_path / "giga830M.pth"))
    monkeypatch.setenv("PERCLI_VOICECRAFT_CODEC", str(tmp_path / "codec.th"))
    shown = runner.invoke(app, ["show-config", method, "--verb", "tts", "--json"])
    assert shown.exit_code == 0, shown.output
    cfg = json.loads(shown.stdout)
    weights = cfg["weights"]
    assert weights["checkpoint"] == str(tmp_path / "giga830M.pth") and weights["codec"] == str(tmp_path / "codec.th")
