"""Every shipped example config and preset resolves and validates (a dry run), so docs cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from percli.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
COMMAND = {"hiera_mae_folder.yaml": ["pretrain", "hiera-mae"], "audio_mae_esc50.yaml": ["finetune", "audio-mae"]}


def run_example(script: str, tmp_path: Path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    """Run examples/<script> into <tmp_path>/work with this interpreter's percli (`env`: the script's knobs,
    shortening it); it must exit 0."""
    path = Path(__file__).resolve().parents[1] / "examples" / script
    done = subprocess.run(["bash", str(path), str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PERCLI": f"{sys.executable} -m percli.cli",
                                                "PYTHON": sys.executable, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_dry_runs(path):
    assert path.name in COMMAND, f"add {path.name} to COMMAND so it is checked"
    result = CliRunner().invoke(app, [*COMMAND[path.name], "--config", str(path), "--dry-run",
                                      "data.source=embedded", "data.val_source=null"])
    assert result.exit_code == 0, result.output


def test_altogether_shards_example_runs_end_to_end(tmp_path):
    """The captioning example script, shortened (2 steps, 20 scenes): every command in it still works."""

    run_example("captioning/altogether_shards.sh", tmp_path, 300, STEPS="2", SCENES="20", TRAIN_SCENES="64")
    summary = json.loads((tmp_path / "work" / "caption_summary.json").read_text())
    assert summary["captioned"] == 20 and len(summary["shards"]) == 2
    assert (tmp_path / "work" / "round2" / "summary.json").is_file()


SMALL = "data.embedded_size=48 train.batch_size=8 train.num_workers=0 optim.ref_batch_size=8"


@pytest.mark.parametrize("script,env,check", [
    ("mode_experts.sh", {"POOL": "48", "SEED_STEPS": "2", "EXPERT_STEPS": "2", "SMALL": SMALL},
     "ensemble/summary.json"),
    ("cit_in_training.sh", {"SEED_STEPS": "2", "STEPS": "4", "EVERY": "2", "THRESHOLD": "0.0", "SMALL": SMALL},
     "none/summary.json"),
])
def test_curation_example_scripts_run_end_to_end(tmp_path, script, env, check):
    """The MoDE and CiT example scripts, shortened: every command in them still works."""

    run_example(f"curation/{script}", tmp_path, 600, **env)
    assert (tmp_path / "work" / check).is_file()


def test_flap_llm_captions_example_runs_end_to_end(tmp_path):
    """The FLAP example script, shortened (16 + 8 clips written, 2 steps of a tiny model)."""

    from tests.test_flap import TINY

    (tmp_path / "tiny.yaml").write_text("model:\n  kwargs: " + TINY[0].split("=", 1)[1] + "\n")
    small = " ".join(["--config", str(tmp_path / "tiny.yaml"), *TINY[1:], "train.batch_size=4"])
    done = run_example("audio/flap_llm_captions.sh", tmp_path, 300, TRAIN="16", TEST="8", STEPS="2", SMALL=small)
    assert "t2a_R@1" in done.stdout
    rows = (tmp_path / "work" / "clips" / "train" / "captions_llm.jsonl").read_text().splitlines()
    assert len(rows) == 16 and "sound events: " in json.loads(rows[0])["llm_captions"][0]


def test_pe_av_example_runs_end_to_end(tmp_path):
    """The PE-AV / PE-A-Frame example script, shortened (2 training steps, no random-init baselines: the same
    commands with other overrides): every command in it still works."""

    done = run_example("audiovisual/pe_av_tiny.sh", tmp_path, 600, AV_STEPS="2", FRAME_STEPS="2", CLIPS="20",
                       AVS_STEPS="2", BASELINES="0")
    assert "events found:" in done.stdout and "peav " in done.stdout and "peav-random" not in done.stdout
    assert json.loads((tmp_path / "work" / "embeddings" / "summary.json").read_text())["clips_embedded"] == 8


def test_mavil_example_runs_end_to_end(tmp_path):
    """The MAViL example script, shortened (2 training steps): every command in it still works."""

    done = run_example("audiovisual/mavil_tiny.sh", tmp_path, 600, STEPS="2", FT_STEPS="2", CLIPS="20", AVS_STEPS="2",
                       EXTRA="train.batch_size=4 train.num_workers=0")
    for line in ("stage1  a2v R@1", "random  a2v R@1", "stage2  a2v R@1", "finetune from stage2", "AV-SUPERB:"):
        assert line in done.stdout, line


def test_video_text_example_runs_end_to_end(tmp_path):
    """The video-language example script, shortened (2 training steps, 20 videos, no random-init pretraining
    baselines: the same commands with other overrides): every command in it works."""

    done = run_example("video_text/tiny.sh", tmp_path, 600, STEPS="2", BASELINES="0",
                       EXTRA="data.embedded_size=20 train.batch_size=4 optim.ref_batch_size=4")
    assert "support-set-random" not in done.stdout
    for line in ("videoclip ", "support-set ", "vlm ", "vlm-ft-random ", "mmp-en ",
                 "eval retrieval (written clips)"):
        assert line in done.stdout, line


def test_dinov2_example_runs_end_to_end(tmp_path):
    """The DINOv2 example script, shortened (2 steps per run, 64 images, 32 scenes): teacher, distilled and
    lone students with k-NN, dense evaluation against random init, the high-resolution continuation."""

    done = run_example("dinov2/tiny.sh", tmp_path, 600, TEACHER_STEPS="2", STUDENT_STEPS="2", DENSE_STEPS="2",
                       HIGHRES_STEPS="2", IMAGES="64", SCENES="32", EXTRA="train.batch_size=8 train.num_workers=0")
    for line in ("k-NN distill ", "k-NN alone ", "dense teacher ", "dense random ", "highres completed"):
        assert line in done.stdout, line


@pytest.mark.slow
def test_plm_tiny_pipeline_example_runs(tmp_path):
    """The PerceptionLM tiny pipeline script, shortened (2 steps per run, 40 items): every command in it works."""

    done = run_example("plm/tiny_pipeline.sh", tmp_path, 900, STEPS="2", CLIP_STEPS="2", STAGE_STEPS="2",
                       EXTRA="data.embedded_size=40 data.val_size=8 train.eval_every=0")
    for run in ("plm-pe ", "plm-scratch ", "plm-text ", "plm-init ", "plm-stage1 ", "plm-stage3 "):
        assert run in done.stdout, run


@pytest.mark.parametrize("preset", ["tiny", "tiny-video"])
def test_diffmae_tiny_example_runs(tmp_path, preset):
    """The DiffMAE example script, shortened (a few steps, 4 held-out images or clips): every command in it works."""

    done = run_example("diffmae/tiny.sh", tmp_path, 600, PRESET=preset, STEPS="2", FT_STEPS="2", IMAGES="4",
                       EXTRA="data.embedded_size=32 train.batch_size=8 optim.ref_batch_size=8 train.num_workers=0")
    assert "ft-pretrained " in done.stdout and "inpaint 50 DDIM steps" in done.stdout
    held_out = sorted(p.suffix for p in (tmp_path / "work" / "heldout").iterdir())
    assert held_out == [".mp4" if preset == "tiny-video" else ".png"] * 4


def test_soundscape_tiny_example_runs(tmp_path):
    """The soundscape example script, shortened (micro model, two steps per stage): every command in it works."""
    micro = ("data.embedded_size=12 data.heldout_utterances=4 data.train_scenes=3 data.heldout_scenes=2 "
             "data.train_items=8 data.val_items=2 data.clip_s=1.0 stylize.items=4 stylize.steps=2 "
             "stylize.estimator_clips=8 stylize.estimator_steps=2 vae_train.max_steps=2 vae_train.batch_size=2 "
             "vae_train.num_workers=0 train.batch_size=2 train.num_workers=0 model.kwargs.width=32 "
             "model.kwargs.depth=1 model.kwargs.num_heads=2 model.kwargs.vae.channels=8")
    done = run_example("soundscape/tiny.sh", tmp_path, 600, STEPS="2", ITEMS="4", EXTRA=micro)
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:2]] == [["guidance", "3"], ["guidance", "1"]], done.stdout
    assert "RT60 error" in lines[1] and lines[2].startswith("stylized 1.00 s"), done.stdout


def test_grounding_tiny_example_runs(tmp_path):
    """The grounding example script, shortened (micro models, a few steps): every command in it works."""

    small = ("data.embedded_train=32 data.embedded_mono=48 data.embedded_val=10 data.embedded_test=10 "
             "data.vocab_size=200 train.batch_size=8 optim.ref_batch_size=8")
    done = run_example("grounding/tiny.sh", tmp_path, 600, VSE_STEPS="2", MT_STEPS="2",
                       EXTRA=f"{small} data.cache_dir={tmp_path / 'cache'} model.kwargs.embed_dim=16",
                       MT_EXTRA=f"{small} data.cache_dir={tmp_path / 'cache'} model.kwargs.d_model=32 "
                                "vse_train.max_steps=2 vse_train.batch_size=8 loss.pivot_start=1 eval.max_len=6")
    assert "vse-plain " in done.stdout and "ummt-no-pivot  de-en BLEU" in done.stdout
