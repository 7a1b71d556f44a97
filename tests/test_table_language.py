"""A release speaks the table's language: drafted with `schema draft`, synthesized with `synth`,
a table of every column kind comes back with the input's spellings (categories and booleans),
integers without a decimal point (also nullable ones), the input's missing marker (NULL in
Parquet), and the input's column order, for CSV and Parquet alike. And heavy single values of
numeric columns (a -1 held by 57% of the rows) are found by both drafts and reproduced."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from synthpool.cli import app
from synthpool.common.loading import DataError, load_table, read_raw
from synthpool.common.schema import CsvOptions, Schema
from synthpool.common.schema_draft import draft_schema
from synthpool.common.table_io import write_table
from tables import CLINIC_QUERY, write_table as write_test_table

runner = CliRunner()
MARKER = "?"


def _table(n: int, seed: int) -> pd.DataFrame:
    """Typed values (NaN/None = missing), in an order where the identifier sits mid-table."""
    rng = np.random.default_rng(seed)
    smoker = rng.choice(["never", "former", "current"], n, p=[0.6, 0.25, 0.15]).astype(object)
    smoker[rng.random(n) < 0.1] = None
    flag = np.where(rng.random(n) < 0.3, True, False).astype(object)
    flag[rng.random(n) < 0.1] = None
    age = np.round(rng.normal(50, 15, n)).clip(18, 95)
    age[rng.random(n) < 0.08] = np.nan  # a nullable integer
    charges = np.where(rng.random(n) < 0.4, 0.0, np.round(rng.lognormal(7, 1.5, n), 2))
    # -1 ("never contacted") holds 57% of the rows; the rest spread over a wide integer range.
    pdays = np.where(rng.random(n) < 0.57, -1, rng.integers(1, 900, n)).astype(np.float64)
    outcome = np.where(rng.random(n) < 0.35, "yes", "no")
    return pd.DataFrame({
        "visits": rng.poisson(4, n).astype(np.float64) + rng.integers(0, 30, n),
        "smoker": smoker,
        "record": [f"R{i:05d}" for i in range(n)],
        "flag": flag,
        "age": age,
        "bmi": np.round(rng.normal(27, 4, n), 1),
        "charges": charges,
        "pdays": pdays,
        "insured": rng.random(n) < 0.7,
        "outcome": outcome,
    })


def _write_input(df: pd.DataFrame, path) -> None:
    """As another program would write the table: CSV with Y/N, T/F, yes/no, `?` for missing and
    plain integers; Parquet typed (Int64, a native boolean, strings), NULL for missing."""
    out = df.copy()
    if "flag" in df:
        out["flag"] = df["flag"].map({True: "Y", False: "N"})  # NaN stays missing
    for c in {"visits", "age", "pdays"} & set(df.columns):
        out[c] = df[c].astype("Int64")
    if str(path).endswith(".csv"):
        if "insured" in df:
            out["insured"] = df["insured"].map({True: "T", False: "F"})
        out.to_csv(path, index=False, na_rep=MARKER)
    else:
        out.to_parquet(path, index=False)


def _invoke(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_synth_release_writes_values_as_the_input_wrote_them(tmp_path, fmt):
    df = _table(1200, seed=4)
    src, schema_file, out = (tmp_path / f"in.{fmt}", tmp_path / "s.yaml", tmp_path / f"out.{fmt}")
    _write_input(df, src)
    draft = ["schema", "draft", "--data", src, "--target", "outcome", "--out", schema_file]
    _invoke(*draft, *(["--missing", MARKER] if fmt == "csv" else []))
    schema = Schema.load(schema_file)
    kinds = {c.name: c.kind for c in schema.columns}
    assert schema.drop == ["record"] and kinds["outcome"] == kinds["flag"] == "boolean"
    assert (schema.column("flag").true, schema.column("flag").false) == ("Y", "N")
    assert (schema.column("outcome").true, schema.column("outcome").false) == ("yes", "no")
    insured = ("T", "F") if fmt == "csv" else ("true", "false")  # a stored boolean: true/false
    assert (schema.column("insured").true, schema.column("insured").false) == insured
    age = schema.column("age")
    assert (age.kind, age.integer, age.nullable) == ("numeric", True, True)
    charges = schema.column("charges")
    assert (charges.scale, charges.point_masses, charges.integer) == ("log", [0.0], False)
    assert schema.column("pdays").point_masses == [-1.0]

    _invoke("synth", "--data", src, "--schema", schema_file, "--epsilon", "4", "--rows", "600",
            "--out", out, "--steps", "5", "--seed", "2")
    order = [c for c in df.columns if c != "record"]  # the input's order, not a kind-sorted one
    if fmt == "csv":
        text = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert list(text.columns) == order
        for name, spellings in [("flag", {"Y", "N"}), ("outcome", {"yes", "no"}),
                                ("insured", {"T", "F"})]:
            assert set(text[name]) - {MARKER} == spellings, name
        assert set(text["smoker"]) - {MARKER} <= {"never", "former", "current"}
        for name in ("visits", "age", "pdays"):  # no '24.0'
            present = text[name][text[name] != MARKER]
            assert present.str.fullmatch(r"-?\d+").all(), (name, present.head().tolist())
        for name in ("smoker", "flag", "age"):  # nullable: the input's marker, never an empty cell
            assert (text[name] == MARKER).any(), name
        assert not (text == "").any().any()
        assert (text["pdays"] == "-1").any()  # the point masses are written exactly
        assert (text["charges"] == "0.0").any()  # a float column, as pandas wrote the input
    else:
        types = {f.name: str(f.type) for f in pq.read_schema(out)}
        assert list(types) == order
        assert types["visits"] == types["age"] == types["pdays"] == "int64"
        assert types["insured"] == "bool" and types["bmi"] == types["charges"] == "double"
        # pandas 3 writes its strings as Arrow large_string, pandas 2 as string: both are text.
        assert {types[c] for c in ("flag", "outcome", "smoker")} <= {"string", "large_string"}
        back = pd.read_parquet(out)
        assert set(back["flag"].dropna()) == {"Y", "N"} and back["flag"].isna().any()
        assert set(back["outcome"]) == {"yes", "no"}
        assert back["age"].isna().any() and back["smoker"].isna().any()
    # The release reads back with the schema it was made from (its identifier aside).
    synthetic, report = load_table(out, schema.model_copy(update={"drop": []}))
    assert report.rows_kept == 600 and report.columns == order
    assert synthetic["outcome"].isin([True, False]).all()


def test_release_column_order_follows_the_input_not_the_schema(tmp_path):
    rng = np.random.default_rng(1)
    pd.DataFrame({"outcome": rng.choice(["yes", "no"], 300), "visits": rng.integers(0, 50, 300),
                  "flag": rng.choice(["Y", "N", MARKER], 300)}).to_csv(tmp_path / "in.csv",
                                                                      index=False)
    schema = Schema.from_dict({"name": "t", "target": "outcome", "columns": [
        {"name": "flag", "kind": "boolean", "nullable": True, "true": "Y", "false": "N"},
        {"name": "visits", "kind": "numeric", "lower": 0, "upper": 100, "integer": True},
        {"name": "outcome", "kind": "boolean", "true": "yes", "false": "no"}],
        "csv": {"missing": [MARKER]}})
    schema.save(tmp_path / "s.yaml")
    _invoke("synth", "--data", tmp_path / "in.csv", "--schema", tmp_path / "s.yaml", "--epsilon",
            "4", "--rows", "50", "--out", tmp_path / "out.csv", "--steps", "2")
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == "outcome,visits,flag"


def test_write_table_without_spellings_writes_as_before_and_integers_as_integers(tmp_path):
    schema = Schema.from_dict({"name": "t", "csv": {"missing": ["NA", ""]}, "columns": [
        {"name": "b", "kind": "boolean", "nullable": True},
        {"name": "n", "kind": "numeric", "lower": 0, "upper": 99, "integer": True,
         "nullable": True},
        {"name": "x", "kind": "numeric", "lower": 0, "upper": 1}]})
    frame = pd.DataFrame({"b": pd.Series([True, np.nan, False], dtype=object),
                          "n": [24.0, np.nan, 3.0], "x": [0.5, 0.25, 1.0]})
    write_table(frame, tmp_path / "o.csv", schema)
    assert (tmp_path / "o.csv").read_text().splitlines() == [
        "b,n,x", "True,24,0.5", "NA,NA,0.25", "False,3,1.0"]
    write_table(frame, tmp_path / "plain.csv")  # no schema: the frame as it is
    assert (tmp_path / "plain.csv").read_text().splitlines()[1] == "True,24.0,0.5"
    back, _ = load_table(tmp_path / "o.csv", schema)
    pd.testing.assert_frame_equal(back, frame)


def test_a_headerless_studys_release_names_its_columns_and_reads_back(tmp_path, adult_schema,
                                                                      adult_train):
    rows = pd.concat([adult_train[adult_train["workclass"].isna()].head(5),
                      adult_train.head(20)], ignore_index=True)
    write_table(rows, tmp_path / "release.csv", adult_schema)
    lines = (tmp_path / "release.csv").read_text().splitlines()
    assert lines[0] == ",".join(adult_schema.names)  # a header, though adult.data has none
    assert lines[1].split(",")[:3] == [str(int(rows["age"][0])), "?", str(int(rows["fnlwgt"][0]))]
    back, report = load_table(tmp_path / "release.csv", adult_schema)
    pd.testing.assert_frame_equal(back, rows)
    assert report.rows_read == 25


def test_the_loader_accepts_exactly_the_schemas_spellings(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("f\nY\nN\nyes\n")
    spelled = Schema.from_dict({"name": "t", "columns": [
        {"name": "f", "kind": "boolean", "true": "Y", "false": "N"}]})
    with pytest.raises(DataError) as err:
        load_table(path, spelled)
    assert "row 3" in str(err.value) and "'Y' (true) or 'N' (false)" in str(err.value)
    older = Schema.from_dict({"name": "t", "columns": [{"name": "f", "kind": "boolean"}]})
    with pytest.raises(DataError, match="row 1"):  # older schemas: true/false, yes/no, 1/0 only
        load_table(path, older)
    path.write_text("f\nY\nN\n")
    assert load_table(path, spelled)[0]["f"].tolist() == [True, False]
    # Parquet: a stored boolean has no spelling and is accepted whatever the schema's.
    pd.DataFrame({"f": [True, False]}).to_parquet(tmp_path / "t.parquet")
    assert load_table(tmp_path / "t.parquet", spelled)[0]["f"].tolist() == [True, False]
    # SQL: booleans are usually stored as 0/1 (SQLite has no boolean type).
    url = write_test_table(pd.DataFrame({"f": [True, False]}), tmp_path / "t.db")
    assert load_table(url, spelled, query=CLINIC_QUERY)[0]["f"].tolist() == [True, False]
    pd.DataFrame({"f": ["yes", "Y"]}).to_parquet(tmp_path / "s.parquet")  # text still exact
    with pytest.raises(DataError, match="row 1"):
        load_table(tmp_path / "s.parquet", spelled)


def test_spellings_in_a_schema_file(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: t\ncolumns:\n  - {name: a, kind: boolean, true: 'yes', false: 'no'}\n"
        "  - {name: b, kind: boolean, true: Y, false: N}\n  - {name: c, kind: boolean}\n")
    schema = Schema.load(tmp_path / "s.yaml")
    assert [(c.true, c.false) for c in schema.columns] == [("yes", "no"), ("Y", "N"), (None, None)]
    assert Schema.from_dict(yaml.safe_load(schema.to_yaml())) == schema
    # Unset spellings are left out of the dump, so older schemas keep their fingerprint.
    assert "true" not in schema.model_dump(mode="json")["columns"][2]
    (tmp_path / "bad.yaml").write_text("name: t\ncolumns: [{name: a, kind: boolean, true: yes, "
                                       "false: no}]\n")
    with pytest.raises(ValueError, match="in quotes"):
        Schema.load(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="both spellings"):
        Schema.from_dict({"name": "t", "columns": [{"name": "a", "kind": "boolean", "true": "Y"}]})


@pytest.mark.parametrize("values, expected", [
    (["Yes", "No"], ("Yes", "No")), (["1", "0"], ("1", "0")), (["T", "F"], ("T", "F")),
    (["y"], ("y", "n")), (["FALSE"], ("TRUE", "FALSE")), (["No"], ("Yes", "No"))])
def test_draft_records_a_booleans_spellings(values, expected):
    df = pd.DataFrame({"b": (values * 30)[:30]})
    col = draft_schema(df, name="t", epsilon=None)[0].column("b")
    assert (col.kind, col.true, col.false) == ("boolean", *expected)


def test_two_true_words_are_not_a_boolean():
    df = pd.DataFrame({"b": ["yes", "true"] * 15})
    assert draft_schema(df, name="t", epsilon=None)[0].column("b").kind == "categorical"


# -- heavy single values ---------------------------------------------------------------------


def test_both_drafts_find_a_heavy_value_and_synth_reproduces_it(tmp_path):
    df = _table(2000, seed=9)[["pdays", "smoker", "outcome"]]
    src = tmp_path / "in.csv"
    _write_input(df, src)
    raw, csv = read_raw(src, missing=[MARKER]), CsvOptions(missing=[MARKER])
    exact, warnings = draft_schema(raw, name="t", target="outcome", epsilon=None, csv=csv)
    assert exact.column("pdays").point_masses == [-1.0] and "point masses" in warnings[0]
    dp, _ = draft_schema(raw, name="t", target="outcome", epsilon=6.0, delta=1e-6, seed=3,
                         csv=csv)
    assert dp.column("pdays").point_masses == [-1.0]
    charged = {p.mechanism: p for p in dp.provenance}["point-mass-histogram"]
    assert charged.columns == ["pdays"] and charged.epsilon == pytest.approx(6.0 / 3 / 4)
    assert sum(p.epsilon for p in dp.provenance) == pytest.approx(6.0)

    dp.save(tmp_path / "s.yaml")
    out = tmp_path / "out.csv"
    _invoke("synth", "--data", src, "--schema", tmp_path / "s.yaml", "--epsilon", "40",
            "--rows", "2000", "--out", out, "--steps", "60", "--seed", "0")
    pdays = pd.read_csv(out)["pdays"]
    real = (df["pdays"] == -1).mean()  # 0.58
    # -1 is its own token, decoded exactly: not smeared over its grid cell (-1..2), which is
    # what a schema without the point mass gives (about 20% each of -1, 0, 1 and 2).
    assert pdays.isin([0, 1, 2]).mean() < 0.03
    # The share itself is the generator's: short DP-SGD runs over-weight every column's majority
    # token (per-sample clipping; also smoker's 'never', 0.55 -> 0.8), so the bound is loose.
    assert real - 0.1 < (pdays == -1).mean() < 0.92, (pdays == -1).mean()


def test_dp_draft_does_not_release_values_too_rare_for_its_threshold():
    rng = np.random.default_rng(0)
    # 8% of 400 rows = 32 rows on 7: a point mass by share, but under the stability threshold
    # at this epsilon (about 1 + 16 ln(1/(2 delta)) = 210 rows); the grid bounds still come out.
    df = pd.DataFrame({"x": np.where(rng.random(400) < 0.08, 7.0, rng.normal(50, 10, 400))})
    col = draft_schema(df, name="t", epsilon=0.5, delta=1e-6, seed=1)[0].column("x")
    assert 7.0 not in col.point_masses
    assert 7.0 in draft_schema(df, name="t", epsilon=None)[0].column("x").point_masses
