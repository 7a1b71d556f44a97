"""The statistics stage (once per training): every site releases noisy histograms of its rows on
the schema's public grids (`query.stats`, charged to its ledger); the coordinator checks them
(a site may lie), merges them (TableStats.merge) and builds the initial model from the schema and
the merged statistics. Each site's histogram total is its FedAvg weight."""

from __future__ import annotations

import json
import logging

import numpy as np

from ...common.digests import content_digest
from ...common.histogram_release import cell_noise_std, histogram_problem
from ...common.schema import Schema
from ...common.stats import TableStats, cell_labels, histogram_columns
from ...common.wire import STATS_MESSAGE, Request
from .release import initial_weights
from .strategy import SiteResult, site_share_limit, weight_cap
from .run_config import RunConfig
from .transport import RoundFailed, exchange, overload_hint, say

log = logging.getLogger("synthpool.coordinator")


def stats_problem(result: SiteResult, schema: Schema) -> str:
    """Why a site's statistics cannot be merged ('' if they can): the schema's histograms, with
    the public grid's number of cells, finite counts, one Gaussian mechanism."""
    try:
        stats = TableStats.from_dict(result.stats or {})
    except (KeyError, TypeError, ValueError) as e:
        return f"unreadable statistics ({type(e).__name__})"
    if stats.schema_fingerprint != schema.fingerprint():
        return "statistics computed under another schema"
    if set(stats.histograms) != set(histogram_columns(schema)):
        return f"histograms of {sorted(stats.histograms)}, expected {histogram_columns(schema)}"
    for name in stats.histograms:
        try:
            want = len(cell_labels(schema, name))
        except KeyError:
            return f"statistics of an unknown column {name!r}"
        problem = histogram_problem(stats.counts(name), want)
        if problem:
            return f"histogram of {name!r} is {problem}"
    if len(stats.mechanisms) != 1:
        return f"statistics report {len(stats.mechanisms)} mechanisms, expected one"
    return ""


# How far a noisy total may stray from the truth before we call it forged: 6 standard deviations
# (a false alarm about once in 500 million honest histograms).
_TOLERANCE_SD = 6.0
MAX_HOLDOUT_FRACTION = 0.5  # the most of its rows a site may set aside (agent/config.py)


def size_problem(stats: TableStats, claimed: float, source: str) -> str:
    """Why a site's claimed size or counts cannot be honest ('' if they can). A site's FedAvg
    weight and its share of the merged statistics are what it claims, so it could take over both
    by claiming 1e12 rows. But every one of its histograms counts every row once, under Gaussian
    noise of a known scale: their totals must agree with each other, and an estimated size is
    their weighted mean (TableStats.noisy_rows, agent/clientapp/site_job.py:reported_size); a declared
    size must agree with it too."""
    sigma_cell = cell_noise_std(stats.mechanisms[0].noise_multiplier, len(stats.histograms))
    totals = [(name, float(np.sum(stats.counts(name))), len(stats.counts(name)))
              for name in stats.histograms]
    estimate = stats.noisy_rows()
    estimate_sd = sigma_cell / np.sqrt(sum(1.0 / k for _, _, k in totals))
    for name, t, k in totals:
        if abs(t - estimate) > _TOLERANCE_SD * (sigma_cell * np.sqrt(k) + estimate_sd) + 1:
            return (f"histogram totals disagree ({name!r}: {t:.0f}, all of them: "
                    f"{estimate:.0f}) by more than their noise allows: every histogram counts "
                    "every row once")
    if source == "declared":
        # A declared size counts the whole table; the histograms leave out the site's hold-out,
        # at most half of it (agent/config.py), so the table holds between 1x and 2x their total.
        noise = _TOLERANCE_SD * estimate_sd + 1
        low, high = estimate - noise, (estimate + noise) / (1 - MAX_HOLDOUT_FRACTION)
    else:
        low, high = estimate - 1.0, estimate + 1.0  # the site reports the estimate, rounded
    if not low <= claimed <= high:
        return (f"reported size {claimed:.0f} ({source or 'estimated'}) disagrees with the total "
                f"of its own histograms ({estimate:.0f})")
    return ""


def statistics_stage(grid, run: RunConfig, training_id: str, schema: Schema,
                     names: dict[str, str], events, transcript=None) -> tuple[dict, list[np.ndarray]]:
    """Ask every connected site for its noisy histograms; merge; build the initial model."""
    nodes = run.study_nodes(grid)
    events.write("stats_started", nodes=nodes, training_id=training_id)
    fingerprint = schema.fingerprint()
    if schema.exact_draft_warning():  # the manifest records it too (schema.provenance)
        log.warning("%s", schema.exact_draft_warning())
    results = exchange(grid, nodes, Request(run.round_wire(training_id, 0, fingerprint)), 0, run,
                       names, message_type=STATS_MESSAGE, transcript=transcript)
    parts: dict[str, TableStats] = {}
    for r in results:
        if r.status == "ok":
            problem = stats_problem(r, schema)
            if not problem and not (r.num_examples > 0 and np.isfinite(r.num_examples)):
                problem = f"reported size {r.num_examples!r} is not a positive number"
            if not problem:
                problem = size_problem(TableStats.from_dict(r.stats), r.num_examples,
                                       str(r.info.get("size-source", "")))
            if problem:
                r.status, r.reason = "invalid", problem
            else:
                parts[r.site] = TableStats.from_dict(r.stats)
        if not r.site.startswith("node-"):
            names[str(r.node_id)] = r.site
        if r.status != "ok":
            events.write(f"site_{r.status}", round=0, **r.summary())
            say(f"statistics: site {r.site} {r.status}: {r.reason}")
    if len(parts) < run.min_sites:
        reason = f"only {len(parts)} site(s) released statistics; the study needs {run.min_sites}"
        events.write("round_failed", round=0, reason=reason, sites=[r.summary() for r in results])
        raise RoundFailed(f"statistics stage: {reason}{overload_hint()}")
    ok = [r for r in results if r.status == "ok"]
    share = run.max_site_share or site_share_limit(len(ok))
    cap = weight_cap({r.site: r.num_examples for r in ok}, share)
    for r in ok:
        if r.num_examples > cap:
            # Scaling released histograms is post-processing: no privacy cost.
            parts[r.site] = parts[r.site].scaled(cap / r.num_examples)
            events.write("site_weight_capped", round=0, site=r.site, rows=r.num_examples,
                         weight=cap, max_site_share=share)
            say(f"statistics: site {r.site} weighs {cap:.0f} rows, not its {r.num_examples:.0f}"
                 f" (max-site-share {share:g})")
    merged = TableStats.merge([parts[name] for name in sorted(parts)])
    stats_json = json.dumps(merged.to_dict(), sort_keys=True, separators=(",", ":"))
    start = {
        "training_id": training_id,
        "stats_json": stats_json,
        "stats_digest": content_digest(stats_json),
        "sites": {r.site: {"node_id": r.node_id, "rows": r.num_examples,
                           "weight": min(r.num_examples, cap),
                           "size_source": str(r.info.get("size-source", ""))} for r in ok},
        "weight_cap": cap if np.isfinite(cap) else 0.0,
        "max_site_share": share,
        "ledgers": {r.site: r.ledger for r in ok},
        "results": [r.summary() for r in results],
    }
    weights = initial_weights(run, schema, merged)
    events.write("stats_completed", sites=sorted(parts), rows_estimate=merged.noisy_rows(),
                 dropped=[r.site for r in results if r.status != "ok"])
    say(f"statistics from {sorted(parts)}: about {merged.noisy_rows():.0f} rows in all (DP)")
    return start, weights
