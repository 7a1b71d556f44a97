"""The DP-critic GAN family: only the critic's term over real rows is clipped and noised, once; the
generated-row term enters exactly; and the family runs through single-site synthesis like any
other (its charge is the accountant's for the job's one subsampled Gaussian)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from synthpool.common.generators.gan import BETAS, Critic, PrivateCritic, RealRowLoss


WIDTH, CLIP, BATCH = 6, 0.5, 8.0


def _critic(noise_multiplier=0.0, seed=0, target=0):
    """A critic over rows of WIDTH features and a `target`-class target (0: none)."""
    torch.manual_seed(seed)
    net = Critic(WIDTH, target, hidden=5, depth=1)
    private = PrivateCritic.wrap(net, torch.optim.SGD(net.parameters(), lr=0.1),
                                 RealRowLoss(WIDTH), noise_multiplier=noise_multiplier, max_grad_norm=CLIP,
                                 expected_batch=BATCH, noise=torch.Generator().manual_seed(1))
    return net, private


def _real_loss(out, row):
    """-log sigmoid(score) + the classifier's cross-entropy of the row's target, written out."""
    loss = F.softplus(-out[0, 0])
    if out.shape[1] > 1:
        loss = loss - F.log_softmax(out[0, 1:], 0)[int(row[WIDTH:].argmax())]
    return loss


def _rows(n, target, scale):
    x = torch.randn(n, WIDTH) * scale
    if not target:
        return x
    return torch.cat([x, F.one_hot(torch.randint(target, (n,)), target).float()], 1)


def _reference(net, real, fake):
    """Per-row gradients of the real term by one backward each, clipped to CLIP, summed, over
    the expected batch; plus the plain gradient of the generated-row term's mean."""
    params = list(net.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x in real:
        g = torch.autograd.grad(_real_loss(net(x[None]), x), params)
        norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
        factor = min(1.0, CLIP / (float(norm) + 1e-6))
        total = [t + gi * factor for t, gi in zip(total, g)]
    fake_grad = torch.autograd.grad(F.softplus(net(fake)[:, 0]).mean(), params)
    return [t / BATCH + f for t, f in zip(total, fake_grad)]


@pytest.mark.parametrize("target", [0, 3])
def test_only_real_rows_are_clipped_and_the_generated_term_enters_exactly(target):
    """With a target, the auxiliary classifier's loss on real rows is inside the clipped term;
    on generated rows only the score enters (the classifier never learns from them)."""
    net, critic = _critic(target=target)
    real = _rows(7, target, 3)  # large rows: their gradients exceed the clip norm
    fake = _rows(12, target, 5)
    got = critic.gradient(real, fake)
    want = _reference(net, real, fake)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # The generated term is not clipped: its gradient alone is larger than any clipped sum.
    fake_norm = torch.sqrt(sum((f ** 2).sum() for f in torch.autograd.grad(
        F.softplus(net(fake)[:, 0]).mean(), list(net.parameters()), allow_unused=True)
        if f is not None))
    assert fake_norm > CLIP * len(real) / BATCH


def test_noise_is_added_once_at_the_charged_scale_whatever_the_generated_rows():
    sigma = 2.0
    net, critic = _critic(sigma)
    real, fake = torch.randn(5, WIDTH), torch.randn(9, WIDTH)
    exact = _reference(net, real, fake)
    draws = torch.stack([torch.cat([(g - e).flatten() for g, e in
                                    zip(critic.gradient(real, fake), exact)])
                         for _ in range(400)])
    # Noise of sigma * clip on the clipped sum, over the expected batch: the noise the accountant
    # was told of, not twice it (the generated term noised too) nor none.
    assert draws.std().item() == pytest.approx(sigma * CLIP / BATCH, rel=0.06)
    assert draws.mean().abs().item() < 0.01


def test_an_empty_poisson_batch_still_gets_the_noise():
    net, critic = _critic(1.0)
    fake = torch.randn(4, WIDTH)
    fake_grad = torch.autograd.grad(F.softplus(net(fake)[:, 0]).mean(), list(net.parameters()))
    draws = torch.stack([torch.cat([(g - f).flatten() for g, f in zip(
        critic.gradient(torch.zeros(0, WIDTH), fake), fake_grad)]) for _ in range(300)])
    assert draws.std().item() == pytest.approx(CLIP / BATCH, rel=0.08)


def test_the_gan_runs_single_site_and_is_charged_by_the_accountant(tmp_path):
    from accounting import recompute_epsilon
    from tables import synth_clinic

    result, out, schema = synth_clinic(tmp_path, 1500, 3, "--epsilon", "4", "--rows", "600",
                                       "--steps", "40", "--family", "gan", "--model", "hidden=32")
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["model"]["family"] == "gan"
    assert manifest["model"]["hyperparameters"]["hidden"] == 32
    assert "real rows only" in manifest["training"]["method"]
    assert manifest["privacy"]["epsilon"] <= 4 + 1e-9
    assert recompute_epsilon(manifest["privacy"]) == pytest.approx(manifest["privacy"]["epsilon"],
                                                          rel=1e-9)
    rows = pd.read_csv(out)
    assert len(rows) == 600 and list(rows.columns) == schema.names
    for name in schema.names:
        col = schema.column(name)
        if hasattr(col, "categories"):
            assert set(rows[name].dropna()) <= set(map(str, col.categories)) | set(col.categories)


def test_the_gan_federates_and_its_updates_pass_the_coordinators_checks(tmp_path, flower_task_identity):
    """Two sites' real ClientApps train both parts; the coordinator's update check (by the
    family's own bound: the generator takes `generator_steps` Adam steps per critic step)
    accepts every update, and the pooled generator samples the release."""
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.common.update_bound import max_displacement
    from synthpool.common.wire import model_setting
    from synthpool.coordinator.serverapp import release
    from synthpool.local_federation import split_rows
    from synthpool.coordinator.serverapp.study import run_study
    from test_federation_units import FakeGrid, ledger_of, make_run, write_site

    slices = split_rows(ADULT_TRAIN, tmp_path / "data", 2, rows_per_site=800)
    configs = {1: write_site(tmp_path, "a", slices[0]), 2: write_site(tmp_path, "b", slices[1])}
    run = make_run(tmp_path, num_rounds=2, expected_sites=2, family="gan",
                   model=model_setting({"hidden": 16, "critic_hidden": 16, "latent": 8,
                                        "generator_steps": 2}))
    assert run.max_update == max_displacement(1e-3, 2 * run.local_steps, BETAS)
    run_study(FakeGrid(configs), run)
    manifest = release.read_manifest(run.release_path)
    assert manifest["model"]["family"] == "gan"
    assert manifest["training"]["rounds"] == 2
    assert "real rows only" in manifest["training"]["dp"]
    data = pd.read_csv(run.release_path / "synthetic.csv")
    assert len(data) == 300 and set(data["income"]) <= {"<=50K", ">50K"}
    for cfg in configs.values():  # each site charged its DP-SGD rounds, as for any family
        charged = [m for c in ledger_of(cfg).charges("adult") for m in c.mechanisms]
        assert sum(m.steps for m in charged if m.name.startswith("dp-sgd")) == 2 * run.local_steps
