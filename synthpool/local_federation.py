"""A whole federation on one host, on loopback: one coordinator, N sites, real processes.

For tests, the demo and benchmarks. It drives the same commands a real deployment runs:
the coordinator's `flower-superlink` and `flwr run deploy/app`, and at each site
`synthpool-agent run --config site.toml` (which applies the site's caps and starts its
SuperNode). It only adds what one host needs: free ports, per-party folders, log files, a
way to crash a party, and stopping everything by PID (coordinator/admin/flower_processes.py).

Layout under `workdir`::

    coordinator/   superlink state.db, FLWR_HOME with config.toml, checkpoints/
    sites/<name>/  site.toml, state/ (ledger, releases, flwr-home)
    logs/          one log per process

The coordinator reaches a site only through Flower. Tests read a site's ledger from its state
dir (`site_state_dir`) the way an operator would (`synthpool-agent ledger --state-dir`).
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .common.bundled import DEFAULT_SCHEMA
from .coordinator.serverapp.checkpoint import CheckpointStore
from .coordinator.admin.flower_runner import APP_DIR
from .coordinator.admin.flower_processes import (
    LOOPBACK, ManagedProcess, ProcessGroup, TLSFiles, bin_dir, flower_env, free_port,
    register_supernode, unregister_supernode, write_connection,
)

def split_rows(source: Path, out_dir: Path, n_sites: int, rows_per_site: int | None = None,
               prefix: str = "site", split: str = "contiguous", seed: int = 0) -> list[Path]:
    """Cut a raw text table (gz or plain; header-less, like Adult) into `n_sites` slices, written
    as gz files with the source's exact lines.

    `split`: "contiguous" (file order), "iid" (shuffled with `seed`), or "skewed" (sorted by the
    first field, numerically: for Adult, age, so each site holds a different age band)."""
    if split not in ("contiguous", "iid", "skewed"):
        raise ValueError(f"unknown split {split!r}")
    opener = gzip.open if str(source).endswith(".gz") else open
    with opener(source, "rt") as f:
        lines = [ln for ln in f if ln.strip() and not ln.startswith("|")]
    if split == "iid":
        order = random.Random(seed).sample(range(len(lines)), len(lines))
        lines = [lines[i] for i in order]
    elif split == "skewed":
        lines.sort(key=lambda ln: float(ln.split(",", 1)[0]))
    per = rows_per_site or len(lines) // n_sites
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_sites):
        path = out_dir / f"{prefix}-{i}.csv.gz"
        with gzip.open(path, "wt") as g:
            g.writelines(lines[i * per:(i + 1) * per])
        paths.append(path)
    return paths


@dataclass
class SiteSpec:
    name: str
    data: Path
    budgets: dict[str, tuple[float, float]]  # study -> (epsilon, delta)
    size: str = "estimated"
    declared_rows: int | None = None
    torch_threads: int = 0  # 0: all cores (sites sharing one host should split them)
    # The study schema the site pins: "bundled:adult" or a schema YAML's path.
    schema: str = DEFAULT_SCHEMA
    on_invalid: str = "error"  # the site's rule for rows with cells outside the schema
    # Opt in to sending the evaluation's aggregate (not DP) scores: for public showcase data and
    # local simulations, where every site is the user's own.
    share_scores: bool = False


def write_site_config(path: Path, spec: SiteSpec, state_dir: Path, address: str,
                      port: int, *, root_certificates: Path | None = None,
                      authenticate: bool = False) -> Path:
    """A site.toml in the format agent/config.py reads (written here as text because the
    coordinator package never imports the agent's)."""
    lines = ["[site]", f"name = {json.dumps(spec.name)}",
             f"data = {json.dumps(str(Path(spec.data).resolve()))}",
             f"state_dir = {json.dumps(str(Path(state_dir).resolve()))}",
             f"schema = {json.dumps(_schema_ref(spec.schema))}", f"size = {json.dumps(spec.size)}"]
    if spec.on_invalid != "error":
        lines.append(f"on_invalid = {json.dumps(spec.on_invalid)}")
    if spec.declared_rows is not None:
        lines.append(f"declared_rows = {int(spec.declared_rows)}")
    if spec.torch_threads:
        lines.append(f"torch_threads = {int(spec.torch_threads)}")
    lines += ["", "[superlink]", f"address = {json.dumps(address)}"]
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        ca = Path(root_certificates).absolute()
        lines += ["insecure = false", f"root_certificates = {json.dumps(str(ca))}"]
    lines += ["", "[supernode]", f"port = {int(port)}",
              f"authenticate = {'true' if authenticate else 'false'}"]
    if spec.share_scores:
        lines += ["", "[evaluation]", "share_scores = true"]
    for study, (eps, delta) in spec.budgets.items():
        lines += ["", f"[budgets.{json.dumps(study)}]", f"epsilon = {float(eps)!r}",
                  f"delta = {float(delta)!r}"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _schema_ref(schema: str | Path) -> str:
    """A bundled schema's name as it is, a schema file's path made absolute."""
    text = str(schema)
    return text if text.startswith("bundled:") else str(Path(text).expanduser().resolve())


@dataclass
class RunOutcome:
    returncode: int | None
    output: str
    events: list[dict] = field(default_factory=list)

    def of(self, event: str) -> list[dict]:
        return [e for e in self.events if e["event"] == event]


class LocalFederation:
    """A SuperLink and one `synthpool-agent run` per site, as processes on loopback.

    `tls=True`: the coordinator's PKI (coordinator/admin/pki.py) is created, every Flower API is served
    over TLS and every site verifies it with the CA. `node_auth=True` (needs TLS): the SuperLink
    admits only enrolled SuperNodes: `enroll(name)` makes the site's key pair AT THE SITE
    (`synthpool-agent enroll`) and registers its public key; `revoke(name)` unregisters it.
    `host`: the address the SuperLink listens on and the sites dial; `site_prefix[name]`: argv
    put before a site's agent (e.g. `ip netns exec NS` to run it in its own network)."""

    def __init__(self, workdir: Path, sites: list[SiteSpec], *, app_dir: Path = APP_DIR,
                 tls: bool = False, node_auth: bool = False, host: str = LOOPBACK,
                 site_prefix: Mapping[str, list[str]] | None = None) -> None:
        if node_auth and not tls:
            raise ValueError("SuperNode authentication needs TLS")
        self.tls, self.node_auth = tls, node_auth
        self.node_ids: dict[str, int] = {}
        self.workdir = Path(workdir).expanduser().absolute()  # Flower configs need absolute paths
        self.sites = {s.name: s for s in sites}
        self.app_dir = app_dir
        self.procs = ProcessGroup(self.workdir)
        self.coord_dir = self.workdir / "coordinator"
        self.cli_home = self.coord_dir / "cli-home"
        self.checkpoint_dir = self.coord_dir / "checkpoints"
        self.host, self.site_prefix = host, dict(site_prefix or {})
        self.port = free_port(host)
        self.address = f"{host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.procs.stop_all()

    def start(self) -> "LocalFederation":
        """The coordinator, then every site (enrolled first when the SuperLink checks keys)."""
        self.start_coordinator()
        for name in self.sites:
            self.site_config(name)  # one by one: each takes a free port
        # An enrollment is two CLI processes (about 3 s): all at once, so that no site's
        # start (its executor's imports take the longest) waits for the others' enrollment.
        with ThreadPoolExecutor(max_workers=max(1, len(self.sites))) as pool:
            list(pool.map(self._enroll_and_start, self.sites))
        return self

    def _enroll_and_start(self, name: str) -> None:
        if self.node_auth and name not in self.node_ids:
            self.enroll(name)
        self.start_site(name)

    def start_coordinator(self) -> ManagedProcess:
        """The SuperLink on its fixed port with its database: a restart finds its state."""
        tls = None
        if self.tls:
            from .coordinator.admin.pki import init_coordinator

            pki = init_coordinator(self.coord_dir / "state", [self.host, LOOPBACK])
            tls = TLSFiles(pki.ca_cert, pki.server_cert, pki.server_key)
        proc = self.procs.start_superlink(name="superlink", port=self.port,
                                          database=self.coord_dir / "superlink.db",
                                          flwr_home=self.coord_dir / "superlink-home",
                                          tls=tls, node_auth=self.node_auth, host=self.host)
        write_connection(self.cli_home, self.address, insecure=tls is None,
                         root_certificates=tls.ca_cert if tls else None)
        return proc

    @property
    def ca_cert(self) -> Path | None:
        from .coordinator.admin.pki import CoordinatorPKI

        return CoordinatorPKI(self.coord_dir / "state").ca_cert if self.tls else None

    def enroll(self, name: str) -> int:
        """The site makes its key pair (`synthpool-agent enroll`); its public key is registered
        with the SuperLink. Returns the SuperNode id."""
        out = subprocess.run([str(bin_dir() / "synthpool-agent"), "enroll", "--config",
                              str(self.site_config(name))], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"synthpool-agent enroll for {name} failed: {out.stderr}")
        # What the site tells its administrator (the public key), as an operator receives it:
        # where the site keeps its files is the site's business.
        public = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines()
                      if line.startswith("public key:"))
        received = self.coord_dir / "site-keys" / f"{name}.pub"
        received.parent.mkdir(parents=True, exist_ok=True)
        received.write_text(public + "\n")
        self.node_ids[name] = register_supernode(self.cli_home, received)
        return self.node_ids[name]

    def revoke(self, name: str) -> None:
        unregister_supernode(self.cli_home, self.node_ids.pop(name))

    def site_dir(self, name: str) -> Path:
        return self.workdir / "sites" / name

    def site_state_dir(self, name: str) -> Path:
        return self.site_dir(name) / "state"

    def site_config(self, name: str) -> Path:
        """Write the site's site.toml once."""
        path = self.site_dir(name) / "site.toml"
        if not path.exists():
            write_site_config(path, self.sites[name], self.site_state_dir(name), self.address,
                              free_port(), root_certificates=self.ca_cert,
                              authenticate=self.node_auth)
        return path

    def start_site(self, name: str) -> ManagedProcess:
        argv = [*self.site_prefix.get(name, []), str(bin_dir() / "synthpool-agent"), "run",
                "--config", str(self.site_config(name))]
        env = flower_env(self.site_dir(name) / "state" / "flwr-home")
        return self.procs.spawn(f"site-{name}", "agent", argv, env)

    def kill_site(self, name: str) -> None:
        self.procs.by_name(f"site-{name}").kill9()

    def kill_coordinator(self) -> None:
        """Crash the coordinator: the `flwr run` client, the SuperLink and its ServerApp, all
        SIGKILLed at once."""
        for proc in list(self.procs.processes):
            if proc.role in ("run", "superlink") and proc.alive:
                proc.kill9()

    # -- runs ----------------------------------------------------------------------------------
    def run_config(self, overrides: Mapping[str, object]) -> dict:
        return {"checkpoint-dir": str(self.checkpoint_dir), **overrides}

    def start_run(self, overrides: Mapping[str, object], name: str = "run") -> ManagedProcess:
        return self.procs.start_run(self.app_dir, flwr_home=self.cli_home,
                                    run_config=self.run_config(overrides), name=name)

    def run(self, overrides: Mapping[str, object], timeout: float, name: str = "run") -> RunOutcome:
        proc = self.start_run(overrides, name=name)
        try:
            proc.popen.wait(timeout=timeout)
        except Exception:
            proc.stop()
            raise TimeoutError(f"run did not end within {timeout:.0f} s; output:\n"
                               f"{proc.log_tail()}\nsuperlink log:\n"
                               f"{self.procs.by_name('superlink').log_tail()}") from None
        return RunOutcome(proc.popen.returncode, proc.log_tail(100_000), self.events())

    def events(self) -> list[dict]:
        return CheckpointStore(self.checkpoint_dir).events.read()

    def wait_for(self, predicate, timeout: float, what: str, poll: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(poll)
        raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")

    # -- looking at the processes (tests) ------------------------------------------------------
    def logs(self) -> str:
        parts = []
        for p in self.procs.processes:
            parts.append(f"===== {p.name} (pid {p.pid}, rc {p.popen.poll()}) =====\n{p.log_tail(6000)}")
        return "\n".join(parts)
