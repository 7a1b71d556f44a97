import math

import pytest

from accounting import rdp_epsilon, recompute_epsilon
from synthpool.common.privacy import (BudgetExceeded, GaussianMechanism, InvalidBudget,
                                      PureSpend, Spend, calibrate_noise, check_budget,
                                      delta_warning, epsilon_of, histogram_noise_for)


def test_epsilon_matches_dp_accounting_and_is_tighter_than_rdp():
    """Our composition equals dp-accounting's public accountant on the same mechanisms, and is
    below Opacus' RDP bound (tight, not merely valid)."""
    mechs = [GaussianMechanism("a", 1.1, 0.05, 70), GaussianMechanism("b", 0.9, 0.1, 50),
             GaussianMechanism("h", 8.0, 1.0, 1), GaussianMechanism("a2", 1.1, 0.05, 30)]
    spend = Spend(1e-5, mechs).to_dict()
    assert spend["epsilon"] == pytest.approx(recompute_epsilon(spend), abs=1e-3)
    assert spend["epsilon"] < rdp_epsilon(spend["mechanisms"], 1e-5)


def test_one_shot_gaussian_matches_the_analytic_gaussian_mechanism():
    """Balle & Wang (2018), Theorem 8: the Gaussian mechanism with sensitivity 1 and std sigma
    is (eps, delta)-DP exactly when Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s) <= delta."""
    from scipy.stats import norm

    sigma = 7.0
    eps = epsilon_of([GaussianMechanism("h", sigma, 1.0, 1)], 1e-6)
    exact = norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)
    assert exact <= 1e-6  # an upper bound ...
    slack = 0.999 * eps
    assert (norm.cdf(1 / (2 * sigma) - slack * sigma)
            - math.exp(slack) * norm.cdf(-1 / (2 * sigma) - slack * sigma)) > 1e-6  # ... and tight


@pytest.mark.parametrize("target", [1.0, 3.0])
def test_calibrated_noise_lands_just_under_target(target):
    prior = [GaussianMechanism("pre", histogram_noise_for(0.1 * target, 1e-5), 1.0, 1)]
    sigma = calibrate_noise(target, 1e-5, 0.125, 480, prior)
    spent = epsilon_of([*prior, GaussianMechanism("sgd", sigma, 0.125, 480)], 1e-5)
    assert 0.97 * target <= spent <= target
    # A bit less noise would overspend: the calibration is tight, not merely safe.
    assert epsilon_of([*prior, GaussianMechanism("sgd", sigma * 0.99, 0.125, 480)], 1e-5) > spent


@pytest.mark.parametrize("steps, target", [(30, 3.0), (480, 8.0)])
def test_calibration_is_the_smallest_noise_to_its_tolerance(steps, target):
    """The secant search's contract, the bisection's before it: within budget, and 0.1% less
    noise is not."""
    prior = [GaussianMechanism("pre", 11.2, 1.0, 1)]
    sigma = calibrate_noise(target, 1e-5, 0.125, steps, prior)
    assert epsilon_of([*prior, GaussianMechanism("sgd", sigma, 0.125, steps)], 1e-5) <= target
    assert epsilon_of([*prior, GaussianMechanism("sgd", sigma / 1.001, 0.125, steps)], 1e-5) > target


def test_more_steps_cost_more():
    a = epsilon_of([GaussianMechanism("s", 1.0, 0.1, 100)], 1e-5)
    b = epsilon_of([GaussianMechanism("s", 1.0, 0.1, 200)], 1e-5)
    assert b > a > 0


def test_pure_spends_add_by_basic_composition():
    mech = [GaussianMechanism("sgd", 1.0, 0.1, 100)]
    spend = Spend(delta=1e-5, mechanisms=mech, pure=[PureSpend("draft", 0.5, 2e-6)])
    assert spend.epsilon == pytest.approx(epsilon_of(mech, 8e-6) + 0.5)
    again = Spend.from_dict(spend.to_dict())
    assert again.epsilon == pytest.approx(spend.epsilon)


def test_budget_already_spent_by_preprocessing_is_refused():
    prior = [GaussianMechanism("pre", 0.5, 1.0, 1)]
    with pytest.raises(BudgetExceeded):
        calibrate_noise(1.0, 1e-5, 0.1, 100, prior)


def test_invalid_mechanism_rejected():
    with pytest.raises(ValueError):
        GaussianMechanism("x", 0.0, 0.1, 1)
    with pytest.raises(ValueError):
        GaussianMechanism("x", 1.0, 1.5, 1)
    assert math.isclose(epsilon_of([], 1e-5), 0.0)


BAD_BUDGETS = [(0.0, 1e-5, "epsilon"), (-1.0, 1e-5, "epsilon"), (math.inf, 1e-5, "epsilon"),
               (math.nan, 1e-5, "epsilon"), (1.0, 0.0, "delta"), (1.0, 1.0, "delta"),
               (1.0, 1.5, "delta"), (1.0, -1e-5, "delta"), (1.0, math.nan, "delta")]


@pytest.mark.parametrize("epsilon, delta, bad", BAD_BUDGETS)
def test_budget_outside_its_range_is_refused_at_every_accountant_entry(epsilon, delta, bad):
    """delta 1.5 once gave a manifest claiming epsilon 0.999 (a dp-sgd entry of -6.47)."""
    with pytest.raises(InvalidBudget, match=f"where: {bad} must") as err:
        check_budget(epsilon, delta, "where")
    assert isinstance(err.value, ValueError)
    mech = GaussianMechanism("m", 1.0, 0.1, 10)
    with pytest.raises(InvalidBudget, match=bad):
        calibrate_noise(epsilon, delta, 0.1, 10)
    with pytest.raises(InvalidBudget, match=bad):
        histogram_noise_for(epsilon, delta)
    if bad == "delta":
        with pytest.raises(InvalidBudget, match="delta"):
            epsilon_of([mech], delta)
        with pytest.raises(InvalidBudget, match="delta"):
            Spend(delta=delta, mechanisms=[mech]).epsilon  # noqa: B018


def test_pure_spends_cannot_take_all_of_delta():
    spend = Spend(delta=1e-5, mechanisms=[GaussianMechanism("m", 1.0, 0.1, 10)],
                  pure=[PureSpend("draft", 0.5, 1e-5)])
    with pytest.raises(InvalidBudget, match="left to the accountant"):
        spend.epsilon  # noqa: B018


def test_delta_above_one_over_rows_is_a_warning_not_an_error():
    assert check_budget(3, 1e-3) == (3.0, 1e-3)
    text = delta_warning(1e-3, 5000.4)
    assert "above 1/rows" in text and "about 5000 rows" in text and "e.g. 1e-05" in text
    assert delta_warning(1e-5, 5000.4) is None
