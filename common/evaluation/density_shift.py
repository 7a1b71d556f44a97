"""Density-ratio shift: a heuristic for how much a finished synthetic table leans towards its
training rows, bounded with a Chebyshev step.

What this is: a density-ratio HEURISTIC of ours, inspired by the Chebyshev step of Triastcyn &
Faltings ("Generating Artificial Data for Private Deep Learning", arXiv 1803.03148). It is NOT
their estimator. Theirs measures the privacy loss between a release made from D and one made from
D' (the same data without some records), which needs a generator retrained without those records:
that is `empirical_privacy.estimate` (run by `synthpool synth --empirical-privacy`). This one
needs only the released rows, and so compares members with non-members of ONE release instead:

    ell(x)    = log q_syn(x) - log p_ref(x)     Gaussian kernel densities: the synthetic rows, and
                                                real rows the generator never saw (the reference)
    mu_hat    = mean ell(members) - mean ell(non-members)
                (how much more the synthetic data crowds around people it was trained on than
                 around people it was not: the generator's general bias cancels out)
    sigma_hat = sqrt(max(0, var ell(members) - var ell(non-members) - 2 SE))
                (spread beyond the non-members' and beyond estimator noise: a heuristic, NOT the
                 standard deviation of a privacy-loss variable)
    eps_hat(delta_hat) = max(0, mu_hat + sigma_hat / sqrt(delta_hat))
                (two-sided Chebyshev, P(|L - mu| >= sigma / sqrt(delta)) <= delta, applied to
                 the plug-in mu_hat and sigma_hat; no confidence level is attached)

ell is not a privacy-loss random variable (no neighbouring data sets are compared), so eps_hat is
a score on an epsilon-like scale, not an epsilon. What it shows: a record-level, average-case
sensitivity of the released rows on this data set; a copying or overfitting generator gets a large
eps_hat, an independent-columns one ~0.
What it does NOT prove: any differential-privacy guarantee, or even an upper bound (sigma_hat can
understate the spread; outliers, the people most at risk, are averaged away; the kernel density
limits what it sees). A small eps_hat never replaces the formal (epsilon, delta) of the training.

The result is reported under the key "empirical_privacy" of privacy_risk: the name is on the wire
between sites and coordinator, so it stays, whatever the method is called in prose.
"""

from __future__ import annotations

import math

import numpy as np

from .empirical_privacy import DELTAS, HEADLINE_DELTA, chebyshev_epsilon

NOISE_SE = 2.0  # excess variance must exceed this many standard errors of the difference to count


def _var_se2(x: np.ndarray) -> float:
    """Squared standard error of the sample variance: (m4 - s^4) / n."""
    c = x - x.mean()
    return float(max(0.0, (np.mean(c ** 4) - np.mean(c ** 2) ** 2) / x.size))


def density_shift(ell_members: np.ndarray, ell_nonmembers: np.ndarray) -> dict:
    m = np.asarray(ell_members, float)
    n = np.asarray(ell_nonmembers, float)
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size < 2 or n.size < 2:
        return {"skipped": "too few records"}
    mu = float(m.mean() - n.mean())
    mu_se = math.sqrt(m.var(ddof=1) / m.size + n.var(ddof=1) / n.size)
    excess = m.var(ddof=1) - n.var(ddof=1) - NOISE_SE * math.sqrt(_var_se2(m) + _var_se2(n))
    sigma = float(math.sqrt(max(0.0, excess)))
    return {
        "method": "density-ratio shift (a heuristic): members' minus non-members' log kernel-density "
                  "ratio of synthetic to reference rows, with a Chebyshev bound; not a privacy-loss "
                  "estimate between neighbouring data sets",
        "expected_privacy_loss": mu,
        "expected_privacy_loss_se": mu_se,
        "excess_std": sigma,
        "n_members": int(m.size),
        "n_nonmembers": int(n.size),
        "epsilon_hat": chebyshev_epsilon(mu, sigma, HEADLINE_DELTA),
        "delta_hat": HEADLINE_DELTA,
        "bounds": [{"delta_hat": d, "epsilon_hat": chebyshev_epsilon(mu, sigma, d)} for d in DELTAS],
    }
