"""The site agent's long-running process: apply the owner's caps, then run the site's SuperNode.

What it does, in order:

1. read site.toml (agent/config.py); open the ledger in the state dir and copy the owner's caps
   into it (the only path by which a cap is ever set);
2. start `flower-supernode` pointed at the coordinator's SuperLink, with
   `--node-config site-config="<this site.toml>"`, so every ClientApp process finds the site;
3. supervise it: forward SIGTERM/SIGINT, and exit with its exit code when it ends (restarting
   is the service manager's job: systemd `Restart=on-failure`).

The SuperNode is started with PR_SET_PDEATHSIG (Linux), so it dies with the agent even when the
agent is SIGKILLed: a site never keeps accepting work without the agent that configured it.

This module imports no Flower and no torch: the agent starts in well under a second.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import identity
from .config import SiteConfig
from .ledger import Ledger
from .site_state import NODE_CONFIG_KEY


def supernode_argv(cfg: SiteConfig) -> list[str]:
    bindir = Path(sys.executable).parent
    path = str(cfg.path)
    if '"' in path:
        raise ValueError(f"the site config path cannot contain a double quote: {path!r}")
    argv = [str(bindir / "flower-supernode"), "--superlink", cfg.superlink.address,
            "--host", "127.0.0.1", "--port", str(cfg.supernode.port),
            "--node-config", f'{NODE_CONFIG_KEY}="{path}"']
    if cfg.superlink.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(cfg.superlink.root_certificates)]
    if cfg.supernode.authenticate:
        key = identity.key_path(cfg.state_dir)
        if not key.exists():
            raise FileNotFoundError(f"{key}: this site has no key yet; run `synthpool-agent enroll "
                                    f"--config {cfg.path}` first")
        argv += ["--auth-supernode-private-key", str(key)]
    return argv + list(cfg.supernode.extra_args)


def supernode_env(cfg: SiteConfig) -> dict[str, str]:
    """Flower's environment for this site: its own FLWR_HOME inside the state dir (installed
    FABs of different sites on one host must not mix), no telemetry, no update check."""
    env = dict(os.environ)
    home = cfg.state_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the agent (its parent) dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def prepare(cfg: SiteConfig) -> Ledger:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(cfg.state_dir)
    cfg.apply_caps(ledger)
    if not cfg.site.data.exists():
        raise FileNotFoundError(f"site {cfg.name}: data file {cfg.site.data} does not exist")
    return ledger


def run(cfg: SiteConfig) -> int:
    prepare(cfg).close()
    proc = subprocess.Popen(supernode_argv(cfg), env=supernode_env(cfg),
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    print(f"[synthpool-agent] site {cfg.name}: SuperNode pid {proc.pid} -> "
          f"{cfg.superlink.address}; state {cfg.state_dir}", flush=True)
    while True:
        try:
            return proc.wait()
        except InterruptedError:
            continue
