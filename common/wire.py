"""What travels between the coordinator and a site with every Flower message, defined once.

The agent and the coordinator never import each other (a site installs no coordinator code and
the other way round); both import this module:

* message types and our error codes;
* `TrainingSpec`: the study's DP plan, model and evaluation settings. The coordinator's run
  config (coordinator/serverapp/run_config.py:RunConfig) and the site's reading of a request
  (agent/clientapp/site_job.py:RoundConfig) both extend it, so a setting added here exists on both sides;
* `to_wire` / `fields_from_wire`: dashed keys on the wire (`local-steps`), typed fields in code;
* the messages: record names, `Request` and `Reply` with their encodings, and the SecAgg+ round's
  encodings in Flower's legacy FitIns/FitRes (the only format its SecAgg+ speaks).

A site treats every value here as a request: what limits privacy (its caps, its data, the
minimum noise) is decided in its own site.toml and the ledger, never by these fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .booleans import UNSPELLED_TRUE
from .generators import registry
from .generators.registry import DEFAULT_FAMILY
from .planning import TrainingPlan

STATS_MESSAGE = "query.stats"        # statistics stage: noisy histograms of the site's rows
TRAIN_MESSAGE = "train"              # one round of DP-SGD
EVALUATE_MESSAGE = "query.evaluate"  # score a synthetic sample against the site's rows

# A secure-aggregation round (Flower's SecAgg+, legacy FitIns format) carries the merged
# statistics, and the layout of its packed weights, under these keys of its FitIns config
# instead of records of their own.
SECAGG_STATS_KEY = "merged-stats-json"
SECAGG_LAYOUT_KEY = "weights-layout-json"
# The record Flower's SecAgg+ messages carry their protocol configs in
# (flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS).
SECAGG_CONFIGS = "secaggplus_configs"
SECAGG_SETUP = "setup"  # its first stage (flwr.common.secure_aggregation...Stage.SETUP)

# Error codes of a site's replies (Flower's own codes are 0-8, flwr/common/constant.py).
REFUSED = 1001
SITE_FAILED = 1002

_CASTS = {"int": int, "float": float, "str": str,
          "bool": lambda v: v if isinstance(v, bool) else str(v).strip().lower() in UNSPELLED_TRUE}


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    family: str = DEFAULT_FAMILY
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
    target_delta: float = 0.0            # the study's delta; a site uses min(target, own cap's)
    # Evaluation: the share of epsilon each site reserves for the DP histograms it sends for the
    # shared report (0: none leave the site), or a fixed noise multiplier for them.
    evaluation_share: float = 0.05
    evaluation_noise_multiplier: float = 0.0
    # The generator: a family (common/generators/registry.py) and its own hyperparameters, as
    # the JSON of a mapping the family validates ("" = its defaults). A site builds it only if
    # the family is installed there. `learning_rate` > 0 overrides the family's: FedAvg averages
    # displacements that are partly DP noise, which shrinks the pooled step, so a federation
    # wants a larger one (CVAE, Adult, 3 iid sites, eps 3, 3 x 160 steps: GB AUC 0.867 at 2e-3,
    # 0.889 at 5e-3).
    model: str = ""
    learning_rate: float = 0.0
    proximal_mu: float = 0.0
    seed: int = 0

    @property
    def plan(self) -> TrainingPlan:
        return TrainingPlan(steps=self.num_rounds * self.local_steps, sample_rate=self.sample_rate,
                            max_batch=self.max_batch, max_grad_norm=self.max_grad_norm,
                            preprocessing_share=self.preprocessing_share, max_bins=self.max_bins)

    @property
    def hyperparameters(self):
        """The family's validated hyperparameters (raises ValueError naming the bad field)."""
        return registry.hyperparameters(self.family, self.model, lr=self.learning_rate)

    @property
    def max_update(self) -> float:
        """The most one round can move any weight, as the family's optimizer bounds it."""
        return registry.family(self.family).max_update(self.hyperparameters, self.local_steps)

    def spec_wire(self) -> dict:
        """The TrainingSpec part of this object, with wire keys."""
        return to_wire({f.name: getattr(self, f.name) for f in fields(TrainingSpec)})


def model_setting(values: dict) -> str:
    """A family's hyperparameters as the `model` setting of a run config and the wire."""
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"))


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


# -- the messages ---------------------------------------------------------------------------------
# Every message is a Flower RecordDict; these are the names of its records. A request carries the
# stage's settings (CONFIG, the wire form of a TrainingSpec extension) and, by stage, the global
# weights (ARRAYS), the merged statistics (STATS, as JSON) or the synthetic sample to score
# (SYNTHETIC, as Parquet). A reply carries the site's weights (ARRAYS), its public or DP metrics
# (METRICS), who it is and how it answered (SITE), its ledger report (LEDGER) and, by stage, its
# noisy histograms (STATS) or evaluation (EVALUATION), JSON-encoded.
ARRAYS, CONFIG, STATS, SYNTHETIC = "arrays", "config", "stats", "synthetic"
METRICS, SITE, LEDGER, EVALUATION = "metrics", "site", "ledger", "evaluation"
_JSON, _PARQUET = "json", "parquet"
_FITINS_CONFIG = "fitins.config"  # how Flower's legacy FitIns is stored in a RecordDict


def _json_record(value) -> "ConfigRecord":
    from flwr.app import ConfigRecord

    return ConfigRecord({_JSON: value if isinstance(value, str) else json.dumps(value)})


def _read_json(content, name: str):
    record = content.config_records.get(name)
    if record is None or _JSON not in record:
        return None
    return json.loads(str(record[_JSON]))


_LAYOUT = "layout"


def _weights_records(weights: list) -> dict:
    """ARRAYS, and LAYOUT when there are weights: what `_read_arrays` reads back."""
    records = {ARRAYS: _arrays_record(weights)}
    if weights:
        records[_LAYOUT] = _layout(weights)
    return records


def _arrays_record(weights: list):
    """The weights as ONE array plus their layout: Flower stores and moves every array of a
    record as its own object, one HTTP request each way, so a model of 50 tensors cost about 10
    s per message on a loaded 2-core machine; one flat array costs one request."""
    from flwr.app import Array, ArrayRecord

    if not weights:
        return ArrayRecord([])
    return ArrayRecord({"packed": Array(_pack(weights))})


def _pack(weights: list):
    import numpy as np

    arrays = [np.asarray(w) for w in weights]
    dtype = np.result_type(*arrays)
    return np.concatenate([a.astype(dtype, copy=False).ravel() for a in arrays])


def _layout_of(weights: list) -> list:
    import numpy as np

    return [[list(np.shape(w)), np.asarray(w).dtype.str] for w in weights]


def _layout(weights: list) -> "ConfigRecord":
    return _json_record(_layout_of(weights))


def _read_arrays(content) -> list:
    """The weights of `_arrays_record`; ValueError if the layout does not fit the array."""
    record = content.array_records.get(ARRAYS)
    if record is None or not len(record):
        return []
    layout = _read_json(content, _LAYOUT)
    if "packed" not in record or not isinstance(layout, list):
        raise ValueError("the weights carry no layout")
    return _unpack(record["packed"].numpy(), layout)


def _unpack(flat, layout: list, keep_dtype: bool = False) -> list:
    """`flat` cut into the shapes (and dtypes, unless `keep_dtype`) of `layout`; ValueError if
    it does not fit."""
    import numpy as np

    try:
        shapes = [tuple(int(d) for d in shape) for shape, _ in layout]
        dtypes = [np.dtype(dtype) for _, dtype in layout]
    except (TypeError, ValueError):
        raise ValueError("unreadable weights layout") from None
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if flat.ndim != 1 or sum(sizes) != flat.size or any(d < 0 for s in shapes for d in s):
        raise ValueError(f"weights of {flat.size} values do not fit their layout {shapes}")
    out, at = [], 0
    for shape, dtype, n in zip(shapes, dtypes, sizes):
        part = flat[at:at + n].reshape(shape)
        out.append(part if keep_dtype else part.astype(dtype, copy=False))
        at += n
    return out


def unpack_like(packed: list, weights: list) -> list:
    """A SecAgg+ aggregate (one flat array, as `secure_reply_records` packs an update) in the
    shapes of `weights`, its own dtype kept; ValueError if it does not fit them."""
    if len(packed) != 1:
        raise ValueError(f"the aggregate holds {len(packed)} arrays, not one packed vector")
    return _unpack(packed[0], _layout_of(weights), keep_dtype=True)


@dataclass
class Request:
    """A stage's request, coordinator -> site."""

    config: dict
    weights: list = field(default_factory=list)
    stats_json: str | None = None
    synthetic: bytes | None = None

    def records(self):
        from flwr.app import ConfigRecord, RecordDict

        records = {**_weights_records(self.weights), CONFIG: ConfigRecord(dict(self.config))}
        if self.stats_json is not None:
            records[STATS] = _json_record(self.stats_json)
        if self.synthetic is not None:
            records[SYNTHETIC] = ConfigRecord({_PARQUET: self.synthetic})
        return RecordDict(records)

    @classmethod
    def from_content(cls, content) -> "Request":
        """Raises KeyError / ValueError for a request that lacks its settings."""
        if CONFIG not in content.config_records:
            raise KeyError("the request carries no settings")
        stats = content.config_records.get(STATS)
        synthetic = content.config_records.get(SYNTHETIC)
        return cls(dict(content.config_records[CONFIG]), _read_arrays(content),
                   str(stats[_JSON]) if stats is not None and _JSON in stats else None,
                   bytes(synthetic[_PARQUET]) if synthetic is not None and _PARQUET in synthetic
                   else None)


@dataclass
class Reply:
    """A site's answer to a stage, site -> coordinator (a refusal is an error reply instead)."""

    weights: list
    metrics: dict
    info: dict = field(default_factory=dict)   # SITE: "site" (its name), "replayed", sources
    ledger: dict = field(default_factory=dict)
    stats: dict | None = None       # the statistics stage: TableStats.to_dict()
    evaluation: dict | None = None  # the evaluation stage: scores and DP histograms

    def records(self):
        from flwr.app import ConfigRecord, MetricRecord, RecordDict

        records = {
            **_weights_records(self.weights),
            METRICS: MetricRecord({k: v for k, v in self.metrics.items()
                                   if isinstance(v, (int, float))}),
            SITE: ConfigRecord(self.info),
            LEDGER: _json_record(self.ledger),
        }
        for name in (STATS, EVALUATION):
            if getattr(self, name) is not None:
                records[name] = _json_record(getattr(self, name))
        return RecordDict(records)

    @classmethod
    def from_content(cls, content) -> "Reply":
        """Raises ValueError naming the record that is not readable."""
        out = cls(_read_arrays(content), dict(content.metric_records.get(METRICS, {})),
                  dict(content.config_records.get(SITE, {})))
        for name in (LEDGER, STATS, EVALUATION):
            try:
                value = _read_json(content, name)
            except ValueError:
                raise ValueError(f"unreadable {name} record") from None
            if value is not None:
                setattr(out, name, value)
        return out


# -- SecAgg+ rounds: Flower's legacy FitIns / FitRes, which its SecAgg+ workflow and mod speak ---

def is_secure_request(content) -> bool:
    return _FITINS_CONFIG in content.config_records


def secure_stage(content) -> str:
    """The SecAgg+ stage a message belongs to ('' for a message outside the protocol)."""
    return str(content.config_records.get(SECAGG_CONFIGS, {}).get("stage", ""))


def add_round_request(content, fitins) -> None:
    """The round's request (`secure_fitins`) put beside SecAgg+'s setup configs, so a site can
    train while the key stages go on (agent/clientapp/after_reply.py); Flower's mod reads only
    its configs in that stage, and the masking stage carries the same request again."""
    from flwr.compat.common import recorddict_compat as compat

    for key, record in compat.fitins_to_recorddict(fitins, keep_input=True).items():
        content[key] = record


def secure_fitins(weights: list, config: dict, stats_json: str):
    """The FitIns of a SecAgg+ round: the weights packed into one array as in a plain round,
    their layout and the merged statistics in its config."""
    from flwr.common import FitIns, ndarrays_to_parameters

    return FitIns(ndarrays_to_parameters([_pack(weights)]),
                  {**config, SECAGG_STATS_KEY: stats_json,
                   SECAGG_LAYOUT_KEY: json.dumps(_layout_of(weights))})


def read_secure_request(content) -> Request:
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config = dict(fitins.config)
    stats_json = config.pop(SECAGG_STATS_KEY, None)
    if not isinstance(stats_json, str):
        raise ValueError("the secure round carries no merged statistics")
    try:
        layout = json.loads(str(config.pop(SECAGG_LAYOUT_KEY)))
    except (KeyError, ValueError):
        raise ValueError("the secure round's weights carry no layout") from None
    packed = parameters_to_ndarrays(fitins.parameters)
    if len(packed) != 1 or not isinstance(layout, list):
        raise ValueError("the secure round's weights are not one packed array")
    return Request(config, _unpack(packed[0], layout), stats_json)


def secure_reply_records(update: list, reply: Reply):
    """The reply Flower's mod masks: FitRes with the update (a displacement) weighted by the
    site's size; metrics, site info and ledger ride in its metrics (the mod keeps no config
    records, and the coordinator's workflow hands on only the FitRes)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    carried = {k: v for k, v in {**reply.metrics, **reply.info}.items()
               if isinstance(v, (bool, int, float, str))}
    carried[LEDGER] = json.dumps(reply.ledger)
    # Packed into one array, as the request was: one object to move instead of one per tensor.
    fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([_pack(update)]),
                    int(round(reply.metrics["num-examples"])), carried)
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def read_secure_reply(fitres) -> Reply:
    """A site's unmasked FitRes metadata (its update is only ever seen inside the sum)."""
    metrics = dict(fitres.metrics)
    info = {"site": str(metrics.pop("site", "")),
            "replayed": bool(metrics.pop("replayed", False)),
            "trained-ahead": bool(metrics.pop("trained-ahead", False))}
    ledger = json.loads(str(metrics.pop(LEDGER, "{}")))
    numbers = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Reply([], numbers, info, ledger)
