"""Flower's share of a round at the demo's settings: everything but the sites' own work.

Runs `synthpool demo` (3 sites on this host, TLS, enrolled SuperNodes) as a newcomer would, once
with SecAgg+ (the default) and once with plain FedAvg, and reads
- the round times from the demo's progress lines (a round starts at "round k/3" and ends where the
  next round, or the sampling, starts);
- each site's own work in that round from its log ("planned and charged in X s, the job took
  Y s": a site writes its timings to its own log only, never into a reply).
The sites train at once, so a round's site work is the slowest site's X + Y; Flower's share is
1 - that / the round. Goal (issue 16): <= 10%, and the demo under 3 minutes with SecAgg+.
Under SecAgg+ the sites train during the key stages (agent/clientapp/after_reply.py), so a
round's overhead is its masking and unmask stages, the aggregation and the next setup.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine, markdown  # noqa: F401  (machine: __main__)

ROUND_LINE = re.compile(r"^\[\s*(\d+) s\] \d+/\d+ (round (\d+)/\d+|sampling the release)")
SITE_LINE = re.compile(r"round (\d+) of study .*planned and charged in ([\d.]+) s, the job took "
                       r"([\d.]+) s")


def round_times(progress: str) -> dict[int, float]:
    starts: dict[int, float] = {}
    end = None
    for line in progress.splitlines():
        m = ROUND_LINE.match(line)
        if not m:
            continue
        if m.group(3) is not None:
            starts.setdefault(int(m.group(3)), float(m.group(1)))
        elif end is None:
            end = float(m.group(1))
    bounds = sorted(starts.items()) + [(None, end)]
    return {k: b[1] - a[1] for (k, _), a, b in zip(bounds, bounds, bounds[1:]) if k is not None}


def site_work(logs: Path) -> dict[int, float]:
    work: dict[int, float] = {}
    for log in logs.glob("site-*.log"):
        for m in SITE_LINE.finditer(log.read_text(errors="replace")):
            rnd = int(m.group(1))
            work[rnd] = max(work.get(rnd, 0.0), float(m.group(2)) + float(m.group(3)))
    return work


def demo(*flags: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="synthpool-rounds-"))
    started = time.monotonic()
    run = subprocess.run([str(Path(sys.executable).parent / "synthpool"), "demo", "--out",
                          str(out), *flags], capture_output=True, text=True, check=True)
    wall = time.monotonic() - started
    rounds, work = round_times(run.stderr + run.stdout), site_work(out / "federation" / "logs")
    auc = re.search(r"Adult hold-out: trained on synthetic ([\d.]+)", run.stdout + run.stderr)
    return {"wall": wall, "rounds": rounds, "work": work,
            "auc": float(auc.group(1)) if auc else float("nan")}


def run() -> str:
    rows = []
    for label, flags in (("SecAgg+", ()), ("plain FedAvg", ("--plain-aggregation",))):
        r = demo(*flags)
        for k in sorted(r["rounds"]):
            total, own = r["rounds"][k], r["work"].get(k, float("nan"))
            rows.append({"demo": label, "round": k, "round s": round(total, 1),
                         "slowest site's work s": round(own, 1),
                         "Flower's share": f"{1 - own / total:.0%}",
                         "demo wall s": round(r["wall"]), "GB AUC (Adult test)": r["auc"]})
    return (markdown(rows) + "\n\nOne run each, 3 sites x 160 DP-SGD steps per round, 3 rounds, "
            "on 2 cores shared by the SuperLink, the ServerApp and the three sites (the sites' "
            "work is therefore slower than one site alone).")
