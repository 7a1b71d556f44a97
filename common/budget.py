"""What a privacy budget may be: checked wherever one enters (CLI, site.toml, study, run config,
accountant), before anything is read, spent or written. Apart from common/privacy.py so that
commands that only read a config (enroll, doctor) need not import torch and Opacus."""

from __future__ import annotations

import math


# How a person's rows may be spread over the sites of a study: at one site only ("disjoint":
# the release's epsilon is the largest site's) or possibly at several ("overlapping": the sum,
# which holds either way, hence the default).
POPULATIONS = ("disjoint", "overlapping")
DEFAULT_POPULATION = "overlapping"


class InvalidBudget(ValueError):
    """An epsilon or delta at which no guarantee can be stated (epsilon <= 0, delta outside
    (0, 1), not finite). Raised before anything is read, spent or written."""


class DeltaWarning(UserWarning):
    """delta is above 1 / (the DP estimate of the rows): legal, but a weak guarantee."""


def check_epsilon(epsilon: float, what: str = "epsilon") -> float:
    """`epsilon` as a float, or InvalidBudget: a budget is a finite epsilon > 0."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise InvalidBudget(f"{what} must be a number > 0, not {epsilon!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InvalidBudget(f"{what} must be a finite number > 0, not {epsilon!r}")
    return value


def check_delta(delta: float, what: str = "delta") -> float:
    """`delta` as a float, or InvalidBudget: delta is the probability that the epsilon bound
    fails, so it lies strictly between 0 and 1 (at 0 a Gaussian mechanism has no finite epsilon;
    at 1 or above the guarantee says nothing)."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise InvalidBudget(f"{what} must be a number in (0, 1), not {delta!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise InvalidBudget(f"{what} must lie strictly between 0 and 1 (the probability that the "
                            f"epsilon bound fails), not {delta!r}")
    return value


def check_budget(epsilon: float, delta: float, where: str = "") -> tuple[float, float]:
    """(epsilon, delta) as floats, or InvalidBudget naming `where` the budget came from (a flag,
    a site.toml table, a run config key). Every entry point of a budget calls this first."""
    prefix = f"{where}: " if where else ""
    return check_epsilon(epsilon, f"{prefix}epsilon"), check_delta(delta, f"{prefix}delta")


def delta_warning(delta: float, rows_estimate: float) -> str | None:
    """A warning when delta > 1 / rows (the DP estimate, never the exact count), else None: at
    such a delta a mechanism that publishes one random row outright would meet the guarantee."""
    if rows_estimate <= 0 or delta <= 1.0 / rows_estimate:
        return None
    return (f"delta {delta:g} is above 1/rows ({1.0 / rows_estimate:.2g} for the DP estimate of "
            f"about {rows_estimate:.0f} rows): the guarantee would allow publishing a row "
            f"outright with probability delta; choose delta well below 1/rows, e.g. "
            f"{_suggested_delta(rows_estimate):g}")


def _suggested_delta(rows: float) -> float:
    return 10.0 ** math.floor(math.log10(0.1 / rows))
