"""How much noise each of a site's releases gets: the site's own calibration, from its budget.

The site, not the coordinator, decides how its budget is spent. For every training it plans, from
min(study target, own cap) and the study's plan (common/planning.py):

    plan_stats(site, cfg) -> GaussianMechanism
        the noise of the statistics stage: the plan's preprocessing share of the budget
    plan_round(site, cfg, size) -> RoundPlan
        the DP-SGD job of one round, with the noise calibrated ONCE for the whole schedule and
        saved (`load_plan`), the evaluation histograms' share reserved in it
    plan_evaluation(site, cfg, planned) -> GaussianMechanism | None
        the evaluation histograms' noise: the one reserved when the training was calibrated

A coordinator may ask for more noise than the site's calibration (`own_noise`), never for less.
The ClientApp (agent/clientapp/app.py) charges each mechanism to the ledger before the job runs
(agent/clientapp/site_job.py, agent/clientapp/site_evaluation.py).
"""

from __future__ import annotations

import json
import logging

from ...common.atomic import atomic_write_text
from ...common.dp_training import DPSGDConfig
from ...common.histogram_release import EVALUATION_MECHANISM, STATS_MECHANISM
from ...common.planning import evaluation_noise, expected_batch, preprocessing_noise, sample_rate_for
from ...common.privacy import GaussianMechanism, calibrate_noise, delta_warning
from ..ledger import NoBudget
from .site_job import RoundConfig, RoundPlan
from ..site_state import ReportedSize, SiteState, safe_file_name

log = logging.getLogger("synthpool.agent")


def budget(site: SiteState, cfg: RoundConfig) -> tuple[float, float]:
    """(epsilon, delta) this site lets the study spend: min(study target, own cap), each. A
    smaller study delta is a stronger guarantee than the cap's, so the site plans for it."""
    cap = site.ledger.cap(cfg.study)
    if cap is None:
        raise NoBudget(f"no privacy budget configured for study {cfg.study!r} at this site")
    return (min(cfg.target_epsilon or cap.epsilon, cap.epsilon),
            min(cfg.target_delta or cap.delta, cap.delta))


class NoiseBelowCalibration(ValueError):
    """The coordinator asked for less noise than this site's own calibration: refused, since the
    site, not the coordinator, decides how its budget is spent."""


def own_noise(requested: float, own: float | None, what: str, cfg: RoundConfig,
              site: SiteState) -> float:
    """The noise to run: the site's own calibration `own`, or the coordinator's `requested`
    value when that is at least as much noise (it then spends less). None: no budget planned."""
    if not requested > 0:
        if own is None:
            raise NoiseBelowCalibration(f"study {cfg.study!r} plans no budget for the {what}")
        return float(own)
    if own is None or requested < own * (1 - 1e-9):
        epsilon, delta = budget(site, cfg)
        mine = ("no budget for it" if own is None
                else f"its own calibration, noise multiplier {own:.4g}")
        raise NoiseBelowCalibration(
            f"study {cfg.study!r}: the {what} asks for noise multiplier {requested:.4g}, less than this site allows "
            f"({mine}, from its budget epsilon={epsilon:g}, delta={delta:g} and the study's "
            "plan); a site never runs less noise than its own calibration")
    return float(requested)


# -- the statistics stage -------------------------------------------------------------------------

def plan_stats(site: SiteState, cfg: RoundConfig) -> GaussianMechanism:
    """The histograms' Gaussian mechanism: noise for the plan's preprocessing share of the budget
    (or more, if the coordinator asks for more), charged before `run_stats` touches a row."""
    epsilon, delta = budget(site, cfg)
    sigma = own_noise(cfg.stats_noise_multiplier, preprocessing_noise(cfg.plan, epsilon, delta),
                      "statistics stage", cfg, site)
    return GaussianMechanism(STATS_MECHANISM, sigma, 1.0, 1)


# -- one round --------------------------------------------------------------------------------------

def plan_path(site: SiteState, cfg: RoundConfig):
    return (site.state_dir / "plans" / safe_file_name(cfg.study)
            / f"{safe_file_name(cfg.training_id)}.json")


def load_plan(site: SiteState, cfg: RoundConfig) -> dict | None:
    """The plan this site calibrated for the training (None before its first round)."""
    path = plan_path(site, cfg)
    return json.loads(path.read_text()) if path.exists() else None


def plan_round(site: SiteState, cfg: RoundConfig, size: ReportedSize) -> RoundPlan:
    """The DP-SGD job of this round. The site calibrates the noise ONCE for the whole schedule
    (num_rounds x local_steps), composed with everything the ledger already holds for the study
    (the statistics stage included), against min(study target, own cap), and persists it so every
    round of the training uses the same sigma (docs/ARCHITECTURE.md: plan the noise up front;
    never one accountant per round). A coordinator-fixed `noise_multiplier` is honoured only if
    it is at least that. The evaluation histograms the study may ask for later are part of the
    schedule: their noise is fixed here and reserved."""
    saved = load_plan(site, cfg) or _calibrate(site, cfg, size)
    sigma = own_noise(cfg.noise_multiplier, saved["noise_multiplier"], "DP-SGD", cfg, site)
    source = "coordinator" if cfg.noise_multiplier > 0 else "calibrated"
    q = saved["sample_rate"]
    dp = DPSGDConfig(steps=cfg.local_steps, sample_rate=q, noise_multiplier=sigma,
                     max_grad_norm=cfg.max_grad_norm, expected_batch=expected_batch(q, size.rows))
    mech = GaussianMechanism(f"dp-sgd/{cfg.job_id}", sigma, q, cfg.local_steps)
    return RoundPlan(dp, [mech], source)


def _calibrate(site: SiteState, cfg: RoundConfig, size: ReportedSize) -> dict:
    plan = cfg.plan
    q = sample_rate_for(plan, size.rows)
    epsilon, delta = budget(site, cfg)
    prior = site.ledger.spent(cfg.study, delta)
    # Budget for the evaluation histograms is reserved now, so that training and the
    # evaluation of its release together spend the target.
    eval_sigma = evaluation_noise(cfg.evaluation_share, epsilon, delta)
    reserved = [GaussianMechanism(EVALUATION_MECHANISM, eval_sigma, 1.0, 1)] if eval_sigma else []

    def noise_within(cap_epsilon: float, spent) -> float:
        return calibrate_noise(cap_epsilon, spent.accountant_delta, q, plan.steps,
                               prior=[*spent.mechanisms, *reserved],
                               pure_epsilon=sum(p.epsilon for p in spent.pure))

    sigma = noise_within(epsilon, prior)
    site_cap = site.ledger.site_cap()
    if site_cap is not None:  # what every study has spent leaves less than this one's cap?
        sigma = max(sigma, noise_within(site_cap.epsilon, site.ledger.spent_by_site(site_cap.delta)))
    saved = {"noise_multiplier": sigma, "sample_rate": q, "target_epsilon": epsilon,
             "steps": plan.steps, "calibrated_at_round": cfg.round,
             **({"evaluation_noise_multiplier": eval_sigma} if eval_sigma else {})}
    atomic_write_text(plan_path(site, cfg), json.dumps(saved))
    warning = delta_warning(delta, size.rows)
    if warning:  # the site's own log: its owner chose the delta in site.toml
        log.warning("study %r: %s", cfg.study, warning)
    return saved


# -- the evaluation ---------------------------------------------------------------------------------

def plan_evaluation(site: SiteState, cfg: RoundConfig, planned: dict | None) -> GaussianMechanism | None:
    """The mechanism to charge: the one reserved when the training was calibrated (`planned`,
    the site's saved plan of the training), else one sized from the study settings; more noise
    if the coordinator asks for more, never less (`own_noise`)."""
    if planned and "evaluation_noise_multiplier" in planned:
        own = planned["evaluation_noise_multiplier"]
    else:
        own = evaluation_noise(cfg.evaluation_share, *budget(site, cfg))
    if own is None and not cfg.evaluation_noise_multiplier > 0:
        return None
    sigma = own_noise(cfg.evaluation_noise_multiplier, own, "evaluation histograms", cfg, site)
    return GaussianMechanism(EVALUATION_MECHANISM, sigma, 1.0, 1)
