"""Starting and stopping Flower's processes on one host: SuperLink, SuperNodes, `flwr run`.

Why this module exists: Flower's deployment runtime is a small tree of processes per component
(`flower-superlink` -> `flower-superexec` -> `flwr-serverapp`; `flower-supernode` ->
`flower-superexec` -> one `flwr-clientapp` per message), and it is easy to leave pieces running.
The SuperLink even starts its SuperExec in a NEW session (flwr/superlink/cli/flower_superlink.py:
263, `get_popen_detach_kwargs()` -> `start_new_session=True`), so killing the SuperLink's process
group does not reach it. `ProcessGroup` therefore:

* starts every process in its own session (its PID is its process-group id), with the
  environment Flower needs to stay quiet and local (`flower_env`),
* stops by PID, never by name: it snapshots each process' descendants from /proc, signals the
  group and every descendant, waits, then SIGKILLs survivors; SuperNodes first, then the
  SuperLink (a SuperLink that vanishes first leaves nodes retrying for ever),
* does that on normal exit, on exceptions and on KeyboardInterrupt (it is a context manager).

Nothing here knows about synthpool's apps; `federation.py` builds the study on top.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

__all__ = [
    "ProcessGroup", "ManagedProcess", "free_port", "flower_env", "write_connection",
    "format_node_config", "wait_for_port", "descendants", "kill_tree",
]

LOOPBACK = "127.0.0.1"
CONNECTION = "synthpool"


def bin_dir() -> Path:
    """The folder of the running interpreter's console scripts (the venv's bin): Flower starts
    `flower-superexec`, `flwr-clientapp` and `flwr-serverapp` by name, so it must come first on
    PATH, or a system-wide Flower of another version would run our apps."""
    return Path(sys.executable).parent


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: own FLWR_HOME (else ~/.flwr is shared and FABs of
    different sites get installed over each other), no telemetry, no update check, fast task
    polling (the default 1 s poll adds a second to every message)."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        "PATH": f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    return env


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (the OS picks it; the race with other programs is
    accepted for tests and demos, production configs name their ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: "ManagedProcess | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before listening "
                               f"on {host}:{port}; log:\n{proc.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s"
                       + (f"; log:\n{proc.log_tail()}" if proc else ""))


def format_node_config(config: Mapping[str, object]) -> str:
    """`{'site-config': '/a b/site.toml', 'x': 3}` -> `site-config="/a b/site.toml" x=3`: the
    format flwr parses with a regex then TOML (flwr/common/config.py:parse_config_args): a
    string value is a quoted TOML string, a literal ('...') one when it holds double quotes."""
    parts = []
    for key, value in config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, (str, Path)):
            value = str(value)
            if "\n" in value or ("'" in value and ('"' in value or "\\" in value)):
                raise ValueError(f"node-config value for {key!r} cannot contain newlines, or a "
                                 f"single quote beside a double quote or backslash: {value!r}")
            # A TOML literal string ('...') carries double quotes and backslashes as they are
            # (a family's `model` setting is JSON).
            text = f"'{value}'" if '"' in value or "\\" in value else f'"{value}"'
        else:
            raise TypeError(f"node-config value for {key!r} must be str, int, float or bool")
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ValueError(f"invalid node-config key {key!r}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def write_connection(flwr_home: Path, address: str, *, name: str = CONNECTION,
                     insecure: bool = True, root_certificates: Path | None = None) -> Path:
    """Write `$FLWR_HOME/config.toml` naming one SuperLink connection (what `flwr run APP NAME`
    reads: flwr/cli/flower_config.py:read_superlink_connection)."""
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]",
             f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    else:
        # Flower refuses a relative path here (and would resolve it against its own cwd).
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).absolute()))}")
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    cert: Path
    key: Path


def _flwr_json(argv: list[str], flwr_home: Path) -> dict:
    out = subprocess.run([str(bin_dir() / "flwr"), *argv, "--format", "json"],
                         env=flower_env(flwr_home), capture_output=True, text=True, timeout=60)
    try:
        reply = json.loads(out.stdout)
    except ValueError:
        reply = {"success": False, "error-message": (out.stdout + out.stderr)[-2000:]}
    if not reply.get("success"):
        raise RuntimeError(f"flwr {' '.join(argv[:2])} failed: "
                           f"{reply.get('error-message', '').strip()}")
    return reply


def register_supernode(flwr_home: Path, public_key: Path, connection: str = CONNECTION) -> int:
    """Admit the SuperNode holding `public_key`'s private half (OpenSSH public key file) to the
    SuperLink named by `connection`; returns the node id the SuperLink gave it."""
    return int(_flwr_json(["supernode", "register", str(public_key), connection], flwr_home)["node-id"])


def unregister_supernode(flwr_home: Path, node_id: int, connection: str = CONNECTION) -> None:
    """Shut the node out: its next request is refused, and it cannot register again by itself."""
    _flwr_json(["supernode", "unregister", str(node_id), connection], flwr_home)


def stop_flower_run(flwr_home: Path, run_id: int, connection: str = CONNECTION) -> None:
    """`flwr stop RUN_ID CONN`: the SuperLink marks the run finished:stopped and refuses the
    ServerApp's next Grid call, so the ServerApp ends at its next poll."""
    _flwr_json(["stop", str(run_id), connection], flwr_home)


def flower_run_status(flwr_home: Path, run_id: int, connection: str = CONNECTION) -> str:
    """The SuperLink's status of a run, e.g. `running` or `finished:stopped` (`flwr ls`)."""
    reply = _flwr_json(["ls", connection, "--run-id", str(run_id)], flwr_home)
    runs = [r for r in reply.get("runs", []) if str(r.get("run-id")) == str(run_id)]
    return str(runs[0].get("status", "")) if runs else ""


class SuperLinkAccess:
    """The admin API's hold on the SuperLink's door (service.FleetAccess), through the
    Flower CLI's Control API connection in `flwr_home` (config.toml names it)."""

    def __init__(self, flwr_home: Path, connection: str = CONNECTION) -> None:
        self.flwr_home, self.connection = Path(flwr_home), connection

    def admit(self, site_name: str, public_key: str) -> int:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{site_name}.pub"
            path.write_text(public_key.strip() + "\n")
            return register_supernode(self.flwr_home, path, self.connection)

    def shut_out(self, node_id: int) -> None:
        unregister_supernode(self.flwr_home, node_id, self.connection)


# -- process trees --------------------------------------------------------------------------------

def _ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All living descendants of `pid` (children first), read from /proc."""
    tree = _ppid_map()
    out, todo = [], list(tree.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().decode(errors="replace")
        return state[state.rfind(")") + 2] != "Z"
    except OSError:
        return False


def kill_tree(pid: int, *, grace: float = 5.0, sig: int = signal.SIGTERM,
              extra: Iterable[int] = ()) -> None:
    """Signal `pid`, its process group and every descendant (snapshot taken first, so children
    that the death of their parent would orphan are still found); SIGKILL what is left after
    `grace` seconds."""
    victims = [pid, *descendants(pid), *extra]
    groups = {pid}
    for p in victims:
        try:
            groups.add(os.getpgid(p))
        except (ProcessLookupError, PermissionError):
            pass
    groups.discard(os.getpgid(0))  # never our own group
    for g in groups:
        _signal_group(g, sig)
    for p in victims:
        _signal(p, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in victims):
        time.sleep(0.1)
    for p in victims:
        if _alive(p):
            _signal(p, signal.SIGKILL)


@dataclass
class ManagedProcess:
    """One started process with its log file."""

    name: str
    role: str  # "superlink" | "supernode" | "run" | other
    popen: subprocess.Popen
    log_path: Path
    argv: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.returncode is None or descendants(self.pid):
            kill_tree(self.pid, grace=grace)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal(self.pid, signal.SIGKILL)
            self.popen.wait()

    def kill9(self) -> None:
        """Crash it: SIGKILL the whole tree at once, no chance to clean up (for tests)."""
        kill_tree(self.pid, grace=0.0, sig=signal.SIGKILL)
        self.popen.wait()


class ProcessGroup:
    """Owns every Flower process it started and stops them all, in order, on exit.

    ``workdir`` holds `logs/`, FLWR_HOME folders and (by default) the SuperLink database."""

    STOP_ORDER = ("run", "supernode", "agent", "superlink")

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.processes: list[ManagedProcess] = []

    # -- generic -------------------------------------------------------------------------------
    def spawn(self, name: str, role: str, argv: list[str], env: Mapping[str, str],
              cwd: Path | None = None, meta: dict | None = None) -> ManagedProcess:
        log_path = self.workdir / "logs" / f"{name}.log"
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        finally:
            log.close()
        proc = ManagedProcess(name, role, popen, log_path, list(argv), meta or {})
        self.processes.append(proc)
        return proc

    def by_name(self, name: str) -> ManagedProcess:
        for p in reversed(self.processes):
            if p.name == name:
                return p
        raise KeyError(name)

    def stop_all(self, grace: float = 5.0) -> None:
        order = {role: i for i, role in enumerate(self.STOP_ORDER)}
        for proc in sorted(self.processes, key=lambda p: order.get(p.role, -1)):
            try:
                proc.stop(grace=grace)
            except Exception:  # noqa: BLE001 - stopping must go on to the next process
                pass

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # -- Flower --------------------------------------------------------------------------------
    def start_superlink(self, *, name: str = "superlink", port: int | None = None,
                        database: Path | None = None, flwr_home: Path | None = None,
                        tls: "TLSFiles | None" = None, node_auth: bool = False,
                        host: str = LOOPBACK, ready_timeout: float = 60.0) -> ManagedProcess:
        """`flower-superlink` on HOST:PORT (Fleet, Control and Runtime APIs on the one
        port; HOST 127.0.0.1 unless sites dial it from elsewhere). `database` keeps runs, nodes and messages across restarts. `tls`: serve every API
        over TLS with the coordinator's certificate; `node_auth`: admit only SuperNodes whose
        public key was registered (`register_supernode`); Flower requires TLS for it."""
        if node_auth and tls is None:
            raise ValueError("SuperNode authentication needs TLS")
        port = port or free_port(host)
        home = flwr_home or self.workdir / name / "flwr-home"
        database = Path(database or self.workdir / name / "state.db")
        database.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(bin_dir() / "flower-superlink"), "--disable-runtime-dependency-installation",
                "--host", host, "--port", str(port), "--database", str(database)]
        if tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.cert),
                     "--ssl-keyfile", str(tls.key)]
        if node_auth:
            argv.append("--enable-supernode-auth")
        # Its SuperExec polls for ServerApp tasks, one per run: at the sites' 0.1 s it cost the
        # SuperLink a database query ten times a second for the whole run (a fifth of a core on
        # the demo's 2 cores), to start each run at most 0.1 s sooner.
        proc = self.spawn(name, "superlink", argv,
                          flower_env(home, {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0"}),
                          meta={"port": port, "address": f"{host}:{port}",
                                "database": str(database), "flwr_home": str(home)})
        wait_for_port(host, port, ready_timeout, proc)
        return proc

    def start_supernode(self, name: str, superlink: str, *, node_config: Mapping[str, object],
                        port: int | None = None, flwr_home: Path | None = None) -> ManagedProcess:
        """`flower-supernode --insecure --superlink HOST:PORT --port P --node-config '...'`.
        Each SuperNode on one host needs its own local Runtime API port (`--port`)."""
        port = port or free_port()
        home = flwr_home or self.workdir / name / "flwr-home"
        argv = [str(bin_dir() / "flower-supernode"), "--insecure", "--superlink", superlink,
                "--host", LOOPBACK, "--port", str(port),
                "--node-config", format_node_config(node_config)]
        return self.spawn(name, "supernode", argv, flower_env(home),
                          meta={"port": port, "flwr_home": str(home)})

    def start_run(self, app_dir: Path, *, flwr_home: Path, run_config: Mapping[str, object] = {},
                  name: str = "run", connection: str = CONNECTION) -> ManagedProcess:
        """`flwr run APPDIR CONN --stream` in the background; it returns when the run ends.
        FLWR_HOME must hold config.toml naming CONN (`write_connection`)."""
        argv = [str(bin_dir() / "flwr"), "run", str(app_dir), connection, "--stream"]
        if run_config:
            argv += ["--run-config", format_node_config(run_config)]
        return self.spawn(name, "run", argv, flower_env(flwr_home))
