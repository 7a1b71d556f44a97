"""The federation with real processes on loopback: a SuperLink, three sites each started with
`synthpool-agent run --config site.toml` (agent -> flower-supernode -> superexec -> one
flwr-clientapp per message), runs submitted with `flwr run deploy/app CONN --stream`.

One federation serves the whole module (starting one costs ~20 s on 2 cores) and every run is
tiny (2000 rows per site, 16 hidden units a column, 3 DP-SGD steps a round); a stage still
takes 15-35 s here because each message starts a fresh ClientApp process that imports flwr,
pandas and opacus/torch. Every training starts with the statistics stage (one more round trip).
The tests run in file order: the last one kills a site and restarts it. Budget: about 5 minutes for
the file.
"""

from __future__ import annotations

import json
import time

import pytest

from tables import TINY_MODEL
from synthpool.agent.ledger import Ledger
from synthpool.common.bundled import ADULT_TRAIN
from synthpool.common.privacy import GaussianMechanism, epsilon_of
from synthpool.coordinator.serverapp.checkpoint import CheckpointStore
from synthpool.local_federation import LocalFederation, SiteSpec, split_rows
from payloads import list_lengths, numbers
from processes import REAL_FLOWER_PROCESSES

pytestmark = REAL_FLOWER_PROCESSES

DELTA = 1e-5
ROWS = 2000
STATS_SIGMA = 12.0  # at least what a site calibrates for its statistics share of epsilon 3
RUN = {"min-sites": 2, "expected-sites": 3, "noise-multiplier": 2.0,
       "stats-noise-multiplier": STATS_SIGMA, "local-steps": 3, "model": TINY_MODEL,
       "release-rows": 300, "straggler-grace": 5.0, "round-timeout": 150.0,
       "node-wait-timeout": 90.0, "poll-interval": 0.3, "evaluate": False,
       "population": "disjoint"}


def _one_round_eps() -> tuple[float, float]:
    """Epsilon of the statistics + one round, and + two rounds (q = 0.125: 2000 declared rows)."""
    s = GaussianMechanism("s", STATS_SIGMA, 1.0, 1)
    m = GaussianMechanism("r", 2.0, 0.125, 3)
    return epsilon_of([s, m], DELTA), epsilon_of([s, m, m], DELTA)


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    work = tmp_path_factory.mktemp("fed")
    data = split_rows(ADULT_TRAIN, work / "data", 3, rows_per_site=ROWS)
    one, two = _one_round_eps()
    # s2 could afford one round of study "tight" at the run's fixed noise, not two: it needs
    # more noise than the coordinator asks for, so it refuses the training up front.
    tight = round((one + two) / 2, 4)
    sites = [
        SiteSpec(f"s{i}", path, {"adult": (10.0, DELTA), "tight": (tight if i == 2 else 10.0, DELTA)},
                 size="declared", declared_rows=ROWS, torch_threads=1)
        for i, path in enumerate(data)
    ]
    federation = LocalFederation(work, sites)
    with federation:
        federation.start()
        yield federation


def _charges(fed, site: str, study: str) -> list[str]:
    with Ledger(fed.site_state_dir(site)) as led:
        return [c.job_id for c in led.charges(study)]


def _training_id(fed) -> str:
    return json.loads((fed.checkpoint_dir / "training.json").read_text())["training_id"]


def _fail(fed, msg: str):
    pytest.fail(f"{msg}\n{fed.logs()}")


@pytest.fixture(scope="module")
def tight_run(fed):
    """Two rounds of study "tight" at noise the coordinator fixes: s2's own cap calls for more,
    so it refuses (the site owns its noise); s0 and s1 train and score the release."""
    fed.checkpoint_dir = fed.coord_dir / "ckpt-tight"
    t0 = time.monotonic()
    out = fed.run({**RUN, "study": "tight", "num-rounds": 2, "evaluate": True,
                   "release-rows": 1000}, timeout=320)
    out.seconds = time.monotonic() - t0
    if out.returncode != 0 or not out.of("release_written"):
        _fail(fed, f"run failed rc={out.returncode}:\n{out.output}")
    return out


@pytest.mark.timeout(380)
def test_stats_two_rounds_and_a_release(fed, tight_run):
    store = CheckpointStore(fed.checkpoint_dir)
    assert store.latest_round() == 2
    start, initial = store.load_start()
    assert sorted(start["sites"]) == ["s0", "s1"]
    assert [w.shape for w in store.load().weights] == [w.shape for w in initial]
    assert [e["round"] for e in tight_run.of("round_completed")] == [1, 2]
    assert sorted(store.load(1).meta["used"]) == ["s0", "s1"]
    tid = _training_id(fed)
    assert _charges(fed, "s0", "tight") == [f"{tid}/stats", f"{tid}/round-1", f"{tid}/round-2",
                                            f"{tid}/evaluate"]
    release = fed.checkpoint_dir / "release"
    assert (release / "synthetic.csv").read_text().splitlines()[0].endswith(",income")
    print(f"statistics + 2 rounds + evaluation + release: {tight_run.seconds:.0f} s")


@pytest.mark.timeout(60)
def test_release_manifest_carries_each_sites_ledger(fed, tight_run):
    from synthpool.coordinator.serverapp.release import read_manifest

    manifest = read_manifest(fed.checkpoint_dir / "release")
    per_site = manifest["privacy"]["per_site"]
    assert sorted(per_site) == ["s0", "s1"]
    for site in per_site:
        with Ledger(fed.site_state_dir(site)) as led:
            spend = led.spent("tight")
            assert per_site[site]["epsilon"] == pytest.approx(spend.epsilon, rel=1e-9)
            assert per_site[site]["mechanisms"] == [m.to_dict() for m in spend.mechanisms]
    assert manifest["privacy"]["population"] == "disjoint"
    assert manifest["privacy"]["release"]["epsilon"] == max(v["epsilon"] for v in per_site.values())
    assert [sorted(r["sites"]) for r in manifest["participation"]] == [["s0", "s1"], ["s0", "s1"]]


@pytest.mark.timeout(60)
def test_too_little_noise_is_refused_and_the_coordinator_sees_why(fed, tight_run):
    refused = [e for e in tight_run.of("site_refused") if e.get("stage") != "evaluation"]
    assert [(e["site"], e["round"]) for e in refused] == [("s2", 0)]  # not asked again
    reason = refused[0]["reason"]
    assert ("site s2 refuses: study 'tight': the statistics stage asks for noise multiplier 12, "
            "less than this site allows") in reason
    assert "site s2 refused" in tight_run.output  # shown to whoever ran `flwr run --stream`
    assert sorted(CheckpointStore(fed.checkpoint_dir).load().meta["used"]) == ["s0", "s1"]
    assert _charges(fed, "s2", "tight") == []  # refused before anything was charged
    assert len(_charges(fed, "s0", "tight")) == 4


@pytest.mark.timeout(60)
def test_federated_evaluation_no_reply_carries_a_real_row(fed, tight_run):
    """Every reply the coordinator received (its transcript, recorded as the replies came off
    the SuperLink): no value of any site's real rows, no list longer than a histogram, and the
    evaluation replies hold only scores, charged DP histograms and the ledger."""
    from synthpool.common.bundled import ADULT_SCHEMA
    from synthpool.common.evaluation.grids import column_grid
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema
    from synthpool.common.stats import cell_labels, histogram_columns
    from synthpool.coordinator.serverapp.release import read_manifest

    schema = Schema.load(ADULT_SCHEMA)
    real = [load_table(fed.sites[s].data, schema)[0] for s in ("s0", "s1", "s2")]
    # fnlwgt is close to a row identifier (census weights, 6 digits): if any row, or any per-row
    # value, had left a site, its fnlwgt would be somewhere in what came back.
    sentinels = {float(v) for df in real for v in df["fnlwgt"].dropna()}
    # The longest list that may come back: a histogram on a public grid (evaluation's, or the
    # statistics stage's finer one).
    longest_grid = max([column_grid(c).size for c in schema.columns]
                       + [len(cell_labels(schema, n)) for n in histogram_columns(schema)])
    replies = [json.loads(line) for line in (fed.checkpoint_dir / "transcript.jsonl").read_text().splitlines()]
    evaluations = [r for r in replies if r["message_type"] == "query.evaluate"]
    # s2 trained nothing of this training, so it has nothing to score (and no free query).
    assert sorted((r["site"], r["status"]) for r in evaluations) == \
        [("s0", "ok"), ("s1", "ok"), ("s2", "refused")]
    for r in replies:
        for name, record in r.get("config", {}).items():
            for key, value in record.items():
                assert not isinstance(value, dict), (name, key)  # no bytes came back
                tree = json.loads(value) if key == "json" else value
                assert not sentinels & set(numbers(tree)), (r["site"], name)
                assert max(list_lengths(tree), default=0) <= longest_grid, (r["site"], name)
    for r in evaluations:
        if r["status"] == "ok":
            assert set(r["config"]) == {"site", "ledger", "evaluation"}
            assert not any(r["arrays"].values())
            payload = json.loads(r["config"]["evaluation"]["json"])
            # By default only the charged histograms: the aggregate scores are not DP.
            assert payload["scores"] is None
            assert payload["histograms"]["mechanism"]["name"] == "evaluation histograms"
    manifest = read_manifest(fed.checkpoint_dir / "release")
    assert manifest["evaluation"]["sites"] == ["s0", "s1"]
    assert manifest["evaluation"]["not_dp_scores_from"] == []
    assert "did not train round 2" in manifest["evaluation"]["not_evaluated"]["s2"]
    assert (fed.checkpoint_dir / "release" / "report.html").exists()
    for site in ("s0", "s1"):  # the charge is in the ledger the manifest states
        with Ledger(fed.site_state_dir(site)) as led:
            names = [m.name for m in led.spent("tight").mechanisms]
        assert names[-1] == "evaluation histograms"
        assert [m["name"] for m in manifest["privacy"]["per_site"][site]["mechanisms"]] == names
        assert list(fed.site_state_dir(site).glob("reports/*/*/report.html"))


@pytest.mark.timeout(60)
def test_a_local_process_without_the_agents_secret_gets_no_task(fed, tight_run):
    """The SuperNode's local Runtime API hands a task (and its token) only to a caller signed
    with the secret the agent started it with (0600, fresh each start)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.constant import TaskType
    from flwr.supercore.runtime import RuntimeHttpClient

    from synthpool.agent.config import load_site_config
    from synthpool.agent.host.daemon import superexec_secret_path

    cfg = load_site_config(fed.site_config("s0"))
    assert superexec_secret_path(cfg).stat().st_mode & 0o077 == 0
    intruder = RuntimeHttpClient.from_server_address(
        server_address=f"127.0.0.1:{cfg.supernode.port}", insecure=True, root_certificates=None,
        interceptors=[])
    with pytest.raises(Exception, match="401 Unauthorized"):
        intruder.AcquireTask(AcquireTaskRequest(supported_task_types=[t.value for t in TaskType]))


@pytest.mark.timeout(400)
def test_coordinator_killed_and_restarted_resumes_without_double_charge(fed):
    fed.checkpoint_dir = fed.coord_dir / "ckpt-restart"
    cfg = {**RUN, "study": "adult", "num-rounds": 2}
    fed.start_run(cfg, name="run-before-crash")
    store = CheckpointStore(fed.checkpoint_dir)

    def round2_charged() -> bool:
        if store.latest_round() < 1 or not (fed.checkpoint_dir / "training.json").exists():
            return False
        tid = _training_id(fed)
        return any(f"{tid}/round-2" in _charges(fed, s, "adult") for s in ("s0", "s1", "s2"))

    try:
        fed.wait_for(round2_charged, 260, "a site charging round 2", poll=0.3)
    except TimeoutError as e:
        _fail(fed, str(e))
    assert store.latest_round() == 1
    fed.kill_coordinator()                      # mid-round 2: some site already charged it
    fed.start_coordinator()                     # same port, same database
    out = fed.run(cfg, timeout=200, name="run-after-restart")
    if out.returncode != 0 or not out.of("release_written"):
        _fail(fed, f"resumed run failed rc={out.returncode}:\n{out.output}")
    starts = out.of("run_started")
    assert [e["resume_after_round"] for e in starts] == [0, 1]
    assert [e["round"] for e in out.of("round_completed")] == [1, 2]
    assert store.latest_round() == 2
    replayed = [r["site"] for r in store.load(2).meta["results"] if r.get("replayed")]
    assert replayed, "no site answered round 2 from its release cache"
    tid = _training_id(fed)
    for site in ("s0", "s1", "s2"):
        jobs = [j for j in _charges(fed, site, "adult") if j.startswith(tid)]
        assert jobs == [f"{tid}/stats", f"{tid}/round-1", f"{tid}/round-2"], (site, jobs)


@pytest.mark.timeout(420)
def test_a_site_killed_mid_round_is_dropped_and_rejoins_the_next_round_when_restarted(fed):
    """Fault table: kill -9 a site in a round and restart it 5 s later. The round completes with
    the others; the restarted site (a new SuperNode) is asked again in the next round and takes
    part; its ledger holds each job once."""
    fed.checkpoint_dir = fed.coord_dir / "ckpt-kill"
    # Round 1 waits 30 s for the killed site once the others answered, so the restarted agent
    # is back (about 15 s on a loaded host) before round 2 picks its sites.
    fed.start_run({**RUN, "study": "adult", "num-rounds": 2, "straggler-grace": 30.0},
                  name="run-kill")
    store = CheckpointStore(fed.checkpoint_dir)
    try:
        fed.wait_for(lambda: any(e["event"] == "round_started" for e in store.events.read()),
                     150, "round 1 starting")
    except TimeoutError as e:
        _fail(fed, str(e))
    fed.kill_site("s1")                           # agent, SuperNode, SuperExec, ClientApp: -9
    time.sleep(5)
    fed.start_site("s1")
    try:
        fed.wait_for(lambda: any(e["event"] in ("training_completed", "round_failed")
                                 for e in store.events.read()), 300, "the training ending")
    except TimeoutError as e:
        _fail(fed, str(e))
    events = store.events.read()
    assert [e["round"] for e in events if e["event"] == "round_completed"] == [1, 2], events
    assert sorted(store.load(1).meta["used"]) == ["s0", "s2"]
    dropped = [e for e in events if e.get("round") == 1 and e["event"] in
               ("site_missing", "site_unavailable", "site_failed")]
    assert [d["site"] for d in dropped] == ["s1"], dropped
    assert sorted(store.load(2).meta["used"]) == ["s0", "s1", "s2"]  # it rejoined
    tid = _training_id(fed)
    jobs = [j for j in _charges(fed, "s1", "adult") if j.startswith(tid)]
    assert len(jobs) == len(set(jobs)) and jobs[0] == f"{tid}/stats" \
        and jobs[-1] == f"{tid}/round-2", jobs
