"""The one interface every generator family implements.

A family is one module in this package that registers itself with `register`. The rest of
synthpool (single-site synthesis, the site's Flower ClientApp, the coordinator's sampler) only
talks to this protocol, so a new model family needs no change anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch

from ..transforms import TableTransformer


@dataclass(frozen=True)
class DPSGDConfig:
    """One DP-SGD job: `steps` Poisson-sampled batches of expected size sample_rate * n."""

    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float


@dataclass(frozen=True)
class TrainStats:
    steps: int
    rows_seen: int
    seconds: float
    final_loss: float


ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


class Generator(Protocol):
    family: ClassVar[str]
    transformer: TableTransformer

    def fit_steps(
        self,
        encoded: torch.Tensor,
        dp: DPSGDConfig,
        progress: ProgressFn | None = None,
        proximal_mu: float = 0.0,
    ) -> TrainStats:
        """Train on rows already encoded by `self.transformer` under DP-SGD. `proximal_mu` > 0
        adds FedProx's proximal term towards the weights held when the call started."""
        ...

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: list[np.ndarray]) -> None: ...

    def sample(self, n: int, conditions: dict[str, str] | None = None) -> pd.DataFrame:
        """`n` rows in the schema's types; `conditions` fixes the target, e.g. {"income": ">50K"}."""
        ...


_FAMILIES: dict[str, type] = {}


def register(cls: type) -> type:
    _FAMILIES[cls.family] = cls
    return cls


def build(family: str, transformer: TableTransformer, *, seed: int = 0,
          device: str = "cpu", **hyperparameters) -> Generator:
    from . import cvae  # noqa: F401  (registers the built-in family)

    try:
        cls = _FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown generator family {family!r}; known: {sorted(_FAMILIES)}") from None
    return cls(transformer, seed=seed, device=device, **hyperparameters)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return device
