"""Registry-wide checks: every model variant and every job, found through the registries themselves."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from percli.cli import app
from percli.jobs import JOBS
from percli.models import create_model, list_models, weights_loader
from tests.conftest import GOLDEN_DIR

FULL = GOLDEN_DIR / "full_configs"
runner = CliRunner()


def _norm(name: str) -> str:
    """Official and percli spellings of one variant compare equal (`PE-Core-T16-384` = `pe_core_t16_384`,
    `ViT-B-16-quickgelu` = `clip_vit_b16_quickgelu`)."""
    return re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("clip")


def _official() -> tuple[dict[str, dict[str, tuple[int, ...]]], dict[str, int]]:
    """Official state-dict shapes (keys.txt) and parameter counts (param_counts.json) by normalised name."""
    shapes, counts = {}, {}
    if not FULL.is_dir():
        return shapes, counts
    for keys in FULL.glob("*/*/keys.txt"):
        table = {}
        for line in keys.read_text().splitlines():
            found = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
            if found:
                table[found.group(1)] = tuple(int(d) for d in found.group(2).replace(" ", "").split(",") if d)
        shapes[_norm(keys.parent.name)] = table
    for path in FULL.glob("*/param_counts.json"):
        counts.update({_norm(k): v for k, v in json.loads(path.read_text()).items() if isinstance(v, int)})
    return shapes, counts


SHAPES, COUNTS = _official()


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_on_meta_with_its_loader_and_official_shapes(name):
    with torch.device("meta"):
        model = create_model(name)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert state and all(t.is_meta for t in model.parameters())
    assert weights_loader(model) is not None, f"{name}: no official-checkpoint loader registered"
    official = SHAPES.get(_norm(name))
    if official is not None:  # the official key list holds exactly our names and shapes
        assert state == official
    if _norm(name) in COUNTS:
        assert sum(p.numel() for p in model.parameters()) == COUNTS[_norm(name)]


# official full configs that are a registered variant built with other arguments: name -> (variant, kwargs)
BUILT_AS = {
    "mavil_base_expert_pretrained_layout": ("mavil_vit_base_patch16", {}),
    "mavil_base_expert_finetuned_layout": ("mavil_vit_base_patch16", {"depth_av": 3, "ft": True}),
    "PEAudioVisual-code-defaults": ("pe_av", {}),
    "PEAudioFrame-code-defaults": ("pe_a_frame", {}),
    "videoclip_MMFusionSeparate_how2": ("videoclip_how2", {}),
    "vlm_MMFusionMTM_pretrain": ("vlm_how2", {}),
    "vlm_MMFusionJoint_retrieval": ("vlm_retrieval_how2", {}),
    **{f"Perception-LM-{size}{stage}": (f"plm_{size.lower()}{stage}", {}) for size in ("1B", "3B", "8B")
       for stage in ("", "_stage1")},
}


@pytest.mark.parametrize("official", list(BUILT_AS))
def test_official_layouts_built_from_a_variant_have_their_names_shapes_and_counts(official):
    if _norm(official) not in SHAPES:
        pytest.skip(f"{official} not in {FULL}")
    name, kwargs = BUILT_AS[official]
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == SHAPES[_norm(official)]
    assert sum(p.numel() for p in model.parameters()) == COUNTS[_norm(official)]


def _job_args(job):
    return [*job.verb.split(), *job.method.split()]


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.name.replace(" ", "-"))
def test_every_job_dry_runs_its_default_and_shows_its_config(job):
    dry = runner.invoke(app, [*_job_args(job), "--dry-run", "--json"])
    if dry.exit_code == 2:  # a job that needs an input only the user (or their machine) can give names its key
        assert re.search(r"bad config: [\w.]+\b.*(not set|not found)", dry.output), dry.output
    else:
        assert dry.exit_code == 0, dry.output
        resolved = json.loads(dry.stdout)
        shown = runner.invoke(app, ["show-config", job.method or job.verb, "--verb", job.verb, "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout) == resolved  # show-config prints what a run resolves
        again = job.resolve_config(base=resolved)  # the printed config round-trips through the loader
        from percli.core.config import to_dict

        assert to_dict(again) == resolved
    assert job.summary and job.doc(), f"{job.name}: help text missing"


def test_an_unknown_model_keyword_is_a_config_error_naming_it(tmp_path):
    from percli.core.config import ConfigError

    with pytest.raises(ConfigError, match="model.kwargs: hiera_tiny_224 has no argument 'depth_typo'"):
        create_model("hiera_tiny_224", depth_typo=3)
    result = runner.invoke(app, ["pretrain", "hiera-mae", "model.kwargs={depth_typo: 3}", "train.max_steps=1",
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code != 0 and "has no argument 'depth_typo'" in result.output
    assert "bug in percli" not in result.output
