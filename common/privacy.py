"""Privacy accounting: every mechanism run on private rows, composed by one accountant.

Every DP mechanism synthpool runs on a site's rows is a *sampled Gaussian mechanism*: DP-SGD steps
(sample rate q < 1, Poisson sampling) and the histograms (q = 1, one step). So one accountant
composes all of them: Google's dp-accounting privacy-loss-distribution (PLD) accountant, which is
tight (for the demo's mechanisms it certifies about 8% less noise than RDP for the same
guarantee). The list of mechanisms is what manifests and ledgers store; with the accountant's
settings recorded beside it (`ACCOUNTANT_SETTINGS`), anyone can recompute every epsilon with
`dp_accounting.pld.PLDAccountant` from those fields alone (tests/test_accountant_recompute.py does).
Pure-DP spends made outside the accountant (e.g. a Laplace schema draft) are added by basic
composition in `Spend`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.metadata import version

ACCOUNTANT = "dp_accounting.pld.PLDAccountant"
DP_ACCOUNTING_VERSION = version("dp-accounting")  # read once: every reply of a site states it
# The PLD's grid of privacy-loss values. Pessimistic rounding makes the result an upper bound at
# any interval; at 1e-3 a study's epsilon is within about 3e-4 of the 1e-4 grid's (measured on the
# demo's schedule: 2.99801 vs 2.99781) and composing it takes a fraction of a second, not seconds.
DISCRETIZATION = 1e-3
# Calibration never goes below this noise multiplier: the PLD's range grows as 1/sigma^2 (far
# below it, e.g. for a vanishing sample rate, composing takes minutes and gigabytes), and more
# noise than a budget needs is always within it.
MIN_NOISE = 0.3
ACCOUNTANT_SETTINGS = {"neighboring_relation": "ADD_OR_REMOVE_ONE",
                       "value_discretization_interval": DISCRETIZATION}

from .budget import (  # noqa: E402,F401  (the checks live apart: no torch to import them)
    DeltaWarning, InvalidBudget, check_budget, check_delta, check_epsilon, delta_warning,
)


class BudgetExceeded(RuntimeError):
    """A job would spend more than the owner's cap."""


@dataclass(frozen=True)
class GaussianMechanism:
    """`steps` compositions of a Gaussian mechanism with L2 sensitivity 1 (after clipping or
    scaling), noise std `noise_multiplier`, applied to a Poisson subsample of rate `sample_rate`."""

    name: str
    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and 0 < self.sample_rate <= 1 and self.steps >= 0):
            raise ValueError(f"invalid mechanism {self}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GaussianMechanism":
        return cls(d["name"], float(d["noise_multiplier"]), float(d["sample_rate"]), int(d["steps"]))


@dataclass(frozen=True)
class PureSpend:
    """An (epsilon, delta) spent by a mechanism outside the RDP accountant (basic composition)."""

    name: str
    epsilon: float
    delta: float = 0.0


def _merged(mechanisms) -> tuple[tuple[float, float, int], ...]:
    """(noise, rate, steps) with equal (noise, rate) merged: the same composition, and a
    canonical key so a study's history is composed once however it is split into rounds."""
    steps: dict[tuple[float, float], int] = {}
    for m in mechanisms:
        if m.steps > 0:
            key = (float(m.noise_multiplier), float(m.sample_rate))
            steps[key] = steps.get(key, 0) + int(m.steps)
    return tuple(sorted((s, q, n) for (s, q), n in steps.items()))


def _gaussian_pld(sigma: float, q: float, n: int):
    # Imported here: dp_accounting pulls in scipy.signal (about 1.5 s), and the processes that
    # only read a ledger or start the site's SuperNode never compose anything.
    from dp_accounting.pld import privacy_loss_distribution as pld

    if q == 1.0:  # n unsampled Gaussians are one Gaussian with std sigma / sqrt(n), exactly
        return pld.from_gaussian_mechanism(sigma / math.sqrt(n),
                                           value_discretization_interval=DISCRETIZATION)
    return pld.from_gaussian_mechanism(sigma, sampling_prob=q,
                                       value_discretization_interval=DISCRETIZATION).self_compose(n)


@lru_cache(maxsize=512)
def _pld_of(merged: tuple[tuple[float, float, int], ...]):
    out = None
    for sigma, q, n in merged:
        one = _gaussian_pld(sigma, q, n)
        out = one if out is None else out.compose(one)
    return out


def _epsilon(merged, delta: float) -> float:
    return 0.0 if not merged else float(_pld_of(merged).get_epsilon_for_delta(delta))


def epsilon_of(mechanisms: list[GaussianMechanism], delta: float) -> float:
    """The PLD accountant's epsilon at `delta` for all mechanisms composed."""
    check_delta(delta)
    return _epsilon(_merged(mechanisms), delta)


@dataclass
class Spend:
    """What a run (or a site over a whole study) has spent: accountant-composed Gaussian
    mechanisms plus any pure spends, reported at a target delta."""

    delta: float
    mechanisms: list[GaussianMechanism] = field(default_factory=list)
    pure: list[PureSpend] = field(default_factory=list)

    @property
    def accountant_delta(self) -> float:
        """The share of delta left to the accountant once pure spends took theirs."""
        return self.delta - sum(p.delta for p in self.pure)

    @property
    def epsilon(self) -> float:
        check_delta(self.delta)
        check_delta(self.accountant_delta, "delta left to the accountant once the pure spends "
                                           f"took {sum(p.delta for p in self.pure):g} of it")
        return epsilon_of(self.mechanisms, self.accountant_delta) + sum(p.epsilon for p in self.pure)

    def per_mechanism(self) -> dict[str, float]:
        """Each mechanism's epsilon on its own at the same delta (they do not add up: the total
        is composed by the accountant and is smaller than the sum)."""
        out = {m.name: epsilon_of([m], self.accountant_delta) for m in self.mechanisms}
        out.update({p.name: p.epsilon for p in self.pure})
        return out

    def to_dict(self) -> dict:
        return {
            **accountant_fields(),
            "delta": self.delta,
            "epsilon": self.epsilon,
            "epsilon_per_mechanism": self.per_mechanism(),
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "pure_spends": [asdict(p) for p in self.pure],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Spend":
        return cls(
            delta=float(d["delta"]),
            mechanisms=[GaussianMechanism.from_dict(m) for m in d["mechanisms"]],
            pure=[PureSpend(**p) for p in d.get("pure_spends", [])],
        )


def accountant_fields() -> dict:
    """What an auditor needs beside the mechanisms to recompute an epsilon."""
    return {"accountant": ACCOUNTANT, "accountant_settings": dict(ACCOUNTANT_SETTINGS),
            "dp_accounting_version": DP_ACCOUNTING_VERSION}


def _smallest_noise(eps, budget: float, start: float, rel_tolerance: float, what: str) -> float:
    """The smallest sigma (to `rel_tolerance`) with eps(sigma) <= budget; eps decreases in sigma.

    Bracketed geometrically from `start`, then narrowed by secant steps in log sigma (eps is
    smooth there; Illinois-weighted so its curvature cannot keep every step on one side), and
    once the bracket is narrow, a probe just across the root: 4-10 accountant calls where
    bisection took 11-14 (one call costs 0.1-0.4 s). The contract is bisection's: the sigma
    returned stays within budget and sigma / (1 + rel_tolerance) does not."""
    lo = hi = max(start, MIN_NOISE)
    f_hi = eps(hi) - budget
    f_lo = f_hi
    while f_hi > 0:
        lo, f_lo, hi = hi, f_hi, hi * 2
        if hi > 1e5:
            raise BudgetExceeded(f"no noise level reaches {what}")
        f_hi = eps(hi) - budget
    if lo == hi:  # enough already: search downwards, never below the floor
        while True:
            lo = max(hi / 2, MIN_NOISE)
            f_lo = eps(lo) - budget
            if f_lo > 0:
                break
            if lo == MIN_NOISE:
                return lo
            hi, f_hi = lo, f_lo
    close, side = 1 + 0.9 * rel_tolerance, 0
    while hi / lo > 1 + rel_tolerance:
        x_lo, x_hi = math.log(lo), math.log(hi)
        margin = math.log1p(rel_tolerance) / 2  # strictly inside: every call narrows
        x = x_hi - f_hi * (x_hi - x_lo) / (f_hi - f_lo)
        sigma = math.exp(min(max(x, x_lo + margin), x_hi - margin))
        f = eps(sigma) - budget
        probe = sigma / close if f <= 0 else sigma * close
        if f <= 0:
            hi, f_hi = sigma, f
            if side > 0:
                f_lo /= 2
            side = 1
        else:
            lo, f_lo = sigma, f
            if side < 0:
                f_hi /= 2
            side = -1
        if lo < probe < hi and hi / lo < 1.05:
            f = eps(probe) - budget
            if f <= 0:
                hi, f_hi = probe, f
            else:
                lo, f_lo = probe, f
    return hi


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: list[GaussianMechanism] = (),
    pure_epsilon: float = 0.0,
    rel_tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier (to `rel_tolerance`) such that `steps` DP-SGD steps composed with
    `prior` mechanisms stay within `target_epsilon - pure_epsilon` at `delta`."""
    check_budget(target_epsilon, delta)
    budget = target_epsilon - pure_epsilon
    prior_merged = _merged(prior)
    if budget <= 0 or _epsilon(prior_merged, delta) >= budget:
        raise BudgetExceeded(
            f"preprocessing already spends the whole budget epsilon={target_epsilon}"
        )
    prior_pld = _pld_of(prior_merged) if prior_merged else None

    def eps(sigma: float) -> float:
        one = _gaussian_pld(sigma, sample_rate, steps)
        total = one if prior_pld is None else prior_pld.compose(one)
        return float(total.get_epsilon_for_delta(delta))

    # A first guess from the central-limit view of DP-SGD (noise ~ q sqrt(steps) / epsilon)
    # saves most of the bracketing.
    start = max(0.3, sample_rate * math.sqrt(max(steps, 1)) * 2 / budget)
    return _smallest_noise(eps, budget, start, rel_tolerance, f"epsilon={target_epsilon}")


def histogram_noise_for(epsilon: float, delta: float) -> float:
    """Noise multiplier of a one-shot Gaussian mechanism that alone costs `epsilon` at `delta`."""
    check_budget(epsilon, delta)
    return _smallest_noise(lambda s: epsilon_of([GaussianMechanism("h", s, 1.0, 1)], delta),
                           epsilon, 1.0, 1e-4, f"epsilon={epsilon} at delta={delta}")


def is_finite_budget(epsilon: float, delta: float) -> bool:
    try:
        check_budget(epsilon, delta)
    except InvalidBudget:
        return False
    return True
