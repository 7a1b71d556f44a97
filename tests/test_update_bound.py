"""The update bound the coordinator rejects updates by (common/update_bound.py) holds for torch's
Adam, whatever the gradients, and is tight for the gradients that make Adam step furthest."""

import numpy as np
import pytest
import torch

from synthpool.common.update_bound import ADAM_BETAS, adam_step_bound, max_displacement


def _adam_path(grads: np.ndarray, lr: float) -> np.ndarray:
    """Positions of one weight (per column) after each Adam step fed `grads` (steps x weights)."""
    x = torch.zeros(grads.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr, betas=ADAM_BETAS)
    path = []
    for g in grads:
        opt.zero_grad()
        x.grad = torch.as_tensor(g, dtype=torch.float64)
        opt.step()
        path.append(x.detach().numpy().copy())
    return np.array(path)


@pytest.mark.parametrize("kind", ["normal", "cauchy", "growing", "spiky"])
def test_no_gradient_sequence_moves_a_weight_past_the_bound(kind):
    rng = np.random.default_rng(3)
    steps, lr = 300, 5e-3
    if kind == "normal":
        grads = rng.normal(size=(steps, 64))
    elif kind == "cauchy":  # heavy tails, like DP noise on a tiny batch
        grads = rng.standard_cauchy(size=(steps, 64))
    elif kind == "growing":  # the sequence Cauchy-Schwarz is tight for, at many rates
        rates = np.linspace(1.0, 1.2, 64)
        grads = rates[None, :] ** np.arange(steps)[:, None]
    else:  # long quiet stretches, then a burst
        grads = np.where(rng.random((steps, 64)) < 0.02, 1e3, 1e-6) * rng.choice([-1, 1], (steps, 64))
    path = np.abs(_adam_path(grads, lr))
    for k in (1, 10, 100, steps):
        assert path[k - 1].max() <= max_displacement(lr, k)


def test_the_step_bound_is_reached():
    t = 200
    b1, b2 = ADAM_BETAS
    worst = (b1 / b2) ** np.arange(t)[::-1]  # g_i proportional to (b1/b2)^(t-i)
    path = _adam_path(worst[:, None], lr=1.0)
    last_step = path[-1, 0] - path[-2, 0]
    assert abs(last_step) == pytest.approx(adam_step_bound(t), rel=1e-3)
