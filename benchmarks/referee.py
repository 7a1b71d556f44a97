"""An independent referee for a synthetic table, written for the benchmarks (it shares no code
with common/evaluation, which the product ships): utility by train-on-synthetic, test-on-real
with scikit-learn classifiers, column shapes, and dependence between columns.

Dependence: for every pair of columns, Cramer's V on the real training rows and on the synthetic
rows (numerics cut into 10 quantile bins of the real rows, missing as its own level); the score
is 1 - mean |V_real - V_synthetic|. Columns sampled independently from their real marginals keep
the shapes and lose all dependence: their score is the floor, and `dependence_kept` is the share
of the gap between that floor and 1 that a release closes.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def _binned(schema, real: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for col in schema.columns:
        r, s = real[col.name], frame[col.name]
        if col.kind == "numeric":
            edges = np.unique(np.nanquantile(r.to_numpy(float), np.linspace(0, 1, 11)))
            codes = np.searchsorted(edges[1:-1], s.to_numpy(float), side="right")
            out[col.name] = np.where(s.isna(), -1, codes)
        else:
            out[col.name] = s.astype(str).where(s.notna(), "<missing>").to_numpy()
    return pd.DataFrame(out)


def _cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    table = pd.crosstab(a, b).to_numpy(float)
    if min(table.shape) < 2:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / n / (min(table.shape) - 1)))


def dependence(schema, real: pd.DataFrame, synthetic: pd.DataFrame) -> float:
    rb, sb = _binned(schema, real, real), _binned(schema, real, synthetic)
    gaps = [abs(_cramers_v(rb[a].to_numpy(), rb[b].to_numpy())
                - _cramers_v(sb[a].to_numpy(), sb[b].to_numpy()))
            for a, b in itertools.combinations(schema.names, 2)]
    return 1.0 - float(np.mean(gaps))


def independent_floor(schema, real: pd.DataFrame, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    shuffled = pd.DataFrame({c: rng.permutation(real[c].to_numpy()) for c in real.columns})
    return dependence(schema, real, shuffled)


def column_shapes(schema, real: pd.DataFrame, synthetic: pd.DataFrame) -> float:
    """Mean over columns of 1 - KS statistic (numerics) or 1 - total variation (the others)."""
    scores = []
    for col in schema.columns:
        r, s = real[col.name], synthetic[col.name]
        if col.kind == "numeric":
            x, y = np.sort(r.dropna().to_numpy(float)), np.sort(s.dropna().to_numpy(float))
            grid = np.union1d(x, y)
            ks = np.max(np.abs(np.searchsorted(x, grid, side="right") / len(x)
                               - np.searchsorted(y, grid, side="right") / len(y)))
            scores.append(1 - ks)
        else:
            p = r.astype(str).value_counts(normalize=True)
            q = s.astype(str).value_counts(normalize=True)
            scores.append(1 - 0.5 * p.subtract(q, fill_value=0).abs().sum())
    return float(np.mean(scores))


def utility(schema, train: pd.DataFrame, test: pd.DataFrame, positive: str) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.metrics import roc_auc_score

    cats = [c.name for c in schema.columns if c.kind != "numeric" and c.name != schema.target]
    both = pd.get_dummies(pd.concat([train, test]).drop(columns=schema.target), columns=cats,
                          dummy_na=True).astype(float).fillna(-1)
    xs, xt = both.iloc[:len(train)], both.iloc[len(train):]
    ys = (train[schema.target].astype(str) == positive).to_numpy()
    yt = (test[schema.target].astype(str) == positive).to_numpy()
    if ys.all() or not ys.any():
        return {"gb_auc": 0.5, "rf_auc": 0.5}
    gb = HistGradientBoostingClassifier(random_state=0).fit(xs, ys)
    rf = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0).fit(xs, ys)
    return {"gb_auc": float(roc_auc_score(yt, gb.predict_proba(xt)[:, 1])),
            "rf_auc": float(roc_auc_score(yt, rf.predict_proba(xt)[:, 1]))}


def judge(schema, train: pd.DataFrame, test: pd.DataFrame, synthetic: pd.DataFrame,
          positive: str, floor: float) -> dict:
    dep = dependence(schema, train, synthetic)
    return utility(schema, synthetic, test, positive) | {
        "shapes": column_shapes(schema, train, synthetic), "dependence": dep,
        "dependence_kept": (dep - floor) / (1 - floor)}
