"""The site ledger: refusal over the cap, idempotent jobs, exact composition, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from synthpool.agent.ledger import Ledger, LedgerConflict, NoBudget
from synthpool.common.privacy import BudgetExceeded, GaussianMechanism, PureSpend, epsilon_of

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
    from typer.testing import CliRunner

    from synthpool.agent.cli import app

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
    assert report[0]["charges"][0]["mechanisms"][0]["noise_multiplier"] == 1.0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["ledger", "--state-dir", str(empty)]).exit_code == 2


@pytest.mark.parametrize("epsilon, delta", [(3.0, 1.5), (3.0, 0.0), (3.0, 1.0), (0.0, 1e-5),
                                            (float("inf"), 1e-5), (float("nan"), 1e-5)])
def test_a_cap_without_guarantee_is_refused_and_recorded_nowhere(tmp_path, epsilon, delta):
    from synthpool.common.privacy import InvalidBudget

    ledger = Ledger(tmp_path)
    with pytest.raises(InvalidBudget, match="the cap of study 'adult': (epsilon|delta) must"):
        ledger.set_cap("adult", epsilon, delta)
    db = sqlite3.connect(ledger.path)
    assert db.execute("SELECT COUNT(*) FROM caps").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM cap_history").fetchone()[0] == 0
    with pytest.raises(NoBudget):
        ledger.charge("adult", "round-1", [sgd("r1")])
