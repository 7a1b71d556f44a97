"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG strings.

Every figure is built from an `EvaluationResult.to_dict()` piece, never from rows, so a report can
be re-rendered from report.json alone. PNGs are embedded in the HTML (data: URIs), which keeps the
report ONE file with no external assets that a reader's browser would have to fetch.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REAL, SYN = "#4a5a70", "#e07b24"
MODEL_STYLE = {"random_forest": "-", "hist_gradient_boosting": "--"}
MODEL_TITLE = {"random_forest": "random forest", "hist_gradient_boosting": "gradient boosting"}
DPI = 90
MAX_BARS = 15


def _png(fig, tight: bool = True) -> str:
    """`tight=False` for figures with fixed margins: a tight bounding box draws the figure twice,
    which doubled the report's rendering time."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight" if tight else None, facecolor="white")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _style(ax):
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


def column_distribution(name: str, real: dict, syn: dict, score: float | None) -> str:
    """Share of rows per cell of the public grid, real beside synthetic; empty cells left out."""
    r, s = np.asarray(real["counts"], float), np.asarray(syn["counts"], float)
    r = r / r.sum() if r.sum() > 0 else r
    s = s / s.sum() if s.sum() > 0 else s
    keep = (r > 0) | (s > 0)
    labels = [lab for lab, k in zip(real["labels"], keep) if k]
    r, s = r[keep], s[keep]
    if len(labels) > MAX_BARS and real.get("edges") is None:
        # Many categories (41 countries): the largest ones, the rest summed into one bar.
        top = np.sort(np.argsort(-np.maximum(r, s))[: MAX_BARS - 1])
        rest = np.setdiff1d(np.arange(len(labels)), top)
        labels = [labels[i] for i in top] + [f"{len(rest)} others"]
        r = np.r_[r[top], r[rest].sum()]
        s = np.r_[s[top], s[rest].sum()]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    fig.subplots_adjust(left=0.13, right=0.98, top=0.92, bottom=0.3)
    w = 0.42
    ax.bar(x - w / 2, r, w, color=REAL, label="real")
    ax.bar(x + w / 2, s, w, color=SYN, label="synthetic")
    ax.set_xticks(x)
    ax.set_xticklabels([_short(lab) for lab in labels], rotation=60 if len(labels) > 4 else 0,
                       ha="right" if len(labels) > 4 else "center", fontsize=7 if len(labels) > 12 else 8)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    title = name if score is None else f"{name}   (match {score:.0%})"
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    return _png(fig, tight=False)


def _short(label: str, n: int = 16) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def column_scores(shapes: dict) -> str:
    names = list(shapes["columns"])
    scores = [shapes["columns"][n]["score"] or 0.0 for n in names]
    order = np.argsort(scores)
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(names) + 0.8))
    ax.barh([names[i] for i in order], [scores[i] for i in order], color=SYN)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_title("How well each column's distribution is reproduced", fontsize=10, loc="left")
    for i, idx in enumerate(order):
        ax.text(min(scores[idx], 0.97), i, f" {scores[idx]:.0%}", va="center", fontsize=7,
                ha="right" if scores[idx] > 0.9 else "left", color="white" if scores[idx] > 0.9 else "black")
    _style(ax)
    return _png(fig)


def association_matrices(dep: dict) -> str:
    return matrices(dep["columns"], [("Real data", dep["real"]), ("Synthetic data", dep["synthetic"])],
                    "association (Cramér's V): 0 none, 1 fully determined")


def matrices(cols: list[str], panels: list[tuple[str, list]], label: str) -> str:
    """Column-by-column heatmaps side by side on one 0..1 scale (missing values left blank)."""
    size = max(4.0, 0.33 * len(cols) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * size + 0.8, size))
    for ax, (title, mat) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(np.asarray(mat, dtype=float), vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(cols)))
        ax.set_yticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=90, fontsize=7)
        ax.set_yticklabels(cols if ax is np.atleast_1d(axes)[0] else [], fontsize=7)
        ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(im, ax=axes, shrink=0.7)
    cbar.set_label(label, fontsize=8)
    return _png(fig)


def model_curves(utility: dict) -> str:
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(9.5, 4))
    for model, by_src in utility.get("models", {}).items():
        for src, color in (("real", REAL), ("synthetic", SYN)):
            res = by_src.get(src, {})
            if "roc_curve" not in res:
                continue
            label = f"{MODEL_TITLE.get(model, model)}, trained on {src} (AUC {res['roc_auc']:.3f})"
            roc.plot(res["roc_curve"]["fpr"], res["roc_curve"]["tpr"], MODEL_STYLE.get(model, "-"),
                     color=color, label=label, lw=1.6)
            pr.plot(res["pr_curve"]["recall"], res["pr_curve"]["precision"],
                    MODEL_STYLE.get(model, "-"), color=color, lw=1.6)
    roc.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    roc.set_title("ROC curve (higher is better)", fontsize=10, loc="left")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    pr.set_title("Precision-recall curve (higher is better)", fontsize=10, loc="left")
    roc.legend(fontsize=7, frameon=False, loc="lower right")
    for ax in (roc, pr):
        _style(ax)
    return _png(fig)


def distance_curves(dcr: dict) -> str:
    q = np.linspace(0, 1, len(dcr["synthetic"]["quantiles"]))
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(dcr["holdout"]["quantiles"], q, color=REAL, lw=2, label="fresh real rows (never trained on)")
    ax.plot(dcr["synthetic"]["quantiles"], q, color=SYN, lw=2, label="synthetic rows")
    ax.axvline(dcr["holdout"]["p5"], color="grey", ls=":", lw=1)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set(xlabel="distance to the closest training row", ylabel="share of rows at most this close")
    ax.set_title("Distance to the closest real training row", fontsize=10, loc="left")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    _style(ax)
    return _png(fig)


def attack_scores(mia: dict) -> str:
    names = ["distance attack", "density-ratio attack"]
    aucs = [mia["distance"]["auc"], mia["density_ratio"]["auc"]]
    fig, ax = plt.subplots(figsize=(5.5, 2.2))
    colors = ["#3c8d40" if a <= 0.6 else "#d9a400" if a <= 0.75 else "#c0392b" for a in aucs]
    ax.barh(names, aucs, color=colors)
    ax.axvline(0.5, color="black", lw=1)
    ax.set_xlim(0.4, 1.0)
    for i, a in enumerate(aucs):
        ax.text(a + 0.005, i, f"{a:.3f}", va="center", fontsize=8)
    ax.set_xlabel("attack success (AUC): 0.5 = coin flip, 1.0 = always right")
    ax.set_title("Membership attacks", fontsize=10, loc="left")
    _style(ax)
    return _png(fig)


def epsilon_bars(per_site: dict, release: float | None) -> str:
    names = list(per_site) + (["release"] if release is not None else [])
    values = list(per_site.values()) + ([release] if release is not None else [])
    fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(names) + 1.0))
    ax.barh(names, values, color=[REAL] * len(per_site) + ([SYN] if release is not None else []))
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:g}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("epsilon (smaller = stronger privacy)")
    ax.set_title("Privacy budget spent", fontsize=10, loc="left")
    _style(ax)
    return _png(fig)
