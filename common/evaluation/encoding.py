"""Schema-driven numeric encoding of rows, for the evaluation's classifiers and distances.

Why its own encoder (and not the generator's transform): evaluation must treat real and synthetic
rows identically and must not learn anything from either of them, so every parameter comes from the
PUBLIC schema: category lists, bounds [lower, upper] and the scale. Fitting a scaler on the real
rows would make distances depend on private statistics and differ between sites.

Layout per column:
- categorical: one-hot over the schema's categories, plus a `<missing>` slot; a value outside the
  schema encodes as all zeros (the loader rejects those in real data, a generator may emit them).
- boolean: one-hot over (False, True) plus `<missing>`.
- numeric: one value in [0, 1] = (x - lower) / (upper - lower), or for `scale: log`
  log1p(x - lower) / log1p(upper - lower) (log1p of the offset handles bounds at or below zero),
  clipped to [0, 1]; plus a missing indicator (the value is then 0).
So two rows differing in one category are sqrt(2) apart, and a numeric column contributes at most 1:
every column weighs about the same in a Euclidean distance.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..grids import category_codes, column_labels
from ..schema import NumericColumn, Schema


class Encoder:
    """Encode a DataFrame with `schema.names` columns (or a subset) to a float matrix."""

    def __init__(self, schema: Schema, columns: list[str] | None = None):
        self.schema = schema
        self.columns = list(columns) if columns is not None else list(schema.names)
        names: list[str] = []
        for name in self.columns:
            col = schema.column(name)
            if isinstance(col, NumericColumn):
                names += [name, f"{name}=<missing>"]
            else:
                names += [f"{name}={lab}" for lab in column_labels(col)] + [f"{name}=<missing>"]
        self.feature_names = names

    @property
    def width(self) -> int:
        return len(self.feature_names)

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        blocks = [self._column(self.schema.column(n), df[n]) for n in self.columns]
        return np.hstack(blocks) if blocks else np.zeros((len(df), 0))

    # -- one column ---------------------------------------------------------------------------
    @staticmethod
    def _column(col, values: pd.Series) -> np.ndarray:
        if isinstance(col, NumericColumn):
            return np.column_stack(scale_numeric(col, values))
        labels = column_labels(col)
        out = np.zeros((len(values), len(labels) + 1))
        missing = values.isna().to_numpy()
        codes = category_codes(values, labels)
        codes[missing] = len(labels)
        known = codes >= 0
        out[np.flatnonzero(known), codes[known]] = 1.0
        return out


def scale_numeric(col: NumericColumn, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(value scaled to [0, 1] by the public bounds, missing indicator)."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    missing = np.isnan(x)
    if col.scale == "log":
        z = np.log1p(np.clip(x - col.lower, 0, None)) / np.log1p(col.upper - col.lower)
    else:
        z = (x - col.lower) / (col.upper - col.lower)
    z = np.clip(np.where(missing, 0.0, z), 0.0, 1.0)
    return z, missing.astype(float)


