"""One training round under SecAgg+ (Flower's secure aggregation): the coordinator learns the
size-weighted mean of the sites' updates and nothing about any one site's update.

How a round goes (Flower's `SecAggPlusWorkflow`, four message stages instead of one):
setup (key agreement parameters) -> share keys (each site's secrets, Shamir-shared with its
neighbours) -> collect masked vectors (the `train` work itself: every site trains, weights its
update by its DP size, quantizes it and adds pairwise and private masks) -> unmask (the survivors
hand over the shares that cancel the masks, including those of a site that dropped after it
shared its keys). The masks cancel only in the sum; a site's vector alone is uniform noise.
With `train_ahead` the round's request also rides with the setup stage, so the sites train while
the key stages run (agent/clientapp/after_reply.py) and the masking stage only masks.

What a site sends is its update as a displacement from the global weights (agent/clientapp/app.py),
not its weights: Flower clips each coordinate into [-clipping_range, clipping_range] before it
quantizes, and the range is by default the most a round of Adam can move a weight
(common/update_bound.py: 1.56 at the default 5e-3 x 160 steps), so an honest update is never
clipped, and a displacement fits where weights need not. Quantization step at that range:
2 x 1.56 / 2^22 = 7.5e-7 per coordinate, unbiased (stochastic rounding).

Why not Flower's `DefaultWorkflow`: it owns the whole training loop (its own rounds, no
checkpoints, no quorum, no named refusals). Here the workflow runs for ONE round inside
`study.run_study`, behind a tiny legacy `Strategy` that hands it our FitIns and takes the
aggregate back, so checkpoints, resume, the event log and the release stay the same as in a plain
round. `_FastGrid` gives the workflow the plain round's polling (transport.poll_replies, not
Flower's 3 s sleeps) and records every reply in the transcript.

What the coordinator can and cannot check: it never sees one site's update (that is the point),
so the per-site checks of a plain round (finite values, shapes, absurd norms) run at the site on
its own update before it is masked, and the coordinator checks the aggregate. Quantization also
bounds what any one site can add to a coordinate. A round with fewer than `min-sites` unmasked
updates is not used: the mean of one site's update IS its update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...common.wire import (
    SECAGG_SETUP, add_round_request, read_secure_reply, secure_fitins, secure_stage, unpack_like,
)
from .strategy import SiteResult
from .run_config import RunConfig
from .transport import identify, one_node_per_site, poll_replies, transcribe


@dataclass(frozen=True)
class SecAggSettings:
    """The protocol's parameters (RunConfig: secagg-threshold, secagg-clipping-range)."""

    threshold: float = 0.6          # share of a site's key shares needed to rebuild its secrets
    clipping_range: float = 8.0
    timeout: float = 300.0          # per stage
    poll_interval: float = 0.1
    # The most one round can move a weight (the family's bound): the mean of honest updates
    # cannot move further, whatever the weights.
    max_update: float = float("inf")
    # Send the round's request with the setup stage, so sites train during the key stages
    # (agent/clientapp/after_reply.py); off: they train in the masking stage, as Flower's do.
    train_ahead: bool = True

    @classmethod
    def of(cls, run: RunConfig) -> "SecAggSettings":
        return cls(threshold=run.secagg_threshold,
                   clipping_range=run.secagg_clipping_range or run.max_update,
                   timeout=run.round_timeout, poll_interval=run.poll_interval,
                   max_update=run.max_update, train_ahead=run.secagg_train_ahead)

    def workflow(self, total_weight: float):
        from flwr.server.workflow import SecAggPlusWorkflow

        # num_shares 1.0: every site shares its secrets with every other (the sites of a study
        # are few); max_weight: the sum of the DP sizes, so every site's weight ratio is <= 1 and
        # the quantized sum cannot overflow.
        return SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=self.threshold,
                                  max_weight=max(total_weight, 1.0),
                                  clipping_range=self.clipping_range, timeout=self.timeout)


@dataclass
class _Node:
    """What the workflow keys its bookkeeping by (it only reads `node_id`)."""

    node_id: int


def _round_strategy(nodes: list[int], fitins):
    """A legacy Strategy for one round: `configure_fit` sends our FitIns to `nodes`,
    `aggregate_fit` keeps what the workflow unmasked."""
    from flwr.server.strategy import Strategy

    class RoundStrategy(Strategy):
        results: list | None = None

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            return [(_Node(n), fitins) for n in nodes]

        def aggregate_fit(self, server_round, results, failures):
            self.results = list(results)
            return (results[0][1].parameters if results else None), {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return RoundStrategy()


@dataclass
class _FastGrid:
    """The Grid the workflow talks to: Flower's, with `send_and_receive` polling every
    `poll` seconds, every reply kept (`replies`, by node) and written to the transcript, and the
    start of each protocol stage written to the event log (so an operator sees where a round
    stopped)."""

    grid: object
    poll: float
    rnd: int
    events: object
    transcript: object | None
    names: dict[str, str]
    ahead: object | None = None  # the round's FitIns, sent with the setup stage (train_ahead)
    replies: dict[int, object] = field(default_factory=dict)
    unanswered: dict[int, str] = field(default_factory=dict)  # node -> stage it went silent in
    stage: str = ""

    def __getattr__(self, name):  # everything but send_and_receive is Flower's
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages:
            self.stage = secure_stage(messages[0].content) or "?"
            if self.stage == SECAGG_SETUP and self.ahead is not None:
                for m in messages:
                    add_round_request(m.content, self.ahead)
            self.events.write("secagg_stage", round=self.rnd, stage=self.stage,
                              nodes=sorted(m.metadata.dst_node_id for m in messages))
        # By message id, not by the reply's src_node_id: the SuperLink's own error reply for a
        # node it declared dead comes from the SuperLink.
        pending = {mid: m.metadata.dst_node_id
                   for mid, m in zip(self.grid.push_messages(messages), messages) if mid}
        out = []
        for node, reply in poll_replies(self.grid, pending, float("inf") if timeout is None
                                        else timeout, self.poll):
            out.append(reply)
            self.replies[node] = reply
            transcribe(self.transcript, reply, round=self.rnd,
                       message_type=f"train/secagg/{self.stage}", node=node,
                       site=self.names.get(str(node), f"node-{node}"),
                       status="error" if reply.has_error() else "ok")
        for node in pending.values():
            self.unanswered.setdefault(node, self.stage)
        return out


def secure_round(grid, nodes: list[int], weights: list[np.ndarray], wire: dict, stats_json: str,
                 rnd: int, settings: SecAggSettings, sizes: dict[str, float],
                 names: dict[str, str], events, transcript=None
                 ) -> tuple[list[np.ndarray] | None, list[SiteResult], str]:
    """Run one SecAgg+ round with `nodes`. Returns the new global weights (None if the protocol
    did not complete or its result was rejected), one SiteResult per node (an "ok" result carries
    no weights: there are none to see), and why the unmasked result was rejected ('' if not)."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    if not weights:
        raise ValueError("secure aggregation needs the global weights to start from")
    fitins = secure_fitins(weights, wire, stats_json)
    parameters = fitins.parameters
    strategy = _round_strategy(nodes, fitins)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(),
                                    run_config={}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        parameters, keep_input=True)
    fast = _FastGrid(grid, settings.poll_interval, rnd, events, transcript, names,
                     ahead=fitins if settings.train_ahead else None)
    settings.workflow(sum(sizes.values()))(fast, context)

    unmasked = {proxy.node_id: fitres for proxy, fitres in (strategy.results or [])}
    results = one_node_per_site(
        [_site_result(node, unmasked.get(node), fast.replies.get(node), names,
                      fast.unanswered.get(node, fast.stage)) for node in nodes], names)
    if strategy.results is None:
        return None, results, ""
    problem = ""
    try:
        mean_update = unpack_like(parameters_to_ndarrays(strategy.results[0][1].parameters),
                                  weights)
    except ValueError as e:
        mean_update, misfit = [], f"the unmasked aggregate does not fit the model: {e}"
    else:
        misfit = ""
    if forged := [r for r in results if r.status == "invalid"]:
        # Its masked update is already in the sum: the round cannot be used without it.
        problem = ("SecAgg+ round not used: " + "; ".join(r.reason for r in forged))
    elif misfit:
        problem = misfit
    elif not all(np.all(np.isfinite(u)) for u in mean_update):
        problem = "the unmasked aggregate holds NaN or infinite values"
    elif (moved := max(float(np.max(np.abs(u), initial=0)) for u in mean_update)) \
            > settings.max_update:
        # Flower divides the unmasked sum by a weight total read from that same sum, which one
        # site's masked vector can set: a mean beyond what any honest update allows is forged.
        problem = (f"SecAgg+ integrity failure: the unmasked mean moves a weight by {moved:.4g}, "
                   f"more than the {settings.max_update:.4g} one round of training can; a "
                   "site's masked vector was not a genuine update")
    if problem:
        events.write("secagg_aggregate_rejected", round=rnd, reason=problem)
        return None, results, problem
    pooled = [(np.asarray(w, dtype=np.float64) + u).astype(np.asarray(w).dtype, copy=False)
              for w, u in zip(weights, mean_update)]
    return pooled, results, ""


def _site_result(node: int, fitres, last_reply, names: dict[str, str], stage: str) -> SiteResult:
    name = names.get(str(node), f"node-{node}")
    if fitres is not None:
        out = read_secure_reply(fitres)
        site, problem = identify(node, str(out.info["site"]), names)
        if problem:
            return SiteResult(node, site, "invalid", reason=problem)
        return SiteResult(node, site, "ok",
                          num_examples=float(fitres.num_examples), metrics=out.metrics,
                          info={k: out.info[k] for k in ("replayed", "trained-ahead")},
                          ledger=out.ledger)
    if last_reply is not None and last_reply.has_error():
        return SiteResult.from_error(node, name, last_reply.error, " (secure aggregation)")
    return SiteResult(node, name, "missing",
                      reason=f"dropped out of secure aggregation (no reply in stage {stage!r}); "
                             "its masks were removed with its neighbours' shares")
