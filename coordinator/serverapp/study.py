"""One training of a study in the ServerApp (Message API): a DP generator trained by the sites,
pooled by FedAvg, sampled into a release. One run = `run_study(grid, RunConfig)`:

* resume: the checkpoint dir names the training (training.json), its statistics (start.json) and
  its last completed round; a restarted coordinator continues there with the SAME training id, so
  every site sees the same ledger job ids and inputs and answers a repeated job from its release
  cache (never charged twice);
* the statistics stage (statistics_stage.py), once per training;
* each round: send `train` messages (global weights + merged statistics) to the connected
  SuperNodes, collect replies until all came back, or `min-sites` did and a short straggler grace
  passed, or the round timeout hit (transport.py); classify every site (ok / refused / failed /
  unavailable / missing / invalid) into the event log with the site's name and reason; FedAvg the
  valid updates (strategy.py) or let SecAgg+ pool them (secure_aggregation.py); checkpoint
  atomically; next round;
* evaluation (evaluation_stage.py): the sites score a sample of the release against their own
  rows; aggregates and DP histograms come back and are pooled into the shared report;
* release (release.py): sample the pooled model into data + report + manifest, with each site's
  ledger as it reported it and the release-level guarantee.

A stage with fewer than `min-sites` valid answers fails the run (event `round_failed`), leaving
the previous checkpoint as the point to resume from.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...common.atomic import atomic_write_text
from ...common.wire import Request
from .checkpoint import CheckpointStore
from .evaluation_stage import evaluation_stage
from .release import sample_release, write_release
from .secure_aggregation import SecAggSettings, secure_round
from .statistics_stage import statistics_stage
from .strategy import FedAvg, QuorumNotReached, SiteResult
from .run_config import RunConfig
from .transport import RoundFailed, exchange, overload_hint, say, wait_for_nodes


def _reference_shapes(weights: list[np.ndarray], results: list[SiteResult]):
    """The shapes an update must have: the pooled model's, or in round 1 (sites initialise the
    model themselves) the shapes most sites agree on."""
    if weights:
        return weights
    shapes = Counter(tuple(w.shape for w in r.weights) for r in results if r.status == "ok")
    if not shapes:
        return None
    common = shapes.most_common(1)[0][0]
    return [np.zeros(s) for s in common]

def run_study(grid, run: RunConfig) -> dict:
    """The statistics stage (unless checkpointed), `run.num_rounds` rounds (or the rest of them
    after a restart), then the release. Returns a summary."""
    store = CheckpointStore(Path(run.checkpoint_dir))
    training = store.training(run.study, asdict(run))
    training_id = training["training_id"]
    events = store.events
    schema = run.load_schema()
    fingerprint = schema.fingerprint()
    ckpt = store.load()
    saved = store.load_start()
    names: dict[str, str] = {**_load_registry(run.registry_path),
                             **(ckpt.meta.get("sites", {}) if ckpt else {}), **run.enrolled}
    first = (ckpt.round if ckpt else 0) + 1
    run_id = getattr(grid.run, "run_id", None)
    events.write("run_started", run_id=run_id, training_id=training_id, study=run.study,
                 resume_after_round=first - 1, num_rounds=run.num_rounds)
    say(f"training {training_id} of study {run.study!r}: rounds {first}..{run.num_rounds}"
         + (f" (resumed after round {first - 1})" if first > 1 else ""))
    if saved is None or first <= run.num_rounds or run.evaluate:
        wait_for_nodes(grid, run, run.expected_sites or run.min_sites, run.min_sites,
                       run.node_wait_timeout, run.poll_interval)
    if saved is None:
        start, initial = statistics_stage(grid, run, training_id, schema, names, events,
                                          store.transcript)
        store.save_start(start, initial)
        _save_registry(run.registry_path, names)
    else:
        start, initial = saved
    # FedAvg weights: the DP sizes, the largest lowered to the statistics stage's cap.
    sizes = {site: float(s.get("weight", s["rows"])) for site, s in start["sites"].items()}
    ledgers: dict[str, dict] = {**start["ledgers"], **(ckpt.meta.get("ledgers", {}) if ckpt else {})}
    weights = ckpt.weights if ckpt else initial
    strategy = FedAvg(min_sites=run.min_sites, proximal_mu=run.proximal_mu)
    for rnd in range(first, run.num_rounds + 1):
        # A site known to have released no statistics in this training cannot take part in its
        # rounds: it is not asked again. A node not known yet (a restarted SuperNode) is.
        nodes = [n for n in run.study_nodes(grid)
                 if str(n) not in names or names[str(n)] in sizes]
        events.write("round_started", round=rnd, run_id=run_id, nodes=nodes)
        t0 = time.monotonic()
        wire = run.round_wire(training_id, rnd, fingerprint, start["stats_digest"],
                              weight_cap=float(start.get("weight_cap", 0.0)))
        play = _secure_round if run.secure_aggregation else _plain_round
        results, pool = play(grid, nodes, weights, wire, start, rnd, run, sizes, names, store,
                             strategy)
        for r in results:
            if not r.site.startswith("node-"):
                names[str(r.node_id)] = r.site
            if r.status == "ok" and r.ledger:
                ledgers[r.site] = r.ledger
            if r.status != "ok":
                events.write(f"site_{r.status}", round=rnd, run_id=run_id, **r.summary())
                say(f"round {rnd}: site {r.site} {r.status}: {r.reason}")
        try:
            weights = pool()
        except (QuorumNotReached, RoundFailed) as e:
            events.write("round_failed", round=rnd, run_id=run_id, reason=str(e),
                         sites=[r.summary() for r in results])
            say(f"round {rnd} failed: {e}")
            raise RoundFailed(f"round {rnd}: {e}{overload_hint()}") from None
        used = [r.site for r in results if r.status == "ok"]
        dropped = [r.site for r in results if r.status != "ok"]
        store.save(rnd, weights, {
            "study": run.study, "training_id": training_id, "run_id": run_id, "sites": names,
            "used": used, "dropped": dropped, "results": [r.summary() for r in results],
            "ledgers": ledgers,
        })
        _save_registry(run.registry_path, names)
        events.write("round_completed", round=rnd, run_id=run_id, used=used, dropped=dropped,
                     seconds=round(time.monotonic() - t0, 2))
        say(f"round {rnd} completed with {used}" + (f"; dropped {dropped}" if dropped else ""))
    events.write("training_completed", run_id=run_id, training_id=training_id,
                 rounds=run.num_rounds)
    sample = sample_release(run, store, schema, start)
    evaluation = None
    if run.evaluate:
        say(f"evaluation: {min(len(sample.frame), run.evaluation_rows)} synthetic rows sent to "
             "the sites to score against their own rows")
        evaluation = evaluation_stage(grid, run, training_id, schema, sample.frame, names, sizes,
                                      events, store.transcript)
        ledgers.update(evaluation.ledgers)
        for site, reason in evaluation.not_evaluated.items():
            say(f"evaluation: site {site} {reason}")
    manifest = write_release(run, store, schema, start, sample, ledgers, evaluation)
    events.write("release_written", run_id=run_id, training_id=training_id,
                 path=str(run.release_path), rows=manifest["data"]["rows"],
                 epsilon=manifest["privacy"]["release"]["epsilon"])
    say(f"release: {manifest['data']['rows']} rows in {run.release_path}, epsilon "
         f"{manifest['privacy']['release']['epsilon']:.3f} ({run.population} sites)")
    return {"training_id": training_id, "rounds": run.num_rounds, "checkpoint_dir": str(store.dir),
            "release_dir": str(run.release_path)}


# A round: the sites' classified results, and how to pool them (raises QuorumNotReached) once
# the caller has recorded them.
def _plain_round(grid, nodes, weights, wire, start, rnd, run, sizes, names, store, strategy):
    results = exchange(grid, nodes, Request(wire, weights, start["stats_json"]), rnd, run,
                       names, transcript=store.transcript)
    for r in _with_statistics(results, sizes):
        r.num_examples = sizes[r.site]  # fixed by the statistics stage, whatever a reply claims
    reference = _reference_shapes(weights, results)
    results = [strategy.validate(r, reference, weights, run.max_update) for r in results]
    return results, lambda: strategy.aggregate(results)


def _secure_round(grid, nodes, weights, wire, start, rnd, run, sizes, names, store, strategy):
    """SecAgg+ (coordinator/serverapp/secure_aggregation.py): the coordinator gets the mean, not the
    updates, so there is nothing per site to validate here; the sites check their own."""
    # Only sites of the statistics stage can weight their update consistently.
    nodes = [n for n in nodes if names.get(str(n)) in sizes]
    pooled, results, rejected = secure_round(
        grid, nodes, weights, wire, start["stats_json"], rnd, SecAggSettings.of(run),
        {names[str(n)]: sizes[names[str(n)]] for n in nodes}, names, store.events,
        store.transcript)
    for r in _with_statistics(results, sizes):
        # The site weighted its own masked update: it must have used its DP size.
        if abs(r.num_examples - round(sizes[r.site])) > 1:
            store.events.write("site_weight_mismatch", round=rnd, site=r.site,
                               claimed=r.num_examples, statistics=sizes[r.site])

    def pool() -> list[np.ndarray]:
        ok = sum(r.status == "ok" for r in results)
        if rejected:
            raise RoundFailed(rejected)
        if pooled is None or ok < run.min_sites:
            raise QuorumNotReached(ok if pooled is not None else 0, run.min_sites)
        return pooled

    return results, pool


def _with_statistics(results: list[SiteResult], sizes: dict[str, float]) -> list[SiteResult]:
    """The ok results of sites that released statistics in this training; the others' are
    marked invalid (their FedAvg weight is unknown)."""
    kept = []
    for r in results:
        if r.status == "ok" and r.site not in sizes:
            r.status, r.reason = "invalid", "the site released no statistics in this training"
        elif r.status == "ok":
            kept.append(r)
    return kept


def _load_registry(path: Path) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def _save_registry(path: Path, names: dict[str, str]) -> None:
    merged = {**_load_registry(path), **names}
    atomic_write_text(path, json.dumps(merged, indent=1, sort_keys=True))
