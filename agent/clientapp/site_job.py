"""What a site computes for a training: the statistics stage, then one DP-SGD job per round.

The ClientApp (agent/clientapp/app.py) owns everything around a job: parsing the coordinator's
request, the write-ahead ledger charge, replaying a retried job, the refusal reply. This module
owns the computation, with the engine in `common/` (the same pieces as the single-site pipeline,
common/synthesis.py:train_single_site, split at the points where the federation talks). The
noise of each job is the site's own plan (agent/clientapp/noise_plan.py: `plan_stats`, `plan_round`):

    run_stats(site, cfg, mechanism) -> TableStats
        `collect_stats` on the site's rows: noisy histograms on the schema's public grids
    reported_size(site, cfg) -> ReportedSize
        the size for FedAvg weights and the Poisson rate: the DP row total of the site's own
        released histograms (or a size the owner declared public)
    run_round(site, global_weights, cfg, plan, stats) -> (weights, metrics)
        the generator built from the schema and the MERGED statistics every site received, the
        global weights loaded, `fit_steps` for exactly `plan.dp.steps` steps

Why the site's size comes from its histograms: their total is already a charged Gaussian release,
so weighting FedAvg by it and deriving the sample rate from it costs nothing more. The separate
noised-size query of earlier versions is gone; a site that declares its size public
(`size = "declared"` in site.toml) uses that instead.

Privacy notes that hold for every family:
* The DP noise and the Poisson batches come from OS entropy (common/dp_training.py), never from
  the coordinator's seed, which only fixes the public initialisation and the sampling.
* The sample rate comes from the reported size (public or already DP), never the exact count.
* Metrics sent back are public or DP: the number of steps and the plan, never a loss on private
  rows, an exact count or a training time (they leave in clear, even under SecAgg+).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...common.digests import content_digest
from ...common.dp_training import DPSGDConfig
from ...common.privacy import GaussianMechanism, check_delta, check_epsilon
from ...common.stats import TableStats, collect_stats
from ...common.threads import usable_cores
from ...common.wire import TrainingSpec, as_wire, fields_from_wire
from ..site_state import ReportedSize, SiteState

log = logging.getLogger("synthpool.agent")


@dataclass(frozen=True, kw_only=True)
class RoundConfig(TrainingSpec):
    """The coordinator's request for one stage, as the site reads it: the study's TrainingSpec
    (common/wire.py; unknown keys ignored, missing keys take its defaults) and which stage of
    which training it is."""

    study: str
    training_id: str
    round: int                       # 0: the statistics stage
    schema_fingerprint: str = ""
    stats_digest: str = ""           # sha256 of the merged statistics sent with a round
    stage: str = ""                  # "evaluate" for the evaluation; else told by `round`
    synthetic_digest: str = ""       # evaluation: sha256 of the synthetic sample sent with it
    weight_cap: float = 0.0          # a round: the most a site's update may weigh (0: its size)

    @property
    def job_id(self) -> str:
        """The ledger job id: stable across coordinator restarts of the same training, different
        for a new training of the same study."""
        if self.stage == "evaluate":
            return f"{self.training_id}/evaluate"
        return self.stats_job_id if self.round == 0 else f"{self.training_id}/round-{self.round}"

    @property
    def stats_job_id(self) -> str:
        return f"{self.training_id}/stats"

    @classmethod
    def from_wire(cls, record: dict) -> "RoundConfig":
        missing = [k for k in ("study", "training-id", "round", "num-rounds") if k not in record]
        if missing:
            raise ValueError(f"request lacks {missing}")
        cfg = cls(**fields_from_wire(cls, record))
        if cfg.num_rounds < 1 or cfg.local_steps < 1 or not 0 <= cfg.round <= cfg.num_rounds:
            raise ValueError(f"round {cfg.round} of {cfg.num_rounds} with {cfg.local_steps} steps")
        if cfg.target_epsilon != 0:  # 0: no study target, the site's own cap
            check_epsilon(cfg.target_epsilon, "target-epsilon")
        if cfg.target_delta != 0:
            check_delta(cfg.target_delta, "target-delta")
        if not 0 < cfg.preprocessing_share < 1 or not 0 <= cfg.evaluation_share < 1:
            raise ValueError(f"preprocessing-share {cfg.preprocessing_share!r} must lie in "
                             f"(0, 1) and evaluation-share {cfg.evaluation_share!r} in [0, 1)")
        return cfg

    def to_wire(self) -> dict:
        return as_wire(self)


@dataclass(frozen=True)
class RoundPlan:
    """The DP-SGD job of one round (agent/clientapp/noise_plan.py:plan_round plans it)."""

    dp: DPSGDConfig
    mechanisms: list[GaussianMechanism]
    noise_source: str  # "coordinator" (fixed by the run) or "calibrated" (planned by the site)


def stats_digest(stats_json: str) -> str:
    return content_digest(stats_json)


# -- the statistics stage ------------------------------------------------------------------------

def charge_schema_draft(site: SiteState, cfg: RoundConfig) -> None:
    """A DP draft of the study schema read this site's rows (or does not say whose rows): its
    spend is charged here, once per draft, before the statistics stage plans its noise. An exact
    draft is no DP release at all: the site's owner is told at every training."""
    from ...common.synthesis import schema_drafts

    for job_id, spends in schema_drafts(site.schema, site.name).items():
        site.ledger.charge(cfg.study, job_id, spends,
                           label=f"the DP draft of study {cfg.study!r}'s schema",
                           meta={"schema": site.schema.fingerprint()})
    warning = site.schema.exact_draft_warning()
    if warning:
        log.warning("study %r: %s", cfg.study, warning)


def run_stats(site: SiteState, cfg: RoundConfig, mechanism: GaussianMechanism) -> TableStats:
    # Noise from OS entropy (unseeded): the coordinator's seed must never reach a DP mechanism.
    stats = collect_stats(site.schema, site.load_rows(), mechanism.noise_multiplier,
                          np.random.default_rng())
    if stats.mechanisms != [mechanism]:  # what ran must be exactly what the ledger charged
        raise RuntimeError(f"statistics ran {stats.mechanisms}, the ledger charged {mechanism}")
    return stats


def own_stats(site: SiteState, cfg: RoundConfig) -> TableStats | None:
    """This site's released histograms of the training (from its release cache)."""
    release = site.load_release(cfg.study, cfg.stats_job_id)
    if release is None or "stats" not in release.payload:
        return None
    return TableStats.from_dict(release.payload["stats"])


def reported_size(site: SiteState, stats: TableStats) -> ReportedSize:
    """FedAvg weight and sample-rate base: the DP total of this site's own histograms, or the
    size its owner declared public."""
    if site.config.site.size == "declared":
        return ReportedSize(float(site.config.site.declared_rows), "declared")
    return ReportedSize(round(stats.noisy_rows(), 3), "estimated")


# -- one round --------------------------------------------------------------------------------------

def torch_threads(site: SiteState) -> int:
    """The site's thread setting, else every core this process may run on."""
    wanted = site.config.site.torch_threads
    return wanted or usable_cores()


def run_round(site: SiteState, global_weights: list[np.ndarray], cfg: RoundConfig,
              plan: RoundPlan, stats: TableStats) -> tuple[list[np.ndarray], dict]:
    """`plan.dp.steps` DP-SGD steps of the generator from `global_weights` on this site's rows,
    encoded with the transform every site builds from the same merged statistics."""
    import torch

    from ...common.generators.base import resolve_device
    from ...common.pipeline import Synthesizer

    torch.set_num_threads(torch_threads(site))
    synthesizer = Synthesizer(site.schema, stats, cfg.family, cfg.hyperparameters,
                              max_bins=cfg.max_bins, seed=cfg.seed, device=resolve_device("auto"))
    # The encoding depends on the rows and the merged statistics only: cached per training.
    tokens = site.cached_array(
        f"tokens-{cfg.stats_digest.removeprefix('sha256:')[:16]}",
        lambda: synthesizer.transformer.tokens(site.load_rows()))
    site.forget_rows()
    if global_weights:
        synthesizer.set_weights(global_weights)
    train = synthesizer.fit(synthesizer.transformer.rows(tokens), plan.dp,
                            proximal_mu=cfg.proximal_mu)
    if train.steps != plan.dp.steps:  # the ledger was charged for plan.dp.steps, up front
        raise RuntimeError(f"took {train.steps} DP-SGD steps, {plan.dp.steps} were charged")
    # No timing: how long the steps took depends on the sizes of the Poisson batches (the
    # exact row count and the batch secrets), and this dict leaves the site in clear. The
    # site's own log (which stays at the site) has it.
    log.info("study %r, %s: %d DP-SGD steps in %.1f s", cfg.study, cfg.job_id, train.steps,
             train.seconds)
    metrics = {"steps": train.steps, "noise-multiplier": plan.dp.noise_multiplier,
               "sample-rate": plan.dp.sample_rate}
    return synthesizer.get_weights(), metrics

