"""Layers beyond nn.Linear that keep their own DP-SGD books (common/per_sample_clipping.py): each
knows its per-row gradient norms and clipped sums in closed form, so a family built from them
still clips in one backward pass."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..per_sample_clipping import BookKeptLayer


class TokenEmbedding(BookKeptLayer):
    """positions x rows of token indices -> positions x rows x dim: one learned vector per token.

    A row's gradient is the output gradient of each position added to its token's vector, so
    when a row's tokens are distinct (one token per column, columns in disjoint index ranges:
    the families' layout) its squared norm is the sum over positions of ||g||^2; rows with a
    repeated token take the exact pairwise form instead."""

    def __init__(self, tokens: int, dim: int, std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(tokens, dim) * std)

    def compute(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx]

    def input_grad(self, idx, g):
        return None  # indices have no gradient

    def squared_norms(self, idx, g):
        norms = torch.linalg.vector_norm(g, dim=2).square().sum(0)
        ordered = idx.sort(0).values
        repeated = (ordered[1:] == ordered[:-1]).any(0)
        if repeated.any():
            i, gi = idx[:, repeated].T, g[:, repeated].transpose(0, 1)
            same = (i[:, :, None] == i[:, None, :]).to(gi.dtype)
            norms[repeated] = (same * (gi @ gi.transpose(1, 2))).sum((1, 2))
        return norms

    def set_clipped_grads(self, idx, g, scale):
        scaled = (g * scale[None, :, None]).flatten(0, 1)
        self.weight.grad = torch.zeros_like(self.weight).index_add_(0, idx.flatten(), scaled)


class HeadwiseLinear(BookKeptLayer):
    """heads x rows x n_in -> heads x rows x n_out: a separate linear map (and bias) per head, as
    one batched product instead of one small layer per head (heads first: the layout batched
    matrix products take without a copy). Head h's weights see a row once, so the row's squared
    gradient norm is sum_h ||g_h||^2 (||x_h||^2 + 1)."""

    def __init__(self, heads: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1 / math.sqrt(n_in)  # nn.Linear's initialisation, per head
        self.weight = nn.Parameter(torch.empty(heads, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(heads, n_out).uniform_(-bound, bound))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None, :], x, self.weight)

    def input_grad(self, x, g):
        return torch.bmm(g, self.weight.transpose(1, 2))

    def squared_norms(self, x, g):
        gg = torch.linalg.vector_norm(g, dim=2).square()
        return (gg * (torch.linalg.vector_norm(x, dim=2).square() + 1)).sum(0)

    def set_clipped_grads(self, x, g, scale):
        g = g * scale[None, :, None]
        self.weight.grad = torch.bmm(x.transpose(1, 2), g)
        self.bias.grad = g.sum(1)
