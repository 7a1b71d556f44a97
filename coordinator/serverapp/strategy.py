"""Pooling site updates: FedAvg weighted by the sites' DP row estimates, FedProx by config.

Why our own (small) strategy instead of `flwr.serverapp.strategy.FedAvg`: the pooled model must
survive coordinator restarts (checkpoint + resume), a round must finish with the sites that
answered when enough did, and every refusal or absence must be recorded with the site's name and
reason. Flower's strategies log a failure count and move on (docs/ARCHITECTURE.md: "failures
look like success"). The arithmetic is FedAvg; everything else is bookkeeping that Flower does not do.

Weights: a site's weight is the row total of the noisy histograms it released in the training's
statistics stage (already charged to its ledger; coordinator/serverapp/statistics_stage.py fixes it there and
ignores sizes claimed later), or the size its owner declared public. Never an exact count. A
site can still fabricate histograms that agree with a huge size, so no site's share of the
weights (and of the merged statistics) may exceed `max-site-share` (`weight_cap`).
FedProx is the same aggregation with `proximal-mu` > 0 sent to the sites, whose DP-SGD adds a
proximal pull towards the global weights (common/dp_training.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...common.update_bound import displacement_problem
from ...common.wire import REFUSED

# Flower's own error codes (flwr/common/constant.py:199).
NODE_UNAVAILABLE = 5
FLOWER_CODES = {0: "unknown", 1: "load-clientapp", 2: "clientapp-exception",
                3: "message-unavailable", 4: "reply-unavailable", 5: "node-unavailable",
                6: "mod-failed", 7: "invalid-fab", 8: "clientapp-crashed"}


def site_share_limit(n_sites: int) -> float:
    """max-site-share's default: no site outweighs all the others together. With two sites any
    limit below 1 would override honest sizes (a 70/30 pair would be weighted 50/50), and the
    other site is the whole rest of the federation: no limit there unless the study sets one."""
    return 0.5 if n_sites >= 3 else 1.0


def weight_cap(sizes: dict[str, float], max_share: float) -> float:
    """The weight c such that min(size, c) gives no site more than `max_share` of the total
    (water-filling: only the largest sites are lowered, all to the same c); inf when no site
    exceeds it. When the cap cannot hold for every site (`max_share` below 1/n), every site gets
    the smallest size: equal weights."""
    values = sorted((float(v) for v in sizes.values()), reverse=True)
    if max_share >= 1 or len(values) < 2 or values[0] <= max_share * sum(values):
        return float("inf")
    for k in range(1, len(values)):  # the k largest are capped
        rest = sum(values[k:])
        if k * max_share >= 1:
            break
        c = max_share * rest / (1 - k * max_share)
        if values[k] <= c <= values[k - 1]:
            return c
    return values[-1]


@dataclass
class SiteResult:
    """One site's answer to one round, classified."""

    node_id: int
    site: str
    status: str  # "ok" | "refused" | "failed" | "unavailable" | "missing" | "invalid"
    weights: list[np.ndarray] = field(default_factory=list)
    num_examples: float = 0.0
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    reason: str = ""
    ledger: dict = field(default_factory=dict)   # the site's ledger report for the study
    stats: dict | None = None                    # statistics stage: TableStats.to_dict()
    evaluation: dict | None = None               # evaluation stage: scores and DP histograms

    @classmethod
    def from_error(cls, node_id: int, name: str, error, note: str = "") -> "SiteResult":
        """A site's error reply (a Flower `Error`), classified. Our refusals start
        "site NAME refuses: ...": the site's name is learnt from them too."""
        reason = error.reason or ""
        if reason.startswith("site ") and " " in reason[5:]:
            name = reason[5:].split(" ", 1)[0]
        return cls(node_id, name, classify_error(error.code, reason),
                   reason=f"[{error.code}] {reason}{note}")

    def summary(self) -> dict:
        out = {"node_id": self.node_id, "site": self.site, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.status == "ok":
            out["num_examples"] = self.num_examples
            out["metrics"] = self.metrics
            out["replayed"] = bool(self.info.get("replayed", False))
            # A SecAgg+ round's update trained during its key stages.
            out["trained_ahead"] = bool(self.info.get("trained-ahead", False))
        return out


def classify_error(code: int, reason: str) -> str:
    if code == REFUSED:
        return "refused"
    if code in (NODE_UNAVAILABLE, 3, 4):
        return "unavailable"
    return "failed"


class FedAvg:
    """Size-weighted average of the valid updates; FedProx when `proximal_mu` > 0."""

    def __init__(self, *, min_sites: int, proximal_mu: float = 0.0,
                 max_abs_weight: float = 1e6) -> None:
        if min_sites < 1:
            raise ValueError("min_sites must be >= 1")
        self.min_sites = min_sites
        self.proximal_mu = float(proximal_mu)
        self.max_abs_weight = max_abs_weight

    def validate(self, result: SiteResult, reference: list[np.ndarray] | None,
                 global_weights: list[np.ndarray] | None = None,
                 max_update: float | None = None) -> SiteResult:
        """Reject updates of the wrong shape, with non-finite / absurd values, or that moved a
        weight further from `global_weights` than `max_update` (what lr x steps of Adam allow,
        common/update_bound.py): a broken or hostile site must not poison the pool."""
        if result.status != "ok":
            return result
        problem = ""
        if reference is not None and [w.shape for w in result.weights] != [w.shape for w in reference]:
            problem = (f"update shapes {[w.shape for w in result.weights]} differ from the model's "
                       f"{[w.shape for w in reference]}")
        elif not all(np.all(np.isfinite(w)) for w in result.weights):
            problem = "update holds NaN or infinite values"
        elif any(np.max(np.abs(w), initial=0) > self.max_abs_weight for w in result.weights):
            problem = f"update values exceed {self.max_abs_weight:g}"
        elif global_weights and max_update is not None and \
                (too_far := displacement_problem(result.weights, global_weights, max_update)):
            problem = too_far
        elif not (result.num_examples > 0 and np.isfinite(result.num_examples)):
            problem = f"reported size {result.num_examples!r} is not a positive number"
        if problem:
            result.status, result.reason = "invalid", problem
            result.weights = []
        return result

    def aggregate(self, results: list[SiteResult]) -> list[np.ndarray]:
        ok = [r for r in results if r.status == "ok"]
        if len(ok) < self.min_sites:
            raise QuorumNotReached(len(ok), self.min_sites)
        total = float(sum(r.num_examples for r in ok))
        pooled = []
        for i in range(len(ok[0].weights)):
            acc = np.zeros_like(np.asarray(ok[0].weights[i], dtype=np.float64))
            for r in ok:
                acc += (r.num_examples / total) * np.asarray(r.weights[i], dtype=np.float64)
            pooled.append(acc.astype(np.asarray(ok[0].weights[i]).dtype, copy=False))
        return pooled


class QuorumNotReached(RuntimeError):
    def __init__(self, got: int, need: int) -> None:
        super().__init__(f"only {got} site(s) returned a valid update; the round needs {need}")
        self.got, self.need = got, need
