"""Secure aggregation over real processes with TLS: a SuperLink with the coordinator's CA, three
`synthpool-agent run` sites, `flwr run deploy/app` with `secure-aggregation=true`. One site is
killed (SIGKILL, agent and SuperNode) as the training stage of the round begins, after it shared
its key material; the round completes with the other two, its masks are removed with their
shares, and the pooled model equals plain FedAvg of the two survivors' updates, recomputed here
from the weights each survivor kept in its own release cache.

About a minute alone on 2 cores: a statistics stage, then SecAgg+'s four message stages, one of which
waits for the SuperLink to declare the killed site offline (its heartbeats stop: about 20 s)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tables import TINY_MODEL
from synthpool.agent.site_state import SiteState
from synthpool.common.bundled import ADULT_TRAIN
from synthpool.coordinator.serverapp.checkpoint import CheckpointStore
from synthpool.local_federation import LocalFederation, SiteSpec, split_rows
from processes import REAL_FLOWER_PROCESSES

pytestmark = REAL_FLOWER_PROCESSES

ROWS = 2000
RUN = {"study": "adult", "num-rounds": 1, "min-sites": 2, "expected-sites": 3,
       "noise-multiplier": 2.0, "stats-noise-multiplier": 12.0, "local-steps": 3, "model": TINY_MODEL,
       "release-rows": 300, "round-timeout": 45.0,
       "node-wait-timeout": 90.0, "poll-interval": 0.3, "evaluate": False,
       "secure-aggregation": True}


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("secagg")
    data = split_rows(ADULT_TRAIN, work / "data", 3, rows_per_site=ROWS)
    sites = [SiteSpec(f"s{i}", path, {"adult": (10.0, 1e-5)}, size="declared",
                      declared_rows=ROWS, torch_threads=1) for i, path in enumerate(data)]
    with LocalFederation(work, sites, tls=True) as fed:
        fed.start()
        run = fed.start_run(RUN)

        def training_stage_began() -> bool:
            return any(e["event"] == "secagg_stage" and e["stage"] == "collect_masked_vectors"
                       for e in fed.events())

        fed.wait_for(training_stage_began, 240, "the SecAgg+ training stage")
        fed.kill_site("s2")
        try:
            run.popen.wait(timeout=300)
        except Exception:
            pytest.fail(f"the secure run did not end:\n{fed.logs()}")
        events = fed.events()
        if run.popen.returncode != 0 or not any(e["event"] == "release_written" for e in events):
            pytest.fail(f"secure run failed rc={run.popen.returncode}\n{fed.logs()}")
        yield fed, events


@pytest.mark.timeout(600)
def test_secure_round_survives_a_dropped_site_and_equals_fedavg(secure_run):
    fed, events = secure_run
    store = CheckpointStore(fed.checkpoint_dir)
    completed = [e for e in events if e["event"] == "round_completed"]
    assert [(sorted(e["used"]), e["dropped"]) for e in completed] == [(["s0", "s1"], ["s2"])]
    stages = [e["stage"] for e in events if e["event"] == "secagg_stage"]
    assert stages == ["setup", "share_keys", "collect_masked_vectors", "unmask"]
    dropped = [e for e in events if e["event"].startswith("site_") and e.get("site") == "s2"]
    # Dropped by the SuperLink when its heartbeats stopped (about 20 s: agent/host/supernode.py),
    # not by the round's timeout (45 s; "missing"), which Flower's 30 s heartbeat would reach.
    assert dropped and dropped[0]["status"] == "unavailable", dropped

    start, initial = store.load_start()
    tid = start["training_id"]
    survivors = ("s0", "s1")
    # Each survivor trained during the key stages (the request came with the setup stage) and
    # its masking stage sent that job's update, from its release cache.
    results = {r["site"]: r for r in store.load(1).meta["results"]}
    assert all(results[s]["trained_ahead"] and results[s]["replayed"] for s in survivors)
    sizes = {s: float(start["sites"][s]["rows"]) for s in survivors}
    local = {s: SiteState.from_config_path(fed.site_config(s))
             .load_release("adult", f"{tid}/round-1").weights for s in survivors}
    total = sum(sizes.values())
    pooled = store.load(1).weights
    moved = 0.0
    for i, w0 in enumerate(initial):
        w0 = w0.astype(np.float64)
        fedavg = w0 + sum(sizes[s] / total * (local[s][i] - w0) for s in survivors)
        np.testing.assert_allclose(pooled[i], fedavg, atol=1e-4)
        moved = max(moved, float(np.max(np.abs(fedavg - w0))))
    assert moved > 1e-3  # the round did move the model: the comparison is not of two copies


@pytest.mark.timeout(60)
def test_no_site_update_reached_the_coordinator_in_the_clear(secure_run):
    fed, _ = secure_run
    replies = [json.loads(line) for line in
               (fed.checkpoint_dir / "transcript.jsonl").read_text().splitlines()]
    secure = [r for r in replies if r["message_type"].startswith("train/secagg/")]
    assert {r["message_type"] for r in secure} == {
        f"train/secagg/{s}" for s in ("setup", "share_keys", "collect_masked_vectors", "unmask")}
    for r in secure:
        assert not any(r.get("arrays", {}).values()), r["message_type"]
    masked = [r for r in secure if r["message_type"].endswith("collect_masked_vectors")]
    assert sorted((r["site"], r["status"]) for r in masked) in (
        [("s0", "ok"), ("s1", "ok")], [("s0", "ok"), ("s1", "ok"), ("s2", "error")])
    for r in (r for r in masked if r["status"] == "ok"):  # the site's ledger still reaches the manifest
        ledger = json.loads(r["config"]["fitres.metrics"]["ledger"])
        assert ledger["site"] == r["site"] and ledger["epsilon"] > 0

    from synthpool.coordinator.serverapp.release import read_manifest

    manifest = read_manifest(fed.checkpoint_dir / "release")
    assert manifest["training"]["aggregation"] == "FedAvg under SecAgg+"
    assert [sorted(p["sites"]) for p in manifest["participation"]] == [["s0", "s1"]]
    for site in ("s0", "s1"):
        assert len(manifest["privacy"]["per_site"][site]["mechanisms"]) == 2  # stats + round 1
