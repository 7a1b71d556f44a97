"""Public cells of a column: the grid that histograms are counted on.

The grid comes from the schema alone (categories, bounds, scale, point masses), never from the
rows, so a site can publish noisy counts on it and everyone can line them up without anything
private deciding where the cell edges are. Every value falls in at most one cell of its column
(that is what makes the histogram sensitivity 1 per column). Cells, in order:

- categorical: one cell per category, then `<other>` (a value outside the schema) if the grid has
  one, then `<missing>` if it has one;
- boolean: False, True, then `<missing>` if the grid has one;
- numeric: one cell per point mass (exact value), then `n_bins` bins over [lower, upper] (equal
  width, or equal width in log1p(x - lower) for `scale: log`; one cell per integer for integer
  ranges of at most `max_integer_cells` values), values outside the bounds clipped into the end
  bins, then `<missing>` if the grid has one.

Two grids are made this way, for two jobs:

- the statistics stage's (common/stats.py): fine (256 cells), for placing the transforms' bins;
  it counts validated rows only, so it has no `<other>` cell and a `<missing>` cell only for a
  nullable column. Its number of cells per column is what a site's statistics must have
  (coordinator/serverapp/statistics_stage.py), so it cannot change without every site changing
  with it.
- the evaluation's (common/evaluation/grids.py): coarse (20 bins), for plots and scores, with
  `<other>` and `<missing>` always, since synthetic rows (which may hold either) are counted on
  the same grid as real ones. Its labels travel in a site's evaluation histograms and show in the
  report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .schema import BooleanColumn, CategoricalColumn, NumericColumn

OTHER, MISSING = "<other>", "<missing>"


@dataclass(frozen=True)
class Grid:
    labels: list[str]          # one per cell
    edges: list[float] | None  # numeric columns: bin edges (len = number of bins + 1)
    n_point_masses: int = 0    # numeric: the first cells are the point masses
    other: bool = False        # categorical: the cell after the categories is `<other>`
    missing: bool = False      # the last cell is `<missing>`

    @property
    def size(self) -> int:
        return len(self.labels)


def column_labels(col) -> list:
    """The values of a categorical or boolean column, in the schema's order."""
    if isinstance(col, CategoricalColumn):
        return list(col.categories)
    if isinstance(col, BooleanColumn):
        return [False, True]
    raise TypeError(f"unsupported column {col!r}")


def category_codes(values: pd.Series, labels: list) -> np.ndarray:
    """Index of each value in `labels`; -1 for missing or unknown values."""
    index = pd.Index(labels)
    return index.get_indexer(values.to_numpy(dtype=object)).astype(int)


def integer_cells(col: NumericColumn, max_integer_cells: int) -> bool:
    """Whether an integer column gets one cell per value (a small enough range)."""
    return col.integer and col.upper - col.lower + 1 <= max_integer_cells


def numeric_edges(col: NumericColumn, n_bins: int, max_integer_cells: int) -> np.ndarray:
    """Cell edges over [lower, upper] (exclusive of point masses), from the schema alone."""
    lo, hi = float(col.lower), float(col.upper)
    if integer_cells(col, max_integer_cells):
        return np.arange(lo, hi + 2) - 0.5  # one cell per integer value
    if col.scale == "log":
        # log1p of the offset from `lower` handles bounds at or below zero (capital-gain: 0).
        edges = lo + np.expm1(np.linspace(0.0, np.log1p(hi - lo), n_bins + 1))
    else:
        edges = np.linspace(lo, hi, n_bins + 1)
    edges[0], edges[-1] = lo, hi
    return edges


def column_grid(col, n_bins: int, *, max_integer_cells: int, other: bool,
                missing: bool) -> Grid:
    """The cells of `col` (see the module's docstring for their order); `other` adds a
    categorical column's `<other>` cell, `missing` the `<missing>` cell of any column."""
    tail = [MISSING] if missing else []
    if isinstance(col, CategoricalColumn):
        return Grid(list(col.categories) + ([OTHER] if other else []) + tail, None,
                    other=other, missing=missing)
    if isinstance(col, BooleanColumn):
        return Grid(["False", "True"] + tail, None, missing=missing)
    if not isinstance(col, NumericColumn):
        raise TypeError(f"unsupported column {col!r}")
    edges = numeric_edges(col, n_bins, max_integer_cells)
    pm = [f"= {_fmt(p)}" for p in col.point_masses]
    if integer_cells(col, max_integer_cells):
        bins = [_fmt(lo + 0.5) for lo in edges[:-1]]
    else:
        bins = [f"{_fmt(lo)} to {_fmt(hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
    return Grid(pm + bins + tail, edges.tolist(), len(col.point_masses), missing=missing)


def cell_codes(col, values: pd.Series, grid: Grid) -> np.ndarray:
    """The cell index of every value on `grid` (made by `column_grid` for `col`); -1 for a value
    in no cell (missing, or outside a categorical column, on a grid without that cell)."""
    missing_code = grid.size - 1 if grid.missing else -1
    if isinstance(col, NumericColumn):
        x = pd.to_numeric(values, errors="coerce").to_numpy(float)
        edges = np.asarray(grid.edges)
        k = len(col.point_masses)
        codes = k + np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
        for i, p in enumerate(col.point_masses):
            codes[x == p] = i
        codes[np.isnan(x)] = missing_code
        return codes.astype(int)
    missing = values.isna().to_numpy()
    labels = column_labels(col)
    codes = category_codes(values, labels)
    if grid.other:
        codes[codes < 0] = len(labels)  # <other>
    codes[missing] = missing_code
    if isinstance(col, BooleanColumn):
        codes[codes < 0] = missing_code  # not a boolean: counted with the missing
    return codes


def cell_counts(col, values: pd.Series, grid: Grid) -> np.ndarray:
    """Exact cell counts of one column on `grid`. Private: only ever released noised."""
    codes = cell_codes(col, values, grid)
    return np.bincount(codes[codes >= 0], minlength=grid.size).astype(float)


def _fmt(v: float) -> str:
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"
