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
