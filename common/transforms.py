"""Reversible transforms between a table and the generator's tokens, driven by the schema and DP
statistics only.

Every column becomes one categorical token per row, one codec per column kind (as RDT does with
one transformer per column):
- categorical / boolean: one token per category (plus one for missing when nullable);
- numeric: one token per declared point mass (capital-gain's 0 is decoded exactly), one per coarse
  bin, plus missing. Bins are quantiles of the DP histogram on the schema's public grid, and a
  sampled bin is decoded by drawing a fine grid cell with the DP histogram's weights and a value
  uniformly inside it (log-uniformly on a log grid). So a decoded column follows the column's
  shape at the grid's resolution, not a flat bin, and stays within the public bounds and types.
The generator sees the one-hot tokens (a TokenMatrix expands a batch at a time); the target
column is kept apart as the condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pandas as pd
import torch

from .histogram_release import cell_noise_std
from .schema import BooleanColumn, CategoricalColumn, NumericColumn, Schema
from .stats import TableStats, numeric_grid
from .token_matrix import TokenMatrix, token_dtype

DEFAULT_MAX_BINS = 20
POOL_FALSE_KEEP = 0.05


class _LabelCodec:
    """Categorical and boolean columns: a token per label, then one for missing if nullable.

    With `pooled` (labels whose DP count was too small to tell from the noise), those labels
    share one token after the others, decoded by drawing one of them uniformly: their noisy
    counts say nothing more. The model then sees one token for thousands of rare titles."""

    def __init__(self, name: str, labels: list, nullable: bool, pooled: frozenset = frozenset()):
        self.name = name
        self.nullable = nullable
        self.labels = [lab for lab in labels if lab not in pooled]
        self.pooled = [lab for lab in labels if lab in pooled]
        self._index = {lab: i for i, lab in enumerate(self.labels)}
        self._index.update({lab: len(self.labels) for lab in self.pooled})
        self.n_labels = len(self.labels) + bool(self.pooled)  # tokens before the missing one
        self.n_tokens = self.n_labels + int(nullable)

    def encode(self, values: pd.Series) -> np.ndarray:
        missing = values.isna().to_numpy()
        tokens = values.map(self._index).to_numpy()
        tokens = np.where(missing, self.n_labels, tokens)
        bad = pd.isna(tokens)
        if bad.any() or (missing.any() and not self.nullable):
            where = int(np.flatnonzero(bad | (missing & ~self.nullable))[0])
            raise ValueError(f"column {self.name!r}: value {values.iloc[where]!r} at row {where + 1} "
                             "is not in the schema (load and validate the table first)")
        return tokens.astype(np.int64)

    def decode(self, tokens: np.ndarray, rng: np.random.Generator) -> pd.Series:
        out = np.full(len(tokens), np.nan, dtype=object)
        own = tokens < len(self.labels)
        out[own] = np.asarray(self.labels, dtype=object)[tokens[own]]
        if self.pooled:
            pool = tokens == len(self.labels)
            out[pool] = np.asarray(self.pooled, dtype=object)[
                rng.integers(len(self.pooled), size=int(pool.sum()))]
        return pd.Series(out, name=self.name, dtype=object)


def rare_categories(col: CategoricalColumn, counts: np.ndarray, noise_std: float) -> frozenset:
    """The categories whose DP count is below a threshold that noise alone passes for an empty
    category with chance POOL_FALSE_KEEP / (number of categories), so that over the whole list
    some empty category keeps a token with chance at most POOL_FALSE_KEEP (2,000 categories at
    the noise's sd s: 4.1 s). Those are too few rows for DP-SGD to learn a token from anyway.
    Post-processing of the released histogram: no further privacy cost."""
    k = len(col.categories)
    threshold = max(NormalDist().inv_cdf(1 - POOL_FALSE_KEEP / k) * noise_std, 1.0)
    return frozenset(c for c, n in zip(col.categories, counts[:k]) if n < threshold)


class _NumericCodec:
    """Numeric columns: point masses, DP-quantile bins decoded along the DP histogram, missing."""

    def __init__(self, col: NumericColumn, fine_counts: np.ndarray | None, max_bins: int,
                 noise_std: float):
        self.col = col
        self.name = col.name
        self.edges = numeric_grid(col)
        n_cells = len(self.edges) - 1
        self.lows, self.highs = self.edges[:-1].copy(), self.edges[1:].copy()
        if col.integer:
            # Decode integer columns to the integers inside each cell, so a decoded value stays in
            # its cell (and bin); cells holding no integer can never be decoded.
            self.lows = np.ceil(self.lows)
            self.highs = np.ceil(self.highs)
            self.highs[-1] = np.floor(col.upper) + 1
        decodable = self.highs > self.lows
        if fine_counts is None:
            weights = np.ones(n_cells)
        else:
            # Soft-threshold by one noise std: noise alone would otherwise put mass in every empty
            # cell. Post-processing of the DP histogram, so it costs no privacy.
            weights = np.clip(fine_counts - noise_std, 0, None)
            if weights.sum() <= 0:
                weights = np.ones(n_cells)
        weights = weights + 1e-9 * weights.sum()  # every (decodable) cell keeps some weight
        self.weights = np.where(decodable, weights, 0.0)
        cdf = np.cumsum(self.weights) / self.weights.sum()
        k = min(max_bins, n_cells)
        cuts = np.searchsorted(cdf, np.arange(1, k) / k, side="left") + 1
        starts = np.unique(np.concatenate([[0], cuts[cuts < n_cells]]))
        self.bin_starts = starts
        self.bin_ends = np.append(starts[1:], n_cells)
        self.cell_to_bin = np.repeat(np.arange(len(starts)), self.bin_ends - starts)
        self.n_masses = len(col.point_masses)
        self.n_bins = len(starts)
        self.n_tokens = self.n_masses + self.n_bins + int(col.nullable)

    def encode(self, values: pd.Series) -> np.ndarray:
        x = values.to_numpy(dtype=float)
        missing = np.isnan(x)
        if missing.any() and not self.col.nullable:
            raise ValueError(f"column {self.name!r}: missing value at row "
                             f"{int(np.flatnonzero(missing)[0]) + 1} but the schema forbids it")
        cells = np.clip(np.searchsorted(self.edges, np.nan_to_num(x), side="right") - 1,
                        0, len(self.edges) - 2)
        tokens = self.n_masses + self.cell_to_bin[cells]
        for i, p in enumerate(self.col.point_masses):
            tokens = np.where(x == p, i, tokens)
        return np.where(missing, self.n_tokens - 1, tokens).astype(np.int64)

    def decode(self, tokens: np.ndarray, rng: np.random.Generator) -> pd.Series:
        col = self.col
        out = np.full(len(tokens), np.nan)
        for i, p in enumerate(col.point_masses):
            out[tokens == i] = p
        bins = tokens - self.n_masses
        rows = np.flatnonzero((bins >= 0) & (bins < self.n_bins))
        b = bins[rows]
        # A cell of the row's bin in proportion to the cells' weights: one inverse-CDF draw over
        # the cumulative weights of all cells, inside the bin's stretch of them.
        cum = np.concatenate([[0.0], np.cumsum(self.weights)])
        below, above = cum[self.bin_starts[b]], cum[self.bin_ends[b]]
        cells = np.searchsorted(cum, below + rng.random(len(rows)) * (above - below),
                                side="right") - 1
        cells = np.clip(cells, self.bin_starts[b], self.bin_ends[b] - 1)
        lo, hi = self.lows[cells], self.highs[cells]
        u = rng.random(len(rows))
        if col.scale == "log":
            a, c = np.log1p(lo - col.lower), np.log1p(hi - col.lower)
            values = col.lower + np.expm1(a + u * (c - a))
        else:
            values = lo + u * (hi - lo)
        if col.integer:
            values = np.minimum(np.floor(values), hi - 1)
        out[rows] = values
        out = np.where(np.isnan(out), np.nan, np.clip(out, col.lower, col.upper))
        return pd.Series(out, name=self.name, dtype=float)


@dataclass(frozen=True)
class Block:
    """Where one column's one-hot tokens sit in the encoded row."""

    name: str
    start: int
    size: int


class TableTransformer:
    """Schema + DP statistics -> codecs. `encode` gives [features one-hot | target one-hot]."""

    def __init__(self, schema: Schema, stats: TableStats | None, max_bins: int = DEFAULT_MAX_BINS):
        if stats is not None and stats.schema_fingerprint != schema.fingerprint():
            raise ValueError("statistics were computed under a different schema")
        self.schema = schema
        self.stats = stats
        noise_std = 0.0
        if stats is not None and stats.mechanisms:
            sigma = cell_noise_std(stats.mechanisms[0].noise_multiplier, len(stats.histograms))
            # Merged stats from k sites add k independent noises.
            noise_std = sigma * np.sqrt(len(stats.mechanisms))
        self.codecs: dict[str, _LabelCodec | _NumericCodec] = {}
        for col in schema.columns:
            if isinstance(col, NumericColumn):
                fine = None
                if stats is not None and col.name in stats.histograms:
                    fine = stats.counts(col.name)[len(col.point_masses):][:len(numeric_grid(col)) - 1]
                self.codecs[col.name] = _NumericCodec(col, fine, max_bins, noise_std)
            elif isinstance(col, CategoricalColumn):
                pooled = frozenset()
                if col.name != schema.target and stats is not None and col.name in stats.histograms:
                    pooled = rare_categories(col, stats.counts(col.name), noise_std)
                self.codecs[col.name] = _LabelCodec(col.name, col.categories, col.nullable, pooled)
            else:
                assert isinstance(col, BooleanColumn)
                self.codecs[col.name] = _LabelCodec(col.name, [False, True], col.nullable)
        self.feature_names = [n for n in schema.names if n != schema.target]
        self.blocks: list[Block] = []
        start = 0
        for n in self.feature_names:
            self.blocks.append(Block(n, start, self.codecs[n].n_tokens))
            start += self.codecs[n].n_tokens
        self.feature_dim = start
        self.target_dim = self.codecs[schema.target].n_tokens if schema.target else 0

    # -- the target ---------------------------------------------------------------------------
    def target_prior(self) -> np.ndarray:
        """The target's label distribution from the DP histogram (uniform without stats)."""
        if not self.target_dim:
            return np.ones(0)
        if self.stats is None or self.schema.target not in self.stats.histograms:
            return np.full(self.target_dim, 1 / self.target_dim)
        counts = np.clip(self.stats.counts(self.schema.target), 0, None) + 1.0
        return counts / counts.sum()

    def target_token(self, label) -> int:
        codec = self.codecs[self.schema.target]
        labels = [str(x) for x in codec.labels]
        col = self.schema.column(self.schema.target)
        if isinstance(col, BooleanColumn) and col.spelled and str(label) in (col.false, col.true):
            return (col.false, col.true).index(str(label))  # as the table spells it
        if str(label) not in labels:
            raise ValueError(f"condition {self.schema.target}={label!r}: expected one of {labels}")
        return labels.index(str(label))

    # -- rows <-> tensors ---------------------------------------------------------------------
    def encode(self, df: pd.DataFrame) -> TokenMatrix:
        """Validated rows as one token per column ([features | target]), read as one-hots."""
        return self.rows(self.tokens(df))

    def tokens(self, df: pd.DataFrame) -> np.ndarray:
        """Validated rows as token indices, n x (features + target): what a site caches."""
        names = self.feature_names + ([self.schema.target] if self.target_dim else [])
        widest = max((self.codecs[n].n_tokens for n in names), default=1)
        out = np.empty((len(df), len(names)), dtype=token_dtype(widest))
        for j, n in enumerate(names):
            out[:, j] = self.codecs[n].encode(df[n])
        return out

    def rows(self, tokens: np.ndarray | torch.Tensor) -> TokenMatrix:
        """Token indices from `tokens` in the families' one-hot layout."""
        starts = [b.start for b in self.blocks] + ([self.feature_dim] if self.target_dim else [])
        return TokenMatrix(tokens, starts, self.feature_dim + self.target_dim)

    def decode(self, feature_tokens: np.ndarray, target_tokens: np.ndarray | None,
               rng: np.random.Generator) -> pd.DataFrame:
        """Token indices (n x features, and n targets) -> a frame in the schema's order and types."""
        cols = {b.name: self.codecs[b.name].decode(feature_tokens[:, i], rng)
                for i, b in enumerate(self.blocks)}
        if self.target_dim:
            cols[self.schema.target] = self.codecs[self.schema.target].decode(target_tokens, rng)
        # copy=False: no consolidation of the object columns into one block (3 s of 4.7 at 1M rows).
        return pd.DataFrame({n: cols[n] for n in self.schema.names}, copy=False)
