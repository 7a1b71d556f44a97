"""DP-SGD for any generator family: Poisson sampling, per-sample clipping, Gaussian noise.

Per-sample clipping is common/per_sample_clipping.py's: book-keeping (one backward pass) for
networks of linear layers, which every built-in family is, at about 0.8x the non-private speed;
Opacus' per-sample hooks for any other layer. Accounting is NOT done here: the caller records the
`GaussianMechanism` it planned (noise, sample rate, steps actually taken) with its ledger or
manifest, so the number reported comes from the accountant (common/privacy.py), composed over
the whole study.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .per_sample_clipping import Clipper, PerRowLoss, clipper, trainable
from .token_matrix import TokenMatrix
from .update_bound import ADAM_BETAS


@dataclass(frozen=True)
class DPSGDConfig:
    """One DP-SGD job: `steps` Poisson-sampled batches of expected size sample_rate * n."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    # The expected batch the noisy gradient sum is divided by: sample_rate x the DP row estimate
    # (never the exact count). 0: sample_rate x len(data), for public data only (benchmarks).
    expected_batch: float = 0.0


@dataclass(frozen=True)
class TrainStats:
    steps: int
    rows_seen: int
    seconds: float
    final_loss: float


ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


def secret_generator(device: str = "cpu") -> torch.Generator:
    """The batch selection and the noise are the mechanism's secrets: they are drawn from OS
    entropy, never from the run's seed, which the manifest publishes (a known seed would let
    anyone regenerate and subtract the noise). The seed only fixes model init and sampling."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def poisson_batches(data: TokenMatrix | torch.Tensor, dp: DPSGDConfig) -> Iterator[torch.Tensor]:
    """Endless batches, each holding every row independently with probability `dp.sample_rate`.

    The gaps between selected rows are i.i.d. geometric(q), which is the same distribution as a
    coin per row, but costs O(batch) per step instead of O(rows): a step takes as long on a
    5M-row table as on a 30k one."""
    q, n = dp.sample_rate, len(data)
    if not 0 < q <= 1:
        raise ValueError(f"sample rate {q} outside (0, 1]")
    gen = secret_generator()
    draw = int(n * q + 6 * math.sqrt(n * q) + 16)  # enough gaps to pass n almost always
    while True:
        if q == 1:
            yield data[:]
            continue
        ends = [torch.empty(draw, dtype=torch.float64).geometric_(q, generator=gen).cumsum_(0)]
        while ends[-1][-1] <= n:  # not past the last row yet: more gaps
            more = torch.empty(draw, dtype=torch.float64).geometric_(q, generator=gen)
            ends.append(more.cumsum_(0) + ends[-1][-1])
        positions = torch.cat(ends)
        yield data[(positions[positions <= n] - 1).long().to(data.device)]


def normaliser(dp: DPSGDConfig, rows: int) -> float:
    """The expected batch the noisy gradient sum is divided by (DPSGDConfig.expected_batch)."""
    return dp.expected_batch if dp.expected_batch > 0 else rows * dp.sample_rate


class ProximalPull:
    """FedProx's pull towards the starting weights, a separate decoupled step after each noised
    update: it does not touch the data, so it costs no privacy. A no-op when `mu` is 0."""

    def __init__(self, params, lr: float, mu: float) -> None:
        self.params, self.rate = list(params), lr * mu
        self.anchor = [p.detach().clone() for p in self.params] if mu > 0 else None

    @torch.no_grad()
    def __call__(self) -> None:
        for p, a in zip(self.params, self.anchor or ()):
            p.sub_(self.rate * (p - a))


class IterateAverage:
    """An exponential moving average of the iterates (decay `decay`, warmed up over the first
    steps), which a job returns instead of the last one. Averaging is post-processing of the
    noised iterates (no privacy cost) and cancels much of the noise a larger learning rate would
    leave in the last iterate. It stays inside the convex hull of the iterates, so the update
    bound (common/update_bound.py) holds for it too. A no-op when `decay` is 0."""

    def __init__(self, params, decay: float) -> None:
        self.params, self.decay = list(params), decay
        self.mean = [p.detach().clone() for p in self.params] if decay > 0 else None

    @torch.no_grad()
    def update(self, step: int) -> None:
        if self.mean:
            torch._foreach_lerp_(self.mean, self.params, 1 - min(self.decay, (1 + step) / (10 + step)))

    @torch.no_grad()
    def apply(self) -> None:
        """Set the weights to the average."""
        for p, m in zip(self.params, self.mean or ()):
            p.copy_(m)


class NoisedGradient:
    """The subsampled Gaussian mechanism the accountant charges, one step at a time."""

    def __init__(self, module: nn.Module, noise_multiplier: float, max_grad_norm: float,
                 expected_batch: float, noise: torch.Generator):
        self.clipper: Clipper = clipper(module, max_grad_norm)
        self.params = trainable(module)
        self.std = noise_multiplier * max_grad_norm
        self.expected_batch = max(1.0, float(expected_batch))
        self.noise = noise
        self.sizes = [p.numel() for p in self.params]
        self.size = sum(self.sizes)

    def __call__(self, per_row_loss: PerRowLoss, rows: int) -> float:
        """Set each trainable weight's .grad to (the sum over the batch's `rows` rows of their
        gradients clipped to C, plus Gaussian noise of standard deviation noise_multiplier * C)
        / the expected batch. An empty batch (rows 0) gives noise alone, as the accountant
        assumes for every step. Returns the batch's mean loss (nan when empty)."""
        if rows:
            loss = float(self.clipper.clipped_sum(per_row_loss).mean())
        else:
            for p in self.params:
                p.grad = torch.zeros_like(p)
            loss = float("nan")
        noise = torch.normal(0.0, self.std, (self.size,), generator=self.noise,
                             device=self.params[0].device)
        grads = [p.grad for p in self.params]
        # One draw for all weights, added with one call: 56 small draws cost more than the noise.
        torch._foreach_add_(grads, [n.view_as(p) for n, p in
                                    zip(noise.split(self.sizes), self.params)])
        torch._foreach_div_(grads, self.expected_batch)
        return loss


def dp_sgd(
    module: nn.Module,
    criterion: nn.Module,
    data: TokenMatrix | torch.Tensor,
    dp: DPSGDConfig,
    *,
    lr: float,
    device: str,
    progress: ProgressFn | None = None,
    proximal_mu: float = 0.0,
    average: float = 0.0,
) -> TrainStats:
    """Run `dp.steps` DP-SGD steps of `criterion(module(x), x)` on the rows of `data`, with Adam.

    `criterion` must return one loss per row when its `reduction` is "none".
    `proximal_mu` > 0: FedProx's pull towards the starting weights (ProximalPull); `average` in
    (0, 1): the job returns the average of its iterates (IterateAverage).
    """
    pull = ProximalPull(module.parameters(), lr, proximal_mu)
    mean = IterateAverage(module.parameters(), average)
    # The betas bound every step (common/update_bound.py): the coordinator checks updates by it.
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, betas=ADAM_BETAS, foreach=True)
    # The noisy sum is divided by the expected batch of the DP row estimate, never by one
    # derived from the exact row count, which would differ between neighbouring tables.
    noised = NoisedGradient(module, dp.noise_multiplier, dp.max_grad_norm,
                            normaliser(dp, len(data)), secret_generator(device))
    reduction, criterion.reduction = criterion.reduction, "none"
    module.train()
    rows, loss_value, start = 0, float("nan"), time.perf_counter()
    batches = poisson_batches(data, dp)
    try:
        for step in range(1, dp.steps + 1):
            batch = next(batches).to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = noised(lambda: criterion(module(batch), batch), len(batch))
            loss_value = loss if len(batch) else loss_value
            optimizer.step()
            pull()
            mean.update(step)
            rows += len(batch)
            if progress is not None:
                progress(step, dp.steps, loss_value)
    finally:
        criterion.reduction = reduction
    mean.apply()
    return TrainStats(steps=dp.steps, rows_seen=rows, seconds=time.perf_counter() - start,
                      final_loss=loss_value)
