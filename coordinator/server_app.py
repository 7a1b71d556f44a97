"""The coordinator's Flower ServerApp (Message API): a DP generator trained by the sites, pooled by
FedAvg, sampled into a release.

One run = `run_study(grid, StudyRun)`:

* resume: the checkpoint dir names the training (training.json), its statistics (start.json) and
  its last completed round; a restarted coordinator continues there with the SAME training id, so
  every site sees the same ledger job ids and inputs and answers a repeated job from its release
  cache (never charged twice);
* statistics stage (once per training): every connected site releases noisy histograms of its
  rows on the schema's public grids (`query.stats`, charged to its ledger); the coordinator
  merges them (TableStats.merge), builds the initial model from the schema and the merged
  statistics, and checkpoints both. Each site's histogram total is its FedAvg weight;
* each round: send `train` messages (global weights + merged statistics) to the connected
  SuperNodes, collect replies until all came back, or `min-sites` did and a short straggler grace
  passed, or the round timeout hit; classify every site (ok / refused / failed / unavailable /
  missing / invalid) into the event log with the site's name and reason; FedAvg the valid
  updates; checkpoint atomically; next round;
* evaluation (coordinator/evaluation_stage.py): the sites score a sample of the release against
  their own rows; aggregates and DP histograms come back and are pooled into the shared report;
* release (coordinator/release.py): sample the pooled model into data + report + manifest, with each
  site's ledger as it reported it and the release-level guarantee.

A stage with fewer than `min-sites` valid answers fails the run (event `round_failed`), leaving
the previous checkpoint as the point to resume from.

Messages go out and come back through our own loop (`poll_replies`), shared with the SecAgg+
rounds, which can stop at a quorum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..common.atomic import atomic_write_text
from ..common.bundled import DEFAULT_SCHEMA, schema_path
from ..common.histogram_release import cell_noise_std, histogram_problem
from ..common.schema import Schema
from ..common.stats import TableStats, cell_labels, histogram_columns
from ..common.budget import DEFAULT_POPULATION, POPULATIONS, check_delta, check_epsilon
from ..common.wire import (
    STATS_MESSAGE, TRAIN_MESSAGE, Reply, Request, TrainingSpec, fields_from_wire,
)
from .checkpoint import CheckpointStore
from .strategy import FedAvg, QuorumNotReached, SiteResult, site_share_limit, weight_cap

log = logging.getLogger("synthpool.coordinator")




class RoundFailed(RuntimeError):
    pass


def overload_hint() -> str:
    """Why sites may have gone silent, when this host is the reason: on an overloaded machine
    Flower's task tokens expire before its processes run, and every task fails without saying
    so (fault injection at load 24 on 2 cores: the stage failed after 3 minutes, no hint)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = os.cpu_count() or 1
    if load <= 2 * cores:
        return ""
    return (f"; this host is overloaded (load average {load:.0f} on {cores} cores): Flower's "
            "tasks expire when its processes cannot run in time, so stop other work here (or at "
            "the sites, which their own logs show) and run again")


@dataclass(frozen=True, kw_only=True)
class StudyRun(TrainingSpec):
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
    poll_interval: float = 0.5
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
    # Federated evaluation of the release (coordinator/evaluation_stage.py): on/off, and how many
    # of the release's rows each site scores.
    evaluate: bool = True
    evaluation_rows: int = 10000
    # The study's SuperNodes, comma-separated ids ("": every node connected to the SuperLink).
    # A SuperLink serves every study of a coordinator; a node outside the list is never asked.
    node_ids: str = ""
    # The coordinator's enrollment records: JSON {node id: site name} of the study's approved
    # SuperNodes (coordinator/flower_runner.py). When given, a node is the site it was enrolled
    # as, only these nodes are asked, and a reply that names another site is invalid. Without
    # it (a local federation of one's own sites) a node is the site it first answered as.
    node_sites: str = ""
    # Secure aggregation (Flower's SecAgg+, coordinator/secure_aggregation.py): the coordinator
    # sees only the weighted mean of the sites' updates. The threshold is the share of a site's
    # key shares needed to unmask (and so how many sites may drop out of a round); the clipping
    # range bounds each coordinate of a site's weighted update before quantization; by default the
    # most a round can move a weight, so quantization never clips an honest update.
    secure_aggregation: bool = False
    secagg_threshold: float = 0.6
    secagg_clipping_range: float = 0.0   # 0: the update bound (TrainingSpec.max_update)
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

    @property
    def secagg(self):
        from .secure_aggregation import SecAggSettings

        return SecAggSettings(threshold=self.secagg_threshold,
                              clipping_range=self.secagg_clipping_range or self.max_update,
                              timeout=self.round_timeout, poll_interval=self.poll_interval,
                              max_update=self.max_update)

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
    def from_run_config(cls, config: dict) -> "StudyRun":
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
        """What every site receives with a stage (agent/site_job.py:RoundConfig reads it)."""
        return {**self.spec_wire(), "study": self.study, "training-id": training_id,
                "round": rnd, "schema-fingerprint": fingerprint, "stats-digest": stats_digest,
                "stage": stage, "synthetic-digest": synthetic_digest, "weight-cap": weight_cap}


def wait_for_nodes(grid, run: "StudyRun", want: int, need: int, timeout: float,
                   poll: float = 0.5) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = run.study_nodes(grid)
        if len(nodes) >= want:
            return nodes
        if time.monotonic() >= deadline:
            if len(nodes) >= need:
                return nodes
            raise RoundFailed(f"only {len(nodes)} site(s) connected after {timeout:.0f} s; "
                              f"the study needs {need}")
        time.sleep(poll)


def exchange(grid, nodes: list[int], request: Request, rnd: int, run: StudyRun,
             names: dict[str, str], *, message_type: str = TRAIN_MESSAGE, transcript=None,
             group: str | None = None) -> list[SiteResult]:
    """One round trip of `request` to `nodes`; returns one classified SiteResult per node.
    `transcript`: where every reply is recorded."""
    from flwr.app import Message

    messages = []
    for node in nodes:
        # TTL = round timeout: a node that comes back later must not train on a stale round.
        messages.append(Message(request.records(), dst_node_id=node, message_type=message_type,
                                group_id=group or f"round-{rnd}", ttl=run.round_timeout + 30))
    ids = list(grid.push_messages(messages))
    pending = {mid: node for mid, node in zip(ids, nodes) if mid}
    results: dict[int, SiteResult] = {
        node: SiteResult(node, names.get(str(node), f"node-{node}"), "failed",
                         reason="the SuperLink did not accept the message")
        for mid, node in zip(ids, nodes) if not mid
    }
    start = time.monotonic()
    quorum_at = None

    def stragglers_waited_for() -> bool:
        nonlocal quorum_at
        if quorum_at is None and sum(r.status == "ok" for r in results.values()) >= run.min_sites:
            quorum_at = time.monotonic()
        return quorum_at is not None and time.monotonic() - quorum_at >= run.straggler_grace

    for node, reply in poll_replies(grid, pending, run.round_timeout, run.poll_interval,
                                    stragglers_waited_for):
        results[node] = _read_reply(node, reply, names)
        transcribe(transcript, reply, round=rnd, message_type=message_type, node=node,
                   site=results[node].site, status=results[node].status)
    waited = time.monotonic() - start
    for node in pending.values():
        results[node] = SiteResult(node, names.get(str(node), f"node-{node}"), "missing",
                                   reason=f"no reply after {waited:.0f} s")
    return one_node_per_site([results[n] for n in nodes], names)


def identify(node: int, declared: str, names: dict[str, str]) -> tuple[str, str]:
    """Which site answered, and why the reply is invalid ('' if it is not): the coordinator's
    own record of the node (its enrollment, else the name it first answered under), never only
    what the reply says. An unknown node is the site it declares, until `one_node_per_site`."""
    known = names.get(str(node))
    if known is None or known.startswith("node-"):
        return declared or f"node-{node}", ""
    if declared and declared != known:
        return known, f"node {node} is site {known!r} but answered as {declared!r}"
    return known, ""


def one_node_per_site(results: list[SiteResult], names: dict[str, str]) -> list[SiteResult]:
    """Every stage, not only the statistics: two nodes answering as one site in one exchange (a
    second agent, a node claiming another's name) would count its update twice. A node the
    coordinator knows under the name keeps it, else the first; any other is invalid. (A node
    answering alone under a name another node had, as a restarted SuperNode without node
    authentication does, takes it over.)"""
    claims: dict[str, list[SiteResult]] = {}
    for r in results:
        if r.status == "ok":
            claims.setdefault(r.site, []).append(r)
    for site, rs in claims.items():
        if len(rs) < 2:
            continue
        keep = next((r for r in rs if names.get(str(r.node_id)) == site), rs[0])
        for r in rs:
            if r is not keep:
                r.status, r.reason = ("invalid", f"a second node answers as {site!r} "
                                                 f"(node {keep.node_id})")
    return results


def poll_replies(grid, pending: dict[str, int], timeout: float, poll: float,
                 enough=lambda: False):
    """Pull the replies to `pending` (message id -> node; emptied as replies come), yielding
    (node, reply), until every reply came, `timeout` passed, or `enough()` says stop. Our own
    loop, not Flower's `send_and_receive`: that one sleeps 3 s between polls
    (flwr/superlink/grid/http_grid.py:412) and cannot stop early."""
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                yield node, reply
        if not pending or enough():
            return
        time.sleep(poll)


def transcribe(transcript, reply, **fields) -> None:
    """One line of the audit transcript: who answered what, and what it sent."""
    if transcript is not None:
        transcript.write("reply", **fields, **record_transcript(reply))


def _read_reply(node: int, reply, names: dict[str, str]) -> SiteResult:
    name = names.get(str(node), f"node-{node}")
    if reply.has_error():
        return SiteResult.from_error(node, name, reply.error)
    try:
        out = Reply.from_content(reply.content)
    except ValueError as e:
        return SiteResult(node, name, "invalid", reason=str(e))
    site, problem = identify(node, str(out.info.get("site", "")), names)
    if problem:
        return SiteResult(node, site, "invalid", reason=problem)
    return SiteResult(node, site, "ok", weights=out.weights,
                      num_examples=float(out.metrics.get("num-examples", 0)),
                      metrics=out.metrics, info=out.info, ledger=out.ledger, stats=out.stats,
                      evaluation=out.evaluation)


def record_transcript(reply) -> dict:
    """What a site sent, for the audit transcript: every config and metric record in full,
    arrays as dtype, shape and sha256 (model weights are DP outputs; their bytes are in the
    checkpoints), or the error."""
    if reply.has_error():
        return {"error": {"code": reply.error.code, "reason": reply.error.reason}}
    content = reply.content

    def value(v):
        if isinstance(v, bytes):
            return {"bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
        return v

    return {
        "config": {name: {k: value(v) for k, v in rec.items()}
                   for name, rec in content.config_records.items()},
        "metrics": {name: dict(rec) for name, rec in content.metric_records.items()},
        "arrays": {name: [{"dtype": str(a.dtype), "shape": list(a.shape),
                           "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
                          for a in rec.to_numpy_ndarrays()]
                   for name, rec in content.array_records.items()},
    }


def _reference_shapes(weights: list[np.ndarray], results: list[SiteResult]):
    """The shapes an update must have: the pooled model's, or in round 1 (sites initialise the
    model themselves) the shapes most sites agree on."""
    if weights:
        return weights
    shapes = Counter(tuple(w.shape for w in r.weights) for r in results if r.status == "ok")
    if not shapes:
        return None
    common = shapes.most_common(1)[0][0]
    return [np.zeros(s) for s in common]


def stats_problem(result: SiteResult, schema: Schema) -> str:
    """Why a site's statistics cannot be merged ('' if they can): the schema's histograms, with
    the public grid's number of cells, finite counts, one Gaussian mechanism."""
    try:
        stats = TableStats.from_dict(result.stats or {})
    except (KeyError, TypeError, ValueError) as e:
        return f"unreadable statistics ({type(e).__name__})"
    if stats.schema_fingerprint != schema.fingerprint():
        return "statistics computed under another schema"
    if set(stats.histograms) != set(histogram_columns(schema)):
        return f"histograms of {sorted(stats.histograms)}, expected {histogram_columns(schema)}"
    for name in stats.histograms:
        try:
            want = len(cell_labels(schema, name))
        except KeyError:
            return f"statistics of an unknown column {name!r}"
        problem = histogram_problem(stats.counts(name), want)
        if problem:
            return f"histogram of {name!r} is {problem}"
    if len(stats.mechanisms) != 1:
        return f"statistics report {len(stats.mechanisms)} mechanisms, expected one"
    return ""


# How far a noisy total may stray from the truth before we call it forged: 6 standard deviations
# (a false alarm about once in 500 million honest histograms).
_TOLERANCE_SD = 6.0
MAX_HOLDOUT_FRACTION = 0.5  # the most of its rows a site may set aside (agent/config.py)


def size_problem(stats: TableStats, claimed: float, source: str) -> str:
    """Why a site's claimed size or counts cannot be honest ('' if they can). A site's FedAvg
    weight and its share of the merged statistics are what it claims, so it could take over both
    by claiming 1e12 rows. But every one of its histograms counts every row once, under Gaussian
    noise of a known scale: their totals must agree with each other, and an estimated size is
    their weighted mean (TableStats.noisy_rows, agent/site_job.py:reported_size); a declared
    size must agree with it too."""
    sigma_cell = cell_noise_std(stats.mechanisms[0].noise_multiplier, len(stats.histograms))
    totals = [(name, float(np.sum(stats.counts(name))), len(stats.counts(name)))
              for name in stats.histograms]
    estimate = stats.noisy_rows()
    estimate_sd = sigma_cell / np.sqrt(sum(1.0 / k for _, _, k in totals))
    for name, t, k in totals:
        if abs(t - estimate) > _TOLERANCE_SD * (sigma_cell * np.sqrt(k) + estimate_sd) + 1:
            return (f"histogram totals disagree ({name!r}: {t:.0f}, all of them: "
                    f"{estimate:.0f}) by more than their noise allows: every histogram counts "
                    "every row once")
    if source == "declared":
        # A declared size counts the whole table; the histograms leave out the site's hold-out,
        # at most half of it (agent/config.py), so the table holds between 1x and 2x their total.
        noise = _TOLERANCE_SD * estimate_sd + 1
        low, high = estimate - noise, (estimate + noise) / (1 - MAX_HOLDOUT_FRACTION)
    else:
        low, high = estimate - 1.0, estimate + 1.0  # the site reports the estimate, rounded
    if not low <= claimed <= high:
        return (f"reported size {claimed:.0f} ({source or 'estimated'}) disagrees with the total "
                f"of its own histograms ({estimate:.0f})")
    return ""


def statistics_stage(grid, run: StudyRun, training_id: str, schema: Schema,
                     names: dict[str, str], events, transcript=None) -> tuple[dict, list[np.ndarray]]:
    """Ask every connected site for its noisy histograms; merge; build the initial model."""
    nodes = run.study_nodes(grid)
    events.write("stats_started", nodes=nodes, training_id=training_id)
    fingerprint = schema.fingerprint()
    if schema.exact_draft_warning():  # the manifest records it too (schema.provenance)
        log.warning("%s", schema.exact_draft_warning())
    results = exchange(grid, nodes, Request(run.round_wire(training_id, 0, fingerprint)), 0, run,
                       names, message_type=STATS_MESSAGE, transcript=transcript)
    parts: dict[str, TableStats] = {}
    for r in results:
        if r.status == "ok":
            problem = stats_problem(r, schema)
            if not problem and not (r.num_examples > 0 and np.isfinite(r.num_examples)):
                problem = f"reported size {r.num_examples!r} is not a positive number"
            if not problem:
                problem = size_problem(TableStats.from_dict(r.stats), r.num_examples,
                                       str(r.info.get("size-source", "")))
            if problem:
                r.status, r.reason = "invalid", problem
            else:
                parts[r.site] = TableStats.from_dict(r.stats)
        if not r.site.startswith("node-"):
            names[str(r.node_id)] = r.site
        if r.status != "ok":
            events.write(f"site_{r.status}", round=0, **r.summary())
            _say(f"statistics: site {r.site} {r.status}: {r.reason}")
    if len(parts) < run.min_sites:
        reason = f"only {len(parts)} site(s) released statistics; the study needs {run.min_sites}"
        events.write("round_failed", round=0, reason=reason, sites=[r.summary() for r in results])
        raise RoundFailed(f"statistics stage: {reason}{overload_hint()}")
    ok = [r for r in results if r.status == "ok"]
    share = run.max_site_share or site_share_limit(len(ok))
    cap = weight_cap({r.site: r.num_examples for r in ok}, share)
    for r in ok:
        if r.num_examples > cap:
            # Scaling released histograms is post-processing: no privacy cost.
            parts[r.site] = parts[r.site].scaled(cap / r.num_examples)
            events.write("site_weight_capped", round=0, site=r.site, rows=r.num_examples,
                         weight=cap, max_site_share=share)
            _say(f"statistics: site {r.site} weighs {cap:.0f} rows, not its {r.num_examples:.0f}"
                 f" (max-site-share {share:g})")
    merged = TableStats.merge([parts[name] for name in sorted(parts)])
    stats_json = json.dumps(merged.to_dict(), sort_keys=True, separators=(",", ":"))
    start = {
        "training_id": training_id,
        "stats_json": stats_json,
        "stats_digest": "sha256:" + hashlib.sha256(stats_json.encode()).hexdigest(),
        "sites": {r.site: {"node_id": r.node_id, "rows": r.num_examples,
                           "weight": min(r.num_examples, cap),
                           "size_source": str(r.info.get("size-source", ""))} for r in ok},
        "weight_cap": cap if np.isfinite(cap) else 0.0,
        "max_site_share": share,
        "ledgers": {r.site: r.ledger for r in ok},
        "results": [r.summary() for r in results],
    }
    from .release import initial_weights

    weights = initial_weights(run, schema, merged)
    events.write("stats_completed", sites=sorted(parts), rows_estimate=merged.noisy_rows(),
                 dropped=[r.site for r in results if r.status != "ok"])
    _say(f"statistics from {sorted(parts)}: about {merged.noisy_rows():.0f} rows in all (DP)")
    return start, weights


def run_study(grid, run: StudyRun) -> dict:
    """The statistics stage (unless checkpointed), `run.num_rounds` rounds (or the rest of them
    after a restart), then the release. Returns a summary."""
    store = CheckpointStore(Path(run.checkpoint_dir))
    training = store.training(run.study, asdict(run))
    training_id = training["training_id"]
    events = store.events
    schema = run.load_schema()
    fingerprint = schema.fingerprint()
    ckpt = store.load()
    saved = store.load_start()
    names: dict[str, str] = {**_load_registry(run.registry_path),
                             **(ckpt.meta.get("sites", {}) if ckpt else {}), **run.enrolled}
    first = (ckpt.round if ckpt else 0) + 1
    run_id = getattr(grid.run, "run_id", None)
    events.write("run_started", run_id=run_id, training_id=training_id, study=run.study,
                 resume_after_round=first - 1, num_rounds=run.num_rounds)
    _say(f"training {training_id} of study {run.study!r}: rounds {first}..{run.num_rounds}"
         + (f" (resumed after round {first - 1})" if first > 1 else ""))
    if saved is None or first <= run.num_rounds or run.evaluate:
        wait_for_nodes(grid, run, run.expected_sites or run.min_sites, run.min_sites,
                       run.node_wait_timeout, run.poll_interval)
    if saved is None:
        start, initial = statistics_stage(grid, run, training_id, schema, names, events,
                                          store.transcript)
        store.save_start(start, initial)
        _save_registry(run.registry_path, names)
    else:
        start, initial = saved
    # FedAvg weights: the DP sizes, the largest lowered to the statistics stage's cap.
    sizes = {site: float(s.get("weight", s["rows"])) for site, s in start["sites"].items()}
    ledgers: dict[str, dict] = {**start["ledgers"], **(ckpt.meta.get("ledgers", {}) if ckpt else {})}
    weights = ckpt.weights if ckpt else initial
    strategy = FedAvg(min_sites=run.min_sites, proximal_mu=run.proximal_mu)
    for rnd in range(first, run.num_rounds + 1):
        # A site known to have released no statistics in this training cannot take part in its
        # rounds: it is not asked again. A node not known yet (a restarted SuperNode) is.
        nodes = [n for n in run.study_nodes(grid)
                 if str(n) not in names or names[str(n)] in sizes]
        events.write("round_started", round=rnd, run_id=run_id, nodes=nodes)
        t0 = time.monotonic()
        wire = run.round_wire(training_id, rnd, fingerprint, start["stats_digest"],
                              weight_cap=float(start.get("weight_cap", 0.0)))
        play = _secure_round if run.secure_aggregation else _plain_round
        results, pool = play(grid, nodes, weights, wire, start, rnd, run, sizes, names, store,
                             strategy)
        for r in results:
            if not r.site.startswith("node-"):
                names[str(r.node_id)] = r.site
            if r.status == "ok" and r.ledger:
                ledgers[r.site] = r.ledger
            if r.status != "ok":
                events.write(f"site_{r.status}", round=rnd, run_id=run_id, **r.summary())
                _say(f"round {rnd}: site {r.site} {r.status}: {r.reason}")
        try:
            weights = pool()
        except (QuorumNotReached, RoundFailed) as e:
            events.write("round_failed", round=rnd, run_id=run_id, reason=str(e),
                         sites=[r.summary() for r in results])
            _say(f"round {rnd} failed: {e}")
            raise RoundFailed(f"round {rnd}: {e}{overload_hint()}") from None
        used = [r.site for r in results if r.status == "ok"]
        dropped = [r.site for r in results if r.status != "ok"]
        store.save(rnd, weights, {
            "study": run.study, "training_id": training_id, "run_id": run_id, "sites": names,
            "used": used, "dropped": dropped, "results": [r.summary() for r in results],
            "ledgers": ledgers,
        })
        _save_registry(run.registry_path, names)
        events.write("round_completed", round=rnd, run_id=run_id, used=used, dropped=dropped,
                     seconds=round(time.monotonic() - t0, 2))
        _say(f"round {rnd} completed with {used}" + (f"; dropped {dropped}" if dropped else ""))
    events.write("training_completed", run_id=run_id, training_id=training_id,
                 rounds=run.num_rounds)
    from .release import sample_release, write_release

    sample = sample_release(run, store, schema, start)
    evaluation = None
    if run.evaluate:
        from .evaluation_stage import evaluation_stage

        _say(f"evaluation: {min(len(sample.frame), run.evaluation_rows)} synthetic rows sent to "
             "the sites to score against their own rows")
        evaluation = evaluation_stage(grid, run, training_id, schema, sample.frame, names, sizes,
                                      events, store.transcript)
        ledgers.update(evaluation.ledgers)
        for site, reason in evaluation.not_evaluated.items():
            _say(f"evaluation: site {site} {reason}")
    manifest = write_release(run, store, schema, start, sample, ledgers, evaluation)
    events.write("release_written", run_id=run_id, training_id=training_id,
                 path=str(run.release_path), rows=manifest["data"]["rows"],
                 epsilon=manifest["privacy"]["release"]["epsilon"])
    _say(f"release: {manifest['data']['rows']} rows in {run.release_path}, epsilon "
         f"{manifest['privacy']['release']['epsilon']:.3f} ({run.population} sites)")
    return {"training_id": training_id, "rounds": run.num_rounds, "checkpoint_dir": str(store.dir),
            "release_dir": str(run.release_path)}


# A round: the sites' classified results, and how to pool them (raises QuorumNotReached) once
# the caller has recorded them.
def _plain_round(grid, nodes, weights, wire, start, rnd, run, sizes, names, store, strategy):
    results = exchange(grid, nodes, Request(wire, weights, start["stats_json"]), rnd, run,
                       names, transcript=store.transcript)
    for r in _with_statistics(results, sizes):
        r.num_examples = sizes[r.site]  # fixed by the statistics stage, whatever a reply claims
    reference = _reference_shapes(weights, results)
    results = [strategy.validate(r, reference, weights, run.max_update) for r in results]
    return results, lambda: strategy.aggregate(results)


def _secure_round(grid, nodes, weights, wire, start, rnd, run, sizes, names, store, strategy):
    """SecAgg+ (coordinator/secure_aggregation.py): the coordinator gets the mean, not the
    updates, so there is nothing per site to validate here; the sites check their own."""
    from .secure_aggregation import secure_round

    # Only sites of the statistics stage can weight their update consistently.
    nodes = [n for n in nodes if names.get(str(n)) in sizes]
    pooled, results, rejected = secure_round(
        grid, nodes, weights, wire, start["stats_json"], rnd, run.secagg,
        {names[str(n)]: sizes[names[str(n)]] for n in nodes}, names, store.events,
        store.transcript)
    for r in _with_statistics(results, sizes):
        # The site weighted its own masked update: it must have used its DP size.
        if abs(r.num_examples - round(sizes[r.site])) > 1:
            store.events.write("site_weight_mismatch", round=rnd, site=r.site,
                               claimed=r.num_examples, statistics=sizes[r.site])

    def pool() -> list[np.ndarray]:
        ok = sum(r.status == "ok" for r in results)
        if rejected:
            raise RoundFailed(rejected)
        if pooled is None or ok < run.min_sites:
            raise QuorumNotReached(ok if pooled is not None else 0, run.min_sites)
        return pooled

    return results, pool


def _with_statistics(results: list[SiteResult], sizes: dict[str, float]) -> list[SiteResult]:
    """The ok results of sites that released statistics in this training; the others' are
    marked invalid (their FedAvg weight is unknown)."""
    kept = []
    for r in results:
        if r.status == "ok" and r.site not in sizes:
            r.status, r.reason = "invalid", "the site released no statistics in this training"
        elif r.status == "ok":
            kept.append(r)
    return kept


def _load_registry(path: Path) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return {}


def _save_registry(path: Path, names: dict[str, str]) -> None:
    merged = {**_load_registry(path), **names}
    atomic_write_text(path, json.dumps(merged, indent=1, sort_keys=True))


def _say(text: str) -> None:
    """Shown in `flwr run --stream` (the ServerApp's stdout is forwarded to the submitter)."""
    print(f"[synthpool] {text}", flush=True)


def make_app(run: StudyRun | None = None):
    """The ServerApp. Deployment reads the StudyRun from the run config of `flwr run`; the
    simulation (synthpool/commands/simulate.py) passes its own."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_study(grid, run or StudyRun.from_run_config(dict(context.run_config)))

    return app


app = make_app()
