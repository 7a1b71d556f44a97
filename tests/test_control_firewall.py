"""Finding 2: a local user on the coordinator host must not reach Flower's unauthenticated
Control API. deploy/scripts/control-firewall.sh renders nftables rules that reset every
connection to the SuperLink's port unless the socket belongs to an allowed account; here the
rules are loaded into a fresh network namespace (the host's are untouched), a real SuperLink runs
behind them, and three accounts dial it: the SuperLink's own (root here) runs `flwr ls`, an
allowed uid (serve-admin's) gets an HTTP answer, and any other uid is refused before a byte
reaches Flower."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "scripts" / "control-firewall.sh"
ADMIN_UID, OTHER_UID = 4242, 5555
CLIENT_PYTHON = "/usr/bin/python3"  # stdlib only: readable by any uid, unlike a venv in /root


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, other uids)"
    for tool in ("ip", "nft", "setpriv"):
        if shutil.which(tool) is None:
            return f"no `{tool}` here"
    if not os.access(CLIENT_PYTHON, os.X_OK):
        return f"no {CLIENT_PYTHON} for the other accounts' clients"
    return ""


# Runs inside the namespace: the rules, a SuperLink, then the three callers. Prints JSON.
DRIVER = textwrap.dedent("""
    import json, subprocess, sys, time
    from synthpool.coordinator.admin.flower_processes import (
        ProcessGroup, bin_dir, flower_env, free_port, write_connection)
    from pathlib import Path

    work, rules_cmd = Path(sys.argv[1]), sys.argv[2:]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = free_port()
    rules = subprocess.run([*rules_cmd, "--port", str(port)], check=True,
                           capture_output=True, text=True).stdout
    subprocess.run(["nft", "-f", "-"], input=rules, check=True, text=True)
    client = '''
    import http.client, sys
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
        c.request("POST", "/v1/control/list-runs", body=b"", headers={"Content-Length": "0"})
        print("answered", c.getresponse().status)
    except OSError as e:
        print("refused", type(e).__name__)
    '''
    out = {}
    with ProcessGroup(work) as procs:
        procs.start_superlink(port=port)
        home = work / "cli-home"
        write_connection(home, f"127.0.0.1:{port}")
        ls = subprocess.run([str(bin_dir() / "flwr"), "ls", "--format", "json"],
                            env=flower_env(home), capture_output=True, text=True, timeout=60)
        out["own account: flwr ls"] = ls.stdout.strip()[-300:] or ls.stderr.strip()[-300:]
        for who, uid in (("admin", %(admin)d), ("other", %(other)d)):
            r = subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid),
                                "--clear-groups", "%(python)s", "-c", client, str(port)],
                               capture_output=True, text=True, timeout=30)
            out[who] = (r.stdout.strip() or r.stderr.strip()[-300:])
    print(json.dumps(out))
""") % {"admin": ADMIN_UID, "other": OTHER_UID, "python": CLIENT_PYTHON}


@pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "runs")
def test_only_allowed_accounts_reach_the_superlink_port(tmp_path):
    ns = f"spfw-{uuid.uuid4().hex[:8]}"
    added = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {added.stderr.strip()}")
    try:
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        rules = ["sh", str(SCRIPT), "--allow", "root", "--allow", str(ADMIN_UID)]
        run = subprocess.run(["ip", "netns", "exec", ns, sys.executable, str(driver),
                              str(tmp_path / "work"), *rules],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    # The SuperLink's own account (and so its ServerApps) still uses every API on the port.
    assert json.loads(out["own account: flwr ls"])["success"] is True, out
    # serve-admin's account reaches the SuperLink (any HTTP status: Flower answered).
    assert out["admin"].startswith("answered"), out
    # Anyone else is reset at connect: nothing of theirs reaches the Control API.
    assert out["other"] == "refused ConnectionRefusedError", out
