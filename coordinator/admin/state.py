"""The coordinator's durable state: sites, admin tokens, studies, runs and their events, releases,
and the append-only audit log. SQLAlchemy Core over SQLite (a file in the state dir) by default,
or PostgreSQL when the operator gives a URL.

Why a database and not JSON files: several admin calls may run at once (the gRPC server is
threaded), enrollment tokens must be consumed exactly once even under races, and an audit entry
must commit together with the change it records. All three need transactions.

Why Core and not the ORM: a dozen plain queries, and the records handed out are frozen
dataclasses that cannot lazily touch the database from another thread.

Transactions: every public method runs in a transaction. `audited(...)` opens one around a
whole admin action and appends the audit row in the same transaction, so the log can never
claim an action that was rolled back or miss one that committed; if the action fails, its
changes roll back and the refusal is logged in a transaction of its own. Methods called inside
`audited` (on the same thread) join its transaction.

Secrets: invitation and admin tokens are random 256-bit strings; only their SHA-256 is stored
(a plain hash is enough for high-entropy secrets, no password KDF needed), and lookups go by
hash. `consume_invitation` uses a conditional UPDATE, so a token registers at most one key.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ...common.budget import POPULATIONS
from . import migrations

DB_FILE = "coordinator.db"
# Sites, studies, releases and administrators are named by this rule: safe as a folder name.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DEFAULT_INVITE_TTL = 24 * 3600

SITE_INVITED, SITE_REGISTERED, SITE_APPROVED, SITE_REVOKED = ("invited", "registered",
                                                              "approved", "revoked")
STUDY_CREATED, STUDY_TRAINING, STUDY_STOPPED, STUDY_FINISHED, STUDY_FAILED = (
    "created", "training", "stopped", "finished", "failed")
RUN_RUNNING, RUN_STOPPED, RUN_FINISHED, RUN_FAILED, RUN_INTERRUPTED = (
    "running", "stopped", "finished", "failed", "interrupted")


# -- errors: each carries the gRPC status name the admin service answers with ------------------

class StateError(Exception):
    """A refusal the caller can act on; `code` names the gRPC status the admin API answers."""

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NotFound(StateError):
    code = "NOT_FOUND"


class AlreadyExists(StateError):
    code = "ALREADY_EXISTS"


class Invalid(StateError):
    code = "INVALID_ARGUMENT"


class Precondition(StateError):
    code = "FAILED_PRECONDITION"


class BadToken(StateError):
    """Unknown, expired or already used token. One message for all three, on purpose: telling
    them apart would help someone guessing tokens."""

    code = "UNAUTHENTICATED"


# -- tables (the sum of migrations.MIGRATIONS; tests check they agree) -------------------------

metadata = sa.MetaData()
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

sites = sa.Table(
    "sites", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("public_key", sa.Text),
    sa.Column("public_key_fingerprint", sa.String(100)),
    sa.Column("token_hash", sa.String(64), unique=True),
    sa.Column("token_expires_at", sa.Float),
    sa.Column("token_used_at", sa.Float),
    sa.Column("invited_at", sa.Float, nullable=False),
    sa.Column("invited_by", sa.String(200), nullable=False),
    sa.Column("registered_at", sa.Float),
    sa.Column("approved_at", sa.Float),
    sa.Column("approved_by", sa.String(200)),
    sa.Column("revoked_at", sa.Float),
    sa.Column("revoked_by", sa.String(200)),
    sa.Column("revoke_reason", sa.Text),
    sa.Column("flower_node_id", sa.String(20)),  # Flower's unsigned 64-bit SuperNode id
)
admin_tokens = sa.Table(
    "admin_tokens", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)
studies = sa.Table(
    "studies", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("schema_yaml", sa.Text, nullable=False),
    sa.Column("schema_fingerprint", sa.String(100), nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("delta", sa.Float, nullable=False),
    sa.Column("population", sa.String(20), nullable=False),
    sa.Column("rounds", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("sites", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
)
runs = sa.Table(
    "runs", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(100), sa.ForeignKey("studies.name"), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("started_by", sa.String(200), nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
)
# Migration 5: the database, not a check before the insert, keeps a study to one running run.
sa.Index("runs_one_running_per_study", runs.c.study, unique=True,
         sqlite_where=runs.c.status == RUN_RUNNING, postgresql_where=runs.c.status == RUN_RUNNING)
run_events = sa.Table(
    "run_events", metadata,
    sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
)
releases = sa.Table(
    "releases", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("study", sa.String(100)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("files", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
)
audit_log = sa.Table(
    "audit", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(40), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("peer", sa.String(200), nullable=False),
)
admin_certificates = sa.Table(
    "admin_certificates", metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200)),
    sa.Column("serial", sa.String(64), unique=True),
    sa.Column("fingerprint", sa.String(64), unique=True),
    sa.Column("issued_at", sa.Float),
    sa.Column("not_after", sa.Float),
    sa.Column("revoked_at", sa.Float),
    sa.Column("revoked_by", sa.String(200)),
    sa.Column("revoke_reason", sa.Text),
)
# What one audit entry may hold: larger arguments are kept as their digest, a longer detail is
# cut. Whatever a caller sends, the log grows by a bounded amount per entry.
MAX_AUDIT_ARGUMENTS = 8192
MAX_AUDIT_DETAIL = 1000


# -- records ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SiteRecord:
    name: str
    status: str
    public_key: str | None
    public_key_fingerprint: str | None
    token_expires_at: float | None
    token_used_at: float | None
    invited_at: float
    invited_by: str
    registered_at: float | None
    approved_at: float | None
    approved_by: str | None
    revoked_at: float | None
    revoked_by: str | None
    revoke_reason: str | None
    flower_node_id: str | None = None


@dataclass(frozen=True)
class StudyTerms:
    """What an administrator fixed when creating a study; every run of it trains under them."""

    name: str
    schema_yaml: str
    schema_fingerprint: str
    epsilon: float
    delta: float
    population: str
    rounds: int
    rows: int


@dataclass(frozen=True)
class StudyRecord(StudyTerms):
    """A study as stored: its terms, the sites it names (none: every approved site), status."""

    sites: tuple[str, ...]
    status: str
    created_at: float
    created_by: str


@dataclass(frozen=True)
class RunRecord:
    id: int
    study: str
    status: str
    started_at: float
    started_by: str
    ended_at: float | None
    message: str


@dataclass(frozen=True)
class EventRecord:
    run_id: int
    seq: int
    at: float
    kind: str
    round: int
    message: str
    details: dict


@dataclass(frozen=True)
class ReleaseRecord:
    name: str
    study: str | None
    created_at: float
    files: int
    bytes: int
    manifest_sha256: str


@dataclass(frozen=True)
class AdminTokenRecord:
    name: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class AdminCertificateRecord:
    name: str | None
    serial: str | None
    fingerprint: str | None
    issued_at: float | None
    not_after: float | None
    revoked_at: float | None
    revoked_by: str | None
    revoke_reason: str | None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    actor: str
    action: str
    arguments: dict
    outcome: str
    detail: str
    peer: str


@dataclass
class AuditContext:
    """What an action fills in while it runs: the actor may only be known after a token check
    (RegisterSite), and `detail` adds a human-readable result to the entry."""

    actor: str
    detail: str = ""
    arguments: dict = field(default_factory=dict)


def _cert_label(c: AdminCertificateRecord) -> str:
    parts = [repr(c.name)] if c.name else []
    parts += [f"serial {c.serial}"] if c.serial else [f"fingerprint {c.fingerprint}"]
    return " ".join(parts)


def bounded(text: str, limit: int = MAX_AUDIT_DETAIL) -> str:
    """`text` cut to `limit` characters, saying how long it was: messages quote what callers
    sent, which may be megabytes."""
    if len(text) <= limit:
        return text
    return text[:limit - 20] + f"... ({len(text)} chars)"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> str:
    """A 256-bit random token; the prefix tells an operator what a leaked string is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def _fields(cls, row) -> dict:
    m = row._mapping
    return {name: m[name] for name in cls.__dataclass_fields__}


def check_approvable(site: "SiteRecord", expected_fingerprint: str = "") -> None:
    """Raise Precondition unless `site` may be approved (an approved one passes: approving is
    idempotent) with the key the administrator confirmed."""
    # Checked first: a wrong fingerprint is an error even for a site already approved.
    if expected_fingerprint and site.public_key_fingerprint and \
            expected_fingerprint != site.public_key_fingerprint:
        raise Precondition(
            f"site {site.name!r} registered key {site.public_key_fingerprint}, not "
            f"{expected_fingerprint}: do not approve; check the fingerprint with the site, and "
            f"if the key is not theirs, `synthpool sites revoke {site.name}` and invite them "
            "again")
    if site.status not in (SITE_REGISTERED, SITE_APPROVED):
        raise Precondition(f"site {site.name!r} is {site.status}: only a registered site (one "
                           "that has sent its key) can be approved")


# -- the store ----------------------------------------------------------------------------------

class State:
    """Open with `State.open(state_dir)` (SQLite file) or `State(url)`; the schema is migrated to
    the latest version on open, so a restarted coordinator upgrades its own database."""

    def __init__(self, url: str | Engine, *, clock: Callable[[], float] = time.time,
                 migrate: bool = True) -> None:
        self.engine = url if isinstance(url, Engine) else create_engine(url)
        self.clock = clock
        self._local = threading.local()
        if migrate:
            migrations.migrate(self.engine)

    @classmethod
    def open(cls, state_dir: Path, url: str | None = None, **kwargs: Any) -> "State":
        """The database at `url`, or by default the SQLite file `<state_dir>/coordinator.db`."""
        if url is None:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            url = f"sqlite+pysqlite:///{Path(state_dir).resolve() / DB_FILE}"
        return cls(url, **kwargs)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "State":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction, or the one this thread already has open (nested calls join it)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def audited(self, actor: str, action: str, arguments: dict, peer: str = "",
                refused: Callable[[AuditContext, str, str], None] | None = None,
                ) -> Iterator[AuditContext]:
        """Run an action and append its audit entry in the same transaction (see module doc).
        Not to be nested inside another open transaction: the refusal entry needs its own.
        `refused(ctx, outcome, detail)`, when given, logs a refusal instead of the default
        entry (the admin service keeps anonymous callers' refusals small and rate-limited)."""
        ctx = AuditContext(actor=actor, arguments=arguments)
        try:
            with self.transaction() as conn:
                yield ctx
                self._append_audit(conn, ctx.actor, action, ctx.arguments, "OK", ctx.detail, peer)
        except Exception as e:
            if isinstance(e, StateError):
                outcome, detail = e.code, str(e)
            else:
                outcome, detail = "INTERNAL", f"{type(e).__name__}: {e}"
            if refused is None:
                self.record_audit(ctx.actor, action, ctx.arguments, outcome, detail, peer)
            else:
                refused(ctx, outcome, detail)
            raise

    def record_audit(self, actor: str, action: str, arguments: dict, outcome: str,
                     detail: str = "", peer: str = "") -> None:
        with self.engine.begin() as conn:  # deliberately its own transaction
            self._append_audit(conn, actor, action, arguments, outcome, detail, peer)

    def _append_audit(self, conn: Connection, actor: str, action: str, arguments: dict,
                      outcome: str, detail: str, peer: str) -> None:
        text = json.dumps(arguments, sort_keys=True, default=str)
        if len(text) > MAX_AUDIT_ARGUMENTS:
            text = json.dumps({"truncated": {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                             "chars": len(text)}})
        conn.execute(audit_log.insert().values(
            at=self.clock(), actor=actor[:200], action=action[:100], arguments=text,
            outcome=outcome[:40], detail=bounded(detail), peer=peer[:200]))

    def audit_entries(self, after_id: int = 0, limit: int = 1000) -> list[AuditRecord]:
        with self.transaction() as conn:
            rows = conn.execute(sa.select(audit_log).where(audit_log.c.id > after_id)
                                .order_by(audit_log.c.id).limit(limit))
            return [AuditRecord(**{**_fields(AuditRecord, r), "arguments": json.loads(r.arguments)})
                    for r in rows]

    # -- admin tokens ---------------------------------------------------------------------------
    def add_admin_token(self, name: str) -> str:
        """A new bearer token for an administrator; the plain token is returned once."""
        token = new_token("spa")
        with self.transaction() as conn:
            if conn.execute(sa.select(admin_tokens.c.name).where(admin_tokens.c.name == name)).first():
                raise AlreadyExists(f"admin token {name!r} exists")
            conn.execute(admin_tokens.insert().values(name=name, token_hash=token_hash(token),
                                                      created_at=self.clock()))
        return token

    def list_admin_tokens(self) -> list[AdminTokenRecord]:
        """Every admin token ever made (names and dates; the tokens themselves are not kept)."""
        with self.transaction() as conn:
            rows = conn.execute(sa.select(admin_tokens.c.name, admin_tokens.c.created_at,
                                          admin_tokens.c.revoked_at)
                                .order_by(admin_tokens.c.created_at, admin_tokens.c.name))
            return [AdminTokenRecord(r.name, r.created_at, r.revoked_at) for r in rows]

    def revoke_admin_token(self, name: str) -> AdminTokenRecord:
        with self.transaction() as conn:
            done = conn.execute(admin_tokens.update().where(admin_tokens.c.name == name,
                                                            admin_tokens.c.revoked_at.is_(None))
                                .values(revoked_at=self.clock())).rowcount
            if not done:
                known = conn.execute(sa.select(admin_tokens.c.name)
                                     .where(admin_tokens.c.name == name)).first()
                if known is None:
                    raise NotFound(f"no admin token {name!r}")
                raise Precondition(f"admin token {name!r} is already revoked")
            return next(t for t in self.list_admin_tokens() if t.name == name)

    def admin_for_token(self, token: str) -> str | None:
        """The name of the admin token `token` is, if it exists and is not revoked."""
        if not token:
            return None
        with self.transaction() as conn:
            row = conn.execute(sa.select(admin_tokens.c.name).where(
                admin_tokens.c.token_hash == token_hash(token),
                admin_tokens.c.revoked_at.is_(None))).first()
        return row.name if row else None

    # -- admin certificates ---------------------------------------------------------------------
    def record_admin_certificate(self, name: str, serial: str, fingerprint: str,
                                 not_after: float) -> AdminCertificateRecord:
        """Note a certificate issued here (idempotent: a known serial is left as it is)."""
        with self.transaction() as conn:
            if conn.execute(sa.select(admin_certificates.c.id)
                            .where(admin_certificates.c.serial == serial)).first() is None:
                conn.execute(admin_certificates.insert().values(
                    name=name, serial=serial, fingerprint=fingerprint, issued_at=self.clock(),
                    not_after=not_after))
            return self._certificates(admin_certificates.c.serial == serial)[0]

    def list_admin_certificates(self) -> list[AdminCertificateRecord]:
        return self._certificates(sa.true())

    def revoke_admin_certificate(self, by: str, serial: str = "", fingerprint: str = "",
                                 reason: str = "") -> AdminCertificateRecord:
        """Deny the certificate with this serial or fingerprint (normalised lowercase hex, see
        pki.normalize_serial / normalize_fingerprint). One never recorded here is added to the
        deny list as given."""
        if not serial and not fingerprint:
            raise Invalid("give the certificate's serial or its SHA-256 fingerprint")
        match = self._matching(serial, fingerprint)
        with self.transaction() as conn:
            rows = self._certificates(match)
            if len(rows) > 1:
                raise Invalid(f"serial {serial} and fingerprint {fingerprint} name two different "
                              "certificates: give one of them")
            if rows and rows[0].revoked_at is not None:
                raise Precondition(f"admin certificate {_cert_label(rows[0])} is already revoked")
            values = dict(revoked_at=self.clock(), revoked_by=by, revoke_reason=reason)
            if rows:
                conn.execute(admin_certificates.update().where(match).values(**values))
            else:
                conn.execute(admin_certificates.insert().values(
                    serial=serial or None, fingerprint=fingerprint or None, **values))
            return self._certificates(match)[0]

    def revoked_admin_certificate(self, serial: str,
                                  fingerprint: str) -> AdminCertificateRecord | None:
        """The deny-list entry of the certificate with this serial or fingerprint, if any."""
        rows = self._certificates(sa.and_(self._matching(serial, fingerprint),
                                          admin_certificates.c.revoked_at.is_not(None)))
        return rows[0] if rows else None

    @staticmethod
    def _matching(serial: str, fingerprint: str):
        c = admin_certificates.c
        return sa.or_(*([c.serial == serial] if serial else []),
                      *([c.fingerprint == fingerprint] if fingerprint else []))

    def _certificates(self, where) -> list[AdminCertificateRecord]:
        with self.transaction() as conn:
            rows = conn.execute(sa.select(admin_certificates).where(where)
                                .order_by(admin_certificates.c.id))
            return [AdminCertificateRecord(**_fields(AdminCertificateRecord, r)) for r in rows]

    # -- sites ----------------------------------------------------------------------------------
    def invite_site(self, name: str, by: str,
                    ttl_seconds: float = DEFAULT_INVITE_TTL) -> tuple[SiteRecord, str]:
        """A fresh one-time enrollment token for `name`. A site that has not registered yet gets
        a new token (the old one stops working); a revoked site can be invited again and must
        register a new key; a registered or approved site cannot (revoke it first)."""
        token = new_token("spi")
        now = self.clock()
        values = dict(status=SITE_INVITED, public_key=None, public_key_fingerprint=None,
                      token_hash=token_hash(token), token_expires_at=now + ttl_seconds,
                      token_used_at=None, invited_at=now, invited_by=by, registered_at=None,
                      approved_at=None, approved_by=None, revoked_at=None, revoked_by=None,
                      revoke_reason=None)
        with self.transaction() as conn:
            row = conn.execute(sa.select(sites.c.status).where(sites.c.name == name)).first()
            if row is None:
                conn.execute(sites.insert().values(name=name, **values))
            elif row.status in (SITE_INVITED, SITE_REVOKED):
                conn.execute(sites.update().where(sites.c.name == name).values(**values))
            else:
                raise AlreadyExists(f"site {name!r} is {row.status}; revoke it before inviting "
                                    "it again")
            return self.get_site(name), token

    def consume_invitation(self, token: str, public_key: str, fingerprint: str) -> SiteRecord:
        """Attach `public_key` to the site whose unexpired, unused invitation `token` is."""
        now = self.clock()
        h = token_hash(token)
        with self.transaction() as conn:
            done = conn.execute(
                sites.update().where(sites.c.token_hash == h, sites.c.status == SITE_INVITED,
                                     sites.c.token_used_at.is_(None),
                                     sites.c.token_expires_at > now)
                .values(status=SITE_REGISTERED, public_key=public_key,
                        public_key_fingerprint=fingerprint, token_used_at=now,
                        registered_at=now)).rowcount
            if done != 1:
                raise BadToken("invalid, expired or already used enrollment token")
            name = conn.execute(sa.select(sites.c.name).where(sites.c.token_hash == h)).scalar_one()
            return self.get_site(name)

    def approve_site(self, name: str, by: str, expected_fingerprint: str = "",
                     admitted: tuple[int, str] | None = None,
                     undo: Callable[[int], None] | None = None) -> SiteRecord:
        """Approve a registered site whose key the SuperLink already admitted: `admitted` is
        (node id, that key's fingerprint). The admin service admits it before this transaction:
        a Flower CLI call takes seconds, and the database's write lock must not be held
        meanwhile. If the site is no longer registered with that key, nothing is approved and
        the admission is undone (`undo(node_id)`)."""
        node_id, admitted_key = admitted if admitted else (None, None)
        with self.transaction() as conn:
            site = self.get_site(name)
            if node_id is not None and site.status == SITE_APPROVED and \
                    site.flower_node_id == str(node_id):
                return site  # a concurrent approval of the same key won: nothing to undo
            try:
                check_approvable(site, expected_fingerprint)
                if admitted_key is not None and (site.status != SITE_REGISTERED or
                                                 site.public_key_fingerprint != admitted_key):
                    raise Precondition(f"site {name!r} changed while its key was being admitted "
                                       f"(now {site.status}): nothing was approved; try again")
            except Precondition:
                if node_id is not None and undo is not None:
                    undo(node_id)
                raise
            if site.status == SITE_APPROVED:
                return site
            conn.execute(sites.update().where(sites.c.name == name).values(
                status=SITE_APPROVED, approved_at=self.clock(), approved_by=by,
                flower_node_id=None if node_id is None else str(node_id)))
            return self.get_site(name)

    def revoke_site(self, name: str, by: str, reason: str = "") -> SiteRecord:
        """Revoke a site in any state: a pending invitation token dies with it, and from now on
        it is in no study run (runs take approved sites only). The record keeps its SuperNode
        id until the SuperLink has shut that node out (`shut_out_done`)."""
        with self.transaction() as conn:
            site = self.get_site(name)
            if site.status != SITE_REVOKED:
                conn.execute(sites.update().where(sites.c.name == name).values(
                    status=SITE_REVOKED, revoked_at=self.clock(), revoked_by=by,
                    revoke_reason=reason, token_hash=None))
            return self.get_site(name)

    def shut_out_done(self, name: str) -> SiteRecord:
        """A revoked site's SuperNode is shut out of the SuperLink: forget its node id."""
        with self.transaction() as conn:
            conn.execute(sites.update().where(sites.c.name == name,
                                              sites.c.status == SITE_REVOKED)
                         .values(flower_node_id=None))
            return self.get_site(name)

    def get_site(self, name: str) -> SiteRecord:
        with self.transaction() as conn:
            row = conn.execute(sa.select(sites).where(sites.c.name == name)).first()
        if row is None:
            raise NotFound(f"no site {name!r}")
        return SiteRecord(**_fields(SiteRecord, row))

    def list_sites(self) -> list[SiteRecord]:
        with self.transaction() as conn:
            rows = conn.execute(sa.select(sites).order_by(sites.c.name))
            return [SiteRecord(**_fields(SiteRecord, r)) for r in rows]

    # -- studies --------------------------------------------------------------------------------
    def create_study(self, *, name: str, schema_yaml: str, schema_fingerprint: str,
                     epsilon: float, delta: float, population: str, rounds: int, rows: int,
                     sites_: list[str], by: str) -> StudyRecord:
        if population not in POPULATIONS:
            raise Invalid(f"population must be one of {POPULATIONS}")
        with self.transaction() as conn:
            if conn.execute(sa.select(studies.c.name).where(studies.c.name == name)).first():
                raise AlreadyExists(f"study {name!r} exists")
            for s in sites_:
                if self.get_site(s).status == SITE_REVOKED:
                    raise Precondition(f"site {s!r} is revoked")
            conn.execute(studies.insert().values(
                name=name, schema_yaml=schema_yaml, schema_fingerprint=schema_fingerprint,
                epsilon=epsilon, delta=delta, population=population, rounds=rounds, rows=rows,
                sites=json.dumps(sorted(set(sites_))), status=STUDY_CREATED,
                created_at=self.clock(), created_by=by))
            return self.get_study(name)

    def get_study(self, name: str) -> StudyRecord:
        with self.transaction() as conn:
            row = conn.execute(sa.select(studies).where(studies.c.name == name)).first()
        if row is None:
            raise NotFound(f"no study {name!r}")
        return self._study(row)

    def list_studies(self) -> list[StudyRecord]:
        with self.transaction() as conn:
            return [self._study(r) for r in
                    conn.execute(sa.select(studies).order_by(studies.c.created_at, studies.c.name))]

    @staticmethod
    def _study(row) -> StudyRecord:
        return StudyRecord(**{**_fields(StudyRecord, row), "sites": tuple(json.loads(row.sites))})

    def participants(self, study: StudyRecord) -> list[SiteRecord]:
        """The sites a run of `study` trains with: its listed sites, or every approved site."""
        if study.sites:
            return [self.get_site(s) for s in study.sites]
        return [s for s in self.list_sites() if s.status == SITE_APPROVED]

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, study: str, by: str) -> RunRecord:
        with self.transaction() as conn:
            self.get_study(study)
            active = self.latest_run(study)
            if active is not None and active.status == RUN_RUNNING:
                raise Precondition(f"study {study!r} already has run {active.id} running")
            try:
                run_id = conn.execute(runs.insert().values(
                    study=study, status=RUN_RUNNING, started_at=self.clock(), started_by=by,
                    message="")).inserted_primary_key[0]
            except sa.exc.IntegrityError:
                # A concurrent start won between the check above and this insert (the unique
                # index runs_one_running_per_study); the transaction is spoilt, so no run id.
                raise Precondition(f"study {study!r} already has a run running") from None
            conn.execute(studies.update().where(studies.c.name == study)
                         .values(status=STUDY_TRAINING))
            return self.get_run(run_id)

    def end_run(self, run_id: int, status: str, message: str = "") -> bool:
        """Mark a running run ended; False if it had already ended (first ending wins)."""
        study_status = {RUN_STOPPED: STUDY_STOPPED, RUN_FINISHED: STUDY_FINISHED,
                        RUN_FAILED: STUDY_FAILED, RUN_INTERRUPTED: STUDY_FAILED}[status]
        with self.transaction() as conn:
            done = conn.execute(runs.update().where(runs.c.id == run_id,
                                                    runs.c.status == RUN_RUNNING)
                                .values(status=status, ended_at=self.clock(),
                                        message=message)).rowcount
            if done:
                study = self.get_run(run_id).study
                conn.execute(studies.update().where(studies.c.name == study)
                             .values(status=study_status))
            return bool(done)

    def interrupt_running(self, message: str = "coordinator restarted during the run") -> list[int]:
        """At start-up: runs still marked running lost their process with the old coordinator."""
        with self.transaction() as conn:
            ids = [r.id for r in conn.execute(sa.select(runs.c.id).where(runs.c.status == RUN_RUNNING))]
            for run_id in ids:
                # A terminal event too, so that anyone watching the run sees why it ended.
                self.add_event(run_id, "failed", message=message)
                self.end_run(run_id, RUN_INTERRUPTED, message)
            return ids

    def get_run(self, run_id: int) -> RunRecord:
        with self.transaction() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
        if row is None:
            raise NotFound(f"no run {run_id}")
        return RunRecord(**_fields(RunRecord, row))

    def latest_run(self, study: str) -> RunRecord | None:
        with self.transaction() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.study == study)
                               .order_by(runs.c.id.desc()).limit(1)).first()
        return RunRecord(**_fields(RunRecord, row)) if row else None

    def add_event(self, run_id: int, kind: str, round_: int = 0, message: str = "",
                  details: dict | None = None) -> EventRecord:
        with self.transaction() as conn:
            seq = (conn.execute(sa.select(sa.func.max(run_events.c.seq))
                                .where(run_events.c.run_id == run_id)).scalar() or 0) + 1
            values = dict(run_id=run_id, seq=seq, at=self.clock(), kind=kind, round=round_,
                          message=message, details=json.dumps(details or {}, sort_keys=True,
                                                              default=str))
            conn.execute(run_events.insert().values(**values))
        return EventRecord(**{**values, "details": details or {}})

    def events(self, run_id: int, after_seq: int = 0) -> list[EventRecord]:
        with self.transaction() as conn:
            rows = conn.execute(sa.select(run_events).where(run_events.c.run_id == run_id,
                                                            run_events.c.seq > after_seq)
                                .order_by(run_events.c.seq))
            return [EventRecord(**{**_fields(EventRecord, r), "details": json.loads(r.details)})
                    for r in rows]

    # -- releases -------------------------------------------------------------------------------
    def put_release(self, record: ReleaseRecord) -> None:
        """Record (or refresh) a release found in the releases folder."""
        values = {k: getattr(record, k) for k in ReleaseRecord.__dataclass_fields__}
        with self.transaction() as conn:
            if conn.execute(sa.select(releases.c.name).where(releases.c.name == record.name)).first():
                conn.execute(releases.update().where(releases.c.name == record.name).values(**values))
            else:
                conn.execute(releases.insert().values(**values))

    def list_releases(self, study: str = "") -> list[ReleaseRecord]:
        q = sa.select(releases).order_by(releases.c.created_at, releases.c.name)
        if study:
            q = q.where(releases.c.study == study)
        with self.transaction() as conn:
            return [ReleaseRecord(**_fields(ReleaseRecord, r)) for r in conn.execute(q)]


def create_engine(url: str) -> Engine:
    """An engine with the settings the coordinator relies on.

    SQLite: the stdlib driver does not open a transaction before DDL and defers locking, which
    would make migrations non-atomic and let two writers deadlock on lock upgrade. We take over
    transaction control (isolation_level=None) and begin every transaction with BEGIN IMMEDIATE:
    writers queue on the database's write lock (30 s busy timeout) instead of failing. WAL lets
    readers proceed meanwhile; foreign keys are on.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if engine.url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)
