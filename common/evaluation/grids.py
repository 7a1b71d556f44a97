"""Public cells for every column: the grid that histograms, plots and association use.

The grid comes from the schema alone (categories, bounds, scale, point masses), never from the
rows, so a site can publish noisy counts on it and everyone can line them up without anything
private deciding where the cell edges are. Every value falls in exactly one cell of its column
(that is what makes the histogram sensitivity 1 per column):

- categorical: one cell per category, then `<other>` (a value outside the schema), `<missing>`;
- boolean: False, True, `<missing>`;
- numeric: one cell per point mass (exact value), then `n_bins` bins over [lower, upper]
  (equal width, or equal width in log1p(x - lower) for `scale: log`; one cell per integer for small
  integer ranges), values outside the bounds clipped into the end bins, then `<missing>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..schema import BooleanColumn, CategoricalColumn, NumericColumn
from .encoding import category_codes

MAX_INTEGER_CELLS = 32
OTHER, MISSING = "<other>", "<missing>"


@dataclass(frozen=True)
class Grid:
    labels: list[str]        # one per cell
    edges: list[float] | None  # numeric columns: bin edges (len = number of bins + 1)
    n_point_masses: int = 0  # numeric: the first cells are the point masses

    @property
    def size(self) -> int:
        return len(self.labels)


def column_grid(col, n_bins: int = 20) -> Grid:
    if isinstance(col, CategoricalColumn):
        return Grid(list(col.categories) + [OTHER, MISSING], None)
    if isinstance(col, BooleanColumn):
        return Grid(["False", "True", MISSING], None)
    if not isinstance(col, NumericColumn):
        raise TypeError(f"unsupported column {col!r}")
    edges = numeric_edges(col, n_bins)
    pm = [f"= {_fmt(p)}" for p in col.point_masses]
    if _integer_cells(col):
        bins = [_fmt(lo + 0.5) for lo in edges[:-1]]
    else:
        bins = [f"{_fmt(lo)} to {_fmt(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    return Grid(pm + bins + [MISSING], edges.tolist(), len(col.point_masses))


def numeric_edges(col: NumericColumn, n_bins: int) -> np.ndarray:
    lo, hi = float(col.lower), float(col.upper)
    if _integer_cells(col):
        return np.arange(lo, hi + 2) - 0.5
    if col.scale == "log":
        edges = lo + np.expm1(np.linspace(0.0, np.log1p(hi - lo), n_bins + 1))
    else:
        edges = np.linspace(lo, hi, n_bins + 1)
    edges[0], edges[-1] = lo, hi
    return edges


def _integer_cells(col: NumericColumn) -> bool:
    return col.integer and col.upper - col.lower + 1 <= MAX_INTEGER_CELLS


def column_codes(col, values: pd.Series, n_bins: int = 10) -> np.ndarray:
    """The cell index of every value (see `column_grid` for the cell order)."""
    grid_size = column_grid(col, n_bins).size
    missing = values.isna().to_numpy()
    if isinstance(col, NumericColumn):
        x = pd.to_numeric(values, errors="coerce").to_numpy(float)
        missing = np.isnan(x)
        edges = numeric_edges(col, n_bins)
        k = len(col.point_masses)
        codes = k + np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        for i, p in enumerate(col.point_masses):
            codes[x == p] = i
        codes[missing] = grid_size - 1
        return codes.astype(int)
    labels = list(col.categories) if isinstance(col, CategoricalColumn) else [False, True]
    codes = category_codes(values, labels)
    if isinstance(col, CategoricalColumn):
        codes[codes < 0] = len(labels)  # <other>
    codes[missing] = grid_size - 1
    if isinstance(col, BooleanColumn):
        codes[codes < 0] = grid_size - 1  # not a boolean: counted with the missing
    return codes


def counts(col, values: pd.Series, n_bins: int = 20) -> np.ndarray:
    """Exact cell counts of one column on its public grid."""
    grid = column_grid(col, n_bins)
    return np.bincount(column_codes(col, values, n_bins), minlength=grid.size).astype(float)


HISTOGRAM_BINS = 20


def exact_histograms(schema, df: pd.DataFrame, *, n_bins: int = HISTOGRAM_BINS) -> dict:
    """Exact counts of every column on its grid: for synthetic (public) rows, or for a report
    that stays where the real rows are."""
    return {col.name: {"kind": col.kind, "labels": column_grid(col, n_bins).labels,
                       "edges": column_grid(col, n_bins).edges,
                       "counts": counts(col, df[col.name], n_bins).tolist()}
            for col in schema.columns}


def dp_histograms(schema, df: pd.DataFrame, noise_multiplier: float, rng: np.random.Generator,
                  *, n_bins: int = HISTOGRAM_BINS, name: str = "evaluation histograms") -> dict:
    """Gaussian-noised counts of every column on its grid: what a site may publish of its rows.

    Each row adds 1 to exactly one cell of every column's histogram, so the concatenated vector
    has L2 sensitivity sqrt(#columns) under add/remove-one-row. Noise N(0, s^2) with
    s = noise_multiplier * sqrt(#columns) on every cell is therefore a Gaussian mechanism with
    noise multiplier `noise_multiplier`; the CALLER charges it to the site's ledger as ONE
    `GaussianMechanism(name, noise_multiplier, sample_rate=1.0, steps=1)` (the returned
    `mechanism` dict has exactly those fields) BEFORE the result leaves the site."""
    if not noise_multiplier > 0:
        raise ValueError("noise_multiplier must be > 0")
    std = noise_multiplier * math.sqrt(len(schema.columns))
    columns = {}
    for col in schema.columns:
        grid = column_grid(col, n_bins)
        noisy = counts(col, df[col.name], n_bins) + rng.normal(0.0, std, grid.size)
        columns[col.name] = {"kind": col.kind, "labels": grid.labels, "edges": grid.edges,
                             "counts": noisy.round(3).tolist()}
    return {"mechanism": {"name": name, "noise_multiplier": float(noise_multiplier),
                          "sample_rate": 1.0, "steps": 1},
            "noise_std": std, "l2_sensitivity": math.sqrt(len(schema.columns)), "n_bins": n_bins,
            "columns": columns}


def _fmt(v: float) -> str:
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"
