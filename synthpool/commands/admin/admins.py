"""`synthpool admins`: list and revoke administrators' tokens and certificates, through the
admin API (`coordinator add-token`/`add-admin-cert` issue them on the coordinator host)."""

from pathlib import Path
from typing import Optional

import typer
from synthpool.common.cli_paths import path_option

from synthpool.protos import admin_pb2 as pb

from .client import api_command, command_group, fail, format_time, message_dict, print_table, show

app = command_group("List and revoke administrators' tokens and certificates.")


def _revoked(ts) -> str:
    return f"revoked {format_time(ts)}" if ts.seconds else "active"


@api_command(app, "list-tokens")
def admins_list_tokens(client, as_json):
    """List the admin bearer tokens by name (the tokens themselves are not stored)."""
    r = client.ListAdminTokens(pb.ListAdminTokensRequest())
    show(as_json, message_dict(r)["tokens"], lambda: print_table(
        [[t.name, format_time(t.created_at), _revoked(t.revoked_at)] for t in r.tokens],
        ["NAME", "CREATED (UTC)", "STATUS"]))


@api_command(app, "revoke-token")
def admins_revoke_token(client, as_json,
                        name: str = typer.Argument(..., help="The token's name (`admins "
                                                             "list-tokens`)."),
                        reason: str = typer.Option("", "--reason", help="Kept in the audit log.")):
    """Revoke an admin bearer token: refused from its next call on. Its name stays taken."""
    r = client.RevokeAdminToken(pb.RevokeAdminTokenRequest(name=name, reason=reason))
    show(as_json, message_dict(r), lambda: print(f"revoked admin token {r.name!r}"))


@api_command(app, "list-certs")
def admins_list_certs(client, as_json):
    """List the admin certificates issued with `coordinator add-admin-cert` (and init) and every
    revoked one."""
    r = client.ListAdminCertificates(pb.ListAdminCertificatesRequest())
    show(as_json, message_dict(r)["certificates"], lambda: print_table(
        [[c.name or "-", c.serial or "-", c.fingerprint or "-", format_time(c.not_after),
          _revoked(c.revoked_at)] for c in r.certificates],
        ["NAME", "SERIAL", "SHA-256 FINGERPRINT", "EXPIRES (UTC)", "STATUS"]))


@api_command(app, "revoke-cert")
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
            fail(as_json, "CONFIG", "give --pem, or --serial / --fingerprint, not both")
        try:
            serial, fingerprint, _ = certificate_ids(pem.read_bytes())
        except ValueError as e:
            fail(as_json, "CONFIG", f"--pem {pem}: expected a PEM certificate: {e}")
    if not serial and not fingerprint:
        fail(as_json, "CONFIG", "give the certificate to revoke: --pem FILE, --serial HEX or "
                                "--fingerprint HEX (`admins list-certs` shows them)")
    r = client.RevokeAdminCertificate(pb.RevokeAdminCertificateRequest(
        serial=serial, fingerprint=fingerprint, reason=reason))
    show(as_json, message_dict(r), lambda: print(
        f"revoked admin certificate {r.name or '(not issued here)'} serial {r.serial or '?'} "
        f"fingerprint {r.fingerprint or '?'}: refused from its next call on"))

