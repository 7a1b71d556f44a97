"""Adult frames shared by the evaluation tests (imported as a module; also checks the reading)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TRAIN
from synthpool.common.evaluation.tables import read_table
from synthpool.common.schema import Schema


@lru_cache(maxsize=1)
def adult_schema() -> Schema:
    return Schema.load(ADULT_SCHEMA)


@lru_cache(maxsize=1)
def adult_train() -> pd.DataFrame:
    return read_table(ADULT_TRAIN, adult_schema())


def adult_splits(n: int, seed: int = 0, parts: int = 3) -> list[pd.DataFrame]:
    """`parts` disjoint random samples of n rows each from Adult's training file."""
    df = adult_train()
    perm = np.random.default_rng(seed).permutation(len(df))
    return [df.iloc[perm[i * n:(i + 1) * n]].reset_index(drop=True) for i in range(parts)]


def shuffle_columns(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every column permuted independently: perfect marginals, no dependence, no copied rows."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: df[c].to_numpy()[rng.permutation(len(df))] for c in df.columns})


def test_adult_frames_have_the_evaluation_dtypes():
    schema, df = adult_schema(), adult_train()
    assert list(df.columns) == schema.names and len(df) == 32561
    assert df["age"].dtype == np.float64
    assert df["workclass"].dtype == object and df["workclass"].isna().sum() > 0
    assert set(df["income"].dropna()) == {"<=50K", ">50K"}
