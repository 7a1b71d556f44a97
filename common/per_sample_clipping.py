"""Per-sample gradient clipping in one backward pass, for networks whose weights are all in
nn.Linear layers or in layers that keep their own books (`BookKeptLayer`; every built-in
family's are).

Book-keeping (Bu, Wang, Zha and Karypis, "Differentially private optimization on large model at
small cost", ICML 2023): the backward pass records each linear layer's input activations A and
output gradients G, as autograd does anyway, and computes no weight gradients. The per-sample
gradient of a layer is G_i^T A_i, so its squared norm is ||G_i||^2 ||A_i||^2 for one call per
sample (the ghost norm, sum over t, s of (A_i A_i^T)_ts (G_i G_i^T)_ts, when a layer sees a
sequence or is called more than once). With every sample's norm over all layers known, the
clipped sum is one matrix product per layer, (c * G)^T A with c_i = min(1, C / ||g_i||): the
same cost as the weight gradient a non-private step computes. Opacus' ghost clipping gets the
same sum with a second backward pass instead (about 0.4x of non-private speed here).

A layer that is neither (a plug-in's layer norm) sends the family to Opacus' per-sample gradient
hooks instead (`OpacusPerSample`): exact, slower. `clipper(module)` picks one; either leaves in
each weight's .grad the sum over the batch of the per-sample gradients, each clipped to norm C. The noise is the caller's (common.dp_training).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Protocol

import torch
from torch import nn
from torch.nn import functional as F


PerRowLoss = Callable[[], torch.Tensor]  # runs the module on a batch: one loss per row


class Clipper(Protocol):
    def clipped_sum(self, per_row_loss: PerRowLoss) -> torch.Tensor: ...


def clipper(module: nn.Module, max_grad_norm: float) -> Clipper:
    """Book-keeping when every weight is in a linear or book-kept layer, else Opacus' hooks."""
    if book_keepable(module):
        return BookKeeping(module, max_grad_norm)
    return OpacusPerSample(module, max_grad_norm)


def book_keepable(module: nn.Module) -> bool:
    """Whether every trainable weight of `module` lies in an nn.Linear or a BookKeptLayer."""
    kept = {id(p) for m in module.modules() if isinstance(m, (nn.Linear, BookKeptLayer))
            for p in m.parameters(recurse=False)}
    return all(id(p) in kept for p in module.parameters() if p.requires_grad)


class BookKeptLayer(nn.Module):
    """A layer that computes its own per-row squared gradient norms and clipped gradient sums
    from its input and output gradient, as BookKeeping does for nn.Linear. Called at most once
    per forward pass. Subclasses implement `compute`, `input_grad`, `squared_norms` and
    `set_clipped_grads`."""

    book: _Book | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.book is None:
            return self.compute(x)
        return _RecordedLayer.apply(x, self, self.book, *self.parameters(recurse=False))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def input_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def squared_norms(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def set_clipped_grads(self, x: torch.Tensor, g: torch.Tensor, scale: torch.Tensor) -> None:
        """Each weight's .grad = the sum over rows of scale_i x row i's gradient."""
        raise NotImplementedError


class _Book:
    """Each linear layer's (activations, output gradients) of one batch, as rows x positions x
    width (positions 1 unless the layer saw a sequence or ran more than once)."""

    def __init__(self) -> None:
        self.entries: dict[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def record(self, layer: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> None:
        self.entries.setdefault(layer, []).append((a, g))


class _RecordedLinear(torch.autograd.Function):
    """F.linear whose backward passes the input gradient on and books (a, g) for the layer
    instead of computing the weight's gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, book):
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.book = layer, book
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        # Detached: x's grad_fn leads back through the graph to this ctx, which holds the book,
        # a cycle only the garbage collector would free (memory growing step by step).
        ctx.book.record(ctx.layer, x.detach(), g)
        grad_x = g @ weight if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None


class _RecordedLayer(torch.autograd.Function):
    """A BookKeptLayer's forward whose backward books (x, g) and passes the input gradient on.
    The weights are inputs only so that autograd reaches this node."""

    @staticmethod
    def forward(ctx, x, layer, book, *weights):
        ctx.save_for_backward(x)
        ctx.layer, ctx.book = layer, book
        with torch.no_grad():
            return layer.compute(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        ctx.book.record(ctx.layer, x.detach(), g)
        grad_x = ctx.layer.input_grad(x, g) if ctx.needs_input_grad[0] else None
        return (grad_x, None, None) + (None,) * (len(ctx.needs_input_grad) - 3)


@contextmanager
def _recording(layers: list[nn.Module], book: _Book):
    for layer in layers:
        if isinstance(layer, BookKeptLayer):
            layer.book = book
            continue
        # An instance attribute shadows nn.Linear.forward for this layer only, until deleted.
        layer.forward = (lambda x, layer=layer:
                         _RecordedLinear.apply(x, layer.weight, layer.bias, layer, book))
    try:
        yield
    finally:
        for layer in layers:
            if isinstance(layer, BookKeptLayer):
                del layer.book
            else:
                del layer.forward


def _as_sequence(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _row_norms2(t: torch.Tensor) -> torch.Tensor:
    # A reduction, not t.pow(2).sum(1): no temporary the size of the activations, whose fresh
    # pages cost more than the arithmetic here.
    return torch.linalg.vector_norm(t, dim=1).square()


def _squared_norms(calls: list[tuple[torch.Tensor, torch.Tensor]], bias: bool) -> torch.Tensor:
    """Each sample's squared gradient norm for one layer (weight and bias)."""
    if len(calls) == 1 and calls[0][0].dim() == 2:
        a, g = calls[0]
        gg = _row_norms2(g)
        return gg * _row_norms2(a) + (gg if bias else 0)
    a = torch.cat([_as_sequence(a) for a, _ in calls], 1)
    g = torch.cat([_as_sequence(g) for _, g in calls], 1)
    norms = ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))
    return norms + (_row_norms2(g.sum(1)) if bias else 0)


def _scale(squared_norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Each row's clipping factor, as Opacus computes it: C / (norm + 1e-6), at most 1."""
    return (max_grad_norm / (squared_norms.sqrt() + 1e-6)).clamp(max=1.0)


def _zero_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = torch.zeros_like(p)


def trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


class BookKeeping:
    """Clipped per-row gradient sums in one backward pass (see the module's docstring).
    Rows must be independent: a row's loss may depend on that row only (no batch norm)."""

    def __init__(self, module: nn.Module, max_grad_norm: float):
        self.max_grad_norm = max_grad_norm
        self.layers = [m for m in module.modules() if isinstance(m, (nn.Linear, BookKeptLayer))]
        self.params = trainable(module)

    def clipped_sum(self, per_row_loss: PerRowLoss) -> torch.Tensor:
        """Run `per_row_loss()` and its backward pass once; set each trainable weight's .grad
        to the sum over rows of the per-row gradients clipped to C. Returns the losses."""
        book = _Book()
        with _recording(self.layers, book):
            losses = per_row_loss()
            losses.sum().backward()
        with torch.no_grad():
            self._clip_and_sum(book, len(losses))
        return losses.detach()

    def _clip_and_sum(self, book: _Book, rows: int) -> None:
        norms = torch.zeros(rows, device=self.params[0].device)
        for layer, calls in book.entries.items():
            if isinstance(layer, BookKeptLayer):
                if len(calls) != 1:
                    raise RuntimeError(f"{type(layer).__name__} ran {len(calls)} times in one "
                                       "forward pass; a book-kept layer may run once")
                norms += layer.squared_norms(*calls[0])
            else:
                norms += _squared_norms(calls, layer.bias is not None)
        scale = _scale(norms, self.max_grad_norm)
        for p in self.params:  # a layer the batch did not reach gets a zero sum
            p.grad = None
        for layer, calls in book.entries.items():
            if isinstance(layer, BookKeptLayer):
                layer.set_clipped_grads(*calls[0], scale)
                continue
            if len(calls) == 1 and calls[0][0].dim() == 2:  # the common case: one matrix product
                a, g = calls[0]
                # Not in place: autograd hands one gradient tensor to every branch of a sum.
                g = g * scale[:, None]
                layer.weight.grad = g.T @ a
                if layer.bias is not None:
                    layer.bias.grad = g.sum(0)
                continue
            layer.weight.grad = torch.zeros_like(layer.weight)
            if layer.bias is not None:
                layer.bias.grad = torch.zeros_like(layer.bias)
            for a, g in calls:
                g = (_as_sequence(g) * scale.view(-1, 1, 1)).flatten(0, 1)
                layer.weight.grad.addmm_(g.T, _as_sequence(a).flatten(0, 1))
                if layer.bias is not None:
                    layer.bias.grad += g.sum(0)
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)


class OpacusPerSample:
    """Clipped per-row gradient sums from the per-row gradients Opacus' hooks materialise."""

    def __init__(self, module: nn.Module, max_grad_norm: float):
        self.module, self.max_grad_norm = module, max_grad_norm

    def clipped_sum(self, per_row_loss: PerRowLoss) -> torch.Tensor:
        from opacus import GradSampleModule

        # Wrapped for this batch only, so the module stays bare between steps (and for sampling).
        wrapped = GradSampleModule(self.module, loss_reduction="sum")
        params = trainable(self.module)
        try:
            losses = per_row_loss()
            for p in params:
                p.grad_sample = None
            with warnings.catch_warnings():
                # Opacus' full backward hooks fire harmlessly when no input needs a gradient.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                losses.sum().backward()
            samples = [p.grad_sample if p.grad_sample is not None
                       else torch.zeros(len(losses), *p.shape, device=p.device) for p in params]
        finally:
            wrapped._close()
        norms = sum(s.flatten(1).pow(2).sum(1) for s in samples)
        scale = _scale(norms, self.max_grad_norm)
        _zero_grads(params)
        for p, s in zip(params, samples):
            p.grad += torch.einsum("i,i...->...", scale, s)
        return losses.detach()
