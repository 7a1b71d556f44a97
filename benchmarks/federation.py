"""Federation costs and the reason to federate, on Adult (epsilon 3 per site, delta 1e-5).

- `synthpool demo` end to end (3 SuperNodes + SuperLink on loopback): seconds per round, split into
  the slowest site's local DP-SGD and the rest (Flower messaging, process start, aggregation),
  bytes per round (model down + up per site), and the pooled release's GB AUC on adult.test.
- `--split skewed`: the pooled release against each site's own single-site DP model (same
  epsilon, its rows only), all judged on the full hold-out.
- Scaling: `synthpool simulate --sites N` (Flower simulation engine) wall time for N sites.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import isolated, machine, markdown  # noqa: F401
from .utility import _referee

CLI = [sys.executable, "-m", "synthpool.cli"]


def _demo(out: Path, split: str, *extra: str) -> dict:
    start = time.perf_counter()
    subprocess.run([*CLI, "demo", "--out", str(out), "--split", split, *extra], check=True,
                   capture_output=True, text=True)
    wall = time.perf_counter() - start
    ckpt = out / "federation" / "coordinator" / "checkpoints"
    rounds = sorted(ckpt.glob("round-*.json"))
    per_round, compute, sizes = [], [], []
    for r in rounds:
        meta = json.loads(r.read_text())
        done = [e for e in map(json.loads, (ckpt / "events.jsonl").read_text().splitlines())
                if e.get("event") == "round_completed" and e.get("round") == meta["round"]]
        per_round.append(done[-1]["seconds"])
        compute.append(max(x["metrics"].get("train-seconds", float("nan")) for x in meta["results"]))
        with np.load(r.with_suffix(".npz")) as z:
            model_bytes = sum(z[k].nbytes for k in z.files)
        sizes.append(model_bytes * 2 * len(meta["used"]))
    sites_data = sorted(str(p) for p in (out / "federation" / "data").glob("*"))
    return {"wall": wall, "round_s": float(np.mean(per_round)), "compute_s": float(np.mean(compute)),
            "bytes": float(np.mean(sizes)), "rounds": len(rounds), "sites_data": sites_data,
            **_judge_release(out / "release" / "synthetic.csv", sites_data)}


def _judge_release(release: Path, sites_data: list[str]) -> dict:
    """benchmarks/referee.py on the release: fidelity against the union of the sites' rows,
    utility on adult.test."""
    import pandas as pd

    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TEST
    from synthpool.common.evaluation.tables import read_table
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema

    from .referee import independent_floor, judge

    schema = Schema.load(ADULT_SCHEMA)
    train = pd.concat([load_table(p, schema)[0] for p in sites_data], ignore_index=True)
    test, _ = load_table(ADULT_TEST, schema)
    synthetic = read_table(release, schema, strict=False)
    r = judge(schema, train, test, synthetic, ">50K", independent_floor(schema, train))
    return {"auc": r["gb_auc"], "dependence": r["dependence"], "kept": r["dependence_kept"],
            "shapes": r["shapes"]}


def _single_site_auc(path: str, seed: int = 0) -> float:
    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TEST
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema
    from synthpool.common.synthesis import train_single_site

    schema = Schema.load(ADULT_SCHEMA)
    rows, _ = load_table(path, schema)
    test, _ = load_table(ADULT_TEST, schema)
    res = train_single_site(schema, rows, epsilon=3.0, delta=1e-5, seed=seed)
    return _referee(schema, res.sample(32561), test)["gb_auc"]


def single_site(path: str) -> dict:
    return {"auc": _single_site_auc(path)}


def _simulate(sites: int, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([*CLI, "simulate", "--sites", str(sites), "--rounds", "1",
                    "--steps-per-round", "20", "--no-site-evaluation", "--out", str(out)], check=True,
                   capture_output=True, text=True)
    return time.perf_counter() - start


def run(families=("autoregressive", "cvae"), scaling=(3, 10, 30, 100)) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="synthpool-bench-"))
    rows = []
    blank = {"wall s": "", "s/round": "", "site DP-SGD s/round": "",
             "messaging+aggregation s/round": "", "MB/round": "", "GB AUC on adult.test": "",
             "dependence (kept)": "", "shapes": ""}
    runs = [(f, "iid") for f in families] + [(families[0], "skewed")]
    for family, split in runs:
        d = _demo(tmp / f"{family}-{split}", split, "--family", family, "--timeout", "2400")
        # Sites no longer report their training time (it summed the Poisson batch sizes).
        compute = d["compute_s"]
        rows.append({"what": f"demo, 3 sites, {split}, {family}", "wall s": round(d["wall"]),
                     "s/round": round(d["round_s"]),
                     "site DP-SGD s/round": "n/a" if np.isnan(compute) else round(compute),
                     "messaging+aggregation s/round": "n/a" if np.isnan(compute)
                     else round(d["round_s"] - compute),
                     "MB/round": d["bytes"] / 1e6, "GB AUC on adult.test": d["auc"],
                     "dependence (kept)": f"{d['dependence']:.3f} ({100 * d['kept']:.0f}%)",
                     "shapes": d["shapes"]})
        if split == "skewed":
            for i, path in enumerate(d["sites_data"]):
                r = isolated("benchmarks.federation", "single_site", path=path)
                rows.append(blank | {"what": f"site-{i} alone (skewed slice, single-site DP, "
                                             f"{family})", "GB AUC on adult.test": r["auc"]})
    for n in scaling:
        rows.append(blank | {"what": f"simulate {n} sites, 1 round x 20 steps",
                             "wall s": round(_simulate(n, tmp / f"sim{n}"))})
    return markdown(rows)
