"""Privacy accounting: every mechanism run on private rows, composed by one accountant.

Every DP mechanism synthpool runs on a site's rows is a *sampled Gaussian mechanism*: DP-SGD steps
(sample rate q < 1, Poisson sampling) and the preprocessing histograms (q = 1, one step). That lets a
single Opacus RDP accountant compose all of them exactly; the list of mechanisms is what manifests
and ledgers store, so anyone can recompute the epsilon with Opacus from those fields alone
(`epsilon_of`). Pure-DP spends made outside the accountant (e.g. a Laplace schema draft) are added by
basic composition in `Spend`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import opacus
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants import RDPAccountant

ACCOUNTANT = "opacus.accountants.RDPAccountant"
# Opacus' default orders stop at 63, which cannot certify epsilon below log(1/delta)/62 (about 0.19
# at delta=1e-5) for one-shot queries; larger orders tighten small budgets. Recorded in manifests.
ALPHAS: list[float] = RDPAccountant.DEFAULT_ALPHAS + [80, 96, 128, 192, 256, 384, 512, 1024]


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


def epsilon_of(mechanisms: list[GaussianMechanism], delta: float) -> float:
    """The RDP accountant's epsilon at `delta` for all mechanisms composed."""
    check_delta(delta)
    history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms if m.steps > 0]
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta=delta, alphas=ALPHAS))


@dataclass
class Spend:
    """What a run (or a site over a whole study) has spent: accountant-composed Gaussian
    mechanisms plus any pure spends, reported at a target delta."""

    delta: float
    mechanisms: list[GaussianMechanism] = field(default_factory=list)
    pure: list[PureSpend] = field(default_factory=list)

    @property
    def accountant_delta(self) -> float:
        """The share of delta left to the RDP conversion once pure spends took theirs."""
        return self.delta - sum(p.delta for p in self.pure)

    @property
    def epsilon(self) -> float:
        check_delta(self.delta)
        check_delta(self.accountant_delta, "delta left to the accountant once the pure spends "
                                           f"took {sum(p.delta for p in self.pure):g} of it")
        return epsilon_of(self.mechanisms, self.accountant_delta) + sum(p.epsilon for p in self.pure)

    def per_mechanism(self) -> dict[str, float]:
        """Each mechanism's epsilon on its own at the same delta (they do not add up: the total
        is composed in RDP and is smaller than the sum)."""
        out = {m.name: epsilon_of([m], self.accountant_delta) for m in self.mechanisms}
        out.update({p.name: p.epsilon for p in self.pure})
        return out

    def to_dict(self) -> dict:
        return {
            "accountant": ACCOUNTANT,
            "alphas": ALPHAS,
            "opacus_version": opacus.__version__,
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


def _rdp(m: GaussianMechanism) -> np.ndarray:
    return rdp_analysis.compute_rdp(q=m.sample_rate, noise_multiplier=m.noise_multiplier,
                                    steps=m.steps, orders=ALPHAS)


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
    prior_rdp = sum((_rdp(m) for m in prior if m.steps > 0), np.zeros(len(ALPHAS)))

    def eps(sigma: float) -> float:
        rdp = prior_rdp + _rdp(GaussianMechanism("sgd", sigma, sample_rate, steps))
        return float(rdp_analysis.get_privacy_spent(orders=ALPHAS, rdp=rdp, delta=delta)[0])

    if budget <= 0 or epsilon_of(list(prior), delta) >= budget:
        raise BudgetExceeded(
            f"preprocessing already spends the whole budget epsilon={target_epsilon}"
        )
    lo, hi = 0.25, 1.0
    while eps(hi) > budget:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise BudgetExceeded(f"no noise level reaches epsilon={target_epsilon}")
    while hi / lo > 1 + rel_tolerance:
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if eps(mid) <= budget else (mid, hi)
    return hi


def histogram_noise_for(epsilon: float, delta: float) -> float:
    """Noise multiplier of a one-shot Gaussian mechanism that alone costs `epsilon` at `delta`."""
    check_budget(epsilon, delta)
    lo, hi = 0.1, 1.0
    while epsilon_of([GaussianMechanism("h", hi, 1.0, 1)], delta) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise BudgetExceeded(f"epsilon={epsilon} is too small to certify at delta={delta}")
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        ok = epsilon_of([GaussianMechanism("h", mid, 1.0, 1)], delta) <= epsilon
        lo, hi = (lo, mid) if ok else (mid, hi)
    return hi


def is_finite_budget(epsilon: float, delta: float) -> bool:
    try:
        check_budget(epsilon, delta)
    except InvalidBudget:
        return False
    return True
