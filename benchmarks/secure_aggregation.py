"""What SecAgg+ costs: `synthpool demo` (3 sites, iid, TLS + enrolled SuperNodes) with plain
FedAvg and with SecAgg+ (four message stages a round instead of one; masking and unmasking in
numpy), and whether the pooled model is as good (GB AUC on adult.test: only quantization, 7.5e-7
per coordinate, separates the two aggregates)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .common import machine, markdown  # noqa: F401
from .federation import _demo


def run() -> str:
    tmp = Path(tempfile.mkdtemp(prefix="synthpool-bench-secagg-"))
    rows = []
    for label, extra in (("plain FedAvg", ("--plain-aggregation",)), ("SecAgg+", ())):
        d = _demo(tmp / label.split()[0], "iid", *extra)
        rows.append({"aggregation": label, "wall s": round(d["wall"]), "s/round": round(d["round_s"]),
                     "site DP-SGD s/round": round(d["compute_s"]),
                     "rest s/round": round(d["round_s"] - d["compute_s"]),
                     "GB AUC on adult.test": d["auc"]})
    return markdown(rows)
