"""The coordinator's model and release: build the generator every site builds, sample the pooled
model, write data + manifest.

The coordinator holds no rows. It builds the generator from the public schema and the merged DP
statistics (the same `TableTransformer` each site builds from the same bytes), loads the pooled
weights, and samples: post-processing of DP outputs, so the release costs no further privacy.

The manifest is what an independent reader needs to check the claim without trusting us: the
schema fingerprint, the model and its hyperparameters, the rounds and who took part in each, each
site's ledger as the site reported it (every Gaussian mechanism with its noise, sample rate and
steps, the accountant and its orders, the composed epsilon at the site's delta), and the
release-level guarantee derived from them:

* `population = "disjoint"` (each person's rows are at one site only): the sites' releases are
  about disjoint sets of people, so the guarantee is the MAX over sites (parallel composition);
* `population = "overlapping"` (a person may have rows at several sites): the SUM over sites (basic
  sequential composition of the sites' (epsilon, delta)).

Files are written atomically (common/table_io.py); the manifest, which holds the data's sha256,
is written last and is the release's commit point. The ServerApp holds no signing key: the
process that launched the run checks the release and seals it (coordinator/admin/release_signing.py):
every file's hash listed in the manifest, the manifest signed with Ed25519 (common/signing.py;
anyone checks it with `synthpool release verify`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...common.budget import POPULATIONS
from ...common.manifest import manifest as new_manifest
from ...common.pipeline import Synthesizer, sample_seed
from ...common.digests import file_sha256
from ...common.schema import Schema
from ...common.stats import TableStats
from ...common.threads import usable_cores
from .checkpoint import Checkpoint, CheckpointStore

DATA_FILE = "synthetic.csv"
MANIFEST_FILE = "manifest.json"
MAX_RELEASE_ROWS = 10_000_000  # rows sampled when the run does not say (release-rows = 0)


def synthesizer(run, schema: Schema, stats: TableStats) -> Synthesizer:
    """The synthesizer exactly as every site builds it for this training (agent/clientapp/site_job.py)."""
    import torch

    torch.set_num_threads(usable_cores())
    return Synthesizer(schema, stats, run.family, run.hyperparameters, max_bins=run.max_bins,
                       seed=run.seed)


def initial_weights(run, schema: Schema, stats: TableStats) -> list[np.ndarray]:
    """The public starting point of round 1 (deterministic in the run's seed)."""
    return synthesizer(run, schema, stats).get_weights()


def across_sites(values: list[float], population: str) -> float:
    """One privacy parameter of the release from the sites' own: the max when each person's
    rows are at one site only, the sum when a person may be at several."""
    if population not in POPULATIONS:
        raise ValueError(f"unknown population {population!r}")
    return max(values) if population == "disjoint" else sum(values)


def release_guarantee(per_site: dict[str, dict], population: str) -> dict:
    """The release's (epsilon, delta) from the sites' own: max if disjoint, sum if overlapping."""
    if not per_site:
        raise ValueError("a release needs at least one site's privacy report")
    eps = across_sites([float(v["epsilon"]) for v in per_site.values()], population)
    delta = across_sites([float(v["delta"]) for v in per_site.values()], population)
    if population == "disjoint":
        return {"epsilon": eps, "delta": delta, "composition": "max over sites",
                "why": "each person's rows are at one site only: the sites' outputs concern "
                       "disjoint people (parallel composition)"}
    return {"epsilon": eps, "delta": delta, "composition": "sum over sites",
            "why": "a person may have rows at several sites: the sites' guarantees add up "
                   "(basic sequential composition)"}


def _site_privacy(report: dict) -> dict:
    keep = ("epsilon", "delta", "cap", "accountant", "accountant_settings", "dp_accounting_version",
            "epsilon_per_mechanism", "mechanisms", "pure_spends", "jobs")
    return {k: report[k] for k in keep if k in report}


@dataclass
class Sample:
    """Rows drawn from the pooled model, with the checkpoint and statistics they came from."""

    frame: pd.DataFrame
    seed: int
    seconds: float
    checkpoint: Checkpoint
    stats: TableStats
    model: dict  # the family's own description (Generator.describe) for the manifest


def sample_release(run, store: CheckpointStore, schema: Schema, start: dict) -> Sample:
    """Rows from the latest pooled model: `release-rows`, or the merged statistics' DP total."""
    ckpt = store.load()
    if ckpt is None:
        raise RuntimeError("no completed round to release")
    stats = TableStats.from_dict(json.loads(start["stats_json"]))
    pooled = synthesizer(run, schema, stats)
    pooled.set_weights(ckpt.weights)
    # The DP total can be inflated by a site's forged counts only within what the statistics
    # stage let through (statistics_stage.size_problem); the cap bounds the work whatever happens.
    n = int(run.release_rows) or min(MAX_RELEASE_ROWS, max(1, round(stats.noisy_rows())))
    t0 = time.perf_counter()
    frame = pooled.sample(n)
    return Sample(frame, sample_seed(run.seed), time.perf_counter() - t0, ckpt, stats,
                  pooled.describe())


def write_release(run, store: CheckpointStore, schema: Schema, start: dict, sample: Sample,
                  ledgers: dict[str, dict], evaluation=None) -> dict:
    """Data, the shared report (when the sites evaluated the release), manifest, signature into
    `run.release_path`; returns the manifest. `ledgers`: each site's latest ledger report."""
    from ...common.table_io import write_json, write_table

    ckpt, stats = sample.checkpoint, sample.stats
    out = run.release_path
    write_table(sample.frame, out / DATA_FILE, schema)  # in the table's own spellings
    data_sha = file_sha256(out / DATA_FILE)

    rounds = []
    for rnd in range(1, ckpt.round + 1):
        meta = store.load(rnd).meta
        rounds.append({"round": rnd, "sites": meta.get("used", []),
                       "dropped": meta.get("dropped", [])})
    # Every site whose rows shaped the release or its report: the merged statistics, any round,
    # the evaluation.
    contributors = sorted(set(start["sites"]) | {s for r in rounds for s in r["sites"]}
                          | set(evaluation.sites if evaluation else ()))
    missing = [s for s in contributors if s not in ledgers]
    if missing:
        raise RuntimeError(f"no ledger report from {missing}: cannot state the guarantee")
    per_site = {s: _site_privacy(ledgers[s]) for s in contributors}
    guarantee = release_guarantee(per_site, run.population)
    max_share = start.get("max_site_share", 1.0)  # trainings checkpointed before the limit
    report = None
    if evaluation is not None:
        report = _write_report(run, schema, sample, evaluation, per_site, guarantee, out)
    weights_sha = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes()
                                          for w in ckpt.weights)).hexdigest()
    manifest = new_manifest(
        "synthpool.federated-release", schema,
        sample.model | {"weights_sha256": weights_sha, "init_seed": run.seed},
        study=run.study,
        training_id=start.get("training_id", ckpt.meta.get("training_id")),
        data={"file": DATA_FILE, "rows": len(sample.frame), "columns": list(sample.frame.columns),
              "sha256": data_sha, "sample_seed": sample.seed,
              "sampling_seconds": round(sample.seconds, 2)},
        training={
            "rounds": ckpt.round,
            "steps_per_round": run.local_steps,
            "plan": run.plan.to_dict(),
            "aggregation": ("FedProx" if run.proximal_mu > 0 else "FedAvg")
                       + (" under SecAgg+" if run.secure_aggregation else ""),
            "proximal_mu": run.proximal_mu,
            "weights": "each site's DP row estimate from its statistics stage (or its declared "
                       "public size), the largest lowered so that none holds more than "
                       f"{max_share:g} of the total",
            "max_site_share": max_share,
            "dp": f"at every site: {sample.model['training']}; noise calibrated once per "
                  "site for the whole schedule",
        },
        participation=rounds,
        statistics={
            "sites": {s: {"rows_estimate": v["rows"], "weight": v.get("weight", v["rows"]),
                          "size_source": v.get("size_source", "")}
                      for s, v in start["sites"].items()},
            "rows_estimate_dp": round(stats.noisy_rows(), 1),
            "digest": start.get("stats_digest"),
        },
        privacy={
            "unit": "one row of one site's table (add/remove neighbouring datasets)",
            "population": run.population,
            "per_site": per_site,
            "release": guarantee,
            "covers": "everything in this folder: the data, and the DP histograms in the report "
                      "(each site's ledger includes them); not the report's aggregate scores",
            "source": "each site's ledger as the site last reported it to the coordinator",
        },
        evaluation=_evaluation_summary(evaluation, report),
    )
    # Unsigned: the launcher checks and signs it (coordinator/admin/release_signing.py).
    write_json(manifest, out / MANIFEST_FILE)
    return manifest


def _write_report(run, schema, sample: Sample, evaluation, per_site, guarantee, out: Path) -> dict:
    from ...common.evaluation.federated_report import render_federated_html
    from ...common.evaluation.pooled import pool
    from ...common.evaluation.report import write_report

    privacy = {"epsilon": guarantee["epsilon"], "delta": guarantee["delta"],
               "composition": guarantee["composition"],
               "per_site": {s: {"epsilon": v["epsilon"], "delta": v["delta"]} for s, v in per_site.items()}}
    report = pool(schema, sample.frame.head(evaluation.rows), evaluation.sites, privacy=privacy,
                  seed=run.seed)
    write_report(report, out, title=f"Synthetic release of study {run.study}",
                 render=render_federated_html)
    return report


def _evaluation_summary(evaluation, report: dict | None) -> dict:
    if evaluation is None or report is None:
        return {"performed": False}
    fid, risk = report["fidelity"], report["privacy_risk"]
    models = report["utility"].get("models", {})
    mia = risk.get("membership_inference", {})
    return {
        "performed": True, "report": "report.html", "numbers": "report.json",
        "rows_scored": evaluation.rows, "sample_sha256": evaluation.digest,
        "sites": sorted(evaluation.sites), "not_evaluated": evaluation.not_evaluated,
        "dp_histograms_from": sorted(s for s, e in evaluation.sites.items() if e.histograms),
        # Scores are computed on real rows without noise: a site sends them only if its owner
        # opted in (site.toml [evaluation] share_scores), and this names every such site.
        "not_dp_scores_from": sorted(s for s, e in evaluation.sites.items() if e.scores),
        "scores": {
            "overall_quality": fid.get("overall"),
            "column_shapes": (fid.get("column_shapes") or {}).get("score"),
            "column_pair_trends": (fid.get("column_pair_trends") or {}).get("score"),
            "tstr_roc_auc": {m: {src: r.get("roc_auc") for src, r in by.items()}
                             for m, by in models.items()},
            "worst_site_attack_auc": max((a.get("auc") or 0.0 for a in mia.values()), default=None),
        },
        "scores_are": "size-weighted means of the aggregates of the sites in not_dp_scores_from "
                      "(privacy: the worst site); not differentially private, and not covered by "
                      "those sites' epsilon",
        "verdicts": {k: v["level"] for k, v in report["summary"].items()},
    }


def read_manifest(release_dir: str | Path) -> dict:
    return json.loads((Path(release_dir) / MANIFEST_FILE).read_text())
