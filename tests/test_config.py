import dataclasses

import pytest

from percli.core.config import (
    ConfigError,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    load_yaml,
    merge,
    parse_override,
    to_dict,
)
from percli.jobs import JOBS, get_job


@dataclasses.dataclass
class Demo:
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    name: str = "x"
    extra: dict = dataclasses.field(default_factory=dict)


def test_overrides_are_typed():
    cfg = apply_overrides(Demo(), ["train.max_steps=20", "optim.lr=1e-3", "optim.betas=[0.9,0.95]",
                                   "train.grad_clip=null", "train.mixed_precision=bf16", "extra={a: 1}"])
    assert cfg.train.max_steps == 20 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.train.grad_clip is None
    assert cfg.train.mixed_precision == "bf16"
    assert cfg.extra == {"a": 1}


def test_dotted_override_sets_one_key_of_a_mapping_but_a_file_replaces_it():
    base = merge(Demo(), {"extra": {"depth": 4, "width": 64, "sub": {"a": 1, "b": 2}}})
    cfg = apply_overrides(base, ["extra.depth=2", "extra.sub.b=3"])
    assert cfg.extra == {"depth": 2, "width": 64, "sub": {"a": 1, "b": 3}}
    assert merge(base, {"extra": {"depth": 2}}).extra == {"depth": 2}  # presets / --config replace the mapping
    assert apply_overrides(base, ["extra={depth: 2}"]).extra == {"depth": 2}  # so does a whole-mapping override


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"train\.max_step: unknown key\. Did you mean train\.max_steps\?"):
        apply_overrides(Demo(), ["train.max_step=3"])


def test_bad_value_names_allowed_values():
    with pytest.raises(ConfigError, match=r"train\.mixed_precision.*'no', 'bf16', 'fp16'"):
        apply_overrides(Demo(), ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match=r"train\.max_steps: got 'many'; expected an integer"):
        apply_overrides(Demo(), ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="expected 2"):
        apply_overrides(Demo(), ["optim.betas=[0.9]"])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.max_steps")


def test_yaml_merge_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 4\noptim:\n  lr: 2.0e-4\n")
    cfg = merge(Demo(), load_yaml(path))
    assert cfg.train.batch_size == 4 and cfg.optim.lr == 2e-4
    assert merge(Demo(), to_dict(cfg)) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


@pytest.mark.parametrize("recipe", JOBS, ids=lambda r: f"{r.verb}-{r.method}")
def test_every_preset_resolves(recipe):
    for preset in recipe.presets() + ["none"]:
        recipe.resolve_config(preset)


def test_preset_precedence(tmp_path):
    recipe = get_job("pretrain", "hiera-mae")
    paper = recipe.resolve_config("none")
    tiny = recipe.resolve_config()  # default preset when neither --preset nor --config is given
    assert paper.optim.lr == 8e-4 and paper.optim.ref_batch_size == 4096 and paper.optim.betas == (0.9, 0.95)
    assert tiny.data.source == "embedded" and tiny.model.kwargs
    cfg_file = tmp_path / "mine.yaml"
    cfg_file.write_text("train:\n  max_steps: 7\n")
    from_file = recipe.resolve_config(config_file=str(cfg_file), overrides=["train.seed=3"])
    assert from_file.train.max_steps == 7 and from_file.train.seed == 3
    assert from_file.model.name == paper.model.name  # --config alone starts from the paper's defaults
