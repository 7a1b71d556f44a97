"""What every admin API command shares: the connection (`AdminClient`), the connection options
and `api_command` that adds them to a command, and the output helpers.

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

import inspect
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import grpc
import typer
from synthpool.common.cli_paths import path_option, token_from
from google.protobuf import json_format

from synthpool.protos import admin_pb2_grpc

DEFAULT_COORDINATOR = "127.0.0.1:50051"
ENV = "SYNTHPOOL_ADMIN_"


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


# -- command plumbing ----------------------------------------------------------------------------

def command_group(help: str) -> typer.Typer:  # noqa: A002
    """The Typer app of one command group (`synthpool sites ...`)."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help=help)
    # A callback keeps each group a group even with one command (`audit list`, not `audit`).
    app.callback()(lambda: None)
    return app


def env_option(default, *names, env: str, help: str, path: bool = False):  # noqa: A002
    """An option also read from SYNTHPOOL_ADMIN_<env> (shown in --help)."""
    make = path_option if path else typer.Option
    return make(default, *names, envvar=ENV + env, help=help, show_envvar=True)


CONNECTION_OPTIONS = [
    ("coordinator", str, env_option(DEFAULT_COORDINATOR, "--coordinator", env="COORDINATOR",
                                    help="The admin API, HOST:PORT.")),
    ("ca", Optional[Path], env_option(None, "--ca", env="CA", path=True,
                                      help="The coordinator's CA certificate (pki/ca.pem).")),
    ("token", Optional[str], env_option(None, "--token", env="TOKEN",
                                        help="Admin bearer token. On a shared host prefer the "
                                             "environment or --token-file: other users can read "
                                             "a command line.")),
    ("token_file", Optional[Path], env_option(None, "--token-file", env="TOKEN_FILE", path=True,
                                              help="A file holding the admin bearer token.")),
    ("cert", Optional[Path], env_option(None, "--cert", env="CERT", path=True,
                                        help="Admin client certificate (for the mTLS port).")),
    ("key", Optional[Path], env_option(None, "--key", env="KEY", path=True,
                                       help="Key of --cert.")),
    ("server_name", Optional[str], env_option(None, "--server-name", env="SERVER_NAME",
                                              help="Name expected in the server certificate.")),
]
JSON_OPTION = typer.Option(False, "--json", help="Machine-readable output.")


def api_command(app: typer.Typer, name: Optional[str] = None, public: bool = False):
    """Register `fn(client, as_json, ...)` as a command that also takes the connection options
    and --json, opens the client, and turns gRPC errors into a message and exit code 1."""

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn).parameters.values()
               if p.name not in ("client", "as_json")]
        extra = CONNECTION_OPTIONS + [("as_json", bool, JSON_OPTION)]
        params = own + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d,
                                          annotation=t) for n, t, d in extra]

        def command(**kwargs):
            conn = {n: kwargs.pop(n) for n, _, _ in CONNECTION_OPTIONS}
            as_json = kwargs.pop("as_json")
            try:
                conn["token"] = token_from(conn.pop("token"), conn.pop("token_file"),
                                           flag="--token", file_flag="--token-file")
            except ValueError as e:
                fail(as_json, "CONFIG", str(e))
            if conn["ca"] is None:
                fail(as_json, "CONFIG", f"--ca (or {ENV}CA) is required: the coordinator's "
                                        "CA certificate, pki/ca.pem in its state dir. "
                                        "`synthpool coordinator init` prints the "
                                        f"`export {ENV}...` lines to paste "
                                        "(deploy/OPERATOR.md, \"Connect the admin CLI\")")
            if not public and not conn["token"] and not conn["cert"]:
                fail(as_json, "CONFIG", f"an admin credential is required: --token "
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
                fail(as_json, "CONFIG", str(e))
            try:
                fn(client=client, as_json=as_json, **kwargs)
            except grpc.RpcError as e:
                fail(as_json, e.code().name, e.details() or str(e))
            finally:
                client.close()

        command.__name__ = fn.__name__
        command.__doc__ = fn.__doc__
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name or fn.__name__.replace("_", "-"))(command)
        return fn

    return decorate


# -- output --------------------------------------------------------------------------------------

def fail(as_json: bool, code: str, message: str) -> None:
    """Say what went wrong (also as JSON with --json) and exit 1."""
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    print(f"error: {code}: {message}", file=sys.stderr)
    raise typer.Exit(1)


def message_dict(message) -> dict:
    """A protobuf reply as --json prints it: every field, under its .proto name."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def show(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    """Print `data` as JSON with --json, else run `human` (the lines for people)."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        human()


def enum_name(enum, value: int, prefix: str) -> str:
    """SITE_STATUS_APPROVED -> approved."""
    return enum.Name(value).removeprefix(prefix).lower()


def format_time(ts) -> str:
    """A protobuf Timestamp as YYYY-MM-DD HH:MM:SS (UTC), '-' when unset."""
    return ts.ToJsonString()[:19].replace("T", " ") if ts.seconds else "-"


def print_table(rows: List[List[str]], header: List[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
