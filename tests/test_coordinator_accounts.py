"""Finding 2, the accounts: with real uids and the kernel's permission checks, the SuperLink's
account (where every ServerApp runs) cannot read the admin API's state, and the two share only
what the start script makes group-accessible: the connection file and the trainings' folder,
through which a schema goes in and a release comes out. What serve-admin does with a release it
finds there (copy, check, sign) is tests/test_release_signing.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from synthpool.coordinator.admin.flower_runner import SHARED_DIR_MODE

ROOT = Path(__file__).resolve().parent.parent
START_SCRIPT = ROOT / "deploy" / "scripts" / "coordinator-start.sh"
LINK, ADMIN, OTHER = 4301, 4302, 4303  # uids; the SuperLink's group is LINK's gid


def _as(uid: int, script: str, *, groups: tuple[int, ...] = (), umask: str = "0027",
        env: dict | None = None) -> subprocess.CompletedProcess:
    """`script` in sh as `uid` (its own gid, plus `groups`), with the unit's umask."""
    ids = ["--reuid", str(uid), "--regid", str(uid)]
    ids += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", *ids, "sh", "-c", f"umask {umask}; {script}"],
                          capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as other accounts")
def test_the_serverapp_account_reaches_only_the_shared_folders():
    base = Path(tempfile.mkdtemp(prefix="spacct-"))
    try:
        base.chmod(0o755)
        # The admin API's state, as init leaves it: 0700, its own account's.
        admin_state = base / "synthpool-coordinator"
        (admin_state / "pki").mkdir(parents=True)
        (admin_state / "pki" / "ca.key").write_text("the CA's key")
        (admin_state / "coordinator.db").write_text("admin tokens")
        for path in (admin_state, admin_state / "pki", *admin_state.rglob("*")):
            os.chown(path, ADMIN, ADMIN)
        admin_state.chmod(0o700)
        # The SuperLink's state, made by the real start script as its account.
        link_state = base / "synthpool-link"
        link_state.mkdir(mode=0o750)
        os.chown(link_state, LINK, LINK)
        bin_dir = base / "bin"
        bin_dir.mkdir()
        (bin_dir / "flower-superlink").write_text("#!/bin/sh\n")
        (bin_dir / "flower-superlink").chmod(0o755)
        script = base / "coordinator-start.sh"
        shutil.copy(START_SCRIPT, script)
        script.chmod(0o755)
        env = {"PATH": "/usr/bin:/bin", "SYNTHPOOL_STATE_DIR": str(link_state),
               "SYNTHPOOL_VENV_BIN": str(bin_dir), "SYNTHPOOL_DRY_RUN": "1"}
        started = _as(LINK, f"sh {script}", env=env)
        assert started.returncode == 0, started.stderr

        # A ServerApp (the SuperLink's account) cannot read or list the admin API's state.
        for what in (f"cat {admin_state}/pki/ca.key", f"cat {admin_state}/coordinator.db",
                     f"ls {admin_state}", f"touch {admin_state}/pki/forged"):
            denied = _as(LINK, what)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, what

        # serve-admin, in the SuperLink's group: reads the connection file, and writes a run's
        # folder and schema the way FlowerRunner does (SHARED_DIR_MODE; the schema 0640).
        training = link_state / "training"
        run = training / "run-1"
        mode = f"{SHARED_DIR_MODE:o}"
        wrote = _as(ADMIN, f"cat {link_state}/cli-home/config.toml >/dev/null && "
                           f"mkdir {run} {run}/release && chmod {mode} {run} {run}/release && "
                           f"echo 'name: study' > {run}/schema.yaml && "
                           f"chmod 0640 {run}/schema.yaml",
                    groups=(LINK,), umask="0077")
        assert wrote.returncode == 0, wrote.stderr
        # The ServerApp reads the schema and writes its release there; serve-admin reads it.
        served = _as(LINK, f"cat {run}/schema.yaml && echo 'x' > {run}/release/synthetic.csv")
        assert served.returncode == 0 and "name: study" in served.stdout, served.stderr
        taken = _as(ADMIN, f"cat {run}/release/synthetic.csv", groups=(LINK,), umask="0077")
        assert taken.returncode == 0 and taken.stdout.strip() == "x", taken.stderr

        # Any other local account sees neither state.
        for what in (f"ls {training}", f"cat {run}/schema.yaml", f"ls {admin_state}"):
            denied = _as(OTHER, what)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, what
    finally:
        shutil.rmtree(base, ignore_errors=True)
