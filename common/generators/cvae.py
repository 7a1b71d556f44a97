"""Conditional VAE ("data cloning" CVAE): encoder q(z | x, y), decoder p(x | z, y), where y is the
target label. Every column is a categorical token (see transforms), so the reconstruction loss is a
sum of cross-entropies, one per column. Sampling draws y from its DP-estimated distribution (or a
given condition), z from the prior, and each column's token from the decoder's softmax.

Trained only with DP-SGD (common.dp_training): the model never sees a row otherwise.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..dp_training import dp_sgd
from ..transforms import TableTransformer
from .base import DPSGDConfig, ProgressFn, TrainStats, register


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _CVAENet(nn.Module):
    """forward(rows) -> [logits | mu | logvar]: one tensor, so Opacus' ghost clipping can wrap the
    loss as criterion(output, rows)."""

    def __init__(self, feature_dim: int, target_dim: int, hidden: int, depth: int, latent: int):
        super().__init__()
        self.feature_dim, self.target_dim, self.latent = feature_dim, target_dim, latent
        self.encoder = _mlp([feature_dim + target_dim] + [hidden] * depth + [2 * latent])
        self.decoder = _mlp([latent + target_dim] + [hidden] * depth + [feature_dim])

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        y = rows[:, self.feature_dim:]
        mu, logvar = self.encoder(rows).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.cat([self.decoder(torch.cat([z, y], dim=1)), mu, logvar], dim=1)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, y], dim=1))


class _CVAELoss(nn.Module):
    """Per-row negative ELBO: sum of per-column cross-entropies + beta * KL(q(z|x,y) || N(0, I))."""

    def __init__(self, blocks: list[tuple[int, int]], feature_dim: int, latent: int, beta: float):
        super().__init__()
        self.reduction = "mean"  # Opacus switches this to "none" to get per-row losses
        self.feature_dim, self.latent, self.beta = feature_dim, latent, beta
        # Column blocks of equal width share one batched cross-entropy.
        self.groups: dict[int, list[int]] = {}
        for start, size in blocks:
            self.groups.setdefault(size, []).append(start)

    def forward(self, output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        d, k = self.feature_dim, self.latent
        logits, mu, logvar = output[:, :d], output[:, d:d + k], output[:, d + k:]
        x = rows[:, :d]
        recon = torch.zeros(len(rows), device=rows.device)
        for size, starts in self.groups.items():
            idx = (torch.tensor(starts, device=rows.device)[:, None]
                   + torch.arange(size, device=rows.device)[None, :])
            lg = logits[:, idx]  # n x columns x size
            recon = recon - (F.log_softmax(lg, dim=-1) * x[:, idx]).sum(dim=(1, 2))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
        per_row = recon + self.beta * kl
        if self.reduction == "none":
            return per_row
        return per_row.mean() if self.reduction == "mean" else per_row.sum()


@register
class CVAEGenerator:
    family: ClassVar[str] = "cvae"

    def __init__(self, transformer: TableTransformer, *, seed: int = 0, device: str = "cpu",
                 hidden: int = 256, depth: int = 2, latent: int = 32, beta: float = 1.0,
                 lr: float = 2e-3):
        self.transformer = transformer
        self.seed, self.device, self.lr = seed, device, lr
        self.hyperparameters = {"hidden": hidden, "depth": depth, "latent": latent, "beta": beta,
                                "lr": lr}
        torch.manual_seed(seed)
        self.net = _CVAENet(transformer.feature_dim, transformer.target_dim, hidden, depth,
                            latent).to(device)
        blocks = [(b.start, b.size) for b in transformer.blocks]
        self.loss = _CVAELoss(blocks, transformer.feature_dim, latent, beta)

    def fit_steps(self, encoded: torch.Tensor, dp: DPSGDConfig,
                  progress: ProgressFn | None = None, proximal_mu: float = 0.0) -> TrainStats:
        return dp_sgd(self.net, self.loss, encoded, dp, lr=self.lr, device=self.device,
                      progress=progress, proximal_mu=proximal_mu)

    def get_weights(self) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in self.net.state_dict().values()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        keys = list(self.net.state_dict().keys())
        if len(weights) != len(keys):
            raise ValueError(f"expected {len(keys)} weight arrays, got {len(weights)}")
        state = {k: torch.as_tensor(w) for k, w in zip(keys, weights)}
        self.net.load_state_dict(state, strict=True)

    @torch.inference_mode()
    def sample(self, n: int, conditions: dict[str, str] | None = None,
               seed: int | None = None, batch_size: int = 4096) -> pd.DataFrame:
        """`n` rows; the target drawn from its DP prior unless fixed by `conditions`.
        `batch_size`: rows per forward pass; small chunks stay in the CPU cache (1M Adult rows on
        2 cores: 6.4-7.3 s at 4096, 10.6 s at 65536)."""
        t = self.transformer
        rng = np.random.default_rng(self.seed if seed is None else seed)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**31)))
        if t.target_dim:
            if conditions and t.schema.target in conditions:
                y_tok = np.full(n, t.target_token(conditions[t.schema.target]))
            else:
                y_tok = rng.choice(t.target_dim, size=n, p=t.target_prior())
        else:
            y_tok = np.zeros(n, dtype=np.int64)
        self.net.eval()
        feature_tokens = np.empty((n, len(t.blocks)), dtype=np.int64)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            y = torch.zeros(hi - lo, t.target_dim, device=self.device)
            if t.target_dim:
                y[torch.arange(hi - lo), torch.as_tensor(y_tok[lo:hi])] = 1.0
            z = torch.randn(hi - lo, self.net.latent, generator=gen, device=self.device)
            logits = self.net.decode(z, y)
            u = torch.rand(hi - lo, len(t.blocks), generator=gen, device=self.device)
            feature_tokens[lo:hi] = draw_tokens(logits, [(b.start, b.size) for b in t.blocks],
                                                u).cpu().numpy()
        return t.decode(feature_tokens, y_tok if t.target_dim else None, rng)


def draw_tokens(logits: torch.Tensor, blocks: list[tuple[int, int]],
                u: torch.Tensor) -> torch.Tensor:
    """One token per row and column (block = (start, size) of its logits) from the column's
    softmax, by inverse CDF with the uniforms `u` (rows x columns). Same distribution as
    Gumbel-max, but one random number per column instead of one per token and no logs: 1M Adult
    rows sample in 9.5 s instead of 14 s on 2 cores (torch.multinomial per column is slower still)."""
    out = torch.empty(logits.shape[0], len(blocks), dtype=torch.int64, device=logits.device)
    for j, (start, size) in enumerate(blocks):
        cdf = torch.softmax(logits[:, start:start + size], dim=1).cumsum_(1)
        out[:, j] = (cdf < u[:, j:j + 1]).sum(1).clamp_(max=size - 1)
    return out
