"""Write a stochastic block model graph in the cora.npz layout: a large graph for the sparse GAE loss.

    python examples/graph/make_sbm.py sbm20k.npz --nodes 20000 --blocks 10
    percli pretrain rwr-gae --graph sbm20k.npz --model gae --seeds 1 loss.reconstruction=sparse

Blocks of equal size; each node has on average `--degree-in` neighbours in its block and `--degree-out`
outside it. Features are sparse binary "words": each block favours its own slice of the vocabulary.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp


def sbm_edges(labels: np.ndarray, degree_in: float, degree_out: float, rng: np.random.Generator) -> np.ndarray:
    """Pairs [E, 2] (u < v; duplicates possible, the reader merges them)."""
    n, blocks = len(labels), labels.max() + 1
    members = [np.flatnonzero(labels == b) for b in range(blocks)]
    within = [np.stack([rng.choice(m, size=int(len(m) * degree_in / 2)) for _ in range(2)], 1) for m in members]
    across = rng.integers(0, n, size=(int(n * degree_out / 2), 2))
    across = across[labels[across[:, 0]] != labels[across[:, 1]]]
    pairs = np.concatenate(within + [across])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.sort(pairs, axis=1)


def block_features(labels: np.ndarray, vocabulary: int, words: int, signal: float,
                   rng: np.random.Generator) -> sp.csr_matrix:
    """Binary [N, vocabulary]: `words` per node, a `signal` share of them from its block's slice."""
    n, blocks = len(labels), labels.max() + 1
    slice_size = vocabulary // blocks
    own = labels[:, None] * slice_size + rng.integers(0, slice_size, size=(n, words))
    noise = rng.integers(0, vocabulary, size=(n, words))
    cols = np.where(rng.random((n, words)) < signal, own, noise)
    x = sp.csr_matrix((np.ones(n * words, dtype=np.float32), (np.repeat(np.arange(n), words), cols.ravel())),
                      shape=(n, vocabulary))
    x.data[:] = 1.0
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--degree-in", type=float, default=8.0)
    parser.add_argument("--degree-out", type=float, default=2.0)
    parser.add_argument("--vocabulary", type=int, default=500)
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--signal", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    labels = rng.permutation(np.arange(args.nodes) % args.blocks)
    edges = sbm_edges(labels, args.degree_in, args.degree_out, rng)
    x = block_features(labels, args.vocabulary, args.words, args.signal, rng)
    np.savez(args.output, edge_index=edges.T.astype(np.int64), labels=labels.astype(np.int64), feat_data=x.data,
             feat_indices=x.indices, feat_indptr=x.indptr, feat_shape=np.array(x.shape))
    print(f"{args.output}: {args.nodes} nodes, {len(edges)} edge draws, {x.shape[1]} features, {args.blocks} blocks")


if __name__ == "__main__":
    main()
