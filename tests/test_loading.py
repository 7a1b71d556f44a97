"""load_table: the bundled Adult files, the clinic table in every storage, and one test per kind of
bad input, each checking that the message says which file, row, line, column and what was
expected (what a data owner needs to fix the file without reading our code)."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TEST, ADULT_TRAIN
from synthpool.common.loading import MAX_VIOLATIONS, DataError, LoadReport, Violation, load_table
from synthpool.common.schema import Schema
from tables import CLINIC_QUERY, make_clinic_table, write_table


@pytest.fixture(scope="module")
def clinic():
    return make_clinic_table(400, seed=7)


@pytest.fixture(scope="module")
def adult_schema():
    return Schema.load(ADULT_SCHEMA)


def _csv(tmp_path, df, name="clinic.csv", **kw):
    return write_table(df, tmp_path / name, **kw)


def _error(source, schema, **kw) -> DataError:
    with pytest.raises(DataError) as info:
        load_table(source, schema, **kw)
    return info.value


# -- Adult ------------------------------------------------------------------------------------


def test_adult_train_loads_whole(adult_schema):
    df, report = load_table(ADULT_TRAIN, adult_schema)
    assert len(df) == report.rows_read == report.rows_kept == 32561
    assert report.violations == [] and report.dropped_by_column == {}
    assert list(df.columns) == adult_schema.names
    assert df["age"].dtype == np.float64 and df["age"].between(17, 90).all()
    assert df["workclass"].dtype == object and df["workclass"].isna().sum() > 1000  # '?' cells
    assert set(df["income"]) == {"<=50K", ">50K"}
    assert df.index.equals(pd.RangeIndex(len(df)))
    assert "all rows valid" in report.summary()


@pytest.mark.parametrize("compressed", [True, False])
def test_progress_follows_the_parse_to_the_end_of_the_file(tmp_path, adult_schema, compressed):
    """A big table takes minutes to parse: `progress` hears the bytes read of the file on disk
    (compressed ones for .gz), rising to its size, and the rows are those read without it."""
    path = ADULT_TRAIN
    if not compressed:
        import gzip

        path = tmp_path / "adult.data"
        path.write_bytes(gzip.decompress(ADULT_TRAIN.read_bytes()))
    calls = []
    df, report = load_table(path, adult_schema, progress=lambda done, total: calls.append(
        (done, total)))
    size = os.path.getsize(path)
    assert len(calls) >= 3 and {t for _, t in calls} == {size}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == size and done[0] < size / 2
    plain, _ = load_table(path, adult_schema)
    pd.testing.assert_frame_equal(df, plain)
    assert report.rows_kept == 32561


def test_adult_test_skips_junk_line_and_strips_label_dot(adult_schema):
    df, report = load_table(ADULT_TEST, adult_schema)
    assert len(df) == report.rows_kept == 16281
    assert set(df["income"]) == {"<=50K", ">50K"}  # raw labels are '<=50K.' and '>50K.'
    assert df["income"].value_counts()[">50K"] == 3846


def test_adult_style_line_numbers_count_comment_header_and_blank_lines(tmp_path, adult_schema):
    good = "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, " \
           "White, Male, 2174, 0, 40, United-States, <=50K."
    bad = good.replace("39,", "1x9,", 1)
    path = tmp_path / "adult.test"
    path.write_text(f"|1x3 Cross validator\n{good}\n\n{good}\n{bad}\n")
    err = _error(path, adult_schema)
    (v,) = err.violations
    assert (v.row, v.line, v.column, v.value) == (3, 5, "age", "1x9")
    assert str(v) == (f"{path}, row 3 (line 5), column 'age': got '1x9', "
                      "expected a number in [17, 90]")


# -- the same table from every storage -----------------------------------------------------------


def test_csv_gzip_parquet_and_sqlite_load_identically(tmp_path, clinic):
    df, schema = clinic
    expected = df[schema.names].reset_index(drop=True)
    sources = {
        "csv": (_csv(tmp_path, df), None),
        "csv.gz": (_csv(tmp_path, df, "clinic.csv.gz"), None),
        "parquet": (write_table(df, tmp_path / "clinic.parquet"), None),
        "sqlite": (write_table(df, tmp_path / "clinic.db"), CLINIC_QUERY),
    }
    for kind, (source, query) in sources.items():
        got, report = load_table(source, schema, query=query)
        pd.testing.assert_frame_equal(got, expected, obj=kind)
        assert report.rows_read == len(df) and not report.violations, kind
    assert all(isinstance(v, bool) for v in got["diabetic"])  # Python bools, not numpy/ints


def test_headerless_csv_uses_schema_column_order(tmp_path, clinic):
    df, schema = clinic
    schema = schema.model_copy(update={"csv": schema.csv.model_copy(update={"header": False})})
    path = _csv(tmp_path, df[schema.source_columns], header=False)
    got, _ = load_table(path, schema)
    pd.testing.assert_frame_equal(got, df[schema.names])


def test_sqlite_query_can_select_and_rename(tmp_path, clinic):
    df, schema = clinic
    url = write_table(df, tmp_path / "clinic.db")
    got, report = load_table(url, schema, query="SELECT * FROM clinic WHERE region = 'west'")
    assert report.rows_read == (df["region"] == "west").sum() == len(got)


# -- structural problems: always raise ------------------------------------------------------------


def test_missing_column_names_what_was_found(tmp_path, clinic):
    df, schema = clinic
    path = _csv(tmp_path, df.rename(columns={"smoker": "smokes"}))
    err = _error(path, schema, on_invalid="drop")  # drop mode cannot fix a missing column
    msg = str(err)
    assert path in msg and "missing column ['smoker']" in msg
    assert "unexpected column ['smokes']" in msg
    assert "found: patient_id, region, smokes" in msg
    assert {v.column for v in err.violations} == {"smoker", "smokes"}


def test_unexpected_extra_column(tmp_path, clinic):
    df, schema = clinic
    err = _error(_csv(tmp_path, df.assign(notes="x")), schema)
    assert "unexpected column ['notes']" in str(err)
    assert "neither modelled nor listed in the schema's drop" in str(err)


def test_dropped_column_must_be_present(tmp_path, clinic):
    df, schema = clinic
    err = _error(_csv(tmp_path, df.drop(columns="patient_id")), schema)
    assert "missing column ['patient_id']" in str(err)


@pytest.mark.parametrize("content, reason", [
    ("", "the file is empty"),
    ("\n\n", "the file is empty"),
    ("patient_id,region,smoker,diabetic,age,charges,bmi,readmitted\n",
     "no data rows below the header"),
])
def test_empty_file(tmp_path, clinic, content, reason):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    err = _error(path, clinic[1], on_invalid="drop")
    assert str(err).startswith(f"{path}: {reason}")


def test_nonexistent_file_and_directory(tmp_path, clinic):
    missing = tmp_path / "nowhere" / "site.csv"
    assert str(_error(missing, clinic[1])) == f"{missing}: cannot read: No such file or directory"
    assert "is a directory" in str(_error(tmp_path, clinic[1]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(tmp_path, clinic):
    path = tmp_path / "locked.csv"
    path.write_text("a\n1\n")
    path.chmod(0)
    assert "Permission denied" in str(_error(path, clinic[1]))


def test_corrupt_parquet_and_gzip(tmp_path, clinic):
    pq = tmp_path / "site.parquet"
    pq.write_bytes(b"PAR1 this is not parquet at all PAR1")
    err = _error(pq, clinic[1])
    assert str(err).startswith(f"{pq}: not a readable Parquet file")
    gz = tmp_path / "site.csv.gz"
    gz.write_bytes(b"not gzip")
    assert str(_error(gz, clinic[1])).startswith(f"{gz}: cannot read")


def test_invalid_utf8(tmp_path, clinic):
    df, schema = clinic
    path = tmp_path / "latin1.csv"
    _csv(tmp_path, df.head(3).assign(region="nörth"), "latin1.csv")
    path.write_bytes(path.read_text().encode("latin-1"))
    assert "not UTF-8 text" in str(_error(path, schema))


def test_sql_errors(tmp_path, clinic):
    df, schema = clinic
    url = write_table(df, tmp_path / "clinic.db")
    assert "needs a query" in str(_error(url, schema))
    assert "query failed: no such table: patients" in str(
        _error(url, schema, query="SELECT * FROM patients"))
    ghost = tmp_path / "ghost.db"
    assert "does not exist" in str(_error(f"sqlite:///{ghost}", schema, query=CLINIC_QUERY))
    assert not ghost.exists()  # SQLite must not have created an empty database
    err = _error("postgresql://owner:hunter2@localhost/site", schema, query="SELECT 1")
    assert "hunter2" not in str(err) and "owner:***@" in str(err)


# -- cell problems --------------------------------------------------------------------------------


def _bad_cell(tmp_path, clinic, column, value, row=4):
    """The clinic CSV with one cell replaced; data row `row` (0-based index row-1) sits on file
    line row+1, below the header."""
    df, schema = clinic
    bad = df.astype(object).copy()
    bad.loc[row - 1, column] = value
    path = _csv(tmp_path, bad)
    err = _error(path, schema)
    (v,) = err.violations
    assert (v.file, v.row, v.line, v.column) == (path, row, row + 1, column)
    assert f"{path}, row {row} (line {row + 1}), column '{column}': got " in str(err)
    assert err.counts == {column: 1}
    return v, str(err)


def test_unknown_category(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "region", "mars")
    assert v.value == "mars"
    assert "expected one of the 4 categories: 'north', 'south', 'east', 'west'" in msg


def test_out_of_bounds(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "age", "130", row=17)
    assert "got '130', expected a number in [18, 100] (the schema's public bounds)" in msg


def test_non_numeric_in_numeric_column(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "bmi", "twenty")
    assert "got 'twenty', expected a number in [10, 80]" in msg


def test_non_integer_in_integer_column(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "age", "40.5")
    assert "got '40.5', expected a whole number in [18, 100]" in msg


def test_bad_boolean(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "diabetic", "maybe")
    assert "got 'maybe', expected a boolean: true/false, yes/no or 1/0" in msg


def test_missing_target(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "readmitted", np.nan)
    assert v.value is None
    assert "got a missing value, expected a value (the target is not nullable)" in msg


def test_missing_in_non_nullable_column(tmp_path, clinic):
    v, msg = _bad_cell(tmp_path, clinic, "region", "  ")  # whitespace strips to '' = missing
    assert "got a missing value, expected a value (the column is not nullable)" in msg


def test_wrong_number_of_fields(tmp_path, clinic):
    df, schema = clinic
    path = tmp_path / "ragged.csv"
    text = _csv(tmp_path, df.head(5), "ragged.csv")
    lines = path.read_text().splitlines()
    lines[2] += ",surplus"
    lines[4] = lines[4].rsplit(",", 2)[0]
    path.write_text("\n".join(lines) + "\n")
    err = _error(text, schema)
    assert [(v.row, v.line, v.column) for v in err.violations] == [(2, 3, None), (4, 5, None)]
    assert "expected 8 fields, found 9" in str(err) and "expected 8 fields, found 6" in str(err)


def test_typed_parquet_values_are_checked_too(tmp_path, clinic):
    df, schema = clinic
    bad = df.copy()
    bad.loc[9, "age"] = 250.0
    bad.loc[9, "smoker"] = "sometimes"
    err = _error(write_table(bad, tmp_path / "bad.parquet"), schema)
    assert [(v.row, v.line, v.column, v.value) for v in err.violations] == [
        (10, None, "smoker", "sometimes"), (10, None, "age", "250")]


# -- drop mode and reporting --------------------------------------------------------------------


def test_drop_mode_keeps_valid_rows_and_counts_per_column(tmp_path, clinic):
    df, schema = clinic
    bad = df.astype(object).copy()
    bad.loc[[3, 50], "age"] = "abc"
    bad.loc[50, "region"] = "mars"
    bad.loc[99, "readmitted"] = np.nan
    got, report = load_table(_csv(tmp_path, bad), schema, on_invalid="drop")
    expected = df.drop(index=[3, 50, 99])[schema.names].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)
    assert (report.rows_read, report.rows_kept) == (400, 397)
    assert report.dropped_by_column == {"region": 1, "age": 2, "readmitted": 1}
    assert [(v.row, v.column) for v in report.violations] == [
        (4, "age"), (51, "region"), (51, "age"), (100, "readmitted")]
    assert report.summary().endswith("dropped 3 invalid rows (region: 1, age: 2, readmitted: 1)")


def test_every_row_invalid_raises_even_in_drop_mode(tmp_path, clinic):
    df, schema = clinic
    err = _error(_csv(tmp_path, df.assign(region="mars")), schema, on_invalid="drop")
    assert "no valid rows" in str(err)


def test_many_violations_are_capped_but_counted(tmp_path):
    df, schema = make_clinic_table(3000, seed=1)
    bad = df.assign(age=df["age"].astype(object))
    bad.loc[::2, "age"] = "old"
    err = _error(_csv(tmp_path, bad), schema)
    assert err.counts == {"age": 1500}
    assert len(err.violations) == MAX_VIOLATIONS
    msg = str(err).splitlines()
    assert msg[0].endswith("1500 invalid rows (age: 1500)")
    assert len(msg) == 1 + 20 + 1 and msg[-1] == "  ... and 1480 more problems"


def test_data_error_survives_pickling(tmp_path, clinic):
    import pickle

    err = _error(tmp_path / "absent.csv", clinic[1])
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.source == err.source and again.reason == err.reason


def test_violation_and_report_text():
    v = Violation("adult.csv", 17, 18, "age", "abc", "a number in [17, 90]")
    assert str(v) == ("adult.csv, row 17 (line 18), column 'age': got 'abc', "
                      "expected a number in [17, 90]")
    r = LoadReport("x.csv", 10, 10, {}, [])
    assert r.summary() == "read 10 rows from x.csv; all rows valid"


def test_large_table_is_fast(tmp_path):
    """Vectorised checks: 100k rows with scattered errors in well under the time budget (1M rows
    take about 1.5 s on one core; not run here to keep the suite fast)."""
    n = 100_000
    df, schema = make_clinic_table(n, seed=3)
    bad = df.assign(charges=df["charges"].astype(object))
    bad.loc[::997, "charges"] = "-5"
    path = _csv(tmp_path, bad, "big.csv")
    start = time.perf_counter()
    got, report = load_table(path, schema, on_invalid="drop")
    elapsed = time.perf_counter() - start
    assert report.dropped_by_column == {"charges": len(range(0, n, 997))}
    assert len(got) == n - len(range(0, n, 997))
    assert elapsed < 5, f"loading {n} rows took {elapsed:.1f}s"
