"""The shared report of a federated release, pooled from what each site returned."""

from __future__ import annotations

import numpy as np
import pytest

from synthpool.common.evaluation.evaluate import evaluate
from synthpool.common.evaluation.federated_report import render_federated_html
from synthpool.common.evaluation.grids import dp_histograms, exact_histograms
from synthpool.common.evaluation.pooled import SiteEvaluation, pool
from synthpool.common.evaluation.site_scores import site_scores
from test_evaluation_data import adult_schema, adult_splits


@pytest.fixture(scope="module")
def pooled():
    """Two sites score one 'synthetic' table that is a copy of site a's training rows: site a
    sees a blatant leak, site b (other people) sees nothing."""
    schema = adult_schema()
    a_train, a_hold, b_train, b_hold = adult_splits(1200, seed=11, parts=4)
    synthetic = a_train.copy()
    sites, hists = {}, {}
    for name, (train, hold), weight in (("a", (a_train, a_hold), 1000.0),
                                         ("b", (b_train, b_hold), 3000.0)):
        full = evaluate(schema, train, hold, synthetic, max_train_rows=1200, max_query_rows=1000)
        hists[name] = dp_histograms(schema, train, 2.0, np.random.default_rng(0))
        sites[name] = SiteEvaluation(weight, site_scores(full), hists[name])
    privacy = {"epsilon": 3.0, "delta": 1e-5, "per_site": {"a": {"epsilon": 3.0}, "b": {"epsilon": 2.5}}}
    return schema, synthetic, sites, hists, pool(schema, synthetic, sites, privacy=privacy)


def test_usefulness_is_the_size_weighted_mean_of_the_sites(pooled):
    _, _, sites, _, d = pooled
    a, b = (sites[s].scores["fidelity"]["column_shapes"]["score"] for s in "ab")
    assert d["fidelity"]["column_shapes"]["score"] == pytest.approx((1000 * a + 3000 * b) / 4000)
    gb = [sites[s].scores["utility"]["models"]["hist_gradient_boosting"]["synthetic"]["roc_auc"] for s in "ab"]
    assert d["utility"]["models"]["hist_gradient_boosting"]["synthetic"]["roc_auc"] == \
        pytest.approx((1000 * gb[0] + 3000 * gb[1]) / 4000)


def test_privacy_is_judged_by_the_worst_site(pooled):
    _, _, sites, _, d = pooled
    risk = d["privacy_risk"]
    assert risk["dcr"]["site"] == "a" and risk["dcr"]["exact_copy_rate"] == 1.0
    assert sites["b"].scores["privacy_risk"]["dcr"]["exact_copy_rate"] < 0.05
    assert risk["membership_inference"]["distance"]["site"] == "a"
    assert risk["membership_inference"]["distance"]["auc"] >= 0.75
    assert d["summary"]["safe"]["level"] == "poor"


def test_real_distributions_are_the_sum_of_the_sites_noisy_histograms(pooled):
    schema, synthetic, _, hists, d = pooled
    for name in schema.names:
        want = np.clip(np.add(hists["a"]["columns"][name]["counts"], hists["b"]["columns"][name]["counts"]), 0, None)
        assert d["histograms"]["real"][name]["counts"] == pytest.approx(want, abs=0.06)
    assert d["histograms"]["synthetic"] == exact_histograms(schema, synthetic)
    assert d["histograms"]["real_noise_std"] == pytest.approx(np.hypot(hists["a"]["noise_std"], hists["b"]["noise_std"]))


def test_relationships_show_synthetic_association_and_site_agreement(pooled):
    schema, _, _, _, d = pooled
    dep = d["fidelity"]["dependence"]
    n = len(schema.names)
    assert np.asarray(dep["synthetic"]).shape == (n, n) and np.asarray(dep["agreement"]).shape == (n, n)
    i, j = schema.names.index("education"), schema.names.index("education-num")
    assert dep["synthetic"][i][j] > 0.9  # education determines education-num
    pair = d["fidelity"]["column_pair_trends"]["pairs"]["education|education-num"]
    assert dep["agreement"][i][j] == pytest.approx(pair, abs=1e-4)


def test_federated_report_renders_with_every_section(pooled, tmp_path):
    *_, d = pooled
    html = render_federated_html(d, title="Release r1")
    for section in ("summary", "privacy-budget", "sites", "fidelity", "columns", "relationships",
                    "privacy-checks", "method"):
        assert f"id='{section}'" in html, section
    assert html.count("data:image/png;base64,") == 1 + 1 + 15 + 1 + 1  # budget, scores, columns, matrices, attacks
    assert "Unsafe" in html and "<td>a</td>" in html


def test_without_scores_the_report_still_shows_the_budget_and_distributions():
    schema = adult_schema()
    train, syn = adult_splits(400, seed=5, parts=2)
    sites = {"a": SiteEvaluation(400.0, None, dp_histograms(schema, train, 2.0, np.random.default_rng(1)))}
    d = pool(schema, syn, sites, privacy={"epsilon": 1.0, "delta": 1e-5})
    assert d["summary"]["useful"]["headline"].startswith("Not measured")
    html = render_federated_html(d, title="r")
    assert "id='columns'" in html and "id='privacy-budget'" in html


def test_federated_report_renders_in_headless_chromium(pooled, tmp_path):
    import re
    import subprocess

    from test_evaluation_report import CHROMIUM_FLAGS, IMG_CHECK, _chromium

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine: apt-get install -y chromium (CI installs it)")
    *_, d = pooled
    page = tmp_path / "report.html"
    page.write_text(render_federated_html(d, title="r").replace("</body>", IMG_CHECK + "</body>"))
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<pre id="img-check">(\d+)/(\d+)</pre>', dom)
    assert m and m.group(1) == m.group(2) == "19", m and m.group(0)
