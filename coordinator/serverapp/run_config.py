"""What the ServerApp reads from `flwr run`'s run config: one training of a study."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...common.bundled import DEFAULT_SCHEMA, schema_path
from ...common.budget import DEFAULT_POPULATION, POPULATIONS, check_delta, check_epsilon
from ...common.schema import Schema
from ...common.wire import TrainingSpec, fields_from_wire


@dataclass(frozen=True, kw_only=True)
class RunConfig(TrainingSpec):
    """The run config of a training (keys in the FAB's pyproject use dashes): the TrainingSpec
    every site receives (common/wire.py), plus what only the coordinator needs."""

    study: str
    checkpoint_dir: str
    schema: str = DEFAULT_SCHEMA
    min_sites: int = 2
    expected_sites: int = 0          # wait for this many nodes before the first stage (0: min_sites)
    node_wait_timeout: float = 120.0
    round_timeout: float = 300.0
    straggler_grace: float = 10.0    # once min_sites answered, wait this long for the rest
    poll_interval: float = 0.1
    # JSON file mapping SuperNode ids to site names, shared by the trainings of this coordinator
    # so a site that drops before it ever answered a training is still named in the event log.
    # Default: nodes.json beside the checkpoint dir.
    node_registry: str = ""
    # The release: where (default: release/ in the checkpoint dir), how many rows (0: the merged
    # statistics' DP row total), and whether a person's rows can be at several sites ("overlapping":
    # the release guarantee is the SUM of the sites' epsilons) or at one only ("disjoint": MAX).
    release_dir: str = ""
    release_rows: int = 0
    population: str = DEFAULT_POPULATION
    # Federated evaluation of the release (coordinator/serverapp/evaluation_stage.py): on/off, and how many
    # of the release's rows each site scores.
    evaluate: bool = True
    evaluation_rows: int = 10000
    # The study's SuperNodes, comma-separated ids ("": every node connected to the SuperLink).
    # A SuperLink serves every study of a coordinator; a node outside the list is never asked.
    node_ids: str = ""
    # The coordinator's enrollment records: JSON {node id: site name} of the study's approved
    # SuperNodes (coordinator/admin/flower_runner.py). When given, a node is the site it was enrolled
    # as, only these nodes are asked, and a reply that names another site is invalid. Without
    # it (a local federation of one's own sites) a node is the site it first answered as.
    node_sites: str = ""
    # Secure aggregation (Flower's SecAgg+, coordinator/serverapp/secure_aggregation.py): the coordinator
    # sees only the weighted mean of the sites' updates. The threshold is the share of a site's
    # key shares needed to unmask (and so how many sites may drop out of a round); the clipping
    # range bounds each coordinate of a site's weighted update before quantization; by default the
    # most a round can move a weight, so quantization never clips an honest update.
    secure_aggregation: bool = False
    secagg_threshold: float = 0.6
    secagg_clipping_range: float = 0.0   # 0: the update bound (TrainingSpec.max_update)
    secagg_train_ahead: bool = True      # sites train during the key stages (SecAggSettings)
    # The most of the FedAvg weights and of the merged statistics one site may hold: a site
    # that fabricates statistics agreeing with a huge size gets no more (strategy.weight_cap).
    # 1: sizes as they are; 0: strategy.site_share_limit (0.5 from three sites on).
    max_site_share: float = 0.0

    def __post_init__(self) -> None:
        self.hyperparameters  # noqa: B018  (a bad model setting fails the run before any stage)
        if self.target_epsilon != 0:  # 0: each site spends up to its own cap
            check_epsilon(self.target_epsilon, "run config target-epsilon")
        if self.target_delta != 0:  # 0: each site's own cap's delta
            check_delta(self.target_delta, "run config target-delta")
        if not 0 < self.preprocessing_share < 1 or not 0 <= self.evaluation_share < 1:
            raise ValueError("run config: preprocessing-share must lie in (0, 1) and "
                             "evaluation-share in [0, 1)")
        if self.population not in POPULATIONS:
            raise ValueError(f"population must be one of {POPULATIONS}, not {self.population!r}")
        if not 0 <= self.max_site_share <= 1:
            raise ValueError(f"run config: max-site-share {self.max_site_share!r} must lie in "
                             "[0, 1] (0: the default)")
        try:
            self.enrolled  # noqa: B018
        except (ValueError, TypeError, AttributeError):
            raise ValueError("run config node-sites must be a JSON object of node id -> site "
                             "name") from None
        if self.secure_aggregation and self.min_sites < 2:
            raise ValueError("secure aggregation needs min-sites >= 2: the mean of one site's "
                             "update is that update")

    def study_nodes(self, grid) -> list[int]:
        """The connected SuperNodes this study may ask (read again before every stage, so a
        site whose SuperNode restarted is asked again)."""
        nodes = sorted(grid.get_node_ids())
        if self.node_ids.strip():
            allowed = {int(n) for n in self.node_ids.split(",") if n.strip()}
            nodes = [n for n in nodes if n in allowed]
        if self.enrolled:
            nodes = [n for n in nodes if str(n) in self.enrolled]
        return nodes

    @property
    def enrolled(self) -> dict[str, str]:
        """node id -> site name, from the coordinator's enrollment records ({} if none)."""
        if not self.node_sites.strip():
            return {}
        return {str(int(k)): str(v) for k, v in json.loads(self.node_sites).items()}

    @property
    def registry_path(self) -> Path:
        return Path(self.node_registry or Path(self.checkpoint_dir).parent / "nodes.json")

    @property
    def release_path(self) -> Path:
        return Path(self.release_dir or Path(self.checkpoint_dir) / "release")

    @classmethod
    def from_run_config(cls, config: dict) -> "RunConfig":
        kwargs = fields_from_wire(cls, config)
        if not kwargs.get("checkpoint_dir"):
            raise ValueError("run config 'checkpoint-dir' is required (where the coordinator "
                             "keeps the pooled weights between rounds and restarts)")
        return cls(**kwargs)

    def load_schema(self) -> Schema:
        return Schema.load(schema_path(self.schema))

    def schema_fingerprint(self) -> str:
        return self.load_schema().fingerprint()

    def round_wire(self, training_id: str, rnd: int, fingerprint: str, stats_digest: str = "",
                   *, stage: str = "", synthetic_digest: str = "", weight_cap: float = 0.0) -> dict:
        """What every site receives with a stage (agent/clientapp/site_job.py:RoundConfig reads it)."""
        return {**self.spec_wire(), "study": self.study, "training-id": training_id,
                "round": rnd, "schema-fingerprint": fingerprint, "stats-digest": stats_digest,
                "stage": stage, "synthetic-digest": synthetic_digest, "weight-cap": weight_cap}
