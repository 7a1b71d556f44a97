"""Training driven through the admin API, with real processes and TLS everywhere, no mocks.

A TLS + node-auth SuperLink (synthpool/local_federation.py), `synthpool coordinator serve-admin` as
its own process with `--superlink-flwr-home` (so its training runner is the FlowerRunner, not the
stand-in), two sites enrolled the way an operator enrolls them (invite through the API, the site
agent registers its key with the one-time token, the admin approves, which admits the key to the
SuperLink). The study is created through the API with the Adult schema as YAML text; the sites
pinned `bundled:adult` in their site.toml, and the fingerprints must agree for them to train.

Tiny settings (1200 rows per site, a model of 16 hidden units a column, 2 DP-SGD steps a round, no
evaluation): the first test takes about 1.5-2.5 minutes on 2 cores, the stop test under one more.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from synthpool.commands.admin import AdminClient
from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TRAIN
from synthpool.common.schema import Schema
from synthpool.local_federation import LocalFederation, SiteSpec, split_rows
from synthpool.coordinator.admin.flower_processes import (
    LOOPBACK, bin_dir, flower_run_status, free_port, wait_for_port,
)
from synthpool.protos import admin_pb2 as pb
from processes import REAL_FLOWER_PROCESSES

pytestmark = REAL_FLOWER_PROCESSES

ROWS = 1200
SITES = ("s0", "s1")
# The operator's training settings for every run (serve-admin --run-config); the study decides
# the rest (name, schema, epsilon, rounds, rows, population, sites).
SETTINGS = ["local-steps=2", "model.hidden=16", "evaluate=false",
            "node-wait-timeout=60.0", "round-timeout=120.0", "straggler-grace=3.0",
            "poll-interval=0.3"]


class Coordinator:
    """The federation plus its admin API process and an admin client."""

    def __init__(self, fed: LocalFederation, address: str, token: str) -> None:
        self.fed, self.address, self.token = fed, address, token
        self.state_dir = fed.coord_dir / "state"

    def admin(self) -> AdminClient:
        return AdminClient(self.address, self.fed.ca_cert, token=self.token, timeout=60)

    def logs(self) -> str:
        return self.fed.logs()


@pytest.fixture(scope="module")
def coord(tmp_path_factory):
    work = tmp_path_factory.mktemp("admin-training")
    data = split_rows(ADULT_TRAIN, work / "data", len(SITES), rows_per_site=ROWS)
    sites = [SiteSpec(name, path, {"adult": (10.0, 1e-5), "adult-stop": (10.0, 1e-5)},
                      size="declared", declared_rows=ROWS, torch_threads=1)
             for name, path in zip(SITES, data)]
    with LocalFederation(work / "fed", sites, tls=True, node_auth=True) as fed:
        fed.start_coordinator()
        state_dir = fed.coord_dir / "state"
        out = subprocess.run([str(bin_dir() / "synthpool"), "coordinator", "add-token", "tester",
                              "--state-dir", str(state_dir), "--json"],
                             capture_output=True, text=True, timeout=120, check=True)
        token = json.loads(out.stdout)["token"]
        port = free_port()
        argv = [str(bin_dir() / "synthpool"), "coordinator", "serve-admin",
                "--state-dir", str(state_dir), "--listen", f"{LOOPBACK}:{port}",
                "--mtls-listen", "", "--superlink-flwr-home", str(fed.cli_home)]
        for setting in SETTINGS:
            argv += ["--run-config", setting]
        server = fed.procs.spawn("admin", "admin", argv, {**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_for_port(LOOPBACK, port, 120, server)
        c = Coordinator(fed, f"{LOOPBACK}:{port}", token)
        with c.admin() as admin:
            for name in SITES:
                invitation = admin.InviteSite(pb.InviteSiteRequest(name=name)).token
                enrolled = subprocess.run(
                    [str(bin_dir() / "synthpool-agent"), "enroll", "--config",
                     str(fed.site_config(name)), "--token", invitation, "--coordinator",
                     c.address, "--ca", str(fed.ca_cert)],
                    capture_output=True, text=True, timeout=120)
                assert enrolled.returncode == 0, enrolled.stderr
                fingerprint = enrolled.stdout.split("fingerprint: ")[1].split()[0]
                site = admin.ApproveSite(pb.ApproveSiteRequest(
                    name=name, expected_fingerprint=fingerprint))
                assert site.status == pb.SITE_STATUS_APPROVED
                fed.start_site(name)
        yield c


def _create(admin: AdminClient, name: str, rounds: int) -> pb.Study:
    return admin.CreateStudy(pb.CreateStudyRequest(
        name=name, schema_yaml=ADULT_SCHEMA.read_text(), sites=list(SITES),
        privacy=pb.PrivacySettings(epsilon=10.0, delta=1e-5, population=pb.POPULATION_DISJOINT,
                                   rounds=rounds, rows=200)))


@pytest.mark.timeout(540)
def test_a_study_started_through_the_admin_api_trains_on_flower_and_publishes_a_signed_release(
        coord):
    with coord.admin() as admin:
        study = _create(admin, "adult", rounds=1)
        # The YAML text given to the API is the schema the sites pinned as `bundled:adult`.
        assert study.schema_fingerprint == Schema.load(ADULT_SCHEMA).fingerprint()
        run = admin.StartTraining(pb.StartTrainingRequest(study="adult"))
        assert run.status == pb.RUN_STATUS_RUNNING
        events = list(admin.WatchTraining(pb.WatchTrainingRequest(study="adult"), timeout=480))
        kinds = [e.kind for e in events]
        text = "\n".join(f"{e.kind} {e.round} {e.message}" for e in events)
        assert kinds[0] == "started" and kinds[-1] == "finished", f"{text}\n{coord.logs()}"
        started = json.loads(events[0].details_json)
        assert started["flower_run_id"] and started["sites"] == list(SITES)
        assert started["run_config"]["study"] == "adult"
        assert started["run_config"]["target-epsilon"] == 10.0
        # Real progress from the ServerApp's event log: the statistics stage and the round.
        assert any("statistics from s0, s1" in e.message for e in events), text
        rounds = [e for e in events if e.kind == "round"]
        assert [e.round for e in rounds] == [1], text
        progress = json.loads(rounds[0].details_json)
        assert progress["progress"] == 1.0 and sorted(progress["used"]) == list(SITES)
        assert sorted(progress["epsilon_by_site"]) == list(SITES)
        assert 0 < progress["epsilon_spent"] <= 10.0
        assert not [e for e in events if json.loads(e.details_json).get("event", "").startswith(
            "site_")], text  # no site refused (e.g. over the schema fingerprint)
        finished = json.loads(events[-1].details_json)
        name = finished["release"]

        got = admin.GetStudy(pb.GetStudyRequest(name="adult"))
        assert got.status == pb.STUDY_STATUS_FINISHED
        assert got.latest_run.status == pb.RUN_STATUS_FINISHED
        releases = admin.ListReleases(pb.ListReleasesRequest(study="adult")).releases
        assert [r.name for r in releases] == [name]
        verified = admin.VerifyRelease(pb.VerifyReleaseRequest(name=name))
        assert verified.ok, list(verified.problems)
        assert verified.files_checked >= 1
        manifest = json.loads((coord.state_dir / "releases" / name / "manifest.json").read_text())
        assert manifest["study"] == "adult" and manifest["data"]["rows"] == 200
        assert sorted(manifest["privacy"]["per_site"]) == list(SITES)
        assert manifest["privacy"]["population"] == "disjoint"
        # Nothing half-written is left where releases are staged.
        assert not any((coord.state_dir / "releases" / ".staging").iterdir())

        audit = admin.ListAudit(pb.ListAuditRequest(limit=1000)).entries
        starts = [e for e in audit if e.action == "StartTraining"]
        assert [(e.actor, e.outcome, e.detail) for e in starts] == [
            ("token:tester", "OK", f"run {run.id}")]
        assert json.loads(starts[0].arguments_json) == {"study": "adult"}


@pytest.mark.timeout(300)
def test_stop_training_ends_the_flower_run_as_stopped(coord):
    with coord.admin() as admin:
        _create(admin, "adult-stop", rounds=3)
        admin.StartTraining(pb.StartTrainingRequest(study="adult-stop"))
        events, stopped = [], None
        for event in admin.WatchTraining(pb.WatchTrainingRequest(study="adult-stop"),
                                         timeout=280):
            events.append(event)
            details = json.loads(event.details_json)
            # Stop in the middle of the training: once the sites are in round 1.
            if stopped is None and details.get("event") == "round_started":
                stopped = admin.StopTraining(pb.StopTrainingRequest(study="adult-stop"))
        text = "\n".join(f"{e.kind} {e.round} {e.message}" for e in events)
        assert stopped is not None, f"{text}\n{coord.logs()}"
        assert stopped.status == pb.RUN_STATUS_STOPPED, stopped
        assert events[-1].kind == "stopped", text
        assert "Flower run" in events[-1].message and "stopped" in events[-1].message, text
        flower_run = json.loads(events[0].details_json)["flower_run_id"]
        assert flower_run_status(coord.fed.cli_home, flower_run) == "finished:stopped"
        study = admin.GetStudy(pb.GetStudyRequest(name="adult-stop"))
        assert study.status == pb.STUDY_STATUS_STOPPED
        assert not admin.ListReleases(pb.ListReleasesRequest(study="adult-stop")).releases
        actions = [(e.action, e.outcome) for e in
                   admin.ListAudit(pb.ListAuditRequest(limit=1000)).entries]
        assert ("StopTraining", "OK") in actions
