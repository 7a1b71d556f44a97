"""DP-SGD vs non-private training throughput of the same model and batch, peak memory, sampling
speed, for each generator family.

The two legs run in one process, interleaved (DP, non-private, DP, ...), `repeats` times each:
this machine is shared and noisy, and a ratio only means something when both legs ran side by
side. The non-private leg is the DP job minus the mechanism: the same Poisson batches, model,
loss, Adam and iterate averaging, with a plain backward pass instead of the clipped, noised sum.

Goals (issue 16): DP-SGD (book-keeping clipping) >= 0.8x non-private for the default family at
the batches its jobs use; sampling 1M rows <= 5 s.
"""

from __future__ import annotations

import time

from .common import isolated, machine, markdown, median_range  # noqa: F401  (machine: __main__)


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


def _plain_job(gen, data, dp) -> float:
    """Rows/s of `dp.steps` non-private steps shaped exactly like gen.fit_steps' DP job."""
    import torch

    from synthpool.common.dp_training import IterateAverage, poisson_batches

    net, loss = gen.net, gen.loss
    optimizer = torch.optim.Adam(net.parameters(), lr=gen.hp.lr, foreach=True)
    mean = IterateAverage(net.parameters(), getattr(gen.hp, "average", 0.0))
    batches = poisson_batches(data, dp)
    start, rows = time.perf_counter(), 0
    for step in range(1, dp.steps + 1):
        x = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss(net(x), x).backward()
        optimizer.step()
        mean.update(step)
        rows += len(x)
    return rows / (time.perf_counter() - start)


def train_pair(family: str, batch: int, steps: int, repeats: int, device: str = "cpu") -> dict:
    """Rows/s of the DP and the non-private leg, `repeats` interleaved runs of each."""
    from synthpool.common.dp_training import DPSGDConfig

    gen, data = _setup(family, device)
    dp = DPSGDConfig(steps, batch / len(data), 1.0, 1.0)
    gen.fit_steps(data, DPSGDConfig(3, dp.sample_rate, 1.0, 1.0))  # warm-up, both paths
    _plain_job(gen, data, DPSGDConfig(3, dp.sample_rate, 1.0, 1.0))
    private, plain = [], []
    for _ in range(repeats):
        stats = gen.fit_steps(data, dp)
        private.append(stats.rows_seen / stats.seconds)
        plain.append(_plain_job(gen, data, dp))
    return {"dp": private, "plain": plain}


def sample(family: str, rows: int, device: str = "cpu", repeats: int = 1) -> dict:
    gen, _ = _setup(family, device)
    gen.sample(10_000)
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        gen.sample(rows, seed=1 + i)
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds}


# 512: a small batch, where per-layer overheads weigh most; 1,365 and 4,069: the expected batch
# of a demo site (a third of Adult at the default rate 0.125) and of single-site `synth`.
BATCHES = ((512, 80), (1365, 40), (4069, 20))


def run(device: str = "cpu", families=("autoregressive", "cvae"), repeats: int = 5) -> str:
    rows = []
    for family in families:
        for batch, steps in BATCHES:
            r = isolated("benchmarks.engine", "train_pair", family=family, batch=batch,
                         steps=steps, repeats=repeats, device=device)
            ratios = [d / p for d, p in zip(r["dp"], r["plain"])]
            rows.append({"what": f"{family}: train, batch {batch}",
                         "non-private rows/s": median_range(r["plain"], ",.0f"),
                         "DP-SGD rows/s": median_range(r["dp"], ",.0f"),
                         "DP / non-private": median_range(ratios, ".2f"),
                         "peak RSS MB": round(r["peak_rss_mb"])})
        s = isolated("benchmarks.engine", "sample", family=family, rows=1_000_000,
                     device=device, repeats=repeats)
        rows.append({"what": f"{family}: sample 1M rows, seconds",
                     "non-private rows/s": "", "DP-SGD rows/s": "",
                     "DP / non-private": median_range(s["seconds"], ".2f"),
                     "peak RSS MB": round(s["peak_rss_mb"])})
    return (markdown(rows) + f"\n\nMedian (range) of {repeats} interleaved runs per cell, one "
            "process per row; ratios pair each DP run with the non-private run after it.")
