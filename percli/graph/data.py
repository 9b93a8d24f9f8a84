"""Graphs for the graph autoencoders: loading (cora.npz layout, Planetoid files or an edge list) and GAE's edge split.

A graph is an undirected, unweighted, self-loop-free adjacency matrix plus node features (identity
features when none are given, as GAE's `--features 0`) and optional class labels for clustering
(-1 for a node without a class, as Citeseer's isolated test nodes).
The split follows GAE's `mask_test_edges`: 10% of the edges for test and 5% for validation, each
with as many sampled non-edges; training sees only the remaining 85%.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from percli.graph.planetoid import planetoid_prefix, read_planetoid

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Graph:
    """adjacency: symmetric binary CSR [N, N] without self-loops; features [N, F]; labels [N] or None."""

    name: str
    adjacency: sp.csr_matrix
    features: torch.Tensor
    labels: np.ndarray | None = None
    skipped_lines: int = 0  # malformed edge-list lines

    @property
    def num_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def num_edges(self) -> int:
        return int(self.adjacency.nnz // 2)


@dataclass
class EdgeSplit:
    """Node pairs [E, 2] (u < v) for training, validation and test; non-edges are never edges of the graph."""

    train_edges: np.ndarray
    val_edges: np.ndarray
    val_non_edges: np.ndarray
    test_edges: np.ndarray
    test_non_edges: np.ndarray

    def train_adjacency(self, num_nodes: int) -> sp.csr_matrix:
        """The symmetric adjacency of the training edges only (what the encoder and the walks see)."""
        return adjacency_from_edges(self.train_edges, num_nodes)


def adjacency_from_edges(edges: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """Symmetric binary CSR adjacency from pairs [E, 2]; duplicates merge and self-loops are dropped."""
    edges = edges[edges[:, 0] != edges[:, 1]]
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adj = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(num_nodes, num_nodes))
    adj.data[:] = 1.0  # duplicate pairs were summed
    return adj


def data_dir() -> Path:
    """$PERCLI_DATA_DIR, else ../shared/data next to the repo (or the working dir) where it exists."""
    if "PERCLI_DATA_DIR" in os.environ:
        return Path(os.environ["PERCLI_DATA_DIR"])
    candidates = [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def resolve_graph(spec: str) -> Path:
    """A dataset name or a path; FileNotFoundError says how to fix it.

    A name (cora) is <data dir>/cora/cora.npz, else the Planetoid files <data dir>/cora/ind.cora.*. A
    path is a .npz, an edge list, or Planetoid files (a folder holding them, their prefix dir/ind.cora,
    or one of them); Planetoid files resolve to their prefix.
    """
    path = Path(spec)
    if path.suffix or path.exists():
        prefix = planetoid_prefix(path)
        if prefix is not None:
            return prefix
        if not path.is_file():
            raise FileNotFoundError(f"--graph {spec}: no such file; pass cora, a .npz in the cora layout, Planetoid "
                                    "files (ind.<name>.*) or an edge-list text file with one 'u v' pair per line")
        return path
    folder = data_dir() / spec
    named = folder / f"{spec}.npz"
    if named.is_file():
        return named
    prefix = planetoid_prefix(folder / f"ind.{spec}")
    if prefix is None:
        raise FileNotFoundError(f"--graph {spec}: neither {named} nor {folder}/ind.{spec}.x exists; set "
                                f"PERCLI_DATA_DIR to the folder holding {spec}/{spec}.npz or {spec}/ind.{spec}.* "
                                "(see shared/data/cora/README.md) or pass a path")
    return prefix


def load_graph(path: Path, features: Path | None = None, labels: Path | None = None) -> Graph:
    """Load a .npz in the cora layout, Planetoid files (`path` = their prefix dir/ind.<name>) or an edge-list
    text file, with optional features (.npz) and labels replacing the graph's own."""
    graph_name = path.stem
    prefix = planetoid_prefix(path)
    if prefix is not None:
        edges, csr, node_labels = read_planetoid(prefix)
        x = torch.as_tensor(csr.toarray(), dtype=torch.float32)
        graph_name, skipped = prefix.name.removeprefix("ind."), 0
    elif path.suffix == ".npz":
        with _open_npz(path) as arrays:
            if "edge_index" not in arrays:
                raise ValueError(f"{path}: no 'edge_index' array; expected the cora.npz layout "
                                 "(edge_index [2, E], feat_* CSR arrays, labels)")
            edges = arrays["edge_index"].T.astype(np.int64)
            node_labels = arrays["labels"].astype(np.int64) if "labels" in arrays else None
            x = _features_from_arrays(arrays, path) if "feat_data" in arrays or "features" in arrays else None
        skipped = 0
    else:
        edges, skipped = read_edge_list(path)
        node_labels, x = None, None
    if features is not None:
        with _open_npz(features) as arrays:
            x = _features_from_arrays(arrays, features)
    if labels is not None:
        node_labels = read_labels(labels)
    sizes = [int(edges.max()) + 1 if len(edges) else 0]
    sizes += [len(a) for a in (x, node_labels) if a is not None]
    num_nodes = max(sizes)
    for name, a in (("features", x), ("labels", node_labels)):
        if a is not None and len(a) != num_nodes:
            raise ValueError(f"{name} have {len(a)} rows but the graph has {num_nodes} nodes (largest id + 1); "
                             "give one row per node id")
    if x is None:
        x = torch.eye(num_nodes)  # GAE without features: one-hot node identities
    adj = adjacency_from_edges(edges, num_nodes)
    if adj.nnz == 0:
        raise ValueError(f"{path}: the graph has no edges (besides self-loops)")
    return Graph(graph_name, adj, x, node_labels, skipped)


def read_edge_list(path: Path) -> tuple[np.ndarray, int]:
    """Pairs [E, 2] of non-negative integer node ids, one `u v` per line; '#' lines are comments.

    Returns the pairs and the number of malformed lines, which are skipped.
    """
    pairs, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                u, v = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                skipped += 1
                continue
            if u < 0 or v < 0:
                skipped += 1
                continue
            pairs.append((u, v))
    if not pairs:
        raise ValueError(f"{path}: no 'u v' edge lines with integer node ids ({skipped} malformed lines)")
    return np.asarray(pairs, dtype=np.int64), skipped


def read_labels(path: Path) -> np.ndarray:
    """One integer class per line, line i for node i."""
    values = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                values.append(int(line))
            except ValueError:
                raise ValueError(f"{path} line {number}: {line.strip()!r} is not an integer class; "
                                 "write one class id per line, line i for node i") from None
    return np.asarray(values, dtype=np.int64)


def _open_npz(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz archive ({e}); write it with numpy.savez") from None


def _features_from_arrays(arrays, path: Path) -> torch.Tensor:
    if "features" in arrays:
        return torch.as_tensor(arrays["features"], dtype=torch.float32)
    if "feat_data" not in arrays:
        raise ValueError(f"{path}: expected a dense 'features' array [N, F] or the CSR arrays feat_data, "
                         "feat_indices, feat_indptr, feat_shape")
    csr = sp.csr_matrix((arrays["feat_data"], arrays["feat_indices"], arrays["feat_indptr"]),
                        shape=tuple(arrays["feat_shape"]))
    return torch.as_tensor(csr.toarray(), dtype=torch.float32)


def split_edges(adjacency: sp.csr_matrix, rng: np.random.Generator, val_fraction: float = 0.05,
                test_fraction: float = 0.10) -> EdgeSplit:
    """GAE's split: shuffle the edges, hold out floor(E/10) test and floor(E/20) validation edges.

    Each held-out set gets as many non-edges, sampled uniformly among the pairs that are not edges
    of the full graph; validation and test non-edges are disjoint.
    """
    upper = sp.triu(adjacency, k=1).tocoo()
    edges = np.stack([upper.row, upper.col], axis=1).astype(np.int64)
    edges = edges[rng.permutation(len(edges))]
    num_test, num_val = int(np.floor(len(edges) * test_fraction)), int(np.floor(len(edges) * val_fraction))
    n = adjacency.shape[0]
    if num_val == 0:
        raise ValueError(f"{len(edges)} edges are too few to hold out 5% for validation and 10% for test; "
                         "the split needs at least 20 edges")
    if num_test + num_val > n * (n - 1) // 2 - len(edges):
        raise ValueError(f"the graph has too few non-edges to sample {num_test + num_val} negatives")
    non_edges = _sample_non_edges(edges, n, num_test + num_val, rng)
    return EdgeSplit(train_edges=edges[num_test + num_val:],
                     val_edges=edges[num_test:num_test + num_val], val_non_edges=non_edges[num_test:],
                     test_edges=edges[:num_test], test_non_edges=non_edges[:num_test])


def _sample_non_edges(edges: np.ndarray, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct pairs (u < v) that are not in `edges`, in random order."""
    taken = set((edges[:, 0] * n + edges[:, 1]).tolist())
    chosen: list[int] = []
    while len(chosen) < count:
        pairs = rng.integers(0, n, size=(2 * (count - len(chosen)) + 16, 2))
        for u, v in pairs[pairs[:, 0] != pairs[:, 1]].tolist():
            key = min(u, v) * n + max(u, v)
            if key not in taken:
                taken.add(key)
                chosen.append(key)
                if len(chosen) == count:
                    break
    keys = np.asarray(chosen, dtype=np.int64)
    return np.stack([keys // n, keys % n], axis=1)
