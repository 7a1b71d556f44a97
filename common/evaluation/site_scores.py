"""What a site may send back after scoring a synthetic release against its own rows.

Federated evaluation runs at each site (the coordinator holds no real rows). The site computes the
full evaluation (`evaluate.evaluate`, kept in the site's own report with its real distributions),
and returns only `site_scores(result)`: the same tree cut down to single numbers per metric, per
column, per column pair and per model. What is cut, and why:

- curves (ROC / PR points), distance distributions and their quantiles: a quantile of distances
  to the closest real row IS one real row's distance;
- real histograms and real association matrices: distributions of the real rows (the shared
  report gets DP-noised histograms instead, `grids.dp_histograms`, charged to the site's ledger);
- row counts (train, hold-out, queried members): exact counts are private; the coordinator
  weights sites by their DP row estimates.

The scores are NOT differentially private: each is one comparison number averaged over the site's
rows. They are covered by the site's decision to share them (site.toml `[evaluation]
share_scores`), not by its epsilon; the report says so.
"""

from __future__ import annotations

from .evaluate import EvaluationResult
from .jsonable import jsonable

UTILITY_METRICS = ("accuracy", "f1", "roc_auc")


def site_scores(result: EvaluationResult | dict) -> dict:
    d = result.to_dict() if isinstance(result, EvaluationResult) else result
    fid, util, risk = d["fidelity"], d["utility"], d["privacy_risk"]
    out = {
        "fidelity": {
            "overall": fid["overall"],
            "column_shapes": {"score": fid["column_shapes"]["score"],
                              "columns": {n: {"score": c["score"]}
                                          for n, c in fid["column_shapes"]["columns"].items()}},
            "column_pair_trends": {
                "score": fid["column_pair_trends"]["score"],
                "score_all_pairs": fid["column_pair_trends"]["score_all_pairs"],
                "pairs": {"|".join(p["columns"]): p["score"]
                          for p in fid["column_pair_trends"]["pairs"]}},
            **{k: {"score": fid[k]["score"]} for k in ("dependence", "boundary_adherence",
                                                        "category_coverage", "missing_values")},
        },
        "utility": {
            **{k: util[k] for k in ("target", "task", "positive_label", "skipped") if k in util},
            "models": {model: {source: {m: res.get(m) for m in UTILITY_METRICS}
                               for source, res in by_source.items()}
                       for model, by_source in util.get("models", {}).items()},
        },
        "privacy_risk": _privacy(risk),
    }
    return jsonable(out)


def _privacy(risk: dict) -> dict:
    if "skipped" in risk:
        return {"skipped": risk["skipped"]}
    dcr, mia, emp = risk["dcr"], risk["membership_inference"], risk["empirical_privacy"]
    return {
        "dcr": {k: dcr[k] for k in ("exact_copy_rate", "holdout_exact_match_rate",
                                    "share_closer_than_holdout_p5")},
        "membership_inference": {a: {k: mia[a][k] for k in ("auc", "tpr_at_fpr_1pct")}
                                 for a in ("distance", "density_ratio")},
        "empirical_privacy": {k: emp[k] for k in ("epsilon_hat", "delta_hat",
                                                  "expected_privacy_loss") if k in emp},
    }
