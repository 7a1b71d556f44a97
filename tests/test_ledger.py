"""The site ledger: refusal over the cap (a study's and the site-wide one), idempotent jobs,
exact composition, crash safety, caps that follow site.toml, and a lost, damaged or full ledger
refused in one sentence (never silently recreated at zero spend)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthpool.agent.host import daemon
from synthpool.agent.cli import app
from synthpool.agent.config import ConfigError, load_site_config
from synthpool.agent.ledger import (
    LEDGER_FILE, REINIT_FLAG, Ledger, LedgerConflict, LedgerCorrupt, LedgerDiskFull, LedgerLost,
    NoBudget,
)
from synthpool.common.privacy import (
    BudgetExceeded, GaussianMechanism, InvalidBudget, PureSpend, epsilon_of,
)

DELTA = 1e-5


def sgd(name: str, sigma: float = 1.0, q: float = 0.01, steps: int = 100) -> GaussianMechanism:
    return GaussianMechanism(name, sigma, q, steps)


def test_no_cap_means_no_charge(tmp_path):
    ledger = Ledger(tmp_path)
    with pytest.raises(NoBudget, match="no privacy budget configured for study 'adult'"):
        ledger.charge("adult", "round-1", [sgd("r1")])
    assert ledger.charges("adult") == []


def test_composition_equals_epsilon_of(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_cap("adult", 10.0, DELTA)
    mechs = [sgd("count", 20.0, 1.0, 1), sgd("r1", 1.1, 0.02, 50), sgd("r2", 1.1, 0.02, 50)]
    ledger.charge("adult", "count", mechs[:1])
    ledger.charge("adult", "round-1", mechs[1:2])
    total = ledger.charge("adult", "round-2", mechs[2:])
    expected = epsilon_of(mechs, DELTA)
    assert total.epsilon == pytest.approx(expected, rel=1e-9)
    assert ledger.spent("adult").epsilon == pytest.approx(expected, rel=1e-9)
    # Composed, not summed: RDP composition is tighter than adding the epsilons.
    assert expected < sum(epsilon_of([m], DELTA) for m in mechs)
    charges = ledger.charges("adult")
    assert [c.job_id for c in charges] == ["count", "round-1", "round-2"]
    assert charges[-1].epsilon_after == pytest.approx(expected)
    assert charges[-1].epsilon_before == pytest.approx(epsilon_of(mechs[:2], DELTA))


def test_pure_spends_add_on_top(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_cap("s", 5.0, DELTA)
    total = ledger.charge("s", "draft", [PureSpend("schema-draft", 0.5, 1e-6), sgd("r1")])
    assert total.epsilon == pytest.approx(epsilon_of([sgd("r1")], DELTA - 1e-6) + 0.5)


def test_over_cap_is_refused_with_the_numbers_and_records_nothing(tmp_path):
    ledger = Ledger(tmp_path)
    one = sgd("r", 0.8, 0.05, 100)
    eps_one = epsilon_of([one], DELTA)
    eps_two = epsilon_of([one, one], DELTA)
    ledger.set_cap("adult", (eps_one + eps_two) / 2, DELTA)
    ledger.charge("adult", "round-1", [one])
    with pytest.raises(BudgetExceeded) as err:
        ledger.charge("adult", "round-2", [one], label="round 2")
    msg = str(err.value)
    assert msg.startswith(f"round 2 would spend epsilon {eps_two:.3f} > cap")
    assert "at delta 1e-05" in msg and f"spent so far {eps_one:.3f}" in msg
    assert [c.job_id for c in ledger.charges("adult")] == ["round-1"]
    # Lowering the cap below what was spent blocks everything after; history is kept.
    ledger.set_cap("adult", eps_one / 2, DELTA)
    with pytest.raises(BudgetExceeded):
        ledger.charge("adult", "tiny", [sgd("tiny", 50.0, 1.0, 1)])
    rows = sqlite3.connect(ledger.path).execute("SELECT COUNT(*) FROM cap_history").fetchone()
    assert rows[0] == 2


def test_same_job_is_charged_once(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_cap("adult", 3.0, DELTA)
    first = ledger.charge("adult", "round-1", [sgd("r1")])
    again = Ledger(tmp_path).charge("adult", "round-1", [sgd("r1")])  # a fresh process, retried
    assert again.epsilon == pytest.approx(first.epsilon)
    assert len(ledger.charges("adult")) == 1
    with pytest.raises(LedgerConflict):
        ledger.charge("adult", "round-1", [sgd("r1", sigma=0.5)])
    assert len(ledger.charges("adult")) == 1
    # Studies are separate budgets.
    ledger.set_cap("other", 1.0, DELTA)
    assert ledger.studies() == ["adult", "other"]
    assert ledger.spent("other").epsilon == 0.0


def test_sqlite_settings(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_WRITER = textwrap.dedent(
    """
    import sys
    from synthpool.agent.ledger import Ledger
    from synthpool.common.privacy import GaussianMechanism
    ledger = Ledger(sys.argv[1])
    ledger.set_cap("adult", 1e6, 1e-5)
    i = 0
    while True:
        ledger.charge("adult", f"job-{i}", [GaussianMechanism(f"m{i}", 5.0, 0.01, 10)])
        print(i, flush=True)   # printed only after charge() returned: committed
        i += 1
    """
)


def test_kill_9_mid_charging_leaves_every_committed_charge(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )
    committed = []
    deadline = time.monotonic() + 60
    try:
        while len(committed) < 25 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(committed) >= 25, "writer did not get going"
    ledger = Ledger(tmp_path)
    assert ledger.integrity_check() == "ok"
    jobs = [c.job_id for c in ledger.charges("adult")]
    # Every charge the writer saw returned is there; at most one more that committed before the
    # print; ids are contiguous (no torn or half-written row).
    assert set(f"job-{i}" for i in committed) <= set(jobs)
    assert len(jobs) - len(committed) in (0, 1)
    assert jobs == [f"job-{i}" for i in range(len(jobs))]
    # And it keeps working.
    ledger.charge("adult", "after-crash", [sgd("x")])


def test_agent_cli_shows_caps_charges_and_spent(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_cap("adult", 3.0, DELTA)
    ledger.charge("adult", "t1/round-1", [sgd("dpsgd/t1/round-1")])
    runner = CliRunner()
    text = runner.invoke(app, ["ledger", "--state-dir", str(tmp_path)])
    assert text.exit_code == 0, text.output
    eps = epsilon_of([sgd("x")], DELTA)
    assert f"study adult: cap epsilon 3 at delta 1e-05; spent epsilon {eps:.3f}" in text.output
    assert "t1/round-1: 0.000 -> " in text.output
    as_json = runner.invoke(app, ["ledger", "--state-dir", str(tmp_path), "--json"])
    report = __import__("json").loads(as_json.output)
    assert report["studies"][0]["charges"][0]["mechanisms"][0]["noise_multiplier"] == 1.0
    assert report["site_cap"] is None and report["events"][0]["kind"] == "created"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["ledger", "--state-dir", str(empty)]).exit_code == 2


@pytest.mark.parametrize("epsilon, delta", [(3.0, 1.5), (3.0, 0.0), (3.0, 1.0), (0.0, 1e-5),
                                            (float("inf"), 1e-5), (float("nan"), 1e-5)])
def test_a_cap_without_guarantee_is_refused_and_recorded_nowhere(tmp_path, epsilon, delta):
    ledger = Ledger(tmp_path)
    with pytest.raises(InvalidBudget, match="the cap of study 'adult': (epsilon|delta) must"):
        ledger.set_cap("adult", epsilon, delta)
    db = sqlite3.connect(ledger.path)
    assert db.execute("SELECT COUNT(*) FROM caps").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM cap_history").fetchone()[0] == 0
    with pytest.raises(NoBudget):
        ledger.charge("adult", "round-1", [sgd("r1")])
    with pytest.raises(InvalidBudget, match="the site-wide cap: (epsilon|delta) must"):
        ledger.apply_caps({}, site_cap=(epsilon, delta))
    assert db.execute("SELECT COUNT(*) FROM site_cap").fetchone()[0] == 0


# -- the site-wide cap ------------------------------------------------------------------------------

def test_the_site_wide_cap_holds_across_studies(tmp_path):
    ledger = Ledger(tmp_path)
    one = sgd("r", 0.8, 0.05, 100)
    eps_one, eps_two = epsilon_of([one], DELTA), epsilon_of([one, one], DELTA)
    site_eps = (eps_one + eps_two) / 2
    # Each study's own cap would allow its round; together they pass the site's.
    ledger.apply_caps({"a": (10.0, DELTA), "b": (10.0, DELTA)}, site_cap=(site_eps, DELTA))
    ledger.charge("a", "round-1", [one])
    with pytest.raises(BudgetExceeded) as err:
        ledger.charge("b", "round-1", [one], label="round 1 of study 'b'")
    assert str(err.value) == (
        f"round 1 of study 'b' would bring this site's epsilon over all studies to "
        f"{eps_two:.3f} > the site-wide cap {site_eps:g} at delta 1e-05 ([site_budget] in "
        f"site.toml); spent so far over all studies {eps_one:.3f}")
    assert ledger.charges("b") == []
    # What is left fits: the site composes every study's mechanisms with the one accountant.
    small = sgd("s", 30.0, 1.0, 1)
    ledger.charge("b", "stats", [small])
    assert ledger.spent_by_site().epsilon == pytest.approx(epsilon_of([one, small], DELTA))
    assert ledger.spent("b").epsilon == pytest.approx(epsilon_of([small], DELTA))
    # At its own delta, not a study's.
    assert ledger.spent_by_site(1e-3).epsilon == pytest.approx(epsilon_of([one, small], 1e-3))


def _site_toml(tmp_path: Path, budgets: str, name: str = "hosp-a", port: int = 19094) -> Path:
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "rows.csv").write_text("39, State-gov\n")
    path = folder / "site.toml"
    path.write_text(f'[site]\nname = "{name}"\ndata = "rows.csv"\nstate_dir = "{tmp_path}/state"\n'
                    f'[superlink]\naddress = "127.0.0.1:1"\ninsecure = true\n'
                    f'[supernode]\nport = {port}\n{budgets}')
    return path


ADULT_AND_OTHER = ("[budgets.adult]\nepsilon = 3.0\ndelta = 1e-5\n"
                   "[budgets.other]\nepsilon = 2.0\ndelta = 1e-5\n")


def test_caps_follow_site_toml_a_removed_table_ends_the_study(tmp_path):
    path = _site_toml(tmp_path, ADULT_AND_OTHER + "[site_budget]\nepsilon = 4.0\ndelta = 1e-6\n")
    with daemon.prepare(load_site_config(path)) as ledger:
        assert ledger.site_cap().epsilon == 4.0 and ledger.site_cap().delta == 1e-6
        ledger.charge("other", "stats", [sgd("s", 30.0, 1.0, 1)])
    path.write_text(path.read_text().replace("[budgets.other]\nepsilon = 2.0\ndelta = 1e-5\n", "")
                    .replace("[site_budget]\nepsilon = 4.0\ndelta = 1e-6\n", ""))
    with daemon.prepare(load_site_config(path)) as ledger:
        assert ledger.cap("other") is None and ledger.cap("adult").epsilon == 3.0
        with pytest.raises(NoBudget, match="no privacy budget configured for study 'other'"):
            ledger.charge("other", "round-1", [sgd("r1")])
        assert [c.job_id for c in ledger.charges("other")] == ["stats"]  # history stays
        assert ledger.site_cap() is None
        events = [(e.kind, e.detail) for e in ledger.events()]
        assert events[1:] == [("site cap set", {"epsilon": 4.0, "delta": 1e-6}),
                              ("cap removed", {"study": "other", "epsilon": 2.0, "delta": 1e-5}),
                              ("site cap removed", {"epsilon": 4.0, "delta": 1e-6})]


@pytest.mark.parametrize("table, says", [
    ("epsilon = 0\ndelta = 1e-5", "site_budget.epsilon\n  Value error, epsilon must be a finite "
                                  "number > 0"),
    ("epsilon = 5.0\ndelta = 1.0", "site_budget.delta\n  Value error, delta must lie strictly "
                                   "between 0 and 1"),
])
def test_a_site_budget_without_guarantee_is_a_config_error(tmp_path, table, says):
    path = _site_toml(tmp_path, f"[site_budget]\n{table}\n")
    with pytest.raises(ConfigError, match="invalid site config") as err:
        load_site_config(path)
    assert says in str(err.value)


def test_a_version_1_ledger_is_upgraded_in_place(tmp_path):
    with Ledger(tmp_path) as ledger:
        ledger.set_cap("adult", 3.0, DELTA)
        ledger.charge("adult", "round-1", [sgd("r1")])
    db = sqlite3.connect(tmp_path / LEDGER_FILE)   # what version 1 wrote
    db.executescript("DROP TABLE site_cap; DROP TABLE events; "
                     "UPDATE meta SET value='1' WHERE key='schema_version';")
    db.close()
    with Ledger(tmp_path) as ledger:
        assert [e.kind for e in ledger.events()] == ["upgraded"]
        assert [c.job_id for c in ledger.charges("adult")] == ["round-1"]
    db = sqlite3.connect(tmp_path / LEDGER_FILE)
    db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="has schema 3, and this synthpool reads 2"):
        Ledger(tmp_path)


# -- a lost, damaged or full ledger -----------------------------------------------------------------

def _took_part(tmp_path: Path) -> Path:
    """A site that ran: its ledger charged, a release saved and its hold-out key made."""
    path = _site_toml(tmp_path, ADULT_AND_OTHER)
    cfg = load_site_config(path)
    with daemon.prepare(cfg) as ledger:
        ledger.charge("adult", "t1/stats", [sgd("s", 30.0, 1.0, 1)])
    (cfg.state_dir / "releases" / "adult").mkdir(parents=True)
    (cfg.state_dir / "releases" / "adult" / "t1_stats.npz").write_bytes(b"released")
    (cfg.state_dir / "holdout.key").write_text("0123456789abcdef")
    assert not (cfg.state_dir / f"{LEDGER_FILE}-wal").exists()   # all of it in the main file
    return path


def _start(config: Path, code: int) -> str:
    """`synthpool-agent run`, which must stop before it starts any child."""
    out = CliRunner().invoke(app, ["run", "--config", str(config)], catch_exceptions=False)
    assert out.exit_code == code, out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    return out.output.strip()


@pytest.mark.parametrize("how, found", [("deleted", "missing"), ("truncated", "empty")])
def test_a_lost_ledger_is_refused_not_recreated_at_zero_spend(tmp_path, how, found):
    config = _took_part(tmp_path)
    file = tmp_path / "state" / LEDGER_FILE
    if how == "deleted":
        file.unlink()
    else:
        file.write_bytes(b"")
    said = _start(config, code=2)
    assert said.startswith(f"site hosp-a: the privacy ledger {file} is {found}, but this state "
                           "dir shows the site took part before (holdout.key, releases/)")
    assert "a new ledger would hand out every budget again" in said
    assert f"ledger reinit --state-dir {file.parent} {REINIT_FLAG}" in said
    # Nothing was made or written in its place.
    assert (not file.exists()) if how == "deleted" else file.read_bytes() == b""
    with pytest.raises(LedgerLost):
        Ledger(file.parent)   # a ClientApp's open is refused the same way


def test_a_fresh_state_dir_gets_a_new_ledger(tmp_path):
    cfg = load_site_config(_site_toml(tmp_path, ADULT_AND_OTHER))
    with daemon.prepare(cfg) as ledger:
        assert [e.kind for e in ledger.events()] == ["created"]


def test_reinit_is_explicit_logged_and_keeps_the_old_file(tmp_path):
    config = _took_part(tmp_path)
    state = tmp_path / "state"
    (state / LEDGER_FILE).write_bytes(b"")
    runner = CliRunner()
    base = ["ledger", "reinit", "--state-dir", str(state), "--reason", "disk replaced, no backup"]
    refused = runner.invoke(app, base)
    assert refused.exit_code == 2 and REINIT_FLAG in refused.output
    assert (state / LEDGER_FILE).read_bytes() == b""
    done = runner.invoke(app, [*base, REINIT_FLAG])
    assert done.exit_code == 0, done.output
    with Ledger(state) as ledger:
        (event,) = ledger.events()
    assert event.kind == "reinitialised" and event.detail["reason"] == "disk replaced, no backup"
    assert event.detail["by"] and "is empty" in event.detail["refused"]
    (kept,) = event.detail["kept_aside"]
    assert Path(kept).name.startswith(f"{LEDGER_FILE}.lost-") and Path(kept).read_bytes() == b""
    with daemon.prepare(load_site_config(config)) as ledger:   # the agent starts again
        assert ledger.cap("adult").epsilon == 3.0 and ledger.charges("adult") == []
    shown = runner.invoke(app, ["ledger", "--state-dir", str(state)]).output
    assert "reinitialised" in shown and "disk replaced, no backup" in shown
    again = runner.invoke(app, [*base, REINIT_FLAG])   # a sound ledger is never replaced
    assert again.exit_code == 2 and "is sound: there is nothing to re-initialise" in again.output
    with daemon.hold_state_dir(state, "hosp-a"):       # nor one an agent is running on
        busy = runner.invoke(app, [*base, REINIT_FLAG])
    assert busy.exit_code == 2 and f"(pid {os.getpid()}) is running on the state dir" in busy.output


def test_a_damaged_ledger_is_refused_in_one_sentence(tmp_path):
    config = _took_part(tmp_path)
    file = tmp_path / "state" / LEDGER_FILE
    good = file.read_bytes()
    file.write_bytes(b"this is no database " * 300)
    said = _start(config, code=2)
    assert said.startswith(f"site hosp-a: the privacy ledger {file} is damaged (file is not a "
                           "database), so it is refused: restore ledger.sqlite from your backup")
    # A damaged page behind a sound header: found by the start's full scan.
    file.write_bytes(good)
    with Ledger(file) as ledger:
        for i in range(40):
            ledger.charge("adult", f"job-{i}", [sgd("s", 30.0, 1.0, 1)], meta={"pad": "x" * 3000})
    data = bytearray(file.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[10 * page:14 * page] = b"\xa5" * (4 * page)
    file.write_bytes(bytes(data))
    with pytest.raises(LedgerCorrupt, match=f"the privacy ledger {file} is damaged"):
        daemon.prepare(load_site_config(config))
    assert "is damaged" in _start(config, code=2)


def test_a_full_disk_charges_nothing_and_says_so(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_cap("adult", 10.0, DELTA)
    ledger.charge("adult", "round-1", [sgd("r1")])
    # sqlite's own limit on the file's pages: the same SQLITE_FULL a full disk gives.
    pages = ledger._db.execute("PRAGMA page_count").fetchone()[0]
    ledger._db.execute(f"PRAGMA max_page_count={pages}")
    big = {"pad": "x" * 20000}
    with pytest.raises(LedgerDiskFull) as err:
        ledger.charge("adult", "round-2", [sgd("r2")], meta=big)
    assert str(err.value) == (f"the disk holding {ledger.path} is full; nothing was charged: "
                              "free space there, then retry")
    assert [c.job_id for c in ledger.charges("adult")] == ["round-1"]
    assert Ledger(tmp_path).charges("adult")[-1].job_id == "round-1"   # another process's view
    assert ledger.integrity_check() == "ok"
    ledger._db.execute(f"PRAGMA max_page_count={1 << 30}")         # space freed: it goes on
    ledger.charge("adult", "round-2", [sgd("r2")], meta=big)
    assert [c.job_id for c in Ledger(tmp_path).charges("adult")] == ["round-1", "round-2"]
