"""`synthpool evaluate` end to end on small files written in the study's own CSV format."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from synthpool.commands.evaluate import app
from synthpool.common.bundled import ADULT_SCHEMA
from test_evaluation_data import adult_splits


def _write_adult_csv(df, path):
    """Header-less, ', '-separated, '?' for missing: how Adult's own files are written."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == np.float64:
            out[c] = out[c].map(lambda v: "?" if np.isnan(v) else str(int(v)))
    out.fillna("?").to_csv(path, header=False, index=False, sep=",")


def test_cli_writes_both_reports(tmp_path):
    train, holdout, syn = adult_splits(800, seed=9)
    syn.loc[:4, "age"] = 120.0  # out of bounds: the lenient synthetic reader keeps it to count
    files = {}
    for name, df in (("train", train), ("holdout", holdout), ("syn", syn)):
        files[name] = tmp_path / f"{name}.csv"
        _write_adult_csv(df, files[name])
    privacy = tmp_path / "privacy.json"
    privacy.write_text(json.dumps({"epsilon": 2.0, "delta": 1e-5}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "--real", str(files["train"]), "--holdout", str(files["holdout"]),
        "--synthetic", str(files["syn"]), "--schema", str(ADULT_SCHEMA), "--out", str(out),
        "--seed", "3", "--privacy", str(privacy), "--title", "CLI check"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert data["seed"] == 3 and data["n_rows"]["synthetic"] == 800
    assert data["formal_privacy"]["epsilon"] == 2.0
    assert data["fidelity"]["boundary_adherence"]["columns"]["age"] == 1 - 5 / 800
    assert "CLI check" in (out / "report.html").read_text()
    assert "report.html" in result.output


def test_cli_refuses_invalid_real_rows(tmp_path):
    train, holdout, _ = adult_splits(50, seed=1)
    train.loc[0, "workclass"] = "Astronaut"
    for name, df in (("train", train), ("holdout", holdout)):
        _write_adult_csv(df, tmp_path / f"{name}.csv")
    result = CliRunner().invoke(app, [
        "--real", str(tmp_path / "train.csv"), "--holdout", str(tmp_path / "holdout.csv"),
        "--synthetic", str(tmp_path / "holdout.csv"), "--schema", str(ADULT_SCHEMA),
        "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Astronaut" in result.output and "Traceback" not in result.output
