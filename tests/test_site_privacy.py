"""A curious or malicious coordinator against one site: each test is an attack the privacy audit
found, run against a real site (its state dir, ledger, rows) through the ClientApp's handlers,
and shows it refused without new spend."""

from __future__ import annotations

import hashlib
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthpool.agent.clientapp import app as client_app, noise_plan, site_job
from synthpool.agent.ledger import Ledger
from synthpool.agent.site_state import SiteState
from synthpool.coordinator.serverapp.evaluation_stage import sample_bytes

from accounting import recompute_epsilon

from test_federation_units import (  # noqa: F401  (fixtures)
    DELTA, adult_slices, make_run, torch_threads, write_site,
)

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _site(tmp_path, adult_slices, name="a", **kw) -> SiteState:
    return SiteState.from_config_path(write_site(tmp_path, name, adult_slices[0], **kw))


def _train(site: SiteState, run, tid: str) -> dict:
    """The statistics stage and every round of training `tid`, as the coordinator runs them."""
    fp = site.schema.fingerprint()
    merged = json.dumps(client_app.handle_stats(site, run.round_wire(tid, 0, fp)).stats,
                        sort_keys=True)
    weights = []
    for rnd in range(1, run.num_rounds + 1):
        wire = run.round_wire(tid, rnd, fp, site_job.stats_digest(merged))
        weights = client_app.handle_train(site, weights, wire, merged).weights
    return {"merged": merged, "weights": weights}


def _evaluate(site: SiteState, run, tid: str, sample: bytes):
    wire = run.round_wire(tid, run.num_rounds, site.schema.fingerprint(), stage="evaluate",
                          synthetic_digest="sha256:" + hashlib.sha256(sample).hexdigest())
    return client_app.handle_evaluate(site, wire, sample)


def _cfg(run, tid: str = "t1") -> site_job.RoundConfig:
    return site_job.RoundConfig.from_wire(run.round_wire(tid, 0, ""))


def _charges(site: SiteState) -> list[str]:
    with Ledger(site.state_dir) as led:
        return [c.job_id for c in led.charges("adult")]


def _crafted(site: SiteState, copies: int = 1) -> bytes:
    """A membership probe: the site's own first training row, repeated, as the 'release'."""
    rows = site.load_rows().head(1)
    return sample_bytes(pd.concat([rows] * copies, ignore_index=True), copies)


def test_a_crafted_sample_for_a_training_the_site_never_trained_is_refused(tmp_path, adult_slices):
    site = _site(tmp_path, adult_slices)
    site.ledger  # noqa: B018  (made first, as the agent does when it starts)
    run = make_run(tmp_path, num_rounds=1, evaluation_share=0.0)
    for tid in ("made-up-1", "made-up-2"):  # fresh training ids were free queries before
        with pytest.raises(client_app.Refusal, match="did not train round 1 of training made-up-1"
                           if tid == "made-up-1" else "did not train round 1"):
            _evaluate(site, run, tid, _crafted(site, 64))
    assert _charges(site) == []


def test_one_evaluation_per_training_and_only_dp_numbers_leave_by_default(tmp_path, adult_slices):
    site = _site(tmp_path, adult_slices)
    run = make_run(tmp_path, num_rounds=1, noise_multiplier=0.0, stats_noise_multiplier=0.0,
                   target_epsilon=3.0)
    _train(site, run, "t1")
    first = _evaluate(site, run, "t1", _crafted(site, 64))
    # The site shares no score by default: a crafted sample's copy rate, its attack AUCs or
    # its accuracies on the hold-out are not DP. Only the charged histograms leave.
    assert first.evaluation["scores"] is None
    assert first.evaluation["histograms"]["mechanism"]["name"] == "evaluation histograms"
    charged = _charges(site)
    assert charged[-1] == "t1/evaluate"
    # The same request again is a retry: the same bytes back, nothing charged.
    again = _evaluate(site, run, "t1", _crafted(site, 64))
    assert again.info["replayed"] is True and again.evaluation == first.evaluation
    # Another sample for the same training is a second query: refused.
    with pytest.raises(client_app.Refusal, match="already released for other inputs"):
        _evaluate(site, run, "t1", _crafted(site, 128))
    assert _charges(site) == charged
    # The owner's own copy of the full report stays at the site.
    assert list(site.state_dir.glob("reports/adult-*/t1-*/report.html"))


def test_scores_leave_only_when_the_owner_opts_in(tmp_path, adult_slices):
    site = _site(tmp_path, adult_slices, extra="\n[evaluation]\nshare_scores = true\n")
    run = make_run(tmp_path, num_rounds=1, noise_multiplier=0.0, stats_noise_multiplier=0.0,
                   target_epsilon=3.0)
    trained = _train(site, run, "t1")
    assert trained["weights"]
    reply = _evaluate(site, run, "t1", _crafted(site, 8))
    assert reply.evaluation["scores"]["fidelity"]["overall"] is not None


@pytest.mark.parametrize("stage", ["statistics stage", "DP-SGD", "evaluation histograms"])
def test_a_site_refuses_noise_below_its_own_calibration(tmp_path, adult_slices, stage):
    """The coordinator may ask for MORE noise than the site calibrates, never less: the site, not
    the coordinator, decides which mechanism spends its budget."""
    site = _site(tmp_path, adult_slices)
    calibrated = dict(noise_multiplier=0.0, stats_noise_multiplier=0.0, target_epsilon=3.0,
                      num_rounds=1)
    low = {"statistics stage": {"stats_noise_multiplier": 1.0},
           "DP-SGD": {"noise_multiplier": 0.05},
           "evaluation histograms": {"evaluation_noise_multiplier": 0.5}}[stage]
    run = make_run(tmp_path, **{**calibrated, **low})
    with pytest.raises(client_app.Refusal, match=f"the {stage} asks for noise multiplier .* less "
                                                 "than this site allows"):
        _train(site, run, "t1")
        _evaluate(site, run, "t1", sample_bytes(site.load_rows().head(50), 50))
    refused = {"statistics stage": "t1/stats", "DP-SGD": "t1/round-1",
               "evaluation histograms": "t1/evaluate"}[stage]
    assert refused not in _charges(site)  # the refused stage charged nothing
    # More noise than the site's own calibration is fine: it spends less.
    generous = {k: v * 100 for k, v in low.items()}
    more = make_run(tmp_path, **{**calibrated, **generous})
    fresh = _site(tmp_path, adult_slices, name="b")
    _train(fresh, more, "t1")
    if stage == "evaluation histograms":
        _evaluate(fresh, more, "t1", sample_bytes(fresh.load_rows().head(50), 50))


def test_a_second_statistics_stage_of_one_training_is_replayed_or_refused(tmp_path, adult_slices):
    site = _site(tmp_path, adult_slices)
    run = make_run(tmp_path, num_rounds=1, noise_multiplier=0.0, stats_noise_multiplier=0.0,
                   target_epsilon=3.0)
    fp = site.schema.fingerprint()
    first = client_app.handle_stats(site, run.round_wire("t1", 0, fp))
    again = client_app.handle_stats(site, run.round_wire("t1", 0, fp))
    assert again.info["replayed"] is True and again.stats == first.stats
    other = make_run(tmp_path, num_rounds=1, noise_multiplier=0.0, stats_noise_multiplier=0.0,
                     target_epsilon=3.0, preprocessing_share=0.5)
    with pytest.raises(client_app.Refusal, match="already released for other inputs"):
        client_app.handle_stats(site, other.round_wire("t1", 0, fp))
    assert _charges(site) == ["t1/stats"]


def test_a_parquet_bomb_is_refused_from_its_footer(tmp_path, adult_slices):
    """A few hundred kilobytes that decode to 80 MB: refused before a page is decompressed."""
    site = _site(tmp_path, adult_slices)
    n = 200_000
    columns = {c: pa.array(["x" * 400] * n) for c in site.schema.names}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, use_dictionary=False, compression="zstd")
    assert len(buf.getvalue()) < 5_000_000
    run = make_run(tmp_path, num_rounds=1, noise_multiplier=0.0, stats_noise_multiplier=0.0,
                   target_epsilon=3.0)
    _train(site, run, "t1")
    with pytest.raises(client_app.Refusal, match="would decode to .* bytes"):
        _evaluate(site, run, "t1", buf.getvalue())
    assert "t1/evaluate" not in _charges(site)
    # A bad footer is a clear refusal, not a crash.
    with pytest.raises(client_app.Refusal, match="not a readable Parquet file"):
        _evaluate(site, run, "t1", b"PAR1 not really")


def test_the_site_wide_cap_holds_across_studies_and_calibration_fits_what_is_left(tmp_path,
                                                                                 adult_slices):
    """Two studies on the same rows, each with cap 3, under a site-wide cap of 3.5: the first
    training spends its 3; the second calibrates its noise to what is left site-wide instead of
    being refused (or overspending) at its first round. (Two trainings of epsilon 3 compose to
    about 4, not 6: the accountant composes, it does not add.)"""
    extra = ('\n[site_budget]\nepsilon = 3.5\ndelta = 1e-5\n'
             '\n[budgets.other]\nepsilon = 3.0\ndelta = 1e-5\n')
    site = _site(tmp_path, adult_slices, extra=extra)
    calibrated = dict(num_rounds=1, noise_multiplier=0.0, stats_noise_multiplier=0.0,
                      target_epsilon=3.0, evaluation_share=0.0)
    _train(site, make_run(tmp_path, **calibrated), "t1")
    _train(site, make_run(tmp_path, study="other", **calibrated), "t2")
    with Ledger(site.state_dir) as led:
        first, second = led.spent("adult").epsilon, led.spent("other").epsilon
        everything = led.spent_by_site().epsilon
    assert 2.9 < first <= 3.0
    assert second < 2.9                        # held back by what the site had left (2.997 without)
    assert 3.4 < everything <= 3.5             # the site-wide cap, spent and not passed


def _drafted_adult(tmp_path, **provenance) -> str:
    """The Adult schema as if a site had drafted it with DP (or exactly, without an epsilon)."""
    from synthpool.common.bundled import ADULT_SCHEMA
    from synthpool.common.schema import Provenance, Schema

    path = tmp_path / "drafted.yaml"
    Schema.load(ADULT_SCHEMA).model_copy(
        update={"provenance": [Provenance(**provenance)]}).save(path)
    return f'schema = "{path}"'


@pytest.mark.parametrize("drafted_at", ["a", None])
def test_a_dp_schema_draft_is_charged_once_at_the_site_whose_rows_it_read(tmp_path, adult_slices,
                                                                       drafted_at):
    """The federation charges the draft too: the drafting site (every site, when the draft
    names none), once per draft however many trainings and retries follow."""
    schema = _drafted_adult(tmp_path, mechanism="stability-histogram", epsilon=0.4, delta=1e-7,
                            site=drafted_at, draft_id="schema-draft/d1")
    a, b = (_site(tmp_path, adult_slices, name, extra=schema) for name in ("a", "b"))
    run = make_run(tmp_path, num_rounds=1)
    for site in (a, b):
        for tid in ("t1", "t1", "t2"):  # a retry, then a second training
            client_app.handle_stats(site, run.round_wire(tid, 0, site.schema.fingerprint()))
    draft = {"name": "schema: stability-histogram", "epsilon": 0.4, "delta": 1e-7}
    for site, charged in ((a, True), (b, drafted_at is None)):
        report = client_app.ledger_report(site, _cfg(run))
        assert report["pure_spends"] == ([draft] if charged else []), site.name
        assert ("schema-draft/d1" in report["jobs"]) is charged
        # An independent accountant composes the draft with the Gaussian stages.
        assert recompute_epsilon(report) == pytest.approx(report["epsilon"], abs=1e-3)
    assert client_app.ledger_report(a, _cfg(run))["epsilon"] > 0.4


def test_an_exact_schema_draft_is_warned_about_at_every_training(tmp_path, adult_slices, caplog):
    site = _site(tmp_path, adult_slices, extra=_drafted_adult(
        tmp_path, mechanism="exact-draft", site="a"))
    run = make_run(tmp_path, num_rounds=1)
    with caplog.at_level("WARNING", logger="synthpool.agent"):
        client_app.handle_stats(site, run.round_wire("t1", 0, site.schema.fingerprint()))
    assert "exact draft read from a" in caplog.text and "disclosed real rows" in caplog.text
    assert client_app.ledger_report(site, _cfg(run))["pure_spends"] == []  # nothing DP to charge


def test_the_study_delta_reaches_the_site_and_a_bad_one_is_refused(tmp_path, adult_slices):
    """A study asking a smaller delta than a site's cap gets it: the site plans its noise for it
    and reports its epsilon at it. A delta outside (0, 1) is refused before anything is spent."""
    sigma = {}
    for label, delta in (("strict", DELTA / 100), ("loose", 0.0)):
        site = _site(tmp_path / label, adult_slices)
        run = make_run(tmp_path / label, num_rounds=1, noise_multiplier=0.0,
                       stats_noise_multiplier=0.0, target_epsilon=3.0,
                       target_delta=delta)
        _train(site, run, "t1")
        report = client_app.ledger_report(site, _cfg(run))
        assert report["delta"] == (delta or DELTA) and report["cap"]["delta"] == DELTA
        assert report["epsilon"] <= 3.0 + 1e-9
        sigma[label] = noise_plan.load_plan(site, _cfg(run))["noise_multiplier"]
    assert sigma["strict"] > 1.05 * sigma["loose"]  # the stronger guarantee costs noise

    bad = make_run(tmp_path, num_rounds=1).round_wire("t2", 0, "") | {"target-delta": 1.5}
    with pytest.raises(client_app.Refusal, match="target-delta must lie strictly between 0 and 1"):
        client_app.handle_stats(site, bad)
    assert "t2/stats" not in _charges(site)
    with pytest.raises(ValueError, match="target-delta"):
        make_run(tmp_path, target_delta=1.5)
