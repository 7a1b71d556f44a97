"""`synthpool coordinator`: set up and run the coordinator, on its host. The one group that
opens the state dir itself instead of going through the admin API (the package doc says why)."""

import getpass
import sys
from pathlib import Path
from typing import List, Optional

import typer
from synthpool.common.cli_paths import path_option

from .client import DEFAULT_COORDINATOR, ENV, command_group, fail, print_table, show

app = command_group("Set up and run the coordinator (on the coordinator host).")

# The state dir init made: for every command but init itself and doctor (which reports it missing).
_EXISTING_STATE_DIR = path_option(..., "--state-dir", exists=True, file_okay=False)
_DATABASE_URL = typer.Option(None, "--database-url", envvar="SYNTHPOOL_DATABASE_URL")


def _local_actor() -> str:
    """Who the audit log names for a command run on the coordinator host, past the admin API."""
    return f"local:{getpass.getuser()}"


@app.command("init")
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
        state.record_audit(_local_actor(), "CoordinatorInit",
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
    show(as_json, data, human)


def connection_environment(ca: Path, token: Optional[str],
                           coordinator: str = DEFAULT_COORDINATOR) -> dict:
    """The environment the admin CLI reads (client.py's doc lists it), for the admin API's default
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


@app.command("serve-admin")
def coordinator_serve_admin(
    state_dir: Path = _EXISTING_STATE_DIR,
    listen: str = typer.Option("127.0.0.1:50051", "--listen",
                               help="TLS port: bearer tokens and site enrollment."),
    mtls_listen: str = typer.Option("127.0.0.1:50052", "--mtls-listen",
                                    help="Mutual-TLS port for admin certificates ('' for none)."),
    database_url: Optional[str] = _DATABASE_URL,
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
            # The real backend whenever the SuperLink is known; another runner only when
            # named (--runner MODULE:NAME).
            training = runner_for_coordinator(
                state_dir, superlink_flwr_home, releases_dir=releases_dir,
                training_dir=training_dir, app_dir=app_dir,
                settings=parse_settings(run_config), run_timeout=run_timeout)
        else:
            training = None
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        fail(as_json, "CONFIG", str(e))
    try:
        server = AdminServer(state_dir, listen=listen, mtls_listen=mtls_listen or None,
                             database_url=database_url, releases_dir=releases_dir,
                             runner=training, fleet=fleet).start()
    except OSError as e:  # init's files missing; a port in use, an address not of this host
        fail(as_json, "CONFIG" if isinstance(e, FileNotFoundError) else "LISTEN", str(e))
    info = {"address": server.address, "mtls_address": server.mtls_address}
    show(as_json, info, lambda: print(f"admin API on {server.address} (TLS, tokens)"
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


@app.command("doctor")
def coordinator_doctor(
    state_dir: Path = path_option(..., "--state-dir", help="The coordinator's state folder."),
    host: List[str] = typer.Option([], "--host", help="A name sites or administrators dial "
                                   "(repeatable): the server certificate must name it."),
    database_url: Optional[str] = _DATABASE_URL,
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


@app.command("add-token")
def coordinator_add_token(
    name: str = typer.Argument(..., help="Who the token is for (shown in the audit log)."),
    state_dir: Path = _EXISTING_STATE_DIR,
    database_url: Optional[str] = _DATABASE_URL,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create another admin bearer token (printed once)."""
    from synthpool.coordinator.admin.state import AlreadyExists, State

    with State.open(state_dir, database_url) as state:
        try:
            token = state.add_admin_token(name)
        except AlreadyExists as e:
            fail(as_json, "ALREADY_EXISTS", str(e))
        state.record_audit(_local_actor(), "AddAdminToken", {"name": name}, "OK")
    show(as_json, {"name": name, "token": token}, lambda: print(
        f"{token}\n(shown once) use it as: export {ENV}TOKEN={token}"))


@app.command("list-tokens")
def coordinator_list_tokens(
    state_dir: Path = _EXISTING_STATE_DIR,
    database_url: Optional[str] = _DATABASE_URL,
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
    show(as_json, rows, lambda: print_table(
        [[t.name, stamp(t.created_at), "revoked " + stamp(t.revoked_at) if t.revoked_at
          else "active"] for t in tokens], ["NAME", "CREATED (UTC)", "STATUS"]))


@app.command("revoke-token")
def coordinator_revoke_token(
    name: str = typer.Argument(..., help="The token's name (`coordinator list-tokens`)."),
    state_dir: Path = _EXISTING_STATE_DIR,
    database_url: Optional[str] = _DATABASE_URL,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Revoke an admin bearer token: the admin API refuses it from its next call on (no
    restart needed). Its name stays taken; make a new token under another name."""
    from synthpool.coordinator.admin.state import State, StateError

    with State.open(state_dir, database_url) as state:
        try:
            state.revoke_admin_token(name)
        except StateError as e:
            state.record_audit(_local_actor(), "RevokeAdminToken", {"name": name}, e.code, str(e))
            fail(as_json, e.code, str(e))
        state.record_audit(_local_actor(), "RevokeAdminToken", {"name": name}, "OK")
    show(as_json, {"name": name, "revoked": True}, lambda: print(
        f"revoked admin token {name!r}: the admin API refuses it from now on"))


@app.command("add-admin-cert")
def coordinator_add_admin_cert(
    name: str = typer.Argument(..., help="The administrator (certificate CN, shown in the audit log)."),
    state_dir: Path = _EXISTING_STATE_DIR,
    out: Path = path_option(..., "--out", help="Folder for NAME.pem and NAME.key."),
    database_url: Optional[str] = _DATABASE_URL,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Issue another administrator's client certificate from the coordinator's CA (recorded,
    with its serial and fingerprint, for `admins list-certs` and the audit log)."""
    from synthpool.coordinator.admin.pki import CoordinatorPKI, certificate_ids, issue_admin_certificate
    from synthpool.coordinator.admin.state import State

    cert, key = out / f"{name}.pem", out / f"{name}.key"
    if cert.exists() or key.exists():
        fail(as_json, "ALREADY_EXISTS", f"{cert} or {key} exists")
    with State.open(state_dir, database_url) as state, state.audited(
            _local_actor(), "AddAdminCertificate", {"name": name, "cert": str(cert)}) as audit:
        issue_admin_certificate(CoordinatorPKI(state_dir), name, cert, key)
        ids = certificate_ids(cert.read_bytes())
        state.record_admin_certificate(name, *ids)
        audit.detail = f"serial {ids.serial}, fingerprint {ids.fingerprint}"
    show(as_json, {"cert": str(cert), "key": str(key), "serial": ids.serial,
                   "fingerprint": ids.fingerprint},
         lambda: print(f"{cert}\n{key}\nserial {ids.serial}\nfingerprint {ids.fingerprint}"))

