"""Reading a table file for evaluation, and shaping frames to the schema's dtypes.

`read_table` uses the project's loader (`synthpool.common.loading.load_table`, which validates
and reports problems) for real rows; synthetic rows (`strict=False`), or a checkout without that
loader, go through a small reader that honours the schema's csv options and value normalisation
but refuses nothing. Either way the frame has exactly `schema.names` columns:
numeric float64 with NaN, categorical object (str or NaN), boolean object (bool or NaN).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..schema import BooleanColumn, NumericColumn, Schema

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def read_table(path: str | Path, schema: Schema, *, strict: bool = True) -> pd.DataFrame:
    """`strict=False` skips validation (for synthetic rows: out-of-schema values are what the
    evaluation counts, not a reason to refuse the file)."""
    load_table = None
    if strict:
        try:
            from ..loading import load_table  # the project's validating loader
        except ImportError:
            pass
    if load_table is not None:
        df, _report = load_table(path, schema)
        return conform(df, schema)
    return _read_fallback(Path(path), schema)


def _read_fallback(path: Path, schema: Schema) -> pd.DataFrame:
    if path.suffix in {".parquet", ".pq"}:
        return conform(pd.read_parquet(path), schema)
    csv = schema.csv
    raw = pd.read_csv(
        path,
        header=0 if csv.header else None,
        names=None if csv.header else schema.source_columns,
        sep=csv.separator,
        na_values=csv.missing,
        keep_default_na=False,
        comment=csv.comment,
        skipinitialspace=csv.skip_initial_space,
        dtype=str,
        compression="infer",
    )
    for name in schema.names:
        col = schema.column(name)
        if isinstance(col, NumericColumn):
            continue
        s = raw[name]
        if schema.normalize.strip:
            s = s.str.strip()
        for suffix in schema.normalize.strip_suffix:
            s = s.where(~s.str.endswith(suffix, na=False), s.str[: -len(suffix)])
        raw[name] = s
    return conform(raw, schema)


def conform(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Exactly the schema's columns, in order, with the evaluation's dtypes."""
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    out = {}
    for name in schema.names:
        col, s = schema.column(name), df[name]
        if isinstance(col, NumericColumn):
            out[name] = pd.to_numeric(s, errors="coerce").astype("float64")
        elif isinstance(col, BooleanColumn):
            out[name] = s.map(_to_bool).astype(object)
        else:
            out[name] = s.map(lambda v: np.nan if _isna(v) else str(v)).astype(object)
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)


def _isna(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def _to_bool(v):
    if _isna(v):
        return np.nan
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    text = str(v).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return np.nan
