"""Turn a privacy budget into a concrete DP schedule, up front for the whole study.

The noise of every DP-SGD step is calibrated once for ALL planned steps (of every round) composed
with the preprocessing histograms, so the total lands at the target epsilon. Planning per round
and composing afterwards (Flower's Opacus example) either overspends or reports one round only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .privacy import GaussianMechanism, calibrate_noise, histogram_noise_for

if TYPE_CHECKING:  # torch and Opacus: not for a command line that only shows its options
    from .dp_training import DPSGDConfig


@dataclass(frozen=True)
class TrainingPlan:
    """Knobs a data scientist may turn; the defaults were tuned on Adult (see benchmarks/)."""

    steps: int = 480                 # DP-SGD steps in total (over all rounds)
    sample_rate: float = 0.125       # Poisson rate; large batches help utility under DP
    max_batch: int = 8192            # caps the expected batch on big tables (memory)
    max_grad_norm: float = 1.0
    preprocessing_share: float = 0.1  # share of epsilon for the DP histograms
    max_bins: int = 20

    def to_dict(self) -> dict:
        return asdict(self)


def preprocessing_noise(plan: TrainingPlan, epsilon: float, delta: float) -> float:
    return histogram_noise_for(plan.preprocessing_share * epsilon, delta)


def evaluation_noise(share: float, epsilon: float, delta: float) -> float | None:
    """The noise multiplier of the evaluation histograms under budget (epsilon, delta): the
    study's evaluation `share` of epsilon; None when the study shares none."""
    if share > 0:
        return histogram_noise_for(share * epsilon, delta)
    return None


def sample_rate_for(plan: TrainingPlan, noisy_rows: float) -> float:
    """Sample rate from the DP row estimate: the exact count is never used, so the recorded rate
    reveals nothing the histograms did not."""
    return min(plan.sample_rate, plan.max_batch / max(noisy_rows, 1.0), 1.0)


def dp_sgd_config(plan: TrainingPlan, epsilon: float, delta: float, noisy_rows: float,
                  prior: list[GaussianMechanism], steps: int | None = None) -> "DPSGDConfig":
    """Noise for `plan.steps` steps such that they, composed with `prior`, spend `epsilon`."""
    from .dp_training import DPSGDConfig

    q = sample_rate_for(plan, noisy_rows)
    sigma = calibrate_noise(epsilon, delta, q, plan.steps, prior)
    return DPSGDConfig(steps=plan.steps if steps is None else steps, sample_rate=q,
                       noise_multiplier=sigma, max_grad_norm=plan.max_grad_norm,
                       expected_batch=expected_batch(q, noisy_rows))


def expected_batch(sample_rate: float, noisy_rows: float) -> float:
    """The Poisson batch DP-SGD normalises by: the rate times the DP row estimate (or a public
    size), never the exact count."""
    return max(1.0, sample_rate * noisy_rows)
