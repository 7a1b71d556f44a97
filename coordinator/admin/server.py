"""Serve the admin API: TLS always, on two ports.

Why two ports: gRPC's Python server can either require a client certificate or not ask for one at
all; it cannot ask for one and accept its absence. Administrators with a certificate therefore
connect to the mutual-TLS port (default 50052), where the handshake itself refuses anyone without
a certificate from the coordinator's CA. Bearer-token administrators and enrolling sites (which
have only their invitation token) connect to the TLS port (default 50051). Both ports serve the
same service, which checks credentials on every call (service.AdminService.authenticate).

Both default to loopback: exposing the admin API beyond the coordinator host is an operator's
decision (`--listen 0.0.0.0:50051`), and sites only ever need the TLS port, for enrollment.
"""

from __future__ import annotations

import importlib
import logging
from concurrent import futures
from pathlib import Path

import grpc

from ...protos import admin_pb2_grpc

from .service import AdminService, RefusalLimiter, TrainingRunner
from .pki import CoordinatorPKI
from .state import State

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MTLS_LISTEN = "127.0.0.1:50052"


class AdminServer:
    """One gRPC server with the admin service on a TLS port and (optionally) a mutual-TLS port.

    `listen` / `mtls_listen` take HOST:PORT; port 0 picks a free port (see `.port`, `.mtls_port`).
    `mtls_listen=None` serves tokens only. The state database is `database_url` or the SQLite
    file in `state_dir`; releases are read from `releases_dir` (default `<state_dir>/releases`).
    `refusals` limits how fast calls refused to non-administrators are logged, per caller address
    (default: refusals.RefusalLimiter()).
    """

    def __init__(self, state_dir: Path, *, listen: str = DEFAULT_LISTEN,
                 mtls_listen: str | None = DEFAULT_MTLS_LISTEN, database_url: str | None = None,
                 releases_dir: Path | None = None, runner: TrainingRunner | None = None,
                 fleet=None, max_workers: int = 16, state: State | None = None,
                 refusals: RefusalLimiter | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.pki = CoordinatorPKI(self.state_dir)
        missing = [p for p in (self.pki.ca_cert, self.pki.server_cert, self.pki.server_key,
                               self.pki.signing_public_key) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{self.state_dir}: missing {', '.join(map(str, missing))}; "
                                    "run `synthpool coordinator init --state-dir DIR` first")
        self.listen, self.mtls_listen = listen, mtls_listen
        self.state = state or State.open(self.state_dir, database_url)
        self._own_state = state is None
        ca_pem = self.pki.ca_cert.read_bytes()
        self.service = AdminService(
            self.state, ca_pem=ca_pem, signing_public_key=self.pki.signing_public_key,
            releases_dir=Path(releases_dir) if releases_dir else self.state_dir / "releases",
            runner=runner, fleet=fleet, refusals=refusals)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                              thread_name_prefix="synthpool-admin"),
                                   maximum_concurrent_rpcs=max_workers * 4,
                                   # One server per port: with gRPC's default SO_REUSEPORT a
                                   # second serve-admin binds the same port and takes calls.
                                   options=[("grpc.so_reuseport", 0)])
        admin_pb2_grpc.add_AdminServicer_to_server(self.service, self._server)
        pair = [(self.pki.server_key.read_bytes(), self.pki.server_cert.read_bytes())]
        self.port = self._bind(listen, grpc.ssl_server_credentials(pair))
        self.mtls_port = None
        if mtls_listen:
            self.mtls_port = self._bind(mtls_listen, grpc.ssl_server_credentials(
                pair, root_certificates=ca_pem, require_client_auth=True))
            self.service.mtls_hint = f"port {self.mtls_port}"

    def _bind(self, address: str, credentials: grpc.ServerCredentials) -> int:
        try:
            port = self._server.add_secure_port(address, credentials)
        except RuntimeError:  # grpc >= 1.60 raises instead of returning 0
            port = 0
        if not port:
            raise OSError(f"cannot listen on {address}: the port is in use (another serve-admin? "
                          "`synthpool coordinator doctor` shows what listens) or the address is "
                          "not this host's")
        return port

    @property
    def address(self) -> str:
        return f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    @property
    def mtls_address(self) -> str | None:
        if self.mtls_port is None or not self.mtls_listen:
            return None
        return f"{self.mtls_listen.rsplit(':', 1)[0]}:{self.mtls_port}"

    def start(self) -> "AdminServer":
        interrupted = self.state.interrupt_running()
        if interrupted:
            log.warning("runs %s were running when the coordinator stopped: marked interrupted",
                        interrupted)
        self._server.start()
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        self.service.training.close()
        self._server.stop(grace).wait()
        self.service.flush_refusals()
        if self._own_state:
            self.state.close()

    def wait(self) -> None:
        self._server.wait_for_termination()

    def __enter__(self) -> "AdminServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def load_runner(spec: str | None) -> TrainingRunner | None:
    """`package.module:name` -> an instance: `name` is a runner class or factory called with no
    arguments. This is how `serve-admin --runner` plugs in another runner than the default (the
    FlowerRunner, coordinator/admin/flower_runner.py, built by serve-admin itself) without the admin
    server importing it."""
    if not spec:
        return None
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--runner {spec!r}: expected MODULE:NAME")
    factory = getattr(importlib.import_module(module_name), attr)
    runner = factory()
    if not isinstance(runner, TrainingRunner):
        raise TypeError(f"{spec} did not give a TrainingRunner (start, stop, events)")
    return runner


def serve(state_dir: Path, **kwargs) -> AdminServer:
    """Start an admin server (see AdminServer for the options) and return it."""
    return AdminServer(state_dir, **kwargs).start()
