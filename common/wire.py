"""What travels between the coordinator and a site with every Flower message, defined once.

The agent and the coordinator never import each other (a site installs no coordinator code and
the other way round); both import this module:

* message types and our error codes;
* `TrainingSpec`: the study's DP plan, model and evaluation settings. The coordinator's run
  config (coordinator/server_app.py:StudyRun) and the site's reading of a request
  (agent/site_job.py:RoundConfig) both extend it, so a setting added here exists on both sides;
* `to_wire` / `fields_from_wire`: dashed keys on the wire (`local-steps`), typed fields in code.

A site treats every value here as a request: what limits privacy (its caps, its data, the
minimum noise) is decided in its own site.toml and the ledger, never by these fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .planning import TrainingPlan

STATS_MESSAGE = "query.stats"        # statistics stage: noisy histograms of the site's rows
TRAIN_MESSAGE = "train"              # one round of DP-SGD
EVALUATE_MESSAGE = "query.evaluate"  # score a synthetic sample against the site's rows

# A secure-aggregation round (Flower's SecAgg+, legacy FitIns format) carries the merged
# statistics under this key of its FitIns config instead of a record of their own.
SECAGG_STATS_KEY = "merged-stats-json"
# The record Flower's SecAgg+ messages carry their protocol configs in
# (flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS).
SECAGG_CONFIGS = "secaggplus_configs"

# Error codes of a site's replies (Flower's own codes are 0-8, flwr/common/constant.py).
REFUSED = 1001
SITE_FAILED = 1002

_CASTS = {"int": int, "float": float, "str": str,
          "bool": lambda v: v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")}


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    family: str = "cvae"
    # The DP plan (common/planning.py:TrainingPlan); a site spends its budget over
    # num_rounds x local_steps DP-SGD steps, composed with its statistics stage and the
    # evaluation histograms it reserves budget for.
    num_rounds: int = 3
    local_steps: int = 160
    sample_rate: float = 0.125
    max_batch: int = 8192
    max_grad_norm: float = 1.0
    preprocessing_share: float = 0.1
    max_bins: int = 20
    noise_multiplier: float = 0.0        # > 0: fixed; 0: each site calibrates for target_epsilon
    stats_noise_multiplier: float = 0.0  # > 0: fixed; 0: the plan's preprocessing share
    target_epsilon: float = 0.0          # the study's target; a site uses min(target, own cap)
    # Evaluation: the share of epsilon each site reserves for the DP histograms it sends for the
    # shared report (0: none leave the site), or a fixed noise multiplier for them.
    evaluation_share: float = 0.05
    evaluation_noise_multiplier: float = 0.0
    # The generator (common/generators/). The learning rate is higher than the single-site
    # CVAE's 2e-3: FedAvg averages displacements that are partly DP noise, which shrinks the
    # pooled step. Adult, 3 iid sites, eps 3, 3 x 160 steps, one run each: GB AUC / column shapes
    # 0.867 / 0.983 at 2e-3, 0.879 / 0.981 at 3e-3, 0.889 / 0.968 at 5e-3 (8e-3: AUC 0.888);
    # one site with all rows: AUC 0.893.
    learning_rate: float = 5e-3
    hidden: int = 256
    depth: int = 2
    latent: int = 32
    beta: float = 1.0
    proximal_mu: float = 0.0
    seed: int = 0

    @property
    def plan(self) -> TrainingPlan:
        return TrainingPlan(steps=self.num_rounds * self.local_steps, sample_rate=self.sample_rate,
                            max_batch=self.max_batch, max_grad_norm=self.max_grad_norm,
                            preprocessing_share=self.preprocessing_share, max_bins=self.max_bins)

    @property
    def hyperparameters(self) -> dict:
        return {"hidden": self.hidden, "depth": self.depth, "latent": self.latent,
                "beta": self.beta, "lr": self.learning_rate}

    @property
    def max_update(self) -> float:
        """The most one round can move any weight (common/update_bound.py)."""
        from .update_bound import max_displacement

        return max_displacement(self.learning_rate, self.local_steps)

    def spec_wire(self) -> dict:
        """The TrainingSpec part of this object, with wire keys."""
        return to_wire({f.name: getattr(self, f.name) for f in fields(TrainingSpec)})


def to_wire(values: dict) -> dict:
    return {k.replace("_", "-"): v for k, v in values.items()}


def fields_from_wire(cls, record: dict) -> dict:
    """Keyword arguments of dataclass `cls` from a wire/run-config record: dashed keys, unknown
    keys ignored, values cast to the field's type (a ConfigRecord may carry an int where a float
    is declared, a run config a string where a bool is)."""
    known = {f.name: f for f in fields(cls)}
    out = {}
    for key, value in record.items():
        name = key.replace("-", "_")
        if name in known:
            out[name] = _CASTS[known[name].type](value)
    return out


def as_wire(obj) -> dict:
    return to_wire(asdict(obj))
