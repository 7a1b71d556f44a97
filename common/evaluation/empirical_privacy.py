"""An empirical privacy estimate in the manner of Triastcyn & Faltings, for a finished table.

Source: A. Triastcyn and B. Faltings, "Generating Artificial Data for Private Deep Learning"
(arXiv 1803.03148, v1 titled "Generating Differentially Private Datasets Using GANs"; CEUR
Vol-2335, AAAI Spring Symposium PAL 2019). They estimate, after training, the EXPECTED privacy
loss of releasing artificial data (a KL divergence between the outputs on neighbouring data sets)
and its spread, and turn the two into a DP-like (epsilon, delta) statement with Chebyshev's
inequality: an average-case notion (Triastcyn later called it average-case DP), not a worst case.
Their exact estimator (which model's outputs, how D' is formed, which confidence correction) is
NOT reproduced here: we could not check it against the paper's text, so nothing below should be
read as their numbers. What we compute instead, from the released rows only:

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

What it shows: an average-case, record-level sensitivity of the released rows on this data set; a
copying or overfitting generator gets a large eps_hat, an independent-columns one ~0.
What it does NOT prove: any differential-privacy guarantee, or even an upper bound (sigma_hat can
understate the spread; outliers, the people most at risk, are averaged away; the kernel density
limits what it sees). A small eps_hat never replaces the formal (epsilon, delta) of the training.
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
    """The eps_hat that two-sided Chebyshev gives for share delta_hat: mu + sigma / sqrt(delta)."""
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
        "method": "empirical privacy in the manner of Triastcyn & Faltings (2019): black-box "
                  "density-ratio estimate with a Chebyshev bound (not their exact estimator)",
        "expected_privacy_loss": mu,
        "expected_privacy_loss_se": mu_se,
        "excess_std": sigma,
        "n_members": int(m.size),
        "n_nonmembers": int(n.size),
        "epsilon_hat": chebyshev_epsilon(mu, sigma, HEADLINE_DELTA),
        "delta_hat": HEADLINE_DELTA,
        "bounds": [{"delta_hat": d, "epsilon_hat": chebyshev_epsilon(mu, sigma, d)} for d in DELTAS],
    }
