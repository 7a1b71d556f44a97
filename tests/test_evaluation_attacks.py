"""Empirical privacy checks: copies are caught, a non-copying generator is not accused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthpool.common.evaluation.density_shift import density_shift
from synthpool.common.evaluation.empirical_privacy import chebyshev_epsilon
from synthpool.common.evaluation.attacks import privacy_risk
from test_evaluation_data import adult_schema, adult_splits, shuffle_columns

N = 3000


@pytest.fixture(scope="module")
def data():
    train, holdout, fresh = adult_splits(N, seed=5)
    return train, holdout, fresh


def _noisy_copies(train: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Training rows with one categorical cell resampled and numbers jittered: memorisation
    without exact copies, the case where distances alone are weak."""
    rng = np.random.default_rng(seed)
    out = train.copy()
    cats = [c for c in ("workclass", "education", "marital-status", "occupation", "relationship",
                        "race", "native-country")]
    for c in cats:
        hit = rng.random(len(out)) < 1 / len(cats)
        out.loc[hit, c] = rng.choice(train[c].dropna().to_numpy(), hit.sum())
    out["age"] = np.clip(out["age"] + rng.integers(-5, 6, len(out)), 17, 90)
    out["hours-per-week"] = np.clip(out["hours-per-week"] + rng.integers(-5, 6, len(out)), 1, 99)
    out["fnlwgt"] = out["fnlwgt"] * rng.uniform(0.5, 2, len(out))
    return out


def test_a_copy_of_the_training_rows_is_caught(data):
    train, holdout, _ = data
    r = privacy_risk(adult_schema(), train, holdout, train.copy())
    mia = r["membership_inference"]
    assert mia["distance"]["auc"] >= 0.75 and mia["density_ratio"]["auc"] >= 0.75
    assert r["dcr"]["exact_copy_rate"] == 1.0
    assert r["dcr"]["share_closer_than_holdout_p5"] > 0.9
    assert r["dcr"]["synthetic"]["median"] < 1e-6 < r["dcr"]["holdout"]["median"]
    assert r["empirical_privacy"]["epsilon_hat"] > 10


def test_independent_columns_are_not_accused(data):
    train, holdout, _ = data
    r = privacy_risk(adult_schema(), train, holdout, shuffle_columns(train, seed=1))
    mia = r["membership_inference"]
    assert abs(mia["distance"]["auc"] - 0.5) < 0.05
    assert abs(mia["density_ratio"]["auc"] - 0.5) < 0.05
    assert r["dcr"]["exact_copy_rate"] < 0.01
    assert r["dcr"]["share_closer_than_holdout_p5"] < 0.05
    assert r["empirical_privacy"]["epsilon_hat"] < 1.0


def test_fresh_real_rows_look_like_a_private_generator(data):
    """Rows from the same population that were never trained on: nothing to find."""
    train, holdout, fresh = data
    r = privacy_risk(adult_schema(), train, holdout, fresh)
    assert abs(r["membership_inference"]["distance"]["auc"] - 0.5) < 0.05
    assert 0.01 < r["dcr"]["share_closer_than_holdout_p5"] < 0.12
    assert r["empirical_privacy"]["epsilon_hat"] < 2.0


def test_density_ratio_attack_is_stronger_at_low_false_positive_rates(data):
    train, holdout, _ = data
    r = privacy_risk(adult_schema(), train, holdout, _noisy_copies(train))
    mia = r["membership_inference"]
    assert r["dcr"]["exact_copy_rate"] < 0.05
    assert mia["density_ratio"]["tpr_at_fpr_1pct"] > mia["distance"]["tpr_at_fpr_1pct"] + 0.05
    assert mia["distance"]["auc"] > 0.6  # memorisation is visible to both


def test_partial_copies_are_counted(data):
    train, holdout, fresh = data
    syn = pd.concat([train.iloc[:300], fresh.iloc[300:]], ignore_index=True)
    r = privacy_risk(adult_schema(), train, holdout, syn)
    assert r["dcr"]["exact_copy_rate"] == pytest.approx(0.1, abs=0.01)
    assert r["membership_inference"]["distance"]["tpr_at_fpr_1pct"] > 0.05


def test_row_caps_are_honoured_and_reported(data):
    train, holdout, _ = data
    r = privacy_risk(adult_schema(), train, holdout, train, max_query_rows=400, max_index_rows=2000)
    assert r["membership_inference"]["n_members"] == 400
    assert r["caps"]["training_rows_searched"] == 2000
    assert r["caps"]["synthetic_rows_searched"] == 2000


def test_too_few_rows_are_skipped_not_crashed(data):
    train, holdout, _ = data
    r = privacy_risk(adult_schema(), train.iloc[:5], holdout.iloc[:6], train.iloc[:5])
    assert "skipped" in r


def test_chebyshev_bound():
    assert chebyshev_epsilon(0.5, 0.2, 0.01) == pytest.approx(0.5 + 0.2 * 10)
    assert chebyshev_epsilon(-1.0, 0.0, 0.05) == 0.0


def test_density_shift_separates_shift_from_noise():
    rng = np.random.default_rng(0)
    null = density_shift(rng.standard_t(3, 4000), rng.standard_t(3, 4000))
    assert null["excess_std"] == 0.0 and null["epsilon_hat"] < 0.3
    leak = density_shift(rng.normal(2.0, 3.0, 4000), rng.normal(0.0, 1.0, 4000))
    assert leak["expected_privacy_loss"] == pytest.approx(2.0, abs=0.2)
    assert leak["excess_std"] == pytest.approx(np.sqrt(8.0), rel=0.15)
    assert leak["epsilon_hat"] == pytest.approx(2.0 + np.sqrt(8.0) / np.sqrt(0.05), rel=0.15)


def test_a_dp_release_at_epsilon_3_is_not_caught(data):
    """The other end of the scale: the same attacks on rows from a generator trained with DP-SGD
    at epsilon 3 on the training rows (fewer steps than the default, to stay fast; the epsilon
    is the accountant's for the steps taken) cannot tell members from non-members."""
    from synthpool.common.planning import TrainingPlan
    from synthpool.common.synthesis import train_single_site

    train, holdout, _ = data
    result = train_single_site(adult_schema(), train, epsilon=3.0, delta=1e-5, device="cpu",
                               plan=TrainingPlan(steps=200, sample_rate=0.1))
    assert result.spend.epsilon == pytest.approx(3.0, abs=0.01)
    risk = privacy_risk(adult_schema(), train, holdout, result.generator.sample(N, seed=1), seed=0)
    mia = risk["membership_inference"]
    assert mia["distance"]["auc"] <= 0.55 and mia["density_ratio"]["auc"] <= 0.55, mia
    assert risk["dcr"]["exact_copy_rate"] <= risk["dcr"]["holdout_exact_match_rate"] + 0.01


def test_exact_copies_are_matched_by_value_whatever_the_dtype():
    """The copy rate's row keys (one per distinct value of a column, not per cell): 39 and 39.0
    and numpy's True are the values they look like, every kind of missing value is one value,
    and a column mixing booleans with numbers still tells True from 1 (Python hashes them alike)."""
    from synthpool.common.evaluation.attacks import _copy_rate, _row_keys

    train = pd.DataFrame({"age": pd.array([39, 50, None], dtype="Int64"),
                          "flag": [True, 1, None], "job": ["a", None, "b"]})
    rows = pd.DataFrame({"age": [39.0, 50.0, np.nan, 50.0],
                         "flag": [np.bool_(True), 1.0, np.nan, True], "job": ["a", np.nan, "b", None]})
    keys = list(_row_keys(rows))
    assert keys[:3] == list(_row_keys(train)) and keys[3] != keys[1]
    assert _copy_rate(rows, train) == 0.75
