"""A synthetic 'clinic' table for tests: every column kind the schema has, none of Adult's quirks.

Adult alone would let code pass by accident (no booleans, no float columns, no identifiers, missing
values only in categoricals), so tests also run on this table. The outcome depends on the features
through a logistic model, so a classifier trained on (synthetic) rows has something to learn.

The frame `make_clinic_table` returns is already in `load_table`'s output form (float64 numerics,
object str/bool with NaN for missing), so a round trip through any storage can be compared with
`pd.testing.assert_frame_equal` on `df[schema.names]`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from synthpool.common.schema import Schema
from synthpool.common.wire import model_setting

# The default family at its smallest, for tests of the protocol rather than the model.
TINY_MODEL = model_setting({"hidden": 16})

CLINIC_TABLE = "clinic"
CLINIC_QUERY = f"SELECT * FROM {CLINIC_TABLE}"

CLINIC_SCHEMA = {
    "name": "clinic",
    "target": "readmitted",
    "drop": ["patient_id"],
    "columns": [
        {"name": "region", "kind": "categorical", "categories": ["north", "south", "east", "west"]},
        {"name": "smoker", "kind": "categorical", "nullable": True,
         "categories": ["never", "former", "current"]},
        {"name": "diabetic", "kind": "boolean"},
        {"name": "age", "kind": "numeric", "lower": 18, "upper": 100, "integer": True},
        {"name": "charges", "kind": "numeric", "lower": 0, "upper": 1_000_000, "scale": "log",
         "point_masses": [0]},
        {"name": "bmi", "kind": "numeric", "lower": 10, "upper": 80, "nullable": True},
        {"name": "readmitted", "kind": "categorical", "categories": ["no", "yes"]},
    ],
}


def make_clinic_table(n: int, seed: int) -> tuple[pd.DataFrame, Schema]:
    """`n` patients (with a `patient_id` the schema drops) and the table's public schema."""
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east", "west"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    smoker = rng.choice(["never", "former", "current"], size=n, p=[0.55, 0.25, 0.2]).astype(object)
    smoker[rng.random(n) < 0.1] = np.nan
    age = np.clip(np.round(rng.normal(55, 16, n)), 18, 100)
    diabetic = rng.random(n) < 1 / (1 + np.exp(-(age - 65) / 8))
    # Most patients cost nothing (a point mass at 0); the rest are log-normal with a heavy tail.
    charges = np.where(rng.random(n) < 0.35, 0.0,
                       np.round(rng.lognormal(mean=7.5, sigma=1.6, size=n), 2))
    charges = np.clip(charges, 0, 1_000_000)
    bmi = np.round(np.clip(rng.normal(27 + 3 * diabetic, 5, n), 12, 75), 1)
    bmi[rng.random(n) < 0.08] = np.nan
    logit = (-2.0 + 0.04 * (age - 55) + 1.2 * diabetic + 0.9 * (smoker == "current")
             + 0.5 * (region == "west") + 0.05 * np.nan_to_num(bmi - 27)
             + 0.3 * (charges > 5000))
    readmitted = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    df = pd.DataFrame({
        "patient_id": [f"P{seed:03d}-{i:06d}" for i in range(n)],
        "region": pd.Series(region, dtype=object),
        "smoker": pd.Series(smoker, dtype=object),
        "diabetic": pd.Series([bool(b) for b in diabetic], dtype=object),
        "age": age.astype(np.float64),
        "charges": charges.astype(np.float64),
        "bmi": bmi.astype(np.float64),
        "readmitted": pd.Series(readmitted, dtype=object),
    })
    return df, Schema.from_dict(CLINIC_SCHEMA)


def write_table(df: pd.DataFrame, path: str | Path, *, header: bool = True) -> str:
    """Write `df` in the format `path`'s suffix names (.csv, .csv.gz, .parquet, .db for SQLite)
    and return what to pass to `load_table` (for SQLite a URL; query it with CLINIC_QUERY)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".txt")):
        out = df.copy()
        for c in out.columns:  # write integer-valued floats as integers, as a real export would
            if out[c].dtype == np.float64 and np.all(np.isnan(out[c]) | (out[c] % 1 == 0)):
                out[c] = out[c].astype("Int64")
        out.to_csv(path, index=False, header=header)
        return str(path)
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
        return str(path)
    if name.endswith(".db"):
        with sqlite3.connect(path) as conn:
            df.to_sql(CLINIC_TABLE, conn, index=False, if_exists="replace")
        return f"sqlite:///{path}"
    raise ValueError(f"unknown table format: {path}")


def synth_clinic(tmp_path: Path, rows: int, seed: int, *options: str):
    """`synthpool synth` on a clinic table of `rows` rows written as CSV (the schema beside it),
    with the given options (--epsilon, --rows, ...): (the CLI's result, the output path, the
    schema)."""
    from typer.testing import CliRunner

    from synthpool.cli import app

    df, schema = make_clinic_table(rows, seed=seed)
    src = write_table(df, tmp_path / "clinic.csv")
    schema.save(tmp_path / "clinic.yaml")
    out = tmp_path / "synthetic.csv"
    result = CliRunner().invoke(app, ["synth", "--data", src, "--schema",
                                      str(tmp_path / "clinic.yaml"), "--out", str(out), *options],
                                catch_exceptions=False)
    return result, out, schema
