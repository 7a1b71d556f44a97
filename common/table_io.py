"""Writing tables and JSON documents atomically (a crash never leaves half a release)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .atomic import atomic_path, atomic_write_text


def write_table(df: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet, chosen by the file's extension."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix not in (".csv", ".csv.gz", ".parquet", ".pq"):
        raise ValueError(f"{path}: output must end in .csv, .csv.gz, .parquet or .pq")
    with atomic_path(path) as tmp:
        if suffix in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, compression="gzip" if suffix == ".csv.gz" else None)


def write_json(data: dict, path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def manifest_path(table: Path) -> Path:
    """`out.csv` -> `out.manifest.json` beside it."""
    table = Path(table)
    stem = table.name.split(".")[0]
    return table.with_name(f"{stem}.manifest.json")
