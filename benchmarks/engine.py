"""DP-SGD vs non-private training throughput of the same model, peak memory, sampling speed, for
each generator family.

Goal: DP-SGD (Opacus ghost clipping) at >= 0.5x the non-private rows/s; sampling 1M rows < 10 s.
"""

from __future__ import annotations

import time

from .common import isolated, machine, markdown  # noqa: F401  (machine is used by __main__)


def _setup(family: str, device: str = "cpu"):
    import numpy as np
    import torch

    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TRAIN
    from synthpool.common.generators.registry import build
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema
    from synthpool.common.stats import collect_stats
    from synthpool.common.transforms import TableTransformer

    torch.manual_seed(0)
    schema = Schema.load(ADULT_SCHEMA)
    df, _ = load_table(ADULT_TRAIN, schema)
    stats = collect_stats(schema, df, 20.0, np.random.default_rng(0))
    t = TableTransformer(schema, stats)
    return build(family, t, seed=0, device=device), t.encode(df).to(device)


def train_dp(family: str, batch: int, steps: int, device: str = "cpu") -> dict:
    from synthpool.common.dp_training import DPSGDConfig

    gen, data = _setup(family, device)
    q = batch / len(data)
    gen.fit_steps(data, DPSGDConfig(3, q, 1.0, 1.0))  # warm-up
    stats = gen.fit_steps(data, DPSGDConfig(steps, q, 1.0, 1.0))
    return {"rows_per_s": stats.rows_seen / stats.seconds}


def train_plain(family: str, batch: int, steps: int, device: str = "cpu") -> dict:
    import torch

    gen, data = _setup(family, device)
    opt = torch.optim.Adam(gen.net.parameters(), lr=gen.hp.lr)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        idx = torch.randint(len(data), (batch,), device=data.device)
        x = data[idx]
        opt.zero_grad()
        gen.loss(gen.net(x), x).backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"rows_per_s": batch * steps / (time.perf_counter() - start)}


def sample(family: str, rows: int, device: str = "cpu") -> dict:
    gen, _ = _setup(family, device)
    gen.sample(10_000)
    start = time.perf_counter()
    gen.sample(rows, seed=1)
    return {"seconds": time.perf_counter() - start}


def run(device: str = "cpu", families=("autoregressive", "cvae")) -> str:
    rows = []
    for family in families:
        for batch, steps in ((512, 60), (4096, 20)):
            kw = dict(family=family, batch=batch, steps=steps, device=device)
            plain = isolated("benchmarks.engine", "train_plain", **kw)
            dp = isolated("benchmarks.engine", "train_dp", **kw)
            rows.append({"what": f"{family}: train, batch {batch}",
                         "non-private rows/s": round(plain["rows_per_s"]),
                         "DP-SGD rows/s": round(dp["rows_per_s"]),
                         "DP / non-private": dp["rows_per_s"] / plain["rows_per_s"],
                         "peak RSS MB (DP)": round(dp["peak_rss_mb"])})
        s = isolated("benchmarks.engine", "sample", family=family, rows=1_000_000, device=device)
        rows.append({"what": f"{family}: sample 1M rows: {s['seconds']:.1f} s "
                             f"({1e6 / s['seconds']:,.0f} rows/s)",
                     "non-private rows/s": "", "DP-SGD rows/s": "", "DP / non-private": "",
                     "peak RSS MB (DP)": round(s["peak_rss_mb"])})
    return markdown(rows)
