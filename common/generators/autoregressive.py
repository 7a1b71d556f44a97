"""Autoregressive generator: p(y) * prod_j p(x_j | y, x_<j), the default family.

The target y comes first, drawn from its DP prior (or fixed by a condition); then each column in
turn, from a small MLP head of its own over a constant, y's one-hot and the one-hot tokens of the
columns before it. Training is teacher-forced: every head is a supervised classifier of its
column given the real earlier columns, so every output of the network is a prediction with a
direct loss. Under DP-SGD that learns far more per unit of noise than a latent-variable model,
whose encoder has to be learned through the noise too (Adult, epsilon 3: dependence between
columns kept about 80% above the independent floor, against about 40% for the CVAE;
benchmarks/results/generators.md).

Numeric columns are tokens like any other (point masses, DP-quantile bins, missing), decoded by
the shared transformer along the DP histogram, so column shapes are those of the other families.

The column order is a modelling choice and is public: `order = "schema"` keeps the schema's order;
`"entropy"` puts columns with the least spread-out DP marginals first, computed from the DP
histograms every site already released (post-processing, no further privacy cost). The manifest
records the order used.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from .base import Generator, Hyperparameters
from .tokens import ColumnLoss, mlp, target_tokens


class AutoregressiveHyperparameters(Hyperparameters):
    # A larger step than one Adam usually takes, with the iterates averaged (the average
    # cancels much of the noise the larger step leaves): more of the dependence between columns
    # is kept (imbalanced Adult, epsilon 3: 87% against 83% at 5e-3 without averaging; the
    # 3-site demo's study as in-process FedAvg: 85% against 79%) at the same AUC within noise.
    # 1.5e-2 did as well on one site but cost the federation's column shapes (0.970 against
    # 0.983): benchmarks/results/generators.md, fedavg.md.
    lr: float = Field(1e-2, gt=0, le=1)
    average: float = Field(0.98, ge=0, lt=1)
    hidden: int = Field(64, ge=1, le=4096)
    depth: int = Field(1, ge=1, le=8)
    order: Literal["schema", "entropy"] = "schema"


def column_order(transformer, how: str) -> list[int]:
    """Indices into `transformer.blocks` in generation order."""
    n = len(transformer.blocks)
    stats = transformer.stats
    if how == "schema" or stats is None:
        return list(range(n))
    entropy = []
    for b in transformer.blocks:
        if b.name not in stats.histograms:
            entropy.append(np.inf)
            continue
        p = np.clip(np.asarray(stats.counts(b.name), dtype=float), 0, None) + 1e-9
        p = p / p.sum()
        entropy.append(float(-(p * np.log(p)).sum()))
    return sorted(range(n), key=lambda i: (entropy[i], i))


class _ARNet(nn.Module):
    """forward(rows in the transformer's layout [features | target]) -> the logits of every
    modelled column, in generation order, as one tensor (DP-SGD clips the loss
    criterion(output, rows) per row).

    `sequence` lists the columns' blocks (start, size) of the rows' layout in generation order;
    the first `unmodelled` of them get no head (the target, drawn from its DP prior).
    Head j sees [1 | the one-hots of every column before it]."""

    def __init__(self, sequence: list[tuple[int, int]], unmodelled: int, hidden: int, depth: int):
        super().__init__()
        perm = [torch.arange(s, s + k) for s, k in sequence]
        self.register_buffer("perm", torch.cat(perm) if perm else torch.zeros(0, dtype=torch.long),
                             persistent=False)
        sizes = [k for _, k in sequence]
        starts = [1 + int(sum(sizes[:j])) for j in range(len(sizes))]
        self.width = 1 + int(sum(sizes))
        # Where each modelled column's one-hot starts in the input: its head sees all before it.
        self.offsets, self.sizes = starts[unmodelled:], sizes[unmodelled:]
        self.heads = nn.ModuleList(mlp([off] + [hidden] * depth + [k])
                                   for off, k in zip(self.offsets, self.sizes))

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(len(rows), 1, device=rows.device, dtype=rows.dtype)
        return torch.cat([ones, rows[:, self.perm]], 1)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        x = self.inputs(rows)
        return torch.cat([head(x[:, :off]) for head, off in zip(self.heads, self.offsets)], 1)


class _OrderedLoss(ColumnLoss):
    """Per-row sum of the modelled columns' cross-entropies, targets gathered into generation
    order."""

    def __init__(self, net: _ARNet):
        first = net.offsets[0] if net.offsets else 1
        super().__init__([(off - first, k) for off, k in zip(net.offsets, net.sizes)])
        self.register_buffer("perm", net.perm[first - 1:].clone(), persistent=False)

    def forward(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.per_row(logits, rows[:, self.perm]))


class AutoregressiveGenerator(Generator):
    family: ClassVar[str] = "autoregressive"
    Hyperparameters: ClassVar[type] = AutoregressiveHyperparameters

    def __init__(self, transformer, hyperparameters: AutoregressiveHyperparameters, *,
                 seed: int = 0, device: str = "cpu"):
        super().__init__(transformer, hyperparameters, seed=seed, device=device)
        hp, t = hyperparameters, transformer
        self.order = column_order(t, hp.order)
        sequence = [(t.blocks[i].start, t.blocks[i].size) for i in self.order]
        if t.target_dim:
            sequence.insert(0, (t.feature_dim, t.target_dim))
        torch.manual_seed(seed)
        self.net = _ARNet(sequence, 1 if t.target_dim else 0, hp.hidden, hp.depth).to(device)
        self.loss = _OrderedLoss(self.net).to(device)

    def describe(self) -> dict:
        names = [self.transformer.blocks[i].name for i in self.order]
        target = [self.transformer.schema.target] if self.transformer.target_dim else []
        return super().describe() | {"column_order": target + names,
                                     "column_order_source": self.hp.order}

    @torch.inference_mode()
    def sample(self, n: int, conditions: dict[str, str] | None = None,
               seed: int | None = None, batch_size: int = 16384) -> pd.DataFrame:
        """`n` rows, one column at a time; the target drawn from its DP prior unless fixed by
        `conditions`."""
        t, net = self.transformer, self.net
        rng = np.random.default_rng(self.seed if seed is None else seed)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**31)))
        y_tok = target_tokens(t, n, conditions, rng)
        net.eval()
        # A head's first layer over one-hot inputs is the sum of the weight columns of the hot
        # inputs: an embedding-bag sum over the tokens drawn so far, instead of a matmul over the
        # whole one-hot prefix (most of sampling's time). The constant input (index 0) is hot in
        # every row, so its column carries the bias too.
        first = []
        for head in net.heads:
            w = head[0].weight.t().contiguous()
            w[0] += head[0].bias
            first.append(w)
        given = 1 + int(bool(t.target_dim))  # the constant input, then the target's token
        tokens = np.empty((n, len(self.order)), dtype=np.int64)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            m = hi - lo
            hot = torch.zeros(m, given + len(net.heads), dtype=torch.long, device=self.device)
            if t.target_dim:
                hot[:, 1] = 1 + torch.as_tensor(y_tok[lo:hi], device=self.device)
            u = torch.rand(len(self.order), m, 1, generator=gen, device=self.device)
            for j, (head, w, off, k) in enumerate(zip(net.heads, first, net.offsets, net.sizes)):
                z = nn.functional.embedding_bag(hot[:, :given + j], w, mode="sum").relu_()
                for layer in head[2:]:
                    z = layer(z)
                # Inverse CDF on the unnormalised probabilities: u scaled by their total
                # instead of a softmax's division of every cell.
                cdf = (z - z.amax(1, keepdim=True)).exp_().cumsum_(1)
                tok = (cdf < u[j] * cdf[:, -1:]).sum(1).clamp_(max=k - 1)
                hot[:, given + j] = off + tok
            tokens[lo:hi, self.order] = hot[:, given:].numpy(force=True) - np.asarray(net.offsets)
        return t.decode(tokens, y_tok if t.target_dim else None, rng)
