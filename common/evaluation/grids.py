"""The evaluation's public cells of every column, and exact and DP histograms on them.

The grid is made by common/grids.py from the schema alone, so a site can publish noisy counts on
it and everyone can line them up without anything private deciding where the cell edges are. The
evaluation's grid is coarse (`n_bins` bins, one cell per integer for integer ranges of at most
`MAX_INTEGER_CELLS` values) and always has `<other>` (categorical) and `<missing>` cells, since
synthetic rows, which may hold either, are counted on it as real rows are:

- categorical: one cell per category, then `<other>` (a value outside the schema), `<missing>`;
- boolean: False, True, `<missing>`;
- numeric: one cell per point mass (exact value), then `n_bins` bins over [lower, upper]
  (equal width, or equal width in log1p(x - lower) for `scale: log`; one cell per integer for small
  integer ranges), values outside the bounds clipped into the end bins, then `<missing>`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import grids as public_grids
from ..grids import Grid
from ..histogram_release import EVALUATION_MECHANISM, cell_noise_std, release_histograms

MAX_INTEGER_CELLS = 32


def column_grid(col, n_bins: int = 20) -> Grid:
    return public_grids.column_grid(col, n_bins, max_integer_cells=MAX_INTEGER_CELLS,
                                    other=True, missing=True)


def column_codes(col, values: pd.Series, n_bins: int = 10) -> np.ndarray:
    """The cell index of every value (see `column_grid` for the cell order)."""
    return public_grids.cell_codes(col, values, column_grid(col, n_bins))


def counts(col, values: pd.Series, n_bins: int = 20) -> np.ndarray:
    """Exact cell counts of one column on its public grid."""
    return public_grids.cell_counts(col, values, column_grid(col, n_bins))


HISTOGRAM_BINS = 20


def exact_histograms(schema, df: pd.DataFrame, *, n_bins: int = HISTOGRAM_BINS) -> dict:
    """Exact counts of every column on its grid: for synthetic (public) rows, or for a report
    that stays where the real rows are."""
    return {col.name: {"kind": col.kind, "labels": column_grid(col, n_bins).labels,
                       "edges": column_grid(col, n_bins).edges,
                       "counts": counts(col, df[col.name], n_bins).tolist()}
            for col in schema.columns}


def dp_histograms(schema, df: pd.DataFrame, noise_multiplier: float, rng: np.random.Generator,
                  *, n_bins: int = HISTOGRAM_BINS, name: str = EVALUATION_MECHANISM) -> dict:
    """Gaussian-noised counts of every column on its grid: what a site may publish of its rows.

    Each row adds 1 to exactly one cell of every column's histogram, so the concatenated vector
    has L2 sensitivity sqrt(#columns) under add/remove-one-row. Noise N(0, s^2) with
    s = noise_multiplier * sqrt(#columns) on every cell is therefore a Gaussian mechanism with
    noise multiplier `noise_multiplier` (common/histogram_release.py); the CALLER charges it to the site's ledger as ONE
    `GaussianMechanism(name, noise_multiplier, sample_rate=1.0, steps=1)` (the returned
    `mechanism` dict has exactly those fields) BEFORE the result leaves the site."""
    exact = {col.name: counts(col, df[col.name], n_bins) for col in schema.columns}
    noisy, mechanism = release_histograms(exact, noise_multiplier, rng, name)
    columns = {}
    for col in schema.columns:
        grid = column_grid(col, n_bins)
        columns[col.name] = {"kind": col.kind, "labels": grid.labels, "edges": grid.edges,
                             "counts": noisy[col.name].round(3).tolist()}
    return {"mechanism": {**mechanism.to_dict(), "noise_multiplier": float(noise_multiplier)},
            "noise_std": cell_noise_std(noise_multiplier, len(exact)),
            "l2_sensitivity": math.sqrt(len(schema.columns)), "n_bins": n_bins,
            "columns": columns}
