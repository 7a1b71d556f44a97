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
from torch.nn import functional as F

from .base import Generator, Hyperparameters
from .layers import HeadwiseLinear, TokenEmbedding
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
    # A head's width; None: 64 over one-hots, 32 over embeddings (wide tables: many more heads
    # share the noise, and narrower ones kept more of the dependence, benchmarks/results/wide.md).
    hidden: int | None = Field(None, ge=1, le=4096)
    depth: int = Field(1, ge=1, le=8)
    order: Literal["schema", "entropy"] = "schema"
    # What a head sees of the columns before it: their one-hots ("one-hot": a head's first layer
    # is as wide as its prefix, so a step costs columns x one-hot width), or the sum of one
    # learned `embedding`-wide vector per earlier token ("embedding": columns x embedding, for
    # wide tables). "auto" picks by the table's layout (public: the schema and DP statistics).
    context: Literal["auto", "one-hot", "embedding"] = "auto"
    embedding: int = Field(32, ge=1, le=4096)


def resolved_context(hp: AutoregressiveHyperparameters, sizes: list[int]) -> str:
    """`hp.context`, with "auto" resolved: embeddings once the heads' one-hot prefixes (`sizes`:
    the columns' widths in generation order) are wider in all than AUTO_ONE_HOT_LIMIT."""
    if hp.context != "auto":
        return hp.context
    prefixes = sum(sum(sizes[:j]) for j in range(1, len(sizes)))
    return "embedding" if prefixes > AUTO_ONE_HOT_LIMIT else "one-hot"


# Adult's heads see 1,440 one-hot inputs in all, the wide benchmark's 56 columns 21,000 (where
# the one-hot context's step costs 5-6x Adult's): benchmarks/results/wide.md.
AUTO_ONE_HOT_LIMIT = 4096


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

    def column_logits(self, out: torch.Tensor) -> list[torch.Tensor]:
        """forward's output as one rows x size tensor per modelled column, in generation order."""
        return list(out.split(self.sizes, 1))

    def draw(self, given: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        """Tokens of the modelled columns (rows x heads, each within its column), drawn in
        order; `given`: the unmodelled target's tokens; `u`: heads x rows x 1 uniforms."""
        m = len(u[0])
        # A head's first layer over one-hot inputs is the sum of the weight columns of the hot
        # inputs: an embedding-bag sum over the tokens drawn so far, instead of a matmul over the
        # whole one-hot prefix (most of sampling's time). The constant input (index 0) is hot in
        # every row, so its column carries the bias too.
        first = []
        for head in self.heads:
            w = head[0].weight.t().contiguous()
            w[0] += head[0].bias
            first.append(w)
        lead = 1 + (given is not None)
        hot = torch.zeros(m, lead + len(self.heads), dtype=torch.long, device=u.device)
        if given is not None:
            hot[:, 1] = 1 + given
        for j, (head, w, off, k) in enumerate(zip(self.heads, first, self.offsets, self.sizes)):
            z = nn.functional.embedding_bag(hot[:, :lead + j], w, mode="sum").relu_()
            for layer in head[2:]:
                z = layer(z)
            hot[:, lead + j] = off + _inverse_cdf(z, u[j], k)
        return hot[:, lead:] - torch.as_tensor(self.offsets, device=u.device)


def _inverse_cdf(logits: torch.Tensor, u: torch.Tensor, k: int) -> torch.Tensor:
    # On the unnormalised probabilities: u scaled by their total instead of a softmax's division
    # of every cell.
    cdf = (logits - logits.amax(1, keepdim=True)).exp_().cumsum_(1)
    return (cdf < u * cdf[:, -1:]).sum(1).clamp_(max=k - 1)


PADDED_LOGIT = -1e4


class _EmbeddedARNet(nn.Module):
    """The same model with a cheaper context: head j sees s_j, the sum over the columns before
    it of a learned vector per token (one vector per token of the whole layout), through its own
    MLP. A step costs heads x embedding instead of heads x one-hot prefix. The heads run as one
    batched product per layer, heads first, sorted so that the output layers of columns of
    similar width are one product too; forward returns those products' logits as they are, with
    the rows' tokens, for _WidthGroupedLoss."""

    def __init__(self, sequence: list[tuple[int, int]], unmodelled: int, hidden: int, depth: int,
                 embedding: int):
        super().__init__()
        perm = [torch.arange(s, s + k) for s, k in sequence]
        self.register_buffer("perm", torch.cat(perm), persistent=False)
        sizes = [k for _, k in sequence]
        starts = [int(sum(sizes[:j])) for j in range(len(sizes))]
        self.unmodelled = unmodelled
        # The embedding numbers tokens in generation order: position p of a row is token
        # numbering[p]; generation step c is the row layout's column_of_block[c]-th block.
        self.register_buffer("numbering", torch.argsort(self.perm), persistent=False)
        self.register_buffer("column_of_block", torch.argsort(torch.argsort(torch.tensor(
            [s for s, _ in sequence]))), persistent=False)
        self.offsets, self.sizes = [1 + s for s in starts[unmodelled:]], sizes[unmodelled:]
        n = len(self.sizes)
        # Heads sorted by their column's width, in buckets of similar widths: each bucket's output
        # layers are one product, padded to its widest (a padded logit is pinned far below the
        # rest: no probability, no gradient). Fewer products cost less than the padding.
        self.rank = sorted(range(n), key=lambda j: (self.sizes[j], j))
        buckets: list[list[int]] = []
        for j in self.rank:
            if buckets and self.sizes[j] <= max(self.sizes[buckets[-1][0]] + 2,
                                                1.5 * self.sizes[buckets[-1][0]]):
                buckets[-1].append(j)
            else:
                buckets.append([j])
        self.split = [len(b) for b in buckets]
        self.padded = [self.sizes[b[-1]] for b in buckets]
        for i, (b, k) in enumerate(zip(buckets, self.padded)):
            pad = torch.zeros(len(b), 1, k)
            for h, j in enumerate(b):
                pad[h, 0, self.sizes[j]:] = PADDED_LOGIT
            self.register_buffer(f"pad{i}", pad, persistent=False)
        # Summed over up to n columns: start the sum near unit scale.
        self.embed = TokenEmbedding(int(sum(sizes)), embedding, std=1 / np.sqrt(n + 1))
        self.layers = nn.ModuleList([HeadwiseLinear(n, embedding, hidden)]
                                    + [HeadwiseLinear(n, hidden, hidden) for _ in range(depth - 1)])
        self.outputs = nn.ModuleList(HeadwiseLinear(c, hidden, k)
                                     for c, k in zip(self.split, self.padded))
        # Column j's head: its slot among the sorted heads, its output bucket, its place there.
        self.slot = {}
        for g, (lo, c) in enumerate(zip(np.cumsum([0] + self.split), self.split)):
            for i in range(c):
                self.slot[self.rank[lo + i]] = (int(lo) + i, g, i)
        self.sorted_slot = [self.slot[j][0] for j in range(n)]

    def forward(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each bucket's logits (heads x rows x padded width), and the rows' tokens (columns x
        rows, as indices of the embedding) the loss scores them against."""
        # One hot per column: a row's hot positions, in the rows' layout, are its tokens; taken
        # into generation order and the embedding's numbering without permuting the one-hots.
        hot = rows.nonzero()[:, 1].view(len(rows), -1)
        idx = self.numbering[hot[:, self.column_of_block]].T
        e = self.embed(idx)  # columns x rows x embedding
        h = _PrefixSums.apply(e, self.unmodelled, self.sorted_slot)
        for layer in self.layers:
            h = layer(h).relu()
        return [layer(part) + getattr(self, f"pad{i}")
                for i, (layer, part) in enumerate(zip(self.outputs, h.split(self.split)))], idx

    def column_logits(self, out) -> list[torch.Tensor]:
        heads = [z for group in out[0] for z in group.unbind(0)]
        columns = [None] * len(heads)
        for i, j in enumerate(self.rank):
            columns[j] = heads[i][:, :self.sizes[j]]
        return columns

    def draw(self, given: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
        m, w = len(u[0]), self.embed.weight
        s = w[given] if given is not None else torch.zeros(m, w.shape[1], device=u.device)
        out = torch.empty(m, len(self.sizes), dtype=torch.long, device=u.device)
        for j, (off, k) in enumerate(zip(self.offsets, self.sizes)):
            r, g, i = self.slot[j]
            h = s
            for layer in self.layers:
                h = torch.addmm(layer.bias[r], h, layer.weight[r]).relu_()
            z = torch.addmm(self.outputs[g].bias[i, :k], h, self.outputs[g].weight[i, :, :k])
            out[:, j] = _inverse_cdf(z, u[j], k)
            s = s + w[off - 1 + out[:, j]]
        return out


class _PrefixSums(torch.autograd.Function):
    """positions x ... -> for each position j >= skip, the sum of the positions before it, in
    row where[j - skip] of the output. A loop of
    in-place adds, forwards and (as suffix sums) backwards, with the reordering folded into the
    loop's writes: torch.cumsum over a middle axis is several times slower on CPU, its gradient
    flips the tensor twice, and a separate permutation costs a copy each way."""

    @staticmethod
    def forward(ctx, e, skip, where):
        ctx.skip, ctx.where = skip, where
        out = torch.empty((len(e) - skip,) + e.shape[1:], dtype=e.dtype, device=e.device)
        acc = e[:skip].sum(0) if skip else torch.zeros_like(e[0])
        for j in range(skip, len(e)):
            out[where[j - skip]] = acc
            acc += e[j]
        return out

    @staticmethod
    def backward(ctx, g):
        skip, where = ctx.skip, ctx.where
        n = len(g) + skip
        grad = torch.empty((n,) + g.shape[1:], dtype=g.dtype, device=g.device)
        acc = torch.zeros_like(g[0])
        for c in range(n - 1, -1, -1):
            grad[c] = acc
            if c >= skip:
                acc += g[where[c - skip]]
        return grad, None, None


class _WidthGroupedLoss(nn.Module):
    """_OrderedLoss for _EmbeddedARNet: each bucket's cross-entropy against the tokens the net
    read from the rows (no one-hot targets to gather, one fused kernel per bucket)."""

    def __init__(self, net: _EmbeddedARNet):
        super().__init__()
        self.reduction = "mean"
        at = 0
        for i, c in enumerate(net.split):
            heads = net.rank[at:at + c]
            self.register_buffer(f"step{i}", torch.tensor(
                [net.unmodelled + j for j in heads]), persistent=False)
            self.register_buffer(f"start{i}", torch.tensor(
                [net.offsets[j] - 1 for j in heads])[:, None], persistent=False)
            at += c

    def forward(self, out: tuple[list[torch.Tensor], torch.Tensor], rows: torch.Tensor):
        logits, idx = out
        loss = torch.zeros(len(rows), device=rows.device)
        for i, z in enumerate(logits):
            tokens = idx[getattr(self, f"step{i}")] - getattr(self, f"start{i}")
            heads, n, k = z.shape
            loss = loss + F.cross_entropy(z.reshape(-1, k), tokens.reshape(-1),
                                          reduction="none").view(heads, n).sum(0)
        return ColumnLoss.reduce(self, loss)


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
        unmodelled = 1 if t.target_dim else 0
        self.context = resolved_context(hp, [k for _, k in sequence])
        if self.context == "embedding":
            self.net = _EmbeddedARNet(sequence, unmodelled, hp.hidden or 32, hp.depth,
                                      hp.embedding).to(device)
            self.loss = _WidthGroupedLoss(self.net).to(device)
        else:
            self.net = _ARNet(sequence, unmodelled, hp.hidden or 64, hp.depth).to(device)
            self.loss = _OrderedLoss(self.net).to(device)

    def describe(self) -> dict:
        names = [self.transformer.blocks[i].name for i in self.order]
        target = [self.transformer.schema.target] if self.transformer.target_dim else []
        return super().describe() | {"column_order": target + names,
                                     "column_order_source": self.hp.order,
                                     "context": self.context}

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
        tokens = np.empty((n, len(self.order)), dtype=np.int64)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            given = torch.as_tensor(y_tok[lo:hi], device=self.device) if t.target_dim else None
            u = torch.rand(len(self.order), hi - lo, 1, generator=gen, device=self.device)
            tokens[lo:hi, self.order] = net.draw(given, u).numpy(force=True)
        return t.decode(tokens, y_tok if t.target_dim else None, rng)
