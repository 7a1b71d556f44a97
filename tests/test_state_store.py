"""coordinator/admin/state.py and migrations.py, on SQLite and on a real PostgreSQL 15.

The PostgreSQL runs are a throwaway cluster (initdb in a temp dir, loopback port, fsync off),
started once for the module; each test gets a database of its own. They skip, with the reason,
when the server binaries or the psycopg driver are missing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from synthpool.coordinator.admin import migrations
from synthpool.coordinator.admin import state as st
from synthpool.coordinator.admin.state import State


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- a throwaway PostgreSQL ----------------------------------------------------------------------

def _pg_bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    bindir = Path(out.stdout.strip())
    return bindir if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pg_server():
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install 'psycopg[binary]'")
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (pg_config --bindir has no initdb)")
    # initdb refuses to run as root: run the cluster as the `postgres` account when we are root.
    prefix: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="synthpool-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(workdir)
            pytest.skip("running as root and there is no 'postgres' account to run initdb as")
        if not shutil.which("runuser"):
            shutil.rmtree(workdir)
            pytest.skip("running as root and `runuser` is missing")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = workdir / "data", _free_port()
    run = lambda *cmd: subprocess.run([*prefix, *map(str, cmd)], capture_output=True,  # noqa: E731
                                      text=True, timeout=60)
    out = run(bindir / "initdb", "-D", data, "-A", "trust", "-U", "synthpool", "--no-sync")
    if out.returncode:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"initdb failed: {out.stderr.strip()[-300:]}")
    out = run(bindir / "pg_ctl", "-D", data, "-l", workdir / "log", "-w", "-t", "30", "-o",
              f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
              "-c full_page_writes=off", "start")
    if out.returncode:
        log = (workdir / "log").read_text() if (workdir / "log").exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {out.stderr.strip()[-300:]} {log[-300:]}")
    try:
        yield f"postgresql+psycopg://synthpool@127.0.0.1:{port}"
    finally:
        run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)


_db_numbers = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+pysqlite:///{tmp_path / 'coordinator.db'}"
    server = request.getfixturevalue("pg_server")
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"{server}/{name}"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def state(db_url, clock):
    s = State(db_url, clock=clock)
    yield s
    s.close()


# -- migrations ----------------------------------------------------------------------------------

def test_migrations_apply_once_and_survive_restart(db_url):
    engine = st.create_engine(db_url)
    assert migrations.migrate(engine) == [1, 2, 3, 4, 5, 6]
    assert migrations.migrate(engine) == []  # idempotent
    engine.dispose()

    first = State(db_url)
    first.invite_site("hosp-a", by="token:t")
    first.close()
    again = State(db_url)  # a restarted coordinator: migrates (nothing to do), keeps the data
    assert [s.name for s in again.list_sites()] == ["hosp-a"]
    assert [v for v, _ in migrations.applied(again.engine)] == [1, 2, 3, 4, 5, 6]
    again.close()


def test_upgrade_from_an_older_schema_keeps_data(db_url):
    engine = st.create_engine(db_url)
    assert migrations.migrate(engine, target=1) == [1]
    with engine.begin() as conn:
        conn.execute(st.audit_log.insert().values(at=1.0, actor="x", action="Old", arguments="{}",
                                                  outcome="OK", detail="", peer=""))
    engine.dispose()
    s = State(db_url)  # applies the migrations after 1 only
    assert [v for v, _ in migrations.applied(s.engine)] == [1, 2, 3, 4, 5, 6]
    assert [e.action for e in s.audit_entries()] == ["Old"]
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with s.engine.begin() as conn:
            conn.execute(st.audit_log.update().values(actor="someone else"))
    s.close()


def test_a_newer_database_is_refused(db_url):
    s = State(db_url)
    with s.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_migrations (version, description, applied_at) "
                             "VALUES (99, 'from the future', 0)"))
    s.close()
    with pytest.raises(RuntimeError, match="newer than this coordinator"):
        State(db_url)


def test_tables_match_the_sum_of_migrations(state):
    inspector = sa.inspect(state.engine)
    for table in st.metadata.sorted_tables:
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(columns) == set(table.c.keys()), table.name
        for col in table.c:
            assert columns[col.name]["nullable"] == col.nullable or col.primary_key, \
                (table.name, col.name)


def test_an_audit_entry_is_bounded_whatever_it_is_given(state):
    state.record_audit("anonymous", "InviteSite", {"name": "x" * 100_000}, "INVALID_ARGUMENT",
                       "y" * 100_000)
    entry = state.audit_entries()[0]
    assert set(entry.arguments) == {"truncated"}
    assert entry.arguments["truncated"]["chars"] > 100_000
    assert len(entry.detail) <= st.MAX_AUDIT_DETAIL and entry.detail.endswith("(100000 chars)")


def test_audit_log_is_append_only(state):
    state.record_audit("token:t", "ListSites", {}, "OK")
    for statement in ("UPDATE audit SET actor = 'x'", "DELETE FROM audit"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with state.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    assert [e.actor for e in state.audit_entries()] == ["token:t"]


# -- sites and tokens ----------------------------------------------------------------------------

def test_only_token_hashes_are_stored(state):
    _, invite = state.invite_site("hosp-a", by="token:t")
    admin = state.add_admin_token("ops")
    with state.engine.connect() as conn:
        dump = repr([conn.execute(sa.select(t)).all() for t in st.metadata.sorted_tables])
    assert invite not in dump and admin not in dump
    assert st.token_hash(invite) in dump and st.token_hash(admin) in dump
    assert state.admin_for_token(admin) == "ops"
    assert state.admin_for_token("spa_wrong") is None
    state.revoke_admin_token("ops")
    assert state.admin_for_token(admin) is None


def test_an_approval_that_lost_a_race_approves_nothing_and_undoes_the_admission(state):
    """The SuperLink admits the key before the approval's transaction; if the site was revoked
    and registered another key meanwhile, the admission is undone and nothing is approved. A
    concurrent approval of the same key that already committed is left alone."""
    _, token = state.invite_site("hosp-a", by="t", ttl_seconds=60)
    state.consume_invitation(token, "ecdsa-sha2-nistp256 BBBB", "SHA256:new")
    undone: list[int] = []
    with pytest.raises(st.Precondition, match="changed while its key was being admitted"):
        state.approve_site("hosp-a", by="t", admitted=(7, "SHA256:old"), undo=undone.append)
    assert undone == [7] and state.get_site("hosp-a").status == st.SITE_REGISTERED
    assert state.approve_site("hosp-a", by="t", admitted=(8, "SHA256:new"),
                              undo=undone.append).flower_node_id == "8"
    state.approve_site("hosp-a", by="t", admitted=(8, "SHA256:new"), undo=undone.append)
    assert undone == [7]


def test_site_lifecycle(state, clock):
    site, token = state.invite_site("hosp-a", by="token:t", ttl_seconds=60)
    assert site.status == st.SITE_INVITED and site.token_expires_at == clock.t + 60
    with pytest.raises(st.Precondition):
        state.approve_site("hosp-a", by="token:t")  # nothing registered yet
    site = state.consume_invitation(token, "ecdsa-sha2-nistp256 AAAA", "SHA256:abc")
    assert (site.status, site.public_key_fingerprint) == (st.SITE_REGISTERED, "SHA256:abc")
    with pytest.raises(st.Precondition, match="not SHA256:zzz"):
        state.approve_site("hosp-a", by="token:t", expected_fingerprint="SHA256:zzz")
    assert state.approve_site("hosp-a", by="token:t", expected_fingerprint="SHA256:abc").status \
        == st.SITE_APPROVED
    # Re-approving an approved site with a wrong fingerprint once answered "approved".
    with pytest.raises(st.Precondition, match="not SHA256:zzz"):
        state.approve_site("hosp-a", by="token:t", expected_fingerprint="SHA256:zzz")
    with pytest.raises(st.AlreadyExists):
        state.invite_site("hosp-a", by="token:t")
    revoked = state.revoke_site("hosp-a", by="token:t", reason="left the consortium")
    assert (revoked.status, revoked.revoke_reason) == (st.SITE_REVOKED, "left the consortium")
    # A revoked site may be invited again; it must register a new key.
    again, _ = state.invite_site("hosp-a", by="token:t")
    assert again.status == st.SITE_INVITED and again.public_key is None


def test_expired_reused_and_superseded_tokens_are_refused(state, clock):
    _, token = state.invite_site("hosp-a", by="t", ttl_seconds=60)
    clock.t += 61
    with pytest.raises(st.BadToken):
        state.consume_invitation(token, "k", "f")

    _, token = state.invite_site("hosp-a", by="t", ttl_seconds=60)  # re-invite: fresh token
    state.consume_invitation(token, "k", "f")
    with pytest.raises(st.BadToken):
        state.consume_invitation(token, "k2", "f2")  # one use only
    assert state.get_site("hosp-a").public_key == "k"

    _, old = state.invite_site("hosp-b", by="t")
    _, new = state.invite_site("hosp-b", by="t")
    with pytest.raises(st.BadToken):
        state.consume_invitation(old, "k", "f")
    state.revoke_site("hosp-b", by="t")
    with pytest.raises(st.BadToken):
        state.consume_invitation(new, "k", "f")


def test_a_token_registers_one_key_even_under_a_race(state):
    _, token = state.invite_site("hosp-a", by="t")
    results: list[str] = []
    barrier = threading.Barrier(4)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            state.consume_invitation(token, f"key-{i}", f"fp-{i}")
            results.append("ok")
        except st.BadToken:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok", "refused", "refused", "refused"]


# -- audit, studies, runs ------------------------------------------------------------------------

def test_audited_commits_with_the_action_and_logs_refusals_after_rollback(state):
    with state.audited("token:t", "InviteSite", {"name": "hosp-a"}) as ctx:
        state.invite_site("hosp-a", by=ctx.actor)
        ctx.detail = "invited"
    with pytest.raises(st.AlreadyExists):
        with state.audited("token:t", "CreateStudy", {"name": "s"}):
            state.create_study(name="s", schema_yaml="x", schema_fingerprint="f", epsilon=1,
                               delta=1e-5, population="disjoint", rounds=1, rows=10, sites_=[],
                               by="token:t")
            state.invite_site("hosp-b", by="token:t")
            state.create_study(name="s", schema_yaml="x", schema_fingerprint="f", epsilon=1,
                               delta=1e-5, population="disjoint", rounds=1, rows=10, sites_=[],
                               by="token:t")
    # The failed action left nothing behind...
    assert [s.name for s in state.list_sites()] == ["hosp-a"]
    assert state.list_studies() == []
    # ...but both are in the log, with their outcome.
    entries = state.audit_entries()
    assert [(e.action, e.outcome, e.detail) for e in entries] == [
        ("InviteSite", "OK", "invited"),
        ("CreateStudy", "ALREADY_EXISTS", "study 's' exists")]


def test_runs_events_and_interruption(state):
    state.invite_site("hosp-a", by="t")
    state.create_study(name="s", schema_yaml="x", schema_fingerprint="f", epsilon=1, delta=1e-5,
                       population="disjoint", rounds=2, rows=10, sites_=["hosp-a"], by="t")
    run = state.start_run("s", by="t")
    with pytest.raises(st.Precondition, match="already has run"):
        state.start_run("s", by="t")
    state.add_event(run.id, "started")
    state.add_event(run.id, "round", 1, details={"loss": 0.5})
    assert [(e.seq, e.kind) for e in state.events(run.id)] == [(1, "started"), (2, "round")]
    assert state.events(run.id, after_seq=1)[0].details == {"loss": 0.5}
    assert state.get_study("s").status == st.STUDY_TRAINING
    assert state.interrupt_running() == [run.id]
    assert state.get_run(run.id).status == st.RUN_INTERRUPTED
    assert not state.end_run(run.id, st.RUN_FINISHED)  # the first ending wins
    second = state.start_run("s", by="t")
    assert state.end_run(second.id, st.RUN_FINISHED, "done")
    assert state.latest_run("s").status == st.RUN_FINISHED
    assert state.get_study("s").status == st.STUDY_FINISHED


def _study(state, name="s"):
    state.create_study(name=name, schema_yaml="x", schema_fingerprint="f", epsilon=1, delta=1e-5,
                       population="disjoint", rounds=1, rows=10, sites_=[], by="t")


def test_the_database_keeps_a_study_to_one_running_run(state):
    _study(state)
    row = dict(study="s", status=st.RUN_RUNNING, started_at=1.0, started_by="t", message="")
    with state.engine.begin() as conn:
        conn.execute(st.runs.insert().values(**row))
    with pytest.raises(sa.exc.IntegrityError):
        with state.engine.begin() as conn:
            conn.execute(st.runs.insert().values(**row))


def test_a_start_that_passed_the_check_still_cannot_add_a_second_running_run(state, monkeypatch):
    _study(state)
    first = state.start_run("s", by="t")
    # What a concurrent start saw on PostgreSQL before `first` committed: no running run.
    monkeypatch.setattr(state, "latest_run", lambda study: None)
    with pytest.raises(st.Precondition, match="already has a run running"):
        state.start_run("s", by="t")
    monkeypatch.undo()
    assert state.latest_run("s") == first
    with state.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(st.runs)).scalar() == 1


def test_concurrent_starts_of_one_study_start_one_run(state):
    _study(state)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def attempt() -> None:
        barrier.wait()
        try:
            state.start_run("s", by="t")
            results.append("started")
        except st.Precondition:
            results.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["refused"] * 5 + ["started"]


def test_migration_5_ends_all_but_the_newest_of_runs_a_race_left_running(db_url):
    engine = st.create_engine(db_url)
    migrations.migrate(engine, target=4)
    with engine.begin() as conn:
        # The table as it was before migration 6 (its `overlap` column is `population` since).
        conn.execute(sa.text(
            "INSERT INTO studies (name, schema_yaml, schema_fingerprint, epsilon, delta, overlap, "
            "rounds, rows, sites, status, created_at, created_by) VALUES ('s', 'x', 'f', 1, "
            "1e-5, 'disjoint', 1, 10, '[]', 'training', 0, 't')"))
        for _ in range(2):
            conn.execute(st.runs.insert().values(study="s", status=st.RUN_RUNNING, started_at=0,
                                                 started_by="t", message=""))
    engine.dispose()
    s = State(db_url)
    first, second = (s.get_run(i) for i in (1, 2))
    assert (first.status, second.status) == (st.RUN_INTERRUPTED, st.RUN_RUNNING)
    assert "migration 5" in first.message
    assert s.get_study("s").population == "disjoint"  # migration 6 kept the study's setting
    s.close()


def test_admin_certificates_issued_and_denied(state):
    fp = "f" * 64
    issued = state.record_admin_certificate("alice", "ab12", fp, 2e9)
    assert state.record_admin_certificate("alice", "ab12", fp, 2e9) == issued  # idempotent
    assert state.revoked_admin_certificate("ab12", fp) is None
    revoked = state.revoke_admin_certificate("token:t", fingerprint=fp, reason="lost laptop")
    assert (revoked.name, revoked.serial, revoked.revoked_by, revoked.revoke_reason) == \
        ("alice", "ab12", "token:t", "lost laptop")
    assert state.revoked_admin_certificate("ab12", "0" * 64).name == "alice"  # by serial
    with pytest.raises(st.Precondition, match="'alice' serial ab12 is already revoked"):
        state.revoke_admin_certificate("token:t", serial="ab12")
    # One never recorded here (issued before the table existed) joins the deny list as given.
    other = state.revoke_admin_certificate("token:t", serial="cd34")
    assert (other.name, other.fingerprint) == (None, None)
    assert state.revoked_admin_certificate("cd34", "e" * 64) == other
    with pytest.raises(st.Invalid, match="serial or its SHA-256 fingerprint"):
        state.revoke_admin_certificate("token:t")
    with pytest.raises(st.Invalid, match="two different certificates"):
        state.revoke_admin_certificate("token:t", serial="cd34", fingerprint=fp)
    assert [c.serial for c in state.list_admin_certificates()] == ["ab12", "cd34"]


def test_releases_index(state):
    state.create_study(name="s", schema_yaml="x", schema_fingerprint="f", epsilon=1, delta=1e-5,
                       population="overlapping", rounds=1, rows=10, sites_=[], by="t")
    state.put_release(st.ReleaseRecord("r1", "s", 2.0, 3, 100, "a" * 64))
    state.put_release(st.ReleaseRecord("r0", None, 1.0, 3, 50, "b" * 64))
    state.put_release(st.ReleaseRecord("r1", "s", 2.0, 3, 120, "c" * 64))  # refreshed
    assert [(r.name, r.bytes) for r in state.list_releases()] == [("r0", 50), ("r1", 120)]
    assert [r.name for r in state.list_releases("s")] == ["r1"]

