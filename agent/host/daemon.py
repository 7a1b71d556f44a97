"""The site agent's long-running process: apply the owner's caps, then run the site's SuperNode.

What it does, in order:

0. take an exclusive lock on the state dir (`hold_state_dir`), held for the agent's life;
1. read site.toml (agent/config.py); open the ledger in the state dir (refused when it is lost
   or damaged, agent/ledger.py), check every page of it, and make its caps the owner's (the only
   path by which a cap is ever set);
2. start `flower-supernode` pointed at the coordinator's SuperLink, with
   `--node-config site-config="<this site.toml>"`, so every ClientApp process finds the site,
   and `--isolation process`, so the SuperNode starts no app process itself;
3. start the site's own executor (agent/host/trusted_exec.py) on the SuperNode's local Runtime API:
   it starts one agent/host/trusted_app.py per task, which checks the coordinator's Flower app
   against site.toml's [trust] (agent/host/fab_policy.py) and runs only the site's pinned ClientApp;
4. supervise both: forward SIGTERM/SIGINT, and when either ends stop the other and exit with
   the SuperNode's exit code (restarting is the service manager's job: systemd
   `Restart=on-failure`);
5. read the SuperNode's log as it passes through (it is forwarded unchanged to the agent's
   stderr) and, when the SuperNode ends because the coordinator refused its key, say so in one
   synthpool sentence with the key's fingerprint (Flower says only "Exit Code: 305", or, for a
   key revoked while connected, "SuperNode terminated gracefully").

Both children are started with PR_SET_PDEATHSIG (Linux), so they die with the agent even when the
agent is SIGKILLed: a site never keeps accepting work without the agent that configured it.

This module imports no Flower, no torch and no accountant (tests/test_import_rules.py): the agent
starts in about a second on 2 cores.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import identity
from ..config import SiteConfig
from ..ledger import Ledger
from .lifeline import die_with_parent
from ..site_state import NODE_CONFIG_KEY

SUPEREXEC_SECRET = "superexec.secret"

LOCALHOST = "127.0.0.1"
#: In the state dir: flock-ed by the agent running on it, and holding that agent's pid.
LOCK_FILE = "agent.lock"
#: The admin API's TLS port, where a site enrolls (coordinator/admin/server.py DEFAULT_LISTEN).
ENROLL_PORT = 50051
#: Flower's exit code when the SuperNode cannot start its connection to the SuperLink
#: (flwr.supercore.exit.ExitCode.SUPERNODE_CONNECTION_ERROR); the process itself exits 1.
FLOWER_CONNECTION_ERROR = "Exit Code: 305"
#: What the SuperLink answers a key it does not know (HTTP 412 "Failed to activate SuperNode")
#: or a signature it does not accept (HTTP 401).
KEY_REFUSED_MARKERS = ("Failed to activate SuperNode", "Invalid SuperNode authentication",
                       "No SuperNode found", "401 Unauthorized", "412 Precondition Failed")


def enroll_command(cfg: SiteConfig) -> str:
    """The exact `synthpool-agent enroll` this site needs, from what site.toml already says: the
    coordinator's host (its admin API's enrollment port) and its CA."""
    host = cfg.superlink.address.rsplit(":", 1)[0] if ":" in cfg.superlink.address \
        else cfg.superlink.address
    ca = cfg.superlink.root_certificates or "ca.pem"
    agent = Path(sys.executable).parent / "synthpool-agent"
    return (f"{agent} enroll --config {cfg.path} --token TOKEN "
            f"--coordinator {host}:{ENROLL_PORT} --ca {ca}")


def no_key_message(cfg: SiteConfig) -> str:
    key = identity.key_path(cfg.state_dir)
    return (f"site {cfg.name}: no key yet ({key}), and [supernode] authenticate = true in "
            f"{cfg.path} needs one. Enroll this site first, as the account the agent runs as "
            f"(systemd: sudo -u synthpool-agent):\n  {enroll_command(cfg)}\n"
            f"TOKEN comes from the coordinator's administrator (`synthpool sites invite "
            f"{cfg.name}`); port {ENROLL_PORT} is the admin API's enrollment port. Read the "
            "fingerprint enroll prints to that administrator, and once they approved it start "
            "the agent again (systemd: `systemctl restart synthpool-agent`).")


def key_fingerprint(cfg: SiteConfig) -> str:
    from ...common.signing import ssh_key_fingerprint

    try:
        return ssh_key_fingerprint((Path(cfg.state_dir) / identity.PUBLIC_FILE).read_text())
    except (OSError, ValueError, IndexError):
        return "unknown (run `synthpool-agent enroll --config ...` to print it)"


def key_refused_message(cfg: SiteConfig) -> str:
    return (f"[synthpool-agent] site {cfg.name}: the coordinator did not accept this site's key "
            f"(fingerprint {key_fingerprint(cfg)}): it is not approved yet, or it was revoked. "
            "Contact the coordinator's administrator with this fingerprint; the agent exits "
            "and is retried (systemd restarts it with growing pauses; without systemd, start it "
            "again once the key is approved).")


class SuperNodeLog:
    """Forwards the SuperNode's output line by line and remembers what tells why it ended."""

    def __init__(self, stream, out=None) -> None:
        self.out = out
        self.connection_error = False
        self.reason: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True,
                                        name="supernode-log")
        self._thread.start()

    def _pump(self, stream) -> None:
        after = 0
        for line in stream:
            out = self.out or sys.stderr
            out.write(line)
            out.flush()
            if FLOWER_CONNECTION_ERROR in line:
                self.connection_error, after = True, 6
            elif after:
                after -= 1
                if line.strip():
                    self.reason.append(line.strip())

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    @property
    def key_refused(self) -> bool:
        text = "\n".join(self.reason)
        # "[code: N]": the SuperLink itself answered with one of Flower's API errors (a
        # network failure, which Flower retries, never reads so).
        return self.connection_error and (any(m in text for m in KEY_REFUSED_MARKERS)
                                          or "[code:" in text)


def supernode_argv(cfg: SiteConfig) -> list[str]:
    path = str(cfg.path)
    if '"' in path:
        raise ValueError(f"the site config path cannot contain a double quote: {path!r}")
    # Flower's SuperNode with a shorter pull interval (agent/host/supernode.py).
    argv = [sys.executable, "-P", "-m", "synthpool.agent.host.supernode",
            "--superlink", cfg.superlink.address,
            "--host", LOCALHOST, "--port", str(cfg.supernode.port),
            "--node-config", f'{NODE_CONFIG_KEY}="{path}"',
            # No executor inside the SuperNode: the agent's own (executor_argv) takes its tasks.
            "--isolation", "process",
            "--superexec-auth-secret-file", str(superexec_secret_path(cfg))]
    if cfg.superlink.insecure:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(cfg.superlink.root_certificates)]
    if cfg.supernode.authenticate:
        key = identity.key_path(cfg.state_dir)
        if not key.exists():
            raise FileNotFoundError(no_key_message(cfg))
        argv += ["--auth-supernode-private-key", str(key)]
    return argv + list(cfg.supernode.extra_args)


def executor_argv(cfg: SiteConfig) -> list[str]:
    """The site's executor on the SuperNode's local Runtime API (agent/host/trusted_exec.py).
    `python -P`: the working directory is not put on sys.path."""
    return [sys.executable, "-P", "-m", "synthpool.agent.host.trusted_exec",
            "--runtime-api-address", f"{LOCALHOST}:{cfg.supernode.port}",
            "--config", str(cfg.path), "--auth-secret-file", str(superexec_secret_path(cfg))]


def superexec_secret_path(cfg: SiteConfig) -> Path:
    return cfg.state_dir / SUPEREXEC_SECRET


def write_superexec_secret(cfg: SiteConfig) -> Path:
    """A fresh secret for this start, readable by the site's account only, shared by the
    SuperNode and the executor: without it the SuperNode's local Runtime API would hand a task
    (and its token) to any local process that asks first (Flower's HMAC SuperExec auth)."""
    import secrets

    path = superexec_secret_path(cfg)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
    os.replace(tmp, path)
    return path


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


class StateDirError(RuntimeError):
    """The state dir cannot be held by this agent: another one runs on it, or it is not
    writable. One sentence for the owner."""


@contextmanager
def hold_state_dir(state_dir: Path, site: str | None = None) -> Iterator[None]:
    """An exclusive lock on `state_dir` while the block runs (the agent's life). Two agents on one
    state dir would be two SuperNodes of one site, each applying its own site.toml's caps to the
    same ledger before its messages: the cap a job met would depend on which agent took it.
    flock, because the kernel releases it when its holder dies, even by SIGKILL: a crash never
    leaves a stale lock behind (the children do not inherit it: Python opens it close-on-exec)."""
    who = f"site {site}: " if site else ""
    path = Path(state_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StateDirError(f"{who}cannot lock the state dir {state_dir} ({e.strerror}: "
                            f"{path}): it must be writable by the account the agent runs as"
                            ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateDirError(f"{who}another synthpool agent (pid {holder}) is running on the "
                            f"state dir {state_dir}, so this one does not start: stop that one "
                            "first (systemd: `systemctl stop synthpool-agent`), or give this "
                            "site.toml a state_dir of its own") from None
    try:
        # Rewritten only once the lock is ours: truncating earlier would erase the holder's pid.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def prepare(cfg: SiteConfig) -> Ledger:
    ledger = Ledger(cfg.state_dir, site=cfg.name)
    try:
        ledger.verify()
        cfg.apply_caps(ledger)
        if not cfg.site.data.exists():
            raise FileNotFoundError(f"site {cfg.name}: data file {cfg.site.data} does not exist")
    except BaseException:
        ledger.close()
        raise
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
    with hold_state_dir(cfg.state_dir, cfg.name):
        return _supervise(cfg)


def _supervise(cfg: SiteConfig) -> int:
    prepare(cfg).close()
    write_superexec_secret(cfg)
    preexec = die_with_parent if sys.platform == "linux" else None
    env = supernode_env(cfg)
    node = subprocess.Popen(supernode_argv(cfg), env=env, preexec_fn=preexec,
                            stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1)
    node_log = SuperNodeLog(node.stdout)
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
    node_log.join()
    code = _status(node.returncode)
    if stopping:
        return code
    if node_log.key_refused and cfg.supernode.authenticate:
        print(key_refused_message(cfg), file=sys.stderr, flush=True)
        return code or 1
    if node_log.connection_error:
        print(f"[synthpool-agent] site {cfg.name}: the SuperNode could not connect to the "
              f"coordinator at {cfg.superlink.address}: "
              f"{' '.join(node_log.reason[:2]) or 'see the lines above'}", file=sys.stderr,
              flush=True)
        return code or 1
    if code == 0:
        # Nobody asked it to stop: Flower's SuperNode stops itself ("terminated gracefully")
        # when the SuperLink answers its heartbeat with 401, i.e. its key was unregistered.
        revoked = (f" The coordinator refuses this site's key (fingerprint "
                   f"{key_fingerprint(cfg)}) when it was revoked: if the agent's next start "
                   "says the key was not accepted, contact the coordinator's administrator with "
                   "this fingerprint.") if cfg.supernode.authenticate else ""
        print(f"[synthpool-agent] site {cfg.name}: the SuperNode stopped on its own; the agent "
              f"exits with status 1 so that it is restarted.{revoked}", file=sys.stderr,
              flush=True)
        return 1
    return code


def _status(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a shell would report it."""
    return 128 - returncode if returncode < 0 else returncode
