"""Nearest-neighbour distances and local density estimates in the evaluation encoding.

Both privacy attacks and the distance-to-closest-record numbers reduce to "how far is this row from
the rows of that set", so they share one small wrapper over sklearn's NearestNeighbors (Euclidean,
brute force: the encoding is ~100 columns wide, where trees do not help).

`log_density` is a Gaussian kernel density estimate truncated to the k nearest rows: the kernels of
farther rows are negligible at the bandwidths used here, and truncation turns an O(n*m) sum into
a k-NN query.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.neighbors import NearestNeighbors


class Index:
    """The rows of one set, ready for k-nearest-neighbour distance queries."""

    def __init__(self, x: np.ndarray, n_jobs: int = 2):
        self.n = len(x)
        self._nn = NearestNeighbors(algorithm="brute", metric="euclidean", n_jobs=n_jobs).fit(x)

    def distances(self, queries: np.ndarray, k: int = 1) -> np.ndarray:
        """(len(queries), k) distances to the k nearest rows, nearest first."""
        d, _ = self._nn.kneighbors(queries, n_neighbors=min(k, self.n))
        return d

    def log_density(self, queries: np.ndarray, bandwidth: float, k: int = 20) -> np.ndarray:
        return log_density_from_distances(self.distances(queries, k), bandwidth, self.n)


def log_density_from_distances(d: np.ndarray, bandwidth: float, n: int) -> np.ndarray:
    """log of (1/n) * sum_j exp(-d_j^2 / 2h^2), over the given neighbour distances (the Gaussian
    kernel's normalising constant is left out: it cancels in every ratio we take)."""
    return logsumexp(-(d ** 2) / (2 * bandwidth ** 2), axis=1) - np.log(n)
