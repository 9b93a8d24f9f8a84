"""Weights by name: hf-hub: specs, the release table, create_model(pretrained=...) and `percli download`.

Every test builds a Hugging Face cache in tmp_path laid out as the hub's own
(``models--ORG--NAME/snapshots/<sha>/FILE``, ``refs/main``) and reads it offline; nothing touches the network.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from percli.cli import app
from percli.models import create_model, list_models
from percli.models import pretrained as table
from percli.models.hub import HubWeightsError, parse_hub_spec, resolve_weights
from tests.conftest import TINY_CLS
from tests.summary_schema import assert_common_schema

runner = CliRunner()
SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "percli-test/hiera-tiny"
TINY_KWARGS = {"input_size": [64, 64], "embed_dim": 8, "num_heads": 1, "stages": [1, 1, 1, 1]}


def fake_hub_repo(cache, repo: str, files: dict[str, bytes | dict[str, torch.Tensor]], sha: str = SHA):
    """A repo as huggingface_hub caches it: the files under snapshots/<sha>/, refs/main naming the sha."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(snapshot / name))
        else:
            (snapshot / name).write_bytes(content)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(sha)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def tiny_hiera_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model("hiera_tiny_224", **TINY_KWARGS)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


def test_hub_spec_parsing():
    assert parse_hub_spec("hf-hub:timm/hiera_base_224.mae") == parse_hub_spec("hf-hub:timm/hiera_base_224.mae/")
    spec = parse_hub_spec("hf-hub:pyp1/VoiceCraft/giga830M.pth@main")
    assert (spec.repo_id, spec.filename, spec.revision) == ("pyp1/VoiceCraft", "giga830M.pth", "main")
    assert str(spec) == "hf-hub:pyp1/VoiceCraft/giga830M.pth@main"
    with pytest.raises(HubWeightsError, match="hf-hub:ORG/NAME"):
        parse_hub_spec("hf-hub:just-a-name")


def test_cached_spec_resolves_offline_by_default_file_revision_and_named_file(offline_hub):
    snapshot = fake_hub_repo(offline_hub, REPO, {"model.safetensors": tiny_hiera_state(), "extra.pth": b"x"})
    assert resolve_weights(f"hf-hub:{REPO}") == snapshot / "model.safetensors"
    assert resolve_weights(f"hf-hub:{REPO}@{SHA}") == snapshot / "model.safetensors"
    assert resolve_weights(f"hf-hub:{REPO}/extra.pth") == snapshot / "extra.pth"
    assert resolve_weights("plain/path.pth").as_posix() == "plain/path.pth"  # paths pass through
    assert resolve_weights(None) is None


def test_mixin_folder_resolves_to_its_snapshot(offline_hub):
    snapshot = fake_hub_repo(offline_hub, "org/mixin", {"model.safetensors": tiny_hiera_state(), "config.json": b"{}"})
    assert resolve_weights("hf-hub:org/mixin") == snapshot  # read like a checkpoint dir by every loader


def test_uncached_spec_offline_names_the_repo_and_how_to_get_it(offline_hub):
    with pytest.raises(HubWeightsError) as err:
        resolve_weights("hf-hub:nobody/nothing/weights.pth")
    message = str(err.value)
    assert "nobody/nothing" in message and "HF_HUB_OFFLINE" in message
    assert "percli download hf-hub:nobody/nothing/weights.pth" in message


def test_create_model_pretrained_loads_the_tagged_release_from_the_cache(offline_hub, monkeypatch):
    state = tiny_hiera_state(seed=3)
    fake_hub_repo(offline_hub, REPO, {"model.safetensors": state})
    monkeypatch.setitem(table.PRETRAINED, "hiera_tiny_224",
                        {"tiny-test": table.Release(REPO, "model.safetensors", verified="test")})
    for model in (create_model("hiera_tiny_224", pretrained=True, **TINY_KWARGS),
                  create_model("hiera_tiny_224", pretrained="tiny-test", **TINY_KWARGS),
                  create_model("hiera_tiny_224.tiny-test", **TINY_KWARGS)):
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    random = create_model("hiera_tiny_224", **TINY_KWARGS)
    assert not torch.equal(random.state_dict()["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    with pytest.raises(ValueError, match="known: tiny-test"):
        create_model("hiera_tiny_224", pretrained="nope", **TINY_KWARGS)


def test_release_off_the_hub_or_unreadable_points_at_the_official_file():
    with pytest.raises(ValueError, match="dl.fbaipublicfiles.com/hiera/mae_hiera_tiny_224.pth"):
        create_model("mae_hiera_tiny_224", pretrained=True)
    with pytest.raises(ValueError, match="transformers layout.*dinov2_vits14_pretrain.pth"):
        create_model("dinov2_vits14", pretrained="lvd142m.hf")


def test_release_table_names_registered_models_and_well_formed_entries():
    models = set(list_models())
    assert set(table.PRETRAINED) <= models
    for name in table.list_pretrained():
        model, tag = name.split(".", 1)
        entry = table.release(model, tag)
        assert entry.hub or entry.url, name
        if entry.spec:
            spec = parse_hub_spec(entry.spec)
            assert spec.repo_id == entry.hub and spec.filename == entry.filename
        if not entry.loadable:
            assert entry.url, f"{name}: an unreadable layout must point at the official file"
    assert table.split_name("hiera_base_224.mae") == ("hiera_base_224", "mae")
    assert table.split_name("hiera_base_224") == ("hiera_base_224", None)


def test_cli_finetune_loads_model_checkpoint_by_hub_name_offline(offline_hub, tmp_path):
    fake_hub_repo(offline_hub, REPO, {"model.safetensors": tiny_hiera_state()})
    result = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(tmp_path / "ft"), "--json", *TINY_CLS,
                                 f"model.checkpoint=hf-hub:{REPO}", "train.max_steps=1", "train.eval_every=0"])
    assert result.exit_code == 0, result.output
    assert "initial weights from hf-hub:percli-test/hiera-tiny" in result.stderr


def test_cli_uncached_hub_checkpoint_offline_exits_2_naming_the_repo(offline_hub, tmp_path):
    result = runner.invoke(app, ["finetune", "hiera", "--run-dir", str(tmp_path / "ft"), *TINY_CLS,
                                 "model.checkpoint=hf-hub:nobody/missing", "train.max_steps=1"])
    assert result.exit_code == 2, result.output
    assert "nobody/missing" in result.output and "percli download" in result.output


def test_percli_download_prints_where_the_cached_release_is(offline_hub, tmp_path, monkeypatch):
    snapshot = fake_hub_repo(offline_hub, REPO, {"model.safetensors": tiny_hiera_state()})
    monkeypatch.setitem(table.PRETRAINED, "hiera_tiny_224",
                        {"tiny-test": table.Release(REPO, "model.safetensors", verified="test")})
    result = runner.invoke(app, ["download", "hiera_tiny_224", "--json", "--run-dir", str(tmp_path / "dl")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert_common_schema(summary)
    assert summary["path"] == str(snapshot / "model.safetensors")
    assert summary["spec"] == f"hf-hub:{REPO}/model.safetensors" and summary["model"] == "hiera_tiny_224"
    missing = runner.invoke(app, ["download", "hf-hub:nobody/missing", "--run-dir", str(tmp_path / "dl2")])
    assert missing.exit_code == 2 and "nobody/missing" in missing.output


def test_percli_download_fetches_into_the_cache_through_huggingface_hub(tmp_path, monkeypatch):
    """Online: the file comes from huggingface_hub's download (faked here) into the cache the env names."""
    import huggingface_hub

    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def fake_download(repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False, **_):
        calls.append((repo_id, filename, revision, str(cache_dir), local_files_only))
        if filename != "giga830M.pth":
            raise huggingface_hub.errors.RemoteEntryNotFoundError("no such file", response=None)
        return str(fake_hub_repo(cache_dir, repo_id, {filename: b"weights"}) / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    result = runner.invoke(app, ["download", "voicecraft_830m", "--json", "--run-dir", str(tmp_path / "dl")])
    assert result.exit_code == 0, result.output
    assert calls == [("pyp1/VoiceCraft", "giga830M.pth", None, str(cache), False)]
    assert json.loads(result.stdout)["path"].startswith(str(cache / "models--pyp1--VoiceCraft" / "snapshots"))


def _entry_points():
    from percli.avsuperb.upstream import load_upstream
    from percli.models import create_model_for, load_initial_weights
    from percli.recipes.common import ModelSection
    from percli.recipes.knn_eval import build_encoder
    from percli.recipes.zero_shot import load_clip
    from percli.tts.inference import load_codec, read_voicecraft_weights

    return {
        "load_initial_weights": lambda s: load_initial_weights(create_model("hiera_tiny_224", **TINY_KWARGS), s),
        "create_model_for": lambda s: create_model_for("hiera_tiny_224", TINY_KWARGS, s),
        "eval knn": lambda s: build_encoder(ModelSection(name="", checkpoint=s)),
        "eval zero-shot": lambda s: load_clip(ModelSection(name="", checkpoint=s)),
        "av-superb upstream": lambda s: load_upstream("audio-mae", checkpoint=s),
        "tts --checkpoint": read_voicecraft_weights,
        "tts --codec": load_codec,
    }


@pytest.mark.parametrize("where", list(_entry_points()))
def test_every_weights_option_resolves_hub_specs(offline_hub, where):
    """Each place that opens model weights goes through the resolver: an uncached spec offline names its repo."""
    with pytest.raises(HubWeightsError, match="nobody/missing"):
        _entry_points()[where]("hf-hub:nobody/missing/weights.pth")
