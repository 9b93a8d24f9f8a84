"""Every shipped example config and preset resolves and validates (a dry run), so docs cannot rot."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from percli.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
COMMAND = {"hiera_mae_folder.yaml": ["pretrain", "hiera-mae"], "audio_mae_esc50.yaml": ["finetune", "audio-mae"]}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_dry_runs(path):
    assert path.name in COMMAND, f"add {path.name} to COMMAND so it is checked"
    result = CliRunner().invoke(app, [*COMMAND[path.name], "--config", str(path), "--dry-run",
                                      "data.source=embedded", "data.val_source=null"])
    assert result.exit_code == 0, result.output


def test_altogether_shards_example_runs_end_to_end(tmp_path):
    """The captioning example script, shortened (2 steps, 20 scenes): every command in it still works."""
    import json
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "examples" / "captioning" / "altogether_shards.sh"
    env = {**os.environ, "PERCLI": f"{sys.executable} -m percli.cli", "PYTHON": sys.executable, "STEPS": "2",
           "SCENES": "20", "TRAIN_SCENES": "64"}
    done = subprocess.run(["bash", str(script), str(tmp_path / "work")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
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
    import os
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "examples" / "curation" / script
    done = subprocess.run(["bash", str(path), str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PERCLI": f"{sys.executable} -m percli.cli", "PYTHON": sys.executable,
                               **env})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "work" / check).is_file()
