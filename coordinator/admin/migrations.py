"""Numbered schema migrations for the coordinator's state database.

Why hand-rolled and not Alembic: the coordinator owns a handful of tables, runs on SQLite by
default and on PostgreSQL when an operator says so, and must upgrade itself at start-up with no
separate tool. The rules are few:

- each migration has a number; `migrate` applies, in order, those above the highest number in
  `schema_migrations`, each in its own transaction together with its row in that table, so a
  crash leaves the database at one version or the next, never between;
- running `migrate` again applies nothing (idempotent); two processes racing to migrate are
  serialised by a lock (an advisory lock on PostgreSQL, the write lock on SQLite);
- a migration's table definitions are frozen inside it (not imported from state.py): the tables
  state.py uses are the sum of all migrations, and an old database must upgrade the same way a
  new one is built. tests/test_state_migrations.py checks that the two agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

VERSION_TABLE = "schema_migrations"

_version_table = sa.Table(
    VERSION_TABLE, sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

# A 64-bit id that autoincrements on every backend (SQLite only autoincrements INTEGER keys).
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _m1_initial(conn: Connection) -> None:
    md = sa.MetaData()
    sa.Table(
        "sites", md,
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("public_key", sa.Text),
        sa.Column("public_key_fingerprint", sa.String(100)),
        # Only the SHA-256 of the invitation token: a copy of the database does not let anyone
        # enroll as the site.
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
    )
    sa.Table(
        "admin_tokens", md,
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float),
    )
    sa.Table(
        "studies", md,
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("schema_yaml", sa.Text, nullable=False),
        sa.Column("schema_fingerprint", sa.String(100), nullable=False),
        sa.Column("epsilon", sa.Float, nullable=False),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("overlap", sa.String(20), nullable=False),
        sa.Column("rounds", sa.Integer, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("sites", sa.Text, nullable=False),  # JSON list; empty: all approved sites
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    sa.Table(
        "runs", md,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("study", sa.String(100), sa.ForeignKey("studies.name"), nullable=False,
                  index=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("started_by", sa.String(200), nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
    )
    sa.Table(
        "run_events", md,
        sa.Column("run_id", sa.BigInteger, sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
    )
    sa.Table(
        "releases", md,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("study", sa.String(100)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
    )
    sa.Table(
        "audit", md,
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("peer", sa.String(200), nullable=False),
    )
    md.create_all(conn)


_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
]
_POSTGRES_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION synthpool_audit_append_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$",
    "CREATE TRIGGER audit_no_update_delete BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION synthpool_audit_append_only()",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION synthpool_audit_append_only()",
]


def _m2_audit_append_only(conn: Connection) -> None:
    """Make the database itself refuse to change or delete audit rows, so a bug (or a careless
    query) in the coordinator cannot rewrite history. A database owner can still drop the
    triggers: this guards against accidents, not against the DBA."""
    statements = {"sqlite": _SQLITE_APPEND_ONLY,
                  "postgresql": _POSTGRES_APPEND_ONLY}.get(conn.dialect.name, [])
    for statement in statements:
        conn.exec_driver_sql(statement)


def _m3_site_node_ids(conn: Connection) -> None:
    """The Flower SuperNode id the SuperLink gave an approved site's key (to shut it out on
    revocation). Text: Flower's ids are unsigned 64-bit, beyond a signed BIGINT."""
    conn.exec_driver_sql("ALTER TABLE sites ADD COLUMN flower_node_id VARCHAR(20)")


def _m4_admin_certificates(conn: Connection) -> None:
    """Admin client certificates: those `coordinator add-admin-cert` issued, and the deny list.
    A revoked certificate may be known by its serial or its fingerprint only (one issued before
    this table existed), hence no column but the id is required."""
    sa.Table(
        "admin_certificates", sa.MetaData(),
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200)),
        sa.Column("serial", sa.String(64), unique=True),
        sa.Column("fingerprint", sa.String(64), unique=True),
        sa.Column("issued_at", sa.Float),
        sa.Column("not_after", sa.Float),
        sa.Column("revoked_at", sa.Float),
        sa.Column("revoked_by", sa.String(200)),
        sa.Column("revoke_reason", sa.Text),
    ).create(conn)


def _m5_one_running_run_per_study(conn: Connection) -> None:
    """At most one running run per study, enforced by the database: a check in the code followed
    by an insert lets two concurrent starts both pass on PostgreSQL. Runs that such a race left
    running together are ended first (all but the newest), or the index could not be built."""
    conn.execute(sa.text(
        "UPDATE runs SET status = 'interrupted', ended_at = :now, "
        "message = 'ended by migration 5: another run of the study was running' "
        "WHERE status = 'running' AND id NOT IN "
        "(SELECT MAX(id) FROM runs WHERE status = 'running' GROUP BY study)"), {"now": time.time()})
    conn.exec_driver_sql("CREATE UNIQUE INDEX runs_one_running_per_study ON runs (study) "
                         "WHERE status = 'running'")


def _m6_population(conn: Connection) -> None:
    """studies.overlap is studies.population: one name for the setting everywhere (run config,
    admin API, CLI, manifest), with the same values (disjoint, overlapping)."""
    conn.exec_driver_sql("ALTER TABLE studies RENAME COLUMN overlap TO population")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sites, admin tokens, studies, runs, run events, releases, audit log",
              _m1_initial),
    Migration(2, "audit log append-only (database triggers)", _m2_audit_append_only),
    Migration(3, "sites: Flower SuperNode id of the approved key", _m3_site_node_ids),
    Migration(4, "admin certificates: issued and revoked", _m4_admin_certificates),
    Migration(5, "runs: at most one running run per study", _m5_one_running_run_per_study),
    Migration(6, "studies: overlap renamed population", _m6_population),
)
LATEST = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return 0
    return conn.execute(sa.select(sa.func.max(_version_table.c.version))).scalar() or 0


def applied(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return []
        rows = conn.execute(sa.select(_version_table.c.version, _version_table.c.description)
                            .order_by(_version_table.c.version))
        return [(r.version, r.description) for r in rows]


def migrate(engine: Engine, target: int | None = None) -> list[int]:
    """Bring the database up to `target` (default: the latest); return the versions applied."""
    target = LATEST if target is None else target
    if target > LATEST:
        raise ValueError(f"no migration {target}; the latest is {LATEST}")
    with engine.begin() as conn:
        _lock(conn)
        _version_table.create(conn, checkfirst=True)
    done: list[int] = []
    for migration in MIGRATIONS:
        if migration.version > target:
            break
        with engine.begin() as conn:
            _lock(conn)
            # Re-read under the lock: another process may have applied it meanwhile.
            version = current_version(conn)
            if version > LATEST:
                raise RuntimeError(f"the database is at schema version {version}, newer than "
                                   f"this coordinator knows ({LATEST}): upgrade synthpool")
            if migration.version <= version:
                continue
            migration.apply(conn)
            conn.execute(_version_table.insert().values(version=migration.version,
                                                        description=migration.description,
                                                        applied_at=time.time()))
            done.append(migration.version)
    return done


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        # Any constant: all synthpool coordinators sharing the database queue on it.
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7361636)")
    # SQLite: state.py begins every transaction with BEGIN IMMEDIATE, which already takes the
    # database's single write lock.
