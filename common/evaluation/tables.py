"""Reading a table file for evaluation, and shaping frames to the schema's dtypes.

`read_table` reads every table with the project's reader (common/loading.py: CSV, Parquet, SQL):
real rows through `load_table`, which validates and reports problems; synthetic rows
(`strict=False`) through `read_unchecked`, which honours the schema's csv options and value
normalisation the same way but refuses no cell. Either way the frame has exactly `schema.names`
columns:
numeric float64 with NaN, categorical object (str or NaN), boolean object (bool or NaN).

`read_checked` is the evaluator's reader of real rows with a choice for bad cells: "error" (the
loader's error, naming file, row and column), "drop" (the loader drops the rows and counts them
per column) or "clip" (numeric values outside the schema's bounds are set to the nearest bound and
counted; every other problem is still an error, since a category the schema lacks, text in a
number column or a missing value has no nearest valid value). Its `InputReport` stays on the
evaluator's machine: the counts go to its console and into its own report, nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..column_values import (OK, bounds_text, clip_to_bounds, distinct_texts, native_bools, per_row,
                             read_values)
from ..schema import BooleanColumn, NumericColumn, Schema


def read_table(path: str | Path, schema: Schema, *, strict: bool = True) -> pd.DataFrame:
    """`strict=False` skips validation (for synthetic rows: out-of-schema values are what the
    evaluation counts, not a reason to refuse the file)."""
    from ..loading import load_table, read_unchecked

    if strict:
        df, _report = load_table(path, schema)
        return conform(df, schema)
    return conform(read_unchecked(path, schema), schema)


ON_INVALID = ("error", "drop", "clip")


@dataclass
class InputReport:
    """What `read_checked` did to one table: rows read and kept, rows dropped per column (a row
    with two bad cells counts once in `rows_dropped`, once in each column) or values clipped."""

    table: str
    file: str
    on_invalid: str
    rows_read: int
    rows_kept: int
    dropped_by_column: dict[str, int] = field(default_factory=dict)
    clipped_by_column: dict[str, int] = field(default_factory=dict)
    rows_clipped: int = 0

    @property
    def rows_dropped(self) -> int:
        return self.rows_read - self.rows_kept

    def summary(self) -> str:
        text = f"{self.table} ({self.file}): {self.rows_read} rows read"
        if self.rows_dropped:
            text += f", {self.rows_dropped} dropped ({_counts(self.dropped_by_column)})"
        if self.rows_clipped:
            text += (f", {self.rows_clipped} with values clipped to the schema's bounds "
                     f"({_counts(self.clipped_by_column)})")
        if not self.rows_dropped and not self.rows_clipped:
            text += ", all valid"
        return text

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rows_dropped": self.rows_dropped}


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def read_checked(path: str | Path, schema: Schema, *, table: str, on_invalid: str = "error"
                 ) -> tuple[pd.DataFrame, InputReport]:
    """Real rows for evaluation, validated by the project's loader, with bad cells refused,
    dropped or (numeric values outside the bounds only) clipped; see the module's docstring."""
    from ..loading import DataError, load_table

    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {ON_INVALID}, not {on_invalid!r}")
    if on_invalid != "clip":
        df, rep = load_table(path, schema, on_invalid=on_invalid)
        report = InputReport(table, rep.source, on_invalid, rep.rows_read, rep.rows_kept,
                             dropped_by_column=dict(rep.dropped_by_column))
        return conform(df, schema), report
    # Validate against the schema with every numeric bound opened (so an out-of-bounds number
    # loads and everything else is checked exactly as usual), then clip to the real bounds.
    numeric = [c for c in schema.columns if isinstance(c, NumericColumn)]
    opened = schema.model_copy(update={"columns": [
        c.model_copy(update={"lower": -math.inf, "upper": math.inf})
        if isinstance(c, NumericColumn) else c for c in schema.columns]})
    try:
        df, rep = load_table(path, opened, on_invalid="error")
    except DataError as e:
        raise _with_real_bounds(e, schema) from None
    clipped: dict[str, int] = {}
    touched = np.zeros(len(df), dtype=bool)
    for col in numeric:
        x, out = clip_to_bounds(df[col.name].to_numpy(dtype=np.float64), col)
        if out.any():
            clipped[col.name] = int(out.sum())
            touched |= out
            df[col.name] = x
    report = InputReport(table, rep.source, on_invalid, rep.rows_read, rep.rows_kept,
                         clipped_by_column=clipped, rows_clipped=int(touched.sum()))
    return conform(df, schema), report


def _with_real_bounds(error, schema: Schema):
    """The loader's error from the opened schema, with each numeric column's real bounds in its
    text ("expected a whole number in [0, 120]", not "in [-inf, inf]"): what is left to fix."""
    from ..loading import DataError

    bounds = {c.name: bounds_text(c) for c in schema.columns if isinstance(c, NumericColumn)}
    opened = bounds_text(NumericColumn(name="opened", lower=-math.inf, upper=math.inf))
    fixed = [dataclasses.replace(v, expected=v.expected.replace(opened, bounds[v.column]))
             if v.column in bounds else v for v in error.violations]
    return DataError(error.source, fixed, reason=error.reason, counts=error.counts,
                     bad_rows=error.bad_rows)


def conform(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Exactly the schema's columns, in order, with the evaluation's dtypes. Each column is read
    by its kind's rules in the evaluation's tolerant reading (common/column_values.py): values
    outside the schema are kept, to be counted; a cell unreadable as its kind becomes missing."""
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    out = {}
    for name in schema.names:
        col, s = schema.column(name), df[name]
        if (isinstance(col, NumericColumn) and pd.api.types.is_numeric_dtype(s)
                and not pd.api.types.is_bool_dtype(s)):
            out[name] = s.astype("float64")
            continue
        codes, texts = distinct_texts(s)
        native = native_bools(s) if isinstance(col, BooleanColumn) else None
        values, problems = read_values(col, texts, native, tolerant=True)
        values[problems != OK] = np.nan
        values = per_row(values, codes, np.nan)
        out[name] = pd.Series(values, index=df.index, dtype="float64" if isinstance(
            col, NumericColumn) else object)
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)
