"""SecAgg+ arithmetic and dropout handling, in one process: the coordinator's round
(coordinator/serverapp/secure_aggregation.py, Flower's SecAggPlusWorkflow) talks to the sites' side
(agent/clientapp/secure_aggregation.py, Flower's secaggplus_mod) through a loopback Grid that hands each
message to the addressed site's handler. Everything but the transport is the real code; the same
round over real Flower processes is in tests/test_federation_secagg.py."""

from __future__ import annotations

import copy
import json
import uuid

import numpy as np
import pytest

from synthpool.agent.clientapp.secure_aggregation import secure_aggregation_mod, update_of
from synthpool.common.wire import Reply, read_secure_request, secure_reply_records
from synthpool.coordinator.serverapp.secure_aggregation import SecAggSettings, secure_round

pytestmark = pytest.mark.usefixtures("flower_task_identity")


SIZES = {"a": 1000.0, "b": 2000.0, "c": 3000.0}
NODES = {11: "a", 22: "b", 33: "c"}


class Events(list):
    def write(self, event, **fields):
        self.append({"event": event, **fields})


class LoopbackGrid:
    """Delivers each message to its node's handler at once; a node in `crash_at` stops
    answering from that SecAgg+ stage on (it crashed), like a killed SuperNode."""

    def __init__(self, handlers, crash_at: dict[int, str] | None = None) -> None:
        from flwr.app import Context, RecordDict

        self.handlers = handlers
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(),
                                    run_config={}) for n in handlers}
        self.crash_at = dict(crash_at or {})
        self.crashed: set[int] = set()
        self.outbox: dict[str, object] = {}
        self.seen: dict[int, list] = {n: [] for n in handlers}

    def push_messages(self, messages):
        from flwr.app import Message

        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            mid = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
            stage = msg.content.config_records["secaggplus_configs"]["stage"]
            if self.crash_at.get(node) == stage:
                self.crashed.add(node)
            if node in self.crashed:
                continue
            # Each node gets its own copy, as over a network (the mod edits what it receives).
            delivered = Message(copy.deepcopy(msg.content), dst_node_id=node,
                                message_type=msg.metadata.message_type,
                                group_id=msg.metadata.group_id)
            delivered.metadata.__dict__["_message_id"] = mid
            reply = self.handlers[node](delivered, self.contexts[node])
            self.seen[node].append(reply)
            self.outbox[mid] = reply
        return ids

    def pull_messages(self, ids):
        return [self.outbox.pop(i) for i in list(ids) if i in self.outbox]


def _site(name: str, update: list[np.ndarray], refuse: bool = False):
    from flwr.app import Error, Message

    def train(msg, ctxt):
        if refuse:
            return Message(Error(code=1001, reason=f"site {name} refuses: over its budget"),
                           reply_to=msg)
        req = read_secure_request(msg.content)
        assert json.loads(req.stats_json) == {"merged": True} and req.config["round"] == 1
        local = [g + u for g, u in zip(req.weights, update)]
        reply = Reply(local, {"num-examples": SIZES[name], "epsilon-spent": 1.5}, {"site": name},
                      {"epsilon": 1.5})
        return Message(secure_reply_records(update_of(req.weights, local, 1.0), reply),
                       reply_to=msg)

    return lambda msg, ctxt: secure_aggregation_mod(msg, ctxt, train)


def _forging_weight(handler):
    """A malicious site: honest protocol, except that in its masked vector it lowers the weight
    slot (Flower's factor, the first array) by 99% of the total weight, so the coordinator's
    division by the unmasked weight total inflates the mean a hundredfold."""
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes

    def forge(msg, ctxt):
        reply = handler(msg, ctxt)
        configs = None if reply.has_error() else reply.content.config_records.get(
            "secaggplus_configs")
        if configs is not None and "masked_params" in configs:
            vectors = list(configs["masked_params"])
            factor = bytes_to_ndarray(vectors[0]).astype(np.int64)
            forged = (factor - int(0.99 * 2**22)) % 2**32
            vectors[0] = ndarray_to_bytes(forged.astype(bytes_to_ndarray(vectors[0]).dtype))
            configs["masked_params"] = vectors
        return reply

    return forge


def _round(crash_at=None, refuse=(), forge=(), max_update=float("inf")):
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=(40, 16)).astype(np.float32), rng.normal(size=16).astype(np.float32)]
    updates = {name: [rng.normal(scale=0.05, size=w.shape) for w in weights] for name in SIZES}
    handlers = {n: _site(s, updates[s], s in refuse) for n, s in NODES.items()}
    handlers = {n: _forging_weight(h) if NODES[n] in forge else h for n, h in handlers.items()}
    grid = LoopbackGrid(handlers, crash_at)
    events = Events()
    pooled, results, _ = secure_round(
        grid, sorted(NODES), weights, {"round": 1}, json.dumps({"merged": True}), 1,
        SecAggSettings(clipping_range=1.0, timeout=0.2, poll_interval=0.01,
                       max_update=max_update), SIZES,
        {str(n): s for n, s in NODES.items()}, events)
    return weights, updates, pooled, {r.site: r for r in results}, grid, events


def _fedavg(weights, updates, sites):
    total = sum(SIZES[s] for s in sites)
    return [w + sum(SIZES[s] / total * updates[s][i] for s in sites)
            for i, w in enumerate(weights)]


def test_secure_mean_equals_fedavg_and_the_coordinator_sees_only_masked_vectors():
    weights, updates, pooled, results, grid, events = _round()
    assert {s: r.status for s, r in results.items()} == {"a": "ok", "b": "ok", "c": "ok"}
    for got, want in zip(pooled, _fedavg(weights, updates, "abc")):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert results["a"].ledger == {"epsilon": 1.5} and results["b"].num_examples == 2000
    assert [e["stage"] for e in events if e["event"] == "secagg_stage"] == [
        "setup", "share_keys", "collect_masked_vectors", "unmask"]
    # What left site a in the training stage: no arrays, and a masked vector that is not its
    # weighted, quantized update (the masks are uniform over 2^32).
    masked_reply = grid.seen[11][2]
    assert not any(len(rec) for rec in masked_reply.content.array_records.values())
    from flwr.common import bytes_to_ndarray

    masked = masked_reply.content.config_records["secaggplus_configs"]["masked_params"]
    vec = bytes_to_ndarray(masked[1])
    # Flower's weight factor, then the update packed into one vector (one object to move, not
    # one per tensor: Flower pulls each object with its own request).
    assert len(masked) == 2 and vec.shape == (40 * 16 + 16,)
    assert np.std(vec.astype(np.float64)) > 1e8


def test_a_site_dropping_mid_round_is_unmasked_away_and_named():
    weights, updates, pooled, results, _, _ = _round(crash_at={33: "collect_masked_vectors"})
    assert results["a"].status == results["b"].status == "ok"
    assert results["c"].status == "missing" and "collect_masked_vectors" in results["c"].reason
    for got, want in zip(pooled, _fedavg(weights, updates, "ab")):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_refusal_keeps_the_sites_reason():
    weights, updates, pooled, results, _, _ = _round(refuse=("b",))
    assert results["b"].status == "refused" and "over its budget" in results["b"].reason
    for got, want in zip(pooled, _fedavg(weights, updates, "ac")):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_too_many_dropouts_stop_the_round_without_a_result():
    _, _, pooled, results, _, _ = _round(crash_at={22: "share_keys", 33: "share_keys"})
    assert pooled is None
    assert results["b"].status == results["c"].status == "missing"


def test_a_site_checks_its_own_update_before_it_is_masked():
    g = [np.zeros(3)]
    with pytest.raises(ValueError, match="NaN"):
        update_of(g, [np.array([0.0, np.nan, 1.0])], 1.0)
    with pytest.raises(ValueError, match="shapes"):
        update_of(g, [np.zeros(4)], 1.0)
    with pytest.raises(ValueError, match="more than the 0.5"):
        update_of(g, [np.array([0.0, 0.7, 0.0])], 0.5)


def test_our_name_for_flowers_secagg_record_is_flowers():
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    from synthpool.common.wire import SECAGG_CONFIGS

    assert SECAGG_CONFIGS == RECORD_KEY_CONFIGS


def test_a_site_forging_the_weight_total_cannot_push_the_pooled_model():
    """The attack: one site's masked vector sets the weight total the coordinator divides by.
    Without the check the pooled weights move about a hundred times further than any update; with
    it, the round yields no model and says why."""
    weights, updates, pooled, _, _, _ = _round(forge=("b",))
    honest = max(np.max(np.abs(u)) for site in updates.values() for u in site)
    moved = max(np.max(np.abs(p - w)) for p, w in zip(pooled, weights))
    assert moved > 20 * honest  # reproduced: Flower's own checks let it through
    weights, updates, pooled, results, _, events = _round(forge=("b",), max_update=0.5)
    assert pooled is None
    rejected = [e for e in events if e["event"] == "secagg_aggregate_rejected"]
    assert len(rejected) == 1 and "SecAgg+ integrity failure" in rejected[0]["reason"]
    # An honest round under the same bound passes.
    _, _, pooled, _, _, _ = _round(max_update=0.5)
    assert pooled is not None
