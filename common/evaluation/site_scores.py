"""What a site may send back after scoring a synthetic release against its own rows.

Federated evaluation runs at each site (the coordinator never sees real rows), so the site must
return numbers that say how good and how safe the release is without describing its people:

- `site_scores`: aggregate scores only: single numbers per metric and per column or model (no
  rows, no per-row distances or distance quantiles, no curves, no real-data histograms or
  association matrices). These are not DP outputs; each is one comparison number already averaged
  over thousands of rows, and the site's owner decides to share them (the agent can gate this).
- `dp_histograms`: the only distribution-level statistic of the real rows that leaves a site for
  the shared report, and it is a charged Gaussian mechanism. Each row adds 1 to exactly one cell
  of every column's histogram on the PUBLIC grid (`grids.column_grid`), so the concatenated
  vector has L2 sensitivity sqrt(#columns) under add/remove-one-row. Adding N(0, s^2) noise with
  s = noise_multiplier * sqrt(#columns) to every cell is therefore a Gaussian mechanism with noise
  multiplier `noise_multiplier`: the CALLER charges it to the site's ledger as ONE
  `GaussianMechanism(name, noise_multiplier, sample_rate=1.0, steps=1)` (the returned
  `mechanism` dict has exactly those fields) BEFORE releasing the result.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..schema import Schema
from .fidelity import fidelity
from .grids import column_grid, counts
from .jsonable import jsonable
from .privacy import privacy_risk
from .utility import tstr

HISTOGRAM_BINS = 20


def site_scores(schema: Schema, train: pd.DataFrame, holdout: pd.DataFrame,
                synthetic: pd.DataFrame, *, seed: int = 0, max_query_rows: int = 5000,
                max_train_rows: int = 20000, progress=None) -> dict:
    fid = fidelity(schema, train, synthetic)
    util = tstr(schema, train, holdout, synthetic, seed=seed, max_train_rows=max_train_rows,
                progress=progress)
    priv = privacy_risk(schema, train, holdout, synthetic, seed=seed,
                        max_query_rows=max_query_rows, progress=progress)
    out = {
        "n_rows": {"train": len(train), "holdout": len(holdout), "synthetic": len(synthetic)},
        "fidelity": {
            "overall": fid["overall"],
            "column_shapes": fid["column_shapes"]["score"],
            "column_pair_trends": fid["column_pair_trends"]["score"],
            "column_pair_trends_all_pairs": fid["column_pair_trends"]["score_all_pairs"],
            "dependence": fid["dependence"]["score"],
            "boundary_adherence": fid["boundary_adherence"]["score"],
            "category_coverage": fid["category_coverage"]["score"],
            "missing_values": fid["missing_values"]["score"],
            "column_shape_by_column": {k: v["score"] for k, v in fid["column_shapes"]["columns"].items()},
        },
        "utility": _utility_numbers(util),
        "privacy": _privacy_numbers(priv),
    }
    return jsonable(out)


def _utility_numbers(util: dict) -> dict:
    out = {k: util[k] for k in ("target", "task", "skipped") if k in util}
    for model, by_source in util.get("models", {}).items():
        for source, res in by_source.items():
            for metric in ("accuracy", "f1", "roc_auc"):
                out[f"{model}.{source}.{metric}"] = res.get(metric, math.nan)
    return out


def _privacy_numbers(priv: dict) -> dict:
    if "skipped" in priv:
        return {"skipped": priv["skipped"]}
    dcr, mia, emp = priv["dcr"], priv["membership_inference"], priv["empirical_privacy"]
    return {
        "dcr.synthetic.median": dcr["synthetic"]["median"],
        "dcr.synthetic.p5": dcr["synthetic"]["p5"],
        "dcr.holdout.median": dcr["holdout"]["median"],
        "dcr.holdout.p5": dcr["holdout"]["p5"],
        "dcr.share_closer_than_holdout_p5": dcr["share_closer_than_holdout_p5"],
        "exact_copy_rate": dcr["exact_copy_rate"],
        "mia.distance.auc": mia["distance"]["auc"],
        "mia.distance.tpr_at_fpr_1pct": mia["distance"]["tpr_at_fpr_1pct"],
        "mia.density_ratio.auc": mia["density_ratio"]["auc"],
        "mia.density_ratio.tpr_at_fpr_1pct": mia["density_ratio"]["tpr_at_fpr_1pct"],
        "empirical_epsilon_hat": emp.get("epsilon_hat", math.nan),
        "empirical_delta_hat": emp.get("delta_hat", math.nan),
    }


# -- the DP release -------------------------------------------------------------------------------
def dp_histograms(schema: Schema, df: pd.DataFrame, noise_multiplier: float,
                  rng: np.random.Generator, *, n_bins: int = HISTOGRAM_BINS,
                  name: str = "evaluation_histograms") -> dict:
    """Gaussian-noised per-column counts on the public grid (see the module doc for the charge)."""
    if not noise_multiplier > 0:
        raise ValueError("noise_multiplier must be > 0")
    std = noise_multiplier * math.sqrt(len(schema.columns))
    columns = {}
    for col in schema.columns:
        grid = column_grid(col, n_bins)
        noisy = counts(col, df[col.name], n_bins) + rng.normal(0.0, std, grid.size)
        columns[col.name] = {"kind": col.kind, "labels": grid.labels, "edges": grid.edges,
                             "counts": noisy.round(3).tolist()}
    return {
        "mechanism": {"name": name, "noise_multiplier": float(noise_multiplier),
                      "sample_rate": 1.0, "steps": 1},
        "noise_std": std,
        "l2_sensitivity": math.sqrt(len(schema.columns)),
        "n_bins": n_bins,
        "columns": columns,
    }


def exact_histograms(schema: Schema, df: pd.DataFrame, *, n_bins: int = HISTOGRAM_BINS) -> dict:
    """The same grid without noise: for synthetic (public) rows, or for a report kept at the site."""
    return {col.name: {"kind": col.kind, "labels": column_grid(col, n_bins).labels,
                       "edges": column_grid(col, n_bins).edges,
                       "counts": counts(col, df[col.name], n_bins).tolist()}
            for col in schema.columns}
