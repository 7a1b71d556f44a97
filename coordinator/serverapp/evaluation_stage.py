"""The evaluation stage: every site scores the release against its own rows.

After the last round the coordinator samples the release, sends (up to `evaluation-rows` of) it
to every connected site as Parquet bytes with their sha256 in the request, and pools what comes
back into the shared report (common/evaluation/pooled.py). A site answers with aggregate scores
and DP histograms of its rows (agent/clientapp/site_evaluation.py) and its ledger report, which now includes
the histograms' charge: the release manifest states the per-site epsilon AFTER evaluation, so
the published report is covered by it.

A reply is checked before it is pooled: it may hold only `scores` (a tree of single numbers) and
`histograms` (the schema's columns, the public grid's number of cells, finite counts, one
Gaussian mechanism); anything else is recorded as invalid with the site's name and left out.
A site that refuses or does not answer is named in the manifest; the release does not wait for
it, since the model is already final.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...common.digests import content_digest
from ...common.evaluation.grids import column_grid
from ...common.evaluation.pooled import SiteEvaluation
from ...common.histogram_release import histogram_problem
from ...common.schema import Schema
from ...common.wire import EVALUATE_MESSAGE, Request
from .transport import exchange

MAX_BINS = 256  # a histogram grid beyond this is not one the study asked for


@dataclass
class EvaluationOutcome:
    sites: dict[str, SiteEvaluation] = field(default_factory=dict)
    ledgers: dict[str, dict] = field(default_factory=dict)
    not_evaluated: dict[str, str] = field(default_factory=dict)  # site -> status: reason
    rows: int = 0
    digest: str = ""


def sample_bytes(synthetic: pd.DataFrame, rows: int) -> bytes:
    """The first `rows` rows (the release's rows are independent draws, so any subset of them is
    a random sample) as Parquet: typed, compact, no CSV quoting questions at the site."""
    buf = io.BytesIO()
    synthetic.head(max(rows, 1)).to_parquet(buf, index=False)
    return buf.getvalue()


def evaluation_problem(payload: dict | None, schema: Schema) -> str:
    """Why a site's evaluation reply cannot be pooled ('' if it can)."""
    if not isinstance(payload, dict) or set(payload) - {"scores", "histograms"}:
        return "the evaluation reply is not {scores, histograms}"
    scores = payload.get("scores")
    if scores is not None and not _numbers_only(scores):
        return "the scores are not a tree of single numbers"
    hist = payload.get("histograms")
    if hist is None:
        return ""
    try:
        mech = hist["mechanism"]
        if (mech["sample_rate"], mech["steps"]) != (1.0, 1) or not mech["noise_multiplier"] > 0:
            return "the histograms were not released by one Gaussian mechanism"
        if not 1 <= int(hist["n_bins"]) <= MAX_BINS:
            return f"histograms with {hist['n_bins']!r} bins"
        if set(hist["columns"]) != set(schema.names):
            return "the histograms do not cover exactly the schema's columns"
        for col in schema.columns:
            counts = np.asarray(hist["columns"][col.name]["counts"], dtype=float)
            if histogram_problem(counts, column_grid(col, hist["n_bins"]).size):
                return f"the histogram of {col.name!r} does not fit the public grid"
    except (KeyError, TypeError, ValueError):
        return "unreadable histograms"
    return ""


def _numbers_only(tree) -> bool:
    if isinstance(tree, dict):
        return all(isinstance(k, str) and _numbers_only(v) for k, v in tree.items())
    return tree is None or isinstance(tree, (bool, int, float, str)) and len(str(tree)) < 64


def evaluation_stage(grid, run, training_id: str, schema: Schema, synthetic: pd.DataFrame,
                     names: dict[str, str], weights: dict[str, float], events,
                     transcript=None) -> EvaluationOutcome:
    sample = sample_bytes(synthetic, run.evaluation_rows)
    out = EvaluationOutcome(rows=min(len(synthetic), run.evaluation_rows),
                            digest=content_digest(sample))
    nodes = run.study_nodes(grid)
    events.write("evaluation_started", nodes=nodes, rows=out.rows, digest=out.digest)
    wire = run.round_wire(training_id, run.num_rounds, schema.fingerprint(), stage="evaluate",
                          synthetic_digest=out.digest)
    results = exchange(grid, nodes, Request(wire, synthetic=sample), run.num_rounds, run, names,
                       message_type=EVALUATE_MESSAGE, group="evaluate", transcript=transcript)
    for r in results:
        if r.status == "ok":
            problem = evaluation_problem(r.evaluation, schema)
            if not problem and r.site not in weights:
                problem = "the site released no statistics in this training"
            if not problem and r.site in out.sites:
                problem = f"a second site calls itself {r.site!r}"
            if problem:
                r.status, r.reason = "invalid", problem
        if r.status == "ok":
            out.sites[r.site] = SiteEvaluation(weights[r.site], r.evaluation.get("scores"),
                                               r.evaluation.get("histograms"))
            if r.ledger:
                out.ledgers[r.site] = r.ledger
        else:
            out.not_evaluated[r.site] = f"{r.status}: {r.reason}"
            events.write(f"site_{r.status}", stage="evaluation", **r.summary())
    events.write("evaluation_completed", sites=sorted(out.sites), not_evaluated=out.not_evaluated)
    return out
