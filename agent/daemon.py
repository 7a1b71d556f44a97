"""The site agent's long-running process: apply the owner's caps, then run the site's SuperNode.

What it does, in order:

1. read site.toml (agent/config.py); open the ledger in the state dir and copy the owner's caps
   into it (the only path by which a cap is ever set);
2. start `flower-supernode` pointed at the coordinator's SuperLink, with
   `--node-config site-config="<this site.toml>"`, so every ClientApp process finds the site,
   and `--isolation process`, so the SuperNode starts no app process itself;
3. start the site's own executor (agent/trusted_exec.py) on the SuperNode's local Runtime API:
   it starts one agent/trusted_app.py per task, which checks the coordinator's Flower app
   against site.toml's [trust] (agent/fab_policy.py) and runs only the site's pinned ClientApp;
4. supervise both: forward SIGTERM/SIGINT, and when either ends stop the other and exit with
   the SuperNode's exit code (restarting is the service manager's job: systemd
   `Restart=on-failure`).

Both children are started with PR_SET_PDEATHSIG (Linux), so they die with the agent even when the
agent is SIGKILLed: a site never keeps accepting work without the agent that configured it.

This module imports no Flower and no torch: the agent starts in well under a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import identity
from .config import SiteConfig
from .ledger import Ledger
from .lifeline import die_with_parent
from .site_state import NODE_CONFIG_KEY

LOCALHOST = "127.0.0.1"


def supernode_argv(cfg: SiteConfig) -> list[str]:
    bindir = Path(sys.executable).parent
    path = str(cfg.path)
    if '"' in path:
        raise ValueError(f"the site config path cannot contain a double quote: {path!r}")
    argv = [str(bindir / "flower-supernode"), "--superlink", cfg.superlink.address,
            "--host", LOCALHOST, "--port", str(cfg.supernode.port),
            "--node-config", f'{NODE_CONFIG_KEY}="{path}"',
            # No executor inside the SuperNode: the agent's own (executor_argv) takes its tasks.
            "--isolation", "process"]
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


def executor_argv(cfg: SiteConfig) -> list[str]:
    """The site's executor on the SuperNode's local Runtime API (agent/trusted_exec.py).
    `python -P`: the working directory is not put on sys.path."""
    return [sys.executable, "-P", "-m", "synthpool.agent.trusted_exec",
            "--runtime-api-address", f"{LOCALHOST}:{cfg.supernode.port}",
            "--config", str(cfg.path)]


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


def prepare(cfg: SiteConfig) -> Ledger:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(cfg.state_dir)
    cfg.apply_caps(ledger)
    if not cfg.site.data.exists():
        raise FileNotFoundError(f"site {cfg.name}: data file {cfg.site.data} does not exist")
    return ledger


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(cfg: SiteConfig) -> int:
    prepare(cfg).close()
    preexec = die_with_parent if sys.platform == "linux" else None
    env = supernode_env(cfg)
    node = subprocess.Popen(supernode_argv(cfg), env=env, preexec_fn=preexec)
    try:
        executor = subprocess.Popen(executor_argv(cfg), env=env, preexec_fn=preexec)
    except OSError:
        _stop(node)
        raise
    children = (node, executor)
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        for child in children:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    print(f"[synthpool-agent] site {cfg.name}: SuperNode pid {node.pid} -> "
          f"{cfg.superlink.address}, trusted executor pid {executor.pid}; state {cfg.state_dir}",
          flush=True)
    # One without the other is no site: a SuperNode without the executor would take work it
    # never answers, and the executor alone has nothing to do.
    while node.poll() is None and executor.poll() is None:
        time.sleep(0.5)
    if node.poll() is None and not stopping:
        print(f"[synthpool-agent] site {cfg.name}: the trusted executor exited with "
              f"{executor.returncode}; stopping the SuperNode", file=sys.stderr, flush=True)
        _stop(node)
        return _status(executor.returncode) or 1
    _stop(node)
    _stop(executor)
    return _status(node.returncode)


def _status(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a shell would report it."""
    return 128 - returncode if returncode < 0 else returncode
