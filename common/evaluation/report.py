"""Write an evaluation as report.json (every number) and report.html (one self-contained page).

The HTML is for people who will not read the JSON: it opens with three plain answers (is it
useful, is it safe, what privacy was spent), says which number is a guarantee and which are only
measurements, and then shows the evidence: model curves, per-column distributions, association
matrices, attack results. Figures are PNGs embedded as data: URIs and the CSS is inline, so the file
can be mailed or archived and still opens offline.
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

from ..atomic import atomic_write_text
from . import plots
from .evaluate import EvaluationResult, per_site_epsilons

LEVEL_CLASS = {"good": "good", "fair": "fair", "poor": "poor"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
 color:#1f2933;background:#f6f7f9;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #dde2e8;
 padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.meta{color:#5b6775;font-size:13px;margin:0 0 18px}
.cards{display:grid;grid-template-columns:repeat(3,1fr);gap:14px}
.card{border-radius:8px;padding:14px 16px;border:1px solid #dde2e8;border-left-width:8px}
.card h3{margin:0 0 6px;font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:#5b6775}
.card .headline{font-weight:600;font-size:16px;margin:0 0 8px}
.card ul{margin:0;padding-left:18px;font-size:13.5px}
.good{border-left-color:#3c8d40}.fair{border-left-color:#d9a400}.poor{border-left-color:#c0392b}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;color:#fff;margin-left:6px}
.badge.good{background:#3c8d40}.badge.fair{background:#b38600}.badge.poor{background:#c0392b}
.note{background:#eef3f8;border-radius:8px;padding:12px 16px;font-size:14px;margin:16px 0}
table{border-collapse:collapse;font-size:13.5px;margin:8px 0}
th,td{border-bottom:1px solid #e4e8ed;padding:5px 10px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:10px}
.grid img,figure img{max-width:100%;height:auto}
figure{margin:10px 0}figcaption{font-size:13px;color:#5b6775}
.explain{font-size:14px;color:#333}
@media (max-width:900px){.cards,.grid{grid-template-columns:1fr}}
"""


def write_report(result: EvaluationResult | dict, out_dir: str | Path, *,
                 title: str = "Synthetic data evaluation", render=None) -> dict[str, Path]:
    """Write report.json and report.html (by `render`, default `render_html`) into `out_dir`;
    returns their paths."""
    data = result.to_dict() if isinstance(result, EvaluationResult) else result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "html": out / "report.html"}
    atomic_write_text(paths["json"], json.dumps(data, indent=1, allow_nan=False))
    atomic_write_text(paths["html"], (render or render_html)(data, title=title))
    return paths


def render_html(d: dict, *, title: str) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{escape(title)}</h1>",
             f"<p class='meta'>Data set <b>{escape(d['schema_name'])}</b> · "
             f"{d['n_rows']['synthetic']:,} synthetic rows compared with {d['n_rows']['train']:,} "
             f"real training rows and {d['n_rows']['holdout']:,} real rows kept aside · "
             f"{escape(d['created_at'])}</p>"]
    parts += [summary_section(d), budget_section(d), _utility(d), fidelity_section(d), _columns(d),
              _relationships(d), _privacy_checks(d), _inputs(d), _method(d), "</main></body></html>"]
    return "\n".join(parts)


# -- sections ---------------------------------------------------------------------------------------
def summary_section(d: dict) -> str:
    s = d["summary"]
    cards = []
    for key, question in (("useful", "Is it useful?"), ("safe", "Is it safe?"),
                          ("privacy_spent", "What privacy was spent?")):
        v = s[key]
        items = "".join(f"<li>{escape(t)}</li>" for t in v["details"])
        cards.append(f"<div class='card {LEVEL_CLASS[v['level']]}'><h3>{question}</h3>"
                     f"<p class='headline'>{escape(v['headline'])}</p><ul>{items}</ul></div>")
    return ("<section id='summary'><h2>Summary</h2><div class='cards'>" + "".join(cards) + "</div>"
            "<p class='note'><b>What these numbers prove.</b> The formal privacy budget "
            "(epsilon, delta) is the guarantee: it comes from how the generator was trained and "
            "holds against any attacker. Everything else in this report is a measurement on this "
            "data: the usefulness scores say what you can expect from the synthetic data; the "
            "privacy checks are attacks we tried. A failed check shows a real problem, but a passed "
            "check does not prove safety: a cleverer attacker might do better.</p></section>")


def budget_section(d: dict) -> str:
    p = d.get("formal_privacy") or {}
    per_site = per_site_epsilons(p)
    release = p.get("epsilon")
    if release is None and per_site:
        release = max(per_site.values())  # each person at one site: the largest site budget
    body = ["<section id='privacy-budget'><h2>Privacy budget</h2>"]
    if release is None:
        body.append("<p class='explain'>No differential-privacy budget was supplied with this "
                    "evaluation, so nothing formal can be said about privacy.</p></section>")
        return "".join(body)
    body.append("<p class='explain'>Differential privacy limits how much the released data can "
                "depend on any one person's row. Each site's budget counts everything run on its "
                "rows (data preparation, every training round, evaluation statistics). If each "
                "person is at one site only, the release's guarantee is the largest site budget; "
                "if a person can be at several sites, their budgets add up.</p>")
    rows = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{v:g}</td></tr>" for k, v in per_site.items())
    rows += f"<tr><td><b>release</b></td><td class='num'><b>{float(release):g}</b></td></tr>"
    body.append(f"<table><tr><th>who</th><th>epsilon</th></tr>{rows}</table>")
    if p.get("delta") is not None:
        body.append(f"<p class='explain'>delta = {float(p['delta']):.0e}: the small probability "
                    "with which the epsilon bound may fail.</p>")
    body.append(figure_html(plots.epsilon_bars(per_site, float(release)), "privacy budget per site",
                     "Epsilon per site and for the release."))
    body.append(_empirical_estimate(p.get("empirical_estimate")))
    body.append("</section>")
    return "".join(body)


def _empirical_estimate(e: dict | None) -> str:
    """Triastcyn & Faltings' estimate (common/evaluation/empirical_privacy.py), beside the formal
    epsilon and never in its place."""
    if not e:
        return ""
    if "skipped" in e:
        return (f"<h3>Empirical privacy estimate</h3><p class='explain'>Not measured: "
                f"{escape(e['skipped'])}.</p>")
    names = {"logistic": "logistic regression", "neighbours": "5 nearest neighbours"}
    rows = "".join(
        f"<tr><td>{escape(names.get(m, m))}</td><td class='num'>{number_text(r['epsilon_hat'], 3)}</td>"
        f"<td class='num'>{number_text(r['null']['epsilon_hat'], 3) if 'null' in r else '-'}</td>"
        f"<td class='num'>{number_text(r['expected_privacy_loss'], 4)}</td></tr>"
        for m, r in e["models"].items())
    assumptions = "".join(f"<li>{escape(a)}</li>" for a in e.get("assumptions", []))
    return (
        "<h3>Empirical privacy estimate (an estimate, not a guarantee)</h3><p class='explain'>"
        "After Triastcyn &amp; Faltings: the generator was trained again without "
        f"{e['records']} of the rows, a model an analyst might fit was trained on each release, "
        "and we measured how much its predictions for those people moved. Chebyshev's "
        "inequality turns the average and spread of that privacy loss into an epsilon that "
        f"holds for all but {e['delta_hat']:.0%} of outcomes, on average over people. The "
        "<i>null</i> is the same measurement between two trainings on the same rows: how much "
        "moves from run-to-run randomness alone. An estimate close to its null means the "
        "people's presence did not visibly change the release.</p>"
        "<table><tr><th>model fitted on the release</th><th>epsilon estimate</th><th>null</th>"
        f"<th>average loss</th></tr>{rows}</table>"
        f"<p class='explain'>What it assumes:</p><ul>{assumptions}</ul>")


def _utility(d: dict) -> str:
    u = d["utility"]
    body = ["<section id='utility'><h2>Is it useful? Models trained on synthetic data</h2>"]
    if u.get("skipped") or not u.get("models"):
        body.append(f"<p class='explain'>Not measured: {escape(u.get('skipped', 'no models'))}.</p></section>")
        return "".join(body)
    body.append(f"<p class='explain'>We trained two kinds of models to predict "
                f"<b>{escape(u['target'])}</b>, once on the real training rows and once on the "
                f"synthetic rows, and tested both on {u['n_test']:,} real rows that neither had seen. "
                "The closer the synthetic-trained numbers are to the real-trained ones, the more "
                "useful the synthetic data is for this task.</p>")
    head = "<tr><th>model</th><th>trained on</th><th>accuracy</th><th>F1</th><th>ROC AUC</th></tr>"
    rows = []
    for model, by_src in u["models"].items():
        for src in ("real", "synthetic"):
            r = by_src.get(src, {})
            rows.append(f"<tr><td>{escape(plots.MODEL_TITLE.get(model, model))}</td><td>{src}</td>"
                        f"<td class='num'>{number_text(r.get('accuracy'))}</td>"
                        f"<td class='num'>{number_text(r.get('f1'))}</td>"
                        f"<td class='num'>{number_text(r.get('roc_auc'))}</td></tr>")
    body.append(f"<table>{head}{''.join(rows)}</table>")
    if u["task"] == "binary":
        body.append(f"<p class='explain'>F1 and the curves are for the class "
                    f"<b>{escape(str(u['positive_label']))}</b>. ROC AUC: 0.5 is guessing, 1.0 perfect.</p>")
    body.append(figure_html(plots.model_curves(u), "ROC and precision-recall curves",
                     "Solid: random forest; dashed: gradient boosting. Grey-blue: trained on real "
                     "rows; orange: trained on synthetic rows."))
    body.append("</section>")
    return "".join(body)


def fidelity_section(d: dict) -> str:
    f = d["fidelity"]
    rows = [
        ("Overall quality (SDMetrics-compatible)", f["overall"],
         "mean of the two scores below, as SDMetrics' QualityReport computes it"),
        ("Column shapes", f["column_shapes"]["score"],
         "how closely each column's distribution matches, averaged over columns"),
        ("Column pair trends", f["column_pair_trends"]["score"],
         "how well relationships between strongly related pairs of columns are kept"),
        ("Dependence kept", f["dependence"]["score"],
         "share of all real associations between columns that the synthetic data reproduces"),
        ("Values within bounds", f["boundary_adherence"]["score"],
         "share of synthetic numbers inside the study's declared ranges"),
        ("Category coverage", f["category_coverage"]["score"],
         "share of the real categories that appear in the synthetic data"),
        ("Missing values", f["missing_values"]["score"], "how closely the rate of missing cells matches"),
    ]
    trs = "".join(f"<tr><td>{escape(a)}</td><td class='num'>{percent_text(b)}</td><td>{escape(c)}</td></tr>"
                  for a, b, c in rows)
    return ("<section id='fidelity'><h2>How closely does it resemble the real data?</h2>"
            f"<table><tr><th>measure</th><th>score</th><th>meaning</th></tr>{trs}</table>"
            + figure_html(plots.column_scores(f["column_shapes"]), "column shape scores",
                   "100% means the synthetic column has the same distribution as the real one.")
            + "</section>")


def _columns(d: dict) -> str:
    shapes = d["fidelity"]["column_shapes"]["columns"]
    real, syn = d["histograms"]["real"], d["histograms"]["synthetic"]
    imgs = "".join(
        f"<img alt='distribution of {escape(n)}' src='data:image/png;base64,"
        f"{plots.column_distribution(n, real[n], syn[n], shapes[n]['score'])}'>"
        for n in real)
    return ("<section id='columns'><h2>Column by column</h2><p class='explain'>Share of rows in "
            "each category or range, real (grey-blue) beside synthetic (orange). Ranges come from "
            "the study's public schema, not from the data.</p>"
            f"<div class='grid'>{imgs}</div></section>")


def _relationships(d: dict) -> str:
    dep = d["fidelity"]["dependence"]
    return ("<section id='relationships'><h2>Relationships between columns</h2>"
            "<p class='explain'>Each square shows how strongly two columns are associated (darker = "
            "stronger). If the synthetic side (right) looks like the real side (left), the "
            "synthetic data keeps the relationships; a generator that makes up each column "
            f"independently would show an empty right side (only the diagonal). Dependence kept: "
            f"<b>{percent_text(dep['score'])}</b>.</p>"
            + figure_html(plots.association_matrices(dep), "association matrices, real and synthetic",
                   "Left: real data. Right: synthetic data.")
            + "</section>")


def _privacy_checks(d: dict) -> str:
    r = d["privacy_risk"]
    body = ["<section id='privacy-checks'><h2>Is it safe? Attacks we tried</h2>"]
    if r.get("skipped"):
        body.append(f"<p class='explain'>Not measured: {escape(r['skipped'])}.</p></section>")
        return "".join(body)
    mia, dcr, emp = r["membership_inference"], r["dcr"], r["empirical_privacy"]
    body.append(
        "<h3>Membership attacks</h3><p class='explain'>An attacker who has the synthetic data tries "
        f"to tell which of {mia['n_members']:,} real people were in the training data and which of "
        f"{mia['n_nonmembers']:,} were not. The <i>distance</i> attack says \"member\" when a "
        "synthetic row lies very close to the person; the <i>density-ratio</i> attack (stronger "
        "against partial memorisation) compares how crowded the synthetic data is around the "
        "person with how crowded the real population is there. An AUC near 0.5 means the attacks "
        "fail. It does not prove that every attack fails.</p>")
    body.append(figure_html(plots.attack_scores(mia), "membership attack results", ""))
    body.append(
        "<table><tr><th>attack</th><th>AUC</th><th>members caught at 1% false alarms</th></tr>"
        + "".join(f"<tr><td>{name}</td><td class='num'>{number_text(mia[key]['auc'])}</td>"
                  f"<td class='num'>{percent_text(mia[key]['tpr_at_fpr_1pct'], 1)}</td></tr>"
                  for key, name in (("distance", "distance"), ("density_ratio", "density ratio")))
        + "</table>")
    body.append(
        "<h3>Distance to the closest real row</h3><p class='explain'>If the generator copied or "
        "memorised people, synthetic rows would sit closer to training rows than fresh real rows "
        "do (the orange curve would rise left of the grey-blue one).</p>")
    body.append(figure_html(plots.distance_curves(dcr), "distance to closest record", ""))
    body.append(
        "<table>"
        f"<tr><td>exact copies of a training row</td><td class='num'>{percent_text(dcr['exact_copy_rate'], 1)}</td>"
        f"<td>fresh real rows that match a training row: {percent_text(dcr['holdout_exact_match_rate'], 1)}</td></tr>"
        f"<tr><td>synthetic rows closer than 95% of fresh real rows</td>"
        f"<td class='num'>{percent_text(dcr['share_closer_than_holdout_p5'], 1)}</td><td>about 5% is normal</td></tr>"
        f"<tr><td>median distance, synthetic / fresh real</td>"
        f"<td class='num'>{number_text(dcr['synthetic']['median'])} / "
        f"{number_text(dcr['holdout']['median'])}</td><td></td></tr>"
        "</table>")
    if "epsilon_hat" in emp:
        body.append(
            "<h3>Density-ratio shift (a heuristic)</h3><p class='explain'>We compare how much more "
            "the synthetic data crowds around people who were in the training data than around "
            "people who were not, and turn the spread into a bound with Chebyshev's inequality: "
            f"the shift exceeds <b>{number_text(emp['epsilon_hat'], 2)}</b> for at most "
            f"{emp['delta_hat']:.0%} of people (average shift "
            f"{number_text(emp['expected_privacy_loss'], 3)}). This is a heuristic score on this data "
            "set, not a differential-privacy guarantee: it says nothing about the most unusual "
            "people, and it does not replace the formal epsilon above. The empirical privacy "
            "estimate of Triastcyn &amp; Faltings, which retrains the generator without some "
            "people, is a separate section, produced by <code>synthpool synth "
            "--empirical-privacy</code>.</p>")
    body.append("</section>")
    return "".join(body)


def _inputs(d: dict) -> str:
    """How the real tables were read (`synthpool evaluate --on-invalid`): rows dropped or clipped
    per table and column. Only in an evaluator's own report (the key is absent elsewhere)."""
    info = d.get("input")
    if not info:
        return ""
    rows = []
    for t in info.get("tables", []):
        changes = [f"{n} dropped ({escape(c)})" for c, n in t.get("dropped_by_column", {}).items()]
        changes += [f"{n} clipped ({escape(c)})" for c, n in t.get("clipped_by_column", {}).items()]
        rows.append(f"<tr><td>{escape(t['table'])}</td><td>{escape(t['file'])}</td>"
                    f"<td class='num'>{t['rows_read']:,}</td><td class='num'>{t['rows_kept']:,}</td>"
                    f"<td class='num'>{t.get('rows_dropped', 0):,}</td>"
                    f"<td class='num'>{t.get('rows_clipped', 0):,}</td>"
                    f"<td>{', '.join(changes) or 'none'}</td></tr>")
    return ("<section id='inputs'><h2>How the real tables were read</h2>"
            f"<p class='explain'>Cells the schema does not allow: <b>{escape(info['on_invalid'])}</b> "
            "(error: refused; drop: their rows left out; clip: numeric values outside the schema's "
            "bounds set to the nearest bound). Counted per column; a row can count in several.</p>"
            "<table><tr><th>table</th><th>file</th><th>rows read</th><th>rows used</th>"
            "<th>dropped</th><th>clipped</th><th>per column</th></tr>" + "".join(rows)
            + "</table></section>")


def _method(d: dict) -> str:
    caps = d["privacy_risk"].get("caps", {})
    util = d["utility"]
    t = d.get("timings", {})
    return (
        "<section id='method'><h2>How this was measured</h2><ul class='explain'>"
        "<li>Column shapes: Kolmogorov-Smirnov complement for numbers, total-variation complement "
        "for categories; pair trends: correlation similarity and contingency similarity, averaged "
        "over pairs with real correlation above 0.5 or association above 0.3 (as SDMetrics' "
        "QualityReport). Dependence kept: 1 - sum |V_real - V_synthetic| / sum V_real over all "
        "pairs, bias-corrected Cramér's V on the schema's public ranges.</li>"
        f"<li>Utility: random forest (100 trees) and histogram gradient boosting, trained on at "
        f"most {util.get('max_train_rows', 0):,} rows, tested on the real hold-out.</li>"
        "<li>Privacy checks: distances in a one-hot / range-scaled encoding built from the schema "
        f"only; at most {caps.get('max_query_rows', 0):,} rows are queried per set and "
        f"{caps.get('max_index_rows', 0):,} searched. Verdict thresholds: attack AUC above 0.60 "
        "warns, above 0.75 fails; exact copies above the natural match rate by 1% warn, by 10% fail.</li>"
        f"<li>Run time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + ". "
        f"Seed {d['seed']}. Schema fingerprint <code>{escape(d['schema_fingerprint'])}</code>. "
        "Every number is in report.json beside this file.</li>"
        "</ul></section>")


# -- helpers ----------------------------------------------------------------------------------------
def figure_html(b64: str, alt: str, caption: str) -> str:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f"<figure><img alt='{escape(alt)}' src='data:image/png;base64,{b64}'>{cap}</figure>"


def number_text(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def percent_text(x, digits: int = 0) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}%}"
