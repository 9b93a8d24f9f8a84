"""The Planetoid files of Kipf's GCN/GAE and PyG's raw folders: `ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}`.

x/tx/allx are pickled scipy CSR matrices and y/ty/ally pickled numpy arrays (training, test and all
non-test nodes), `graph` a pickled defaultdict of adjacency lists and `test.index` the node id of
each tx/ty row, one per line. The pickles come from Python 2, so they load with latin1 strings. A
pickle can run any code it names, so they are read with an unpickler that resolves only the few
globals these files use and refuses every other one before anything is called.

Node order follows GCN's `load_data`: allx rows are nodes 0..len(allx)-1 and tx row j is node
test.index[j]. Citeseer's test range has ids without a tx row (isolated nodes); as in GCN's fix they
get zero feature rows and no label (-1 here; GCN's all-zero one-hot row).
"""

from __future__ import annotations

import codecs
import collections
import pickle
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
_NAME = re.compile(r"^ind\.(?P<name>[^.]+)(\.(" + "|".join(re.escape(p) for p in PARTS) + "))?$")


class _PickledCSR:
    """Stands in for scipy's csr_matrix while unpickling: keeps the pickled attributes, runs nothing."""

    def __setstate__(self, state: object) -> None:
        self.state = state

    def to_csr(self, path: Path) -> sp.csr_matrix:
        state = self.state if isinstance(self.state, dict) else {}
        try:
            shape = state["_shape"] if "_shape" in state else state["shape"]
            return sp.csr_matrix((state["data"], state["indices"], state["indptr"]), shape=tuple(shape))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid pickled CSR matrix ({e})") from None


_reconstruct = np.ndarray(0).__reduce__()[0]  # numpy's array rebuilder, wherever this numpy version keeps it

# (module, name) as written by Python 2 / old numpy and scipy, and by current versions -> what it loads as
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # Python 3's protocol-2 pickles spell bytes as encode(str, "latin1")
    ("scipy.sparse.csr", "csr_matrix"): _PickledCSR,
    ("scipy.sparse._csr", "csr_matrix"): _PickledCSR,
    ("collections", "defaultdict"): collections.defaultdict,
    ("__builtin__", "list"): list,
    ("builtins", "list"): list,
}


class _PlanetoidUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"{self.path}: refusing to load the global {module}.{name}; a Planetoid file holds only numpy "
                "arrays, scipy CSR matrices and a dict of lists (the file is damaged or not from the Planetoid set)")
        return _ALLOWED[(module, name)]


def load_pickle(path: Path) -> object:
    """Unpickle one Planetoid file with only the globals `_ALLOWED` names; ValueError names the file."""
    with open(path, "rb") as f:
        try:
            return _PlanetoidUnpickler(f, path).load()
        except Exception as e:  # a refused global, truncated or foreign data: the unpickler raises many kinds
            raise ValueError(str(e) if str(e).startswith(str(path)) else
                             f"{path}: not a readable Planetoid pickle ({type(e).__name__}: {e})") from None


def planetoid_prefix(path: Path) -> Path | None:
    """`dir/ind.<name>` when `path` names Planetoid files: the prefix itself, one of its files, or a folder
    (or its PyG `raw/` subfolder) holding one `ind.<name>.x`. None for anything else."""
    if path.is_dir():
        found = sorted(path.glob("ind.*.x")) or sorted(path.glob("raw/ind.*.x"))
        if len(found) > 1:
            raise ValueError(f"{path} holds several Planetoid graphs ({', '.join(p.name for p in found)}); "
                             f"pass one prefix, e.g. {found[0].with_suffix('')}")
        return found[0].with_suffix("") if found else None
    match = _NAME.match(path.name)
    if match is None:
        return None
    prefix = path.with_name(f"ind.{match['name']}")
    return prefix if prefix.with_name(f"{prefix.name}.x").is_file() else None


def read_planetoid(prefix: Path) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """Edges [E, 2] (as listed, both directions), features CSR [N, F] and labels [N] (-1: none) of `dir/ind.<name>`."""
    files = {part: prefix.with_name(f"{prefix.name}.{part}") for part in PARTS}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{prefix}: missing Planetoid files {', '.join(missing)} (expected "
                                f"{prefix.name}.{{{','.join(PARTS)}}})")
    allx, tx = (_csr(files[part]) for part in ("allx", "tx"))
    ally, ty = (_one_hot(files[part]) for part in ("ally", "ty"))
    test_index = _test_index(files["test.index"])
    if len(test_index) != tx.shape[0] or len(ty) != tx.shape[0] or len(ally) != allx.shape[0]:
        raise ValueError(f"{prefix}: {len(test_index)} test ids, {tx.shape[0]} tx rows, {len(ty)} ty rows, "
                         f"{allx.shape[0]} allx rows, {len(ally)} ally rows; test ids and tx/ty rows must "
                         "match, as must allx/ally rows")
    if tx.shape[1] != allx.shape[1] or ty.shape[1] != ally.shape[1]:
        raise ValueError(f"{prefix}: tx/allx have {tx.shape[1]}/{allx.shape[1]} columns and ty/ally "
                         f"{ty.shape[1]}/{ally.shape[1]}; they must agree")
    if len(test_index) and (test_index.min() < allx.shape[0] or len(np.unique(test_index)) != len(test_index)):
        raise ValueError(f"{files['test.index']}: test ids must be distinct and at least {allx.shape[0]} "
                         "(the allx rows are nodes 0..len(allx)-1)")
    num_nodes = max(allx.shape[0], int(test_index.max()) + 1 if len(test_index) else 0)
    # nodes 0..len(allx)-1 are allx rows, node test_index[j] is tx row j; ids in between get a zero row
    rows = np.concatenate([np.arange(allx.shape[0]), test_index])
    placement = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, np.arange(len(rows)))),
                              shape=(num_nodes, len(rows)))
    features = (placement @ sp.vstack([allx, tx]).tocsr()).tocsr()  # [N, len(rows)] @ [len(rows), F] -> [N, F]
    labels = np.full(num_nodes, -1, dtype=np.int64)
    one_hot = np.concatenate([ally, ty])
    labelled = one_hot.max(axis=1) > 0
    labels[rows[labelled]] = one_hot[labelled].argmax(axis=1)
    return _edges(files["graph"], num_nodes), features, labels


def _csr(path: Path) -> sp.csr_matrix:
    value = load_pickle(path)
    if not isinstance(value, _PickledCSR):
        raise ValueError(f"{path}: expected a pickled scipy CSR matrix, got {type(value).__name__}")
    return value.to_csr(path)


def _one_hot(path: Path) -> np.ndarray:
    value = load_pickle(path)
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric one-hot label array [nodes, classes]")
    return value


def _test_index(path: Path) -> np.ndarray:
    try:
        return np.asarray([int(line) for line in path.read_text(encoding="utf-8").split()], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{path}: expected one integer node id per line ({e})") from None


def _edges(path: Path, num_nodes: int) -> np.ndarray:
    graph = load_pickle(path)
    if not isinstance(graph, dict):
        raise ValueError(f"{path}: expected a pickled dict of adjacency lists, got {type(graph).__name__}")
    try:
        pairs = [(int(u), int(v)) for u, neighbours in graph.items() for v in neighbours]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: adjacency lists must map integer node ids to lists of integer ids") from None
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(edges) and (edges.min() < 0 or edges.max() >= num_nodes):
        raise ValueError(f"{path}: node ids must lie in 0..{num_nodes - 1} (the feature rows); got "
                         f"{edges.min()}..{edges.max()}")
    return edges
