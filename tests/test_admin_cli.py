"""The admin CLI (synthpool/commands/admin/) against a real admin server over TLS."""

from __future__ import annotations

import json

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from synthpool.commands.admin import APPS
from synthpool.coordinator.admin.server import AdminServer
from in_memory_runner import InMemoryRunner
from test_admin_api import SCHEMA, _make_release

app = typer.Typer()
for _name, _sub in APPS:
    app.add_typer(_sub, name=_name)


def run(args: list[str], env: dict | None = None, code: int = 0):
    result = CliRunner().invoke(app, args, env=env or {}, catch_exceptions=False)
    assert result.exit_code == code, (args, result.output)
    return result


@pytest.fixture
def coordinator(tmp_path):
    state_dir = tmp_path / "state"
    init = json.loads(run(["coordinator", "init", "--state-dir", str(state_dir),
                           "--host", "coord.test", "--json"]).stdout)
    server = AdminServer(state_dir, listen="127.0.0.1:0", mtls_listen="127.0.0.1:0",
                         runner=InMemoryRunner(round_delay=0.01), max_workers=8).start()
    env = {"SYNTHPOOL_ADMIN_COORDINATOR": server.address, "SYNTHPOOL_ADMIN_CA": init["ca_cert"],
           "SYNTHPOOL_ADMIN_TOKEN": init["admin_token"]}
    yield server, init, env
    server.stop(0)


def test_init_is_rerunnable_and_shows_the_token_once(tmp_path):
    first = json.loads(run(["coordinator", "init", "--state-dir", str(tmp_path / "s"),
                            "--json"]).stdout)
    assert first["admin_token"].startswith("spa_")
    again = json.loads(run(["coordinator", "init", "--state-dir", str(tmp_path / "s"),
                            "--json"]).stdout)
    assert again["admin_token"] is None and again["ca_cert"] == first["ca_cert"]


def test_admin_workflow(coordinator, tmp_path):
    server, init, env = coordinator
    invite = json.loads(run(["sites", "invite", "hosp-a", "--json"], env).stdout)
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pub = tmp_path / "site.pub"
    pub.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH,
                                     serialization.PublicFormat.OpenSSH))
    site_env = {k: v for k, v in env.items() if k != "SYNTHPOOL_ADMIN_TOKEN"}
    registered = json.loads(run(["sites", "register", "--invite-token", invite["token"],
                                 "--public-key", str(pub), "--json"], site_env).stdout)
    assert registered["site"]["status"] == "SITE_STATUS_REGISTERED"
    run(["sites", "approve", "hosp-a", "--fingerprint",
         registered["site"]["public_key_fingerprint"]], env)
    sites = json.loads(run(["sites", "list", "--json"], env).stdout)
    assert [(s["name"], s["status"]) for s in sites] == [("hosp-a", "SITE_STATUS_APPROVED")]
    assert "hosp-a" in run(["sites", "list"], env).stdout

    schema = tmp_path / "toy.yaml"
    schema.write_text(SCHEMA)
    study = json.loads(run(["studies", "create", "--schema", str(schema), "--epsilon", "1.5",
                            "--delta", "1e-6", "--population", "disjoint", "--rounds", "2",
                            "--json"], env).stdout)
    assert study["name"] == "toy" and study["privacy"]["epsilon"] == 1.5
    assert [s["name"] for s in json.loads(run(["studies", "list", "--json"], env).stdout)] == ["toy"]
    run(["studies", "get", "toy", "--schema-out", str(tmp_path / "back.yaml")], env)
    assert (tmp_path / "back.yaml").read_text() == SCHEMA

    run(["train", "start", "toy", "--json"], env)
    lines = run(["train", "watch", "toy", "--json"], env).stdout.splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["started", "round", "round", "finished"]

    release = _make_release(server.state_dir, server.pki.signing_key, "rel-1", study="toy")
    listed = json.loads(run(["releases", "list", "--study", "toy", "--json"], env).stdout)
    assert [r["name"] for r in listed] == ["rel-1"]
    got = json.loads(run(["releases", "download", "rel-1", "--out", str(tmp_path / "dl"),
                          "--public-key", init["signing_public_key"], "--json"], env).stdout)
    assert got["verification"]["ok"]
    assert (tmp_path / "dl" / "rel-1" / "synthetic.csv").read_bytes() == \
        (release / "synthetic.csv").read_bytes()
    run(["releases", "download", "rel-1", "--out", str(tmp_path / "dl")], env, code=1)  # exists
    assert json.loads(run(["releases", "verify", "rel-1", "--json"], env).stdout)["ok"]

    # The same API with the admin certificate on the mTLS port.
    cert_env = {**site_env, "SYNTHPOOL_ADMIN_COORDINATOR": server.mtls_address}
    run(["sites", "revoke", "hosp-a", "--reason", "done", "--cert", init["admin_cert"],
         "--key", init["admin_key"]], cert_env)

    entries = json.loads(run(["audit", "list", "--json"], env).stdout)
    actors = {(e["action"], e["actor"]) for e in entries}
    assert {("InviteSite", "token:admin"), ("RegisterSite", "site:hosp-a"),
            ("RevokeSite", "cert:admin"), ("DownloadRelease", "token:admin")} <= actors
    assert invite["token"] not in json.dumps(entries)


def test_errors_exit_1_with_a_message(coordinator):
    _, _, env = coordinator
    no_token = {k: v for k, v in env.items() if k != "SYNTHPOOL_ADMIN_TOKEN"}
    out = run(["sites", "list", "--json"], no_token, code=1)
    assert json.loads(out.stdout)["error"]["code"] == "CONFIG"
    out = run(["sites", "list", "--json", "--token", "spa_wrong"], no_token, code=1)
    assert json.loads(out.stdout)["error"]["code"] == "UNAUTHENTICATED"
    out = run(["studies", "get", "missing"], env, code=1)
    assert "NOT_FOUND" in out.output


def test_serve_admin_runs_as_a_process_and_stops_on_sigterm(tmp_path):
    """`coordinator serve-admin` in its own process: prints where it listens, serves, and exits
    cleanly on SIGTERM (what systemd and docker send)."""
    import signal
    import subprocess
    import sys

    state_dir = tmp_path / "state"
    init = json.loads(run(["coordinator", "init", "--state-dir", str(state_dir), "--json"]).stdout)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from synthpool.commands.admin import coordinator_app as a; a()",
         "serve-admin", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
         "--mtls-listen", "127.0.0.1:0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or lines[-1].strip() != "}":
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        addresses = json.loads("".join(lines))
        env = {"SYNTHPOOL_ADMIN_COORDINATOR": addresses["address"],
               "SYNTHPOOL_ADMIN_CA": init["ca_cert"], "SYNTHPOOL_ADMIN_TOKEN": init["admin_token"]}
        assert json.loads(run(["sites", "list", "--json"], env).stdout) == []
        out = run(["train", "start", "nothing"], env, code=1)  # no runner configured
        assert "NOT_FOUND" in out.output or "FAILED_PRECONDITION" in out.output
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_admin_tokens_and_certificates_are_revoked_through_the_cli(coordinator, tmp_path):
    server, init, env = coordinator
    state = ["--state-dir", str(server.state_dir)]
    alice = json.loads(run(["coordinator", "add-admin-cert", "alice", *state, "--out",
                            str(tmp_path / "certs"), "--json"]).stdout)
    certs = json.loads(run(["admins", "list-certs", "--json"], env).stdout)
    assert [(c["name"], c["serial"], c.get("revoked_at")) for c in certs] == [
        ("admin", certs[0]["serial"], None), ("alice", alice["serial"], None)]
    as_alice = {k: v for k, v in env.items() if k != "SYNTHPOOL_ADMIN_TOKEN"}
    as_alice.update(SYNTHPOOL_ADMIN_COORDINATOR=server.mtls_address,
                    SYNTHPOOL_ADMIN_CERT=alice["cert"], SYNTHPOOL_ADMIN_KEY=alice["key"])
    run(["sites", "list"], as_alice)

    revoked = json.loads(run(["admins", "revoke-cert", "--pem", alice["cert"], "--reason",
                              "left the team", "--json"], env).stdout)
    assert (revoked["name"], revoked["fingerprint"]) == ("alice", alice["fingerprint"])
    out = run(["sites", "list", "--json"], as_alice, code=1)
    assert json.loads(out.stdout)["error"] == {
        "code": "UNAUTHENTICATED",
        "message": f"admin certificate 'alice' (serial {alice['serial']}) is revoked; client "
                   f"certificates are accepted on port {server.mtls_port}"}
    assert "already revoked" in run(["admins", "revoke-cert", "--serial", alice["serial"]], env,
                                    code=1).output
    assert "CONFIG" in run(["admins", "revoke-cert"], env, code=1).output
    assert "expected the certificate's serial number in hex" in run(
        ["admins", "revoke-cert", "--serial", "zz"], env, code=1).output

    ops = json.loads(run(["coordinator", "add-token", "ops", *state, "--json"]).stdout)["token"]
    as_ops = {**env, "SYNTHPOOL_ADMIN_TOKEN": ops}
    run(["sites", "list"], as_ops)
    assert "revoked admin token 'ops'" in run(["admins", "revoke-token", "ops"], env).stdout
    tokens = json.loads(run(["admins", "list-tokens", "--json"], env).stdout)
    assert [(t["name"], "revoked_at" in t) for t in tokens] == [("admin", False), ("ops", True)]
    assert "UNAUTHENTICATED" in run(["sites", "list"], as_ops, code=1).output

    entries = json.loads(run(["audit", "list", "--limit", "1000", "--json"], env).stdout)
    done = [(e["action"], e["actor"].split(":")[0]) for e in entries if e["outcome"] == "OK"]
    for expected in (("AddAdminCertificate", "local"), ("RevokeAdminCertificate", "token"),
                     ("AddAdminToken", "local"), ("RevokeAdminToken", "token")):
        assert expected in done
    issued = next(e for e in entries if e["action"] == "AddAdminCertificate")
    assert alice["fingerprint"] in issued["detail"]


def test_the_admin_token_can_come_from_a_file(coordinator, tmp_path):
    _, init, env = coordinator
    token_file = tmp_path / "token"
    token_file.write_text(init["admin_token"] + "\n")
    no_token = {k: v for k, v in env.items() if k != "SYNTHPOOL_ADMIN_TOKEN"}
    assert json.loads(run(["sites", "list", "--json", "--token-file", str(token_file)],
                          no_token).stdout) == []
    run(["sites", "list"], {**no_token, "SYNTHPOOL_ADMIN_TOKEN_FILE": str(token_file)})
    out = run(["sites", "list", "--json", "--token-file", str(token_file)], env, code=1)
    assert json.loads(out.stdout)["error"]["message"].startswith(
        "give --token or --token-file, not both")
    token_file.write_text("\n")
    out = run(["sites", "list", "--json", "--token-file", str(token_file)], no_token, code=1)
    assert json.loads(out.stdout)["error"] == {
        "code": "CONFIG",
        "message": f"--token-file {token_file}: expected the token alone, found nothing"}


def test_enroll_reads_the_invitation_token_from_the_environment_or_a_file(coordinator,
                                                                          tmp_path):
    from synthpool.agent.cli import app as agent

    server, init, env = coordinator
    for name in ("site-a", "site-b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "site.toml").write_text(
            f'[site]\nname = "{name}"\ndata = "rows.csv"\nstate_dir = "state"\n\n'
            '[superlink]\naddress = "127.0.0.1:9092"\ninsecure = true\n')
    token_a, token_b = (json.loads(run(["sites", "invite", name, "--json"], env).stdout)["token"]
                        for name in ("site-a", "site-b"))
    (tmp_path / "site-b" / "token").write_text(token_b)
    connect = ["--coordinator", server.address, "--ca", init["ca_cert"]]
    for name, extra, agent_env in (
            ("site-a", [], {"SYNTHPOOL_INVITE_TOKEN": token_a}),
            ("site-b", ["--token-file", str(tmp_path / "site-b" / "token")], {})):
        result = CliRunner().invoke(agent, ["enroll", "--config",
                                            str(tmp_path / name / "site.toml"), *connect, *extra],
                                    env=agent_env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert f"registered as {name!r}" in result.output
    statuses = {s["name"]: s["status"] for s in
                json.loads(run(["sites", "list", "--json"], env).stdout)}
    assert statuses == {"site-a": "SITE_STATUS_REGISTERED", "site-b": "SITE_STATUS_REGISTERED"}
