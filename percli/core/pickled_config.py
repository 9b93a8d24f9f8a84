"""The globals an official training checkpoint pickles beside its tensors, for `torch_load_weights`'s allow list.

Training frameworks store their experiment config and logs in the same pickle as the weights: audiocraft a
Hydra/OmegaConf ``DictConfig`` (``xp.cfg``), fairseq its ``argparse.Namespace`` (``args``, older releases) or a
plain dict (``cfg``), meter states with numpy scalars (``extra_state.metrics``, ``best``). `config_globals` names
exactly those, so torch's restricted unpickler reads such a file without running any code of it:

* OmegaConf's containers, value nodes, their metadata and ``typing.Any`` become `InertObject` stand-ins, which
  keep the state they are given and run nothing of the original class (OmegaConf is not installed);
* the plain types that metadata names (dict, list, int, ``collections.defaultdict``), ``argparse.Namespace``
  (sets attributes) and numpy's scalar / dtype reconstructors and dtype classes (numbers from bytes) are
  themselves.

A file naming any other global is refused before anything of it is unpickled (`torch_load_weights`).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np


class InertObject:
    """Stand-in for a class pickled in a checkpoint (e.g. OmegaConf's DictConfig): keeps the constructor arguments
    and state it is given, and runs no code of the original class."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


OMEGACONF_STAND_INS = ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                       "omegaconf.nodes.AnyNode", "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode",
                       "omegaconf.nodes.FloatNode", "omegaconf.nodes.BooleanNode", "omegaconf.base.ContainerMetadata",
                       "omegaconf.base.Metadata", "typing.Any")
_PLAIN = {"builtins.dict": dict, "builtins.list": list, "builtins.int": int,
          "collections.defaultdict": collections.defaultdict, "argparse.Namespace": argparse.Namespace,
          "numpy.dtype": np.dtype}
_NUMPY_SCALAR = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")  # numpy 1.x / 2.x pickles


def config_globals() -> list[tuple[object, str]]:
    """(object, "module.name") pairs for torch's ``safe_globals``: the names above and nothing else."""
    from numpy._core.multiarray import scalar

    stand_ins = [(type(name.rsplit(".", 1)[-1], (InertObject,), {}), name) for name in OMEGACONF_STAND_INS]
    dtypes = [(getattr(np.dtypes, name), f"numpy.dtypes.{name}") for name in np.dtypes.__all__
              if name.endswith("DType")]  # what np.dtype(...) builds: its state is set on one of these
    return [*stand_ins, *((t, name) for name, t in _PLAIN.items()), *((scalar, name) for name in _NUMPY_SCALAR),
            *dtypes]
