"""DP statistics of a table, on grids that come from the public schema.

The transforms need a little knowledge of the data that the schema cannot give: where a skewed
numeric column's mass lies (to place bins) and how often each target label occurs (to sample
labels). Both come from ONE Gaussian mechanism over histograms on public grids
(common/histogram_release.py): every row adds 1 to exactly one cell of each histogram, so the L2 sensitivity of the whole vector is sqrt(#histograms),
and noise of std `noise_multiplier * sqrt(#histograms)` makes it a Gaussian mechanism with noise
multiplier `noise_multiplier` (sample rate 1, one step) that the accountant composes with DP-SGD.

Noisy histograms from several sites add up (`TableStats.merge`): the federation builds its shared
transform from the sum, never from exact counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .grids import Grid, cell_counts, column_grid, numeric_edges
from .histogram_release import STATS_MECHANISM, release_histograms
from .privacy import GaussianMechanism
from .schema import CategoricalColumn, NumericColumn, Schema

# Integer columns with at most this many values get one cell per value; others a grid of cells.
MAX_EXACT_INTEGERS = 256
GRID_CELLS = 256
# A categorical feature with more categories than this (a code list of diagnoses, job titles)
# would widen every later column's model input by its one-hot; its rare categories are pooled
# into one token (common/transforms.py), chosen from its DP histogram. Adult's widest (native
# country, 41) stays below it: a table without such a column is released exactly as before.
POOLED_VOCABULARY = 100


def statistics_grid(col) -> Grid:
    """The statistics stage's cells of a column (common/grids.py): fine, for placing the
    transforms' bins; no `<other>` cell (the rows are validated) and a `<missing>` cell only for
    a nullable column."""
    return column_grid(col, GRID_CELLS, max_integer_cells=MAX_EXACT_INTEGERS, other=False,
                       missing=col.nullable)


def numeric_grid(col: NumericColumn) -> np.ndarray:
    """Cell edges over [lower, upper] (exclusive of point masses) of the statistics grid."""
    return numeric_edges(col, GRID_CELLS, MAX_EXACT_INTEGERS)


def histogram_columns(schema: Schema) -> list[str]:
    """Columns whose histograms are released: numerics (bin placement), the target, and the
    categoricals with more than POOLED_VOCABULARY categories (which of their categories are too
    rare to model alone). Which columns these are is read off the schema: public."""
    cols = [c.name for c in schema.columns if isinstance(c, NumericColumn)
            or (isinstance(c, CategoricalColumn) and c.name != schema.target
                and len(c.categories) > POOLED_VOCABULARY)]
    if schema.target is not None:
        cols.append(schema.target)
    return cols


def cell_labels(schema: Schema, name: str) -> list[str]:
    """Names of the histogram cells of a column, in order (for reports and merging checks)."""
    return statistics_grid(schema.column(name)).labels


def exact_counts(schema: Schema, name: str, values: pd.Series) -> np.ndarray:
    """Exact histogram of one column over its public cells. Private: only ever released noised."""
    col = schema.column(name)
    return cell_counts(col, values, statistics_grid(col))


@dataclass
class TableStats:
    """Noisy histograms per column (cells from `cell_labels`), plus how they were made."""

    schema_fingerprint: str
    histograms: dict[str, list[float]]
    mechanisms: list[GaussianMechanism] = field(default_factory=list)

    def counts(self, name: str) -> np.ndarray:
        return np.asarray(self.histograms[name], dtype=float)

    def noisy_rows(self) -> float:
        """A DP estimate of the number of rows (post-processing of the histograms). Every
        histogram counts every row once (a nullable column has a missing cell) and its cells
        carry equal, independent noise, so each total estimates the count with variance
        proportional to its number of cells: their inverse-variance weighted mean is several
        times tighter than any one total (Adult: sd about 30 rows, not 200, at the demo's
        noise)."""
        totals = np.array([float(np.sum(h)) for h in self.histograms.values()])
        weights = np.array([1.0 / max(len(h), 1) for h in self.histograms.values()])
        return max(float(np.sum(weights * totals) / np.sum(weights)), 1.0)

    @staticmethod
    def merge(parts: list["TableStats"]) -> "TableStats":
        fps = {p.schema_fingerprint for p in parts}
        if len(fps) != 1:
            raise ValueError(f"statistics computed under different schemas: {sorted(fps)}")
        names = parts[0].histograms.keys()
        return TableStats(
            schema_fingerprint=parts[0].schema_fingerprint,
            histograms={n: list(np.sum([p.counts(n) for p in parts], axis=0)) for n in names},
            mechanisms=[m for p in parts for m in p.mechanisms],
        )

    def scaled(self, factor: float) -> "TableStats":
        """Every count times `factor` (a site's share lowered before merging); the mechanisms
        are those charged: rescaling a release is post-processing."""
        return TableStats(self.schema_fingerprint,
                          {n: [float(v) * factor for v in self.counts(n)] for n in self.histograms},
                          list(self.mechanisms))

    def to_dict(self) -> dict:
        return {
            "schema_fingerprint": self.schema_fingerprint,
            "histograms": {k: [float(v) for v in vs] for k, vs in self.histograms.items()},
            "mechanisms": [m.to_dict() for m in self.mechanisms],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "TableStats":
        return cls(d["schema_fingerprint"], d["histograms"],
                   [GaussianMechanism.from_dict(m) for m in d.get("mechanisms", [])])


def collect_stats(schema: Schema, df: pd.DataFrame, noise_multiplier: float,
                  rng: np.random.Generator) -> TableStats:
    """Release all histograms of `histogram_columns` as one Gaussian mechanism (see module doc).
    The caller must charge `stats.mechanisms` to its ledger before the result leaves the site."""
    exact = {n: exact_counts(schema, n, df[n]) for n in histogram_columns(schema)}
    noisy, mech = release_histograms(exact, noise_multiplier, rng, STATS_MECHANISM)
    return TableStats(schema.fingerprint(), {n: list(c) for n, c in noisy.items()}, [mech])
