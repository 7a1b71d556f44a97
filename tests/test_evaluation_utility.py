"""Train-on-synthetic-test-on-real against train-on-real, on Adult and on a multiclass toy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from synthpool.common.evaluation.utility import tstr
from synthpool.common.schema import Schema
from test_evaluation_data import adult_schema, adult_splits, shuffle_columns


@pytest.fixture(scope="module")
def adult():
    return adult_splits(2500, seed=7)


def test_real_data_is_useful_and_independent_columns_are_not(adult):
    train, holdout, fresh = adult
    good = tstr(adult_schema(), train, holdout, fresh)
    bad = tstr(adult_schema(), train, holdout, shuffle_columns(fresh, seed=2))
    assert good["task"] == "binary" and good["positive_label"] == ">50K"
    for model in ("random_forest", "hist_gradient_boosting"):
        real, syn = good["models"][model]["real"], good["models"][model]["synthetic"]
        assert real["roc_auc"] > 0.85 and syn["roc_auc"] > 0.85
        assert 0.0 < real["f1"] < 1.0 and 0.7 < real["accuracy"] < 1.0
        assert bad["models"][model]["synthetic"]["roc_auc"] < 0.6
        for curve, keys in (("roc_curve", ("fpr", "tpr")), ("pr_curve", ("recall", "precision"))):
            pts = real[curve]
            assert 10 < len(pts[keys[0]]) <= 101 and len(pts[keys[0]]) == len(pts[keys[1]])
        assert real["roc_curve"]["fpr"][0] == 0.0 and real["roc_curve"]["tpr"][-1] == 1.0
        assert np.all(np.diff(real["pr_curve"]["recall"]) >= 0)


def test_a_single_class_synthetic_table_is_reported_not_crashed(adult):
    train, holdout, fresh = adult
    syn = fresh[fresh["income"] == "<=50K"]
    out = tstr(adult_schema(), train, holdout, syn, models=("hist_gradient_boosting",))
    res = out["models"]["hist_gradient_boosting"]["synthetic"]
    assert "error" in res and math.isnan(res["roc_auc"])
    assert out["models"]["hist_gradient_boosting"]["real"]["roc_auc"] > 0.8


def test_training_rows_are_capped(adult):
    train, holdout, fresh = adult
    out = tstr(adult_schema(), train, holdout, fresh, max_train_rows=500,
               models=("hist_gradient_boosting",))
    assert out["n_train"] == {"real": 500, "synthetic": 500}


def test_multiclass_uses_macro_f1_and_one_vs_rest_auc():
    schema = Schema.from_dict({"name": "toy", "target": "kind", "columns": [
        {"name": "x", "kind": "numeric", "lower": 0, "upper": 1},
        {"name": "z", "kind": "categorical", "categories": ["u", "v"]},
        {"name": "kind", "kind": "categorical", "categories": ["p", "q", "r", "never"]}]})
    rng = np.random.default_rng(0)

    def table(n):
        x = rng.uniform(0, 1, n)
        kind = np.where(x < 0.33, "p", np.where(x < 0.66, "q", "r")).astype(object)
        return pd.DataFrame({"x": x, "z": rng.choice(["u", "v"], n).astype(object), "kind": kind})

    out = tstr(schema, table(600), table(400), table(600), models=("random_forest",))
    assert out["task"] == "multiclass" and out["positive_label"] is None
    res = out["models"]["random_forest"]["synthetic"]
    assert res["roc_auc"] > 0.95 and res["f1"] > 0.9
    assert len(res["roc_curve"]["fpr"]) <= 101


def test_no_target_is_skipped():
    schema = Schema.from_dict({"name": "t", "columns": [
        {"name": "x", "kind": "numeric", "lower": 0, "upper": 1}]})
    df = pd.DataFrame({"x": [0.1, 0.2]})
    assert "skipped" in tstr(schema, df, df, df)
