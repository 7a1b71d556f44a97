"""The federation's logic without processes: the coordinator's round loop drives the site's real
Flower ClientApp through an in-process Grid. Fast; the same scenarios with real processes on
loopback are in test_federation_processes.py."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Message, RecordDict

from tables import TINY_MODEL
from synthpool.agent.clientapp import app as client_app, noise_plan, site_job
from synthpool.agent.ledger import Ledger
from synthpool.agent.site_state import SiteState
from synthpool.common.bundled import ADULT_TRAIN
from synthpool.common.privacy import GaussianMechanism, epsilon_of
from synthpool.common.wire import TrainingSpec
from synthpool.coordinator.serverapp import release, statistics_stage, strategy, transport
from synthpool.coordinator.serverapp.checkpoint import CheckpointError, CheckpointStore
from synthpool.local_federation import split_rows
from synthpool.coordinator.admin.flower_processes import format_node_config
from synthpool.coordinator.serverapp.study import run_study
from synthpool.coordinator.serverapp.run_config import RunConfig
from synthpool.coordinator.serverapp.transport import RoundFailed
from payloads import list_lengths

DELTA = 1e-5


# -- a Grid that delivers to ClientApps in this process ----------------------------------------

class FakeGrid:
    """Just enough of flwr.serverapp.Grid: push runs the site's ClientApp at once; `down` sites
    never answer; `crash_after_push` (a message group: "round-0" is the statistics stage) makes
    the coordinator 'die' once that group's messages are out."""

    def __init__(self, site_configs: dict[int, str], down: set[int] = frozenset()) -> None:
        self.site_configs = site_configs
        self.down = set(down)
        self.outbox: dict[str, Message] = {}
        self.crash_after_push: str | None = None
        self._ids = itertools.count(1)
        self.run = type("Run", (), {"run_id": 7})()

    def get_node_ids(self):
        return list(self.site_configs)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            if node not in self.down:
                ctx = Context(run_id=7, node_id=node,
                              node_config={"site-config": self.site_configs[node]},
                              state=RecordDict(), run_config={})
                self.outbox[mid] = client_app.app(message=msg, context=ctx)
            ids.append(mid)
        if messages and messages[0].metadata.group_id == self.crash_after_push:
            raise KeyboardInterrupt("coordinator killed")
        return ids

    def pull_messages(self, message_ids):
        return [self.outbox.pop(m) for m in list(message_ids) if m in self.outbox]


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture(autouse=True)
def torch_threads():
    """Sites here train with one thread (site.toml), the release samples with all cores: put the
    session's setting back for the other test files."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adult_slices(tmp_path_factory):
    return split_rows(ADULT_TRAIN, tmp_path_factory.mktemp("data"), 3, rows_per_site=1500)


def write_site(tmp_path, name, data, eps=3.0, extra="") -> str:
    path = tmp_path / name / "site.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[site]\nname = "{name}"\ndata = "{data}"\nstate_dir = "state"\ntorch_threads = 1\n'
        f'{extra}\n'
        f'[superlink]\naddress = "127.0.0.1:1"\ninsecure = true\n\n'
        f'[budgets.adult]\nepsilon = {eps}\ndelta = {DELTA}\n'
    )
    return str(path)


DECLARED = 'size = "declared"\ndeclared_rows = 1500'
# A tiny model and 3 DP-SGD steps a round: the protocol is under test here, not the model.
TINY = dict(local_steps=3, model=TINY_MODEL, release_rows=300)
STATS_SIGMA = 12.0  # at least what a site with epsilon 3 calibrates for its statistics share


def make_run(tmp_path, **kw) -> RunConfig:
    base = dict(study="adult", checkpoint_dir=str(tmp_path / "ckpt"), num_rounds=2, min_sites=2,
                expected_sites=3, node_wait_timeout=1, round_timeout=2, straggler_grace=0.2,
                poll_interval=0.01, noise_multiplier=2.0, stats_noise_multiplier=STATS_SIGMA,
                evaluate=False, population="disjoint", **TINY)
    base.update(kw)
    return RunConfig(**base)


def ledger_of(cfg: str) -> Ledger:
    return Ledger(SiteState.from_config_path(cfg).state_dir)


def stats_mech() -> GaussianMechanism:
    return GaussianMechanism("preprocessing histograms", STATS_SIGMA, 1.0, 1)


# -- wire agreement (agent and coordinator do not import each other) ----------------------------

def test_weights_travel_as_one_array_and_a_layout_that_does_not_fit_is_unreadable():
    """One Flower object per message, not one per tensor (each is an HTTP request each way);
    the layout is checked, so a reply cannot smuggle values past the shapes it claims."""
    from flwr.app import Array

    from synthpool.common.wire import Reply, Request

    weights = [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros(0, np.float32),
               np.array([7], dtype=np.int64)]
    records = Reply(weights, {"num-examples": 5.0}, {"site": "a"}).records()
    assert len(records.array_records["arrays"]) == 1
    back = Reply.from_content(records).weights
    assert [(w.shape, w.dtype) for w in back] == [(w.shape, w.dtype) for w in weights]
    assert all((a == b).all() for a, b in zip(weights, back))
    assert Request.from_content(Request({"x": 1}, weights).records()).weights[0].shape == (3, 4)
    assert Request.from_content(Request({"x": 1}).records()).weights == []
    records.array_records["arrays"]["packed"] = Array(np.zeros(14, np.float32))  # 1 too many
    with pytest.raises(ValueError, match="do not fit their layout"):
        Reply.from_content(records)


def test_a_site_reads_back_every_setting_the_coordinator_sends():
    run = make_run(__import__("pathlib").Path("/tmp"), learning_rate=7e-3, evaluation_share=0.2,
                   proximal_mu=0.1, target_epsilon=2.5)
    cfg = site_job.RoundConfig.from_wire(run.round_wire("t", 1, "sha256:x", "sha256:y"))
    for f in dataclasses.fields(TrainingSpec):
        assert getattr(cfg, f.name) == getattr(run, f.name), f.name
    assert (cfg.study, cfg.training_id, cfg.round, cfg.stats_digest) == ("adult", "t", 1, "sha256:y")
    assert cfg.job_id == "t/round-1" and cfg.plan.steps == cfg.num_rounds * cfg.local_steps
    ev = site_job.RoundConfig.from_wire(run.round_wire("t", 2, "sha256:x", stage="evaluate"))
    assert ev.job_id == "t/evaluate"
    with pytest.raises(ValueError, match="lacks"):
        site_job.RoundConfig.from_wire({"study": "adult"})


def test_app_run_config_matches_run_config():
    import tomllib

    from synthpool.local_federation import APP_DIR

    cfg = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    declared = set(cfg["config"])
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}
    assert declared == fields
    assert cfg["components"] == {"serverapp": "synthpool.coordinator.serverapp.app:app",
                                 "clientapp": "synthpool.agent.clientapp.app:app"}
    defaults = RunConfig.from_run_config({**cfg["config"], "checkpoint-dir": "/x"})
    assert (defaults.num_rounds * defaults.local_steps, defaults.family) == (480, "autoregressive")


def test_node_config_format():
    assert format_node_config({"site-config": "/a b/s.toml", "n": 3, "f": True}) == \
        'site-config="/a b/s.toml" n=3 f=true'
    from flwr.common.config import parse_config_args

    text = format_node_config({"model": '{"hidden":16}', "p": "C:\\x", "s": "a b"})
    assert parse_config_args([text]) == {"model": '{"hidden":16}', "p": "C:\\x", "s": "a b"}
    with pytest.raises(ValueError):
        format_node_config({"x": 'it\'s "hi"'})


# -- strategy and checkpoints --------------------------------------------------------------------

def test_fedavg_weights_by_reported_size_and_rejects_bad_updates():
    fedavg = strategy.FedAvg(min_sites=2)
    ok = lambda n, v: strategy.SiteResult(n, f"s{n}", "ok", [np.full(2, v)], num_examples=n)  # noqa: E731
    results = [ok(100, 1.0), ok(300, 3.0), ok(5, np.nan),
               strategy.SiteResult(4, "s4", "ok", [np.zeros(3)], num_examples=10)]
    results = [fedavg.validate(r, [np.zeros(2)]) for r in results]
    assert [r.status for r in results] == ["ok", "ok", "invalid", "invalid"]
    assert np.allclose(fedavg.aggregate(results)[0], (100 * 1 + 300 * 3) / 400)
    with pytest.raises(strategy.QuorumNotReached):
        strategy.FedAvg(min_sites=3).aggregate(results)


def test_an_update_that_moved_further_than_adam_can_is_rejected():
    """A site's weights may be anywhere, but within one round they can move from the global
    weights by at most what lr x steps of Adam allow (common/update_bound.py)."""
    run = RunConfig(study="x", checkpoint_dir="c", learning_rate=5e-3, local_steps=160)
    bound = run.max_update
    assert 1.5 < bound < 1.6
    g = [np.full(3, 10.0)]
    fedavg = strategy.FedAvg(min_sites=1)
    near = strategy.SiteResult(1, "near", "ok", [g[0] + bound * 0.99], num_examples=5)
    far = strategy.SiteResult(2, "far", "ok", [g[0] - [0, 0, bound * 1.01]], num_examples=5)
    assert fedavg.validate(near, g, g, bound).status == "ok"
    far = fedavg.validate(far, g, g, bound)
    assert far.status == "invalid" and far.weights == []
    assert "moves a weight by 1.5" in far.reason and "learning rate and local steps" in far.reason


def test_checkpoint_commit_point_and_integrity(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load() is None and store.load_start() is None
    store.save_start({"stats_json": "{}"}, [np.ones(2)])
    start, weights = store.load_start()
    assert start["stats_json"] == "{}" and np.allclose(weights[0], 1)
    store.save(1, [np.arange(3.0)], {"sites": {}})
    store.save(2, [np.arange(3.0) * 2], {"sites": {}})
    (tmp_path / "round-0003.npz").write_bytes(b"half written")  # crash before the commit point
    assert store.latest_round() == 2 and np.allclose(store.load().weights[0], [0, 2, 4])
    (tmp_path / "round-0002.npz").write_bytes(b"tampered")
    with pytest.raises(CheckpointError):
        store.load()
    (tmp_path / "initial.npz").write_bytes(b"tampered")
    with pytest.raises(CheckpointError):
        store.load_start()
    assert not list(tmp_path.glob("*.tmp"))
    info = store.training("adult", {})
    assert store.training("adult", {})["training_id"] == info["training_id"]
    with pytest.raises(CheckpointError):
        store.training("other", {})


def test_release_guarantee_is_max_for_disjoint_sites_and_sum_for_overlapping():
    per_site = {"a": {"epsilon": 1.0, "delta": 1e-5}, "b": {"epsilon": 2.5, "delta": 2e-5}}
    assert release.release_guarantee(per_site, "disjoint")["epsilon"] == 2.5
    assert release.release_guarantee(per_site, "disjoint")["delta"] == 2e-5
    assert release.release_guarantee(per_site, "overlapping")["epsilon"] == 3.5
    assert release.release_guarantee(per_site, "overlapping")["delta"] == pytest.approx(3e-5)
    with pytest.raises(ValueError):
        RunConfig(study="x", checkpoint_dir="/x", population="sometimes")


def test_coordinator_rejects_statistics_it_cannot_merge(adult_schema, adult_train):
    from synthpool.common.stats import collect_stats

    good = collect_stats(adult_schema, adult_train.iloc[:500], 5.0, np.random.default_rng(0))
    result = lambda d: strategy.SiteResult(1, "a", "ok", stats=d)  # noqa: E731
    assert statistics_stage.stats_problem(result(good.to_dict()), adult_schema) == ""
    short = good.to_dict()
    short["histograms"]["age"] = short["histograms"]["age"][:-1]
    assert "is not 74 finite counts" in statistics_stage.stats_problem(result(short), adult_schema)
    missing = good.to_dict()
    del missing["histograms"]["income"]
    assert "expected" in statistics_stage.stats_problem(result(missing), adult_schema)
    other = {**good.to_dict(), "schema_fingerprint": "sha256:00"}
    assert "another schema" in statistics_stage.stats_problem(result(other), adult_schema)
    assert "unreadable" in statistics_stage.stats_problem(result({"x": 1}), adult_schema)


# -- the protocol against real ClientApps --------------------------------------------------------

def test_rounds_refusal_and_exact_charges(tmp_path, adult_slices):
    """The coordinator fixes the noise; site c's smaller cap would need more of it, so c refuses
    the training up front (the site owns its noise), charged nothing; a and b carry on."""
    rnd = GaussianMechanism("x", 2.0, 0.125, TINY["local_steps"])
    c_cap = round((epsilon_of([stats_mech(), rnd], DELTA)
                   + epsilon_of([stats_mech(), rnd, rnd], DELTA)) / 2, 4)
    configs = {101: write_site(tmp_path, "a", adult_slices[0], extra=DECLARED),
               102: write_site(tmp_path, "b", adult_slices[1], extra=DECLARED),
               103: write_site(tmp_path, "c", adult_slices[2], eps=c_cap, extra=DECLARED)}
    run = make_run(tmp_path)
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    assert store.latest_round() == 2
    events = store.events.read()
    assert [e["event"] for e in events][:3] == ["run_started", "stats_started", "site_refused"]
    refused = [e for e in events if e["event"] == "site_refused"]
    # c is not asked again in the rounds: without its statistics it cannot take part.
    assert [(e["site"], e["round"]) for e in refused] == [("c", 0)]
    assert [e["nodes"] for e in events if e["event"] == "round_started"] == [[101, 102]] * 2
    assert ("site c refuses: study 'adult': the statistics stage asks for noise multiplier 12, "
            "less than this site allows") in refused[0]["reason"]
    assert store.load().meta["used"] == ["a", "b"]
    tid = store.training("adult", {})["training_id"]
    assert ledger_of(configs[103]).charges("adult") == []
    for node, cfg in list(configs.items())[:2]:
        charges = ledger_of(cfg).charges("adult")
        assert [c.job_id for c in charges] == [f"{tid}/stats", f"{tid}/round-1", f"{tid}/round-2"]
        assert charges[0].mechanisms == (stats_mech(),)
        assert all(c.mechanisms == (dataclasses.replace(rnd, name=f"dp-sgd/{c.job_id}"),)
                   for c in charges[1:])
    # The pooled model has the CVAE's shapes, built by the coordinator from the merged statistics.
    start, initial = store.load_start()
    assert [w.shape for w in store.load().weights] == [w.shape for w in initial]
    merged = json.loads(start["stats_json"])
    assert len(merged["mechanisms"]) == 2 and start["sites"]["a"]["rows"] == 1500.0
    assert (tmp_path / "ckpt" / "release" / "synthetic.csv").exists()


def test_estimated_size_is_the_stats_total_and_the_fedavg_weight(tmp_path, adult_slices):
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1]) for i, n in [(1, "a"), (2, "b")]}
    run = make_run(tmp_path, num_rounds=1, expected_sites=2)
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    start, _ = store.load_start()
    for name, cfg in zip("ab", configs.values()):
        site = SiteState.from_config_path(cfg)
        own = site_job.own_stats(site, site_job.RoundConfig.from_wire(
            run.round_wire(start["training_id"], 0, site.schema.fingerprint())))
        rows = start["sites"][name]["rows"]
        assert rows == round(own.noisy_rows(), 3) and abs(rows - len(site.load_rows())) < 150
        assert start["sites"][name]["size_source"] == "estimated"
        # No separate size query: the statistics and one round, nothing else.
        assert [c.job_id.split("/")[1] for c in ledger_of(cfg).charges("adult")] == \
            ["stats", "round-1"]
        result = next(r for r in store.load(1).meta["results"] if r["site"] == name)
        assert result["num_examples"] == rows


def test_replies_carry_no_exact_count_and_no_timing(tmp_path, adult_slices):
    """Everything a site sends is in the coordinator's transcript (every config and metric
    record in full): no exact row count (of the table, its training rows or its hold-out) and no
    training time. Under SecAgg+ the same metrics travel in clear beside the masked update."""
    import re

    configs = {1: write_site(tmp_path, "a", adult_slices[0]),
               2: write_site(tmp_path, "b", adult_slices[1])}
    run = make_run(tmp_path, num_rounds=1, expected_sites=2)
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    sent = [json.loads(line) for line in (store.dir / "transcript.jsonl").read_text().splitlines()]
    rounds = [r for r in sent if r.get("round") == 1]
    assert len(rounds) == 2 and all(r["metrics"]["metrics"]["steps"] == 3 for r in rounds)
    for reply in sent:
        keys = [k for rec in (*reply["metrics"].values(), *reply["config"].values()) for k in rec]
        assert not [k for k in keys if "second" in k], keys
    text = (store.dir / "transcript.jsonl").read_text()
    start, _ = store.load_start()
    for cfg in configs.values():
        site = SiteState.from_config_path(cfg)
        train, holdout = len(site.load_rows()), len(site.load_holdout())
        assert train + holdout == 1500
        for exact in {1500, train, holdout}:
            assert not re.search(rf"(?<![\w.]){exact}(?:\.0+)?(?![\w.])", text), exact
        # The DP-SGD normaliser is the rate times the same DP estimate, never the exact count.
        size = site_job.reported_size(site, site_job.own_stats(site, site_job.RoundConfig.from_wire(
            run.round_wire(start["training_id"], 1, site.schema.fingerprint()))))
        plan = noise_plan.plan_round(site, site_job.RoundConfig.from_wire(
            run.round_wire(start["training_id"], 1, site.schema.fingerprint())), size)
        assert plan.dp.expected_batch == pytest.approx(plan.dp.sample_rate * size.rows)


def test_coordinator_crashes_resume_without_double_charge(tmp_path, adult_slices):
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1])
               for i, n in [(1, "a"), (2, "b"), (3, "c")]}
    run = make_run(tmp_path, num_rounds=3)
    grid = FakeGrid(configs)
    grid.crash_after_push = "round-0"                             # dies in the statistics stage
    with pytest.raises(KeyboardInterrupt):
        run_study(grid, run)
    store = CheckpointStore(run.checkpoint_dir)
    assert store.load_start() is None
    grid = FakeGrid(configs)
    grid.crash_after_push = "round-2"                             # round 2: sites train, coordinator dies
    with pytest.raises(KeyboardInterrupt):
        run_study(grid, run)
    start, _ = store.load_start()
    assert all(r["replayed"] for r in start["results"])           # the stats stage was replayed
    assert store.latest_round() == 1
    run_study(FakeGrid(configs), run)                             # restarted coordinator
    assert store.latest_round() == 3
    events = store.events.read()
    assert [e["resume_after_round"] for e in events if e["event"] == "run_started"] == \
        [0, 0, 1]
    assert all(r["replayed"] for r in store.load(2).meta["results"])  # round 2 from the cache
    training = json.loads((tmp_path / "ckpt" / "training.json").read_text())["training_id"]
    for cfg in configs.values():
        jobs = [c.job_id for c in ledger_of(cfg).charges("adult")]
        assert jobs == [f"{training}/stats"] + [f"{training}/round-{r}" for r in (1, 2, 3)]


def test_only_the_studys_supernodes_are_asked(tmp_path, adult_slices):
    """One SuperLink serves many studies: a connected node outside `node-ids` is never asked."""
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1])
               for i, n in [(1, "a"), (2, "b"), (3, "c")]}
    run = make_run(tmp_path, num_rounds=1, expected_sites=2, node_ids="1, 2")
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    events = store.events.read()
    assert [e["nodes"] for e in events if e["event"] in ("stats_started", "round_started")] == \
        [[1, 2], [1, 2]]
    assert store.load().meta["used"] == ["a", "b"]
    assert ledger_of(configs[3]).charges("adult") == []


def test_a_node_is_the_site_it_was_enrolled_as_whatever_its_reply_says(tmp_path, adult_slices):
    """With the coordinator's enrollment records (node-sites), a node answering under another
    name is invalid, and a connected node nobody enrolled is never asked."""
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1])
               for i, n in [(1, "a"), (2, "b"), (3, "c")]}
    run = make_run(tmp_path, num_rounds=1, min_sites=1, expected_sites=2,
                   node_sites=json.dumps({"1": "a", "2": "hospital-b"}))
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    start, _ = store.load_start()
    assert list(start["sites"]) == ["a"]
    (bad,) = [r for r in start["results"] if r["status"] != "ok"]
    assert bad["site"] == "hospital-b" and "answered as 'b'" in bad["reason"]
    assert [e["nodes"] for e in store.events.read() if e["event"] == "stats_started"] == [[1, 2]]
    assert ledger_of(configs[3]).charges("adult") == []
    with pytest.raises(ValueError, match="node-sites"):
        make_run(tmp_path, node_sites="[1, 2]")


class LateNodeGrid(FakeGrid):
    """A node that connects after the statistics stage (`late`)."""

    def __init__(self, site_configs, late):
        super().__init__(site_configs)
        self.late, self.stats_sent = late, False

    def get_node_ids(self):
        return list(self.site_configs) + (list(self.late) if self.stats_sent else [])

    def push_messages(self, messages):
        self.stats_sent = True
        self.site_configs.update(self.late if messages[0].metadata.group_id != "round-0" else {})
        return super().push_messages(messages)


def test_a_second_node_answering_as_a_site_in_a_round_is_not_counted_twice(tmp_path,
                                                                          adult_slices):
    """A second agent (or a node claiming another's name) that joins after the statistics
    stage: only the node the coordinator knows as the site is used, in every round."""
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1]) for i, n in [(1, "a"), (2, "b")]}
    run = make_run(tmp_path, num_rounds=1, expected_sites=2)
    # The twin is site a's own state dir: its reply is a's genuine (replayed) update.
    run_study(LateNodeGrid(configs, {3: configs[1]}), run)
    meta = CheckpointStore(run.checkpoint_dir).load(1).meta
    assert sorted(meta["used"]) == ["a", "b"]
    (twin_result,) = [r for r in meta["results"] if r["node_id"] == 3]
    assert twin_result["status"] == "invalid"
    assert "a second node answers as 'a' (node 1)" in twin_result["reason"]


def test_a_site_that_requires_secure_aggregation_refuses_a_plain_round(tmp_path, adult_slices):
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1]) for i, n in [(1, "a"), (2, "b")]}
    strict = write_site(tmp_path, "c", adult_slices[2])
    with open(strict, "a") as f:
        f.write("\n[trust]\nrequire_secure_aggregation = true\n")
    configs[3] = strict
    run = make_run(tmp_path, num_rounds=1)
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    refused = [e for e in store.events.read() if e["event"] == "site_refused"]
    assert [(e["site"], e["round"]) for e in refused] == [("c", 1)]
    assert "trains only in securely aggregated rounds" in refused[0]["reason"]
    assert store.load().meta["used"] == ["a", "b"]
    tid = store.training("adult", {})["training_id"]
    assert [c.job_id for c in ledger_of(strict).charges("adult")] == [f"{tid}/stats"]


def test_silent_site_is_dropped_and_quorum_enforced(tmp_path, adult_slices):
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1])
               for i, n in [(1, "a"), (2, "b"), (3, "c")]}
    run = make_run(tmp_path, num_rounds=1)
    run_study(FakeGrid(configs, down={3}), run)
    store = CheckpointStore(run.checkpoint_dir)
    missing = [e for e in store.events.read() if e["event"] == "site_missing"]
    assert [(e["node_id"], e["round"]) for e in missing] == [(3, 0), (3, 1)]
    assert store.load().meta["dropped"] == ["node-3"]
    assert sorted(release.read_manifest(run.release_path)["privacy"]["per_site"]) == ["a", "b"]
    with pytest.raises(RoundFailed, match="only 1 site"):
        run_study(FakeGrid(configs, down={2, 3}), make_run(tmp_path / "again", num_rounds=1))


def _stats_then_wire(site: SiteState, run: RunConfig, tid: str):
    fp = site.schema.fingerprint()
    reply = client_app.handle_stats(site, run.round_wire(tid, 0, fp))
    merged = json.dumps(reply.stats, sort_keys=True)
    return merged, run.round_wire(tid, 1, fp, site_job.stats_digest(merged))


def test_site_refuses_wrong_schema_digest_and_second_release(tmp_path, adult_slices):
    site = SiteState.from_config_path(write_site(tmp_path, "a", adult_slices[0]))
    run = make_run(tmp_path)
    merged, wire = _stats_then_wire(site, run, "t1")
    out = client_app.handle_train(site, [], wire, merged)
    assert out.info["replayed"] is False and out.ledger["epsilon"] > 0
    assert client_app.handle_train(site, [], wire, merged).info["replayed"] is True
    other = [w + 1 for w in out.weights]
    with pytest.raises(client_app.Refusal, match="already released for other inputs"):
        client_app.handle_train(site, other, wire, merged)
    with pytest.raises(client_app.Refusal, match="do not match their digest"):
        client_app.handle_train(site, [], {**wire, "round": 2}, merged.replace("1", "2", 1))
    with pytest.raises(client_app.Refusal, match="not the schema this site pinned"):
        client_app.handle_train(site, [], {**wire, "schema-fingerprint": "sha256:0000",
                                           "round": 2}, merged)
    with pytest.raises(client_app.Refusal, match="no statistics for training t2"):
        client_app.handle_train(site, [], {**wire, "training-id": "t2"}, merged)
    with pytest.raises(client_app.Refusal, match="family 'no-such-family' is not installed"):
        client_app.handle_stats(site, run.round_wire("t3", 0, site.schema.fingerprint())
                                | {"family": "no-such-family"})
    # No budget for a study the owner never configured.
    with pytest.raises(client_app.Refusal, match="no privacy budget configured for study 'x'"):
        client_app.handle_stats(site, {**run.round_wire("t4", 0, ""), "study": "x"})


def test_two_tasks_for_one_job_train_it_once(tmp_path, adult_slices):
    """A SecAgg+ round's job trains ahead (during the key stages) while the masking stage asks for
    it: the second waits on the job's lock and replays the first's release."""
    from concurrent.futures import ThreadPoolExecutor

    config = write_site(tmp_path, "a", adult_slices[0])
    site = SiteState.from_config_path(config)
    merged, wire = _stats_then_wire(site, make_run(tmp_path), "t1")

    def task(**kw):  # its own SiteState, as each task process has
        return client_app.handle_train(SiteState.from_config_path(config), [], wire, merged,
                                       secure=True, **kw)

    with ThreadPoolExecutor(2) as pool:
        ahead, masking = pool.submit(task, ahead=True), pool.submit(task)
        outs = [ahead.result(), masking.result()]
    assert sorted(o.info["replayed"] for o in outs) == [False, True]
    # Whichever took the lock first trained; the other sent that same release.
    assert len({o.info.get("trained-ahead", False) for o in outs}) == 1
    for a, b in zip(outs[0].weights, outs[1].weights):
        np.testing.assert_array_equal(a, b)
    tid_round = wire["training-id"] + "/round-1"
    assert [c.job_id for c in site.ledger.charges("adult")].count(tid_round) == 1


def test_site_calibrates_noise_once_for_the_whole_schedule(tmp_path, adult_slices):
    site = SiteState.from_config_path(write_site(tmp_path, "a", adult_slices[0], eps=2.0))
    run = make_run(tmp_path, noise_multiplier=0.0, stats_noise_multiplier=0.0, target_epsilon=5.0,
                   num_rounds=3, proximal_mu=0.1)
    merged, _ = _stats_then_wire(site, run, "t1")
    weights = []
    for rnd in (1, 2, 3):
        wire = run.round_wire("t1", rnd, site.schema.fingerprint(), site_job.stats_digest(merged))
        weights = client_app.handle_train(site, weights, wire, merged).weights
    ledger = Ledger(site.state_dir)
    charges = ledger.charges("adult")
    # The histograms get the plan's share of min(target 5, cap 2).
    assert epsilon_of(list(charges[0].mechanisms), DELTA) == pytest.approx(0.2, abs=0.01)
    sigmas = {c.mechanisms[0].noise_multiplier for c in charges[1:]}
    assert len(sigmas) == 1                                       # one plan for all rounds
    spent = ledger.spent("adult").epsilon
    assert 1.95 < spent <= 2.0                                    # min(target 5, cap 2), used up


def test_release_manifest_reports_the_sites_ledgers(tmp_path, adult_slices):
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1], eps=eps)
               for i, n, eps in [(1, "a", 1.0), (2, "b", 1.5)]}
    run = make_run(tmp_path, num_rounds=2, expected_sites=2, noise_multiplier=0.0,
                   stats_noise_multiplier=0.0, target_epsilon=10.0)
    run_study(FakeGrid(configs), run)
    manifest = release.read_manifest(run.release_path)
    per_site = manifest["privacy"]["per_site"]
    for name, cfg in zip("ab", configs.values()):
        with ledger_of(cfg) as led:
            spend = led.spent("adult")
            assert per_site[name]["epsilon"] == pytest.approx(spend.epsilon, rel=1e-9)
            assert per_site[name]["delta"] == led.cap("adult").delta
            assert per_site[name]["mechanisms"] == [m.to_dict() for m in spend.mechanisms]
        # An independent accountant recomputes the number from the manifest's fields alone.
        mechs = [GaussianMechanism.from_dict(m) for m in per_site[name]["mechanisms"]]
        assert epsilon_of(mechs, DELTA) == pytest.approx(per_site[name]["epsilon"])
    assert per_site["a"]["epsilon"] == pytest.approx(1.0, abs=0.01)   # each spent its own cap
    assert per_site["b"]["epsilon"] == pytest.approx(1.5, abs=0.01)
    assert manifest["privacy"]["population"] == "disjoint"
    assert manifest["privacy"]["release"]["epsilon"] == max(v["epsilon"] for v in per_site.values())
    assert manifest["participation"] == [{"round": r, "sites": ["a", "b"], "dropped": []}
                                         for r in (1, 2)]
    assert manifest["schema"]["fingerprint"] == SiteState.from_config_path(
        configs[1]).schema.fingerprint()
    assert manifest["model"]["family"] == "autoregressive" and manifest["training"]["rounds"] == 2
    assert manifest["model"]["column_order"][0] == "income"  # the target first
    data = pd.read_csv(run.release_path / "synthetic.csv")
    assert len(data) == TINY["release_rows"] and data.columns[-1] == "income"
    assert set(data["income"]) <= {"<=50K", ">50K"}
    # The same training released for a study that declares overlapping populations: the sum.
    overlap = dataclasses.replace(run, population="overlapping", release_dir=str(tmp_path / "rel2"))
    run_study(FakeGrid(configs), overlap)
    again = release.read_manifest(overlap.release_path)["privacy"]
    assert again["release"]["epsilon"] == pytest.approx(sum(v["epsilon"] for v in per_site.values()))
    assert again["release"]["delta"] == pytest.approx(2 * DELTA)


def test_agent_starts_its_supernode_with_its_own_config(tmp_path, adult_slices):
    from synthpool.agent.host import daemon
    from synthpool.agent.config import ConfigError, load_site_config

    cfg = load_site_config(write_site(tmp_path, "a", adult_slices[0]))
    argv = daemon.supernode_argv(cfg)
    assert argv[1:4] == ["-P", "-m", "synthpool.agent.host.supernode"] and "--insecure" in argv
    assert argv[argv.index("--superlink") + 1] == "127.0.0.1:1"
    assert argv[argv.index("--node-config") + 1] == f'site-config="{cfg.path}"'
    env = daemon.supernode_env(cfg)
    assert env["FLWR_HOME"] == str(cfg.state_dir / "flwr-home")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    ledger = daemon.prepare(cfg)                     # caps come from the site's file only
    assert ledger.cap("adult").epsilon == 3.0
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\nname = "a b"\n')
    with pytest.raises(ConfigError, match="invalid site config"):
        load_site_config(bad)


@pytest.mark.parametrize("budget, says", [
    ("epsilon = 3.0\ndelta = 1.5", "budgets.adult.delta\n  Value error, delta must lie strictly "
                                   "between 0 and 1"),
    ("epsilon = 3.0\ndelta = 0.0", "delta must lie strictly between 0 and 1"),
    ("epsilon = 0\ndelta = 1e-5", "budgets.adult.epsilon\n  Value error, epsilon must be a "
                                  "finite number > 0"),
    ("epsilon = inf\ndelta = 1e-5", "epsilon must be a finite number > 0, not inf"),
])
def test_a_site_toml_budget_without_guarantee_is_refused_before_a_ledger_exists(tmp_path, budget,
                                                                                 says):
    from synthpool.agent.config import ConfigError

    path = Path(write_site(tmp_path, "a", "rows.csv"))
    path.write_text(path.read_text().replace(f"epsilon = 3.0\ndelta = {DELTA}", budget))
    with pytest.raises(ConfigError, match="invalid site config") as err:
        SiteState.from_config_path(path)
    assert says in str(err.value)
    assert sorted(p.name for p in path.parent.iterdir()) == ["site.toml"]  # no state, no ledger


@pytest.mark.parametrize("key, value, says", [
    ("target-epsilon", -1.0, "target-epsilon must be a finite number > 0"),
    ("target-epsilon", float("inf"), "target-epsilon must be a finite number > 0"),
    ("preprocessing-share", 0.0, "preprocessing-share 0.0 must lie in (0, 1)"),
    ("evaluation-share", 1.0, "evaluation-share 1.0 in [0, 1)"),
])
def test_a_request_with_an_impossible_budget_is_refused_before_any_charge(tmp_path, adult_slices,
                                                                          key, value, says):
    site = SiteState.from_config_path(write_site(tmp_path, "a", adult_slices[0]))
    wire = make_run(tmp_path).round_wire("t", 0, site.schema.fingerprint()) | {key: value}
    with pytest.raises(client_app.Refusal, match="malformed statistics request") as err:
        client_app.handle_stats(site, wire)
    assert says in str(err.value)
    assert site.ledger.charges("adult") == []


def test_a_site_warns_in_its_own_log_when_delta_is_above_one_over_its_rows(tmp_path, adult_slices,
                                                                           caplog, monkeypatch):
    from synthpool.agent.site_state import ReportedSize

    path = Path(write_site(tmp_path, "a", adult_slices[0]))
    path.write_text(path.read_text().replace(f"delta = {DELTA}", "delta = 0.01"))
    site = SiteState.from_config_path(path)
    monkeypatch.setattr(noise_plan, "calibrate_noise", lambda *a, **k: 1.5)  # not under test
    cfg = site_job.RoundConfig.from_wire(make_run(tmp_path, noise_multiplier=0.0).round_wire(
        "t", 1, site.schema.fingerprint()))
    with caplog.at_level("WARNING", logger="synthpool.agent"):
        plan = noise_plan.plan_round(site, cfg, ReportedSize(1275.4, "estimated"))
    assert "study 'adult': delta 0.01 is above 1/rows" in caplog.text
    assert plan.noise_source == "calibrated" and plan.dp.noise_multiplier == 1.5
    assert plan.dp.expected_batch == pytest.approx(plan.dp.sample_rate * 1275.4)


def test_process_group_stops_detached_grandchildren(tmp_path):
    """The SuperLink starts its SuperExec in a new session; stopping must still reach it."""
    import os
    import sys
    import time

    from synthpool.coordinator.admin.flower_processes import ProcessGroup, _alive

    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
              " start_new_session=True)\n"
              "print(p.pid, flush=True)\n"
              "time.sleep(60)\n")
    with ProcessGroup(tmp_path) as group:
        proc = group.spawn("parent", "superlink", [sys.executable, "-c", script], os.environ)
        deadline = time.monotonic() + 20
        while not proc.log_tail().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(proc.log_tail().split()[0])
        assert _alive(grandchild)
    assert not proc.alive and not _alive(grandchild)


# -- federated evaluation ------------------------------------------------------------------------

def test_sites_score_the_release_and_the_budget_reserved_for_it_lands_on_target(tmp_path, adult_slices):
    """Calibrated noise, target epsilon 3: statistics + DP-SGD + the evaluation histograms that
    training reserved budget for compose to the target; the release carries the pooled report,
    each site keeps its own, and what came back holds no list longer than a histogram."""
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1]) for i, n in [(1, "a"), (2, "b")]}
    run = make_run(tmp_path, num_rounds=1, expected_sites=2, noise_multiplier=0.0,
                   stats_noise_multiplier=0.0, target_epsilon=3.0, evaluate=True,
                   release_rows=600)
    run_study(FakeGrid(configs), run)
    manifest = release.read_manifest(run.release_path)
    ev = manifest["evaluation"]
    assert ev["performed"] and ev["sites"] == ["a", "b"] and ev["dp_histograms_from"] == ["a", "b"]
    assert (run.release_path / "report.html").exists()
    report = json.loads((run.release_path / "report.json").read_text())
    assert set(report["sites"]) == {"a", "b"} and report["histograms"]["real_sites"] == 2
    for name, cfg in zip("ab", configs.values()):
        with ledger_of(cfg) as led:
            charges = led.charges("adult")
            spend = led.spent("adult")
        assert [c.job_id.split("/")[1] for c in charges] == ["stats", "round-1", "evaluate"]
        site = SiteState.from_config_path(cfg)
        plan = json.loads(next((site.state_dir / "plans").rglob("*.json")).read_text())
        assert charges[-1].mechanisms[0].noise_multiplier == plan["evaluation_noise_multiplier"]
        assert epsilon_of(spend.mechanisms, DELTA) == pytest.approx(3.0, abs=0.02)
        assert manifest["privacy"]["per_site"][name]["epsilon"] == pytest.approx(3.0, abs=0.02)
        assert list(site.state_dir.glob("reports/*/*/report.html"))  # the site's own report
    replies = [json.loads(line) for line in (Path(run.checkpoint_dir) / "transcript.jsonl").read_text().splitlines()]
    evals = [r for r in replies if r["message_type"] == "query.evaluate"]
    assert len(evals) == 2 and all(r["status"] == "ok" for r in evals)
    for r in evals:
        assert set(r["config"]) == {"site", "ledger", "evaluation"} and not any(r["arrays"].values())
        longest = max(list_lengths(json.loads(r["config"]["evaluation"]["json"])))
        assert longest <= max(len(h["labels"]) for h in report["histograms"]["synthetic"].values())



def test_a_site_claiming_more_rows_than_its_histograms_hold_is_left_out(tmp_path, adult_slices):
    """The attack: a site's claimed size is its FedAvg weight (and its counts its share of the
    merged statistics); one that claims 1e12 rows would take the pooled model over. Its own DP
    histograms, which count every row once, give it away."""
    configs = {1: write_site(tmp_path, "a", adult_slices[0]),
               2: write_site(tmp_path, "b", adult_slices[1]),
               3: write_site(tmp_path, "c", adult_slices[2],
                             extra='size = "declared"\ndeclared_rows = 1000000000000')}
    run = make_run(tmp_path, num_rounds=1)
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    invalid = [e for e in store.events.read() if e["event"] == "site_invalid"]
    assert {e["site"] for e in invalid} == {"c"} and invalid[0]["round"] == 0
    assert "disagrees with the total of its own histograms" in invalid[0]["reason"]
    assert store.load().meta["used"] == ["a", "b"]


def test_a_site_fabricating_consistent_statistics_of_a_huge_table_gets_at_most_half_the_weight(
        tmp_path, adult_slices, monkeypatch):
    """The attack the cross-check cannot see: site c releases histograms of its rows counted
    10,000 times, under noise of the charged scale, so its totals agree with each other and
    with the size it reports (about 13 million rows). It
    would hold 99.99% of the FedAvg weight and of the merged statistics; with max-site-share
    0.5 it holds half, in both, and says so (event, manifest); its own reply weighs its round
    update by that cap too, which is the weight it applies under SecAgg+. (0.5 is the default
    from three sites on; with two, none unless the study sets one.)"""
    from synthpool.common.stats import TableStats, exact_counts

    honest = site_job.run_stats

    def inflated(site, cfg, mechanism):
        stats = honest(site, cfg, mechanism)
        if site.name != "c":
            return stats
        # Exact counts times 10,000, then noise of the charged scale: what honest rows of a
        # table that big would give.
        rows = site.load_rows()
        std = mechanism.noise_multiplier * np.sqrt(len(stats.histograms))
        rng = np.random.default_rng(7)
        return TableStats(stats.schema_fingerprint,
                          {n: list(exact_counts(site.schema, n, rows[n]) * 1e4
                                   + rng.normal(0, std, len(stats.counts(n))))
                           for n in stats.histograms}, stats.mechanisms)

    monkeypatch.setattr(site_job, "run_stats", inflated)
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1])
               for i, n in [(1, "a"), (2, "b"), (3, "c")]}
    run = make_run(tmp_path, num_rounds=1)
    run_study(FakeGrid(configs), run)
    store = CheckpointStore(run.checkpoint_dir)
    start, _ = store.load_start()
    sites = start["sites"]
    assert sites["c"]["rows"] > 1e6  # not refused: nothing in its statistics disagrees
    weights = {name: v["weight"] for name, v in sites.items()}
    assert weights["a"] == sites["a"]["rows"] and weights["b"] == sites["b"]["rows"]
    assert weights["c"] == pytest.approx(weights["a"] + weights["b"])  # half of the total
    capped = [e for e in store.events.read() if e["event"] == "site_weight_capped"]
    assert [(e["site"], e["max_site_share"]) for e in capped] == [("c", 0.5)]
    # The merged statistics: c's share of the rows is a half, not 99.99%.
    merged_rows = TableStats.from_dict(json.loads(start["stats_json"])).noisy_rows()
    assert merged_rows == pytest.approx(2 * (weights["a"] + weights["b"]), rel=0.01)
    # FedAvg used the capped weight, and c's own reply carried it.
    used = {r["site"]: r["num_examples"] for r in store.load(1).meta["results"]}
    assert used["c"] == pytest.approx(weights["c"])
    replies = [json.loads(ln) for ln in (store.dir / "transcript.jsonl").read_text().splitlines()]
    c_round = next(r for r in replies if r.get("round") == 1 and r.get("site") == "c")
    assert c_round["metrics"]["metrics"]["num-examples"] == pytest.approx(weights["c"])
    manifest = release.read_manifest(run.release_path)
    assert manifest["statistics"]["sites"]["c"]["weight"] == pytest.approx(weights["c"])
    assert manifest["training"]["max_site_share"] == 0.5


def test_weight_cap_lowers_only_the_largest_sites_to_the_share():
    cap = strategy.weight_cap
    assert cap({"a": 100, "b": 100, "c": 100}, 0.5) == float("inf")
    assert cap({"a": 1000, "b": 100}, 0.5) == pytest.approx(100)
    assert cap({"a": 1000, "b": 100, "c": 100}, 0.5) == pytest.approx(200)
    two_big = cap({"a": 1000, "b": 900, "c": 100, "d": 100}, 0.4)
    shares = np.array([min(v, two_big) for v in (1000, 900, 100, 100)])
    assert shares.max() / shares.sum() == pytest.approx(0.4) and shares[0] == shares[1]
    assert cap({"a": 1000, "b": 10}, 1.0) == float("inf")
    assert cap({"a": 1000, "b": 10}, 0.3) == 10  # below 1/n: equal weights
    assert strategy.site_share_limit(3) == 0.5 and strategy.site_share_limit(2) == 1.0


def test_the_dp_row_estimate_uses_every_histogram():
    """Each histogram's total estimates the row count; weighting them by inverse variance is
    tighter than any one (here 4 histograms of 10 cells each: sd half that of one)."""
    from synthpool.common.stats import TableStats

    rng = np.random.default_rng(1)
    cells = {"a": 10, "b": 10, "c": 10, "d": 10}
    draws = [TableStats("fp", {n: list(rng.normal(50, 3.0, k)) for n, k in cells.items()}, [])
             for _ in range(400)]
    pooled = np.std([d.noisy_rows() for d in draws])
    best_single = np.std([np.sum(d.histograms["c"]) for d in draws])
    assert pooled < 0.6 * best_single


def test_histogram_totals_and_sizes_are_cross_checked():
    from synthpool.common.stats import TableStats

    rng = np.random.default_rng(0)
    mech = [GaussianMechanism("preprocessing histograms", 5.0, 1.0, 1)]
    honest = {"x": list(rng.normal(100, 5 * np.sqrt(2), 10)), "y": list(rng.normal(200, 5 * np.sqrt(2), 5))}
    stats = TableStats("fp", honest, mech)
    total = stats.noisy_rows()  # what an honest site reports: all totals, weighted
    assert statistics_stage.size_problem(stats, round(total, 3), "estimated") == ""
    assert statistics_stage.size_problem(stats, total, "declared") == ""
    assert statistics_stage.size_problem(stats, total / 0.85, "declared") == ""  # 15% held out
    assert "disagrees" in statistics_stage.size_problem(stats, 3 * total, "declared")
    assert "disagrees" in statistics_stage.size_problem(stats, total / 2, "declared")
    assert "disagrees" in statistics_stage.size_problem(stats, total * 2, "estimated")
    forged = TableStats("fp", {"x": honest["x"], "y": [c * 1000 for c in honest["y"]]}, mech)
    assert "totals disagree" in statistics_stage.size_problem(forged, round(total, 3), "estimated")


def test_a_stage_failing_on_an_overloaded_host_says_so(tmp_path, adult_slices, monkeypatch):
    """Fault table: at load 24 on 2 cores Flower's tasks expired and the stage failed with no
    hint of the cause. The failure now names the load when it is over twice the cores."""
    configs = {i: write_site(tmp_path, n, adult_slices[i - 1])
               for i, n in [(1, "a"), (2, "b"), (3, "c")]}
    monkeypatch.setattr(transport.os, "getloadavg", lambda: (24.0, 20.0, 12.0))
    monkeypatch.setattr(transport.os, "cpu_count", lambda: 2)
    with pytest.raises(RoundFailed, match=r"only 1 site.*overloaded \(load average 24 on 2 cores"):
        run_study(FakeGrid(configs, down={2, 3}), make_run(tmp_path / "busy", num_rounds=1))
    monkeypatch.setattr(transport.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    with pytest.raises(RoundFailed) as quiet:
        run_study(FakeGrid(configs, down={2, 3}), make_run(tmp_path / "quiet", num_rounds=1))
    assert "overloaded" not in str(quiet.value)


def test_the_supernode_pulls_soon_after_a_message_and_backs_off_when_idle(monkeypatch):
    """Flower's SuperNode waits 3 s after an empty pull and 0.5 s between looks at its task's
    reply; the agent's paces that one module's sleeps (agent/host/supernode.py): every 0.1 s for
    2 s after a message, then doubling to 1 s while idle, 50 ms for in-process waits. If a Flower
    upgrade moves the loop, patching must fail loudly rather than leave the 3 s in place."""
    import time

    from flwr.supernode import start_client_internal

    from synthpool.agent.host import supernode

    try:
        supernode.patch_pull_interval()
        assert start_client_internal.time.time() == pytest.approx(time.time(), abs=1)
        now, slept = [1000.0], []

        def sleep(s):
            slept.append(s)
            now[0] += s

        monkeypatch.setattr(time, "sleep", sleep)
        monkeypatch.setattr(time, "monotonic", lambda: now[0])
        paced = start_client_internal.time
        for _ in range(6):
            paced.sleep(3)          # empty pulls: an idle site
        paced.sleep(0.5)            # a message came: waiting for the task's reply
        for _ in range(24):
            paced.sleep(3)          # the next stage's message is pulled soon after, for 2 s
        assert slept[:7] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.05]
        assert slept[7:] == [0.1] * 20 + [0.1, 0.2, 0.4, 0.8]
        monkeypatch.undo()
        with pytest.raises(RuntimeError, match="no longer uses"):
            supernode.patch_pull_interval()  # already replaced: not the module it expects
    finally:
        start_client_internal.time = time


def test_the_supernode_declares_the_shortest_heartbeat_flower_accepts(monkeypatch):
    """The SuperLink drops a node after twice its declared heartbeat interval; Flower's 30 s made
    a round wait a minute for a killed site (test_federation_secagg: now about 20 s). The interval
    the agent's SuperNode declares is Flower's minimum, and its sender beats well within it."""
    from flwr.common import constant
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    from synthpool.agent.host import supernode

    for module in (heartbeat, fleet_http_connection):
        monkeypatch.setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", module.HEARTBEAT_DEFAULT_INTERVAL)
    supernode.shorten_heartbeat()
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == constant.HEARTBEAT_MIN_INTERVAL
    assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == constant.HEARTBEAT_MIN_INTERVAL
    longest_beat = ((constant.HEARTBEAT_MIN_INTERVAL - constant.HEARTBEAT_CALL_TIMEOUT)
                    * (constant.HEARTBEAT_BASE_MULTIPLIER + constant.HEARTBEAT_RANDOM_RANGE[1]))
    assert longest_beat + constant.HEARTBEAT_CALL_TIMEOUT < (
        constant.HEARTBEAT_PATIENCE * constant.HEARTBEAT_MIN_INTERVAL) / 2


def test_message_parts_are_retried_within_half_a_second_not_after_one_to_ten():
    """A message's objects reach its receiver just after the message: Flower retries a missing
    one after 1 s, doubling to 10 s (7-15 s per round in the demo). Every receiving process of
    ours shortens that to 50 ms doubling to 0.5 s, within the same total time; the pulls
    themselves are Flower's."""
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from synthpool.common import flower_backoff

    saved = {f: dict(f.__kwdefaults__) for f in (inflatable_utils.pull_objects,
                                                 inflatable_utils.pull_and_inflate_object_from_tree)}
    try:
        flower_backoff.shorten()
        tries = []

        def late_object(object_id: str) -> bytes:  # there on the sixth try
            tries.append(time.monotonic())
            if len(tries) < 6:
                raise ObjectUnavailableError(object_id)
            return b"content"

        started = time.monotonic()
        assert inflatable_utils.pull_objects(["x"], late_object) == {"x": b"content"}
        # 0.05 + 0.1 + 0.2 + 0.4 + 0.5 s (+-20%) where Flower's own would wait 1 + 2 + 4 + 8 + 10.
        assert time.monotonic() - started < 2.0 and len(tries) == 6
    finally:
        for f, defaults in saved.items():
            f.__kwdefaults__.clear()
            f.__kwdefaults__.update(defaults)
