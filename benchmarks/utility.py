"""Full-size acceptance on Adult: train on adult.data at epsilon 3 and 1 (delta 1e-5), sample
32,561 rows, and judge them on adult.test with independent classifiers (scikit-learn gradient
boosting and random forest on one-hot features), against the same classifiers trained on real rows.
"""

from __future__ import annotations

import time

from .common import isolated, machine, markdown  # noqa: F401


def _referee(schema, train, test) -> dict:
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score

    cats = [c.name for c in schema.columns if c.kind != "numeric" and c.name != schema.target]
    both = pd.get_dummies(pd.concat([train, test]).drop(columns=schema.target), columns=cats,
                          dummy_na=True).astype(float).fillna(-1)
    xs, xt = both.iloc[:len(train)], both.iloc[len(train):]
    ys, yt = train[schema.target] == ">50K", test[schema.target] == ">50K"
    gb = HistGradientBoostingClassifier(random_state=0).fit(xs, ys)
    rf = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0).fit(xs, ys)
    return {"gb_auc": roc_auc_score(yt, gb.predict_proba(xt)[:, 1]),
            "rf_acc": accuracy_score(yt, rf.predict(xt))}


def one(epsilon: float | None, seed: int = 0) -> dict:
    import torch

    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TEST, ADULT_TRAIN
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema
    from synthpool.common.synthesis import train_single_site

    torch.set_num_threads(2)
    schema = Schema.load(ADULT_SCHEMA)
    train, _ = load_table(ADULT_TRAIN, schema)
    test, _ = load_table(ADULT_TEST, schema)
    if epsilon is None:
        return _referee(schema, train, test) | {"fit_s": 0.0, "epsilon_spent": float("nan")}
    start = time.perf_counter()
    res = train_single_site(schema, train, epsilon=epsilon, delta=1e-5, seed=seed)
    fit = time.perf_counter() - start
    syn = res.sample(len(train))
    return _referee(schema, syn, test) | {"fit_s": fit, "epsilon_spent": res.spend.epsilon}


def run() -> str:
    rows = []
    for label, eps in (("real rows (reference)", None), ("synthpool eps=3", 3.0),
                       ("synthpool eps=1", 1.0)):
        r = isolated("benchmarks.utility", "one", epsilon=eps)
        rows.append({"trained on": label, "GB ROC AUC": r["gb_auc"], "RF accuracy": r["rf_acc"],
                     "epsilon (accountant)": r["epsilon_spent"], "fit + DP stats (s)": r["fit_s"],
                     "peak RSS MB": round(r["peak_rss_mb"])})
    return markdown(rows)
