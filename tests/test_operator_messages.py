"""What an operator reads: the messages and checks that deploy/OPERATOR.md promises.

* `coordinator init` prints the exact `export SYNTHPOOL_ADMIN_...=` lines; a command without them
  says where they come from;
* `sites approve` needs `--fingerprint` and compares it on every approval, also of a site
  approved before;
* `train watch` shows each site's epsilon and a SecAgg+ stage line only when the stage changes;
  `releases list` and `releases verify` say what they count;
* admin tokens can be listed and revoked, and a revoked one is refused at once;
* the agent without a key says which enroll command to run; enroll ends by saying to (re)start
  the agent; a SuperNode refused by the coordinator ("Exit Code: 305") or stopped on its own
  (a key revoked while connected) gets one synthpool sentence with the key's fingerprint;
  a second agent on a state dir already held is refused with that dir and the holder's pid;
* `coordinator doctor` / `synthpool-agent doctor`: certificate names and expiry (warning under
  30 days), ports, keys, tokens, budgets.

All in-process or with tiny stand-in processes: a few seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthpool.agent.host import daemon

from synthpool.agent import identity
from synthpool.agent.cli import app as agent_app
from synthpool.agent.config import load_site_config
from synthpool.agent.ledger import Ledger
from synthpool.commands.admin import RELEASE_FILES_NOTE, WatchLines
from synthpool.doctor import cert_findings, coordinator_checks, expiry_warning, report, \
    site_checks
from synthpool.protos import admin_pb2 as pb
from test_admin_api import _make_release
from test_admin_cli import app, coordinator, run  # noqa: F401 - the fixture

SITE_TOML = """
[site]
name = "hosp-a"
data = "rows.csv"
state_dir = "state"
schema = "bundled:adult"

[superlink]
address = "coord.test:9092"
insecure = false
root_certificates = "ca.pem"

[supernode]
port = {port}
authenticate = true

[budgets.adult]
epsilon = {epsilon}
delta = 1e-5
"""


def _site(tmp_path: Path, ca: Path | None = None, epsilon: float = 3.0, port: int = 19094):
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "rows.csv").write_text("39, State-gov\n")
    (folder / "ca.pem").write_bytes(ca.read_bytes() if ca else b"")
    (folder / "site.toml").write_text(SITE_TOML.format(port=port, epsilon=epsilon))
    return folder / "site.toml"


def _agent(args: list[str], code: int = 0):
    result = CliRunner().invoke(agent_app, args, catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    return result


# -- the admin CLI ---------------------------------------------------------------------------------

def test_init_prints_the_export_lines_and_a_missing_ca_says_where_they_are(tmp_path):
    out = run(["coordinator", "init", "--state-dir", str(tmp_path / "s")]).stdout
    token = out.split("store it safely): ")[1].split()[0]
    assert f"export SYNTHPOOL_ADMIN_TOKEN={token}\n" in out
    assert f"export SYNTHPOOL_ADMIN_CA={tmp_path / 's' / 'pki' / 'ca.pem'}\n" in out
    assert "export SYNTHPOOL_ADMIN_COORDINATOR=127.0.0.1:50051\n" in out
    assert "SYNTHPOOL_ADMIN_CERT=" in out and "SYNTHPOOL_ADMIN_KEY=" in out
    again = run(["coordinator", "init", "--state-dir", str(tmp_path / "s")]).stdout
    assert "already exists" in again and "export SYNTHPOOL_ADMIN_CA=" in again
    assert "export SYNTHPOOL_ADMIN_TOKEN=..." in again and token not in again
    data = json.loads(run(["coordinator", "init", "--state-dir", str(tmp_path / "t"),
                           "--json"]).stdout)
    assert data["environment"]["SYNTHPOOL_ADMIN_TOKEN"] == data["admin_token"]

    missing = run(["sites", "list"], {}, code=1).output
    assert "SYNTHPOOL_ADMIN_CA" in missing and "coordinator init" in missing
    assert "OPERATOR.md" in missing


def _register(server, env, tmp_path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    invite = json.loads(run(["sites", "invite", "hosp-a", "--json"], env).stdout)
    pub = tmp_path / "site.pub"
    pub.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    site_env = {k: v for k, v in env.items() if k != "SYNTHPOOL_ADMIN_TOKEN"}
    reg = json.loads(run(["sites", "register", "--invite-token", invite["token"],
                          "--public-key", str(pub), "--json"], site_env).stdout)
    return reg["site"]["public_key_fingerprint"]


def test_approve_needs_the_fingerprint_and_checks_it_every_time(coordinator, tmp_path):
    server, _init, env = coordinator
    fingerprint = _register(server, env, tmp_path)
    assert "--fingerprint" in run(["sites", "approve", "hosp-a"], env, code=2).output
    wrong = run(["sites", "approve", "hosp-a", "--fingerprint", "SHA256:wrong"], env, code=1)
    assert "do not approve" in wrong.output
    assert "approved hosp-a" in run(["sites", "approve", "hosp-a", "--fingerprint",
                                     fingerprint], env).stdout
    # Re-approving an approved site with another fingerprint is an error, not "approved".
    again = run(["sites", "approve", "hosp-a", "--fingerprint", "SHA256:other"], env, code=1)
    assert "approved hosp-a" not in again.stdout
    assert f"key {fingerprint}, not SHA256:other" in again.output
    assert "sites revoke hosp-a" in again.output
    assert "approved hosp-a" in run(["sites", "approve", "hosp-a", "--fingerprint",
                                     fingerprint], env).stdout


def test_tokens_are_listed_and_a_revoked_one_is_refused(coordinator):
    server, _init, env = coordinator
    state_dir = str(server.state_dir)
    made = run(["coordinator", "add-token", "ops", "--state-dir", state_dir]).stdout
    token = made.split()[0]
    assert f"export SYNTHPOOL_ADMIN_TOKEN={token}" in made
    ops = {**env, "SYNTHPOOL_ADMIN_TOKEN": token}
    run(["sites", "list"], ops)
    listed = json.loads(run(["coordinator", "list-tokens", "--state-dir", state_dir,
                             "--json"]).stdout)
    assert [(t["name"], t["revoked_at"]) for t in listed] == [("admin", None), ("ops", None)]
    assert "revoked admin token 'ops'" in run(["coordinator", "revoke-token", "ops",
                                               "--state-dir", state_dir]).stdout
    assert "UNAUTHENTICATED" in run(["sites", "list"], ops, code=1).output
    table = run(["coordinator", "list-tokens", "--state-dir", state_dir]).stdout
    assert "ops" in table and "revoked" in table
    assert "already revoked" in run(["coordinator", "revoke-token", "ops", "--state-dir",
                                     state_dir], code=1).output
    assert "NOT_FOUND" in run(["coordinator", "revoke-token", "nobody", "--state-dir",
                               state_dir], code=1).output
    entries = json.loads(run(["audit", "list", "--json"], env).stdout)
    assert "RevokeAdminToken" in {e["action"] for e in entries}


def test_releases_list_and_verify_say_what_they_count(coordinator):
    server, _init, env = coordinator
    release = _make_release(server.state_dir, server.pki.signing_key, "rel-1", study="toy")
    total = sum(1 for p in release.rglob("*") if p.is_file())
    listed = run(["releases", "list"], env).stdout
    assert f" {total} " in listed and RELEASE_FILES_NOTE in listed.replace("\n", " ")
    verified = run(["releases", "verify", "rel-1"], env).stdout
    assert f"the {total - 2} files the signed manifest lists" in verified
    assert f"`releases list` shows {total}" in verified


def _event(kind: str, rnd: int, message: str, details: dict) -> pb.TrainingEvent:
    return pb.TrainingEvent(kind=kind, round=rnd, message=message,
                            details_json=json.dumps(details))


def test_train_watch_shows_epsilon_per_site_and_each_stage_once():
    lines = WatchLines()
    stage = {"event": "secagg_stage", "stage": "setup", "nodes": [1, 2]}
    out = [lines.line(e) for e in [
        _event("message", 1, "round 1 started with 2 site(s)", {"event": "round_started"}),
        _event("message", 1, "secagg stage", stage),
        _event("message", 1, "secagg stage", stage),                      # a repeat: no line
        _event("message", 1, "secagg stage", {**stage, "stage": "share_keys"}),
        _event("round", 1, "round 1/2 completed with a, b",
               {"epsilon_by_site": {"b": 0.5, "a": 1.25}, "epsilon_spent": 1.25}),
        _event("message", 2, "secagg stage", stage),                      # a new round: a line
        _event("round", 2, "round 2/2 completed with a", {"used": ["a"]}),
    ]]
    assert out[2] is None
    shown = [line for line in out if line is not None]
    assert len(shown) == 6
    assert shown[1].endswith("SecAgg+ stage setup with 2 site(s)")
    assert shown[2].endswith("SecAgg+ stage share_keys with 2 site(s)")
    assert shown[3].endswith("round 1/2 completed with a, b; epsilon spent: a 1.250, b 0.500 "
                             "(release 1.250)")
    assert "round 1" in shown[3] and "SecAgg+ stage setup" in shown[4]
    assert shown[5].endswith("round 2/2 completed with a")   # no epsilon reported: none shown


def test_train_watch_says_what_to_do_after_budget_refusals():
    lines = WatchLines()
    spent = "[1001] site a refuses: the statistics stage of study 'adult' would spend epsilon " \
            "3.012 > cap 3 at delta 1e-05; spent so far 2.994"
    missing = "[1001] site b refuses: no privacy budget configured for study 'adult' at this " \
              "site; refusing the statistics stage"
    for site, reason in (("a", spent), ("b", missing)):
        lines.line(_event("message", 0, f"site {site} refused: {reason}",
                          {"event": "site_refused", "site": site, "reason": reason}))
    spent_hint, missing_hint = lines.hints("adult")
    assert "spent at a" in spent_hint and "synthpool studies create NEWNAME" in spent_hint
    assert "[budgets.NEWNAME]" in spent_hint
    assert missing_hint.startswith("no [budgets.adult] table at b")
    assert WatchLines().hints("adult") == []


# -- the agent -------------------------------------------------------------------------------------

def test_agent_without_a_key_says_which_enroll_to_run(tmp_path):
    config = _site(tmp_path)
    out = _agent(["run", "--config", str(config)], code=2).output
    assert "no key yet" in out
    expected = (f"synthpool-agent enroll --config {config} --token TOKEN --coordinator "
                f"coord.test:50051 --ca {config.parent / 'ca.pem'}")
    assert expected in out.replace("\n", " ")
    assert "systemctl restart synthpool-agent" in out and "sites invite hosp-a" in out


def test_enroll_ends_by_saying_to_restart_the_agent(coordinator, tmp_path):
    server, init, env = coordinator
    config = _site(tmp_path, Path(init["ca_cert"]))
    token = json.loads(run(["sites", "invite", "hosp-a", "--json"], env).stdout)["token"]
    out = _agent(["enroll", "--config", str(config), "--token", token, "--coordinator",
                  server.address, "--ca", init["ca_cert"]]).stdout
    lines = out.strip().splitlines()
    assert lines[1].startswith("public key: ") and lines[2].startswith("fingerprint: SHA256:")
    assert "approve fingerprint SHA256:" in out
    assert "(re)start the agent" in lines[-1] and "systemctl restart synthpool-agent" in lines[-1]
    assert f"synthpool-agent run --config {config}" in lines[-1]
    assert "--coordinator HOST:PORT" in _agent(["enroll", "--config", str(config), "--token",
                                                "x"], code=2).output


def _fake(tmp_path: Path, name: str, code: str) -> list[str]:
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    return [sys.executable, str(script)]


FLOWER_305 = '''
import sys
sys.stderr.write("INFO :      Starting Flower SuperNode\\n")
sys.stderr.write("ERROR :     Exit Code: 305\\nFailed to initialize the connection to the SuperLink.\\n"
                 "[code: 1300] Failed to activate SuperNode.\\n"
                 "The SuperNode could not establish a connection to the SuperLink.\\n\\n"
                 "For more information, visit: <https://flower.ai/docs/framework/1.42/en/ref-exit-codes/305.html>\\n")
sys.exit(1)
'''
STOPS_BY_ITSELF = '''
import sys
print("INFO :      SuperNode terminated gracefully.", file=sys.stderr)
'''
EXECUTOR = "import time\ntime.sleep(30)\n"


@pytest.fixture
def enrolled_site(tmp_path, monkeypatch):
    config = _site(tmp_path)
    cfg = load_site_config(config)
    Ledger(cfg.state_dir).close()    # as enroll does: the ledger first, then the key
    public = identity.ensure_node_key(cfg.state_dir)
    monkeypatch.setattr(daemon, "executor_argv", lambda cfg: _fake(tmp_path, "exec", EXECUTOR))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield cfg, public
    for sig, handler in handlers.items():  # daemon.run forwards these to its children
        signal.signal(sig, handler)


def test_a_refused_key_gets_one_synthpool_sentence_with_its_fingerprint(
        enrolled_site, tmp_path, monkeypatch, capsys):
    from synthpool.common.signing import ssh_key_fingerprint

    cfg, public = enrolled_site
    monkeypatch.setattr(daemon, "supernode_argv", lambda cfg: _fake(tmp_path, "node", FLOWER_305))
    assert daemon.run(cfg) == 1
    err = capsys.readouterr().err
    assert "Exit Code: 305" in err                          # Flower's own lines still pass
    sentence = [ln for ln in err.splitlines() if ln.startswith("[synthpool-agent]")][-1]
    assert "did not accept this site's key" in sentence
    assert "not approved yet, or it was revoked" in sentence
    assert f"fingerprint {ssh_key_fingerprint(public)}" in sentence
    assert "coordinator's administrator" in sentence


def test_a_supernode_that_stops_by_itself_is_reported_and_restarted(
        enrolled_site, tmp_path, monkeypatch, capsys):
    cfg, _public = enrolled_site
    monkeypatch.setattr(daemon, "supernode_argv",
                        lambda cfg: _fake(tmp_path, "node", STOPS_BY_ITSELF))
    assert daemon.run(cfg) == 1                            # so that systemd restarts it
    err = capsys.readouterr().err
    assert "stopped on its own" in err and "revoked" in err and "fingerprint SHA256:" in err


def test_a_network_failure_is_not_called_a_refused_key(enrolled_site, tmp_path, monkeypatch,
                                                         capsys):
    cfg, _public = enrolled_site
    monkeypatch.setattr(daemon, "supernode_argv", lambda cfg: _fake(tmp_path, "node", '''
import sys
sys.stderr.write("ERROR :     Exit Code: 305\\nFailed to initialize the connection to the SuperLink.\\n"
                 "[Errno 111] Connection refused\\n")
sys.exit(1)
'''))
    assert daemon.run(cfg) == 1
    err = capsys.readouterr().err
    assert "did not accept" not in err
    assert "could not connect to the coordinator at coord.test:9092" in err


AGENT_WITH_STAND_INS = """
import sys
from synthpool.agent.host import daemon
from synthpool.agent.config import load_site_config
sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
daemon.supernode_argv = daemon.executor_argv = lambda cfg: sleeper
sys.exit(daemon.run(load_site_config(sys.argv[1])))
"""


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path):
    import os
    import subprocess

    state = tmp_path / "state"
    configs = []
    for name, port in (("one", 19101), ("two", 19102)):   # another port, the same state dir
        folder = tmp_path / name
        folder.mkdir()
        (folder / "rows.csv").write_text("39, State-gov\n")
        (folder / "site.toml").write_text(
            f'[site]\nname = "hosp-a"\ndata = "rows.csv"\nstate_dir = "{state}"\n'
            f'[superlink]\naddress = "127.0.0.1:1"\ninsecure = true\n'
            f'[supernode]\nport = {port}\n[budgets.adult]\nepsilon = 3.0\ndelta = 1e-5\n')
        configs.append(folder / "site.toml")
    first = subprocess.Popen([sys.executable, "-c", AGENT_WITH_STAND_INS, str(configs[0])],
                             stdout=subprocess.PIPE, text=True)
    try:
        started = first.stdout.readline()
        assert "SuperNode pid" in started, started
        agent = Path(sys.executable).parent / "synthpool-agent"
        second = subprocess.run([str(agent), "run", "--config", str(configs[1])],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (
            f"site hosp-a: another synthpool agent (pid {first.pid}) is running on the state "
            f"dir {state}, so this one does not start: stop that one first (systemd: "
            "`systemctl stop synthpool-agent`), or give this site.toml a state_dir of its own")
    finally:
        first.kill()   # SIGKILL: the kernel drops the lock with the process
        first.wait()
    with daemon.hold_state_dir(state):
        assert (state / daemon.LOCK_FILE).read_text() == f"{os.getpid()}\n"


# -- doctor ----------------------------------------------------------------------------------------

def _cert(tmp_path: Path, days: float) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("coord.test")]), False)
            .sign(key, hashes.SHA256()))
    path = tmp_path / f"cert{days}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificates_warn_under_30_days_and_fail_when_expired(tmp_path):
    soon, gone, fine = _cert(tmp_path, 10.5), _cert(tmp_path, -1), _cert(tmp_path, 400)
    levels = lambda fs: [f.level for f in fs]  # noqa: E731
    assert levels(cert_findings(soon, "c", "renew it")) == ["warn", "ok"]
    assert "expires in 10 day(s)" in cert_findings(soon, "c", "renew it")[0].message
    assert levels(cert_findings(gone, "c", "renew it"))[0] == "fail"
    assert levels(cert_findings(fine, "c", "x", names=["coord.test"])) == ["ok", "ok"]
    wrong = cert_findings(fine, "c", "x", names=["other.test"])
    assert wrong[1].level == "fail" and "does not name other.test" in wrong[1].message
    assert "WARNING" in expiry_warning(soon, "the server certificate", "renew it")
    assert expiry_warning(fine, "the server certificate", "renew it") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_coordinator_doctor(coordinator, capsys):
    server, _init, env = coordinator
    findings = coordinator_checks(server.state_dir, hosts=["coord.test"], listen=server.address,
                                  mtls_listen="", online=False)
    by = {f.check: f for f in findings}
    assert not [f for f in findings if f.level == "fail"], findings
    assert by["admin API (TLS)"].level == "ok"               # the fixture's server listens
    assert by["server.pem names"].level == "ok" and "coord.test" in by["server.pem names"].message
    assert by["release key"].level == "ok" and by["admin tokens"].message == "active: admin"
    bad = coordinator_checks(server.state_dir, hosts=["elsewhere.test"],
                             listen=f"127.0.0.1:{_free_port()}", mtls_listen="", online=False)
    assert {f.check for f in bad if f.level == "fail"} == {"server.pem names"}
    assert report("t", bad) == 1 and "1 failed" in capsys.readouterr().out
    # A trained study: its budget is spent.
    from synthpool.coordinator.admin import state as st

    state = server.state
    state.create_study(name="done", schema_yaml="x", schema_fingerprint="f", epsilon=1,
                       delta=1e-5, population="disjoint", rounds=1, rows=10, sites_=[], by="t")
    run_ = state.start_run("done", "t")
    state.end_run(run_.id, st.RUN_FINISHED)
    again = {f.check: f for f in coordinator_checks(server.state_dir, online=False)}
    assert "a new study" in again["study done"].message
    missing = coordinator_checks(server.state_dir / "nowhere", online=False)
    assert missing[0].level == "fail" and "coordinator init" in missing[0].message


def test_site_doctor(tmp_path, capsys):
    from synthpool.common.privacy import GaussianMechanism
    from synthpool.coordinator.admin.pki import init_coordinator

    pki = init_coordinator(tmp_path / "coord", ["coord.test"])
    config = _site(tmp_path, pki.ca_cert, port=_free_port())
    first = {f.check: f for f in site_checks(config, online=False)}
    assert first["key"].level == "fail" and "synthpool-agent enroll --config" in first["key"].message
    assert first["data"].level == "ok" and first["CA (root_certificates)"].level == "ok"
    assert first["budget adult"].level == "ok" and "left 3.000" in first["budget adult"].message
    assert first["SuperNode port"].level == "info"

    cfg = load_site_config(config)
    with Ledger(cfg.state_dir) as led:                  # what a training spent
        identity.ensure_node_key(cfg.state_dir)         # made after the ledger, as enroll does
        led.set_cap("adult", 100.0, 1e-5)
        spent = led.charge("adult", "job-1", [GaussianMechanism("m", 1.0, 0.1, 200)]).epsilon
    config.write_text(config.read_text().replace("epsilon = 3.0", f"epsilon = {spent:.6f}"))
    after = {f.check: f for f in site_checks(config, online=False)}
    assert after["key"].level == "ok" and "fingerprint SHA256:" in after["key"].message
    assert after["budget adult"].level == "warn" and "new study" in after["budget adult"].message
    short = {f.check: f for f in site_checks(config, online=False, study="adult",
                                             epsilon=spent * 2)}
    assert short["budget adult"].level == "warn"
    none = {f.check: f for f in site_checks(config, online=False, study="other")}
    assert none["budget other"].level == "fail"

    # Online: nothing listens at coord.test:9092 (no such host) -> a failure that says so.
    online = {f.check: f for f in site_checks(config)}
    assert online["coordinator"].level == "fail"
    out = _agent(["doctor", "--config", str(config), "--offline", "--json"], code=0).stdout
    assert json.loads(out)["failed"] == 0

    config.write_text(config.read_text() + f"[site_budget]\nepsilon = {spent * 4:.6f}\n"
                                           "delta = 1e-5\n")
    site_wide = {f.check: f for f in site_checks(config, online=False)}["budget (site-wide)"]
    assert site_wide.level == "ok" and f"spent {spent:.3f}" in site_wide.message
    (cfg.state_dir / "ledger.sqlite").unlink()          # lost: the doctor says what the agent says
    lost = {f.check: f for f in site_checks(config, online=False)}["ledger"]
    assert lost.level == "fail" and "ledger.sqlite is missing, but this state dir" in lost.message
    assert not (cfg.state_dir / "ledger.sqlite").exists()
