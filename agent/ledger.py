"""The site's privacy ledger: every DP mechanism ever run on this site's rows, per study.

Why a ledger at all: a site's privacy loss is the *composition* of everything released from its
rows, across rounds, runs, restarts and coordinators. A per-run accountant forgets (docs/ARCHITECTURE.md,
"Privacy model"). So the site keeps one durable list of charges per study
and composes the whole list with the one accountant in `common.privacy` on every new charge.

Rules this module enforces:

* The caps come from the SITE's own configuration: `apply_caps` makes the ledger's caps exactly
  site.toml's `[budgets.STUDY]` tables (and its optional `[site_budget]`) each time the agent
  starts and each time a ClientApp opens the ledger. Nothing that arrives over the network
  reaches it; a study without a cap is refused (default deny), also one whose table was removed.
* A site-wide cap, when set, bounds everything charged to ALL studies, composed by the same
  accountant: the same people's rows serve every study the site takes part in.
* `charge` is write-ahead: the composed epsilon including the new mechanisms is computed *before*
  recording, for the study and for the whole site; over either cap raises `BudgetExceeded` with
  the numbers; otherwise the charge is committed in one SQLite transaction (WAL,
  synchronous=FULL) and only then does the caller run the mechanism and release its output. A
  crash after the commit leaves a charge without a release, which is safe; the reverse cannot
  happen.
* Idempotent per (study, job_id): a job id names ONE release. Charging it again (a round retried
  after a crash) returns the existing charge and never double-charges. Charging it again with
  different mechanisms is a conflict (`LedgerConflict`), never a silent second charge.
* A lost ledger is not a new one: a fresh file would hand out every budget again. A ledger that
  is missing or empty in a state dir that shows the site took part before (`PARTICIPATION`) is
  refused (`LedgerLost`); only `Ledger.reinitialise` (`synthpool-agent ledger reinit`) makes one
  there, and the new ledger's first event says who did it, why, and what was found.
* Faults are one sentence for the owner (`LedgerError`: a full disk, a damaged file, a file that
  cannot be written), and a charge that failed committed nothing.

The storage is plain SQLite so an auditor can read it with any tool; mechanisms are stored as the
JSON of `GaussianMechanism.to_dict()` so the epsilon can be recomputed independently.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from ..common.privacy import BudgetExceeded, GaussianMechanism, PureSpend, Spend, check_budget
from .identity import KEY_FILE, PUBLIC_FILE

__all__ = ["Ledger", "Cap", "Charge", "Event", "LedgerConflict", "NoBudget", "BudgetExceeded",
           "LedgerError", "LedgerLost", "LedgerCorrupt", "LedgerDiskFull", "participation"]

# 2 added `site_cap` and `events`; a version-1 ledger is upgraded in place when opened, and an
# older agent refuses a version-2 ledger (it would ignore the site-wide cap).
SCHEMA_VERSION = 2
LEDGER_FILE = "ledger.sqlite"
REINIT_FLAG = "--i-understand-earlier-spend-is-forgotten"
#: What a state dir holds once its site took part (agent/identity.py, agent/site_state.py). The
#: ledger is made before any of them (enroll makes it before the key), so with one of them there,
#: a missing or empty ledger was lost, never "not made yet". A WAL without its database is a lost
#: ledger too (and would be replayed into a new file).
PARTICIPATION = (KEY_FILE, PUBLIC_FILE, "holdout.key", "releases", "plans", "reports",
                 LEDGER_FILE + "-wal")
# sqlite's primary result codes (sqlite3.h) that mean "this file cannot serve as the ledger".
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, \
    _SQLITE_NOTADB = 8, 10, 11, 13, 14, 26

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
CREATE TABLE IF NOT EXISTS site_cap (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class NoBudget(BudgetExceeded):
    """The site set no cap for this study (never, or removed it): nothing may be charged
    (default deny)."""


class LedgerConflict(RuntimeError):
    """A job id was charged before with different mechanisms: refuse rather than guess."""


class LedgerError(RuntimeError):
    """The ledger cannot be used as it is; the message is one sentence for the site's owner: the
    file, what was found, what to do."""


class LedgerLost(LedgerError):
    """Missing or empty in a state dir that shows the site took part before."""


class LedgerCorrupt(LedgerError):
    """Not an SQLite database, or a damaged one."""


class LedgerDiskFull(LedgerError):
    """The disk holding the ledger is full; nothing was committed."""


@dataclass(frozen=True)
class Cap:
    study: str | None  # None: the site-wide cap, over all studies
    epsilon: float
    delta: float


@dataclass(frozen=True)
class Event:
    """Something an auditor must see besides charges and cap values: the ledger's creation, a
    re-initialisation, a cap removed, the site-wide cap set or removed."""

    kind: str
    detail: dict
    at: float


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


def _who(site: str | None) -> str:
    return f"site {site}: " if site else ""


def participation(state_dir: str | Path) -> list[str]:
    """The `PARTICIPATION` entries present in `state_dir` (a folder counts once it holds a file)."""
    state_dir = Path(state_dir)
    found = []
    for name in PARTICIPATION:
        p = state_dir / name
        if p.is_file() or (p.is_dir() and any(q.is_file() for q in p.rglob("*"))):
            found.append(name + "/" if p.is_dir() else name)
    return found


class Ledger:
    """A site's ledger in one SQLite file. Cheap to open: every ClientApp process (one per
    Flower message) opens it afresh. Safe against concurrent writers: each charge runs its
    check-and-insert under `BEGIN IMMEDIATE`, so two jobs racing for the last epsilon cannot both
    pass the check."""

    def __init__(self, path: str | Path, timeout: float = 30.0, *, site: str | None = None,
                 _reinit: dict | None = None) -> None:
        """Open the ledger at `path` (a state dir or the file), creating it in a state dir that
        shows no earlier participation. `site` names the site in error sentences. `_reinit` is
        `reinitialise`'s only: the detail of the event that creates a ledger despite that."""
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / LEDGER_FILE
        self.path = path
        self._who = _who(site)
        self._reinit = _reinit
        if _reinit is None and not path.exists():
            self._refuse_if_lost("missing")  # before connecting, which would create the file
        with self._faults("nothing was written"):
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a transaction is exactly
            # what the code says.
            self._db = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        try:
            with self._faults("nothing was written"):
                # Looked at before the pragmas write a header: a ledger emptied by accident is
                # left exactly as it was found.
                if _reinit is None and self._version() is None:
                    self._refuse_if_lost("empty")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._init_schema()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def reinitialise(cls, state_dir: str | Path, *, reason: str, by: str,
                     site: str | None = None) -> "Ledger":
        """A new, empty ledger where the old one is lost or damaged, on its owner's explicit
        word. The old files are kept beside it (renamed), and the new ledger's first event
        records who did it, why, what the agent had refused and where the old files went."""
        path = Path(state_dir) / LEDGER_FILE
        try:
            with cls(path, site=site) as ledger:
                ledger.verify()
        except (LedgerLost, LedgerCorrupt) as e:
            refused = str(e)
        else:
            raise LedgerError(f"{_who(site)}the privacy ledger {path} is sound: there is "
                              "nothing to re-initialise")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = []
        for old in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if old.exists():
                kept.append(str(old.with_name(f"{old.name}.lost-{stamp}")))
                os.replace(old, kept[-1])
        return cls(path, site=site, _reinit={"reason": reason, "by": by, "refused": refused,
                                             "kept_aside": kept})

    # -- plumbing -----------------------------------------------------------------------------
    def _refuse_if_lost(self, found: str) -> None:
        evidence = participation(self.path.parent)
        if evidence:
            raise LedgerLost(
                f"{self._who}the privacy ledger {self.path} is {found}, but this state dir shows "
                f"the site took part before ({', '.join(evidence)}), and a new ledger would hand "
                f"out every budget again, so it is refused: {self._remedy()}")

    def _remedy(self) -> str:
        return (f"restore {LEDGER_FILE} from your backup (deploy/OPERATOR.md, \"Lost or damaged "
                "ledger\"), or, where there is none, start a new one with `synthpool-agent ledger "
                f"reinit --state-dir {self.path.parent} {REINIT_FLAG} --reason \"...\"`")

    @contextmanager
    def _faults(self, undone: str) -> Iterator[None]:
        """sqlite's and the OS's faults as one sentence for the owner (`undone` says what the
        failure left undone); anything else passes unchanged."""
        try:
            yield
        except (sqlite3.Error, OSError) as e:
            code = getattr(e, "sqlite_errorcode", None)
            primary = None if code is None else code & 0xFF
            if primary == _SQLITE_FULL or getattr(e, "errno", None) == errno.ENOSPC:
                raise LedgerDiskFull(f"{self._who}the disk holding {self.path} is full; {undone}: "
                                     "free space there, then retry") from e
            if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise self._corrupt(str(e)) from e
            if primary in (_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN) or \
                    isinstance(e, OSError):
                raise LedgerError(f"{self._who}cannot use the privacy ledger {self.path} ({e}); "
                                  f"{undone}: the state dir must be on a working disk and "
                                  "writable by the account the agent runs as") from e
            raise

    def _corrupt(self, what: str) -> LedgerCorrupt:
        return LedgerCorrupt(f"{self._who}the privacy ledger {self.path} is damaged ({what}), so "
                             f"it is refused: {self._remedy()}")

    def _version(self) -> int | None:
        """The schema version, or None for a file without a ledger in it."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
                            ).fetchone() is None:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return None if row is None else int(row[0])

    def _init_schema(self) -> None:
        # Statement by statement inside one transaction (executescript would COMMIT on its own).
        with self._tx() as db:
            version = self._version()
            if version is not None and version > SCHEMA_VERSION:
                raise LedgerError(f"{self._who}the privacy ledger {self.path} has schema "
                                  f"{version}, and this synthpool reads {SCHEMA_VERSION}: run the "
                                  "synthpool that wrote it (never downgrade a site)")
            if version == SCHEMA_VERSION:
                return
            for stmt in filter(str.strip, _DDL.split(";")):
                db.execute(stmt)  # IF NOT EXISTS: an older ledger gets the tables it lacks
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            if version is not None:
                self._event(db, "upgraded", {"from_schema": version})
            elif self._reinit is not None:
                self._event(db, "reinitialised", self._reinit)
            else:
                self._event(db, "created", {})

    @contextmanager
    def _tx(self, undone: str = "nothing was written") -> Iterator[sqlite3.Connection]:
        with self._faults(undone):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # sqlite rolls some failures back itself (SQLITE_FULL): a second ROLLBACK would
                # raise and hide the real error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def _event(db: sqlite3.Connection, kind: str, detail: dict) -> None:
        db.execute("INSERT INTO events(kind, detail, at) VALUES (?,?,?)",
                   (kind, json.dumps(detail, sort_keys=True), time.time()))

    def verify(self) -> None:
        """Refuse a damaged ledger. A full scan (sqlite's quick_check): a page can be damaged
        behind a sound header, and only reading every page finds it. The agent runs it once per
        start; every message would be too slow for a long ledger."""
        with self._faults("nothing was written"):
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise self._corrupt("; ".join(problems[:3]))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- caps ---------------------------------------------------------------------------------
    def set_cap(self, study: str, epsilon: float, delta: float) -> Cap:
        """Record the site's cap for `study`. Changes are kept in `cap_history` so an auditor sees
        when the owner raised or lowered it."""
        epsilon, delta = check_budget(epsilon, delta, f"the cap of study {study!r}")
        with self._tx() as db:
            self._set_cap(db, study, epsilon, delta)
        return Cap(study, epsilon, delta)

    def apply_caps(self, caps: Mapping[str, tuple[float, float]],
                   site_cap: tuple[float, float] | None = None) -> None:
        """Make the ledger's caps exactly the site's own (site.toml), in one transaction: each
        study's (epsilon, delta), and the site-wide cap or None. A study left out loses its cap,
        so nothing more may be charged to it (its charges stay); each removal is an event."""
        checked = {study: check_budget(*cap, f"the cap of study {study!r}")
                   for study, cap in caps.items()}
        site = None if site_cap is None else check_budget(*site_cap, "the site-wide cap")
        with self._tx() as db:
            for study, (epsilon, delta) in checked.items():
                self._set_cap(db, study, epsilon, delta)
            for study, epsilon, delta in db.execute("SELECT study, epsilon, delta FROM caps"
                                                    ).fetchall():
                if study not in checked:
                    db.execute("DELETE FROM caps WHERE study=?", (study,))
                    self._event(db, "cap removed", {"study": study, "epsilon": epsilon,
                                                    "delta": delta})
            held = self._cap_row(db, None)
            if site is None and held is not None:
                db.execute("DELETE FROM site_cap")
                self._event(db, "site cap removed", {"epsilon": held.epsilon,
                                                     "delta": held.delta})
            elif site is not None and (held is None or (held.epsilon, held.delta) != site):
                db.execute("INSERT OR REPLACE INTO site_cap(id, epsilon, delta, updated_at) "
                           "VALUES (1,?,?,?)", (*site, time.time()))
                self._event(db, "site cap set", {"epsilon": site[0], "delta": site[1]})

    @staticmethod
    def _set_cap(db: sqlite3.Connection, study: str, epsilon: float, delta: float) -> None:
        row = db.execute("SELECT epsilon, delta FROM caps WHERE study=?", (study,)).fetchone()
        if row is None or (float(row[0]), float(row[1])) != (epsilon, delta):
            now = time.time()
            db.execute(
                "INSERT INTO caps(study, epsilon, delta, updated_at) VALUES (?,?,?,?) "
                "ON CONFLICT(study) DO UPDATE SET epsilon=excluded.epsilon, "
                "delta=excluded.delta, updated_at=excluded.updated_at",
                (study, epsilon, delta, now),
            )
            db.execute("INSERT INTO cap_history(study, epsilon, delta, set_at) VALUES (?,?,?,?)",
                       (study, epsilon, delta, now))

    def cap(self, study: str) -> Cap | None:
        return self._cap_row(self._db, study)

    def site_cap(self) -> Cap | None:
        """The site-wide cap over all studies (`[site_budget]`), if the site set one."""
        return self._cap_row(self._db, None)

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
        or when the composition of every study's charges would pass the site-wide cap,
        `NoBudget` when the study has no cap, `LedgerConflict` when `job_id` was charged before
        with other mechanisms, `LedgerError` (nothing recorded) when the ledger cannot be
        written. A repeated call with the same mechanisms records nothing new."""
        gauss = tuple(m for m in mechanisms if isinstance(m, GaussianMechanism))
        pure = tuple(m for m in mechanisms if isinstance(m, PureSpend))
        if len(gauss) + len(pure) != len(mechanisms):
            raise TypeError("mechanisms must be GaussianMechanism or PureSpend")
        m_json, p_json = _canonical(gauss, pure)
        label = label or f"job {job_id!r} of study {study!r}"
        with self._tx("nothing was charged") as db:
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
            after, eps_before, eps_after = self._with(db, cap, gauss, pure)
            if eps_after > cap.epsilon:
                raise BudgetExceeded(
                    f"{label} would spend epsilon {eps_after:.3f} > cap {cap.epsilon:g} at delta "
                    f"{cap.delta:g}; spent so far {eps_before:.3f}"
                )
            site = self._cap_row(db, None)
            if site is not None:
                _, site_before, site_after = self._with(db, site, gauss, pure)
                if site_after > site.epsilon:
                    raise BudgetExceeded(
                        f"{label} would bring this site's epsilon over all studies to "
                        f"{site_after:.3f} > the site-wide cap {site.epsilon:g} at delta "
                        f"{site.delta:g} ([site_budget] in site.toml); spent so far over all "
                        f"studies {site_before:.3f}"
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

    def spent_by_site(self, delta: float | None = None) -> Spend:
        """Everything charged to every study, reported at `delta` (default: the site-wide cap's)."""
        if delta is None:
            cap = self.site_cap()
            if cap is None:
                raise NoBudget("no site-wide cap: pass the delta to report at")
            delta = cap.delta
        return self._spend(self._db, None, delta)

    def events(self) -> list[Event]:
        rows = self._db.execute("SELECT kind, detail, at FROM events ORDER BY id").fetchall()
        return [Event(r[0], json.loads(r[1]), float(r[2])) for r in rows]

    def studies(self) -> list[str]:
        rows = self._db.execute(
            "SELECT study FROM caps UNION SELECT study FROM charges ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def integrity_check(self) -> str:
        return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _cap_row(db: sqlite3.Connection, study: str | None) -> Cap | None:
        row = (db.execute("SELECT epsilon, delta FROM site_cap").fetchone() if study is None else
               db.execute("SELECT epsilon, delta FROM caps WHERE study=?", (study,)).fetchone())
        return None if row is None else Cap(study, float(row[0]), float(row[1]))

    @staticmethod
    def _charge_rows(db: sqlite3.Connection, study: str | None,
                     job_id: str | None = None) -> list[Charge]:
        """The charges of `study` (None: of every study), oldest first."""
        sql = ("SELECT study, job_id, mechanisms, pure, epsilon_before, epsilon_after, delta, "
               "created_at, meta FROM charges WHERE (? IS NULL OR study=?)")
        args: tuple = (study, study)
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
    def _spend(cls, db: sqlite3.Connection, study: str | None, delta: float) -> Spend:
        mechanisms: list[GaussianMechanism] = []
        pure: list[PureSpend] = []
        for c in cls._charge_rows(db, study):
            mechanisms.extend(c.mechanisms)
            pure.extend(c.pure)
        return Spend(delta=delta, mechanisms=mechanisms, pure=pure)

    @classmethod
    def _with(cls, db: sqlite3.Connection, cap: Cap, gauss: Sequence[GaussianMechanism],
              pure: Sequence[PureSpend]) -> tuple[Spend, float, float]:
        """What `cap`'s scope (a study, or all of them) has spent with the new mechanisms added,
        and its composed epsilon before and after them."""
        before = cls._spend(db, cap.study, cap.delta)
        after = Spend(cap.delta, [*before.mechanisms, *gauss], [*before.pure, *pure])
        return after, before.epsilon, after.epsilon
