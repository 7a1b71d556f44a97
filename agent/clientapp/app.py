"""The site's Flower ClientApp (Message API): the statistics stage and one round per message.

Flower runs this module in a fresh `flwr-clientapp` process for EVERY message, so it holds no
state: it finds the site through `context.node_config["site-config"]` (set by the site's own
agent when it starts its SuperNode) and reads everything else from the site's state dir
(agent/site_state.py). Sites run the synthpool installed at the site; the FAB the coordinator
submits only names this module and carries run config.

Three message types, each a function free of Flower types so it can be tested directly:

* `query.stats` -> `handle_stats`: the site's noisy histograms on the schema's public grids
  (common/stats.py), ONE Gaussian mechanism, charged before it runs. The coordinator merges
  every site's histograms into the statistics that fix the shared transform.
* `train` -> `handle_train`: one round of DP-SGD on the generator built from the schema and the
  merged statistics (sent with every round, checked against their digest), starting from the
  global weights.
* `query.evaluate` -> `handle_evaluate`: score the release's synthetic sample against the site's
  rows; aggregates and DP histograms (charged) back, the full report kept at the site
  (agent/clientapp/site_evaluation.py).

All follow the same steps:
1. read the request (RoundConfig); check the study schema fingerprint and model family;
2. a job the ledger already holds with a cached release for the same inputs: re-send those bytes
   (a job retried after a coordinator crash costs nothing and is never charged twice);
3. otherwise: plan the job, charge its mechanisms write-ahead (refusal if over the cap), run it,
   save the release, and only then reply.

Every reply carries the site's ledger for the study (all mechanisms, the composed epsilon): the
coordinator copies it into the release manifest, so per-site epsilons are the sites' own numbers.

A refusal is an error reply (code REFUSED) whose reason names the site and the ledger's numbers;
the coordinator records it in the round's event log. An unexpected failure replies with the
exception TYPE only: an exception message may quote a data value, and error text leaves the site.
The traceback stays in the site's own log.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from functools import partial
from typing import Callable

import numpy as np

from ...common.digests import content_digest
from ...common.generators import registry
from ...common.privacy import BudgetExceeded
from ...common.stats import TableStats
from ...common.wire import (
    EVALUATE_MESSAGE, REFUSED, SECAGG_SETUP, SITE_FAILED, STATS_MESSAGE, Reply, Request,
    is_secure_request, read_secure_request, secure_reply_records, secure_stage,
)
from . import after_reply, noise_plan, site_job
from ..config import ConfigError
from ..ledger import LedgerConflict, LedgerError
from .secure_aggregation import secure_aggregation_mod, update_of
from ..site_state import Release, SiteState, input_hash


log = logging.getLogger("synthpool.agent")


class Refusal(Exception):
    """The site declines the job; the message is sent to the coordinator verbatim."""


# What a job may fail with that is a decision, not a fault: each message is one sentence for the
# coordinator (BudgetExceeded covers NoBudget, no cap for this study at this site).
REFUSED_BECAUSE = (BudgetExceeded, LedgerConflict, LedgerError, ConfigError,
                   noise_plan.NoiseBelowCalibration)


def ledger_report(site: SiteState, cfg: site_job.RoundConfig) -> dict:
    """What this site's ledger says about the study: every mechanism charged (all trainings), the
    composed epsilon at the study's delta (the cap's, if the study asks for none or a larger
    one), and the accountant that composed it: enough for anyone to recompute the number."""
    from dataclasses import asdict

    from ...common.privacy import accountant_fields

    ledger, study = site.ledger, cfg.study
    cap = ledger.cap(study)
    spend = ledger.spent(study, noise_plan.budget(site, cfg)[1])
    return {"site": site.name, "study": study, "epsilon": spend.epsilon,
            "delta": spend.delta, "cap": {"epsilon": cap.epsilon, "delta": cap.delta},
            **accountant_fields(),
            "mechanisms": [m.to_dict() for m in spend.mechanisms],
            "pure_spends": [asdict(p) for p in spend.pure],
            "jobs": [c.job_id for c in ledger.charges(study)]}


def _parse(site: SiteState, wire: dict, stage: str) -> site_job.RoundConfig:
    try:
        cfg = site_job.RoundConfig.from_wire(wire)
    except (TypeError, ValueError) as e:
        raise Refusal(f"malformed {stage} request: {e}") from None
    if (stage == "evaluation") != (cfg.stage == "evaluate"):
        raise Refusal(f"a {stage} request must not carry stage {cfg.stage!r}")
    if stage != "evaluation" and (stage == "statistics") != (cfg.round == 0):
        raise Refusal(f"a {stage} request must not carry round {cfg.round}")
    label = _label(cfg)
    if cfg.schema_fingerprint and cfg.schema_fingerprint != site.schema.fingerprint():
        raise Refusal(f"{label}: the study schema {cfg.schema_fingerprint[:19]} is not the "
                      f"schema this site pinned ({site.schema.fingerprint()[:19]})")
    if cfg.family not in registry.names():
        raise Refusal(f"{label}: model family {cfg.family!r} is not installed at this site "
                      f"(it has {registry.names()})")
    try:
        cfg.hyperparameters  # noqa: B018  (validated by the family before anything is charged)
    except ValueError as e:
        raise Refusal(f"{label}: {e}") from None
    return cfg


def _label(cfg: site_job.RoundConfig) -> str:
    what = ("the evaluation" if cfg.stage == "evaluate" else
            "the statistics stage" if cfg.round == 0 else f"round {cfg.round}")
    return f"{what} of study {cfg.study!r}"


def _replay(site: SiteState, cfg: site_job.RoundConfig, ih: str) -> Release | None:
    """The cached release of a job already charged for the same inputs (a retry)."""
    charge = site.ledger.get_charge(cfg.study, cfg.job_id)
    if charge is None:
        return None
    cached = site.load_release(cfg.study, cfg.job_id)
    charged_for = cached.input_hash if cached is not None else charge.meta.get("input_hash", ih)
    if charged_for != ih:
        raise Refusal(f"{_label(cfg)}: job {cfg.job_id} was already released for other inputs; "
                      "a second, different release under one charge is refused")
    return cached  # None: charged, never released (the site died before saving it): run it, once


def handle_stats(site: SiteState, wire: dict) -> Reply:
    """The statistics stage: noisy histograms of this site's rows, charged once per training."""
    cfg = _parse(site, wire, "statistics")
    try:
        ih = input_hash([], cfg.to_wire())
        cached = _replay(site, cfg, ih)
        if cached is None:
            site_job.charge_schema_draft(site, cfg)
            mechanism = noise_plan.plan_stats(site, cfg)
            site.ledger.charge(cfg.study, cfg.job_id, [mechanism], label=_label(cfg),
                               meta={"input_hash": ih, "training_id": cfg.training_id})
            stats = site_job.run_stats(site, cfg, mechanism)
            size = site_job.reported_size(site, stats)
            cached = Release([], {"num-examples": size.rows}, ih, {
                "stats": stats.to_dict(), "size-source": size.source})
            site.save_release(cfg.study, cfg.job_id, cached)
            replayed = False
        else:
            replayed = True
        return Reply([], cached.metrics,
                          {"site": site.name, "replayed": replayed,
                           "size-source": cached.payload["size-source"]},
                          ledger_report(site, cfg), cached.payload["stats"])
    except REFUSED_BECAUSE as e:
        raise Refusal(str(e)) from None


def handle_train(site: SiteState, global_weights: list[np.ndarray], wire: dict,
                 stats_json: str, *, secure: bool = False, ahead: bool = False) -> Reply:
    """One round: DP-SGD from `global_weights` with the transform of the merged statistics.
    `secure`: the update will leave the site masked (SecAgg+); `ahead`: run during SecAgg+'s
    key stages, for the masking stage to take from the release cache (after_reply.py)."""
    cfg = _parse(site, wire, "round")
    label = _label(cfg)
    if not secure and site.config.trust.require_secure_aggregation:
        raise Refusal(f"{label}: this site trains only in securely aggregated rounds "
                      "([trust] require_secure_aggregation); run the study with "
                      "secure-aggregation = true")
    # The lock: a second task for this job (the masking stage while the job trains ahead, a
    # retry) waits for the first, then replays its release instead of training twice.
    with site.job_lock(cfg.study, cfg.job_id):
        return _train_once(site, global_weights, cfg, stats_json, ahead)


def _train_once(site: SiteState, global_weights: list[np.ndarray], cfg: site_job.RoundConfig,
                stats_json: str, ahead: bool) -> Reply:
    label = _label(cfg)
    try:
        if site_job.stats_digest(stats_json) != cfg.stats_digest:
            raise Refusal(f"{label}: the statistics sent do not match their digest")
        merged = TableStats.from_dict(json.loads(stats_json))
        if merged.schema_fingerprint != site.schema.fingerprint():
            raise Refusal(f"{label}: the merged statistics were computed under another schema")
        ih = input_hash(global_weights, cfg.to_wire())
        cached = _replay(site, cfg, ih)
        if cached is not None:
            return Reply(cached.weights, cached.metrics,
                         {"site": site.name, "replayed": True,
                          **cached.payload.get("info", {})},
                         ledger_report(site, cfg))
        own = site_job.own_stats(site, cfg)
        if own is None:
            raise Refusal(f"{label}: this site released no statistics for training "
                          f"{cfg.training_id}, so it cannot take part in its rounds")
        started = time.monotonic()
        size = site_job.reported_size(site, own)
        plan = noise_plan.plan_round(site, cfg, size)
        site.ledger.charge(cfg.study, cfg.job_id, plan.mechanisms, label=label,
                           meta={"input_hash": ih, "training_id": cfg.training_id})
        charged = time.monotonic()
        weights, metrics = site_job.run_round(site, global_weights, cfg, plan, merged)
        # In the site's log only: a reply carries no timing (it depends on the private rows).
        log.info("%s: planned and charged in %.1f s, the job took %.1f s", label,
                 charged - started, time.monotonic() - charged)
        cap = site.ledger.cap(cfg.study)
        after = site.ledger.get_charge(cfg.study, cfg.job_id)
        # The weight this update carries; under SecAgg+ the site applies it itself, so it
        # applies the coordinator's cap on any one site's share too.
        weight = min(size.rows, cfg.weight_cap) if cfg.weight_cap > 0 else size.rows
        metrics = {**metrics, "num-examples": weight, "epsilon-spent": after.epsilon_after,
                   "epsilon-cap": cap.epsilon, "delta": cap.delta}
        info = {"size-source": size.source, "noise-source": plan.noise_source,
                "trained-ahead": ahead}
        site.save_release(cfg.study, cfg.job_id, Release(weights, metrics, ih, {"info": info}))
        return Reply(weights, metrics, {"site": site.name, "replayed": False, **info},
                     ledger_report(site, cfg))
    except REFUSED_BECAUSE as e:
        raise Refusal(str(e)) from None


def handle_evaluate(site: SiteState, wire: dict, sample: bytes) -> Reply:
    """Score the release's synthetic sample against this site's rows (agent/clientapp/site_evaluation.py):
    aggregates and charged DP histograms back, the full report kept here."""
    from .site_evaluation import BadSample, read_sample, run_evaluation

    cfg = _parse(site, wire, "evaluation")
    label = _label(cfg)
    try:
        if content_digest(sample) != cfg.synthetic_digest:
            raise Refusal(f"{label}: the synthetic sample does not match its digest")
        ih = input_hash([], cfg.to_wire())
        # One evaluation per training (its job id is the training's), and only of a training
        # this site trained to its last round: a made-up training id, or a second sample for
        # the same training, is not a fresh query of the site's rows.
        cached = _replay(site, cfg, ih)
        replayed = cached is not None
        if cached is None:
            final = f"{cfg.training_id}/round-{cfg.num_rounds}"
            if not site.has_release(cfg.study, final):
                raise Refusal(f"{label}: this site did not train round {cfg.num_rounds} of "
                              f"training {cfg.training_id}, so it has no release of it to score")
            synthetic = read_sample(site, sample)  # refused before anything is charged
            mechanism = noise_plan.plan_evaluation(site, cfg, noise_plan.load_plan(site, cfg))
            site.ledger.charge(cfg.study, cfg.job_id, [mechanism] if mechanism else [],
                               label=label, meta={"input_hash": ih, "training_id": cfg.training_id,
                                                  "synthetic_digest": cfg.synthetic_digest})
            payload = run_evaluation(site, cfg, synthetic, mechanism, ledger_report(site, cfg))
            cached = Release([], {}, ih, {"evaluation": payload})
            site.save_release(cfg.study, cfg.job_id, cached)
        return Reply([], {}, {"site": site.name, "replayed": replayed},
                          ledger_report(site, cfg), evaluation=cached.payload["evaluation"])
    except BadSample as e:
        raise Refusal(f"{label}: {e}") from None
    except REFUSED_BECAUSE as e:
        raise Refusal(str(e)) from None


# -- Flower wiring ---------------------------------------------------------------------------------

def site_from_context(context) -> SiteState:
    """Deployment: the site is named by the SuperNode's own `--node-config` (set by its agent)."""
    return SiteState.from_node_config(dict(context.node_config))


def make_app(resolve_site: Callable[[object], SiteState] = site_from_context):
    """The ClientApp; `resolve_site(context)` finds the site (the simulation maps its virtual
    nodes to site dirs instead, synthpool/commands/simulate.py)."""
    from flwr.app import Context, Error, Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def secure_work(site: SiteState, content, ahead: bool = False) -> Reply:
        """A SecAgg+ round: the same DP-SGD round, answered with the update (displacement from
        the global weights) that Flower's mod then weights, quantizes and masks."""
        try:
            req = read_secure_request(content)
        except (KeyError, ValueError) as e:
            raise Refusal(f"malformed secure round: {e}") from None
        out = handle_train(site, req.weights, req.config, req.stats_json, secure=True,
                           ahead=ahead)
        bound = site_job.RoundConfig.from_wire(req.config).max_update
        out.weights = update_of(req.weights, out.weights, bound)
        return out

    def request(content) -> Request:
        try:
            return Request.from_content(content)
        except (KeyError, ValueError) as e:
            raise Refusal(f"malformed request: {e}") from None

    def answer(msg: Message, context: Context, work, encode=Reply.records) -> Message:
        name = "?"
        try:
            site = resolve_site(context)
            name = site.name
            out = work(site, msg.content)
        except Refusal as e:
            log.warning("site %s refuses: %s", name, e)
            return Message(Error(code=REFUSED, reason=f"site {name} refuses: {e}"), reply_to=msg)
        except Exception as e:  # noqa: BLE001 - the reply must not carry the message text
            log.error("site %s failed:\n%s", name, traceback.format_exc())
            return Message(Error(code=SITE_FAILED,
                                 reason=f"site {name} failed with {type(e).__name__} "
                                        "(details in the site's log)"), reply_to=msg)
        return Message(encode(out), reply_to=msg)

    @app.query(STATS_MESSAGE.removeprefix("query."))
    def stats(msg: Message, context: Context) -> Message:
        return answer(msg, context, lambda site, content: handle_stats(
            site, request(content).config))

    @app.query(EVALUATE_MESSAGE.removeprefix("query."))
    def evaluate(msg: Message, context: Context) -> Message:
        def work(site: SiteState, content) -> Reply:
            req = request(content)
            if req.synthetic is None:
                raise Refusal("the evaluation request carries no synthetic sample")
            return handle_evaluate(site, req.config, req.synthetic)

        return answer(msg, context, work)

    def train_ahead(msg: Message, context: Context, call_next) -> Message:
        """SecAgg+'s setup message with the round's request beside it: answer the key stage,
        then train once the task has answered (after_reply.py), while the key stages go on.
        The masking stage takes the update from the release cache, or trains itself where
        nothing ran ahead (and refuses what this would have refused)."""
        if secure_stage(msg.content) == SECAGG_SETUP and is_secure_request(msg.content):
            after_reply.defer(partial(answer, msg, context, partial(secure_work, ahead=True)))
        return call_next(msg, context)

    @app.train(mods=[train_ahead, secure_aggregation_mod])
    def train(msg: Message, context: Context) -> Message:
        if is_secure_request(msg.content):
            return answer(msg, context, secure_work,
                          encode=lambda out: secure_reply_records(out.weights, out))

        def work(site: SiteState, content) -> Reply:
            req = request(content)
            if req.stats_json is None:
                raise Refusal("the round request carries no merged statistics")
            return handle_train(site, req.weights, req.config, req.stats_json)

        return answer(msg, context, work)

    return app


app = make_app()
