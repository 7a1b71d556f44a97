"""Transport and identity with real processes: every Flower API over TLS with the coordinator's
CA, SuperNode authentication on. Two sites enroll (each makes its key pair at the site with
`synthpool-agent enroll`; the coordinator registers the public key), a third runs with a key
nobody registered: the study trains with the two. Then one is revoked and is shut out of the next
training. Each site runs in its own network namespace, reaching the coordinator over a bridge,
where the machine allows it (root with iproute2); else all run on loopback."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest

from tables import TINY_MODEL
from synthpool.common.bundled import ADULT_TRAIN
from synthpool.local_federation import LocalFederation, SiteSpec, split_rows
from synthpool.coordinator.admin.flower_processes import LOOPBACK, bin_dir
from synthpool.coordinator.serverapp.release import read_manifest
from processes import REAL_FLOWER_PROCESSES

pytestmark = REAL_FLOWER_PROCESSES

ROWS = 1200
RUN = {"study": "adult", "num-rounds": 1, "local-steps": 2, "model": TINY_MODEL,
       "release-rows": 200, "noise-multiplier": 2.0, "stats-noise-multiplier": 12.0,
       "evaluate": False, "min-sites": 2, "expected-sites": 2, "node-wait-timeout": 60.0,
       "round-timeout": 120.0, "straggler-grace": 3.0, "poll-interval": 0.3}


@pytest.mark.timeout(420)
def test_only_enrolled_sites_join_over_tls_and_a_revoked_site_is_shut_out(tmp_path, site_networks):
    """Where this machine allows it, each site runs in its own network namespace and reaches the
    coordinator over a bridge, not the host's loopback (the same test, one federation)."""
    import os

    data = split_rows(ADULT_TRAIN, tmp_path / "data", 3, rows_per_site=ROWS)
    sites = [SiteSpec(f"s{i}", p, {"adult": (10.0, 1e-5)}, size="declared", declared_rows=ROWS,
                      torch_threads=1) for i, p in enumerate(data)]
    host = f"{SUBNET}.1" if site_networks else LOOPBACK
    prefix = {name: ["ip", "netns", "exec", ns] for name, ns in site_networks.items()}
    with LocalFederation(tmp_path / "fed", sites, tls=True, node_auth=True, host=host,
                         site_prefix=prefix or None) as fed:
        fed.start_coordinator()
        # The SuperLink speaks TLS only, with a certificate the coordinator's CA vouches for.
        ctx = ssl.create_default_context(cafile=str(fed.ca_cert))
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection((host, fed.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        ids = {name: fed.enroll(name) for name in ("s0", "s1")}
        assert len(set(ids.values())) == 2
        # s2 made a key pair but nobody registered it.
        subprocess.run([str(bin_dir() / "synthpool-agent"), "enroll", "--config",
                        str(fed.site_config("s2"))], check=True, capture_output=True, timeout=60)
        key = fed.site_state_dir("s2") / "identity" / "supernode.key"
        assert key.stat().st_mode & 0o077 == 0  # the private key is the site's alone
        for name in fed.sites:
            fed.start_site(name)

        first = fed.run(RUN, timeout=240, name="run-enrolled")
        assert first.returncode == 0 and first.of("release_written"), first.output[-3000:]
        manifest = read_manifest(fed.checkpoint_dir / "release")
        assert [sorted(r["sites"]) for r in manifest["participation"]] == [["s0", "s1"]]
        assert sorted(manifest["privacy"]["per_site"]) == ["s0", "s1"]
        log = fed.procs.by_name("site-s2").log_tail(20000)
        assert "305" in log or "authentic" in log.lower(), log[-2000:]
        if site_networks:  # each agent really ran in its own namespace, none in ours
            own = os.stat("/proc/self/ns/net").st_ino
            spaces = {os.stat(f"/proc/{fed.procs.by_name(f'site-{n}').pid}/ns/net").st_ino
                      for n in ("s0", "s1")}  # the two that trained (s2's agent gave up)
            assert own not in spaces and len(spaces) == 2

        fed.revoke("s1")
        fed.checkpoint_dir = fed.coord_dir / "ckpt-after-revoke"
        # Still expecting both sites: the revoked one has 5 s to get in, and must not.
        second = fed.run({**RUN, "min-sites": 1, "node-wait-timeout": 5.0}, timeout=240,
                         name="run-after-revoke")
        assert second.returncode == 0 and second.of("release_written"), second.output[-3000:]
        manifest = read_manifest(fed.checkpoint_dir / "release")
        assert [r["sites"] for r in manifest["participation"]] == [["s0"]]


@pytest.mark.timeout(180)
def test_admin_approval_admits_the_sites_key_to_the_superlink_and_revocation_removes_it(tmp_path):
    """The whole enrollment path with real parts: the admin invites, the site agent makes its key
    and registers it with the one-time token (TLS to the admin API), the admin approves (the key
    is registered with a TLS + node-auth SuperLink), then revokes (unregistered)."""
    import json

    from synthpool.commands.admin import AdminClient
    from synthpool.coordinator.admin.server import AdminServer
    from synthpool.local_federation import write_site_config
    from synthpool.coordinator.admin.flower_processes import (
        ProcessGroup, SuperLinkAccess, TLSFiles, flower_env, free_port, write_connection,
    )
    from synthpool.coordinator.admin.pki import init_coordinator
    from synthpool.protos import admin_pb2 as pb

    pki = init_coordinator(tmp_path / "coord", [LOOPBACK])
    cli_home = tmp_path / "cli-home"
    with ProcessGroup(tmp_path / "procs") as procs:
        link = procs.start_superlink(tls=TLSFiles(pki.ca_cert, pki.server_cert, pki.server_key),
                                     node_auth=True)
        write_connection(cli_home, link.meta["address"], insecure=False,
                         root_certificates=pki.ca_cert)
        server = AdminServer(pki.state_dir, listen=f"{LOOPBACK}:0", mtls_listen=None,
                             fleet=SuperLinkAccess(cli_home)).start()
        try:
            token = server.state.add_admin_token("tester")
            with AdminClient(server.address, pki.ca_cert, token=token, timeout=30) as admin:
                invite = admin.InviteSite(pb.InviteSiteRequest(name="hosp-a")).token
                site_toml = write_site_config(
                    tmp_path / "site" / "site.toml",
                    SiteSpec("hosp-a", tmp_path / "none.csv", {"adult": (3.0, 1e-5)}),
                    tmp_path / "site" / "state", link.meta["address"], free_port(),
                    root_certificates=pki.ca_cert, authenticate=True)
                out = subprocess.run([str(bin_dir() / "synthpool-agent"), "enroll", "--config",
                                      str(site_toml), "--token", invite, "--coordinator",
                                      server.address, "--ca", str(pki.ca_cert)],
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stderr
                fingerprint = out.stdout.split("fingerprint: ")[1].split()[0]
                site = admin.ApproveSite(pb.ApproveSiteRequest(
                    name="hosp-a", expected_fingerprint=fingerprint))
                assert site.status == pb.SITE_STATUS_APPROVED
                node_id = int(server.state.get_site("hosp-a").flower_node_id)

                def listed() -> dict:
                    r = subprocess.run([str(bin_dir() / "flwr"), "supernode", "list", "synthpool",
                                        "--format", "json"], env=flower_env(cli_home),
                                       capture_output=True, text=True, timeout=60)
                    return {int(n["node-id"]): n for n in json.loads(r.stdout)["nodes"]}

                assert node_id in listed()
                admin.RevokeSite(pb.RevokeSiteRequest(name="hosp-a", reason="test"))
                assert server.state.get_site("hosp-a").flower_node_id is None
                gone = listed().get(node_id)
                assert gone is None or gone["deleted-at"] != "N/A", gone
                actions = [e.action for e in server.state.audit_entries()]
                assert {"InviteSite", "RegisterSite", "ApproveSite", "RevokeSite"} <= set(actions)
        finally:
            server.stop(0)


# -- sites in their own network namespaces --------------------------------------------------------

BRIDGE, SUBNET = "spbr0", "10.77.0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_available() -> str:
    """'' when this machine lets us create namespaces and links, else why not."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = "sp-probe"
    out = _ip("netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"cannot create a network namespace here: {out.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


@pytest.fixture(scope="module")
def site_networks():
    """A bridge at 10.77.0.1 (the coordinator's address) and one namespace per site, each with
    its own address on the bridge and nothing else: the sites reach the coordinator over a
    network, not over the host's loopback."""
    if _netns_available():  # the test runs on loopback instead
        yield {}
        return
    names = [f"sp-s{i}" for i in range(3)]
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for i, ns in enumerate(names):
            _ip("netns", "add", ns)
            _ip("link", "add", f"sph{i}", "type", "veth", "peer", "name", f"spn{i}")
            _ip("link", "set", f"sph{i}", "master", BRIDGE)
            _ip("link", "set", f"sph{i}", "up")
            _ip("link", "set", f"spn{i}", "netns", ns)
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{10 + i}/24", "dev", f"spn{i}")
            _ip("-n", ns, "link", "set", f"spn{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield {f"s{i}": ns for i, ns in enumerate(names)}
    finally:
        for i, ns in enumerate(names):
            _ip("link", "del", f"sph{i}", check=False)
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", BRIDGE, check=False)
