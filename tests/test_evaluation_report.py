"""The evaluation report: every number in report.json, one self-contained HTML page that a
headless browser renders with all of its figures."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from synthpool.common.evaluation import report as report_module
from synthpool.common.evaluation.evaluate import EvaluationResult, evaluate, summarize
from synthpool.common.evaluation.report import write_report
from synthpool.common.schema import Schema
from test_evaluation_data import adult_schema, adult_splits

SECTIONS = ["summary", "privacy-budget", "utility", "fidelity", "columns", "relationships",
            "privacy-checks", "method"]
PRIVACY = {"epsilon": 3.0, "delta": 1e-5,
           "per_site": {"hospital-a": 2.4, "hospital-b": {"epsilon": 3.0}, "clinic-c": 1.7}}
# 15 column plots + shapes + model curves + association matrices + attacks + distances + budget
N_FIGURES = 15 + 6
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
IMG_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var p = document.createElement('pre'); p.id = 'img-check';
  p.textContent = ok + '/' + imgs.length; document.body.appendChild(p);
});
</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    train, holdout, syn = adult_splits(1500, seed=4)
    result = evaluate(adult_schema(), train, holdout, syn, privacy=PRIVACY, seed=1)
    out = tmp_path_factory.mktemp("report")
    paths = write_report(result, out, title="Adult evaluation")
    return result, paths


def test_json_holds_every_number(report):
    result, paths = report
    data = json.loads(paths["json"].read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["fidelity"]["column_shapes"]["score"] > 0.9
    assert data["utility"]["models"]["random_forest"]["synthetic"]["roc_curve"]["fpr"]
    assert data["privacy_risk"]["membership_inference"]["distance"]["auc"] < 0.6
    assert data["formal_privacy"] == PRIVACY
    assert data["summary"]["useful"]["level"] == "good" and data["summary"]["safe"]["level"] == "good"


def test_html_is_one_self_contained_page(report):
    _, paths = report
    html = paths["html"].read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in html, section
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", html)
    assert "<link" not in html and "<script" not in html
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == N_FIGURES
    for b64 in images:
        img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    # Plain-language answers first, and the guarantee named as the guarantee.
    assert html.index("Is it useful?") < html.index("id='utility'")
    assert "is the guarantee" in html and "epsilon = 3" in html


def test_without_a_formal_guarantee_the_report_says_so(report):
    result, _ = report
    data = result.to_dict()
    data["formal_privacy"] = None
    r = EvaluationResult(**{**data, "summary": {}})
    r.summary = summarize(r)
    assert r.summary["privacy_spent"]["level"] == "poor"
    data["summary"] = r.summary
    # The two sections that depend on it (rendering every figure again would only cost time).
    html = report_module.summary_section(data) + report_module.budget_section(data)
    assert "No formal privacy guarantee" in html and "data:image" not in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def test_renders_in_headless_chromium_with_all_figures(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine: apt-get install -y chromium (CI installs it)")
    _, paths = report
    page = tmp_path / "checked.html"
    page.write_text(paths["html"].read_text().replace("</body>", IMG_CHECK + "</body>"))
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<pre id="img-check">(\d+)/(\d+)</pre>', dom)
    assert m, "the page did not finish loading in chromium"
    assert (int(m.group(1)), int(m.group(2))) == (N_FIGURES, N_FIGURES)
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section

    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}",
                    paths["html"].as_uri()], capture_output=True, timeout=120)
    img = Image.open(shot)
    assert img.size == (1200, 2400)
    # Not a blank page: the summary cards and figures put many colours on screen.
    assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


def test_a_table_without_target_or_hold_out_still_reports(tmp_path):
    """Utility and attacks are skipped with a reason; the rest of the page renders."""
    schema = Schema.from_dict({"name": "tiny", "columns": [
        {"name": "x", "kind": "numeric", "lower": 0, "upper": 1},
        {"name": "c", "kind": "categorical", "categories": ["a", "b"]}]})
    rng = np.random.default_rng(0)

    def table(n):
        return pd.DataFrame({"x": rng.uniform(0, 1, n), "c": rng.choice(["a", "b"], n).astype(object)})

    result = evaluate(schema, table(200), table(8), table(200),
                      privacy={"per_site": {"a": 1.0, "b": 2.5}})
    paths = write_report(result, tmp_path)
    html = paths["html"].read_text()
    assert "skipped" in result.utility and "skipped" in result.privacy_risk
    assert "Not measured" in html and "epsilon = 2.5" in html
    assert len(re.findall(r"data:image/png;base64,", html)) == 2 + 1 + 1 + 1  # columns, shapes, assoc, budget
