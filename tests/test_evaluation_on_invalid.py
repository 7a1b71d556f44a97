"""`synthpool evaluate --on-invalid error|drop|clip` for the real and hold-out tables: a hold-out
with one age above the schema's bound is refused (file, row, column), or evaluated without that
row, or with the age set to the bound; what was dropped or clipped is said on the console and in
the report, per table and column."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from synthpool.cli import app
from synthpool.common.evaluation.tables import read_checked
from synthpool.common.loading import DataError
from tables import CLINIC_SCHEMA, make_clinic_table, write_table

import pytest

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    real, schema = make_clinic_table(300, seed=1)
    holdout, _ = make_clinic_table(150, seed=2)
    holdout.loc[4, "age"] = 130.0  # the schema's upper bound is 100
    synthetic, _ = make_clinic_table(300, seed=3)
    # A folder deeper than a terminal is wide: an error names the file whole however deep it
    # lies (a log once showed 'holdout.c sv', broken where the 80th column fell).
    deep = tmp_path / "hospital-research-data-share" / "study-2026-clinic-tables"
    deep.mkdir(parents=True)
    paths = {"schema": tmp_path / "clinic.yaml"}
    paths["schema"].write_text(yaml.safe_dump(CLINIC_SCHEMA, sort_keys=False))
    for name, df in (("real", real), ("holdout", holdout), ("synthetic", synthetic)):
        paths[name] = deep / f"{name}.csv"
        write_table(df, paths[name])
    return paths, schema


def _evaluate(paths, out, *extra):
    res = runner.invoke(app, ["evaluate", "--real", str(paths["real"]), "--holdout",
                              str(paths["holdout"]), "--synthetic", str(paths["synthetic"]),
                              "--schema", str(paths["schema"]), "--out", str(out), *extra])
    return res, " ".join(res.output.split())


def test_clip_sets_the_value_to_the_bound_and_an_unclippable_cell_stays_an_error(files, tmp_path):
    paths, schema = files
    df, report = read_checked(paths["holdout"], schema, table="holdout", on_invalid="clip")
    assert len(df) == 150 and df.loc[4, "age"] == 100.0
    assert report.clipped_by_column == {"age": 1} and report.rows_clipped == 1
    assert report.rows_dropped == 0
    # A category the schema lacks has no nearest valid value: still the loader's error, with the
    # column's real bounds in any numeric message (not the opened ones clip validates with).
    bad = paths["holdout"].read_text().replace(",north,", ",mars,", 1)
    (tmp_path / "bad.csv").write_text(bad)
    with pytest.raises(DataError) as e:
        read_checked(tmp_path / "bad.csv", schema, table="holdout", on_invalid="clip")
    assert "'mars'" in str(e.value) and "column 'region'" in str(e.value)
    assert "inf" not in str(e.value)


def test_error_names_the_cell_drop_and_clip_evaluate_and_report_what_they_did(files, tmp_path):
    paths, _ = files
    res, text = _evaluate(paths, tmp_path / "err")
    assert res.exit_code == 2, res.output
    assert f"{paths['holdout']}, row 5 (line 6), column 'age': got '130'" in text
    assert "[18, 100]" in text and not (tmp_path / "err").exists()

    res, text = _evaluate(paths, tmp_path / "drop", "--on-invalid", "drop")
    assert res.exit_code == 0, res.output
    assert f"holdout ({paths['holdout']}): 150 rows read, 1 dropped (age: 1)" in text
    assert f"real ({paths['real']}): 300 rows read, all valid" in text
    data = json.loads((tmp_path / "drop" / "report.json").read_text())
    assert data["n_rows"]["holdout"] == 149
    holdout = data["input"]["tables"][1]
    assert holdout["rows_dropped"] == 1 and holdout["dropped_by_column"] == {"age": 1}
    assert "How the real tables were read" in (tmp_path / "drop" / "report.html").read_text()

    res, text = _evaluate(paths, tmp_path / "clip", "--on-invalid", "clip")
    assert res.exit_code == 0, res.output
    assert "1 with values clipped to the schema's bounds (age: 1)" in text
    data = json.loads((tmp_path / "clip" / "report.json").read_text())
    assert data["n_rows"]["holdout"] == 150
    assert data["input"]["tables"][1]["clipped_by_column"] == {"age": 1}

    res, _ = _evaluate(paths, tmp_path / "x", "--on-invalid", "fix")
    assert res.exit_code == 2
