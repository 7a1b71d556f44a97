"""Fidelity metrics, the public grid and the encoding, on small hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from synthpool.common.evaluation import fidelity as F
from synthpool.common.evaluation.encoding import Encoder
from synthpool.common.evaluation.grids import column_codes, column_grid, counts
from synthpool.common.schema import Schema

SCHEMA = Schema.from_dict({
    "name": "toy",
    "target": "flag",
    "columns": [
        {"name": "x", "kind": "numeric", "lower": 0, "upper": 10},
        {"name": "y", "kind": "numeric", "lower": 0, "upper": 1000, "scale": "log",
         "point_masses": [0], "nullable": True},
        {"name": "c", "kind": "categorical", "categories": ["a", "b", "c"], "nullable": True},
        {"name": "flag", "kind": "boolean"},
    ],
})


def _table(n: int, seed: int, dependent: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, n)
    c = np.where(x < 4, "a", np.where(x < 7, "b", "c")).astype(object) if dependent \
        else rng.choice(["a", "b", "c"], n).astype(object)
    c[rng.random(n) < 0.05] = np.nan
    y = np.where(rng.random(n) < 0.3, 0.0, np.exp(rng.uniform(0, 6.9, n)))
    y[rng.random(n) < 0.1] = np.nan
    flag = (x + rng.normal(0, 2, n) > 5).astype(object) if dependent \
        else (rng.random(n) < 0.5).astype(object)
    return pd.DataFrame({"x": x, "y": y, "c": c, "flag": flag})


def test_ks_and_tv_complements():
    a = pd.Series([1.0, 2.0, 3.0, 4.0])
    assert F.ks_complement(a, a) == 1.0
    assert F.ks_complement(a, a + 10) == 0.0
    assert math.isnan(F.ks_complement(a, pd.Series([np.nan])))
    p = pd.Series(["a", "a", "b", "b", np.nan], dtype=object)
    q = pd.Series(["a", "b", "b", "b"], dtype=object)
    assert F.tv_complement(p, q) == pytest.approx(0.75)  # missing values do not count (as SDMetrics)


def test_cramers_v():
    assert F.cramers_v(np.array([[50, 0], [0, 50]])) == pytest.approx(1.0)
    assert F.cramers_v(np.array([[25, 25], [25, 25]])) == pytest.approx(0.0)
    assert math.isnan(F.cramers_v(np.array([[10, 5]])))
    rng = np.random.default_rng(0)
    noise = np.histogram2d(rng.integers(0, 5, 2000), rng.integers(0, 5, 2000), bins=5)[0]
    assert F.cramers_v(noise, bias_corrected=True) < F.cramers_v(noise)
    assert F.cramers_v(noise, bias_corrected=True) < 0.03


def test_dependence_fails_independent_columns_and_passes_a_resample():
    real, again, broken = _table(4000, 0), _table(4000, 1), _table(4000, 2, dependent=False)
    good, bad = F.dependence(SCHEMA, real, again), F.dependence(SCHEMA, real, broken)
    assert good["score"] > 0.85 and bad["score"] < 0.3
    assert np.asarray(good["real"]).shape == (4, 4) and good["columns"] == SCHEMA.names


def test_pair_trends_score_both_kinds_of_pairs():
    real, syn = _table(3000, 0), _table(3000, 1)
    out = F.column_pair_trends(SCHEMA, real, syn)
    metrics = {tuple(p["columns"]): p["metric"] for p in out["pairs"]}
    assert metrics[("x", "y")] == "CorrelationSimilarity"
    assert metrics[("x", "c")] == "ContingencySimilarity"
    assert len(out["pairs"]) == 6 and 0.9 < out["score_all_pairs"] <= 1.0
    assert out["n_contributing_pairs"] >= 2  # x-c and c-flag are strongly associated


def test_diagnostics():
    real = _table(2000, 0)
    syn = real.copy()
    syn.loc[:9, "x"] = 20.0           # outside [0, 10]
    syn.loc[:99, "c"] = "zzz"         # not a category
    syn["c"] = syn["c"].replace("b", "a")
    syn.loc[:199, "y"] = np.nan
    out = F.fidelity(SCHEMA, real, syn)
    assert out["boundary_adherence"]["columns"]["x"] == pytest.approx(1 - 10 / 2000)
    cov = out["category_coverage"]["columns"]["c"]
    assert cov["coverage"] == pytest.approx(2 / 3) and cov["unknown_share"] > 0.04
    assert out["category_coverage"]["columns"]["flag"]["coverage"] == 1.0
    assert out["missing_values"]["columns"]["y"] < 1.0 and out["missing_values"]["columns"]["flag"] == 1.0
    assert out["overall"] == pytest.approx(np.mean([out["column_shapes"]["score"],
                                                    out["column_pair_trends"]["score"]]))


def test_grid_is_public_and_total():
    y = SCHEMA.column("y")
    grid = column_grid(y, n_bins=10)
    assert grid.labels[0] == "= 0" and grid.labels[-1] == "<missing>" and grid.size == 12
    values = pd.Series([0.0, 1.0, 999.0, 5000.0, -3.0, np.nan])
    codes = column_codes(y, values, n_bins=10)
    assert codes.tolist()[0] == 0 and codes[-1] == grid.size - 1
    assert codes[3] == grid.size - 2 and codes[4] == 1  # clipped into the end bins
    cat = SCHEMA.column("c")
    assert counts(cat, pd.Series(["a", "q", np.nan], dtype=object), 10).tolist() == [1, 0, 0, 1, 1]
    flag = column_grid(SCHEMA.column("flag"))
    assert flag.labels == ["False", "True", "<missing>"]


def test_encoding_uses_public_bounds_only():
    enc = Encoder(SCHEMA)
    df = pd.DataFrame({"x": [0.0, 5.0, 20.0, np.nan], "y": [0.0, 1000.0, np.nan, 10.0],
                       "c": ["a", "zzz", np.nan, "c"], "flag": [True, False, np.nan, True]})
    for col in ("c", "flag"):
        df[col] = df[col].astype(object)
    x = enc.transform(df)
    assert x.shape == (4, enc.width) and enc.width == 2 + 2 + 4 + 3
    names = enc.feature_names
    xs = x[:, names.index("x")]
    assert xs.tolist() == [0.0, 0.5, 1.0, 0.0]              # scaled by [0, 10], clipped
    assert x[3, names.index("x=<missing>")] == 1.0
    assert x[1, names.index("y")] == pytest.approx(1.0)      # log1p scale reaches 1 at the bound
    assert x[3, names.index("y")] == pytest.approx(np.log1p(10) / np.log1p(1000))
    assert x[1, [names.index(f"c={v}") for v in ("a", "b", "c", "<missing>")]].sum() == 0  # unknown
    assert x[2, names.index("c=<missing>")] == 1.0
    assert x[0, names.index("flag=True")] == 1.0 and x[2, names.index("flag=<missing>")] == 1.0
    # The same rows give the same numbers whatever else is in the frame: no fitted statistics.
    assert np.array_equal(enc.transform(df.iloc[:2]), x[:2])
