"""`synthpool sites`: invite, approve and revoke sites; `sites register` runs at a site."""

from pathlib import Path
from typing import List

import typer
from synthpool.common.cli_paths import path_option

from synthpool.protos import admin_pb2 as pb

from .client import (api_command, command_group, enum_name, fail, format_time, message_dict,
                     print_table, show)

app = command_group("Invite, approve and revoke sites.")


def _site_row(s) -> List[str]:
    return [s.name, enum_name(pb.SiteStatus, s.status, "SITE_STATUS_"),
            s.public_key_fingerprint or "-", format_time(s.token_expires_at),
            format_time(s.approved_at)]


@api_command(app, "invite")
def sites_invite(client, as_json,
                 name: str = typer.Argument(..., help="The site's name."),
                 ttl: int = typer.Option(24 * 3600, "--ttl", help="Token lifetime, seconds.")):
    """Invite a site: prints a one-time enrollment token to hand to the site's administrator."""
    r = client.InviteSite(pb.InviteSiteRequest(name=name, ttl_seconds=ttl))
    show(as_json, message_dict(r), lambda: print(
        f"invited {name}; token (one use, expires {format_time(r.site.token_expires_at)} UTC):\n"
        f"{r.token}"))


@api_command(app, "list")
def sites_list(client, as_json):
    """List sites and their status."""
    r = client.ListSites(pb.ListSitesRequest())
    show(as_json, message_dict(r)["sites"], lambda: print_table(
        [_site_row(s) for s in r.sites], ["NAME", "STATUS", "KEY", "TOKEN EXPIRES", "APPROVED"]))


@api_command(app, "approve")
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
        fail(as_json, "CONFIG", "--fingerprint must not be empty: ask the site for the "
                                "fingerprint `synthpool-agent enroll` printed")
    r = client.ApproveSite(pb.ApproveSiteRequest(name=name, expected_fingerprint=fingerprint))
    show(as_json, message_dict(r), lambda: print(
        f"approved {r.name} (key {r.public_key_fingerprint})"))


@api_command(app, "revoke")
def sites_revoke(client, as_json,
                 name: str = typer.Argument(...),
                 reason: str = typer.Option("", "--reason")):
    """Revoke a site (its key and any pending invitation stop working)."""
    r = client.RevokeSite(pb.RevokeSiteRequest(name=name, reason=reason))
    show(as_json, message_dict(r), lambda: print(f"revoked {r.name}"))


@api_command(app, "register", public=True)
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
    show(as_json, message_dict(r), lambda: print(
        f"registered {r.site.name} with key {r.site.public_key_fingerprint}; "
        "ask the coordinator's administrator to approve it"))

