"""The site's privacy ledger: every DP mechanism ever run on this site's rows, per study.

Why a ledger at all: a site's privacy loss is the *composition* of everything released from its
rows, across rounds, runs, restarts and coordinators. A per-run accountant forgets (docs/ARCHITECTURE.md,
"Privacy model"). So the site keeps one durable list of charges per study
and composes the whole list with the one accountant in `common.privacy` on every new charge.

Rules this module enforces:

* The cap (epsilon, delta) of a study comes from the SITE's own configuration (`set_cap` is called
  by the agent with values read from its site.toml). Nothing that arrives over the network reaches
  `set_cap`; a study without a cap is refused (default deny).
* `charge` is write-ahead: the composed epsilon including the new mechanisms is computed *before*
  recording; over the cap raises `BudgetExceeded` with the numbers; otherwise the charge is
  committed in one SQLite transaction (WAL, synchronous=FULL) and only then does the caller run the
  mechanism and release its output. A crash after the commit leaves a charge without a release,
  which is safe; the reverse cannot happen.
* Idempotent per (study, job_id): a job id names ONE release. Charging it again (a round retried
  after a crash) returns the existing charge and never double-charges. Charging it again with
  different mechanisms is a conflict (`LedgerConflict`), never a silent second charge.

The storage is plain SQLite so an auditor can read it with any tool; mechanisms are stored as the
JSON of `GaussianMechanism.to_dict()` so the epsilon can be recomputed independently.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..common.privacy import BudgetExceeded, GaussianMechanism, PureSpend, Spend, check_budget

__all__ = ["Ledger", "Cap", "Charge", "LedgerConflict", "NoBudget", "BudgetExceeded"]

SCHEMA_VERSION = 1
LEDGER_FILE = "ledger.sqlite"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS caps (
    study TEXT PRIMARY KEY,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cap_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    set_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL,
    job_id TEXT NOT NULL,
    mechanisms TEXT NOT NULL,
    pure TEXT NOT NULL,
    meta TEXT NOT NULL,
    epsilon_before REAL NOT NULL,
    epsilon_after REAL NOT NULL,
    delta REAL NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (study, job_id)
);
"""


class NoBudget(BudgetExceeded):
    """The site never set a cap for this study: nothing may be charged (default deny)."""


class LedgerConflict(RuntimeError):
    """A job id was charged before with different mechanisms: refuse rather than guess."""


@dataclass(frozen=True)
class Cap:
    study: str
    epsilon: float
    delta: float


@dataclass(frozen=True)
class Charge:
    """One recorded release: the mechanisms it ran and the study's epsilon before/after it."""

    study: str
    job_id: str
    mechanisms: tuple[GaussianMechanism, ...]
    pure: tuple[PureSpend, ...]
    epsilon_before: float
    epsilon_after: float
    delta: float
    created_at: float
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "study": self.study,
            "job_id": self.job_id,
            "mechanisms": [m.to_dict() for m in self.mechanisms],
            "pure_spends": [asdict(p) for p in self.pure],
            "epsilon_before": self.epsilon_before,
            "epsilon_after": self.epsilon_after,
            "delta": self.delta,
            "created_at": self.created_at,
            "meta": self.meta,
        }


def _canonical(mechanisms: Sequence[GaussianMechanism], pure: Sequence[PureSpend]) -> tuple[str, str]:
    m = json.dumps([x.to_dict() for x in mechanisms], sort_keys=True, separators=(",", ":"))
    p = json.dumps([asdict(x) for x in pure], sort_keys=True, separators=(",", ":"))
    return m, p


def composed_epsilon(spend: Spend) -> float:
    """`spend.epsilon`, computed with mechanisms of equal (noise, sample rate) merged into one
    entry with summed steps. RDP composes linearly in steps, so this is the same number; it turns
    the per-charge cost from O(all rounds ever) accountant calls into O(distinct settings)."""
    merged: dict[tuple[float, float], int] = {}
    for m in spend.mechanisms:
        key = (m.noise_multiplier, m.sample_rate)
        merged[key] = merged.get(key, 0) + m.steps
    mechs = [GaussianMechanism("merged", s, q, n) for (s, q), n in merged.items()]
    return Spend(spend.delta, mechs, list(spend.pure)).epsilon


class Ledger:
    """A site's ledger in one SQLite file. Cheap to open: every ClientApp process (one per
    Flower message) opens it afresh. Safe against concurrent writers: each charge runs its
    check-and-insert under `BEGIN IMMEDIATE`, so two jobs racing for the last epsilon cannot both
    pass the check."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / LEDGER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction is exactly what
        # the code says.
        self._db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._init_schema()

    # -- plumbing -----------------------------------------------------------------------------
    def _init_schema(self) -> None:
        # Statement by statement inside one transaction (executescript would COMMIT on its own).
        with self._tx() as db:
            for stmt in filter(str.strip, _DDL.split(";")):
                db.execute(stmt)
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: ledger schema {row[0]}, this code reads {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- caps ---------------------------------------------------------------------------------
    def set_cap(self, study: str, epsilon: float, delta: float) -> Cap:
        """Record the site's cap for `study` (from the site's own config). Changes are kept in
        `cap_history` so an auditor sees when the owner raised or lowered it."""
        epsilon, delta = check_budget(epsilon, delta, f"the cap of study {study!r}")
        with self._tx() as db:
            row = db.execute("SELECT epsilon, delta FROM caps WHERE study=?", (study,)).fetchone()
            if row is None or (float(row[0]), float(row[1])) != (float(epsilon), float(delta)):
                now = time.time()
                db.execute(
                    "INSERT INTO caps(study, epsilon, delta, updated_at) VALUES (?,?,?,?) "
                    "ON CONFLICT(study) DO UPDATE SET epsilon=excluded.epsilon, "
                    "delta=excluded.delta, updated_at=excluded.updated_at",
                    (study, float(epsilon), float(delta), now),
                )
                db.execute(
                    "INSERT INTO cap_history(study, epsilon, delta, set_at) VALUES (?,?,?,?)",
                    (study, float(epsilon), float(delta), now),
                )
        return Cap(study, float(epsilon), float(delta))

    def cap(self, study: str) -> Cap | None:
        return self._cap_row(self._db, study)

    # -- charges ------------------------------------------------------------------------------
    def charge(
        self,
        study: str,
        job_id: str,
        mechanisms: Sequence[GaussianMechanism | PureSpend],
        *,
        label: str | None = None,
        meta: dict | None = None,
    ) -> Spend:
        """Charge one job. Returns the study's total `Spend` with this job included.

        Raises `BudgetExceeded` (nothing recorded) when the composed epsilon would pass the cap,
        `NoBudget` when the study has no cap, `LedgerConflict` when `job_id` was charged before
        with other mechanisms. A repeated call with the same mechanisms records nothing new."""
        gauss = tuple(m for m in mechanisms if isinstance(m, GaussianMechanism))
        pure = tuple(m for m in mechanisms if isinstance(m, PureSpend))
        if len(gauss) + len(pure) != len(mechanisms):
            raise TypeError("mechanisms must be GaussianMechanism or PureSpend")
        m_json, p_json = _canonical(gauss, pure)
        label = label or f"job {job_id!r} of study {study!r}"
        with self._tx() as db:
            cap = self._cap_row(db, study)
            if cap is None:
                raise NoBudget(
                    f"no privacy budget configured for study {study!r} at this site; "
                    f"refusing {label}"
                )
            existing = db.execute(
                "SELECT mechanisms, pure FROM charges WHERE study=? AND job_id=?", (study, job_id)
            ).fetchone()
            if existing is not None:
                if tuple(existing) != (m_json, p_json):
                    raise LedgerConflict(
                        f"job {job_id!r} of study {study!r} was already charged with other "
                        f"mechanisms ({existing[0]}); refusing to charge it differently"
                    )
                return self._spend(db, study, cap.delta)
            before = self._spend(db, study, cap.delta)
            after = Spend(cap.delta, [*before.mechanisms, *gauss], [*before.pure, *pure])
            eps_before, eps_after = composed_epsilon(before), composed_epsilon(after)
            if eps_after > cap.epsilon:
                raise BudgetExceeded(
                    f"{label} would spend epsilon {eps_after:.3f} > cap {cap.epsilon:g} at delta "
                    f"{cap.delta:g}; spent so far {eps_before:.3f}"
                )
            db.execute(
                "INSERT INTO charges(study, job_id, mechanisms, pure, meta, epsilon_before, "
                "epsilon_after, delta, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (study, job_id, m_json, p_json, json.dumps(meta or {}, sort_keys=True),
                 eps_before, eps_after, cap.delta, time.time()),
            )
            return after

    def get_charge(self, study: str, job_id: str) -> Charge | None:
        rows = self._charge_rows(self._db, study, job_id)
        return rows[0] if rows else None

    def charges(self, study: str) -> list[Charge]:
        return self._charge_rows(self._db, study)

    def spent(self, study: str, delta: float | None = None) -> Spend:
        """Everything charged to `study`, reported at `delta` (default: the cap's delta)."""
        if delta is None:
            cap = self.cap(study)
            if cap is None:
                raise NoBudget(f"no cap for study {study!r}: pass the delta to report at")
            delta = cap.delta
        return self._spend(self._db, study, delta)

    def studies(self) -> list[str]:
        rows = self._db.execute(
            "SELECT study FROM caps UNION SELECT study FROM charges ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def integrity_check(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _cap_row(db: sqlite3.Connection, study: str) -> Cap | None:
        row = db.execute("SELECT epsilon, delta FROM caps WHERE study=?", (study,)).fetchone()
        return None if row is None else Cap(study, float(row[0]), float(row[1]))

    @staticmethod
    def _charge_rows(db: sqlite3.Connection, study: str, job_id: str | None = None) -> list[Charge]:
        sql = ("SELECT study, job_id, mechanisms, pure, epsilon_before, epsilon_after, delta, "
               "created_at, meta FROM charges WHERE study=?")
        args: tuple = (study,)
        if job_id is not None:
            sql += " AND job_id=?"
            args += (job_id,)
        out = []
        for r in db.execute(sql + " ORDER BY id", args).fetchall():
            out.append(Charge(
                study=r[0], job_id=r[1],
                mechanisms=tuple(GaussianMechanism.from_dict(m) for m in json.loads(r[2])),
                pure=tuple(PureSpend(**p) for p in json.loads(r[3])),
                epsilon_before=float(r[4]), epsilon_after=float(r[5]), delta=float(r[6]),
                created_at=float(r[7]), meta=json.loads(r[8]),
            ))
        return out

    @classmethod
    def _spend(cls, db: sqlite3.Connection, study: str, delta: float) -> Spend:
        mechanisms: list[GaussianMechanism] = []
        pure: list[PureSpend] = []
        for c in cls._charge_rows(db, study):
            mechanisms.extend(c.mechanisms)
            pure.extend(c.pure)
        return Spend(delta=delta, mechanisms=mechanisms, pure=pure)
