"""The one mechanism a site releases histograms of its rows with, and the check of such a release.

Each row adds 1 to exactly one cell of every histogram on a public grid (common/grids.py), so the
concatenated vector has L2 sensitivity sqrt(#histograms) under add/remove-one-row. Noise
N(0, s^2) with s = noise_multiplier * sqrt(#histograms) on every cell is therefore a Gaussian
mechanism with noise multiplier `noise_multiplier` (sample rate 1, one step) that the accountant
composes with DP-SGD. The CALLER charges it to the site's ledger BEFORE the result leaves the site.

Two releases use it: the statistics stage's histograms (common/stats.py:collect_stats) and the
evaluation's (common/evaluation/grids.py:dp_histograms). The coordinator checks every histogram a
site sends with `histogram_problem` (coordinator/serverapp/: statistics_stage.py,
evaluation_stage.py).
"""

from __future__ import annotations

import math

import numpy as np

from .privacy import GaussianMechanism

# The names the two releases are charged under (a site's ledger and the manifest show them).
STATS_MECHANISM = "preprocessing histograms"
EVALUATION_MECHANISM = "evaluation histograms"


def cell_noise_std(noise_multiplier: float, n_histograms: int) -> float:
    """The standard deviation of the noise on every cell of one release of `n_histograms`."""
    return noise_multiplier * math.sqrt(n_histograms)


def release_histograms(exact: dict[str, np.ndarray], noise_multiplier: float,
                       rng: np.random.Generator, name: str
                       ) -> tuple[dict[str, np.ndarray], GaussianMechanism]:
    """Every histogram of `exact` (one per column, each row counted once in each) with Gaussian
    noise on every cell, drawn in `exact`'s order, and the mechanism that ran, to be charged."""
    if not noise_multiplier > 0:
        raise ValueError("noise_multiplier must be > 0")
    std = cell_noise_std(noise_multiplier, len(exact))
    noisy = {n: np.asarray(c, dtype=float) + rng.normal(0.0, std, len(c)) for n, c in exact.items()}
    return noisy, GaussianMechanism(name, noise_multiplier, 1.0, 1)


def histogram_problem(counts: np.ndarray, expected_cells: int) -> str:
    """Why `counts` is not a histogram of a grid of `expected_cells` cells ('' if it is)."""
    if counts.shape != (expected_cells,) or not np.all(np.isfinite(counts)):
        return f"not {expected_cells} finite counts"
    return ""
