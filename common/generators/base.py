"""The one interface every generator family implements.

A family is a class (usually one module) that subclasses `Generator`. Nothing else in synthpool
knows a family: single-site synthesis, the site's ClientApp, the coordinator's update check and
sampler, and the manifests all go through this interface and the registry
(common/generators/registry.py), so a new family, even one in a package installed beside
synthpool, needs no change anywhere else.

A family's life, as in SDV's synthesizers: built from the schema's transformer (which fixes the
token layout) and its own validated hyperparameters -> `fit_steps` under DP-SGD -> get/set
weights (the federation averages them) -> `sample`, decoded by the same transformer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..dp_training import DPSGDConfig, ProgressFn, TrainStats, dp_sgd
from ..transforms import TableTransformer
from ..token_matrix import TokenMatrix
from ..update_bound import max_displacement


class Hyperparameters(BaseModel):
    """A family's own settings, validated wherever they arrive (CLI, run config, wire): unknown
    keys and out-of-range values are refused with the field's name. Every family trained by
    DP-SGD has a learning rate; the federation may override it (FedAvg of noisy updates wants a
    larger step than one site alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(2e-3, gt=0, le=1)
    # Decay of the moving average of the iterates a job returns (0: the last iterate); see
    # common.dp_training.dp_sgd.
    average: float = Field(0.0, ge=0, lt=1)


class Generator(ABC):
    """Base of every family. Subclasses set `family` and `Hyperparameters` and implement the
    abstract methods; `self.net` (an nn.Module holding every trained weight) gives weights for
    free."""

    family: ClassVar[str]
    Hyperparameters: ClassVar[type[Hyperparameters]] = Hyperparameters
    # What trains the weights, for the manifest (a reader must know what the epsilon covers).
    training: ClassVar[str] = ("DP-SGD: Poisson sampling, flat per-sample clipping (book-keeping, "
                               "one backward pass), Gaussian noise; Adam")

    net: torch.nn.Module
    loss: torch.nn.Module  # criterion(net(rows), rows), one loss per row when reduction="none"

    def __init__(self, transformer: TableTransformer, hyperparameters: Hyperparameters, *,
                 seed: int = 0, device: str = "cpu") -> None:
        self.transformer = transformer
        self.hp = hyperparameters
        self.seed, self.device = seed, device

    def fit_steps(self, encoded: TokenMatrix, dp: DPSGDConfig, progress: ProgressFn | None = None,
                  proximal_mu: float = 0.0) -> TrainStats:
        """Exactly `dp.steps` DP-SGD steps on rows encoded by `self.transformer` (the ledger was
        charged for them). `proximal_mu` > 0 adds FedProx's pull towards the starting weights.
        This default trains `self.net` on `self.loss` (per-row losses) with one Adam; a family
        with another optimizer overrides it, and `max_update` with it."""
        return dp_sgd(self.net, self.loss, encoded, dp, lr=self.hp.lr, device=self.device,
                      progress=progress, proximal_mu=proximal_mu, average=self.hp.average)

    @abstractmethod
    def sample(self, n: int, conditions: dict[str, str] | None = None,
               seed: int | None = None) -> pd.DataFrame:
        """`n` rows in the schema's types; `conditions` fixes the target, e.g. {"income": ">50K"}."""

    @classmethod
    def max_update(cls, hyperparameters: Hyperparameters, local_steps: int) -> float:
        """The most one round of `local_steps` can move any weight: the coordinator rejects plain
        updates beyond it and SecAgg+ quantizes into it (common/update_bound.py). This default
        holds for one Adam optimizer over all weights, as `common.dp_training.dp_sgd` runs."""
        return max_displacement(hyperparameters.lr, local_steps)

    def describe(self) -> dict:
        """The manifest's `model` entry: what a reader needs to know what was trained."""
        return {"family": self.family, "hyperparameters": self.hp.model_dump(),
                "training": self.training,
                "parameters": int(sum(p.numel() for p in self.net.parameters()))}

    def get_weights(self) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in self.net.state_dict().values()]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        keys = list(self.net.state_dict().keys())
        if len(weights) != len(keys):
            raise ValueError(f"expected {len(keys)} weight arrays, got {len(weights)}")
        state = {k: torch.as_tensor(w) for k, w in zip(keys, weights)}
        self.net.load_state_dict(state, strict=True)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return device
