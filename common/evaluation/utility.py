"""Utility: does a model trained on the synthetic rows work on real rows? (TSTR vs TRTR)

Train-on-synthetic-test-on-real (TSTR) is the question a data user cares about; the same model
trained on the real training rows and tested on the same real hold-out (TRTR) is the ceiling to
compare it with. Two model families, because generators can fool one and not the other: a random
forest (100 trees) and histogram gradient boosting, both on the schema-driven encoding.

The target is `schema.target`. Binary targets: the positive class is the LAST label in the schema's
order (Adult: ">50K"; booleans: True); F1 and the curves are for that class. Multiclass: macro F1,
one-vs-rest macro ROC AUC, and micro-averaged curves. Curves are thinned to about
`curve_points` points so that the report stays small. Rows with a missing target are dropped;
training rows are capped at `max_train_rows` (random subsample, documented in the result) for
speed on small machines.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import (accuracy_score, f1_score, precision_recall_curve, roc_auc_score,
                             roc_curve)
from threadpoolctl import threadpool_limits

from ..grids import category_codes, column_labels
from ..schema import Schema
from .encoding import Encoder

MODELS: dict[str, Callable[[int], object]] = {
    "random_forest": lambda seed: RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=seed),
    "hist_gradient_boosting": lambda seed: HistGradientBoostingClassifier(random_state=seed),
}
MODEL_TITLES = {"random_forest": "Random forest", "hist_gradient_boosting": "Gradient boosting"}


def target_labels(schema: Schema) -> list:
    return column_labels(schema.column(schema.target))


def _xy(enc: Encoder, df: pd.DataFrame, target: str, labels: list):
    y = category_codes(df[target], labels)
    keep = y >= 0
    return enc.transform(df.loc[keep]), y[keep]


def tstr(schema: Schema, train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, *,
         seed: int = 0, max_train_rows: int = 20000, curve_points: int = 100,
         models: tuple[str, ...] = ("random_forest", "hist_gradient_boosting"),
         progress: Callable[[str], None] | None = None) -> dict:
    if schema.target is None:
        return {"skipped": "the schema names no target column"}
    target, labels = schema.target, target_labels(schema)
    enc = Encoder(schema, [n for n in schema.names if n != target])
    rng = np.random.default_rng(seed)
    sets = {}
    for name, df in (("real", train), ("synthetic", synthetic)):
        if len(df) > max_train_rows:
            df = df.iloc[np.sort(rng.choice(len(df), max_train_rows, replace=False))]
        sets[name] = _xy(enc, df, target, labels)
    x_test, y_test = _xy(enc, holdout, target, labels)
    present = sorted(set(y_test.tolist()))
    binary = len(labels) == 2
    out = {
        "target": target,
        "task": "binary" if binary else "multiclass",
        "positive_label": str(labels[-1]) if binary else None,
        "labels": [str(lab) for lab in labels],
        "n_train": {k: int(len(v[1])) for k, v in sets.items()},
        "n_test": int(len(y_test)),
        "max_train_rows": max_train_rows,
        "models": {},
    }
    if len(present) < 2:
        out["skipped"] = "the hold-out has fewer than two target classes"
        return out
    for model in models:
        out["models"][model] = {}
        for name, (x, y) in sets.items():
            if progress:
                progress(f"utility: {MODEL_TITLES.get(model, model)} trained on {name} rows")
            out["models"][model][name] = _fit_score(MODELS[model](seed), x, y, x_test, y_test,
                                                    len(labels), curve_points)
    return out


def _fit_score(model, x, y, x_test, y_test, n_classes: int, curve_points: int) -> dict:
    if len(np.unique(y)) < 2:
        return {"error": "the training rows hold a single target class", "accuracy": math.nan,
                "f1": math.nan, "roc_auc": math.nan}
    # One OpenMP thread: on shared cores gradient boosting's spinning OpenMP threads ran 10x
    # slower than one thread (measured on 2 busy cores); the forest parallelises with joblib.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x, y)
        proba = np.zeros((len(x_test), n_classes))
        proba[:, model.classes_] = model.predict_proba(x_test)
    pred = proba.argmax(axis=1)
    if n_classes == 2:
        score = proba[:, 1]
        fpr, tpr, _ = roc_curve(y_test, score)
        prec, rec, _ = precision_recall_curve(y_test, score)
        return {
            "accuracy": float(accuracy_score(y_test, pred)),
            "f1": float(f1_score(y_test, pred, pos_label=1, zero_division=0)),
            "roc_auc": float(roc_auc_score(y_test, score)),
            "roc_curve": _thin({"fpr": fpr, "tpr": tpr}, curve_points),
            "pr_curve": _thin({"recall": rec[::-1], "precision": prec[::-1]}, curve_points),
            "positive_rate": float(np.mean(y_test == 1)),
        }
    present = np.unique(y_test)
    p = proba[:, present]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    onehot = (y_test[:, None] == present[None, :]).astype(int)
    auc = roc_auc_score(y_test, p, multi_class="ovr", average="macro", labels=present) \
        if len(present) > 2 else roc_auc_score(onehot[:, 1], p[:, 1])
    fpr, tpr, _ = roc_curve(onehot.ravel(), p.ravel())
    prec, rec, _ = precision_recall_curve(onehot.ravel(), p.ravel())
    return {
        "accuracy": float(accuracy_score(y_test, pred)),
        "f1": float(f1_score(y_test, pred, average="macro", labels=present, zero_division=0)),
        "roc_auc": float(auc),
        "roc_curve": _thin({"fpr": fpr, "tpr": tpr}, curve_points),
        "pr_curve": _thin({"recall": rec[::-1], "precision": prec[::-1]}, curve_points),
        "positive_rate": float(onehot.mean()),
    }


def _thin(curve: dict, n: int) -> dict:
    """Keep about n points, always the first and the last, rounded for a small report."""
    length = len(next(iter(curve.values())))
    idx = np.unique(np.linspace(0, length - 1, min(n, length)).round().astype(int))
    return {k: np.round(np.asarray(v)[idx], 5).tolist() for k, v in curve.items()}
