"""DP-SGD as the accountant analyses it: Poisson batches, per-row clipping (equal to a per-row
reference), Gaussian noise of noise_multiplier * C on the sum, divided by the DP expected batch,
and a noised step for every planned step, empty batches included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from synthpool.common import dp_training
from synthpool.common.dp_training import DPSGDConfig, NoisedGradient, dp_sgd, poisson_batches
from synthpool.common.per_sample_clipping import BookKeeping, OpacusPerSample, clipper
from synthpool.common.planning import TrainingPlan, dp_sgd_config, expected_batch
from synthpool.common.privacy import GaussianMechanism


class _Reconstruction(torch.nn.Module):
    """Per-row squared error (one loss per row when `reduction` is "none")."""

    reduction = "mean"

    def forward(self, out, x):
        loss = ((out - x) ** 2).sum(1)
        return loss.mean() if self.reduction == "mean" else loss


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))


class _Shared(nn.Module):
    """One layer applied twice per row and one over a sequence of positions: the ghost-norm
    path, where a row's gradient sums over several calls."""

    def __init__(self):
        super().__init__()
        self.inner, self.seq = nn.Linear(3, 3), nn.Linear(3, 3, bias=False)

    def forward(self, x):
        h = self.inner(torch.relu(self.inner(x)))
        return h + self.seq(torch.stack([x, h], 1)).sum(1)


class _Normed(nn.Module):
    """A weight outside any linear layer: Opacus' per-sample hooks do the clipping."""

    def __init__(self):
        super().__init__()
        self.lin, self.norm = nn.Linear(3, 3), nn.LayerNorm(3)

    def forward(self, x):
        return self.norm(self.lin(x))


def _reference(net, criterion, x, max_grad_norm):
    """The sum over rows of each row's own gradient (torch.func, one row at a time), clipped."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def row_loss(p, row):
        return criterion(functional_call(net, p, (row[None],)), row[None]).sum()

    per_row = vmap(grad(row_loss), in_dims=(None, 0))(params, x)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_row.values()))
    scale = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("i,i...->...", scale, g) for k, g in per_row.items()}, norms


@pytest.mark.parametrize("make, kind", [(_net, BookKeeping), (_Shared, BookKeeping),
                                        (_Normed, OpacusPerSample)])
def test_clipped_sums_equal_a_per_row_reference(make, kind):
    torch.manual_seed(1)
    net, criterion, x = make(), _Reconstruction(), 3 * torch.randn(64, 3)
    criterion.reduction = "none"
    expected, norms = _reference(net, criterion, x, 1.0)
    assert (norms > 1.0).float().mean() > 0.5  # clipping bites for most rows
    engine = clipper(net, 1.0)
    assert isinstance(engine, kind)
    engine.clipped_sum(lambda: criterion(net(x), x))
    for name, p in net.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-5), name


def _reference_row_by_row(net, criterion, x, max_grad_norm):
    """_reference by one backward pass per row (for networks vmap cannot run: token lookups)."""
    params = dict(net.named_parameters())
    per_row = {k: [] for k in params}
    for i in range(len(x)):
        net.zero_grad()
        criterion(net(x[i:i + 1]), x[i:i + 1]).sum().backward()
        for k, p in params.items():
            per_row[k].append(p.grad.clone())
    per_row = {k: torch.stack(v) for k, v in per_row.items()}
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_row.values()))
    scale = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("i,i...->...", scale, g) for k, g in per_row.items()}, norms


@pytest.mark.parametrize("context", ["one-hot", "embedding"])
def test_the_default_familys_network_is_clipped_per_row_exactly(context):
    """The autoregressive network as a job trains it: heads over prefixes of one input, or
    over sums of token embeddings through batched per-head layers (book-kept layers)."""
    from synthpool.common.generators.registry import build
    from synthpool.common.stats import collect_stats
    from synthpool.common.transforms import TableTransformer
    from tests.tables import make_clinic_table

    df, schema = make_clinic_table(400, seed=3)
    t = TableTransformer(schema, collect_stats(schema, df, 20.0, np.random.default_rng(0)))
    gen = build("autoregressive", t, {"context": context}, seed=0)
    x = t.encode(df)[:48]
    gen.loss.reduction = "none"
    expected, norms = _reference_row_by_row(gen.net, gen.loss, x, 0.5)
    assert (norms > 0.5).float().mean() > 0.5  # clipping bites
    engine = clipper(gen.net, 0.5)
    assert isinstance(engine, BookKeeping)
    engine.clipped_sum(lambda: gen.loss(gen.net(x), x))
    for name, p in gen.net.named_parameters():
        assert torch.allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6), name


def test_a_token_embedding_is_clipped_exactly_when_a_row_repeats_a_token():
    """The families' rows never repeat a token (one per column), but a plug-in's may: then a
    row's gradient adds several output gradients into one vector, and its norm is not the sum
    of theirs."""
    from synthpool.common.generators.layers import TokenEmbedding

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = TokenEmbedding(6, 3, std=1.0)

        def forward(self, idx):
            return self.embed(idx.T).sum(0)

    class Loss(nn.Module):
        reduction = "none"

        def forward(self, out, idx):
            return (out ** 2).sum(1)

    idx = torch.tensor([[0, 1, 2], [3, 3, 4], [5, 5, 5], [1, 0, 1]])
    net, loss = Bag(), Loss()
    expected, norms = _reference_row_by_row(net, loss, idx, 1.0)
    clipper(net, 1.0).clipped_sum(lambda: loss(net(idx), idx))
    assert torch.allclose(net.embed.weight.grad, expected["embed.weight"], atol=1e-6)


def test_the_noise_is_gaussian_of_noise_multiplier_times_c_over_the_expected_batch():
    """An empty batch's step is noise alone: every coordinate N(0, (sigma C / B)^2)."""
    net = nn.Linear(200, 100)
    noised = NoisedGradient(net, 1.5, 2.0, expected_batch=4.0, noise=torch.Generator())
    draws = []
    for _ in range(5):
        noised(lambda: None, rows=0)
        draws += [net.weight.grad.flatten(), net.bias.grad]
    values = torch.cat(draws)
    assert abs(float(values.mean())) < 0.01
    assert float(values.std()) == pytest.approx(1.5 * 2.0 / 4.0, rel=0.02)
    # Two steps draw different noise (the generator is not reseeded).
    assert not torch.equal(draws[0], draws[2])


def test_a_noiseless_step_is_the_clipped_sum_over_the_expected_batch():
    torch.manual_seed(2)
    net, criterion, x = _net(), _Reconstruction(), 3 * torch.randn(32, 3)
    criterion.reduction = "none"
    reference, _ = _reference(net, criterion, x, 1.0)
    noised = NoisedGradient(net, 0.0, 1.0, expected_batch=20.0, noise=torch.Generator())
    noised(lambda: criterion(net(x), x), rows=len(x))
    for name, p in net.named_parameters():
        assert torch.allclose(p.grad, reference[name] / 20.0, atol=1e-6), name


def test_poisson_batches_hold_each_row_independently_at_the_sample_rate():
    n, q, draws = 400, 0.05, 3000
    data = torch.arange(n, dtype=torch.float32)[:, None]
    batches = poisson_batches(data, DPSGDConfig(1, q, 1.0, 1.0))
    counts, sizes = np.zeros(n), []
    for _ in range(draws):
        rows = next(batches)[:, 0].long().numpy()
        assert len(set(rows)) == len(rows)  # no row twice in a batch
        counts[rows] += 1
        sizes.append(len(rows))
    # Per row: Binomial(draws, q), mean 150, sd 11.9; the batch size: Binomial(n, q), so the
    # mean count over rows has sd sqrt(draws * n * q * (1 - q)) / n = 0.6 (the sampler's
    # secret randomness is not seeded): 5 sd.
    assert abs(counts.mean() - draws * q) < 3.0
    assert counts.min() > draws * q - 5 * 11.9 and counts.max() < draws * q + 5 * 11.9
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.1)
    # The first and last rows are as likely as any (no edge effect in the gap sampler).
    assert counts[0] > 90 and counts[-1] > 90
    assert len(next(poisson_batches(data, DPSGDConfig(1, 1.0, 1.0, 1.0)))) == n


@pytest.fixture
def normalisers(monkeypatch):
    """The expected batch each job's noisy gradient sum is divided by."""
    seen: list[float] = []
    init = NoisedGradient.__init__

    def spy(self, module, noise_multiplier, max_grad_norm, expected_batch, noise):
        seen.append(expected_batch)
        init(self, module, noise_multiplier, max_grad_norm, expected_batch, noise)

    monkeypatch.setattr(dp_training.NoisedGradient, "__init__", spy)
    return seen


def test_empty_poisson_batches_take_noise_only_steps(normalisers):
    """At rate 1e-3 on 50 rows about 95% of the batches are empty; every step is still taken
    and noise moves the weights, as the accountant (which charges every step) assumes."""
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    dp = DPSGDConfig(steps=20, sample_rate=1e-3, noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch=2.0)
    stats = dp_sgd(net, _Reconstruction(), torch.randn(50, 3), dp, lr=1e-2, device="cpu")
    assert stats.steps == 20 and stats.rows_seen < 20
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, net.parameters()))
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # The normaliser is the one passed in (q x the DP estimate), not q x the exact 50 rows.
    assert normalisers == [2.0]


def test_the_normaliser_comes_from_the_dp_row_estimate(normalisers, monkeypatch):
    from synthpool.common import planning

    monkeypatch.setattr(planning, "calibrate_noise", lambda *a, **k: 1.0)  # not under test
    plan = TrainingPlan(steps=4, sample_rate=0.25)
    prior = [GaussianMechanism("preprocessing histograms", 20.0, 1.0, 1)]
    dp = dp_sgd_config(plan, 3.0, 1e-5, 212.7, prior)
    assert dp.expected_batch == pytest.approx(0.25 * 212.7) == expected_batch(0.25, 212.7)
    dp_sgd(_net(), _Reconstruction(), torch.randn(200, 3), dp, lr=1e-2, device="cpu")
    assert normalisers == [pytest.approx(0.25 * 212.7)]


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
