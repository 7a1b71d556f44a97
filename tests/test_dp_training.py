"""DP-SGD's two details the accountant depends on: the normaliser and empty Poisson batches."""

from __future__ import annotations

import pytest
import torch
from opacus.optimizers.optimizer import DPOptimizer

from synthpool.common.dp_training import DPSGDConfig, dp_sgd
from synthpool.common.planning import TrainingPlan, dp_sgd_config, expected_batch
from synthpool.common.privacy import GaussianMechanism


class _Reconstruction(torch.nn.Module):
    """Per-row squared error; Opacus sets `reduction` when it wraps the criterion."""

    reduction = "mean"

    def forward(self, out, x):
        loss = ((out - x) ** 2).sum(1)
        return loss.mean() if self.reduction == "mean" else loss


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


@pytest.fixture
def normalisers(monkeypatch):
    """The expected batch size Opacus divides each noisy gradient sum by, step by step."""
    seen: list[float] = []
    scale = DPOptimizer.scale_grad

    def spy(self):
        seen.append(self.expected_batch_size)
        scale(self)

    monkeypatch.setattr(DPOptimizer, "scale_grad", spy)
    return seen


def test_empty_poisson_batches_take_noise_only_steps_under_ghost_clipping(normalisers):
    """At rate 1e-3 on 50 rows about 95% of the batches are empty. Ghost clipping used to fail
    on the first one (p.grad None); now every step is taken and noise moves the weights, as the
    accountant (which charges every step) assumes."""
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    dp = DPSGDConfig(steps=20, sample_rate=1e-3, noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch=2.0)
    stats = dp_sgd(net, _Reconstruction(), torch.randn(50, 3), dp, lr=1e-2, device="cpu")
    assert stats.steps == 20 and stats.rows_seen < 20
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, net.parameters()))
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # The normaliser is the one passed in (q x the DP estimate), not q x the exact 50 rows.
    assert normalisers == [2.0] * 20


def test_the_normaliser_comes_from_the_dp_row_estimate(normalisers, monkeypatch):
    from synthpool.common import planning

    monkeypatch.setattr(planning, "calibrate_noise", lambda *a, **k: 1.0)  # not under test
    plan = TrainingPlan(steps=4, sample_rate=0.25)
    prior = [GaussianMechanism("preprocessing histograms", 20.0, 1.0, 1)]
    dp = dp_sgd_config(plan, 3.0, 1e-5, 212.7, prior)
    assert dp.expected_batch == pytest.approx(0.25 * 212.7) == expected_batch(0.25, 212.7)
    dp_sgd(_net(), _Reconstruction(), torch.randn(200, 3), dp, lr=1e-2, device="cpu")
    assert normalisers == [pytest.approx(0.25 * 212.7)] * 4


def test_a_job_with_averaging_returns_the_moving_average_of_its_noised_iterates():
    """The returned weights are the warmed-up exponential average of every iterate (recorded
    here after each step), not the last one: post-processing of what DP-SGD produced, inside
    the iterates' hull, so the update bound holds for it."""
    net = _net()
    start = [p.detach().clone() for p in net.parameters()]
    iterates: list[list[torch.Tensor]] = []

    def record(step, total, loss):
        iterates.append([p.detach().clone() for p in net.parameters()])

    dp = DPSGDConfig(steps=30, sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch=20.0)
    dp_sgd(net, _Reconstruction(), torch.randn(40, 3), dp, lr=1e-2, device="cpu",
           progress=record, average=0.9)
    expected = [s.clone() for s in start]
    for t, weights in enumerate(iterates, start=1):
        decay = min(0.9, (1 + t) / (10 + t))
        expected = [e + (1 - decay) * (w - e) for e, w in zip(expected, weights)]
    final = list(net.parameters())
    assert all(torch.allclose(p.detach(), e, atol=1e-6) for p, e in zip(final, expected))
    assert not all(torch.allclose(p.detach(), w) for p, w in zip(final, iterates[-1]))
    # Each coordinate stays within the furthest any iterate went from the start.
    for p, s, *ws in zip(final, start, *iterates):
        reach = torch.stack([(w - s).abs() for w in ws]).amax(0)
        assert ((p.detach() - s).abs() <= reach + 1e-6).all()
