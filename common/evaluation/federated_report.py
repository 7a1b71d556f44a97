"""report.html of a federated release: the pooled evaluation (`pooled.pool`) for the contractor
and the sites' governance staff. Same look and verdicts as a single owner's report (report.py);
different evidence, because the coordinator only has what the sites chose to send: a table per
site instead of curves, DP-noised real distributions, agreement scores instead of a real
association matrix. Each section says which numbers are DP and which are plain aggregates."""

from __future__ import annotations

from html import escape

from . import plots
from .report import (CSS, budget_section, fidelity_section, figure_html, number_text, percent_text,
                     summary_section)


def render_federated_html(d: dict, *, title: str) -> str:
    sites = d["sites"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{escape(title)}</h1>",
             f"<p class='meta'>Data set <b>{escape(d['schema_name'])}</b> · "
             f"{d['n_rows']['synthetic']:,} synthetic rows scored at {len(sites)} site(s) against "
             f"their own real rows (about {d['n_rows']['sites_dp_rows']:,} rows in all, a DP "
             f"estimate) · {escape(d['created_at'])}</p>",
             "<p class='note'><b>Where these numbers come from.</b> The real data never left the "
             "sites. Each site compared the synthetic data with its own rows, training rows and "
             "rows it set aside before training, and sent back only the scores below and, where "
             "shown, distributions with differential-privacy noise added, charged to its privacy "
             "budget. Each site keeps a full report with its real distributions for its own staff.</p>"]
    parts += [summary_section(d), budget_section(d), _per_site(d)]
    if d["fidelity"]:
        parts.append(fidelity_section(d))
    parts += [_columns(d), _relationships(d), _attacks(d), _method(d), "</main></body></html>"]
    return "\n".join(parts)


def _best_auc(mia: dict | None) -> float | None:
    aucs = [a.get("auc") for a in (mia or {}).values() if isinstance(a, dict) and a.get("auc") is not None]
    return max(aucs) if aucs else None


OPTED_IN = "yes, by its owner's choice"


def _per_site(d: dict) -> str:
    head = ("<tr><th>site</th><th>rows (DP estimate)</th><th>overall quality</th>"
            "<th>gradient boosting AUC, trained on synthetic / real</th><th>best attack AUC</th>"
            "<th>exact copies</th><th>shared DP distributions</th>"
            "<th>shared scores that are not DP</th></tr>")
    rows = []
    for name, s in sorted(d["sites"].items()):
        sc = s.get("scores") or {}
        gb = (sc.get("utility", {}).get("models", {}) or {}).get("hist_gradient_boosting", {})
        risk = sc.get("privacy_risk", {})
        rows.append(
            f"<tr><td>{escape(name)}</td><td class='num'>{s['weight']:,.0f}</td>"
            f"<td class='num'>{percent_text(sc.get('fidelity', {}).get('overall'))}</td>"
            f"<td class='num'>{number_text(gb.get('synthetic', {}).get('roc_auc'))} / "
            f"{number_text(gb.get('real', {}).get('roc_auc'))}</td>"
            f"<td class='num'>{number_text(_best_auc(risk.get('membership_inference')))}</td>"
            f"<td class='num'>{percent_text(risk.get('dcr', {}).get('exact_copy_rate'), 1)}</td>"
            f"<td>{'yes' if s['shared_histograms'] else 'no'}</td>"
            f"<td>{OPTED_IN if s.get('scores') else 'no'}</td></tr>")
    pooled = d["utility"].get("models", {})
    util = ""
    if pooled:
        util = ("<h3>Models trained on synthetic data, tested on each site's set-aside rows "
                "(weighted mean over sites)</h3><table><tr><th>model</th><th>trained on</th>"
                "<th>accuracy</th><th>F1</th><th>ROC AUC</th></tr>" + "".join(
                    f"<tr><td>{escape(plots.MODEL_TITLE.get(m, m))}</td><td>{src}</td>"
                    f"<td class='num'>{number_text(r.get('accuracy'))}</td>"
                    f"<td class='num'>{number_text(r.get('f1'))}</td>"
                    f"<td class='num'>{number_text(r.get('roc_auc'))}</td></tr>"
                    for m, by in pooled.items() for src, r in by.items()) + "</table>")
    return ("<section id='sites'><h2>Site by site</h2><p class='explain'>Each row is one site's "
            "verdict on the same synthetic data. Usefulness is averaged over sites, weighted by "
            "their size; for privacy the worst site counts. 'Trained on real' is a model trained "
            "on the site's own training rows: the target the synthetic data aims for.</p>"
            f"<table>{head}{''.join(rows)}</table>{util}</section>")


def _columns(d: dict) -> str:
    h = d["histograms"]
    if not h["real"]:
        return ("<section id='columns'><h2>Column by column</h2><p class='explain'>No site spent "
                "privacy budget on sharing distributions, so only scores are shown.</p></section>")
    shapes = (d["fidelity"].get("column_shapes") or {}).get("columns", {})
    imgs = "".join(
        f"<img alt='distribution of {escape(n)}' src='data:image/png;base64,"
        f"{plots.column_distribution(n, h['real'][n], h['synthetic'][n], (shapes.get(n) or {}).get('score'))}'>"
        for n in h["real"])
    return ("<section id='columns'><h2>Column by column</h2><p class='explain'>Share of rows in "
            "each category or range: real (grey-blue) is the sum of "
            f"{h['real_sites']} site(s)' distributions released with differential-privacy noise "
            f"(standard deviation {h['real_noise_std']:.0f} rows per bar, so small bars are "
            "mostly noise); synthetic (orange) is exact. 'match' is the sites' mean score on "
            "their real rows, not on the noisy bars.</p>"
            f"<div class='grid'>{imgs}</div></section>")


def _relationships(d: dict) -> str:
    dep = d["fidelity"].get("dependence") or {}
    if "agreement" not in dep:
        return ""
    return ("<section id='relationships'><h2>Relationships between columns</h2>"
            "<p class='explain'>Left: how strongly two columns are associated in the synthetic "
            "data (darker = stronger). Right: how well each pair's relationship matches the real "
            "data, as the sites scored it (darker = closer; 100% = the same). A generator that "
            "made up each column independently would show an empty left side. Dependence kept "
            f"(sites' mean): <b>{percent_text(dep.get('score'))}</b>.</p>"
            + figure_html(plots.matrices(dep["columns"], [("Synthetic data: association", dep["synthetic"]),
                                                   ("Agreement with the sites' real data", dep["agreement"])],
                                  "0 to 1"),
                   "association and agreement matrices", "")
            + "</section>")


def _attacks(d: dict) -> str:
    r = d["privacy_risk"]
    if r.get("skipped"):
        return (f"<section id='privacy-checks'><h2>Is it safe? Attacks the sites ran</h2>"
                f"<p class='explain'>Not measured: {escape(r['skipped'])}.</p></section>")
    mia, dcr, emp = r["membership_inference"], r["dcr"], r["empirical_privacy"]
    rows = "".join(
        f"<tr><td>{name}</td><td class='num'>{number_text(mia[k]['auc'])}</td>"
        f"<td class='num'>{percent_text(mia[k]['tpr_at_fpr_1pct'], 1)}</td><td>{escape(mia[k]['site'])}</td></tr>"
        for k, name in (("distance", "distance"), ("density_ratio", "density ratio")))
    emp_line = ""
    if emp.get("epsilon_hat") is not None:
        emp_line = (f"<p class='explain'>Density-ratio shift, a heuristic (site {escape(emp['site'])}): "
                    f"the synthetic data's shift towards a person exceeds "
                    f"<b>{number_text(emp['epsilon_hat'], 2)}</b> for at most {percent_text(emp.get('delta_hat'))} "
                    "of people. A score on that site's data, not a guarantee. The empirical "
                    "privacy estimate of Triastcyn &amp; Faltings is a separate section, produced "
                    "by <code>synthpool synth --empirical-privacy</code>.</p>")
    return ("<section id='privacy-checks'><h2>Is it safe? Attacks the sites ran</h2>"
            "<p class='explain'>Each site attacked the synthetic data with its own rows: could it "
            "tell which of its people were in the training data, from rows it set aside before "
            "training? The worst site is shown. AUC 0.5 is a coin flip. A passed check does not "
            "prove safety; the formal epsilon above does the proving.</p>"
            + figure_html(plots.attack_scores(mia), "membership attack results", "")
            + "<table><tr><th>attack</th><th>AUC</th><th>members caught at 1% false alarms</th>"
              f"<th>worst site</th></tr>{rows}</table>"
            + f"<table><tr><td>exact copies of a training row (site {escape(dcr['site'])})</td>"
              f"<td class='num'>{percent_text(dcr['exact_copy_rate'], 1)}</td><td>set-aside rows matching "
              f"a training row: {percent_text(dcr['holdout_exact_match_rate'], 1)}</td></tr>"
              f"<tr><td>synthetic rows closer than 95% of set-aside rows</td>"
              f"<td class='num'>{percent_text(dcr['share_closer_than_holdout_p5'], 1)}</td>"
              "<td>about 5% is normal</td></tr></table>" + emp_line + "</section>")


def _method(d: dict) -> str:
    mechs = {s: v.get("histogram_mechanism") for s, v in d["sites"].items() if v.get("histogram_mechanism")}
    sigma = ", ".join(f"{escape(s)} noise multiplier {m['noise_multiplier']:.2f}" for s, m in mechs.items())
    return ("<section id='method'><h2>What left each site</h2><ul class='explain'>"
            "<li>Differentially private, charged to the site's budget (and counted in the epsilon "
            "above): the distributions in 'Column by column', one Gaussian mechanism per site over "
            "all columns on the schema's public ranges" + (f" ({sigma})" if sigma else "") + ".</li>"
            "<li>Not differentially private, and only from the sites whose owners opted in "
            "(the last column of the table of sites; by default a site keeps them): single "
            "scores (quality per column and per pair of columns, model accuracy / F1 / AUC, "
            "attack AUCs, copy rates), each averaged over the site's rows. They are not covered "
            "by the epsilon above. No row, no per-row distance, no curve and no exact count "
            "left a site.</li>"
            "<li>Every reply each site sent is in the coordinator's transcript "
            "(checkpoints/transcript.jsonl) for audit.</li>"
            f"<li>Schema fingerprint <code>{escape(d['schema_fingerprint'])}</code>. Every number "
            "is in report.json beside this file.</li></ul></section>")
