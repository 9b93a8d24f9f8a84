"""Weights by name: ``hf-hub:ORG/NAME[/FILE][@REVISION]`` resolved through ``huggingface_hub``'s cache.

Every place that takes model weights as a path (``model.checkpoint``, the eval jobs, AV-SUPERB upstream
checkpoints, ``tts --checkpoint/--codec``) also takes such a spec: `resolve_weights` turns it into the
local file (or snapshot folder) in the standard Hugging Face cache (``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), downloading it once. ``HF_HUB_OFFLINE=1`` reads
the cache only; a spec that is not cached then raises `HubWeightsError` (exit 2) naming the repo and
how to fetch it. The environment is read at call time, not when ``huggingface_hub`` is imported, so a
process (or test) may change it.

Without ``/FILE`` the file is the one the release table names for that repo
(`percli.models.pretrained`), else the first of `DEFAULT_FILES` the repo has. A repo in the
``PyTorchModelHubMixin`` layout (``config.json`` beside ``model.safetensors``: the official Hiera and
VoiceCraft_* uploads) resolves to its snapshot folder, which every percli loader reads like a
checkpoint dir.

``huggingface_hub`` is imported inside the functions: importing percli never needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PREFIX = "hf-hub:"
DEFAULT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                 "open_clip_pytorch_model.bin")
"""Tried in order for a spec without a file: timm/transformers, then open_clip names."""
_TRUE = {"1", "ON", "YES", "TRUE"}


class HubWeightsError(ValueError):
    """A hub spec that cannot be resolved (bad syntax, not cached offline, no such repo/file); the
    message names the repo and what to do (the CLI exits 2)."""


@dataclass(frozen=True)
class HubSpec:
    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        file = f"/{self.filename}" if self.filename else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{PREFIX}{self.repo_id}{file}{rev}"


def is_hub_spec(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_hub_spec(value: str) -> HubSpec:
    """``hf-hub:ORG/NAME[/PATH/IN/REPO][@REVISION]`` -> `HubSpec` (the revision may be a branch, tag or commit)."""
    body, _, revision = value[len(PREFIX):].partition("@")
    parts = body.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise HubWeightsError(f"{value!r} is not a hub spec: write hf-hub:ORG/NAME, hf-hub:ORG/NAME/FILE or "
                              "either with @REVISION (e.g. hf-hub:timm/hiera_base_224.mae_in1k_ft_in1k)")
    return HubSpec("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub itself reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    return env.upper() in _TRUE if env is not None else bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The hub cache as the environment sets it now: ``HF_HUB_CACHE``, ``$HF_HOME/hub``, or the default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _how_to_get(spec: HubSpec) -> str:
    return (f"run `percli download {spec}` (or `hf download {spec.repo_id}"
            f"{' ' + spec.filename if spec.filename else ''}`) where the network is reachable, with the same "
            f"HF_HUB_CACHE/HF_HOME (cache: {cache_dir()}), or unset HF_HUB_OFFLINE")


def _fetch(spec: HubSpec, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(spec.repo_id, filename, revision=spec.revision, cache_dir=cache_dir(),
                                local_files_only=offline()))


def _mixin_folder(spec: HubSpec, weights: Path) -> Path:
    """The snapshot folder when `weights` is a ``PyTorchModelHubMixin`` model.safetensors with its config.json."""
    from huggingface_hub.errors import EntryNotFoundError

    if weights.name != "model.safetensors" or spec.filename:
        return weights
    try:
        _fetch(spec, "config.json")
    except (EntryNotFoundError, OSError):
        return weights
    return weights.parent


def resolve_hub_spec(spec: HubSpec | str) -> Path:
    """The local path of `spec`'s weights, downloaded into the cache unless already there (offline: cache only).

    Raises:
        HubWeightsError: not cached while offline, or no such repo, revision or file; the message says
            how to get it.
    """
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from percli.models.pretrained import hub_filename

    spec = parse_hub_spec(spec) if isinstance(spec, str) else spec
    known = spec.filename or hub_filename(spec.repo_id)
    candidates = [known] if known else list(DEFAULT_FILES)
    missing_offline = False
    for filename in candidates:
        try:
            return _mixin_folder(spec, _fetch(spec, filename))
        except LocalEntryNotFoundError:
            missing_offline = True
        except EntryNotFoundError:
            continue
        except HfHubHTTPError as e:  # no such repo or revision, gated, or no network
            raise HubWeightsError(f"{spec}: {type(e).__name__}: {str(e).splitlines()[0]}; check the repo id and "
                                  f"revision at https://huggingface.co/{spec.repo_id}") from None
    if missing_offline:
        where = "offline (HF_HUB_OFFLINE=1)" if offline() else "and the hub could not be reached"
        raise HubWeightsError(f"{spec}: {spec.repo_id} {' or '.join(candidates)} is not in the Hugging Face cache "
                              f"{where}; {_how_to_get(spec)}")
    raise HubWeightsError(f"{spec}: {spec.repo_id} has none of {', '.join(candidates)}; name the file: "
                          f"hf-hub:{spec.repo_id}/FILE (see https://huggingface.co/{spec.repo_id}/tree/main)")


def resolve_weights(value: str | Path | None) -> Path | None:
    """A weights argument as a local path: hub specs resolved (see `resolve_hub_spec`), paths ``~``-expanded.

    The one call every weights-taking option goes through; None stays None.
    """
    if value is None or value == "":
        return None
    if is_hub_spec(value):
        return resolve_hub_spec(str(value))
    return Path(value).expanduser()
