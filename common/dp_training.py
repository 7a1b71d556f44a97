"""DP-SGD with Opacus for any generator family: per-sample clipping, Poisson sampling, Gaussian noise.

Ghost clipping (`grad_sample_mode="ghost"`) computes per-sample gradient norms without
materialising per-sample gradients; on the CVAE it runs at about half the non-private speed where
Opacus' default hooks run 30x slower. Accounting is NOT done here: the caller records the
`GaussianMechanism` it planned (noise, sample rate, steps actually taken) with its ledger or
manifest, so the number reported comes from the accountant, composed over the whole study.
"""

from __future__ import annotations

import secrets
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import TensorDataset

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


def poisson_batches(data: torch.Tensor, dp: DPSGDConfig) -> DPDataLoader:
    """Batches that hold each row independently with probability `dp.sample_rate`."""
    if not 0 < dp.sample_rate <= 1:
        raise ValueError(f"sample rate {dp.sample_rate} outside (0, 1]")
    return DPDataLoader(TensorDataset(data), sample_rate=dp.sample_rate,
                        generator=secret_generator())


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
        decay = min(self.decay, (1 + step) / (10 + step))
        for p, m in zip(self.params, self.mean or ()):
            m.lerp_(p, 1 - decay)

    @torch.no_grad()
    def apply(self) -> None:
        """Set the weights to the average."""
        for p, m in zip(self.params, self.mean or ()):
            p.copy_(m)


def dp_sgd(
    module: nn.Module,
    criterion: nn.Module,
    data: torch.Tensor,
    dp: DPSGDConfig,
    *,
    lr: float,
    device: str,
    progress: ProgressFn | None = None,
    proximal_mu: float = 0.0,
    average: float = 0.0,
) -> TrainStats:
    """Run `dp.steps` DP-SGD steps of `criterion(module(x), x)` on the rows of `data`.

    `criterion` must return one loss per row when Opacus sets `reduction="none"`.
    `proximal_mu` > 0: FedProx's pull towards the starting weights (ProximalPull); `average` in
    (0, 1): the job returns the average of its iterates (IterateAverage).
    """
    loader = poisson_batches(data, dp)
    pull = ProximalPull(module.parameters(), lr, proximal_mu)
    mean = IterateAverage(module.parameters(), average)
    # The betas bound every step (common/update_bound.py): the coordinator checks updates by it.
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, betas=ADAM_BETAS)
    with warnings.catch_warnings():
        # Opacus' "secure RNG turned off": its secure mode needs torchcsprng, which is no longer
        # released; we seed its generator from OS entropy instead (see above).
        warnings.simplefilter("ignore")
        engine = PrivacyEngine()
        dp_module, dp_optimizer, dp_criterion, dp_loader = engine.make_private(
            module=module,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # `loader` already Poisson-samples at exactly dp.sample_rate
            grad_sample_mode="ghost",
            noise_generator=secret_generator(device),
        )
    # Opacus divides the noisy sum of clipped gradients by an expected batch size it derives
    # from the loader, i.e. from the exact row count: a normaliser that differs between
    # neighbouring tables, outside what the accountant analyses. The caller passes the expected
    # batch of the DP row estimate instead (a post-processing of a charged release).
    dp_optimizer.expected_batch_size = max(1.0, float(normaliser(dp, len(data))))
    trainable = [p for p in dp_optimizer.params if p.requires_grad]
    dp_module.train()
    step, rows, loss_value, start = 0, 0, float("nan"), time.perf_counter()
    with warnings.catch_warnings():
        # Ghost clipping's second backward pass trips a harmless torch hook warning every step.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        while step < dp.steps:
            for (batch,) in dp_loader:
                if step >= dp.steps:
                    break
                batch = batch.to(device, non_blocking=True)
                dp_optimizer.zero_grad(set_to_none=True)
                if len(batch):
                    loss = dp_criterion(dp_module(batch), batch)
                    loss.backward()
                    loss_value = float(loss.detach())
                else:
                    # An empty Poisson batch still takes a step, noise only, as the accountant
                    # assumes: the clipped sum of no rows is zero (ghost clipping has no
                    # gradient to accumulate otherwise, and Opacus would fail on p.grad None).
                    for p in trainable:
                        p.grad = torch.zeros_like(p)
                dp_optimizer.step()
                pull()
                step += 1
                mean.update(step)
                rows += len(batch)
                if progress is not None:
                    progress(step, dp.steps, loss_value)
    dp_module._close()  # removes Opacus' hooks so sampling runs on the bare module
    mean.apply()
    return TrainStats(steps=step, rows_seen=rows, seconds=time.perf_counter() - start,
                      final_loss=loss_value)
