"""Single-site synthesis: one data owner, the whole pipeline on one machine.

schema -> load + validate -> DP histograms -> transform -> DP-SGD -> sample -> inverse transform,
with a manifest that lets anyone recompute the epsilon from its own fields.
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .dp_training import TrainStats
from .generators.base import Generator, resolve_device
from .generators import registry
from .generators.registry import DEFAULT_FAMILY
from .planning import TrainingPlan, dp_sgd_config, preprocessing_noise
from .privacy import DeltaWarning, GaussianMechanism, PureSpend, Spend, check_budget, delta_warning
from .schema import Schema
from .stats import collect_stats
from .transforms import TableTransformer

PACKAGES = ("synthpool", "torch", "opacus", "flwr", "numpy", "pandas", "scikit-learn")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def schema_drafts(schema: Schema, site: str | None = None) -> dict[str, list[PureSpend]]:
    """The DP spends recorded in the schema's provenance (a DP schema draft) that `site`'s
    ledger must hold, by draft id (one ledger charge each): those drafted on its rows or on rows
    the draft does not name. None: a single-site run, which charges them all."""
    drafts: dict[str, list[PureSpend]] = {}
    for p in schema.provenance:
        if p.charged_at(site):
            drafts.setdefault(p.draft_id or "schema-draft", []).append(
                PureSpend(f"schema: {p.mechanism}", p.epsilon, p.delta))
    return drafts


def schema_spends(schema: Schema, site: str | None = None) -> list[PureSpend]:
    return [spend for spends in schema_drafts(schema, site).values() for spend in spends]


@dataclass
class SynthesisResult:
    generator: Generator
    spend: Spend
    manifest: dict = field(default_factory=dict)
    # How training went (steps, rows seen, seconds): for the owner's own console and benchmarks,
    # never written to the manifest (rows seen and seconds depend on the exact Poisson batches).
    train: TrainStats | None = None


def train_single_site(
    schema: Schema,
    df: pd.DataFrame,
    *,
    epsilon: float,
    delta: float,
    plan: TrainingPlan = TrainingPlan(),
    family: str = DEFAULT_FAMILY,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    hyperparameters: dict | None = None,
) -> SynthesisResult:
    """Spend (epsilon, delta) on `df`: DP histograms, then DP-SGD calibrated so the composition of
    both (and any DP schema draft) is at most epsilon.

    Raises InvalidBudget (common/privacy.py) before anything is read for an epsilon <= 0 or a
    delta outside (0, 1); warns (DeltaWarning) when delta > 1 / the DP row estimate."""
    epsilon, delta = check_budget(epsilon, delta)
    device = resolve_device(device)
    # Refuse bad hyperparameters before a row is read: nothing is spent on a run that cannot train.
    hp = registry.hyperparameters(family, hyperparameters)
    pure = schema_spends(schema)
    rdp_delta = delta - sum(p.delta for p in pure)
    rdp_epsilon = epsilon - sum(p.epsilon for p in pure)
    if rdp_delta <= 0 or rdp_epsilon <= 0:
        raise ValueError(f"the schema's DP draft already spends the budget ({pure})")
    # Histogram noise from OS entropy, never from the published seed (see dp_training).
    stats = collect_stats(schema, df, preprocessing_noise(plan, rdp_epsilon, rdp_delta),
                          np.random.default_rng())
    warning = delta_warning(delta, stats.noisy_rows())
    if warning:
        warnings.warn(warning, DeltaWarning, stacklevel=2)
    transformer = TableTransformer(schema, stats, max_bins=plan.max_bins)
    dp = dp_sgd_config(plan, rdp_epsilon, rdp_delta, stats.noisy_rows(), stats.mechanisms)
    generator = registry.build(family, transformer, hp, seed=seed, device=device)
    encoded = transformer.encode(df).to(device)
    train = generator.fit_steps(encoded, dp, progress=progress)
    # The steps actually taken are what the accountant charges.
    mechanisms = [*stats.mechanisms,
                  GaussianMechanism("dp-sgd", dp.noise_multiplier, dp.sample_rate, train.steps)]
    spend = Spend(delta=delta, mechanisms=mechanisms, pure=pure)
    # Nothing here is an exact count or a timing of the private rows: the row count is the DP
    # estimate, and the training's seconds and rows seen (which add up the Poisson batch sizes)
    # stay in `SynthesisResult.train`. The creation time is taken after training, so with the
    # files' own times it does not bracket how long training took.
    manifest = {
        "kind": "synthpool.single-site",
        "created_unix": int(time.time()),
        "schema": schema.describe(),
        "model": generator.describe(),
        "training": {
            "plan": plan.to_dict(), "steps": train.steps, "sample_rate": dp.sample_rate,
            "noise_multiplier": dp.noise_multiplier, "max_grad_norm": dp.max_grad_norm,
            "poisson_sampling": True, "method": generator.training,
            "expected_batch": dp.expected_batch, "device": device,
        },
        "rows_estimate_dp": round(stats.noisy_rows()),
        "privacy": {
            "requested": {"epsilon": epsilon, "delta": delta},
            **spend.to_dict(),
            "unit": "one row of the input table (add/remove neighbouring datasets)",
            **({"warnings": [warning]} if warning else {}),
        },
        "seed": seed,
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
    }
    return SynthesisResult(generator, spend, manifest, train)
