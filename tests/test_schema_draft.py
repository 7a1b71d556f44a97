"""draft_schema and `synthpool schema draft`: exact drafts describe (and validate) their own data
and say they are disclosive; DP drafts record their spend, keep nearly all values inside the
bounds and leave out categories too rare to release."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from synthpool.commands.schema import app
from synthpool.common.bundled import ADULT_TRAIN
from synthpool.common.loading import load_table, read_raw
from synthpool.common.schema import CsvOptions, Schema
from synthpool.common.schema_draft import draft_schema
from tables import CLINIC_QUERY, make_clinic_table, write_table


@pytest.fixture(scope="module")
def clinic_csv(tmp_path_factory):
    df, _ = make_clinic_table(3000, seed=11)
    df.loc[7, "smoker"] = "vaping"  # a category held by one person
    path = write_table(df, tmp_path_factory.mktemp("draft") / "clinic.csv")
    return df, path


def test_exact_draft_describes_and_validates_its_own_data(clinic_csv, tmp_path):
    df, path = clinic_csv
    schema, warnings = draft_schema(read_raw(path), name="clinic", target="readmitted",
                                    epsilon=None, seed=None)
    schema.save(tmp_path / "clinic.yaml")
    again = Schema.load(tmp_path / "clinic.yaml")
    assert again == schema
    # Marked as exact, so every site that uses it can tell it from a public schema and warn.
    (mark,) = again.provenance
    assert mark.mechanism == "exact-draft" and mark.epsilon is None
    assert "exact draft" in again.exact_draft_warning()
    assert again.drop == ["patient_id"]
    age, charges, bmi = (again.column(c) for c in ("age", "charges", "bmi"))
    assert (age.kind, age.integer) == ("numeric", True)
    assert (age.lower, age.upper) == (df.age.min(), df.age.max())
    assert (charges.scale, charges.point_masses, charges.integer) == ("log", [0.0], False)
    assert bmi.nullable and not age.nullable
    assert again.column("smoker").categories == ["current", "former", "never", "vaping"]
    assert again.column("smoker").nullable and again.column("diabetic").kind == "boolean"
    assert again.column("readmitted").kind == "boolean"  # yes/no values

    loaded, report = load_table(path, again)
    assert report.rows_kept == len(df) and not report.violations
    assert loaded["readmitted"].tolist() == (df["readmitted"] == "yes").tolist()

    assert "NOT PRIVATE" in warnings[0] and "disclosive" in warnings[0]
    assert f"the upper bound of 'age', {int(df.age.max())}" in warnings[0]
    assert any("'vaping'" in w and "fewer than 5 times" in w for w in warnings)
    assert any("'patient_id'" in w and "identifier" in w for w in warnings)


def test_dp_draft_records_spend_covers_data_and_drops_rare_categories(clinic_csv):
    df, path = clinic_csv
    schema, warnings = draft_schema(read_raw(path), name="clinic", target="readmitted",
                                    epsilon=8.0, delta=1e-6, seed=5)
    prov = schema.provenance
    assert {p.mechanism for p in prov} == {"laplace-histogram", "point-mass-histogram",
                                              "stability-histogram"}
    assert sum(p.epsilon for p in prov) == pytest.approx(8.0)
    assert sum(p.delta for p in prov) == pytest.approx(1e-6)
    assert {c for p in prov for c in p.columns} == set(schema.names)
    by = {p.mechanism: p for p in prov}
    assert by["point-mass-histogram"].columns == ["age", "charges", "bmi"]  # numerics
    assert by["point-mass-histogram"].epsilon == pytest.approx(3 * 8.0 / 7 / 4)
    for name in ("age", "charges", "bmi"):
        col = schema.column(name)
        values = df[name].dropna()
        inside = values.between(col.lower, col.upper).mean()
        assert inside > 0.99, (name, col.lower, col.upper, inside)
    assert schema.column("charges").point_masses == [0.0]
    smoker = schema.column("smoker")
    assert "vaping" not in smoker.categories
    assert set(smoker.categories) == {"never", "former", "current"} and smoker.nullable
    assert "differential privacy" in warnings[0] and "(8, 1e-06)" in warnings[0]
    assert "Not covered by differential privacy" in warnings[1]

    _, report = load_table(path, schema, on_invalid="drop")  # the draft reads its own file back
    assert report.rows_kept > 0.98 * len(df) and report.dropped_by_column.get("smoker") == 1


def test_dp_draft_is_reproducible_only_with_a_seed(clinic_csv):
    raw = read_raw(clinic_csv[1])
    a = draft_schema(raw, name="c", target=None, epsilon=1.0, seed=3)[0]
    b = draft_schema(raw, name="c", target=None, epsilon=1.0, seed=3)[0]
    assert a.columns == b.columns
    # Two drafts read the rows twice: each is its own ledger charge at the site.
    assert {p.draft_id for p in a.provenance} != {p.draft_id for p in b.provenance}


def test_kind_guesses():
    n = 60
    rng = np.random.default_rng(0)
    df = pd.DataFrame({
        "code": [str(i % 7) for i in range(n)],  # few distinct numbers: a code list
        "flag": ["Yes", "no"] * (n // 2),
        "dose": rng.normal(5, 1, n).round(3),
        "count": np.arange(n) % 30,
        "row_id": np.arange(n) + 1000,
        "empty": [None] * n,
    })
    df.loc[3, "dose"] = np.nan
    schema, warnings = draft_schema(df, name="k", target=None, epsilon=None, seed=None)
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds == {"code": "categorical", "flag": "boolean", "dose": "numeric",
                     "count": "numeric"}
    assert schema.column("code").categories == [str(i) for i in range(7)]  # numeric order
    assert schema.column("dose").nullable and not schema.column("dose").integer
    assert schema.column("count").integer
    assert schema.drop == ["row_id", "empty"]
    assert any("entirely missing" in w for w in warnings)


def test_draft_argument_errors():
    df = pd.DataFrame({"a": ["x", "y"] * 20, "id": [f"p{i}" for i in range(40)], "b": [1, 2] * 20})
    with pytest.raises(ValueError, match="target 'zzz' is not a column"):
        draft_schema(df, name="t", target="zzz", epsilon=None, seed=None)
    with pytest.raises(ValueError, match="epsilon must be a positive number"):
        draft_schema(df, name="t", target=None, epsilon=0.0, seed=None)
    with pytest.raises(ValueError, match="can only drop the last columns"):
        draft_schema(df, name="t", target=None, epsilon=None, seed=None,
                     csv=CsvOptions(header=False))


def test_raw_reader_parquet_and_sql(tmp_path):
    df, _ = make_clinic_table(200, seed=2)
    from_pq = read_raw(write_table(df, tmp_path / "c.parquet"))
    from_sql = read_raw(write_table(df, tmp_path / "c.db"), query=CLINIC_QUERY)
    for raw in (from_pq, from_sql):
        schema, _ = draft_schema(raw, name="c", target="readmitted", epsilon=None, seed=None)
        assert schema.drop == ["patient_id"]
        assert {c.name: c.kind for c in schema.columns}["age"] == "numeric"


# -- the command line ---------------------------------------------------------------------------


def test_cli_prints_yaml_and_warns_on_stderr(clinic_csv):
    result = CliRunner().invoke(app, ["draft", "--data", clinic_csv[1], "--target", "readmitted"])
    assert result.exit_code == 0, result.stderr
    schema = Schema.from_dict(yaml.safe_load(result.stdout))
    assert schema.name == "clinic" and schema.target == "readmitted"
    assert result.stdout.startswith("# DRAFT")  # the warnings travel in the file as comments
    assert "NOT PRIVATE" in result.stderr and "NOT PRIVATE" in result.stdout


def test_cli_dp_draft_to_file(clinic_csv, tmp_path):
    out = tmp_path / "schemas" / "clinic.yaml"
    result = CliRunner().invoke(app, ["draft", "--data", clinic_csv[1], "--out", str(out),
                                      "--epsilon", "4", "--delta", "1e-7", "--seed", "1",
                                      "--name", "study"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and "wrote" in result.stderr
    schema = Schema.load(out)
    assert schema.name == "study"
    assert sum(p.epsilon for p in schema.provenance) == pytest.approx(4)
    assert sum(p.delta for p in schema.provenance) == pytest.approx(1e-7)


def test_cli_headerless_adult_draft_reads_adult_back(tmp_path):
    out = tmp_path / "adult.yaml"
    result = CliRunner().invoke(app, ["draft", "--data", str(ADULT_TRAIN), "--no-header",
                                      "--missing", "?", "--comment", "|", "--target", "col14",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    schema = Schema.load(out)
    assert schema.name == "adult" and not schema.csv.header and schema.csv.missing == ["?"]
    assert schema.column("col14").categories == ["<=50K", ">50K"]
    df, report = load_table(ADULT_TRAIN, schema)
    assert len(df) == 32561 and not report.violations


def test_cli_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["draft", "--data", str(tmp_path / "none.csv")])
    assert result.exit_code == 1 and "none.csv: cannot read" in result.stderr
    result = runner.invoke(app, ["draft", "--data", "sqlite:///x.db"])
    assert result.exit_code == 1 and "needs a query" in result.stderr


# -- identifiers and free text ------------------------------------------------------------------

COMMON_TITLES = [f"{a} {b}" for a in ("nurse", "clerk", "driver", "chef", "teacher")
                 for b in ("senior", "junior")]


def _wide_table(n: int = 3000, seed: int = 4) -> pd.DataFrame:
    """A new user's wide table: an ID with a few duplicates and gaps, a free-text job title (10
    common titles, the rest nearly all seen once), visit rows keyed by a hex patient key, a
    mostly-distinct whole-number amount, a short list of ward codes and a yes/no target; `remark`
    has fewer than 1,000 values, but two rows in three hold one seen only 4 times."""
    rng = np.random.default_rng(seed)
    person = np.array([f"P{i:06d}" for i in range(n)], dtype=object)
    person[rng.choice(n, 40, replace=False)] = person[rng.choice(n, 40)]  # a few re-used IDs
    person[rng.choice(n, 20, replace=False)] = None
    rare = [f"{rng.choice(['lead', 'chief', 'assistant'])} {i} of the {j} team"
            for i, j in zip(range(n), rng.integers(0, 99, n))]
    titles = (COMMON_TITLES * 100) + rare[:10] * 2 + rare[10:n - 1010]  # 1,980 seen once
    remarks = [f"remark {k}" for k in range(10)] * 100 + [f"said {k} times" for k in range(500)] * 4
    keys = [rng.bytes(16).hex() for _ in range(n // 6)]  # 6 visits per patient
    income = rng.integers(0, 1_000_000, n)
    income[1] = income[0]  # nearly but not all distinct: a measurement, not an ID
    return pd.DataFrame({
        "person": person,
        "title": rng.permutation(np.array(titles, dtype=object)),
        "remark": rng.permutation(np.array(remarks, dtype=object)),
        "visit_of": rng.permutation(np.repeat(np.array(keys, dtype=object), 6)),
        "income": income,
        "ward": rng.choice([f"W{k:05d}" for k in range(30)], n).astype(object),
        "outcome": rng.choice(["yes", "no"], n).astype(object),
    })


@pytest.mark.parametrize("epsilon", [None, 4.0])
def test_draft_drops_identifier_like_and_free_text_columns(epsilon):
    df = _wide_table()
    schema, warnings = draft_schema(df, name="w", target="outcome", epsilon=epsilon, seed=1)
    assert schema.drop == ["person", "title", "remark", "visit_of"]
    assert schema.names == ["income", "ward", "outcome"]
    assert schema.column("income").kind == "numeric"
    assert schema.column("ward").kind == "categorical"
    # Dropped columns are not modelled, so a DP draft spends nothing on them.
    assert {c for p in schema.provenance for c in p.columns} == set(schema.names)

    def about(column):
        (w,) = [w for w in warnings if w.startswith(f"column {column!r}")]
        return w

    if epsilon is not None:
        # A DP draft's warnings are written into the public schema file: the rule, no counts.
        assert "identifiers or free text" in warnings[1]  # read exactly, not covered by DP
        assert about("person").startswith("column 'person' looks like an identifier: nearly "
                                          "every value distinct, or values that look like record")
        assert "most rows hold a value seen fewer than 5 times" in about("title")
        assert not any(n in w for w in warnings for n in ("3,000", "2,000", "510", "500 in"))
        return
    # An exact draft's warnings give the counts, rounded down.
    present, distinct = int(df.person.notna().sum()), df.person.nunique()
    assert 0.95 < distinct / present < 1
    assert about("person").startswith(
        f"column 'person' looks like an identifier: {100 * distinct // present}% of values "
        f"distinct ({distinct:,} in {present:,} rows); listed under 'drop'")
    assert ("looks like free text: 2,000 distinct values (more than 1,000), 99% of them seen "
            "once; values seen fewer than 5 times hold 66% of its 3,000 rows") in about("title")
    assert ("looks like free text: 510 distinct values, 0% of them seen once; values seen fewer "
            "than 5 times hold 66% of its 3,000 rows") in about("remark")
    assert "coarsen it" in about("title") and "public code list" in about("title")
    assert ("looks like an identifier: 16% of values distinct (500 in 3,000 rows), and 100% of "
            "the distinct values look like record codes") in about("visit_of")
    # Nothing of the title column is listed as a category (nor warned about as one).
    assert not any("categories occur fewer than" in w for w in warnings)


def test_many_common_categories_are_kept_and_too_many_are_dropped():
    rng = np.random.default_rng(2)
    n = 15_000
    df = pd.DataFrame({
        "country": rng.permutation(np.repeat([f"country {k}" for k in range(300)], 50)),
        "ward": rng.permutation(np.repeat([f"W{k:05d}" for k in range(150)], 100)),  # codes
        "item": rng.permutation(np.repeat([f"item {k}" for k in range(1250)], 12)),
        "x": rng.normal(0, 1, n),
    })
    exact, warnings = draft_schema(df, name="c", epsilon=None)
    dp, dp_warnings = draft_schema(df, name="c", epsilon=3.0, seed=0)
    for schema in (exact, dp):
        assert schema.drop == ["item"] and schema.names == ["country", "ward", "x"]
        assert len(schema.column("country").categories) == 300
        assert len(schema.column("ward").categories) == 150
    (item,) = [x for x in warnings if "'item'" in x]
    assert ("looks like free text: 1,250 distinct values (more than 1,000), 0% of them seen "
            "once; values seen fewer than 5 times hold 0% of its 15,000 rows") in item
    (item,) = [x for x in dp_warnings if "'item'" in x]
    assert "looks like free text: most rows hold a value seen fewer than 5 times, or more " \
           "than 1,000 distinct values" in item
    for w in (warnings, dp_warnings):
        assert not any("'country'" in x or "'ward'" in x for x in w)


@pytest.mark.parametrize("epsilon", [None, 4.0])
def test_a_free_text_target_is_warned_about_never_dropped(epsilon):
    df = _wide_table()
    schema, warnings = draft_schema(df, name="w", target="title", epsilon=epsilon, seed=2)
    assert schema.drop == ["person", "remark", "visit_of"]
    title = schema.column("title")
    assert title.kind == "categorical"
    # Exact: every title (and a warning about the rare ones); DP: only the common ones survive.
    assert len(title.categories) == (2000 if epsilon is None else 10)
    assert epsilon is None or set(title.categories) == set(COMMON_TITLES)
    (w,) = [w for w in warnings if w.startswith("target 'title'")]
    assert "coarsen it" in w
    assert ("looks like free text (2,000 distinct values" in w) == (epsilon is None)
