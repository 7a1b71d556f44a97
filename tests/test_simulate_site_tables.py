"""`synthpool simulate --schema study.yaml --site NAME=TABLE ...`: the demo's federation on a
user's own tables (not Adult), one site each: a CSV site and a database site (SQLite URL with its
query). The real-process test runs it from a working directory with relative paths and an output
folder with a space, as a newcomer would, and checks the release (both sites, epsilon within the
cap, the schema's columns, a valid signature). The fast tests check that a bad table is reported
(site, file, row, column) before anything starts."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from synthpool.cli import app
from synthpool.local_federation import LocalFederation
from synthpool.coordinator.admin.flower_processes import bin_dir
from processes import REAL_FLOWER_PROCESSES
from tables import CLINIC_QUERY, CLINIC_SCHEMA, make_clinic_table, write_table

EPSILON = 5.0
# One round of two DP-SGD steps, few rows to release and score: the plumbing is under test, not
# the model's quality (the family's default model size: its keys are the family's business).
TINY = ["--rounds", "1", "--steps-per-round", "2", "--run-config", "release-rows=300",
        "--run-config", "evaluation-rows=300", "--run-config", "straggler-grace=60.0",
        "--plain-aggregation"]  # SecAgg+ (the default) adds 3 stages: test_federation_secagg


@pytest.fixture
def study(tmp_path, monkeypatch):
    """clinic.yaml, north.csv (CSV) and south.db (SQLite) in a working directory of their own."""
    work = tmp_path / "my study"
    work.mkdir()
    (work / "clinic.yaml").write_text(yaml.safe_dump(CLINIC_SCHEMA, sort_keys=False))
    north, _ = make_clinic_table(1000, seed=11)
    south, _ = make_clinic_table(900, seed=12)
    write_table(north, work / "north.csv")
    write_table(south, work / "south.db")
    monkeypatch.chdir(work)
    return work


def test_a_bad_cell_in_one_sites_table_stops_before_anything_starts(study, monkeypatch):
    def no_processes(*args, **kwargs):
        raise AssertionError("a process was started")

    monkeypatch.setattr(LocalFederation, "start", no_processes)
    monkeypatch.setattr(LocalFederation, "__init__", no_processes)
    bad, _ = make_clinic_table(300, seed=13)
    bad.loc[11, "age"] = 250.0  # the schema's bounds are [18, 100]
    write_table(bad, study / "east.parquet")
    res = CliRunner().invoke(app, [
        "simulate", "--schema", "clinic.yaml", "--site", "north=north.csv",
        "--site", "east=east.parquet", "--site", "south=sqlite:///south.db",
        "--site-query", f"south={CLINIC_QUERY}", "--epsilon", "5", "--out", "rel out"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "site 'north': read 1000 rows from north.csv; all rows valid" in text
    assert "site 'east': east.parquet" in text
    assert "east.parquet, row 12, column 'age': got '250', expected a number in [18, 100]" in text
    assert "site 'south'" not in text  # it stops at the first bad table
    assert not (study / "rel out").exists()


def test_site_arguments_are_checked_before_any_table_is_read(study):
    runner = CliRunner()
    base = ["simulate", "--schema", "clinic.yaml", "--site", "north=north.csv"]
    cases = {
        ("--site", "south=sqlite:///south.db"): "--site-query south=SQL",
        ("--site", "north=south.db"): "given twice",
        ("--site", "bad name=x.csv"): "site name 'bad name'",
        ("--site-query", "north=SELECT 1"): "not a database URL",
        ("--sites", "3"): "only for the Adult simulation",
        (): "at least two sites",
    }
    for extra, expected in cases.items():
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and expected in " ".join(res.output.split()), (extra, res.output)
    res = runner.invoke(app, ["simulate", "--site", "a=a.csv", "--site", "b=b.csv"])
    assert res.exit_code == 2 and "--schema" in res.output
    res = runner.invoke(app, ["simulate", "--sites", "2", "--schema", "clinic.yaml"])
    assert res.exit_code == 2 and "only with --site" in res.output


def test_schema_tables_and_family_reach_the_sites_and_the_run_config(study, monkeypatch):
    """What `simulate --site` hands the federation (no process is started): each site.toml pins
    the study's schema file and the site's table (a database site: a Parquet snapshot of its
    query), and the run config names the study, the schema and the family; `demo --family` too."""
    import tomllib

    import pandas as pd

    from synthpool.commands import demo

    seen = {}

    def fake_run(fed, run_config, rounds, timeout, started):
        seen["config"] = run_config
        seen["sites"] = {n: tomllib.loads(fed.site_config(n).read_text()) for n in fed.sites}
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(demo, "run_federation", fake_run)
    res = CliRunner().invoke(app, [
        "simulate", "--schema", "clinic.yaml", "--site", "north=north.csv",
        "--site", "south=sqlite:///south.db", "--site-query", f"south={CLINIC_QUERY}",
        "--epsilon", "4", "--family", "some-family", "--out", "rel out"])
    assert res.exit_code == 1 and "stopped by the test" in res.output, res.output
    config, sites = seen["config"], seen["sites"]
    assert config["study"] == "clinic" and config["family"] == "some-family"
    assert config["schema"] == str(study / "clinic.yaml") and config["secure-aggregation"]
    assert config["release-dir"] == str(study / "rel out" / "release")
    for name in ("north", "south"):
        assert sites[name]["site"]["schema"] == str(study / "clinic.yaml")
        assert sites[name]["budgets"]["clinic"]["epsilon"] == 4.0
    assert sites["north"]["site"]["data"] == str(study / "north.csv")
    snapshot = sites["south"]["site"]["data"]
    assert snapshot.endswith("south.parquet")
    assert len(pd.read_parquet(snapshot)) == 900 and "patient_id" in pd.read_parquet(snapshot)

    monkeypatch.setattr(demo, "run_federation", fake_run)
    res = CliRunner().invoke(app, ["demo", "--sites", "2", "--family", "other", "--out", "d"])
    assert res.exit_code == 1 and seen["config"]["family"] == "other", res.output
    res = CliRunner().invoke(app, ["demo", "--sites", "2", "--out", "d"])
    assert res.exit_code == 1 and "family" not in seen["config"]  # the app's default applies


def _real_processes(test):
    for mark in REAL_FLOWER_PROCESSES:
        test = mark(test)
    return test


@pytest.mark.timeout(300)
@_real_processes
def test_simulate_on_own_tables_ends_in_a_verified_release_of_both_sites(study):
    synthpool = str(bin_dir() / "synthpool")
    run = subprocess.run([synthpool, "simulate", "--schema", "clinic.yaml",
                          "--site", "north=north.csv", "--site", "south=sqlite:///south.db",
                          "--site-query", f"south={CLINIC_QUERY}", "--epsilon", str(EPSILON),
                          "--out", "rel out", *TINY],
                         cwd=study, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-5000:]
    release = study / "rel out" / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    per_site = manifest["privacy"]["per_site"]
    assert sorted(per_site) == ["north", "south"]
    assert all(0 < v["epsilon"] <= EPSILON for v in per_site.values()), per_site
    assert manifest["privacy"]["release"]["epsilon"] <= EPSILON
    assert sorted(manifest["evaluation"]["sites"]) == ["north", "south"]
    with open(release / manifest["data"]["file"], newline="") as f:
        header = next(csv.reader(f))
    assert header == [c["name"] for c in CLINIC_SCHEMA["columns"]]
    assert (release / "report.html").stat().st_size > 0
    # The command it tells the user to run, as printed (relative, quoted), verifies the release.
    verify = next(line.split("verify:", 1)[1].strip() for line in run.stderr.splitlines()
                  if line.strip().startswith("verify:"))
    assert verify.startswith("synthpool release verify 'rel out/release' --public-key "), verify
    checked = subprocess.run([synthpool, *shlex.split(verify)[1:]], cwd=study,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stdout.startswith("OK"), checked.stdout
