"""A site with millions of rows: load and validation, then DP-SGD, against the table's size.

The big tables are Adult resampled with noise (each numeric jittered inside its bounds, so the
rows are not copies), written as a release writes Adult (common/table_io.py). Each phase runs in a fresh interpreter,
so its peak RSS is its own:
- load: parse and validate (common/loading.py, with its byte progress), DP statistics, tokens
  written to a .npy file (what a site caches);
- train: the default family's DP-SGD steps from the memory-mapped tokens, at one expected batch.

Goal (issue 16): the training's peak RSS and its time per step do not grow with the table beyond
the token matrix (2 bytes per column per row, memory-mapped).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from .common import isolated, machine, markdown, median_range  # noqa: F401  (machine: __main__)

SIZES = (32_561, 1_000_000, 5_000_000)
BATCH, STEPS, REPEATS = 1365, 30, 5
WORK = Path(tempfile.gettempdir()) / "synthpool-bench-scale"


def _schema():
    from synthpool.common.bundled import ADULT_SCHEMA
    from synthpool.common.schema import Schema

    return Schema.load(ADULT_SCHEMA)


def make_table(rows: int, path: str) -> dict:
    """Adult resampled to `rows` rows with noise on the continuous numerics."""
    import numpy as np

    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.common.loading import load_table
    from synthpool.common.schema import NumericColumn
    from synthpool.common.table_io import write_table

    schema = _schema()
    df, _ = load_table(ADULT_TRAIN, schema)
    rng = np.random.default_rng(rows)
    big = df.iloc[rng.integers(len(df), size=rows)].reset_index(drop=True)
    for col in schema.columns:
        if not isinstance(col, NumericColumn) or col.point_masses or col.name == "education-num":
            continue  # point masses stay exact; education-num is education's code
        x = big[col.name].to_numpy()
        if col.scale == "log":
            x = x * np.exp(rng.normal(0, 0.05, rows))
        else:
            x = x + rng.normal(0, 0.02 * (col.upper - col.lower), rows)
        x = np.clip(x, col.lower, col.upper)
        big[col.name] = np.round(x) if col.integer else x
    write_table(big, Path(path), schema)
    return {}


def load(path: str, out: str) -> dict:
    import numpy as np

    from synthpool.common.loading import load_table
    from synthpool.common.stats import collect_stats
    from synthpool.common.transforms import TableTransformer

    schema, calls = _schema(), []
    start = time.perf_counter()
    df, _ = load_table(path, schema, progress=lambda done, total: calls.append(done / total))
    loaded = time.perf_counter()
    stats = collect_stats(schema, df, 2.0, np.random.default_rng(0))
    counted = time.perf_counter()
    np.save(out + ".npy", TableTransformer(schema, stats).tokens(df))
    Path(out + ".json").write_text(json.dumps(stats.to_dict()))
    return {"rows": len(df), "load_s": loaded - start, "stats_s": counted - loaded,
            "tokens_s": time.perf_counter() - counted, "progress_lines": len(calls),
            "progress_last": calls[-1] if calls else 0.0}


def train(out: str) -> dict:
    import numpy as np
    import torch

    from synthpool.common.dp_training import DPSGDConfig
    from synthpool.common.generators.registry import DEFAULT_FAMILY, build
    from synthpool.common.stats import TableStats
    from synthpool.common.transforms import TableTransformer

    torch.manual_seed(0)
    schema = _schema()
    stats = TableStats.from_dict(json.loads(Path(out + ".json").read_text()))
    t = TableTransformer(schema, stats)
    gen = build(DEFAULT_FAMILY, t, seed=0)
    rows = t.rows(np.load(out + ".npy", mmap_mode="r"))
    dp = DPSGDConfig(STEPS, BATCH / len(rows), 1.0, 1.0)
    gen.fit_steps(rows, DPSGDConfig(3, dp.sample_rate, 1.0, 1.0))  # warm-up
    ms = []
    for _ in range(REPEATS):
        stats_ = gen.fit_steps(rows, dp)
        ms.append(1000 * stats_.seconds / stats_.steps)
    return {"step_ms": ms}


def run() -> str:
    WORK.mkdir(exist_ok=True)
    out = []
    for n in SIZES:
        csv = WORK / f"adult-{n}.csv"
        if not csv.exists():  # kept between runs: writing 5M rows takes a while
            isolated("benchmarks.scale", "make_table", rows=n, path=str(csv))
        tokens = str(WORK / f"tokens-{n}")
        ld = isolated("benchmarks.scale", "load", path=str(csv), out=tokens)
        tr = isolated("benchmarks.scale", "train", out=tokens)
        out.append({"rows": f"{ld['rows']:,}", "CSV MiB": round(csv.stat().st_size / 2**20),
                    "load + validate s": round(ld["load_s"], 1),
                    "rows/s loaded": f"{ld['rows'] / ld['load_s']:,.0f}",
                    "load peak RSS MiB": round(ld["peak_rss_mb"]),
                    "progress calls": ld["progress_lines"],
                    "tokens MiB": round(Path(tokens + ".npy").stat().st_size / 2**20),
                    "DP-SGD ms/step": median_range(tr["step_ms"], ".1f"),
                    "train peak RSS MiB": round(tr["peak_rss_mb"])})
    return (markdown(out) + f"\n\nDefault family, expected batch {BATCH}, {STEPS} steps x "
            f"{REPEATS} repeats per size (median (range) of ms per step), tokens memory-mapped. "
            "Load: one pass of pyarrow's single-threaded parser, then validation in O(distinct "
            "values) per column; its peak is the parsed table, which the training never holds.")
