"""What leaves a site: aggregate scores only, and DP histograms with the stated noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from synthpool.common.evaluation.evaluate import evaluate
from synthpool.common.evaluation.grids import dp_histograms, exact_histograms
from synthpool.common.evaluation.site_scores import site_scores
from synthpool.common.privacy import GaussianMechanism
from test_evaluation_data import adult_schema, adult_splits


def _leaves(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}")
    else:
        yield path, obj


def test_site_scores_are_aggregates_only():
    schema = adult_schema()
    train, holdout, syn = adult_splits(1500, seed=3)
    full = evaluate(schema, train, holdout, syn, max_train_rows=1500)
    out = site_scores(full)
    json.dumps(out, allow_nan=False)  # plain JSON, NaN already turned into null
    for path, value in _leaves(out):
        # No lists at all: no rows, no per-row distances, no curves, no histograms.
        assert value is None or isinstance(value, (int, float, str, bool)), path
        if isinstance(value, str):
            assert value in {"income", "binary", ">50K"}, (path, value)
        # No exact counts: every number is a score, a rate or an AUC.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert -1.0 <= value <= 1.0 or "epsilon_hat" in path, (path, value)
    assert 0.5 < out["fidelity"]["overall"] <= 1.0
    assert set(out["fidelity"]["column_shapes"]["columns"]) == set(schema.names)
    assert len(out["fidelity"]["column_pair_trends"]["pairs"]) == 15 * 14 // 2
    gb = out["utility"]["models"]["hist_gradient_boosting"]
    assert gb["synthetic"]["roc_auc"] > 0.8
    assert gb["synthetic"]["roc_auc"] == full.utility["models"]["hist_gradient_boosting"]["synthetic"]["roc_auc"]
    assert 0.4 < out["privacy_risk"]["membership_inference"]["distance"]["auc"] < 0.6
    assert out["privacy_risk"]["dcr"]["exact_copy_rate"] < 0.01


def test_dp_histograms_noise_and_mechanism():
    schema = adult_schema()
    df = adult_splits(500, seed=1, parts=1)[0]
    exact = exact_histograms(schema, df)
    for name, h in exact.items():
        assert sum(h["counts"]) == len(df), name  # every row in exactly one cell per column
    sigma = 0.8 * math.sqrt(len(schema.columns))
    rng = np.random.default_rng(0)
    residuals = []
    for _ in range(40):
        rel = dp_histograms(schema, df, 0.8, rng)
        assert rel["noise_std"] == pytest.approx(sigma)
        for name, h in rel["columns"].items():
            assert h["labels"] == exact[name]["labels"] and h["edges"] == exact[name]["edges"]
            residuals.append(np.asarray(h["counts"]) - np.asarray(exact[name]["counts"]))
    res = np.concatenate(residuals)
    assert abs(res.mean()) < 0.1 * sigma
    assert res.std() == pytest.approx(sigma, rel=0.05)
    mech = GaussianMechanism.from_dict(rel["mechanism"])
    assert (mech.noise_multiplier, mech.sample_rate, mech.steps) == (0.8, 1.0, 1)
    assert rel["l2_sensitivity"] == pytest.approx(math.sqrt(15))


def test_dp_histogram_grid_does_not_depend_on_the_rows():
    schema = adult_schema()
    a, b = adult_splits(300, seed=2, parts=2)
    b = b.assign(age=90.0, **{"capital-gain": 0.0})
    ha = dp_histograms(schema, a, 1.0, np.random.default_rng(0))
    hb = dp_histograms(schema, b, 1.0, np.random.default_rng(0))
    for name in schema.names:
        assert ha["columns"][name]["labels"] == hb["columns"][name]["labels"]
        assert ha["columns"][name]["edges"] == hb["columns"][name]["edges"]
    with pytest.raises(ValueError):
        dp_histograms(schema, a, 0.0, np.random.default_rng(0))
