"""VoiceCraft's codec: audiocraft's EnCodec (16 kHz, 4 x 2048, 50 Hz) with its state-dict names."""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import pickle
import sys
import types
import typing

import pytest
import torch

from percli.core.checkpoint import RefusedPickleError, save_weights
from percli.models import create_model
from percli.models.encodec import (
    EncodecModel,
    EuclideanCodebook,
    ResidualVectorQuantizer,
    load_official_state,
)

# Tiny widths, the release's structure: every test but the full-size one runs in milliseconds.
TINY = dict(n_filters=4, dimension=8, bins=16)


def audiocraft_state_shapes(channels=1, dimension=128, n_filters=64, n_residual_layers=1, ratios=(8, 5, 4, 2),
                            kernel_size=7, last_kernel_size=7, residual_kernel_size=3, compress=2, lstm=2, n_q=4,
                            bins=2048) -> dict[str, tuple[int, ...]]:
    """The state dict audiocraft@c5157b5 builds for an `encodec` + `seanet` + `rvq` config, written
    from its builder rules: ``nn.Sequential`` indices count every module (ELUs included), a
    weight-normed conv stores ``weight_g`` [w.shape[0], 1, 1] and ``weight_v``, a transposed conv's
    weight is [in, out, k], the LSTM is ``nn.LSTM(w, w, lstm)``, a codebook has 4 buffers."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(prefix, c_in, c_out, k, attr="conv"):
        w = (c_in, c_out, k) if attr == "convtr" else (c_out, c_in, k)
        shapes.update({f"{prefix}.{attr}.{attr}.bias": (c_out,),  # weight_norm re-registers g, v after bias
                       f"{prefix}.{attr}.{attr}.weight_g": (w[0], 1, 1), f"{prefix}.{attr}.{attr}.weight_v": w})

    def resblock(prefix, w):  # block = [ELU, conv k, ELU, conv 1]
        conv(f"{prefix}.block.1", w, w // compress, residual_kernel_size)
        conv(f"{prefix}.block.3", w // compress, w, 1)

    def lstm_layers(prefix, w):
        for layer in range(lstm):
            shapes.update({f"{prefix}.lstm.weight_ih_l{layer}": (4 * w, w),
                           f"{prefix}.lstm.weight_hh_l{layer}": (4 * w, w),
                           f"{prefix}.lstm.bias_ih_l{layer}": (4 * w,), f"{prefix}.lstm.bias_hh_l{layer}": (4 * w,)})

    i, w = 0, n_filters  # encoder: conv, [res x n, ELU, down] per ratio (reversed), LSTM, ELU, conv
    conv(f"encoder.model.{i}", channels, w, kernel_size)
    for r in reversed(ratios):
        for _ in range(n_residual_layers):
            i += 1
            resblock(f"encoder.model.{i}", w)
        i += 2
        conv(f"encoder.model.{i}", w, 2 * w, 2 * r)
        w *= 2
    i += 1
    lstm_layers(f"encoder.model.{i}", w)
    i += 2
    conv(f"encoder.model.{i}", w, dimension, last_kernel_size)

    i = 0  # decoder: conv, LSTM, [ELU, up, res x n] per ratio, ELU, conv
    conv(f"decoder.model.{i}", dimension, w, kernel_size)
    i += 1
    lstm_layers(f"decoder.model.{i}", w)
    for r in ratios:
        i += 2
        conv(f"decoder.model.{i}", w, w // 2, 2 * r, attr="convtr")
        w //= 2
        for _ in range(n_residual_layers):
            i += 1
            resblock(f"decoder.model.{i}", w)
    i += 2
    conv(f"decoder.model.{i}", w, channels, last_kernel_size)

    for k in range(n_q):
        p = f"quantizer.vq.layers.{k}._codebook"
        shapes.update({f"{p}.inited": (1,), f"{p}.cluster_size": (bins,), f"{p}.embed": (bins, dimension),
                       f"{p}.embed_avg": (bins, dimension)})
    return shapes


@pytest.fixture(scope="module")
def full_codec() -> EncodecModel:
    torch.manual_seed(0)
    return create_model("encodec_16khz_4cb2048").eval()


def test_release_state_dict_names_shapes_and_size(full_codec):
    own = {k: tuple(v.shape) for k, v in full_codec.state_dict().items()}
    assert list(own.items()) == list(audiocraft_state_shapes().items())  # names, shapes and order
    assert len(own) == 116
    # 56.8M parameters: the VoiceCraft README's "56M parameters"; the codebook buffers add 2.1M numbers
    assert sum(p.numel() for p in full_codec.parameters()) == 56_819_138
    assert sum(v.numel() for v in full_codec.state_dict().values()) == 58_924_486
    assert own["decoder.model.3.convtr.convtr.weight_g"] == (1024, 1, 1)  # transposed: norm over dim 0 = inputs


def test_one_second_at_16khz_is_50_frames_of_4_codes(full_codec):
    assert (full_codec.sample_rate, full_codec.frame_rate, full_codec.hop_length) == (16000, 50, 320)
    wav = 0.1 * torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        codes = full_codec.encode(wav)
        out = full_codec.decode(codes)
    assert codes.shape == (1, 4, 50) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 2048
    assert codes.unique().numel() > 20  # random codebooks spread the frames out
    assert out.shape == (1, 1, 16000) and torch.isfinite(out).all()


@pytest.mark.parametrize("causal, samples, frames", [(False, 3200, 10), (False, 3201, 11), (True, 999, 4)])
def test_decode_encode_round_trip_shapes(causal, samples, frames):
    torch.manual_seed(0)
    codec = EncodecModel(causal=causal, **TINY).eval()
    wav = torch.randn(2, 1, samples)
    with torch.no_grad():
        codes = codec.encode(wav)
        assert codes.shape == (2, 4, frames)  # ceil(T / 320): the last window is padded full
        assert codec.decode(codes).shape == (2, 1, frames * 320)  # not trimmed, as audiocraft's decode
        assert codec(wav).shape == wav.shape
        assert codec.decode(codes[:, :2]).shape == (2, 1, frames * 320)  # fewer codebooks: coarser audio


def test_causal_encoder_ignores_the_future():
    torch.manual_seed(0)
    wav = torch.randn(1, 1, 3200)
    late = wav.clone()
    late[..., 1600:] = torch.randn(1, 1, 1600)
    for causal, same in ((True, True), (False, False)):
        codec = EncodecModel(causal=causal, **TINY).eval()
        with torch.no_grad():
            a, b = codec.encoder(wav)[..., :4], codec.encoder(late)[..., :4]  # frames 0-3 end before sample 1280
        assert torch.equal(a, b) is same


def test_codebook_picks_the_nearest_entry_not_the_largest_dot_product():
    book = EuclideanCodebook(dim=2, bins=3)
    book.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[0.9, 0.6], [0.1, -0.1], [0.2, 1.9], [0.5, 0.0]])
    # [0.9, 0.6]: squared distances 1.17, 0.37, 2.77 -> 1 (the dot product would pick entry 2);
    # [0.5, 0.0] is equally far from entries 0 and 1 -> the lower index
    assert book.encode(x).tolist() == [1, 0, 2, 0]
    assert torch.equal(book.decode(torch.tensor([2, 1])), torch.tensor([[0.0, 2.0], [1.0, 0.0]]))


def test_second_codebook_quantizes_the_residual():
    rvq = ResidualVectorQuantizer(dimension=2, n_q=2, bins=3)
    rvq.vq.layers[0]._codebook.embed.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    rvq.vq.layers[1]._codebook.embed.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]))
    x = torch.tensor([[9.2, 0.1], [0.3, 10.8]]).t()[None]  # two frames, [B, D, T] = [1, 2, 2]
    codes = rvq.encode(x)
    # frame 0: [10, 0] leaves [-0.8, 0.1] -> [-1, 0] (on x itself the 2nd book would pick [1, 1]);
    # frame 1: [0, 10] leaves [0.3, 0.8] -> [1, 1]
    assert codes.tolist() == [[[1, 2], [2, 1]]]
    assert torch.equal(rvq.decode(codes), torch.tensor([[9.0, 0.0], [1.0, 11.0]]).t()[None])
    assert torch.equal(rvq.decode(codes[:, :1]), torch.tensor([[10.0, 0.0], [0.0, 10.0]]).t()[None])


def test_safetensors_save_and_load_reproduce_the_codec(tmp_path):
    torch.manual_seed(0)
    codec = EncodecModel(**TINY).eval()
    path = save_weights(tmp_path / "codec.safetensors", codec.state_dict(), codec.checkpoint_meta())
    torch.manual_seed(1)
    other = EncodecModel(**TINY).eval()
    wav = torch.randn(1, 1, 1600)
    with torch.no_grad():
        assert not torch.equal(codec.encode(wav), other.encode(wav))
        load_official_state(other, path)
        codes = codec.encode(wav)
        assert torch.equal(other.encode(wav), codes)
        assert torch.equal(other.decode(codes), codec.decode(codes))


EXECUTED: list[str] = []


def _omegaconf_class(module: str, name: str) -> type:
    """A class pickled under OmegaConf's name whose ``__setstate__`` would record that it ran."""

    def __setstate__(self, state):
        EXECUTED.append(f"{module}.{name}.__setstate__")
        self.__dict__.update(state)

    return type(name, (), {"__module__": module, "__qualname__": name, "__setstate__": __setstate__})


@contextlib.contextmanager
def _fake_omegaconf():
    """Importable stand-ins for the OmegaConf classes an audiocraft ``xp.cfg`` pickles (OmegaConf is not
    a percli dependency), with exactly the state layout OmegaConf 2.3 pickles."""
    names = {"omegaconf.dictconfig": ["DictConfig"], "omegaconf.listconfig": ["ListConfig"],
             "omegaconf.nodes": ["AnyNode"], "omegaconf.base": ["ContainerMetadata", "Metadata"]}
    made = {}
    sys.modules["omegaconf"] = types.ModuleType("omegaconf")  # the package, for `import omegaconf.base`
    for module, classes in names.items():
        mod = types.ModuleType(module)
        for name in classes:
            setattr(mod, name, _omegaconf_class(module, name))
            made[name] = getattr(mod, name)
        sys.modules[module] = mod
    try:
        yield made
    finally:
        for module in [*names, "omegaconf"]:
            del sys.modules[module]


def _xp_cfg(oc: dict) -> object:
    """``xp.cfg`` as OmegaConf pickles a Hydra config: containers with ContainerMetadata (``typing.Any``
    annotations, ``object_type`` dict/list, ``key_type`` int for lists, a ``defaultdict(dict)`` resolver
    cache) holding AnyNode values with their Metadata."""

    def container(cls, object_type, key_type, content):
        obj = object.__new__(oc[cls])
        meta = object.__new__(oc["ContainerMetadata"])
        meta.__dict__.update(ref_type=typing.Any, object_type=object_type, optional=True, key=None, flags={},
                             flags_root=False, resolver_cache=collections.defaultdict(dict), key_type=key_type,
                             element_type=typing.Any)
        obj.__dict__.update(_metadata=meta, _parent=None, _content=content)
        return obj

    def node(value):
        obj, meta = object.__new__(oc["AnyNode"]), object.__new__(oc["Metadata"])
        meta.__dict__.update(ref_type=typing.Any, object_type=None, optional=True, key=None, flags={},
                             flags_root=False)
        obj.__dict__.update(_metadata=meta, _parent=None, _val=value)
        return obj

    ratios = container("ListConfig", list, int, [node(r) for r in (8, 5, 4, 2)])
    seanet = container("DictConfig", dict, typing.Any, {"n_filters": node(64), "ratios": ratios})
    return container("DictConfig", dict, typing.Any, {"sample_rate": node(16000), "seanet": seanet,
                                                      "device": node("cuda"), "lr": node(3e-4)})


def _solver_checkpoint(path, best, stale, extra=None):
    """An audiocraft CompressionSolver checkpoint (the layout of the release's encodec_4cb2048_giga.th)."""
    with _fake_omegaconf() as oc:
        ckpt = {"history": [{"train": {"loss": 1.5}}], "xp.cfg": _xp_cfg(oc), "xp.sig": "4cb2048",
                "best_state": {"model": best}, "fsdp_best_state": {}, "model": stale,
                "optimizer": torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))]).state_dict(),
                "lr_scheduler": None, "scaler": None, "ema": None, **(extra or {})}
        torch.save(ckpt, path)
    return path


class _Hook:
    def __reduce__(self):
        return EXECUTED.append, ("reduce",)


def test_audiocraft_solver_checkpoint_loads_best_state_without_running_pickled_code(tmp_path):
    torch.manual_seed(0)
    codec = EncodecModel(**TINY)
    best = codec.state_dict()
    stale = {k: torch.zeros_like(v) for k, v in best.items()}  # the solver's last (not best) weights
    path = _solver_checkpoint(tmp_path / "checkpoint.th", best, stale)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == {
        "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.nodes.AnyNode",
        "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "typing.Any", "builtins.dict",
        "builtins.list", "builtins.int", "collections.defaultdict"}
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)

    EXECUTED.clear()
    loaded = EncodecModel(**TINY)
    load_official_state(loaded, path)
    assert EXECUTED == []
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in best.items())


@pytest.mark.parametrize(("extra", "named"), [({"hook": _Hook()}, "builtins.getattr"),
                                               ({"note": print}, "builtins.print"),
                                               ({"root": pathlib.PurePosixPath("/data")}, "pathlib.PurePosixPath")])
def test_audiocraft_checkpoint_with_any_other_global_is_refused_unread(tmp_path, extra, named):
    best = EncodecModel(**TINY).state_dict()
    path = _solver_checkpoint(tmp_path / "checkpoint.th", best, best, extra)
    EXECUTED.clear()
    with pytest.raises(RefusedPickleError) as info:
        load_official_state(EncodecModel(**TINY), path)
    message = str(info.value)
    assert str(path) in message and "percli convert" in message and "weights_only" not in message
    assert f"({named})" in message  # only the global outside the release's set is named
    assert "DictConfig" not in message  # the allowed globals are not the problem
    assert EXECUTED == []
    assert isinstance(info.value, ValueError) and isinstance(info.value, pickle.UnpicklingError)


class _ShellCommand:
    def __reduce__(self):
        return os.system, ("true",)


def test_checkpoint_calling_into_os_is_still_refused(tmp_path):
    path = tmp_path / "evil.th"
    torch.save({"xp.cfg": _ShellCommand(), "best_state": {"model": {}}}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|os|nt)\.system"):
        load_official_state(EncodecModel(**TINY), path)


def test_mismatched_checkpoint_names_the_keys():
    state = EncodecModel(**TINY).state_dict()
    with pytest.raises(RuntimeError, match=r"wrong shape.*quantizer.vq.layers.0._codebook.embed"):
        load_official_state(EncodecModel(**{**TINY, "bins": 32}), state)
    with pytest.raises(RuntimeError, match=r"unexpected \['quantizer.vq.layers.3"):
        load_official_state(EncodecModel(**{**TINY, "n_q": 3}), state)


def test_bad_inputs_say_how_to_fix_them():
    codec = create_model("encodec_16khz_4cb2048", **TINY)
    with pytest.raises(ValueError, match=r"\[batch, 1, samples\].*wav\[:, None\]"):
        codec.encode(torch.zeros(1, 1600))
    with pytest.raises(ValueError, match="strip special tokens"):
        codec.decode(torch.full((1, 4, 3), 16))
    with pytest.raises(FileNotFoundError, match="huggingface.co/pyp1/VoiceCraft"):
        load_official_state(codec, "missing/encodec_4cb2048_giga.th")
