"""Empirical privacy checks of a synthetic table against the real rows it was trained on.

None of these numbers is a privacy guarantee: the formal (epsilon, delta) of the training is. They
are attacks and distances that catch the failures a bug or a mis-set budget would cause (copied
rows, memorised outliers), and the one-line reading of each is in the report.

- Distance to closest record (DCR): for synthetic rows, the distance to the nearest TRAINING row;
  for real hold-out rows (never seen by the generator), the same. If synthetic rows sit much
  closer to training rows than fresh real rows do, the generator reproduces its training data.
  `share_closer_than_holdout_p5`: share of synthetic rows closer than the hold-out's 5th
  percentile (about 0.05 when the generator does not copy). `exact_copy_rate`: share of ALL synthetic
  rows equal in every column to some training row (by hashing raw values: no cap, no float
  tolerance), next to `holdout_exact_match_rate`, the same for fresh real rows (natural
  duplicates: the baseline).
- Membership inference, members = training rows, non-members = hold-out rows, equal numbers; the
  attacker sees only the synthetic table (and, for (b), a reference sample of the population).
  AUC 0.5 is a coin flip, 1.0 always right. `tpr_at_fpr_1pct` reports the worst-case-leaning view:
  how many members are caught while accusing at most 1% of non-members.
  (a) distance: score = -distance to the nearest synthetic row.
  (b) density ratio (DOMIAS, van Breugel et al., AISTATS 2023): score = log q_syn(x) - log p_ref(x),
      the synthetic table's density at x over the population's, the latter estimated from a
      reference half of the hold-out (disjoint from the non-members being scored). Dividing by
      the population density stops the attack from accusing every row of a dense region, so it
      finds records around which the generator put more mass than the population explains
      (local overfitting, memorised outliers). Densities are 1-nearest-neighbour estimates,
      p(x) ~ 1/(n r(x)^D), so the score ranks as log r_ref(x) - log r_syn(x). Same AUC as (a) on
      plain copies, but several times the true-positive rate at 1% false positives on noisy
      copies (measured on Adult): the regime that matters (Carlini et al., "Membership inference
      attacks from first principles", 2022).
- Density-ratio shift (see density_shift; a heuristic, NOT Triastcyn & Faltings' estimator, which
  needs a generator retrained without the records: empirical_privacy): per-record log density
  ratios in nats, from Gaussian kernel densities over the k nearest rows, bandwidth = the median
  distance from a fresh real row to its nearest synthetic row. Reported under the key
  "empirical_privacy", which is on the wire between sites and coordinator.

Row caps, for speed on two cores: every queried set (synthetic rows for DCR, members, non-members)
is a random sample of at most `max_query_rows` (default 5,000); the sets searched (training rows,
synthetic rows, reference rows) at most `max_index_rows` (default 50,000). The hold-out is split in
half: non-members and the reference sample; members are as many training rows. The hold-out must
be a random split of the same population as the training rows: a shifted hold-out (another year,
another site) makes members look special for reasons that are not privacy.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from ..schema import Schema
from .density_shift import density_shift
from .encoding import Encoder
from .neighbours import Index, log_density_from_distances

# Floating-point distances of identical encoded rows come out around 1e-8, not 0.
DISTANCE_FLOOR = 1e-6
QUANTILES = np.linspace(0, 100, 21)
MIN_ROWS = 10


def privacy_risk(schema: Schema, train: pd.DataFrame, holdout: pd.DataFrame,
                 synthetic: pd.DataFrame, *, seed: int = 0, max_query_rows: int = 5000,
                 max_index_rows: int = 50000, k: int = 20,
                 progress: Callable[[str], None] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    enc = Encoder(schema)
    say = progress or (lambda _msg: None)

    x_train = enc.transform(_cap(train, max_index_rows, rng))
    x_syn = enc.transform(_cap(synthetic, max_index_rows, rng))
    x_hold = enc.transform(holdout.iloc[rng.permutation(len(holdout))])
    n_eval = min(len(x_hold) // 2, max_query_rows, len(x_train))
    if n_eval < MIN_ROWS or len(x_syn) == 0:
        return {"skipped": f"needs at least {2 * MIN_ROWS} hold-out rows, {MIN_ROWS} training rows "
                           "and some synthetic rows"}
    x_nonmem, x_ref = x_hold[:n_eval], x_hold[n_eval:n_eval + max_index_rows]
    x_mem = x_train[rng.choice(len(x_train), n_eval, replace=False)]
    x_syn_q = x_syn[rng.choice(len(x_syn), min(len(x_syn), max_query_rows), replace=False)]

    say("privacy: distances to the closest training record")
    train_index = Index(x_train)
    d_syn = train_index.distances(x_syn_q)[:, 0]
    d_hold = train_index.distances(x_nonmem)[:, 0]
    p5 = float(np.percentile(d_hold, 5))
    dcr = {
        "synthetic": _summary(d_syn),
        "holdout": _summary(d_hold),
        "share_closer_than_holdout_p5": float(np.mean(d_syn < p5)),
        "exact_copy_rate": _copy_rate(synthetic, train),
        "holdout_exact_match_rate": _copy_rate(holdout, train),
    }

    say("privacy: membership inference attacks")
    syn_index, ref_index = Index(x_syn), Index(x_ref)
    ds_mem, ds_non = syn_index.distances(x_mem, k), syn_index.distances(x_nonmem, k)
    dr_mem, dr_non = ref_index.distances(x_mem, k), ref_index.distances(x_nonmem, k)
    labels = np.r_[np.ones(n_eval), np.zeros(n_eval)]
    distance_attack = _attack(labels, -np.r_[ds_mem[:, 0], ds_non[:, 0]])

    ratio_attack = _attack(labels, np.r_[_knn_ratio(ds_mem, dr_mem), _knn_ratio(ds_non, dr_non)])
    density_attack = ratio_attack | {"neighbours": 1}

    say("privacy: density-ratio shift")
    h = _bandwidth(ds_non[:, 0])
    def kde_ratio(ds, dr):
        return (log_density_from_distances(ds, h, syn_index.n)
                - log_density_from_distances(dr, h, ref_index.n))
    ell_mem, ell_non = kde_ratio(ds_mem, dr_mem), kde_ratio(ds_non, dr_non)

    return {
        "dcr": dcr,
        "membership_inference": {
            "distance": distance_attack,
            "density_ratio": density_attack,
            "n_members": int(n_eval),
            "n_nonmembers": int(n_eval),
            "n_reference": int(len(x_ref)),
        },
        # The key keeps its old name: sites send it to the coordinator (site_scores, pooled).
        "empirical_privacy": density_shift(ell_mem, ell_non) | {"bandwidth": h, "neighbours": k},
        "caps": {"max_query_rows": max_query_rows, "max_index_rows": max_index_rows,
                 "synthetic_rows_searched": int(len(x_syn)), "training_rows_searched": int(len(x_train))},
    }


def _knn_ratio(d_syn: np.ndarray, d_ref: np.ndarray) -> np.ndarray:
    """log r_ref(x) - log r_syn(x) with r = distance to the nearest row: the 1-NN density estimate
    p(x) ~ 1 / (n r(x)^D) makes this the log density ratio divided by the dimension D, which
    ranks the same (n and D are constants)."""
    return np.log(d_ref[:, 0] + DISTANCE_FLOOR) - np.log(d_syn[:, 0] + DISTANCE_FLOOR)


def _bandwidth(d_fresh_to_syn: np.ndarray) -> float:
    """Kernel width: the median distance from a fresh real row to the nearest synthetic row, the
    scale at which the synthetic table resolves the population."""
    positive = d_fresh_to_syn[d_fresh_to_syn > DISTANCE_FLOOR]
    return float(np.median(positive)) if positive.size else 0.1


def _attack(labels: np.ndarray, scores: np.ndarray) -> dict:
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)),
            "tpr_at_fpr_1pct": float(np.interp(0.01, fpr, tpr))}


def _row_keys(df: pd.DataFrame) -> pd.Series:
    """One string per row from the raw values, so equality is exact (39 and 39.0 are the same
    number, True and numpy's True the same boolean, every missing value the same)."""
    return pd.Series(["\x1f".join(t) for t in zip(*(_column_keys(df[c]) for c in df.columns))],
                     dtype=object)


def _column_keys(col: pd.Series) -> np.ndarray:
    """`_cell_key` of every cell, computed once per distinct value (a release's categorical
    columns have a few dozen; per cell it was most of the evaluation's attack time). Python's
    hashing takes True for 1, so a column mixing booleans with numbers is keyed cell by cell."""
    if col.dtype == object:
        types = set(map(type, col.to_numpy()))
        if types & {bool, np.bool_} and any(issubclass(t, (int, float, np.number)) and
                                            not issubclass(t, (bool, np.bool_)) for t in types):
            return col.map(_cell_key).to_numpy(dtype=object)
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    return np.array([_cell_key(v) for v in uniques], dtype=object)[codes]


def _missing(v) -> bool:
    return v is None or (not isinstance(v, str) and pd.isna(v))


def _cell_key(v) -> str:
    if _missing(v):
        return "\x00"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return repr(float(v))
    return "s" + str(v)


def _copy_rate(rows: pd.DataFrame, train: pd.DataFrame) -> float:
    """Share of `rows` equal in every column to some training row (all rows, no cap: hashing is
    cheap)."""
    if len(rows) == 0:
        return float("nan")
    return float(_row_keys(rows).isin(set(_row_keys(train))).mean())


def _summary(d: np.ndarray) -> dict:
    return {"median": float(np.median(d)), "p5": float(np.percentile(d, 5)),
            "mean": float(d.mean()), "quantiles": np.round(np.percentile(d, QUANTILES), 5).tolist()}


def _cap(df: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(df) <= n:
        return df
    return df.iloc[np.sort(rng.choice(len(df), n, replace=False))]
