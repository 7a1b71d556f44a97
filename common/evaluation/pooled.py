"""The shared report of a federated release, pooled from what the sites sent back.

Each site scored the release against its own rows and returned `site_scores` (aggregates) and,
when its study budget has an evaluation share, DP histograms of its rows (`grids.dp_histograms`,
charged to its ledger). Nothing else about the real rows reaches the coordinator, so this module
works on those two only:

- scores: weighted means over sites (weights: each site's DP row estimate from the statistics
  stage, never an exact count), except privacy, where the WORST site speaks for the release (an
  attack that works at one site is a leak, whatever the average says);
- real distributions: the sum of the sites' noisy histograms (noise adds up: the combined standard
  deviation is reported), clipped at zero for display; synthetic ones are exact (public rows);
- relationships: the synthetic association matrix (public) beside the sites' mean per-pair
  agreement scores; no real association matrix leaves a site.

The result has the shape of `EvaluationResult.to_dict()` (so the plain-language verdicts are the
same code as a single owner's report) plus `scope` and `sites`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from ..schema import Schema
from .evaluate import EvaluationResult, spent_verdict, summarize
from .fidelity import association_matrix
from .grids import exact_histograms
from .jsonable import jsonable


@dataclass
class SiteEvaluation:
    weight: float              # the site's DP row estimate (its FedAvg weight)
    scores: dict | None        # site_scores(...); None if the site keeps its scores
    histograms: dict | None    # grids.dp_histograms(...); None if the study spends nothing on them


def pool(schema: Schema, synthetic: pd.DataFrame, sites: dict[str, SiteEvaluation], *,
         privacy: dict | None, seed: int = 0) -> dict:
    scored = {s: e for s, e in sites.items() if e.scores}
    weights = [max(e.weight, 0.0) for e in scored.values()]
    fid = _mean_tree([e.scores["fidelity"] for e in scored.values()], weights) if scored else {}
    util = _mean_tree([e.scores["utility"] for e in scored.values()], weights) if scored else {}
    risk = _worst_privacy({s: e.scores["privacy_risk"] for s, e in scored.items()})
    if fid:
        fid["dependence"] |= _relationships(schema, synthetic, fid["column_pair_trends"]["pairs"])
    result = EvaluationResult(
        schema_name=schema.name, schema_fingerprint=schema.fingerprint(), target=schema.target,
        seed=seed, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        n_rows={"synthetic": len(synthetic), "sites_dp_rows": round(sum(e.weight for e in sites.values()))},
        fidelity=fid, utility=util or {"skipped": "no site shared its scores"}, privacy_risk=risk,
        formal_privacy=privacy, histograms=_histograms(schema, synthetic, sites), summary={})
    if scored:
        result.summary = summarize(result)
    else:
        none = {"level": "fair", "headline": "Not measured: no site shared its scores.", "details": []}
        result.summary = {"useful": none, "safe": none,
                          "privacy_spent": spent_verdict(privacy)}
    return jsonable({**result.to_dict(), "scope": "federated", "sites": {
        s: {"weight": e.weight, "scores": e.scores, "shared_histograms": e.histograms is not None,
            "histogram_mechanism": (e.histograms or {}).get("mechanism")}
        for s, e in sites.items()}})


def _mean_tree(trees: list[dict], weights: list[float]) -> dict:
    """Weighted mean of every numeric leaf (None / NaN skipped); other leaves from the first."""
    out = {}
    for key in dict.fromkeys(k for t in trees for k in t):
        pairs = [(t[key], w) for t, w in zip(trees, weights) if key in t]
        if any(isinstance(v, dict) for v, _ in pairs):
            sub = [(v, w) for v, w in pairs if isinstance(v, dict)]
            out[key] = _mean_tree([v for v, _ in sub], [w for _, w in sub])
            continue
        nums = [(float(v), w) for v, w in pairs
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]
        if nums:
            total = sum(w for _, w in nums)
            out[key] = (sum(v * w for v, w in nums) / total if total > 0
                        else float(np.mean([v for v, _ in nums])))
        else:
            out[key] = next((v for v, _ in pairs if v is not None), None)
    return out


def _score(x) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _worst_privacy(risks: dict[str, dict]) -> dict:
    measured = {s: r for s, r in risks.items() if "skipped" not in r}
    if not measured:
        return {"skipped": "no site shared privacy checks"}

    def excess_copies(s: str) -> tuple:
        d = measured[s]["dcr"]
        return (_score(d["exact_copy_rate"]) - _score(d["holdout_exact_match_rate"]),
                _score(d["share_closer_than_holdout_p5"]))

    dcr_site = max(measured, key=excess_copies)
    mia = {}
    for attack in ("distance", "density_ratio"):
        site = max(measured, key=lambda s: _score(measured[s]["membership_inference"][attack]["auc"]))
        mia[attack] = {**measured[site]["membership_inference"][attack], "site": site}
    emp_site = max(measured, key=lambda s: _score(measured[s]["empirical_privacy"].get("epsilon_hat")))
    return {"pooling": "worst site", "dcr": {**measured[dcr_site]["dcr"], "site": dcr_site},
            "membership_inference": mia,
            "empirical_privacy": {**measured[emp_site]["empirical_privacy"], "site": emp_site}}


def _histograms(schema: Schema, synthetic: pd.DataFrame, sites: dict[str, SiteEvaluation]) -> dict:
    shared = [e.histograms for e in sites.values() if e.histograms]
    out = {"synthetic": exact_histograms(schema, synthetic), "real": {}, "real_sites": 0}
    if not shared:
        return out
    for name in schema.names:
        total = np.sum([h["columns"][name]["counts"] for h in shared], axis=0)
        first = shared[0]["columns"][name]
        out["real"][name] = {**first, "counts": np.clip(total, 0, None).round(1).tolist()}
    out["real_sites"] = len(shared)
    out["real_noise_std"] = math.sqrt(sum(h["noise_std"] ** 2 for h in shared))
    return out


def _relationships(schema: Schema, synthetic: pd.DataFrame, pairs: dict) -> dict:
    names = list(schema.names)
    agreement = np.eye(len(names))
    for key, score in pairs.items():
        a, b = key.split("|", 1)
        i, j = names.index(a), names.index(b)
        agreement[i, j] = agreement[j, i] = np.nan if score is None else score
    return {"columns": names, "synthetic": association_matrix(schema, synthetic).round(4).tolist(),
            "agreement": [[None if math.isnan(v) else round(float(v), 4) for v in row]
                          for row in agreement]}
