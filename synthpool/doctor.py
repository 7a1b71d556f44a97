"""Preflight and health checks: `synthpool coordinator doctor` and `synthpool-agent doctor`.

Why one module for both: the two share what an operator most often gets wrong (a certificate
that does not name the host the other side dials, or expires next month; a port already taken
or not listening; a key that is missing or not registered; a budget already spent) and the
same way to report it. Every check reads; none repairs. Each finding says what to do.

A finding is ok, info, warn or fail; the commands exit 1 when any check failed, 0 otherwise.
Certificates expiring within `WARN_DAYS` are warnings (`expiry_warning` is also what
`serve-admin` and `synthpool-agent run` print when they start).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

WARN_DAYS = 30
LEVELS = ("ok", "info", "warn", "fail")


@dataclass(frozen=True)
class Finding:
    level: str    # ok | info | warn | fail
    check: str    # short name of what was checked
    message: str  # what was found and, when not ok, what to do


def report(title: str, findings: list[Finding], as_json: bool = False) -> int:
    """Print the findings; the exit status: 1 if any failed."""
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    if as_json:
        print(json.dumps({"title": title, "failed": failed, "warnings": warned,
                          "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        print(title)
        width = max((len(f.check) for f in findings), default=0)
        for f in findings:
            print(f"  {f.level.upper():4}  {f.check:{width}}  {f.message}")
        print(f"{failed} failed, {warned} warning(s)")
    return 1 if failed else 0


# -- certificates ---------------------------------------------------------------------------------

def _load_cert(path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def cert_names(cert) -> list[str]:
    """The DNS names and IP addresses a certificate's SAN extension holds."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _names_match(wanted: str, names: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(wanted)
        return any(_is_ip(n) and ipaddress.ip_address(n) == ip for n in names)
    except ValueError:
        pass
    wanted = wanted.lower().rstrip(".")
    for n in names:
        n = n.lower()
        if n == wanted or (n.startswith("*.") and wanted.split(".", 1)[-1] == n[2:]
                           and wanted.count(".") == n.count(".")):
            return True
    return False


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def days_left(not_after: dt.datetime, now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.timezone.utc)
    return (not_after - now).total_seconds() / 86400


def expiry_finding(check: str, not_after: dt.datetime, renew: str,
                   now: dt.datetime | None = None) -> Finding:
    left = days_left(not_after, now)
    date = not_after.strftime("%Y-%m-%d")
    if left < 0:
        return Finding("fail", check, f"expired on {date}: {renew}")
    if left < WARN_DAYS:
        return Finding("warn", check, f"expires in {int(left)} day(s), on {date}: {renew}")
    return Finding("ok", check, f"valid until {date} ({int(left)} days)")


def cert_findings(path: Path, check: str, renew: str, *, names: Iterable[str] = (),
                  now: dt.datetime | None = None) -> list[Finding]:
    """A PEM certificate file: readable, not expired (warn under WARN_DAYS), and naming every
    one of `names` (the hosts the other side dials)."""
    try:
        cert = _load_cert(path)
    except (OSError, ValueError) as e:
        return [Finding("fail", check, f"cannot read {path}: {e}")]
    out = [expiry_finding(check, cert.not_valid_after_utc, renew, now)]
    sans = cert_names(cert)
    names = list(names)
    if names or sans:
        missing = [n for n in names if not _names_match(n, sans)]
        if missing:
            out.append(Finding("fail", f"{check} names",
                               f"does not name {', '.join(missing)} (it names "
                               f"{', '.join(sans) or 'nothing'}): clients dialling that name "
                               f"refuse it. {renew}"))
        else:
            out.append(Finding("ok", f"{check} names", ", ".join(sans)))
    return out


def expiry_warning(path: Path, what: str, renew: str) -> str | None:
    """One line for a service's start-up when `path` expires within WARN_DAYS (or has)."""
    try:
        cert = _load_cert(path)
    except (OSError, ValueError):
        return None
    f = expiry_finding(what, cert.not_valid_after_utc, renew)
    return None if f.level == "ok" else f"WARNING: {what} ({path}) {f.message}"


# -- ports ----------------------------------------------------------------------------------------

def split_address(address: str, default_port: int | None = None) -> tuple[str, int]:
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = address.rpartition(":")
        if not host:
            host, port = port, ""
    if not port:
        if default_port is None:
            raise ValueError(f"{address!r}: expected HOST:PORT")
        return host, default_port
    return host, int(port)


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port (0.0.0.0 / :: mean this host)."""
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_finding(check: str, address: str, service: str, start: str) -> Finding:
    try:
        host, port = split_address(address)
    except ValueError as e:
        return Finding("fail", check, str(e))
    if listening(host, port):
        return Finding("ok", check, f"{address}: something listens (the {service}, if it runs)")
    return Finding("info", check, f"{address}: free, nothing listens; the {service} is not "
                                  f"running: {start}")


def tls_probe(address: str, ca: Path, timeout: float = 5.0) -> tuple[dict | None, str]:
    """Connect to `address` with TLS, verifying its certificate against `ca` and the host name
    dialled. Returns (peer certificate as `ssl` gives it, "") or (None, why it failed)."""
    host, port = split_address(address)
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        return None, f"cannot load {ca}: {e}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                return tls.getpeercert(), ""
    except ssl.SSLCertVerificationError as e:
        return None, f"TLS refused: {e.verify_message or e}"
    except (OSError, ssl.SSLError) as e:
        return None, f"{type(e).__name__}: {e}"


def _peer_not_after(peer: dict) -> dt.datetime:
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(peer["notAfter"]), dt.timezone.utc)


# -- the coordinator ------------------------------------------------------------------------------

RENEW_SERVER = ("move pki/server.pem and pki/server.key away and run `synthpool coordinator init "
                "--state-dir DIR --host NAME ...` again with every name (OPERATOR.md, \"Rotate "
                "keys\"); then restart the SuperLink, serve-admin and nginx")
RENEW_ADMIN = "issue another with `synthpool coordinator add-admin-cert NAME --state-dir DIR --out DIR`"
RENEW_CA = ("a new CA means a new ca.pem at every site and new certificates (OPERATOR.md, "
            "\"Rotate keys\")")


def coordinator_checks(state_dir: Path, *, hosts: Iterable[str] = (),
                       database_url: str | None = None, listen: str = "127.0.0.1:50051",
                       mtls_listen: str = "127.0.0.1:50052", online: bool = True,
                       flwr_home: Path | None = None,
                       now: dt.datetime | None = None) -> list[Finding]:
    from synthpool.coordinator.admin.pki import CoordinatorPKI
    from synthpool.coordinator.admin.state import DB_FILE

    state_dir = Path(state_dir)
    pki = CoordinatorPKI(state_dir)
    out: list[Finding] = []
    if not state_dir.is_dir():
        return [Finding("fail", "state dir", f"{state_dir} does not exist: run `synthpool "
                                             f"coordinator init --state-dir {state_dir} --host NAME`")]
    missing = [p for p in (pki.ca_cert, pki.server_cert, pki.server_key, pki.admin_cert,
                           pki.admin_key, pki.signing_key, pki.signing_public_key)
               if not p.exists()]
    if missing:
        out.append(Finding("fail", "files", f"missing {', '.join(map(str, missing))}: run "
                                            f"`synthpool coordinator init --state-dir {state_dir}` "
                                            "(it fills in what is missing, never replaces the CA)"))
    else:
        out.append(Finding("ok", "files", f"pki/ and signing/ complete in {state_dir}"))
    for key in (pki.ca_key, pki.server_key, pki.admin_key, pki.signing_key):
        if key.exists() and key.stat().st_mode & 0o077:
            out.append(Finding("warn", "key mode", f"{key} is readable by others "
                                                   f"({oct(key.stat().st_mode & 0o777)}): chmod 600"))
    if pki.ca_key.exists():
        out.append(Finding("info", "CA key", f"{pki.ca_key} is on this host; it is needed only to "
                                              "issue certificates: keep a copy offline"))
    if pki.ca_cert.exists():
        out += cert_findings(pki.ca_cert, "ca.pem", RENEW_CA, now=now)
    if pki.server_cert.exists():
        out += cert_findings(pki.server_cert, "server.pem", RENEW_SERVER, names=hosts, now=now)
        out += _issued_by(pki.server_cert, pki.ca_cert)
    if pki.admin_cert.exists():
        out += cert_findings(pki.admin_cert, "admin.pem", RENEW_ADMIN, now=now)
    out += _signing_pair(pki.signing_key, pki.signing_public_key)

    db = state_dir / DB_FILE
    if database_url is None and not db.exists():
        out.append(Finding("fail", "database", f"{db} does not exist: run `synthpool coordinator "
                                               "init`"))
        state = None
    else:
        from synthpool.coordinator.admin.state import State

        try:
            state = State.open(state_dir, database_url)
        except Exception as e:  # noqa: BLE001 - any failure to open is the finding
            out.append(Finding("fail", "database", f"cannot open: {type(e).__name__}: {e}"))
            state = None
    node_ids: dict[str, str] = {}
    if state is not None:
        with state:
            out += _tokens(state)
            sites_findings, node_ids = _sites(state)
            out += sites_findings
            out += _studies(state)

    flwr_home = Path(flwr_home or state_dir / "cli-home")
    cli_home = flwr_home / "config.toml"
    superlink = None
    if cli_home.exists():
        try:
            conn = tomllib.loads(cli_home.read_text())["superlink"]
            superlink = conn[conn.get("default", "synthpool")]["address"]
        except (OSError, KeyError, tomllib.TOMLDecodeError, TypeError) as e:
            out.append(Finding("fail", "cli-home", f"{cli_home}: unreadable ({e})"))
    else:
        out.append(Finding("warn", "cli-home", f"{cli_home} does not exist: the SuperLink's start "
                                               "script writes it (deploy/scripts/coordinator-start.sh); "
                                               "serve-admin --superlink-flwr-home needs it"))
    out.append(port_finding("admin API (TLS)", listen, "admin API",
                            "start `synthpool coordinator serve-admin` (systemd: "
                            "synthpool-admin); one started just now listens once its log says "
                            "'admin API on ...': run doctor again then"))
    if mtls_listen:
        out.append(port_finding("admin API (mTLS)", mtls_listen, "admin API", "see above"))
    if superlink:
        sl = port_finding("SuperLink", superlink, "SuperLink",
                          "start deploy/scripts/coordinator-start.sh (systemd: "
                          "synthpool-coordinator)")
        out.append(sl)
        if online and sl.level == "ok" and node_ids:
            out += _registered(flwr_home, node_ids)
    return out


def _issued_by(cert_path: Path, ca_path: Path) -> list[Finding]:
    try:
        _load_cert(cert_path).verify_directly_issued_by(_load_cert(ca_path))
    except (OSError, ValueError, TypeError) as e:
        return [Finding("fail", "server.pem issuer", f"not issued by {ca_path} ({e}): sites "
                                                     "pinning that CA refuse it")]
    except Exception as e:  # noqa: BLE001 - InvalidSignature and friends
        return [Finding("fail", "server.pem issuer", f"not issued by {ca_path} "
                                                     f"({type(e).__name__}): sites pinning that "
                                                     "CA refuse it")]
    return []


def _signing_pair(key_path: Path, pub_path: Path) -> list[Finding]:
    from cryptography.hazmat.primitives import serialization

    from synthpool.common.signing import public_pem

    if not (key_path.exists() and pub_path.exists()):
        return []
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        same = public_pem(key.public_key()) == pub_path.read_bytes()
    except (OSError, ValueError, TypeError) as e:
        return [Finding("fail", "release key", f"cannot read {key_path}: {e}")]
    if not same:
        return [Finding("fail", "release key", f"{pub_path} is not the public half of {key_path}: "
                                               "releases would not verify against the "
                                               "published key")]
    return [Finding("ok", "release key", f"{key_path} matches {pub_path.name} (publish that "
                                         "file to whoever receives releases)")]


def _tokens(state) -> list[Finding]:
    tokens = state.list_admin_tokens()
    active = [t.name for t in tokens if t.revoked_at is None]
    if not active:
        return [Finding("warn", "admin tokens", "no active admin token: `synthpool coordinator "
                                                "add-token NAME --state-dir DIR` (or use the "
                                                "admin certificate on the mTLS port)")]
    return [Finding("ok", "admin tokens", f"active: {', '.join(active)}"
                    + (f"; revoked: {len(tokens) - len(active)}" if len(tokens) > len(active)
                       else ""))]


def _sites(state) -> tuple[list[Finding], dict[str, str]]:
    import time

    from synthpool.coordinator.admin import state as st

    out, node_ids = [], {}
    sites = state.list_sites()
    if not sites:
        out.append(Finding("info", "sites", "none yet: `synthpool sites invite NAME`"))
    for s in sites:
        check = f"site {s.name}"
        if s.status == st.SITE_APPROVED:
            if s.flower_node_id is None:
                out.append(Finding("warn", check, f"approved (key {s.public_key_fingerprint}) "
                                                  "but not registered at the SuperLink (serve-admin "
                                                  "ran without --superlink-flwr-home): register "
                                                  "its key by hand (OPERATOR.md, \"Enroll a site\")"))
            else:
                node_ids[s.name] = s.flower_node_id
                out.append(Finding("ok", check, f"approved, key {s.public_key_fingerprint}, "
                                                f"SuperNode {s.flower_node_id}"))
        elif s.status == st.SITE_REGISTERED:
            out.append(Finding("warn", check, f"registered key {s.public_key_fingerprint}, waiting "
                                              "for approval: confirm that fingerprint with the "
                                              f"site by phone, then `synthpool sites approve "
                                              f"{s.name} --fingerprint FP`"))
        elif s.status == st.SITE_INVITED:
            expired = s.token_expires_at is not None and s.token_expires_at < time.time()
            out.append(Finding("warn" if expired else "info", check,
                               "invitation expired: `synthpool sites invite " + s.name + "` again"
                               if expired else "invited, has not enrolled yet"))
        else:
            out.append(Finding("info", check, f"revoked ({s.revoke_reason or 'no reason given'})"))
    return out, node_ids


def _studies(state) -> list[Finding]:
    from synthpool.coordinator.admin import state as st

    out = []
    for study in state.list_studies():
        check = f"study {study.name}"
        run = state.latest_run(study.name)
        base = f"epsilon {study.epsilon:g} per site, {study.rounds} round(s)"
        if run is None:
            out.append(Finding("ok", check, f"{base}; not trained yet (each site needs a "
                                            f"[budgets.{study.name}] table of at least that)"))
        elif run.status == st.RUN_FINISHED:
            out.append(Finding("info", check,
                               f"{base}; run {run.id} finished and spent the study's budget at "
                               "every site: another training needs a new study (new name) and a "
                               "[budgets.NEWNAME] table at every site"))
        elif run.status == st.RUN_RUNNING:
            out.append(Finding("info", check, f"{base}; run {run.id} is running"))
        else:
            out.append(Finding("warn", check,
                               f"{base}; run {run.id} {run.status}: {run.message or 'no message'}."
                               " What it spent stays spent at the sites: check their ledgers "
                               "(`synthpool-agent doctor`) before training it again"))
    return out


def _registered(cli_home: Path, node_ids: dict[str, str]) -> list[Finding]:
    """Each approved site's SuperNode id is registered at the SuperLink (`flwr supernode
    list`)."""
    from synthpool.coordinator.admin.flower_processes import bin_dir, flower_env

    try:
        out = subprocess.run([str(bin_dir() / "flwr"), "supernode", "list", "synthpool",
                              "--format", "json"], env=flower_env(cli_home),
                             capture_output=True, text=True, timeout=60)
        reply = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return [Finding("warn", "SuperLink keys", f"`flwr supernode list` failed: {e}")]
    if not reply.get("success", True):
        return [Finding("warn", "SuperLink keys", "`flwr supernode list` failed: "
                        + str(reply.get("error-message", "")).strip()[:300])]
    known = set(_node_ids(reply))
    out = []
    for site, node in sorted(node_ids.items()):
        if str(node) in known:
            out.append(Finding("ok", f"site {site} key", f"registered at the SuperLink "
                                                         f"(node {node})"))
        else:
            out.append(Finding("fail", f"site {site} key",
                               f"node {node} is not registered at the SuperLink (its database "
                               "was replaced?): revoke the site, invite it again and approve "
                               "its new enrollment"))
    return out


def _node_ids(obj) -> Iterable[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("node-id", "node_id") and isinstance(v, (int, str)):
                yield str(v)
            else:
                yield from _node_ids(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _node_ids(v)


# -- a site ---------------------------------------------------------------------------------------

def site_checks(config: Path, *, study: str | None = None, epsilon: float | None = None,
                online: bool = True, now: dt.datetime | None = None) -> list[Finding]:
    from synthpool.agent import identity
    from synthpool.agent.config import ConfigError, load_site_config
    from synthpool.agent.host.daemon import enroll_command, no_key_message

    try:
        cfg = load_site_config(config)
    except ConfigError as e:
        return [Finding("fail", "site.toml", str(e))]
    out = [Finding("ok", "site.toml", f"{cfg.path}: site {cfg.name}")]
    data = cfg.site.data
    if not data.is_file():
        out.append(Finding("fail", "data", f"{data} does not exist"))
    elif not os.access(data, os.R_OK):
        out.append(Finding("fail", "data", f"{data} is not readable by this account"))
    else:
        out.append(Finding("ok", "data", f"{data} ({data.stat().st_size} bytes)"))
    try:
        schema = cfg.schema()
        out.append(Finding("ok", "schema", f"{schema.name} ({schema.fingerprint()})"))
    except Exception as e:  # noqa: BLE001 - SchemaError, OSError, YAML errors
        out.append(Finding("fail", "schema", f"{cfg.site.schema_ref}: {e}"))

    state = cfg.state_dir
    mine = True
    if not state.is_dir():
        out.append(Finding("warn", "state dir", f"{state} does not exist yet: enroll (or the "
                                                "agent's first start) creates it, as the account "
                                                "the agent runs as"))
    else:
        mine = state.stat().st_uid == os.geteuid()
        if not mine:
            out.append(Finding("warn", "state dir", f"{state} belongs to another account: run "
                                                    "doctor as that account (sudo -u "
                                                    "synthpool-agent) to read the ledger"))
        elif not os.access(state, os.W_OK):
            out.append(Finding("fail", "state dir", f"{state} is not writable"))
        else:
            out.append(Finding("ok", "state dir", str(state)))

    key = identity.key_path(state)
    if cfg.supernode.authenticate:
        pub = state / identity.PUBLIC_FILE
        if pub.exists() or key.exists():
            from synthpool.agent.host.daemon import key_fingerprint

            out.append(Finding("ok", "key", f"{key}, fingerprint {key_fingerprint(cfg)} (the "
                                            "coordinator's `sites list` must show it approved)"))
            if key.exists() and key.stat().st_mode & 0o077:
                out.append(Finding("warn", "key mode", f"{key} is readable by others: chmod 600"))
        else:
            out.append(Finding("fail", "key", no_key_message(cfg)))
    else:
        out.append(Finding("info", "key", "[supernode] authenticate = false: the SuperNode signs "
                                          "nothing; a coordinator with node authentication "
                                          f"refuses it. To enroll: {enroll_command(cfg)}"))
    holdout = state / "holdout.key"
    out.append(Finding("ok", "holdout.key", f"{holdout} present: back it up (lost, the hold-out "
                                            "split changes)") if holdout.exists() else
               Finding("info", "holdout.key", "not made yet (the first training makes it)"))

    if cfg.superlink.insecure:
        out.append(Finding("warn", "TLS", "insecure = true: plain HTTP to the coordinator; only "
                                          "on a private test network"))
    else:
        out += cert_findings(cfg.superlink.root_certificates, "CA (root_certificates)",
                             "get the coordinator's new ca.pem", now=now)
    if online:
        out += _coordinator_reachable(cfg, now)
    out.append(port_finding("SuperNode port", f"127.0.0.1:{cfg.supernode.port}",
                            "agent's SuperNode", "start the agent (systemd: synthpool-agent)"))
    out += _budgets(cfg, study, epsilon, read_ledger=mine)
    return out


def _coordinator_reachable(cfg, now) -> list[Finding]:
    address = cfg.superlink.address
    try:
        host, port = split_address(address)
    except ValueError as e:
        return [Finding("fail", "coordinator", str(e))]
    if not listening(host, port, timeout=3):
        return [Finding("fail", "coordinator", f"nothing answers at {address}: check the "
                                               "address, the coordinator's gateway and this "
                                               "site's outbound firewall")]
    if cfg.superlink.insecure:
        return [Finding("ok", "coordinator", f"{address} accepts connections")]
    peer, why = tls_probe(address, cfg.superlink.root_certificates)
    if peer is None:
        return [Finding("fail", "coordinator", f"{address}: {why} (the coordinator's certificate "
                                               f"must be issued by {cfg.superlink.root_certificates} "
                                               f"and name {host}: `coordinator init --host {host}`)")]
    return [Finding("ok", "coordinator", f"{address}: TLS verified against "
                                         f"{cfg.superlink.root_certificates.name}"),
            expiry_finding("coordinator certificate", _peer_not_after(peer),
                           "ask the coordinator's administrator to renew it (OPERATOR.md, "
                           "\"Rotate keys\")", now)]


def _budgets(cfg, study: str | None, epsilon: float | None, read_ledger: bool) -> list[Finding]:
    from synthpool.agent.ledger import LEDGER_FILE, Ledger, LedgerError, participation

    out = []
    studies = [study] if study else sorted(cfg.budgets)
    if not studies:
        return [Finding("warn", "budgets", "no [budgets.STUDY] table: this site refuses every "
                                           "study (default deny)")]
    ledger_file = cfg.state_dir / LEDGER_FILE
    led = None
    # A missing ledger is opened only where the site took part: that open refuses without
    # writing, while elsewhere it would make a new ledger, which is no doctor's business.
    if read_ledger and (ledger_file.exists() or participation(cfg.state_dir)):
        try:
            led = Ledger(cfg.state_dir, site=cfg.name)
            led.verify()
        except LedgerError as e:
            if led is not None:
                led.close()
            led = None
            out.append(Finding("fail", "ledger", str(e)))
    try:
        if cfg.site_budget is not None:
            out.append(_site_budget(cfg.site_budget, led))
        for name in studies:
            check = f"budget {name}"
            cap = cfg.budgets.get(name)
            if cap is None:
                out.append(Finding("fail", check, f"no [budgets.{name}] table in {cfg.path}: "
                                                  "this site refuses the study"))
                continue
            spent = led.spent(name, cap.delta).epsilon if led else 0.0
            left = cap.epsilon - spent
            text = (f"cap epsilon {cap.epsilon:g} at delta {cap.delta:g}, spent {spent:.3f}, "
                    f"left {max(left, 0):.3f}")
            if led is None and ledger_file.exists():
                text += " (ledger not read)"
            if left <= 0.01 * cap.epsilon:
                out.append(Finding("warn", check, f"{text}: spent. A study's budget serves one "
                                                  "training; another needs a new study and a "
                                                  "new [budgets.NEWNAME] table here"))
            elif epsilon is not None and left < epsilon:
                out.append(Finding("warn", check, f"{text}: less than the study's epsilon "
                                                  f"{epsilon:g}. The cap counts every run of "
                                                  "the study: a training gets at most what is "
                                                  "left, and none once it is spent"))
            else:
                out.append(Finding("ok", check, text))
            if led is not None:
                held = led.cap(name)
                if held and (held.epsilon, held.delta) != (cap.epsilon, cap.delta):
                    out.append(Finding("info", f"{check} (ledger)", f"the ledger still holds cap "
                                                      f"{held.epsilon:g}/{held.delta:g}; the "
                                                      "agent applies site.toml's when it starts"))
        if led is not None and not study:
            for name in led.studies():
                if name not in cfg.budgets:
                    out.append(Finding("info", f"budget {name}", "charged in the ledger, no "
                                                                 "[budgets] table in site.toml: "
                                                                 "nothing more may be charged to "
                                                                 "it"))
    finally:
        if led is not None:
            led.close()
    return out


def _site_budget(cap, led) -> Finding:
    """The site-wide cap ([site_budget]): what every study spent together, and what is left."""
    spent = led.spent_by_site(cap.delta).epsilon if led else 0.0
    left = cap.epsilon - spent
    text = (f"site-wide cap epsilon {cap.epsilon:g} at delta {cap.delta:g} over all studies, "
            f"spent {spent:.3f}, left {max(left, 0):.3f}")
    if left <= 0.01 * cap.epsilon:
        return Finding("warn", "budget (site-wide)", f"{text}: spent. No study can be charged "
                                                      "any more at this site")
    return Finding("ok", "budget (site-wide)", text)


__all__ = ["Finding", "report", "coordinator_checks", "site_checks", "cert_findings",
           "expiry_warning", "WARN_DAYS"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `synthpool coordinator doctor` or `synthpool-agent doctor`")
