"""How far one round of local training can move any weight: the bound the coordinator checks every
plain update against, and the range SecAgg+ quantizes a site's update into.

Per-sample clipping bounds each gradient, not the step. The step is bounded by the optimizer:
Adam moves a coordinate by lr * m_hat_t / (sqrt(v_hat_t) + eps), and by Cauchy-Schwarz on
m_t = (1-b1) sum_i b1^(t-i) g_i against v_t = (1-b2) sum_i b2^(t-i) g_i^2, with g = b1^2/b2 < 1,

    |m_hat_t / sqrt(v_hat_t)| <= (1-b1)/sqrt(1-b2) * sqrt((1-g^t)/(1-g)) * sqrt(1-b2^t)/(1-b1^t)

whatever the gradients are, DP noise included (1 at t = 1, about 7.3 for large t at the default
betas). A round of k steps from the global weights moves a coordinate by at most
lr * sum_{t<=k} B(t); FedProx's pull towards the global weights only shrinks that. An update that
moved further was not produced by the training the study configured (a bug or a hostile site).
Each round starts a fresh optimizer (a fresh ClientApp process), so t restarts at 1.
"""

from __future__ import annotations

import math

import numpy as np

ADAM_BETAS = (0.9, 0.999)
# float32 weights: rounding of the sum of k steps, relative and absolute.
_SLACK = (1e-4, 1e-6)


def adam_step_bound(t: int, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """The largest |m_hat / sqrt(v_hat)| Adam can reach at step t (1-based)."""
    b1, b2 = betas
    g = b1 * b1 / b2
    if not (0 <= b1 < 1 and 0 < b2 < 1 and g < 1):
        raise ValueError(f"no step bound for Adam betas {betas} (needs b1^2 < b2)")
    return ((1 - b1) / math.sqrt(1 - b2) * math.sqrt((1 - g ** t) / (1 - g))
            * math.sqrt(1 - b2 ** t) / (1 - b1 ** t))


def max_displacement(lr: float, steps: int, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """The most any weight can move in `steps` Adam steps at learning rate `lr`."""
    bound = lr * sum(adam_step_bound(t, betas) for t in range(1, steps + 1))
    return bound * (1 + _SLACK[0]) + _SLACK[1]


def displacement_problem(weights, start, max_update: float) -> str:
    """Why `weights` cannot be one round of training from `start` ('' if they can): checked by
    the coordinator on a plain update and by a site on its own update before SecAgg+ masks it."""
    moved = max((float(np.max(np.abs(np.asarray(w, np.float64) - np.asarray(g, np.float64)),
                               initial=0)) for w, g in zip(weights, start)), default=0.0)
    if moved > max_update:
        return (f"update moves a weight by {moved:.4g}, more than the {max_update:.4g} that the "
                "round's learning rate and local steps allow")
    return ""
