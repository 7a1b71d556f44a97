"""Messages to the sites and back, over Flower's Grid: one round trip (`exchange`), our own
polling loop (`poll_replies`, shared with the SecAgg+ rounds, which can stop at a quorum), who
answered (`identify`, `one_node_per_site`), and the audit transcript of every reply."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from ...common.wire import TRAIN_MESSAGE, Reply, Request
from .strategy import SiteResult
from .run_config import RunConfig

POLL_SHARE = 0.05   # poll_replies: the next pull after 5% of the time waited so far
MAX_POLL_S = 0.5


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


def wait_for_nodes(grid, run: "RunConfig", want: int, need: int, timeout: float,
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


def exchange(grid, nodes: list[int], request: Request, rnd: int, run: RunConfig,
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
        results[node] = read_reply(node, reply, names)
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
    (flwr/superlink/grid/http_grid.py:412) and cannot stop early.

    Every `poll` seconds at first (a key stage's replies come within a second), then every
    POLL_SHARE of the time waited so far, up to MAX_POLL_S: a reply is seen at most 5% later
    than it came, and a stage of DP-SGD is not polled ten times a second. Each pull costs the
    SuperLink a database query; on the demo's 2 cores those polls took CPU from the sites'
    training."""
    started = time.monotonic()
    deadline = started + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            node = pending.pop(reply.metadata.reply_to_message_id, None)
            if node is not None:
                yield node, reply
        if not pending or enough():
            return
        time.sleep(max(poll, min(MAX_POLL_S, POLL_SHARE * (time.monotonic() - started))))


def transcribe(transcript, reply, **fields) -> None:
    """One line of the audit transcript: who answered what, and what it sent."""
    if transcript is not None:
        transcript.write("reply", **fields, **record_transcript(reply))


def read_reply(node: int, reply, names: dict[str, str]) -> SiteResult:
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

def say(text: str) -> None:
    """Shown in `flwr run --stream` (the ServerApp's stdout is forwarded to the submitter)."""
    print(f"[synthpool] {text}", flush=True)

