"""One synthesizer's life, the same wherever it runs: schema + DP statistics -> transform ->
family -> fit (DP-SGD) -> sample -> decode.

Single-site synthesis (common/synthesis.py), a site's training job (agent/clientapp/site_job.py) and the
coordinator's initial model and sampler (coordinator/serverapp/release.py) all build their
generator here, so every party of a training holds the same token layout and the same model for
the same (schema, statistics, family, hyperparameters, seed), and the pooled weights mean the same
thing everywhere. What differs between them is around this: what is charged, where rows come
from, what is written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .dp_training import DPSGDConfig, ProgressFn, TrainStats
from .generators import registry
from .generators.base import Generator, Hyperparameters
from .schema import Schema
from .stats import TableStats
from .token_matrix import TokenMatrix
from .transforms import TableTransformer


def sample_seed(seed: int) -> int:
    """The seed synthetic rows are drawn with: the run's seed + 1, so that drawing the rows is
    not a replay of the model's initialisation (both are published in the manifest)."""
    return seed + 1


class Synthesizer:
    """A generator family over the reversible transform of one schema under one set of DP
    statistics. The transform depends on the schema and the statistics only (never on rows),
    so it is public and every party builds the same one."""

    def __init__(self, schema: Schema, stats: TableStats, family: str,
                 hyperparameters: Hyperparameters | dict | None = None, *, max_bins: int,
                 seed: int = 0, device: str = "cpu") -> None:
        self.transformer = TableTransformer(schema, stats, max_bins=max_bins)
        self.generator: Generator = registry.build(family, self.transformer, hyperparameters,
                                                   seed=seed, device=device)
        self.seed, self.device = seed, device

    def encode(self, rows: pd.DataFrame) -> TokenMatrix:
        """Validated rows (common/loading.py) as the family's tokens."""
        return self.transformer.encode(rows)

    def fit(self, encoded: TokenMatrix, dp: DPSGDConfig, *, progress: ProgressFn | None = None,
            proximal_mu: float = 0.0) -> TrainStats:
        """Exactly `dp.steps` DP-SGD steps (the caller charged them before)."""
        return self.generator.fit_steps(encoded.to(self.device), dp, progress=progress,
                                        proximal_mu=proximal_mu)

    def sample(self, n: int, conditions: dict[str, str] | None = None) -> pd.DataFrame:
        """`n` decoded rows in the schema's types, drawn with `sample_seed(seed)`."""
        return self.generator.sample(n, conditions, seed=sample_seed(self.seed))

    def get_weights(self) -> list[np.ndarray]:
        return self.generator.get_weights()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.generator.set_weights(weights)

    def describe(self) -> dict:
        """The manifest's `model` entry (the family says what it trained and how)."""
        return self.generator.describe()
