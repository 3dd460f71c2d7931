"""The channel order of a grouped pointwise conv: which input and output channels share a group.

A grouped 1x1 conv initialized from a dense weight W (out x in) keeps only W's block diagonal:
entry (o, i) survives when output channel o and input channel i fall in the same group. Which
entries survive depends on the order of the channels, so we choose it. The criterion is the
squared weight kept: ``kept = sum of W[o, i]**2 over same-group pairs``, as a share of the total
(the "kept energy"). Two orders:

* ``naive_order``: channels as they are, groups of consecutive channels (what building the grouped
  conv on the dense one's layout does, and what the seed's models train from scratch).
* ``energy_order``: a balanced co-clustering of the energy matrix E = W**2, by alternating exact
  assignments. Given the input channels' groups, each output channel's energy in each group is a
  row of E summed over that group's inputs; placing the output channels into groups of the fixed
  sizes so that the total is largest is a linear assignment (each group expanded into as many slots
  as it holds channels; `scipy.optimize.linear_sum_assignment`, exact). Then the same for the input
  channels given the output groups, and so on until the kept energy stops growing (each step can
  only increase it, so this ends). It is started twice and the better end is kept: from the naive
  groups (so the result is never below the naive order) and from scikit-learn's
  `SpectralCoclustering` (Dhillon 2001; seeded, deterministic) of E, whose unbalanced clusters the
  first assignment step balances (clusters named largest first, as the groups are sized). A weight that is a block diagonal under some hidden channel
  permutation is recovered exactly (kept energy 1): the spectral start finds the blocks, and the
  assignments keep them.

Everything here is plain numpy on small matrices (at most a few thousand channels a side).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers.grouped import split_sizes

ORDERS = ("energy", "naive")


@dataclass
class ChannelOrder:
    """Group labels of the output and input channels (group k holds out_sizes[k] / in_sizes[k] of them).

    `out_perm`/`in_perm` list the channels group by group (ascending within a group): position p of
    the grouped conv's input reads original input channel in_perm[p], and so on.
    """

    out_labels: np.ndarray
    in_labels: np.ndarray
    kept: float  # kept energy as a share of the total (1.0 for an all-zero weight)
    iterations: int = 0
    start: str = "naive"

    @property
    def out_perm(self) -> list[int]:
        return [int(i) for i in np.argsort(self.out_labels, kind="stable")]

    @property
    def in_perm(self) -> list[int]:
        return [int(i) for i in np.argsort(self.in_labels, kind="stable")]


def energy_matrix(weight) -> np.ndarray:
    """E = W**2 of a 1x1 conv weight (out, in, 1, 1) or a matrix (out, in), as float64 numpy."""
    w = weight.detach().cpu().double().numpy() if hasattr(weight, "detach") else np.asarray(weight, dtype=np.float64)
    w = w.reshape(w.shape[0], w.shape[1])
    return w * w


def _labels(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def kept_energy(energy: np.ndarray, out_labels: np.ndarray, in_labels: np.ndarray) -> float:
    """Share of the total of `energy` on same-group (output, input) pairs; 1.0 when the total is 0."""
    total = float(energy.sum())
    if total <= 0:
        return 1.0
    same = out_labels[:, None] == in_labels[None, :]
    return float(energy[same].sum()) / total


def naive_order(energy: np.ndarray, groups: int) -> ChannelOrder:
    """Consecutive channels per group, sizes as `split_sizes` (larger groups first)."""
    out_labels = _labels(split_sizes(energy.shape[0], groups))
    in_labels = _labels(split_sizes(energy.shape[1], groups))
    return ChannelOrder(out_labels, in_labels, kept_energy(energy, out_labels, in_labels), 0, "naive")


def _assign(scores: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Labels maximizing sum(scores[c, label[c]]) with exactly sizes[k] channels labelled k."""
    from scipy.optimize import linear_sum_assignment

    slots = _labels(sizes)
    rows, cols = linear_sum_assignment(scores[:, slots], maximize=True)
    labels = np.empty(scores.shape[0], dtype=np.int64)
    labels[rows] = slots[cols]
    return labels


def _spectral_in_labels(energy: np.ndarray, groups: int, seed: int) -> np.ndarray | None:
    """Input-channel clusters of scikit-learn's SpectralCoclustering of `energy` (None if it fails)."""
    try:
        from sklearn.cluster import SpectralCoclustering
    except ImportError:  # scikit-learn is a dependency, but the naive start alone is still correct
        return None
    if groups < 2 or min(energy.shape) <= groups:
        return None
    data = energy + 1e-9 * max(float(energy.mean()), 1e-30)  # no all-zero row or column (it divides by sums)
    try:
        model = SpectralCoclustering(n_clusters=groups, random_state=seed, n_init=10).fit(data)
    except (ValueError, np.linalg.LinAlgError, ArithmeticError):
        return None
    labels = np.asarray(model.column_labels_, dtype=np.int64)
    # Groups are sized larger first (split_sizes): name the clusters the same way, largest first, so that
    # with uneven sizes a cluster is not squeezed into a smaller group than it holds.
    counts = np.bincount(labels, minlength=groups)
    rank = np.empty(groups, dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(groups)
    return rank[labels]


def _alternate(energy: np.ndarray, in_labels: np.ndarray, out_sizes: list[int], in_sizes: list[int],
               max_iter: int, start: str) -> ChannelOrder:
    groups = len(out_sizes)
    best: ChannelOrder | None = None
    for it in range(1, max_iter + 1):
        onehot_in = np.eye(groups)[in_labels]  # (in, g); unbalanced on the spectral start's first step
        out_labels = _assign(energy @ onehot_in, out_sizes)
        in_labels = _assign(energy.T @ np.eye(groups)[out_labels], in_sizes)
        kept = kept_energy(energy, out_labels, in_labels)
        if best is not None and kept <= best.kept + 1e-12:
            break
        best = ChannelOrder(out_labels, in_labels, kept, it, start)
    assert best is not None
    return best


def energy_order(energy: np.ndarray, groups: int, max_iter: int = 20, seed: int = 0) -> ChannelOrder:
    """The balanced co-clustering of the module docstring: groups keeping the most of `energy`."""
    out_ch, in_ch = energy.shape
    if groups <= 1:
        return naive_order(energy, 1)
    out_sizes, in_sizes = split_sizes(out_ch, groups), split_sizes(in_ch, groups)
    naive = naive_order(energy, groups)
    results = [naive, _alternate(energy, naive.in_labels, out_sizes, in_sizes, max_iter, "naive")]
    spectral = _spectral_in_labels(energy, groups, seed)
    if spectral is not None:
        results.append(_alternate(energy, spectral, out_sizes, in_sizes, max_iter, "spectral"))
    return max(results, key=lambda r: r.kept)  # first of equals: the naive start wins ties


def channel_order(weight, groups: int, order: str = "energy", seed: int = 0) -> ChannelOrder:
    """The order named `order` ('energy' or 'naive') for a dense 1x1 weight split into `groups`."""
    energy = energy_matrix(weight)
    if order == "energy":
        return energy_order(energy, groups, seed=seed)
    if order == "naive":
        return naive_order(energy, groups)
    raise ValueError(f"unknown channel order {order!r}; known: {', '.join(ORDERS)}")
