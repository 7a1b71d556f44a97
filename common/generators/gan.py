"""GAN with a differentially private critic (Triastcyn & Faltings, "Generating Artificial Data for
Private Deep Learning", arXiv 1803.03148): `--family gan`.

A generator G maps noise z and the target's one-hot y to one token per column (the transformer's
layout, so every column kind and the numeric decoding are those of the other families); a critic
C scores whole rows [features | target], real or generated.

Where the privacy comes from. Of the losses trained here only one reads private rows: the
critic's term over REAL rows x, -log sigmoid(score(x)) plus, with a target, the auxiliary
classifier's cross-entropy of x's target (see `Critic`). That term, and only that term, goes
through DP-SGD: Poisson-sampled batches, per-row gradients clipped to max_grad_norm
(common.dp_training.NoisedGradient, as every family's), Gaussian noise of noise_multiplier * max_grad_norm on their sum, divided by the
expected batch of the DP row estimate. The critic's term over generated rows,
-log(1 - sigmoid(score(G(z)))), is a function of the critic's and the generator's current
weights and of fresh noise z: adding it unnoised costs nothing (noising it as well would charge
the budget twice for no row). The generator is updated from the critic alone, never touching a
real row, so it is private by post-processing. The ledger charges exactly the other families'
mechanism: one subsampled Gaussian per critic step, with the sample rate, noise and steps of the
job.

In a federation each site runs both parts for its local steps and returns both: the critic is
the DP-SGD output, the generator a post-processing of the critic's noised iterates, so what
leaves a site is covered by the same charge. FedAvg averages the two parts like any weights.

Real rows are exact one-hots, so generated rows must be too or the critic tells them apart by
their softness: G's tokens are hard Gumbel-softmax draws (one-hot forward, the relaxed softmax's
gradient backward; Jang et al. 2017), which are draws from softmax(logits) exactly, as sampling
draws them later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ..dp_training import (
    DPSGDConfig, IterateAverage, NoisedGradient, ProgressFn, ProximalPull, TrainStats,
    normaliser, poisson_batches, secret_generator,
)
from ..token_matrix import TokenMatrix
from ..update_bound import max_displacement
from .base import Generator, Hyperparameters
from .tokens import mlp, sample_from_latent


# Adam's momentum lowered as GANs usually train it (Radford et al. 2015): with the default 0.9
# the two players' updates overshoot each other. Both optimizers use these betas, and the update
# bound is Adam's for them (common/update_bound.py).
BETAS = (0.5, 0.9)


class GANHyperparameters(Hyperparameters):
    # Adam at 1e-3 with these betas and the generator's iterates averaged (decay 0.99): one run
    # each on Adult at epsilon 3, GB AUC 0.880 and shapes 0.950, against 0.43-0.81 and 0.78-0.88
    # with Adam's usual betas at 1e-3 or 2e-3, averaged or not (benchmarks/results/generators.md).
    lr: float = Field(1e-3, gt=0, le=1)
    average: float = Field(0.99, ge=0, lt=1)
    hidden: int = Field(128, ge=1, le=4096)
    depth: int = Field(2, ge=1, le=8)
    latent: int = Field(32, ge=1, le=1024)
    critic_hidden: int = Field(128, ge=1, le=4096)
    critic_depth: int = Field(2, ge=1, le=8)
    # Gumbel-softmax temperature of the generator's tokens (only their gradient depends on it).
    temperature: float = Field(0.5, gt=0, le=10)
    # Generator updates per critic step: free of privacy cost (they read no real row).
    generator_steps: int = Field(1, ge=1, le=16)


class _GANNet(nn.Module):
    """Both parts under one module so the federation averages them like any family's weights."""

    def __init__(self, feature_dim: int, target_dim: int, hp: GANHyperparameters):
        super().__init__()
        self.feature_dim, self.target_dim, self.latent = feature_dim, target_dim, hp.latent
        self.generator = mlp([hp.latent + target_dim] + [hp.hidden] * hp.depth + [feature_dim])
        self.critic = Critic(feature_dim, target_dim, hp.critic_hidden, hp.critic_depth)


class Critic(nn.Module):
    """forward(rows [features | target]) -> [realness score | the target's logits given the
    features]: a discriminator of whole rows and, with a target, an auxiliary classifier
    (AC-GAN, Odena et al. 2017). The discriminator alone learnt the link between the features
    and the target too weakly to keep it (Adult, no noise: GB AUC 0.44-0.85 from run to run);
    the classifier, trained on real rows inside the same DP-SGD term, gives the generator a
    direct signal for it."""

    def __init__(self, feature_dim: int, target_dim: int, hidden: int, depth: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.score = mlp([feature_dim + target_dim] + [hidden] * depth + [1])
        self.classify = mlp([feature_dim] + [hidden] * depth + [target_dim]) if target_dim else None

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.score(rows)
        if self.classify is None:
            return out
        return torch.cat([out, self.classify(rows[:, :self.feature_dim])], 1)


def _label_loss(out: torch.Tensor, target_onehot: torch.Tensor) -> torch.Tensor:
    """Per row: the auxiliary classifier's cross-entropy (0 without a target)."""
    if out.shape[1] == 1:
        return torch.zeros(len(out), device=out.device)
    return -(F.log_softmax(out[:, 1:], 1) * target_onehot).sum(1)


class RealRowLoss(nn.Module):
    """The one term over real rows, per row: -log sigmoid(score(x)) + the classifier's
    cross-entropy of x's target; one loss per row when `reduction` is "none"."""

    reduction = "mean"

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim

    def forward(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        loss = F.softplus(-out[:, 0]) + _label_loss(out, rows[:, self.feature_dim:])
        return loss if self.reduction == "none" else loss.mean()


@dataclass
class PrivateCritic:
    """The critic, its optimizer, and the charged mechanism on its real-row loss."""

    critic: nn.Module
    optimizer: torch.optim.Optimizer
    loss: RealRowLoss
    noised: NoisedGradient

    @classmethod
    def wrap(cls, critic: nn.Module, optimizer: torch.optim.Optimizer, loss: RealRowLoss, *,
             noise_multiplier: float, max_grad_norm: float, expected_batch: float,
             noise: torch.Generator) -> PrivateCritic:
        loss.reduction = "none"
        return cls(critic, optimizer, loss,
                   NoisedGradient(critic, noise_multiplier, max_grad_norm, expected_batch, noise))

    def gradient(self, real: torch.Tensor, fake: torch.Tensor) -> list[torch.Tensor]:
        """p.grad of every critic weight := (the sum over real rows of their clipped gradients of
        the real-row loss, plus Gaussian noise) / expected batch, plus the exact gradient of the
        generated rows' term, -log(1 - sigmoid(score)). Returned for tests; the optimizer's step
        reads p.grad."""
        params = self.noised.params
        fake_grad = torch.autograd.grad(F.softplus(self.critic(fake)[:, 0]).mean(), params)
        self.optimizer.zero_grad(set_to_none=True)
        self.noised(lambda: self.loss(self.critic(real), real), len(real))
        for p, g in zip(params, fake_grad):
            p.grad.add_(g)
        return [p.grad for p in params]

    def step(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        self.gradient(real, fake)
        self.optimizer.step()


class GANGenerator(Generator):
    family: ClassVar[str] = "gan"
    Hyperparameters: ClassVar[type] = GANHyperparameters
    training: ClassVar[str] = (
        "GAN with a DP critic: DP-SGD on the critic's loss over real rows only (Poisson "
        "sampling, per-sample clipping, Gaussian noise); the generated-row term and the "
        "generator's update, which read no real row, unnoised (post-processing); Adam")

    def __init__(self, transformer, hyperparameters: GANHyperparameters, *, seed: int = 0,
                 device: str = "cpu"):
        super().__init__(transformer, hyperparameters, seed=seed, device=device)
        torch.manual_seed(seed)
        self.net = _GANNet(transformer.feature_dim, transformer.target_dim,
                           hyperparameters).to(device)
        self.blocks = [(b.start, b.size) for b in transformer.blocks]
        groups: dict[int, list[int]] = {}
        for start, size in self.blocks:
            groups.setdefault(size, []).append(start)
        # Columns of equal width share one batched Gumbel-softmax.
        self._groups = [(size, (torch.tensor(starts)[:, None] + torch.arange(size)).to(device))
                        for size, starts in groups.items()]
        self._prior = torch.as_tensor(transformer.target_prior() if transformer.target_dim
                                      else np.ones(1), dtype=torch.float32, device=device)

    def _fake(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """n generated rows in the transformer's layout, the target drawn from its DP prior."""
        t, net = self.transformer, self.net
        z = torch.randn(n, net.latent, generator=gen, device=self.device)
        y = torch.zeros(n, t.target_dim, device=self.device)
        if t.target_dim:
            y[torch.arange(n), torch.multinomial(self._prior, n, True, generator=gen)] = 1.0
        logits = net.generator(torch.cat([z, y], 1))
        x = torch.empty_like(logits)
        for size, idx in self._groups:
            x[:, idx] = F.gumbel_softmax(logits[:, idx], tau=self.hp.temperature, hard=True)
        return torch.cat([x, y], 1)

    def _generator_step(self, optimizer: torch.optim.Optimizer, n: int,
                        gen: torch.Generator) -> torch.Tensor:
        """One update of the generator from the critic alone (no real row)."""
        fake = self._fake(n, gen)
        out = self.net.critic(fake)
        loss = (F.softplus(-out[:, 0])
                + _label_loss(out, fake[:, self.transformer.feature_dim:])).mean()
        grads = torch.autograd.grad(loss, list(self.net.generator.parameters()))
        for p, g in zip(self.net.generator.parameters(), grads):
            p.grad = g
        optimizer.step()
        return loss

    @classmethod
    def max_update(cls, hyperparameters: GANHyperparameters, local_steps: int) -> float:
        """Two Adams at one learning rate: the generator's takes `generator_steps` steps per
        critic step, so it bounds the round."""
        return max_displacement(hyperparameters.lr, local_steps * hyperparameters.generator_steps,
                                BETAS)

    def fit_steps(self, encoded: TokenMatrix, dp: DPSGDConfig, progress: ProgressFn | None = None,
                  proximal_mu: float = 0.0) -> TrainStats:
        net, lr = self.net, self.hp.lr
        batches = poisson_batches(encoded, dp)
        expected = normaliser(dp, len(encoded))
        # The generated batch is as large as the expected real one: a size fixed by the DP row
        # estimate, never by a batch's actual (private) size.
        fake_n = max(1, round(expected))
        gen = secret_generator(self.device)
        pull = ProximalPull(net.parameters(), lr, proximal_mu)
        mean = IterateAverage(net.generator.parameters(), self.hp.average)
        critic = PrivateCritic.wrap(
            net.critic, torch.optim.Adam(net.critic.parameters(), lr=lr, betas=BETAS),
            RealRowLoss(self.transformer.feature_dim),
            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
            expected_batch=expected,
            noise=secret_generator(self.device))
        g_opt = torch.optim.Adam(net.generator.parameters(), lr=lr, betas=BETAS)
        net.train()
        rows, loss_value, start = 0, float("nan"), time.perf_counter()
        for step in range(1, dp.steps + 1):
            real = next(batches).to(self.device, non_blocking=True)
            with torch.no_grad():
                fake = self._fake(fake_n, gen)
            critic.step(real, fake)
            for _ in range(self.hp.generator_steps):
                g_loss = self._generator_step(g_opt, fake_n, gen)
            pull()
            mean.update(step)
            rows += len(real)
            loss_value = float(g_loss.detach())
            if progress is not None:
                progress(step, dp.steps, loss_value)
        mean.apply()
        return TrainStats(steps=dp.steps, rows_seen=rows, seconds=time.perf_counter() - start,
                          final_loss=loss_value)

    @torch.inference_mode()
    def sample(self, n: int, conditions: dict[str, str] | None = None,
               seed: int | None = None, batch_size: int = 16384) -> pd.DataFrame:
        """`n` rows; the target drawn from its DP prior unless fixed by `conditions`."""
        self.net.eval()
        return sample_from_latent(lambda z, y: self.net.generator(torch.cat([z, y], 1)),
                                  self.transformer, self.net.latent, n, conditions,
                                  self.seed if seed is None else seed, self.device, batch_size)
