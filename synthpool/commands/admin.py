"""The coordinator administrator's commands: `coordinator`, `sites`, `studies`, `train`,
`releases`, `audit`, `admins`.

Why everything but `coordinator init/serve-admin/add-*` goes through the gRPC admin API and never
opens the state database: the API is where authentication and the audit log live. A command that
wrote to the database directly would be an unlogged back door, and would not work from an
administrator's laptop anyway. The `coordinator` bootstrap commands are the exception by nature:
they create the credentials the API needs, so they run on the coordinator host and need the
state dir itself (which is the root of trust).

Connection settings, on every API command and from the environment:
  --coordinator HOST:PORT   SYNTHPOOL_ADMIN_COORDINATOR   (default 127.0.0.1:50051)
  --ca FILE                 SYNTHPOOL_ADMIN_CA            the coordinator's CA certificate
  --token TOKEN             SYNTHPOOL_ADMIN_TOKEN         a bearer token (TLS port), or
  --token-file FILE         SYNTHPOOL_ADMIN_TOKEN_FILE    the same read from a file, or
  --cert FILE --key FILE    SYNTHPOOL_ADMIN_CERT/_KEY     an admin client certificate (mTLS port)
  --server-name NAME        SYNTHPOOL_ADMIN_SERVER_NAME   the name to expect in the server's
                                                          certificate, when it differs from HOST
Every command has --json (one JSON document; `train watch` writes one JSON object per line).
"""

import getpass
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, List, Optional

import grpc
import typer
from synthpool.common.cli_paths import path_option, token_from
from google.protobuf import json_format

from synthpool.protos import admin_pb2 as pb
from synthpool.protos import admin_pb2_grpc

DEFAULT_COORDINATOR = "127.0.0.1:50051"
ENV = "SYNTHPOOL_ADMIN_"

coordinator_app = typer.Typer(no_args_is_help=True, add_completion=False,
                              help="Set up and run the coordinator (on the coordinator host).")
sites_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Invite, approve and revoke sites.")
studies_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="Create and inspect studies.")
train_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Start, stop and watch training.")
releases_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="List, download and verify releases on the coordinator.")
audit_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Read the coordinator's audit log.")
admins_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="List and revoke administrators' tokens and certificates.")


# -- the client ----------------------------------------------------------------------------------

class AdminClient:
    """A TLS connection to the admin API with one admin credential (or none, for RegisterSite).

    The coordinator's CA is always pinned: an admin tool that trusted the system store would
    accept any publicly-certified impostor of the coordinator's name.
    """

    def __init__(self, coordinator: str, ca: Path, *, token: Optional[str] = None,
                 cert: Optional[Path] = None, key: Optional[Path] = None,
                 server_name: Optional[str] = None, timeout: float = 60.0) -> None:
        if (cert is None) != (key is None):
            raise ValueError("--cert and --key go together")
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(ca).read_bytes(),
            private_key=Path(key).read_bytes() if key else None,
            certificate_chain=Path(cert).read_bytes() if cert else None)
        if token:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(token))
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.channel = grpc.secure_channel(coordinator, creds, options=options)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.timeout = timeout

    def __getattr__(self, method: str) -> Callable[..., Any]:
        rpc = getattr(self.stub, method)

        def call(request, **kwargs):
            kwargs.setdefault("timeout", None if method in _STREAMING else self.timeout)
            return rpc(request, **kwargs)

        return call

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_STREAMING = {"WatchTraining", "DownloadRelease"}


def download_release(client: AdminClient, name: str, out_dir: Path) -> Path:
    """Stream release `name` into `out_dir/name`, atomically (a partial download never has the
    final name). Paths from the server are checked: nothing is written outside the folder."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists():
        raise FileExistsError(f"{final} exists")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out_dir))
    try:
        sizes: dict[str, int] = {}
        handle = None
        current = None
        for chunk in client.DownloadRelease(pb.DownloadReleaseRequest(name=name)):
            if chunk.path != current:
                if handle:
                    handle.close()
                target = tmp / _safe_relative(chunk.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = open(target, "wb")
                current = chunk.path
                sizes[current] = chunk.file_size
            handle.seek(chunk.offset)
            handle.write(chunk.data)
        if handle:
            handle.close()
        for rel, size in sizes.items():
            got = (tmp / rel).stat().st_size
            if got != size:
                raise IOError(f"{rel}: received {got} of {size} bytes")
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _safe_relative(path: str) -> Path:
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or any(part in ("..", "", ".") for part in p.parts):
        raise ValueError(f"the server sent an unsafe path {path!r}")
    return Path(*p.parts)


# -- command plumbing ----------------------------------------------------------------------------

def _opt(default, *names, env: str, help: str, path: bool = False):  # noqa: A002
    make = path_option if path else typer.Option
    return make(default, *names, envvar=ENV + env, help=help, show_envvar=True)


_CONNECTION = [
    ("coordinator", str, _opt(DEFAULT_COORDINATOR, "--coordinator", env="COORDINATOR",
                              help="The admin API, HOST:PORT.")),
    ("ca", Optional[Path], _opt(None, "--ca", env="CA", path=True,
                                help="The coordinator's CA certificate (pki/ca.pem).")),
    ("token", Optional[str], _opt(None, "--token", env="TOKEN",
                                  help="Admin bearer token. On a shared host prefer the "
                                       "environment or --token-file: other users can read a "
                                       "command line.")),
    ("token_file", Optional[Path], _opt(None, "--token-file", env="TOKEN_FILE", path=True,
                                        help="A file holding the admin bearer token.")),
    ("cert", Optional[Path], _opt(None, "--cert", env="CERT", path=True,
                                  help="Admin client certificate (for the mTLS port).")),
    ("key", Optional[Path], _opt(None, "--key", env="KEY", path=True,
                                  help="Key of --cert.")),
    ("server_name", Optional[str], _opt(None, "--server-name", env="SERVER_NAME",
                                        help="Name expected in the server certificate.")),
]
_JSON = ("as_json", bool, typer.Option(False, "--json", help="Machine-readable output."))


def _api_command(app: typer.Typer, name: Optional[str] = None, public: bool = False):
    """Register `fn(client, as_json, ...)` as a command that also takes the connection options
    and --json, opens the client, and turns gRPC errors into a message and exit code 1."""

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn).parameters.values()
               if p.name not in ("client", "as_json")]
        extra = _CONNECTION + [_JSON]
        params = own + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d,
                                          annotation=t) for n, t, d in extra]

        def command(**kwargs):
            conn = {n: kwargs.pop(n) for n, _, _ in _CONNECTION}
            as_json = kwargs.pop("as_json")
            try:
                conn["token"] = token_from(conn.pop("token"), conn.pop("token_file"),
                                           flag="--token", file_flag="--token-file")
            except ValueError as e:
                _fail(as_json, "CONFIG", str(e))
            if conn["ca"] is None:
                _fail(as_json, "CONFIG", f"--ca (or {ENV}CA) is required: the coordinator's "
                                         "CA certificate, pki/ca.pem in its state dir. "
                                         "`synthpool coordinator init` prints the "
                                         f"`export {ENV}...` lines to paste "
                                         "(deploy/OPERATOR.md, \"Connect the admin CLI\")")
            if not public and not conn["token"] and not conn["cert"]:
                _fail(as_json, "CONFIG", f"an admin credential is required: --token "
                                         f"({ENV}TOKEN) or --token-file ({ENV}TOKEN_FILE; "
                                         "`synthpool coordinator init` printed the "
                                         "first one, `coordinator add-token NAME` makes more) "
                                         f"or --cert/--key ({ENV}CERT/{ENV}KEY, pki/admin.pem "
                                         "and admin.key, on the mTLS port 50052)")
            try:
                client = AdminClient(conn["coordinator"], conn["ca"],
                                     token=None if public else conn["token"],
                                     cert=None if public else conn["cert"],
                                     key=None if public else conn["key"],
                                     server_name=conn["server_name"])
            except (OSError, ValueError) as e:
                _fail(as_json, "CONFIG", str(e))
            try:
                fn(client=client, as_json=as_json, **kwargs)
            except grpc.RpcError as e:
                _fail(as_json, e.code().name, e.details() or str(e))
            finally:
                client.close()

        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name or fn.__name__.replace("_", "-"))(command)
        return fn

    return decorate


def _fail(as_json: bool, code: str, message: str) -> None:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    print(f"error: {code}: {message}", file=sys.stderr)
    raise typer.Exit(1)


def _dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _out(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        human()


def _enum(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _when(ts) -> str:
    return ts.ToJsonString()[:19].replace("T", " ") if ts.seconds else "-"


def _table(rows: List[List[str]], header: List[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


# -- coordinator (local bootstrap) ---------------------------------------------------------------

@coordinator_app.callback()
def _coordinator() -> None:
    """Set up and run the coordinator (on the coordinator host)."""


@coordinator_app.command("init")
def coordinator_init(
    state_dir: Path = path_option(..., "--state-dir", help="The coordinator's state folder."),
    host: List[str] = typer.Option([], "--host", help="A name or IP the coordinator is reached "
                                   "by (repeatable); localhost and 127.0.0.1 are always included."),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL",
                                               help="PostgreSQL URL (default: SQLite in the "
                                                    "state dir)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create the CA, the server and admin certificates, the release-signing key, the state
    database and a first admin token (printed once). Safe to re-run: keeps what exists."""
    from synthpool.coordinator.admin.pki import certificate_ids, init_coordinator
    from synthpool.coordinator.admin.state import AlreadyExists, State

    pki = init_coordinator(state_dir, host)
    with State.open(state_dir, database_url) as state:
        try:
            token = state.add_admin_token("admin")
        except AlreadyExists:
            token = None
        # Recorded like add-admin-cert's, so `admins list-certs` names it with its serial.
        state.record_admin_certificate("admin", *certificate_ids(pki.admin_cert.read_bytes()))
        state.record_audit(f"local:{getpass.getuser()}", "CoordinatorInit",
                           {"hosts": host, "admin_token_created": token is not None}, "OK")
    data = {"state_dir": str(state_dir), **pki.as_dict(), "admin_token": token,
            "environment": connection_environment(pki.ca_cert, token)}

    def human() -> None:
        print(f"coordinator initialised in {state_dir}")
        for k, v in pki.as_dict().items():
            print(f"  {k:20} {v}")
        if token:
            print(f"admin token 'admin' (shown once, store it safely): {token}")
        else:
            print("admin token 'admin' already exists (not shown again; make another with "
                  f"`synthpool coordinator add-token NAME --state-dir {state_dir}`)")
        print()
        print(connection_instructions(pki, token))
    _out(as_json, data, human)


def connection_environment(ca: Path, token: Optional[str],
                           coordinator: str = DEFAULT_COORDINATOR) -> dict:
    """The environment the admin CLI reads (see the module doc), for the admin API's default
    address on this host."""
    env = {ENV + "COORDINATOR": coordinator, ENV + "CA": str(ca)}
    if token:
        env[ENV + "TOKEN"] = token
    return env


def connection_instructions(pki, token: Optional[str]) -> str:
    """What `coordinator init` prints after the files: the exact lines that make every admin
    command (`sites`, `studies`, `train`, `releases`, `audit`) work on this host."""
    import shlex

    lines = ["The admin CLI (sites, studies, train, releases, audit) talks to the admin API "
             "(`synthpool coordinator serve-admin`, 127.0.0.1:50051 by default). Paste these "
             "lines into the shell you run it from:"]
    for name, value in connection_environment(pki.ca_cert, token).items():
        lines.append(f"export {name}={shlex.quote(value)}")
    if not token:
        lines.append(f"export {ENV}TOKEN=...   # the token you stored, or a new one from "
                     "`synthpool coordinator add-token NAME`")
    lines += [
        "Or, instead of the token, the admin certificate on the mTLS port:",
        f"export {ENV}COORDINATOR=127.0.0.1:50052 {ENV}CERT={shlex.quote(str(pki.admin_cert))} "
        f"{ENV}KEY={shlex.quote(str(pki.admin_key))}",
        f"{pki.pki_dir} is readable by this account only: another account (or another host) "
        "needs its own copy of ca.pem, e.g. `install -m 0644 "
        f"{shlex.quote(str(pki.ca_cert))} /etc/synthpool/ca.pem`, and "
        f"{ENV}CA pointing at that copy. From another host, {ENV}COORDINATOR is "
        "HOST:50051 with a HOST given to `init --host` (and serve-admin --listen on it).",
    ]
    return "\n".join(lines)


@coordinator_app.command("serve-admin")
def coordinator_serve_admin(
    state_dir: Path = path_option(..., "--state-dir", exists=True, file_okay=False),
    listen: str = typer.Option("127.0.0.1:50051", "--listen",
                               help="TLS port: bearer tokens and site enrollment."),
    mtls_listen: str = typer.Option("127.0.0.1:50052", "--mtls-listen",
                                    help="Mutual-TLS port for admin certificates ('' for none)."),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL"),
    releases_dir: Optional[Path] = path_option(None, "--releases-dir",
                                                help="Default: STATE_DIR/releases."),
    runner: Optional[str] = typer.Option(None, "--runner",
                                         help="MODULE:NAME of another training runner (default: "
                                              "Flower runs on the SuperLink of "
                                              "--superlink-flwr-home; none without it)."),
    superlink_flwr_home: Optional[Path] = path_option(
        None, "--superlink-flwr-home", file_okay=False,
        help="A FLWR_HOME whose config.toml names the SuperLink (connection 'synthpool'): "
             "approving a site then admits its key to the SuperLink, revoking shuts it out, "
             "and `train start` submits the study as a Flower run there."),
    training_dir: Optional[Path] = path_option(
        None, "--training-dir", file_okay=False,
        help="Where each training's ServerApp reads its schema and writes checkpoints and its "
             "unsigned release (default: STATE_DIR/training); with separate accounts, a folder "
             "of the SuperLink account's group (deploy/OPERATOR.md)."),
    app_dir: Optional[Path] = path_option(
        None, "--app-dir", file_okay=False,
        help="The config-only Flower app to submit (default: deploy/app of this checkout; "
             "the coordinator image has it at /opt/synthpool/app)."),
    run_config: List[str] = typer.Option(
        [], "--run-config", help="KEY=VALUE training setting for every study's Flower run "
                                 "(repeatable), e.g. local-steps=160, family=cvae, "
                                 "model.hidden=256 (a family's hyperparameter), evaluate=false, "
                                 "min-sites=2. The study's own settings cannot be overridden."),
    run_timeout: Optional[float] = typer.Option(
        None, "--run-timeout", help="Stop and fail a training still running after this many "
                                    "seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the bound addresses as JSON."),
) -> None:
    """Serve the admin API until interrupted."""
    import logging
    import signal

    from synthpool.coordinator.admin.server import AdminServer, load_runner

    # force: opacus calls basicConfig at import (WARNING), which would make this one a no-op.
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from synthpool.coordinator.admin.flower_processes import SuperLinkAccess
    from synthpool.coordinator.admin.flower_runner import parse_settings, runner_for_coordinator

    from synthpool.coordinator.admin.pki import CoordinatorPKI
    from synthpool.doctor import RENEW_CA, RENEW_SERVER, expiry_warning

    pki = CoordinatorPKI(state_dir)
    for path, what, renew in ((pki.server_cert, "the server certificate", RENEW_SERVER),
                              (pki.ca_cert, "the CA certificate", RENEW_CA)):
        warning = expiry_warning(path, what, renew)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    fleet = SuperLinkAccess(superlink_flwr_home) if superlink_flwr_home else None
    try:
        if runner:
            training = load_runner(runner)
        elif superlink_flwr_home:
            # The real backend whenever the SuperLink is known; InMemoryRunner (which trains
            # nothing) only when asked for by name, for trying the API.
            training = runner_for_coordinator(
                state_dir, superlink_flwr_home, releases_dir=releases_dir,
                training_dir=training_dir, app_dir=app_dir,
                settings=parse_settings(run_config), run_timeout=run_timeout)
        else:
            training = None
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        _fail(as_json, "CONFIG", str(e))
    try:
        server = AdminServer(state_dir, listen=listen, mtls_listen=mtls_listen or None,
                             database_url=database_url, releases_dir=releases_dir,
                             runner=training, fleet=fleet).start()
    except OSError as e:  # init's files missing; a port in use, an address not of this host
        _fail(as_json, "CONFIG" if isinstance(e, FileNotFoundError) else "LISTEN", str(e))
    info = {"address": server.address, "mtls_address": server.mtls_address}
    _out(as_json, info, lambda: print(f"admin API on {server.address} (TLS, tokens)"
                                      + (f" and {server.mtls_address} (mTLS, certificates)"
                                         if server.mtls_address else ""), flush=True))
    if not as_json and superlink_flwr_home and not runner:
        # What every `train start` will pass: the operator's only feedback on --run-config.
        print("training settings for every study (--run-config): "
              + (" ".join(run_config) if run_config else "the app's defaults (none given)"),
              flush=True)
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(2))
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop(2)
    finally:
        if hasattr(training, "close"):
            training.close()


@coordinator_app.command("doctor")
def coordinator_doctor(
    state_dir: Path = path_option(..., "--state-dir", help="The coordinator's state folder."),
    host: List[str] = typer.Option([], "--host", help="A name sites or administrators dial "
                                   "(repeatable): the server certificate must name it."),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL"),
    listen: str = typer.Option("127.0.0.1:50051", "--listen",
                               help="serve-admin's --listen (the TLS port)."),
    mtls_listen: str = typer.Option("127.0.0.1:50052", "--mtls-listen",
                                    help="serve-admin's --mtls-listen ('' for none)."),
    offline: bool = typer.Option(False, "--offline",
                                 help="Do not ask the SuperLink which keys it holds."),
    superlink_flwr_home: Optional[Path] = path_option(
        None, "--superlink-flwr-home", file_okay=False,
        help="serve-admin's --superlink-flwr-home (default: STATE_DIR/cli-home)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check the coordinator (on its host, as its account): files and key modes, certificates
    (names, expiry; a warning under 30 days), the release key pair, admin tokens, sites
    (approved, registered at the SuperLink, waiting), studies (trained once = budget spent),
    and the admin API and SuperLink ports. Exit 1 if a check failed."""
    from synthpool.doctor import coordinator_checks, report

    findings = coordinator_checks(state_dir, hosts=host, database_url=database_url,
                                  listen=listen, mtls_listen=mtls_listen, online=not offline,
                                  flwr_home=superlink_flwr_home)
    raise typer.Exit(report(f"synthpool coordinator doctor: {state_dir}", findings, as_json))


@coordinator_app.command("add-token")
def coordinator_add_token(
    name: str = typer.Argument(..., help="Who the token is for (shown in the audit log)."),
    state_dir: Path = path_option(..., "--state-dir", exists=True, file_okay=False),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create another admin bearer token (printed once)."""
    from synthpool.coordinator.admin.state import AlreadyExists, State

    with State.open(state_dir, database_url) as state:
        try:
            token = state.add_admin_token(name)
        except AlreadyExists as e:
            _fail(as_json, "ALREADY_EXISTS", str(e))
        state.record_audit(f"local:{getpass.getuser()}", "AddAdminToken",
                           {"name": name}, "OK")
    _out(as_json, {"name": name, "token": token}, lambda: print(
        f"{token}\n(shown once) use it as: export {ENV}TOKEN={token}"))


@coordinator_app.command("list-tokens")
def coordinator_list_tokens(
    state_dir: Path = path_option(..., "--state-dir", exists=True, file_okay=False),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the admin bearer tokens by name (the tokens themselves are not stored)."""
    from synthpool.coordinator.admin.state import State

    with State.open(state_dir, database_url) as state:
        tokens = state.list_admin_tokens()
    rows = [{"name": t.name, "created_at": t.created_at, "revoked_at": t.revoked_at}
            for t in tokens]

    def stamp(t: Optional[float]) -> str:
        import time

        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    _out(as_json, rows, lambda: _table(
        [[t.name, stamp(t.created_at), "revoked " + stamp(t.revoked_at) if t.revoked_at
          else "active"] for t in tokens], ["NAME", "CREATED (UTC)", "STATUS"]))


@coordinator_app.command("revoke-token")
def coordinator_revoke_token(
    name: str = typer.Argument(..., help="The token's name (`coordinator list-tokens`)."),
    state_dir: Path = path_option(..., "--state-dir", exists=True, file_okay=False),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Revoke an admin bearer token: the admin API refuses it from its next call on (no
    restart needed). Its name stays taken; make a new token under another name."""
    from synthpool.coordinator.admin.state import State, StateError

    with State.open(state_dir, database_url) as state:
        try:
            state.revoke_admin_token(name)
        except StateError as e:
            state.record_audit(f"local:{getpass.getuser()}", "RevokeAdminToken",
                               {"name": name}, e.code, str(e))
            _fail(as_json, e.code, str(e))
        state.record_audit(f"local:{getpass.getuser()}", "RevokeAdminToken",
                           {"name": name}, "OK")
    _out(as_json, {"name": name, "revoked": True}, lambda: print(
        f"revoked admin token {name!r}: the admin API refuses it from now on"))


@coordinator_app.command("add-admin-cert")
def coordinator_add_admin_cert(
    name: str = typer.Argument(..., help="The administrator (certificate CN, shown in the audit log)."),
    state_dir: Path = path_option(..., "--state-dir", exists=True, file_okay=False),
    out: Path = path_option(..., "--out", help="Folder for NAME.pem and NAME.key."),
    database_url: Optional[str] = typer.Option(None, "--database-url",
                                               envvar="SYNTHPOOL_DATABASE_URL"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Issue another administrator's client certificate from the coordinator's CA (recorded,
    with its serial and fingerprint, for `admins list-certs` and the audit log)."""
    from synthpool.coordinator.admin.pki import CoordinatorPKI, certificate_ids, issue_admin_certificate
    from synthpool.coordinator.admin.state import State

    cert, key = out / f"{name}.pem", out / f"{name}.key"
    if cert.exists() or key.exists():
        _fail(as_json, "ALREADY_EXISTS", f"{cert} or {key} exists")
    with State.open(state_dir, database_url) as state, state.audited(
            f"local:{getpass.getuser()}", "AddAdminCertificate",
            {"name": name, "cert": str(cert)}) as audit:
        issue_admin_certificate(CoordinatorPKI(state_dir), name, cert, key)
        ids = certificate_ids(cert.read_bytes())
        state.record_admin_certificate(name, *ids)
        audit.detail = f"serial {ids.serial}, fingerprint {ids.fingerprint}"
    _out(as_json, {"cert": str(cert), "key": str(key), "serial": ids.serial,
                   "fingerprint": ids.fingerprint},
         lambda: print(f"{cert}\n{key}\nserial {ids.serial}\nfingerprint {ids.fingerprint}"))


# -- API groups ----------------------------------------------------------------------------------

for _app in (sites_app, studies_app, train_app, releases_app, audit_app, admins_app):
    # A callback keeps each group a group even with one command (`audit list`, not `audit`).
    _app.callback()(lambda: None)


# -- sites ---------------------------------------------------------------------------------------

def _site_row(s) -> List[str]:
    return [s.name, _enum(pb.SiteStatus, s.status, "SITE_STATUS_"),
            s.public_key_fingerprint or "-", _when(s.token_expires_at),
            _when(s.approved_at)]


@_api_command(sites_app, "invite")
def sites_invite(client, as_json,
                 name: str = typer.Argument(..., help="The site's name."),
                 ttl: int = typer.Option(24 * 3600, "--ttl", help="Token lifetime, seconds.")):
    """Invite a site: prints a one-time enrollment token to hand to the site's administrator."""
    r = client.InviteSite(pb.InviteSiteRequest(name=name, ttl_seconds=ttl))
    _out(as_json, _dict(r), lambda: print(
        f"invited {name}; token (one use, expires {_when(r.site.token_expires_at)} UTC):\n"
        f"{r.token}"))


@_api_command(sites_app, "list")
def sites_list(client, as_json):
    """List sites and their status."""
    r = client.ListSites(pb.ListSitesRequest())
    _out(as_json, _dict(r)["sites"], lambda: _table(
        [_site_row(s) for s in r.sites], ["NAME", "STATUS", "KEY", "TOKEN EXPIRES", "APPROVED"]))


@_api_command(sites_app, "approve")
def sites_approve(client, as_json,
                  name: str = typer.Argument(...),
                  fingerprint: str = typer.Option(..., "--fingerprint",
                                                  help="The fingerprint the site's "
                                                       "administrator read out to you (by phone, "
                                                       "never from the same channel as the "
                                                       "key): approval fails unless the "
                                                       "registered key has it, also for a site "
                                                       "approved before.")):
    """Approve a registered site's key, after checking its fingerprint with the site."""
    fingerprint = fingerprint.strip()
    if not fingerprint:
        _fail(as_json, "CONFIG", "--fingerprint must not be empty: ask the site for the "
                                 "fingerprint `synthpool-agent enroll` printed")
    r = client.ApproveSite(pb.ApproveSiteRequest(name=name, expected_fingerprint=fingerprint))
    _out(as_json, _dict(r), lambda: print(f"approved {r.name} (key {r.public_key_fingerprint})"))


@_api_command(sites_app, "revoke")
def sites_revoke(client, as_json,
                 name: str = typer.Argument(...),
                 reason: str = typer.Option("", "--reason")):
    """Revoke a site (its key and any pending invitation stop working)."""
    r = client.RevokeSite(pb.RevokeSiteRequest(name=name, reason=reason))
    _out(as_json, _dict(r), lambda: print(f"revoked {r.name}"))


@_api_command(sites_app, "register", public=True)
def sites_register(client, as_json,
                   invite_token: str = typer.Option(..., "--invite-token", envvar="SYNTHPOOL_INVITE_TOKEN",
                                             help="The one-time token from `sites invite`."),
                   public_key: Path = path_option(..., "--public-key", exists=True,
                                                   dir_okay=False,
                                                   help="The site's EC public key (OpenSSH or "
                                                        "PEM).")):
    """(Run at a site) enroll with an invitation token; needs only --ca and --coordinator."""
    r = client.RegisterSite(pb.RegisterSiteRequest(token=invite_token,
                                                   public_key=public_key.read_text()))
    _out(as_json, _dict(r), lambda: print(
        f"registered {r.site.name} with key {r.site.public_key_fingerprint}; "
        "ask the coordinator's administrator to approve it"))


# -- studies -------------------------------------------------------------------------------------

_POPULATION = {"disjoint": pb.POPULATION_DISJOINT, "overlapping": pb.POPULATION_OVERLAPPING}


def _study_row(s) -> List[str]:
    p = s.privacy
    return [s.name, _enum(pb.StudyStatus, s.status, "STUDY_STATUS_"),
            f"{p.epsilon:g}", f"{p.delta:g}", _enum(pb.Population, p.population, "POPULATION_"),
            str(p.rounds), str(p.rows), f"{s.release_epsilon:g}"]


@_api_command(studies_app, "create")
def studies_create(client, as_json,
                   name: Optional[str] = typer.Argument(None, help="Default: the schema's name."),
                   schema: Path = path_option(..., "--schema", exists=True, dir_okay=False),
                   epsilon: float = typer.Option(..., "--epsilon", help="Budget per site."),
                   delta: float = typer.Option(..., "--delta", help="Per site."),
                   population: str = typer.Option("overlapping", "--population",
                                                  help="disjoint (a person is at one site only: "
                                                       "release epsilon = max) or overlapping "
                                                       "(sum; the safe default)."),
                   rounds: int = typer.Option(3, "--rounds", min=1),
                   rows: int = typer.Option(10000, "--rows", min=1,
                                            help="Synthetic rows to release."),
                   site: List[str] = typer.Option([], "--site",
                                                  help="A participating site (repeatable); "
                                                       "default: every approved site.")):
    """Create a study from a schema file and privacy settings."""
    import yaml

    if population not in _POPULATION:
        raise typer.BadParameter("disjoint or overlapping", param_hint="--population")
    text = schema.read_text()
    if name is None:
        try:
            name = (yaml.safe_load(text) or {}).get("name")
        except (yaml.YAMLError, AttributeError):
            name = None
        if not name:
            raise typer.BadParameter("give a study name (the schema has none)", param_hint="NAME")
    r = client.CreateStudy(pb.CreateStudyRequest(
        name=name, schema_yaml=text, sites=site,
        privacy=pb.PrivacySettings(epsilon=epsilon, delta=delta,
                                   population=_POPULATION[population], rounds=rounds, rows=rows)))
    data = _dict(r)
    data.pop("schema_yaml", None)
    _out(as_json, data, lambda: print(
        f"created study {r.name} (schema {r.schema_fingerprint}); release guarantee with the "
        f"current sites: epsilon {r.release_epsilon:g}, delta {r.release_delta:g}"))


@_api_command(studies_app, "list")
def studies_list(client, as_json):
    """List studies."""
    r = client.ListStudies(pb.ListStudiesRequest())
    _out(as_json, [{k: v for k, v in d.items() if k != "schema_yaml"}
                   for d in _dict(r)["studies"]], lambda: _table(
        [_study_row(s) for s in r.studies],
        ["NAME", "STATUS", "EPSILON", "DELTA", "POPULATION", "ROUNDS", "ROWS", "RELEASE EPS"]))


@_api_command(studies_app, "get")
def studies_get(client, as_json,
                name: str = typer.Argument(...),
                schema_out: Optional[Path] = path_option(None, "--schema-out",
                                                          help="Write the study's schema here.")):
    """Show one study (and optionally save its schema)."""
    r = client.GetStudy(pb.GetStudyRequest(name=name))
    if schema_out:
        schema_out.write_text(r.schema_yaml)

    def human() -> None:
        _table([_study_row(r)], ["NAME", "STATUS", "EPSILON", "DELTA", "POPULATION", "ROUNDS",
                                 "ROWS", "RELEASE EPS"])
        print(f"schema {r.schema_fingerprint}; sites: {', '.join(r.sites) or 'all approved'}")
        if r.HasField("latest_run"):
            print(f"latest run {r.latest_run.id}: "
                  f"{_enum(pb.RunStatus, r.latest_run.status, 'RUN_STATUS_')} "
                  f"{r.latest_run.message}".rstrip())
    _out(as_json, _dict(r), human)


# -- training ------------------------------------------------------------------------------------

def _run_text(r) -> str:
    return f"run {r.id} of {r.study}: {_enum(pb.RunStatus, r.status, 'RUN_STATUS_')}" + \
        (f" ({r.message})" if r.message else "")


@_api_command(train_app, "start")
def train_start(client, as_json, study: str = typer.Argument(...)):
    """Start training a study."""
    r = client.StartTraining(pb.StartTrainingRequest(study=study))
    _out(as_json, _dict(r), lambda: print(_run_text(r)))


@_api_command(train_app, "stop")
def train_stop(client, as_json, study: str = typer.Argument(...)):
    """Stop a study's running training."""
    r = client.StopTraining(pb.StopTrainingRequest(study=study))
    _out(as_json, _dict(r), lambda: print(_run_text(r)))


@_api_command(train_app, "watch")
def train_watch(client, as_json,
                study: str = typer.Argument(...),
                run_id: int = typer.Option(0, "--run", help="Default: the latest run."),
                after: int = typer.Option(0, "--after", help="Only events after this seq.")):
    """Follow a run's progress until it ends; exit 1 if it failed."""
    last = None
    lines = WatchLines()
    for ev in client.WatchTraining(pb.WatchTrainingRequest(study=study, run_id=run_id,
                                                           after_seq=after)):
        last = ev.kind
        if as_json:
            print(json.dumps(_dict(ev), sort_keys=True), flush=True)
        else:
            line = lines.line(ev)
            if line is not None:
                print(line, flush=True)
    if last == "failed":
        if not as_json:
            for hint in lines.hints(study):
                print(hint, flush=True)
        raise typer.Exit(1)


class WatchLines:
    """`train watch`'s human lines: each round with every site's epsilon (what its ledger
    reported) and the release's, and a SecAgg+ protocol stage only when it changes (Flower's
    workflow may enter one stage several times; the repeats say nothing new)."""

    def __init__(self) -> None:
        self._stage: Optional[tuple] = None
        self.spent: set[str] = set()      # sites that refused: the study's cap is reached
        self.no_budget: set[str] = set()  # sites that refused: no [budgets.STUDY] table

    def line(self, ev) -> Optional[str]:
        try:
            details = json.loads(ev.details_json or "{}")
        except ValueError:
            details = {}
        if not isinstance(details, dict):
            details = {}
        if details.get("event") == "site_refused":
            reason, site = str(details.get("reason", "")), str(details.get("site", "?"))
            if " > cap " in reason:          # agent/ledger.py's BudgetExceeded
                self.spent.add(site)
            elif "no privacy budget configured" in reason:   # agent/ledger.py's NoBudget
                self.no_budget.add(site)
        where = f"round {ev.round}" if ev.kind == "round" else ev.kind
        text = ev.message
        if details.get("event") == "secagg_stage":
            stage = (ev.round, details.get("stage"))
            if stage == self._stage:
                return None
            self._stage = stage
            where = f"round {ev.round}"
            text = (f"SecAgg+ stage {details.get('stage', '?')} with "
                    f"{len(details.get('nodes') or [])} site(s)")
        elif ev.kind == "round":
            text += _epsilon_text(details)
        return f"{_when(ev.at)}  {where:>10}  {text}"

    def hints(self, study: str) -> list[str]:
        """What to do after a run that failed on the sites' budgets (OPERATOR.md, "Run a study")."""
        out = []
        if self.spent:
            sites = ", ".join(sorted(self.spent))
            out.append(f"the budget of study {study!r} is spent at {sites}: "
                       "a study's epsilon serves one training, and training it again is refused. "
                       "A new training needs a new study (`synthpool studies create NEWNAME ...`) "
                       "and a [budgets.NEWNAME] table in every site's site.toml, each agent then "
                       "restarted (OPERATOR.md, \"Run a study\")")
        if self.no_budget:
            out.append(f"no [budgets.{study}] table at {', '.join(sorted(self.no_budget))}: each "
                       "site's administrator adds one to site.toml (the cap they agree to) and "
                       "restarts the agent")
        return out


def _epsilon_text(details: dict) -> str:
    by_site = details.get("epsilon_by_site") or {}
    if not isinstance(by_site, dict) or not by_site:
        return ""
    sites = ", ".join(f"{name} {float(eps):.3f}" for name, eps in sorted(by_site.items()))
    out = f"; epsilon spent: {sites}"
    if details.get("epsilon_spent") is not None:
        out += f" (release {float(details['epsilon_spent']):.3f})"
    return out


# -- releases ------------------------------------------------------------------------------------

@_api_command(releases_app, "list")
def releases_list(client, as_json, study: str = typer.Option("", "--study")):
    """List releases (optionally of one study)."""
    r = client.ListReleases(pb.ListReleasesRequest(study=study))

    def human() -> None:
        _table([[x.name, x.study or "-", _when(x.created_at), str(x.files), str(x.bytes)]
                for x in r.releases], ["NAME", "STUDY", "CREATED", "FILES", "BYTES"])
        if r.releases:
            print(RELEASE_FILES_NOTE)
    _out(as_json, _dict(r)["releases"], human)


def _files(n: int) -> str:
    return "the 1 file" if n == 1 else f"the {n} files"


def _match(n: int) -> str:
    return "matches its hash" if n == 1 else "match their hashes"


#: How `releases list` and `releases verify`/`download` count files, said by both.
RELEASE_FILES_NOTE = ("FILES counts every file of the release, manifest.json and manifest.sig "
                      "included; `releases verify` counts the files the signed manifest lists "
                      "(all but those two).")


@_api_command(releases_app, "download")
def releases_download(client, as_json,
                      name: str = typer.Argument(...),
                      out: Path = path_option(Path("."), "--out",
                                               help="Folder to download into (as OUT/NAME)."),
                      public_key: Optional[Path] = path_option(
                          None, "--public-key", exists=True, dir_okay=False,
                          help="Verify the download with the coordinator's release key.")):
    """Download a release; with --public-key, verify its signature and hashes locally."""
    try:
        folder = download_release(client, name, out)
    except (OSError, ValueError) as e:
        _fail(as_json, "DOWNLOAD", str(e))
    data: dict = {"path": str(folder)}
    if public_key:
        from synthpool.common.signing import load_public_key, verify

        result = verify(folder, load_public_key(public_key))
        data["verification"] = {"ok": result.ok, "problems": result.problems,
                                "files_checked": result.files_checked}
    _out(as_json, data, lambda: print(
        f"downloaded {name} to {folder}" + (
            "" if not public_key else
            f"; signature OK and {_files(data['verification']['files_checked'])} the "
            f"manifest lists {_match(data['verification']['files_checked'])} (manifest.json "
            "and manifest.sig not counted)"
            if data["verification"]["ok"] else
            "; VERIFICATION FAILED:\n  " + "\n  ".join(data["verification"]["problems"]))))
    if public_key and not data["verification"]["ok"]:
        raise typer.Exit(1)


@_api_command(releases_app, "verify")
def releases_verify(client, as_json, name: str = typer.Argument(...)):
    """Have the coordinator check a release's signature and hashes; exit 1 if they fail."""
    r = client.VerifyRelease(pb.VerifyReleaseRequest(name=name))
    _out(as_json, _dict(r), lambda: print(
        f"OK: signature valid; {_files(r.files_checked)} the signed manifest lists "
        f"{_match(r.files_checked)} (manifest.json and manifest.sig themselves not counted: `releases list` "
        f"shows {r.files_checked + 2})" if r.ok else
        "FAILED:\n  " + "\n  ".join(r.problems)))
    if not r.ok:
        raise typer.Exit(1)


# -- audit ---------------------------------------------------------------------------------------

@_api_command(audit_app, "list")
def audit_list(client, as_json,
               after: int = typer.Option(0, "--after", help="Entries after this id."),
               limit: int = typer.Option(100, "--limit")):
    """Show audit entries, oldest first."""
    r = client.ListAudit(pb.ListAuditRequest(after_id=after, limit=limit))
    _out(as_json, _dict(r)["entries"], lambda: _table(
        [[str(e.id), _when(e.at), e.actor, e.action, e.outcome, e.detail] for e in r.entries],
        ["ID", "AT", "ACTOR", "ACTION", "OUTCOME", "DETAIL"]))


# -- administrators ------------------------------------------------------------------------------

def _revoked(ts) -> str:
    return f"revoked {_when(ts)}" if ts.seconds else "active"


@_api_command(admins_app, "list-tokens")
def admins_list_tokens(client, as_json):
    """List the admin bearer tokens by name (the tokens themselves are not stored)."""
    r = client.ListAdminTokens(pb.ListAdminTokensRequest())
    _out(as_json, _dict(r)["tokens"], lambda: _table(
        [[t.name, _when(t.created_at), _revoked(t.revoked_at)] for t in r.tokens],
        ["NAME", "CREATED (UTC)", "STATUS"]))


@_api_command(admins_app, "revoke-token")
def admins_revoke_token(client, as_json,
                        name: str = typer.Argument(..., help="The token's name (`admins "
                                                             "list-tokens`)."),
                        reason: str = typer.Option("", "--reason", help="Kept in the audit log.")):
    """Revoke an admin bearer token: refused from its next call on. Its name stays taken."""
    r = client.RevokeAdminToken(pb.RevokeAdminTokenRequest(name=name, reason=reason))
    _out(as_json, _dict(r), lambda: print(f"revoked admin token {r.name!r}"))


@_api_command(admins_app, "list-certs")
def admins_list_certs(client, as_json):
    """List the admin certificates issued with `coordinator add-admin-cert` (and init) and every
    revoked one."""
    r = client.ListAdminCertificates(pb.ListAdminCertificatesRequest())
    _out(as_json, _dict(r)["certificates"], lambda: _table(
        [[c.name or "-", c.serial or "-", c.fingerprint or "-", _when(c.not_after),
          _revoked(c.revoked_at)] for c in r.certificates],
        ["NAME", "SERIAL", "SHA-256 FINGERPRINT", "EXPIRES (UTC)", "STATUS"]))


@_api_command(admins_app, "revoke-cert")
def admins_revoke_cert(client, as_json,
                       pem: Optional[Path] = path_option(
                           None, "--pem", exists=True, dir_okay=False,
                           help="The certificate to revoke (its serial and fingerprint are read "
                                "from it)."),
                       serial: str = typer.Option("", "--serial",
                                                  help="Or its serial, in hex."),
                       fingerprint: str = typer.Option("", "--fingerprint",
                                                       help="Or its SHA-256 fingerprint, in "
                                                            "hex."),
                       reason: str = typer.Option("", "--reason", help="Kept with the entry.")):
    """Put an admin client certificate on the deny list: every call presenting it is refused
    from then on (the TLS handshake still succeeds; certificates cannot be withdrawn there)."""
    if pem is not None:
        from synthpool.coordinator.admin.pki import certificate_ids

        if serial or fingerprint:
            _fail(as_json, "CONFIG", "give --pem, or --serial / --fingerprint, not both")
        try:
            serial, fingerprint, _ = certificate_ids(pem.read_bytes())
        except ValueError as e:
            _fail(as_json, "CONFIG", f"--pem {pem}: expected a PEM certificate: {e}")
    if not serial and not fingerprint:
        _fail(as_json, "CONFIG", "give the certificate to revoke: --pem FILE, --serial HEX or "
                                 "--fingerprint HEX (`admins list-certs` shows them)")
    r = client.RevokeAdminCertificate(pb.RevokeAdminCertificateRequest(
        serial=serial, fingerprint=fingerprint, reason=reason))
    _out(as_json, _dict(r), lambda: print(
        f"revoked admin certificate {r.name or '(not issued here)'} serial {r.serial or '?'} "
        f"fingerprint {r.fingerprint or '?'}: refused from its next call on"))


#: (name, app) pairs for synthpool/cli.py to register.
APPS = (("coordinator", coordinator_app), ("sites", sites_app), ("studies", studies_app),
        ("train", train_app), ("releases", releases_app), ("audit", audit_app),
        ("admins", admins_app))

