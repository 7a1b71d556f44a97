"""The admin API's Flower runner without a federation: the run config it builds from a study,
the operator settings it refuses, the translation of the ServerApp's event log into progress
events, and (with the real `flwr` CLI) a submission the SuperLink never accepts.
The whole path with a real federation is tests/test_admin_training.py."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from tables import TINY_MODEL
from synthpool.common.bundled import ADULT_SCHEMA
from synthpool.common.schema import Schema
from synthpool.coordinator.admin.supervisor import SiteInfo, TrainingOrder
from synthpool.coordinator.serverapp.checkpoint import CheckpointStore
from synthpool.coordinator.admin.flower_processes import bin_dir, free_port, write_connection
from synthpool.coordinator.admin.flower_runner import (
    RESERVED_KEYS, FlowerRunner, parse_settings, runner_for_coordinator,
)
from synthpool.coordinator.serverapp.run_config import RunConfig
from synthpool.coordinator.admin.training_progress import ProgressTranslator


def _study(run_id: int = 7, *, population: str = "disjoint", sites=("a", "b", "c"),
           schema: str | None = None) -> TrainingOrder:
    text = schema if schema is not None else ADULT_SCHEMA.read_text()
    return TrainingOrder(name="adult", run_id=run_id, schema_yaml=text,
                     schema_fingerprint=Schema.load(ADULT_SCHEMA).fingerprint(), epsilon=3.0,
                     delta=1e-5, population=population, rounds=4, rows=500,
                     sites=tuple(SiteInfo(s, "", "", node_id=100 + i) for i, s in enumerate(sites)))


def _runner(tmp_path, **kw) -> FlowerRunner:
    return FlowerRunner(flwr_home=tmp_path / "cli-home", work_dir=tmp_path / "training",
                        releases_dir=tmp_path / "releases", signing_key=tmp_path / "release.key",
                        **kw)


def test_the_run_config_is_the_study_and_reads_as_a_studyrun(tmp_path):
    runner = _runner(tmp_path, settings={"local-steps": 5, "min-sites": 2, "model": TINY_MODEL})
    config = runner.run_config(_study(population="overlapping"), schema_path=tmp_path / "s.yaml",
                               checkpoint_dir=tmp_path / "ckpt", release_dir=tmp_path / "rel")
    run = RunConfig.from_run_config(config)
    assert (run.study, run.target_epsilon, run.num_rounds, run.release_rows) == \
        ("adult", 3.0, 4, 500)
    assert run.population == "overlapping"  # the sum guarantee
    assert (run.expected_sites, run.min_sites) == (3, 2)
    assert (run.local_steps, run.hyperparameters.hidden) == (5, 16)
    assert run.schema == str(tmp_path / "s.yaml")
    assert run.release_dir == str(tmp_path / "rel")
    # The ServerApp runs whatever the SuperLink accepts: it is never told where the key is.
    assert not any("sign" in key for key in config)
    assert run.node_registry == str(tmp_path / "training" / "nodes.json")
    # Each node is the site its enrollment says, whatever a reply claims.
    assert run.enrolled == {"100": "a", "101": "b", "102": "c"}
    # min-sites defaults to every site of the study and never exceeds them.
    assert _runner(tmp_path).run_config(_study(population="disjoint"), schema_path=tmp_path,
                                        checkpoint_dir=tmp_path, release_dir=tmp_path)[
        "min-sites"] == 3
    assert _runner(tmp_path, settings={"min-sites": 9}).run_config(
        _study(sites=("a",)), schema_path=tmp_path, checkpoint_dir=tmp_path,
        release_dir=tmp_path)["min-sites"] == 1


def test_operator_settings_cannot_override_the_study_and_must_be_app_settings(tmp_path):
    for key in sorted(RESERVED_KEYS):
        with pytest.raises(ValueError, match="set by the study"):
            _runner(tmp_path, settings={key: 1})
    with pytest.raises(ValueError, match="not a setting of the app"):
        _runner(tmp_path, settings={"local-stpes": 3})
    with pytest.raises(ValueError, match="min-sites"):
        _runner(tmp_path, settings={"min-sites": 0})
    assert parse_settings(["local-steps=40", "family=cvae", "evaluate=false",
                           "learning-rate=0.002", 'schema-note="a b"', "model.hidden=32",
                           "model.beta=0.5"]) == {
        "local-steps": 40, "family": "cvae", "evaluate": False, "learning-rate": 0.002,
        "schema-note": "a b", "model": '{"beta":0.5,"hidden":32}'}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_settings(["local-steps"])


def test_the_coordinators_runner_signs_with_its_key_and_releases_where_the_api_lists(tmp_path):
    runner = runner_for_coordinator(tmp_path / "state", tmp_path / "cli-home")
    assert runner.signing_key == tmp_path / "state" / "signing" / "release.key"
    assert runner.releases_dir == tmp_path / "state" / "releases"
    assert runner.work_dir == tmp_path / "state" / "training"


def test_start_refuses_a_schema_other_than_the_studys_and_a_used_run_folder(tmp_path):
    runner = _runner(tmp_path)
    other = ADULT_SCHEMA.read_text().replace("name: adult", "name: adult-renamed", 1)
    assert other != ADULT_SCHEMA.read_text()
    with pytest.raises(ValueError, match="fingerprint"):
        runner.start(_study(run_id=1, schema=other))
    with pytest.raises(FileExistsError, match="run-1"):
        runner.start(_study(run_id=1))
    assert not runner.procs.processes  # nothing was submitted


def _save_round(store: CheckpointStore, rnd: int, eps: dict[str, float]) -> None:
    store.save(rnd, [np.zeros(2)], {"ledgers": {s: {"epsilon": e} for s, e in eps.items()}})


def test_the_event_log_becomes_round_and_message_events(tmp_path):
    store = CheckpointStore(tmp_path / "ckpt")
    log = [
        {"event": "run_started", "training_id": "t1", "resume_after_round": 0},
        {"event": "stats_started", "nodes": [1, 2]},
        {"event": "stats_completed", "sites": ["a", "b"], "rows_estimate": 2001.4},
        {"event": "round_started", "round": 1, "nodes": [1, 2]},
        {"event": "site_refused", "round": 1, "site": "b", "reason": "[1001] over budget"},
        {"event": "round_completed", "round": 1, "used": ["a"], "dropped": ["b"], "seconds": 3},
        {"event": "training_completed", "rounds": 2},
        {"event": "release_written", "rows": 50, "epsilon": 2.5, "path": "/x"},
    ]
    _save_round(store, 1, {"a": 1.5, "b": 0.5})
    disjoint = ProgressTranslator(2, "disjoint", store.dir)
    events = [e for record in log for e in disjoint.translate(record)]
    assert [(e.kind, e.round) for e in events] == [
        ("message", 0), ("message", 0), ("message", 0), ("message", 1), ("message", 1),
        ("round", 1), ("message", 1), ("message", 1)]
    assert events[2].message == "statistics from a, b: about 2001 rows in all (DP)"
    assert events[4].message == "round 1: site b refused: [1001] over budget"
    assert events[4].details["event"] == "site_refused"
    rnd = events[5]
    assert rnd.message == "round 1/2 completed with a; dropped b"
    assert rnd.details["progress"] == 0.5
    assert rnd.details["epsilon_by_site"] == {"a": 1.5, "b": 0.5}
    assert rnd.details["epsilon_spent"] == 1.5            # one site per person: the max
    assert disjoint.release == {"rows": 50, "epsilon": 2.5, "path": "/x"}
    assert disjoint.failure == "" and disjoint.seen == len(log)

    overlapping = ProgressTranslator(2, "overlapping", store.dir)
    assert overlapping.translate(log[5])[0].details["epsilon_spent"] == 2.0   # the sum

    failing = ProgressTranslator(2, "disjoint", tmp_path / "elsewhere")
    assert failing.translate({"event": "round_failed", "round": 0, "reason": "only 1 site"})[
        0].message == "statistics stage failed: only 1 site"
    assert failing.failure == "the statistics stage failed: only 1 site"
    # A round whose checkpoint cannot be read is still reported, without epsilon.
    assert "epsilon_spent" not in failing.translate(log[5])[0].details


@pytest.mark.skipif(sys.platform != "linux" or not (bin_dir() / "flwr").exists(),
                    reason="needs the flwr CLI of this venv and /proc")
@pytest.mark.timeout(120)
def test_a_run_the_superlink_never_accepted_fails_with_flowers_reason(tmp_path):
    home = tmp_path / "cli-home"
    write_connection(home, f"127.0.0.1:{free_port()}")  # nothing listens there
    runner = _runner(tmp_path)
    runner.start(_study(run_id=3))
    try:
        events = list(runner.events("adult"))
    finally:
        runner.close()
    assert [e.kind for e in events] == ["failed"], events
    assert "before the SuperLink accepted the run" in events[0].message
    assert "SuperLink is unavailable" in events[0].message, events[0].message
    assert (tmp_path / "training" / "run-3" / "schema.yaml").read_text() == \
        ADULT_SCHEMA.read_text()
    assert not (tmp_path / "releases").exists() or not any((tmp_path / "releases").iterdir())


def test_serve_admin_refuses_operator_settings_that_belong_to_the_study(tmp_path):
    from typer.testing import CliRunner

    from synthpool.cli import app
    from synthpool.coordinator.admin.pki import init_coordinator

    init_coordinator(tmp_path / "state")
    (tmp_path / "cli-home").mkdir()
    out = CliRunner().invoke(app, [
        "coordinator", "serve-admin", "--state-dir", str(tmp_path / "state"),
        "--listen", "127.0.0.1:0", "--mtls-listen", "",
        "--superlink-flwr-home", str(tmp_path / "cli-home"), "--run-config", "num-rounds=9"])
    assert out.exit_code == 1
    assert "num-rounds: set by the study" in out.output


def test_a_study_with_a_site_whose_key_was_never_registered_is_not_run(tmp_path):
    """Without its node id the coordinator could not tell that site from any node answering
    under its name."""
    study = _study()
    study = dataclasses.replace(study, sites=(*study.sites[:2], SiteInfo("c", "", "")))
    with pytest.raises(ValueError, match=r"sites \['c'\] have no registered SuperNode key"):
        _runner(tmp_path).run_config(study, schema_path=tmp_path, checkpoint_dir=tmp_path,
                                     release_dir=tmp_path)
