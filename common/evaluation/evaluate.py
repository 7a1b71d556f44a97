"""One call that scores a synthetic table: fidelity, utility, empirical privacy, and a verdict.

`evaluate` runs where the real rows are (a site, or a benchmark with the whole table) and returns
an `EvaluationResult` holding every number the report shows; `report.write_report` renders it.
The verdicts in `summary` are deliberately simple thresholds, written for a reader who will not
study the tables: they say which way to look, and the report explains what each number does and
does not prove. The formal privacy guarantee is the caller's `privacy` dict (from the ledgers and
the release manifest); nothing measured here can replace or certify it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

import pandas as pd

from ..schema import Schema
from .fidelity import fidelity
from .jsonable import jsonable
from .grids import exact_histograms

# Thresholds of the plain-language verdicts (documented in the report's "How to read" section).
USEFUL_GOOD, USEFUL_FAIR = 0.95, 0.85      # synthetic-trained AUC as a share of real-trained AUC
QUALITY_GOOD, QUALITY_FAIR = 0.85, 0.75    # SDMetrics-style overall quality
MIA_WARN, MIA_FAIL = 0.60, 0.75            # best membership attack AUC
COPY_WARN, COPY_FAIL = 0.01, 0.10          # exact copies beyond the natural duplicate rate
CLOSE_WARN = 0.10                          # share closer than the hold-out's 5th percentile


@dataclass
class EvaluationResult:
    schema_name: str
    schema_fingerprint: str
    target: str | None
    seed: int
    created_at: str
    n_rows: dict
    fidelity: dict
    utility: dict
    privacy_risk: dict
    formal_privacy: dict | None
    histograms: dict
    summary: dict
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def evaluate(schema: Schema, train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame,
             *, privacy: dict | None = None, seed: int = 0,
             progress: Callable[[str], None] | None = None,
             max_train_rows: int = 20000, max_query_rows: int = 5000) -> EvaluationResult:
    """Score `synthetic` against the real `train` rows it was made from and real `holdout` rows
    it never saw (same schema; `holdout` should be a random split of the same population).

    `privacy`: the formal guarantee, e.g. {"epsilon": 3.0, "delta": 1e-5, "per_site": {"a": {...}}}.
    `progress`: called with a short message before each long step.
    """
    # Imported here: they bring scikit-learn (about 2 s), which the coordinator, pooling only
    # the sites' DP answers, never needs.
    from .attacks import privacy_risk
    from .utility import tstr

    say = progress or (lambda _msg: None)
    timings = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return out

    say("fidelity: column shapes, pair trends, dependence")
    fid = timed("fidelity", lambda: fidelity(schema, train, synthetic))
    util = timed("utility", lambda: tstr(schema, train, holdout, synthetic, seed=seed,
                                         max_train_rows=max_train_rows, progress=progress))
    risk = timed("privacy", lambda: privacy_risk(schema, train, holdout, synthetic, seed=seed,
                                                 max_query_rows=max_query_rows, progress=progress))
    hist = {"real": exact_histograms(schema, train), "synthetic": exact_histograms(schema, synthetic)}
    result = EvaluationResult(
        schema_name=schema.name,
        schema_fingerprint=schema.fingerprint(),
        target=schema.target,
        seed=seed,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        n_rows={"train": len(train), "holdout": len(holdout), "synthetic": len(synthetic)},
        fidelity=fid,
        utility=util,
        privacy_risk=risk,
        formal_privacy=privacy,
        histograms=hist,
        summary={},
        timings=timings,
    )
    result.summary = summarize(result)
    return result


# -- verdicts -------------------------------------------------------------------------------------
def summarize(r: EvaluationResult) -> dict:
    return {"useful": _useful(r), "safe": _safe(r), "privacy_spent": spent_verdict(r.formal_privacy)}


def _worst(*levels: str) -> str:
    order = ["good", "fair", "poor"]
    return max(levels, key=order.index)


def _useful(r: EvaluationResult) -> dict:
    quality = r.fidelity.get("overall")
    quality = math.nan if quality is None else quality
    q_level = ("good" if quality >= QUALITY_GOOD else "fair" if quality >= QUALITY_FAIR else "poor") \
        if not math.isnan(quality) else "fair"
    lines = [f"Overall statistical quality {quality:.0%} (column shapes "
             f"{r.fidelity['column_shapes']['score']:.0%}, relationships between columns "
             f"{_pct(r.fidelity['column_pair_trends']['score'])}); the synthetic data keeps "
             f"{_pct(r.fidelity['dependence']['score'])} of the real data's dependence between columns."]
    levels = [q_level]
    best = _best_model(r.utility)
    if best is not None:
        model, real_auc, syn_auc = best
        ratio = syn_auc / real_auc if real_auc else math.nan
        levels.append("good" if ratio >= USEFUL_GOOD else "fair" if ratio >= USEFUL_FAIR else "poor")
        lines.insert(0, f"A model trained only on the synthetic data predicts '{r.utility['target']}' "
                        f"for real people it never saw with ROC AUC {syn_auc:.3f}, against "
                        f"{real_auc:.3f} when trained on the real data ({ratio:.0%} of it).")
    level = _worst(*levels)
    head = {"good": "Yes: the synthetic data is useful.",
            "fair": "Partly: useful for exploration, check before relying on it.",
            "poor": "Not yet: the synthetic data loses much of the real data's information."}[level]
    return {"level": level, "headline": head, "details": lines}


def _best_model(util: dict):
    best = None
    for model, res in util.get("models", {}).items():
        real = res.get("real", {}).get("roc_auc", math.nan)
        syn = res.get("synthetic", {}).get("roc_auc", math.nan)
        if math.isnan(real) or math.isnan(syn):
            continue
        if best is None or syn > best[2]:
            best = (model, real, syn)
    return best


def _safe(r: EvaluationResult) -> dict:
    risk = r.privacy_risk
    if "skipped" in risk:
        return {"level": "fair", "headline": "Not measured: " + risk["skipped"], "details": []}
    dcr, mia = risk["dcr"], risk["membership_inference"]
    auc = max(mia["distance"]["auc"], mia["density_ratio"]["auc"])
    copies = dcr["exact_copy_rate"] - dcr["holdout_exact_match_rate"]
    close = dcr["share_closer_than_holdout_p5"]
    level = "good"
    if auc > MIA_WARN or copies > COPY_WARN or close > CLOSE_WARN:
        level = "fair"
    if auc > MIA_FAIL or copies > COPY_FAIL:
        level = "poor"
    head = {"good": "No sign of leaks: the attacks we ran could not tell who was in the training data.",
            "fair": "Warning: some synthetic rows sit unusually close to real training rows.",
            "poor": "Unsafe: the synthetic data reveals who was in the training data."}[level]
    details = [
        f"An attacker holding the synthetic data guesses whether a person was in the training data "
        f"with accuracy score (AUC) {auc:.2f}; 0.50 is a coin flip.",
        f"{dcr['exact_copy_rate']:.1%} of synthetic rows are exact copies of a training row "
        f"(real rows never used in training match one {dcr['holdout_exact_match_rate']:.1%} of the time).",
        f"{close:.1%} of synthetic rows are closer to a training row than 95% of fresh real rows are "
        f"(about 5% is normal).",
    ]
    return {"level": level, "headline": head, "details": details}


def spent_verdict(privacy: dict | None) -> dict:
    per_site = per_site_epsilons(privacy)
    if privacy and privacy.get("epsilon") is None and per_site:
        # Only site budgets given: the release guarantee when each person is at one site.
        privacy = {**privacy, "epsilon": max(per_site.values())}
    if not privacy or privacy.get("epsilon") is None:
        return {"level": "poor", "headline": "No formal privacy guarantee was given for this data.",
                "details": ["Without a differential-privacy budget (epsilon, delta) from training, "
                            "the checks in this report are the only evidence, and they cannot "
                            "prove safety."]}
    eps, delta = float(privacy["epsilon"]), privacy.get("delta")
    level = "good" if eps <= 3 else "fair" if eps <= 10 else "poor"
    d = f", delta = {float(delta):.0e}" if delta is not None else ""
    details = [f"Formal guarantee for the release: epsilon = {eps:g}{d} (differential privacy, per "
               "person's row). This bound holds whatever an attacker knows; the attack numbers "
               "below are spot checks, not guarantees.",
               "Smaller epsilon is stronger: 1 or less is strong, around 3 is a common choice, "
               "above 10 protects little."]
    if per_site:
        details.append("Per site: " + ", ".join(f"{k} {v:g}" for k, v in per_site.items()) + ".")
    return {"level": level, "headline": f"Privacy budget spent: epsilon = {eps:g}{d}.",
            "details": details}


def per_site_epsilons(privacy: dict | None) -> dict:
    """{site: epsilon} from `per_site` given as {site: eps} or {site: {"epsilon": eps, ...}}."""
    out = {}
    for site, v in ((privacy or {}).get("per_site") or {}).items():
        eps = v.get("epsilon") if isinstance(v, dict) else v
        if eps is not None:
            out[str(site)] = float(eps)
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.0%}"
