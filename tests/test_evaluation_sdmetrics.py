"""Our column shapes and pair trends agree with SDMetrics' QualityReport (a reference, run only
where sdmetrics is installed by hand: it requires Copulas, whose licence synthpool avoids)."""

from __future__ import annotations

import warnings

import pytest

from synthpool.common.evaluation.fidelity import fidelity
from test_evaluation_data import adult_schema, adult_splits, shuffle_columns

sdmetrics = pytest.importorskip("sdmetrics")
from sdmetrics.reports import QualityReport  # noqa: E402  (the unified report of 0.32)

SDTYPE = {"numeric": "numerical", "categorical": "categorical", "boolean": "boolean"}


def _sdmetrics_scores(schema, real, syn) -> dict:
    table = {"columns": {c.name: {"sdtype": SDTYPE[c.kind]} for c in schema.columns}}
    report = QualityReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate({"t": real}, {"t": syn}, {"tables": {"t": table}}, verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    return {"shapes": props["Column Shapes"], "pairs": props["Column Pair Trends"],
            "overall": report.get_score(),
            "shape_details": report.get_details("Column Shapes"),
            "pair_details": report.get_details("Column Pair Trends")}


@pytest.fixture(scope="module")
def frames():
    real, other, _ = adult_splits(5000, seed=11)
    return real, {"another sample": other, "columns shuffled": shuffle_columns(other, seed=3)}


@pytest.mark.parametrize("case", ["another sample", "columns shuffled"])
def test_shapes_and_pair_trends_match_sdmetrics(frames, case):
    schema = adult_schema()
    real, syns = frames
    syn = syns[case]
    ours = fidelity(schema, real, syn)
    ref = _sdmetrics_scores(schema, real, syn)
    assert ours["column_shapes"]["score"] == pytest.approx(ref["shapes"], abs=0.02)
    assert ours["column_pair_trends"]["score"] == pytest.approx(ref["pairs"], abs=0.02)
    assert ours["overall"] == pytest.approx(ref["overall"], abs=0.02)
    # Column by column too, so a compensating error cannot hide in the average.
    for _, row in ref["shape_details"].iterrows():
        assert ours["column_shapes"]["columns"][row["Column"]]["score"] == pytest.approx(
            row["Score"], abs=0.02), row["Column"]
    pairs = {tuple(p["columns"]): p for p in ours["column_pair_trends"]["pairs"]}
    for _, row in ref["pair_details"].iterrows():
        mine = pairs[(row["Column 1"], row["Column 2"])]
        assert mine["contributes"] == bool(row["Meets Threshold?"]), (row["Column 1"], row["Column 2"])
        if row["Meets Threshold?"]:
            assert mine["score"] == pytest.approx(row["Score"], abs=0.02)


def test_the_degraded_table_scores_lower(frames):
    schema = adult_schema()
    real, syns = frames
    good = fidelity(schema, real, syns["another sample"])
    bad = fidelity(schema, real, syns["columns shuffled"])
    assert bad["column_pair_trends"]["score"] < good["column_pair_trends"]["score"] - 0.1
    # Shapes cannot see the damage; our dependence score must.
    assert abs(bad["column_shapes"]["score"] - good["column_shapes"]["score"]) < 0.01
    assert good["dependence"]["score"] > 0.8 and bad["dependence"]["score"] < 0.2
