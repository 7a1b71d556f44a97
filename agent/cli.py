"""`synthpool-agent`: the command a data owner runs at their site.

    synthpool-agent enroll --config site.toml --token-file F --coordinator HOST:PORT --ca ca.pem
                                                 make this site's key pair, register its public key
                                                 (the token: --token, --token-file or
                                                 SYNTHPOOL_INVITE_TOKEN)
    synthpool-agent run --config site.toml       join the federation (caps applied first)
    synthpool-agent ledger --state-dir DIR       what has been spent on this site's rows
    synthpool-agent ledger reinit --state-dir DIR --i-understand-earlier-spend-is-forgotten
                           --reason TEXT        a new ledger where the old one was lost (logged)
    synthpool-agent doctor --config site.toml    check config, data, key, certificates, budgets
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from ..common.cli_paths import path_option, token_from

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.command()
def run(config: Path = path_option(..., "--config", "-c", exists=True, dir_okay=False,
                                    help="The site's site.toml")) -> None:
    """Apply the site's privacy caps to its ledger and run its Flower SuperNode."""
    from .host import daemon
    from .config import ConfigError, load_site_config
    from .ledger import LedgerDiskFull, LedgerError

    try:
        cfg = load_site_config(config)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    if not cfg.superlink.insecure:
        from ..doctor import expiry_warning

        warning = expiry_warning(cfg.superlink.root_certificates, "the coordinator's CA "
                                 "certificate", "get its new ca.pem from the coordinator's "
                                 "administrator")
        if warning:
            typer.echo(f"[synthpool-agent] site {cfg.name}: {warning}", err=True)
    try:
        code = daemon.run(cfg)
    except (FileNotFoundError, LedgerError, daemon.StateDirError) as e:
        typer.echo(str(e), err=True)
        # 2 stops systemd's restarts until the owner acts; a full disk may clear by itself.
        raise typer.Exit(1 if isinstance(e, LedgerDiskFull) else 2) from None
    raise typer.Exit(code)


@app.command()
def enroll(config: Path = path_option(..., "--config", "-c", exists=True, dir_okay=False,
                                       help="The site's site.toml"),
           token: str = typer.Option(None, "--token", envvar="SYNTHPOOL_INVITE_TOKEN",
                                     show_envvar=True,
                                     help="The one-time invitation token from the coordinator's "
                                          "administrator. Prefer the environment or "
                                          "--token-file: other users can read a command line."),
           token_file: Path = path_option(None, "--token-file", envvar="SYNTHPOOL_INVITE_TOKEN_FILE",
                                          show_envvar=True, exists=True, dir_okay=False,
                                          help="A file holding the invitation token."),
           coordinator: str = typer.Option(None, "--coordinator",
                                           help="The coordinator's admin API, HOST:PORT"),
           ca: Path = path_option(None, "--ca", exists=True, dir_okay=False,
                                   help="The coordinator's CA certificate (TLS)")) -> None:
    """Create this site's key pair (the private key stays in the state dir) and, with a token,
    register the public key with the coordinator. Then tell the coordinator's administrator the
    fingerprint printed here, so they approve exactly this key."""
    from ..common.signing import ssh_key_fingerprint
    from . import identity
    from .config import load_site_config
    from .ledger import Ledger, LedgerCorrupt, LedgerError, LedgerLost

    try:
        cfg = load_site_config(config)
        token = token_from(token, token_file, flag="--token", file_flag="--token-file")
    except ValueError as e:  # ConfigError included
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    from .host.daemon import enroll_command

    try:
        # The ledger before the key: a state dir with a key and no ledger then always means a
        # lost ledger, which the agent refuses (agent/ledger.py, PARTICIPATION).
        Ledger(cfg.state_dir, site=cfg.name).close()
        public = identity.ensure_node_key(cfg.state_dir)
    except (LedgerLost, LedgerCorrupt) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    except (OSError, LedgerError) as e:
        typer.echo(f"site {cfg.name}: cannot write the site's ledger and key under "
                   f"{cfg.state_dir}: {e}. "
                   "Run enroll as the account the agent runs as, after creating its state dir "
                   "(systemd: `install -d -m 0700 -o synthpool-agent -g synthpool-agent "
                   f"{cfg.state_dir}`, then `sudo -u synthpool-agent synthpool-agent enroll ...`)",
                   err=True)
        raise typer.Exit(2) from None
    typer.echo(f"site {cfg.name}: key {identity.key_path(cfg.state_dir)}")
    typer.echo(f"public key: {public}")
    typer.echo(f"fingerprint: {ssh_key_fingerprint(public)}")
    if token is None:
        typer.echo("To register it with the coordinator: " + enroll_command(cfg))
        return
    if coordinator is None or ca is None:
        typer.echo("--token needs --coordinator HOST:PORT (the coordinator's admin API, port "
                   "50051 by default) and --ca FILE (the coordinator's ca.pem), e.g.\n  "
                   + enroll_command(cfg), err=True)
        raise typer.Exit(2)
    import grpc

    from ..protos import admin_pb2 as pb, admin_pb2_grpc

    channel = grpc.secure_channel(coordinator, grpc.ssl_channel_credentials(ca.read_bytes()))
    try:
        reply = admin_pb2_grpc.AdminStub(channel).RegisterSite(
            pb.RegisterSiteRequest(token=token, public_key=public), timeout=30)
    except grpc.RpcError as e:
        typer.echo(f"the coordinator refused the enrollment: {e.details()}", err=True)
        raise typer.Exit(1) from None
    finally:
        channel.close()
    typer.echo(f"registered as {reply.site.name!r}; the coordinator's administrator must now "
               f"approve fingerprint {reply.site.public_key_fingerprint}")
    typer.echo(restart_hint(cfg))


def restart_hint(cfg) -> str:
    """What enroll ends with: the agent reads the key only when it starts."""
    return (f"Read that fingerprint to the coordinator's administrator (by phone); once they "
            f"ran `synthpool sites approve {cfg.name} --fingerprint ...`, (re)start the agent: "
            f"`systemctl restart synthpool-agent` (systemd), or `synthpool-agent run --config "
            f"{cfg.path}` (without systemd). An agent started before the approval is refused "
            "and says so.")


ledger_app = typer.Typer(add_completion=False)
app.add_typer(ledger_app, name="ledger")


@ledger_app.callback(invoke_without_command=True)
def ledger(ctx: typer.Context,
           state_dir: Path = path_option(None, "--state-dir", exists=True, file_okay=False,
                                          help="The site's state dir (holds ledger.sqlite)"),
           study: str = typer.Option(None, help="Only this study"),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Show each study's cap, every charge, and the composed epsilon spent; the site-wide cap
    and what all studies spent together; the ledger's events (creation, re-initialisation,
    caps removed)."""
    if ctx.invoked_subcommand is not None:
        return
    from .ledger import LEDGER_FILE, Ledger, LedgerError

    if state_dir is None:
        typer.echo("--state-dir DIR is required: the site's state dir, which holds "
                   f"{LEDGER_FILE}", err=True)
        raise typer.Exit(2)
    if not (state_dir / LEDGER_FILE).exists():
        typer.echo(f"{state_dir}: no ledger here ({LEDGER_FILE} missing)", err=True)
        raise typer.Exit(2)
    try:
        led = Ledger(state_dir)
    except LedgerError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    with led:
        studies = [study] if study else led.studies()
        report = []
        for s in studies:
            cap = led.cap(s)
            charges = led.charges(s)
            # Recomposed now at the cap's delta (the stored per-charge numbers used the delta
            # of their day).
            spent = led.spent(s).epsilon if cap else \
                (charges[-1].epsilon_after if charges else 0.0)
            report.append({
                "study": s,
                "cap": None if cap is None else {"epsilon": cap.epsilon, "delta": cap.delta},
                "epsilon_spent": spent,
                "charges": [c.to_dict() for c in charges],
            })
        site = led.site_cap()
        site_spent = led.spent_by_site().epsilon if site else None
        events = [{"kind": e.kind, "at": e.at, "detail": e.detail} for e in led.events()]
    if as_json:
        typer.echo(json.dumps({
            "site_cap": None if site is None else {"epsilon": site.epsilon, "delta": site.delta},
            "site_epsilon_spent": site_spent, "studies": report, "events": events}, indent=1))
        return
    for e in events:
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(e["at"]))
        typer.echo(f"event {when} {e['kind']}: {json.dumps(e['detail'], sort_keys=True)}")
    typer.echo("all studies: no site-wide cap ([site_budget] in site.toml)" if site is None else
               f"all studies: site-wide cap epsilon {site.epsilon:g} at delta {site.delta:g}; "
               f"spent epsilon {site_spent:.3f}")
    for item in report:
        cap = item["cap"]
        cap_text = "no cap (nothing may be charged)" if cap is None else \
            f"cap epsilon {cap['epsilon']:g} at delta {cap['delta']:g}"
        typer.echo(f"study {item['study']}: {cap_text}; spent epsilon {item['epsilon_spent']:.3f}")
        for c in item["charges"]:
            mech = ", ".join(f"{m['name']} (sigma {m['noise_multiplier']:.3g}, q "
                             f"{m['sample_rate']:.3g}, {m['steps']} steps)" for m in c["mechanisms"])
            typer.echo(f"  {c['job_id']}: {c['epsilon_before']:.3f} -> {c['epsilon_after']:.3f}"
                       f"  [{mech}]")


@ledger_app.command("reinit", short_help="A new, empty ledger where the old one was lost or "
                                         "damaged (logged in it)")
def ledger_reinit(state_dir: Path = path_option(..., "--state-dir", exists=True, file_okay=False,
                                                 help="The site's state dir"),
                  # ledger.REINIT_FLAG, spelled out: importing the ledger here would load
                  # torch for every `synthpool-agent --help`.
                  understood: bool = typer.Option(
                      False, "--i-understand-earlier-spend-is-forgotten",
                      help="Confirm that the new ledger starts every budget from zero"),
                  reason: str = typer.Option(..., "--reason",
                                             help="Why (recorded in the new ledger)")) -> None:
    """Start a new, empty ledger where the old one is missing, empty or damaged and no backup
    can be restored (deploy/OPERATOR.md, "Lost or damaged ledger"). Everything the old one
    recorded is forgotten: lower each cap in site.toml by what this site had spent (its
    releases' manifests list it). The old files are kept beside, renamed; the new ledger's
    first event records who ran this, the reason, and what the agent had refused. Not while an
    agent runs on the state dir."""
    import getpass

    from .host.daemon import StateDirError, hold_state_dir
    from .ledger import REINIT_FLAG, Ledger, LedgerError

    if not understood:
        typer.echo(f"reinit forgets everything {state_dir}'s old ledger recorded, so every "
                   f"budget starts from zero again: pass {REINIT_FLAG} to confirm", err=True)
        raise typer.Exit(2)
    if not reason.strip():
        typer.echo("--reason must say why (it is recorded in the new ledger)", err=True)
        raise typer.Exit(2)
    try:
        with hold_state_dir(state_dir):
            with Ledger.reinitialise(state_dir, reason=reason.strip(),
                                     by=getpass.getuser()) as led:
                event = led.events()[-1]
    except (LedgerError, StateDirError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    kept = ", ".join(event.detail["kept_aside"]) or "none"
    typer.echo(f"{led.path}: a new, empty ledger; its first event records this re-initialisation "
               f"(by {event.detail['by']}: {event.detail['reason']}); old files kept as: {kept}. "
               "Lower each cap in site.toml by what this site had spent before starting the "
               "agent.")


@app.command()
def doctor(config: Path = path_option(..., "--config", "-c", exists=True, dir_okay=False,
                                       help="The site's site.toml"),
           study: str = typer.Option(None, "--study", help="Only this study's budget"),
           epsilon: float = typer.Option(None, "--epsilon",
                                         help="The study's epsilon (`synthpool studies get`): "
                                              "warn when less than that is left"),
           offline: bool = typer.Option(False, "--offline",
                                        help="Do not connect to the coordinator"),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Check this site before (or while) it runs: site.toml, data file, state dir, key,
    the coordinator's certificate (names, expiry; a warning under 30 days), the SuperNode's
    local port, and each study's budget left. Exit 1 if a check failed."""
    from ..doctor import report, site_checks

    findings = site_checks(config, study=study, epsilon=epsilon, online=not offline)
    raise typer.Exit(report(f"synthpool-agent doctor: {config}", findings, as_json))


def main() -> None:
    app()
