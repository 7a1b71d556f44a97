"""A table's encoded rows as one token per column, expanded to the families' one-hot layout one
batch at a time.

The families read rows as one-hots ([features | target], the transformer's layout), but holding
the whole table that way costs 4 bytes x the one-hot width per row (Adult: 648 bytes, 3.2 GB for
5M rows). Here a row costs 2 bytes per column (Adult: 30 bytes, 150 MB for 5M rows), the matrix
may be memory-mapped from a site's cache, and a DP-SGD step expands only its Poisson batch: the
step's time and memory depend on the batch, not on the table.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def token_dtype(widest: int) -> np.dtype:
    """The smallest integer type that holds every token of a column `widest` tokens wide."""
    return np.dtype(np.int16 if widest <= np.iinfo(np.int16).max else np.int32)


class TokenMatrix:
    """Rows x columns of token indices; column j's token t is one-hot position starts[j] + t of
    a row `width` wide. Indexing (an index tensor or array, or a slice) gives float32 one-hots."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, starts: list[int], width: int,
                 device: str | torch.device = "cpu"):
        if isinstance(tokens, np.ndarray):
            with warnings.catch_warnings():
                # A read-only memory map is fine: the tokens are only ever gathered from.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tokens = torch.from_numpy(tokens)
        if tokens.dim() != 2 or tokens.shape[1] != len(starts):
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} for {len(starts)} columns")
        self.tokens, self.width = tokens.to(device), width
        self.starts = torch.as_tensor(starts, dtype=torch.long, device=self.tokens.device)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.to(self.device)
        tokens = self.tokens[index]
        out = torch.zeros(tokens.shape[0], self.width, device=self.device)
        return out.scatter_(1, tokens.long() + self.starts, 1.0)

    def to(self, device: str | torch.device) -> TokenMatrix:
        return self if torch.device(device) == self.device else TokenMatrix(
            self.tokens, self.starts.tolist(), self.width, device)

    def dense(self) -> torch.Tensor:
        """Every row as one-hots (small tables and tests only)."""
        return self[:]
