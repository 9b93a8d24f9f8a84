"""Planetoid files (ind.<name>.*): node order, Citeseer's missing test rows, the restricted unpickler, the CLI."""

from __future__ import annotations

import collections
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from percli.cli import app
from percli.graph.data import load_graph, resolve_graph
from percli.graph.planetoid import load_pickle, read_planetoid


def write_planetoid(folder: Path, name: str, test_ids: list[int], num_allx: int = 4, classes: int = 3) -> dict:
    """Tiny Planetoid files as GCN ships them (pickle protocol 2); node i's feature row is [i, 1] and its class
    i % classes, so the reader's placement can be checked. Returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    feature_of = lambda ids: sp.csr_matrix(np.array([[i, 1.0] for i in ids], dtype=np.float32))  # noqa: E731
    one_hot = lambda ids: np.eye(classes, dtype=np.int32)[[i % classes for i in ids]]  # noqa: E731
    num_nodes = max(test_ids) + 1
    graph = collections.defaultdict(list)
    for u in range(num_nodes - 1):  # a path 0-1-2-..., listed both ways as in the official files
        graph[u].append(u + 1)
        graph[u + 1].append(u)
    parts = {"x": feature_of(range(2)), "y": one_hot(range(2)), "allx": feature_of(range(num_allx)),
             "ally": one_hot(range(num_allx)), "tx": feature_of(test_ids), "ty": one_hot(test_ids), "graph": graph}
    for part, value in parts.items():
        (folder / f"ind.{name}.{part}").write_bytes(pickle.dumps(value, protocol=2))
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_ids))
    return parts


def test_test_rows_are_placed_by_test_index(tmp_path):
    write_planetoid(tmp_path, "toy", test_ids=[6, 4, 5])  # tx rows in file order name nodes 6, 4, 5
    edges, features, labels = read_planetoid(tmp_path / "ind.toy")
    assert features.shape == (7, 2)
    assert features.toarray()[:, 0].tolist() == list(range(7))  # every node got its own row, not the file's order
    assert labels.tolist() == [i % 3 for i in range(7)]
    assert sorted(map(tuple, edges.tolist())) == sorted([(u, u + 1) for u in range(6)] + [(u + 1, u) for u in range(6)])


def test_missing_test_ids_get_zero_rows_and_no_label(tmp_path):
    write_planetoid(tmp_path, "citeseer", test_ids=[7, 4, 6])  # 5 is in the test range but has no tx row
    graph = load_graph(resolve_graph(str(tmp_path)))
    assert graph.name == "citeseer" and graph.num_nodes == 8 and graph.num_edges == 7
    assert graph.features[5].tolist() == [0.0, 0.0]
    assert graph.features[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 6, 7]
    assert graph.labels.tolist() == [0, 1, 2, 0, 1, -1, 0, 1]


@pytest.mark.parametrize("spec", ["{tmp}", "{tmp}/ind.toy", "{tmp}/ind.toy.graph", "{tmp}/ind.toy.test.index", "toy"])
def test_every_way_of_naming_the_files_resolves_to_the_prefix(tmp_path, monkeypatch, spec):
    write_planetoid(tmp_path / "toy", "toy", test_ids=[4, 5])
    monkeypatch.setenv("PERCLI_DATA_DIR", str(tmp_path))
    assert resolve_graph(spec.format(tmp=tmp_path / "toy")) == tmp_path / "toy" / "ind.toy"


class _RunsCommand:
    def __reduce__(self):
        return (__import__("os").system, ("touch pwned",))


def test_a_pickle_naming_another_global_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    write_planetoid(tmp_path, "toy", test_ids=[4, 5])
    (tmp_path / "ind.toy.graph").write_bytes(pickle.dumps(_RunsCommand(), protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"ind\.toy\.graph: refusing to load the global (posix|os)\.system"):
        read_planetoid(tmp_path / "ind.toy")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "ind.toy.x").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"ind\.toy\.x: not a readable Planetoid pickle"):
        load_pickle(tmp_path / "ind.toy.x")


def test_cli_trains_on_planetoid_files(tmp_path):
    write_planetoid(tmp_path / "toy", "toy", test_ids=list(range(20, 40)), num_allx=20)
    result = CliRunner().invoke(app, ["pretrain", "rwr-gae", "--graph", str(tmp_path / "toy"), "--model", "gae",
                                      "--seeds", "1", "--epochs", "3", "--run-dir", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["graphs"]["toy"]["nodes"] == 40 and summary["graphs"]["toy"]["edges"] == 39
