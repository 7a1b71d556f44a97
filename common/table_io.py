"""Writing tables and JSON documents atomically (a crash never leaves half a release).

Given the study schema, a table is written in the vocabulary of the table it describes, not in
synthpool's internal one (`load_table`'s form: float64 numerics, Python bools):

* booleans in the schema's spellings (`true: "yes"`, `false: "no"`); in Parquet, spellings of
  true/false are stored as Parquet booleans and 1/0 as integers, since that is what they are;
* integer columns as integers (pandas' nullable Int64), never `24.0`;
* missing values as the schema's first CSV missing marker (Adult: `?`), NULL in Parquet;
* the schema's CSV separator, and always a header line: a release is a new file and names its
  columns, also for a header-less study (Adult), whose loader recognises that line;
* columns in the order of the input (`columns`), or the schema's.

So a release reads back with the schema it was made from (`load_table`).

Without a schema, the frame is written as it is (what older callers get).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from .schema import Schema


def _suffix(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix not in (".csv", ".csv.gz", ".parquet", ".pq"):
        raise ValueError(f"{path}: output must end in .csv, .csv.gz, .parquet or .pq")
    return suffix


def write_table(df: pd.DataFrame, path: Path, schema: "Schema | None" = None, *,
                columns: list[str] | None = None) -> None:
    """CSV or Parquet, chosen by the file's extension. With `schema`, in the table's own
    vocabulary (see the module doc); `columns` is the input's column order."""
    path = Path(path)
    suffix = _suffix(path)
    parquet = suffix in (".parquet", ".pq")
    csv_options: dict = {}
    if schema is not None:
        df = to_table_form(df, schema, parquet=parquet, columns=columns)
        csv_options = {"sep": schema.csv.separator,
                       "na_rep": schema.csv.missing[0] if schema.csv.missing else ""}
    with atomic_path(path) as tmp:
        if parquet:
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, compression="gzip" if suffix == ".csv.gz" else None,
                      **csv_options)


_NATIVE_BOOL = ("true", "false")
_INT_BOOL = ("1", "0")


def to_table_form(df: pd.DataFrame, schema: "Schema", *, parquet: bool,
                  columns: list[str] | None = None) -> pd.DataFrame:
    """`df` (internal form) with each schema column as the table writes it; other columns as
    they are. Column order: `columns` where it names exactly the frame's schema columns."""
    from .schema import BooleanColumn, NumericColumn

    out = {}
    for name in df.columns:
        s = df[name]
        try:
            col = schema.column(name)
        except KeyError:
            out[name] = s
            continue
        if isinstance(col, NumericColumn) and col.integer:
            x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            out[name] = pd.Series(np.rint(x), index=s.index).astype("Int64")
        elif isinstance(col, BooleanColumn) and col.spelled:
            out[name] = _spell_booleans(s, col, parquet)
        else:
            out[name] = s
    frame = pd.DataFrame(out, index=df.index)
    present = [n for n in df.columns if n in schema.names]
    if columns is not None and sorted(columns) == sorted(present):
        rest = [n for n in df.columns if n not in schema.names]
        frame = frame[list(columns) + rest]
    return frame


def _spell_booleans(s: pd.Series, col, parquet: bool) -> pd.Series:
    missing = s.isna().to_numpy()
    truth = s.to_numpy(dtype=object)
    spelled = (col.true.lower(), col.false.lower())
    if parquet and spelled == _NATIVE_BOOL:
        return pd.Series(pd.array([None if m else bool(v) for v, m in zip(truth, missing)],
                                  dtype="boolean"), index=s.index, name=s.name)
    if parquet and spelled == _INT_BOOL:
        return pd.Series(pd.array([None if m else int(bool(v)) for v, m in zip(truth, missing)],
                                  dtype="Int64"), index=s.index, name=s.name)
    words = np.array([col.false, col.true], dtype=object)
    text = np.where(missing, np.nan, words[np.where(missing, 0, truth).astype(bool).astype(int)])
    return pd.Series(text.astype(object), index=s.index, name=s.name)


def write_json(data: dict, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def manifest_path(table: Path, kind: str = "manifest") -> Path:
    """`out.csv` -> `out.manifest.json` beside it (`kind` names another companion file)."""
    table = Path(table)
    stem = table.name.split(".")[0]
    return table.with_name(f"{stem}.{kind}.json")
