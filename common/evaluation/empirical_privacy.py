"""The empirical privacy estimate of Triastcyn & Faltings, adapted to a finished synthetic table.

Source: A. Triastcyn and B. Faltings, "Generating Artificial Data for Private Deep Learning"
(PAL workshop at AAAI 2019; arXiv 1803.03148). Their idea, in the form we use:

1. The privacy loss of a record x is how much the output distribution of the data-release
   mechanism changes when x is in the training set D versus not (D' = D without x):
   L(x) = log q_D(o) / q_D'(o), whose expectation over outputs o ~ q_D is the KL divergence
   KL(q_D || q_D') -- the "expected privacy loss" that DP bounds by epsilon.
2. Instead of a worst case over all D, D' (what DP proves), estimate the mean mu and variance
   sigma^2 of the loss over a sample of records.
3. Chebyshev's inequality, P(|L - mu| >= k sigma) <= 1/k^2, turns them into a DP-like pair:
   the loss exceeds eps_hat = mu + k sigma for at most a share delta_hat = 1/k^2 of records.
   (Plug-in estimates of mu and sigma are used; with thousands of records the sampling error of
   those is small next to k sigma.)

Adaptation (the paper retrains/inspects the generator; we only have its output): q_D is estimated
by a Gaussian kernel density on the synthetic rows, and the counterfactual q_D' at a record by the
density that a reference sample of the population (real rows the generator never saw) puts there,
so the per-record statistic is ell(x) = log q_syn(x) - log p_ref(x). A generator's own bias makes
ell non-zero for everybody; the records it never saw (non-members) measure that, so

    mu_hat    = mean ell(members) - mean ell(non-members)          (expected privacy loss)
    sigma_hat = sqrt(max(0, var ell(members) - var ell(non-members) - 2 SE))
                                         (spread beyond estimator noise; ell is heavy-tailed, so a
                                          difference of variances within 2 standard errors of 0
                                          is sampling noise and counts as 0)
    eps_hat(delta_hat) = max(0, mu_hat + sigma_hat / sqrt(delta_hat))

What it shows: an average-case, record-level sensitivity of the released rows, at the data set we
have; a copying or overfitting generator gets a large eps_hat, an independent-columns one ~0.
What it does NOT prove: any differential-privacy guarantee. It is an estimate on one data set,
averaged over records (outliers, the people most at risk, can exceed it), and limited by the
density estimator; a small eps_hat never replaces the formal (epsilon, delta) of the training.
"""

from __future__ import annotations

import math

import numpy as np

DELTAS = (0.1, 0.05, 0.01)
HEADLINE_DELTA = 0.05
NOISE_SE = 2.0  # excess variance must exceed this many standard errors of the difference to count


def _var_se2(x: np.ndarray) -> float:
    """Squared standard error of the sample variance: (m4 - s^4) / n."""
    c = x - x.mean()
    return float(max(0.0, (np.mean(c ** 4) - np.mean(c ** 2) ** 2) / x.size))


def chebyshev_epsilon(mu: float, sigma: float, delta_hat: float) -> float:
    """Smallest eps_hat with P(L >= eps_hat) <= delta_hat by Chebyshev: mu + sigma / sqrt(delta)."""
    return max(0.0, mu + sigma / math.sqrt(delta_hat))


def empirical_privacy(ell_members: np.ndarray, ell_nonmembers: np.ndarray) -> dict:
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
        "method": "Triastcyn & Faltings (2019) empirical privacy, black-box density-ratio adaptation",
        "expected_privacy_loss": mu,
        "expected_privacy_loss_se": mu_se,
        "excess_std": sigma,
        "n_members": int(m.size),
        "n_nonmembers": int(n.size),
        "epsilon_hat": chebyshev_epsilon(mu, sigma, HEADLINE_DELTA),
        "delta_hat": HEADLINE_DELTA,
        "bounds": [{"delta_hat": d, "epsilon_hat": chebyshev_epsilon(mu, sigma, d)} for d in DELTAS],
    }
