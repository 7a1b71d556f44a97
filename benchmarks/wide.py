"""A wide table against Adult: time per DP-SGD step of the default family, same expected batch.

The wide table is Adult's rows (10,000 of them) with 40 more columns, 20 categorical (3 to 12
categories, each tied to a column of Adult so there is structure to learn) and 20 numeric, and a
job title drawn from 5,000 titles (a Zipf law: a few hundred common, most held by one row), 56
columns in all. The statistics are DP as in a run (noise multiplier 2); the title's rare
categories are pooled by its DP histogram (common/transforms.py). The legs run interleaved in
one process, 5 times each.

Goal (issue 16): the wide table's step at most 2x Adult's.
"""

from __future__ import annotations


from .common import isolated, machine, markdown, median_range  # noqa: F401  (machine: __main__)

ROWS, TITLES, BATCH, STEPS, REPEATS = 10_000, 5_000, 1365, 30, 5


def wide_table():
    import numpy as np
    import pandas as pd

    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TRAIN
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema

    adult_schema = Schema.load(ADULT_SCHEMA)
    adult, _ = load_table(ADULT_TRAIN, adult_schema)
    rng = np.random.default_rng(0)
    df = adult.sample(ROWS, random_state=0).reset_index(drop=True)
    columns = [c.model_dump(exclude_none=True) for c in adult_schema.columns]
    age = df["age"].to_numpy()
    for i in range(20):
        k = 3 + i % 10
        base = pd.factorize(df[["workclass", "education", "occupation", "race"][i % 4]])[0]
        codes = np.where(rng.random(ROWS) < 0.6, base % k, rng.integers(k, size=ROWS))
        cats = [f"c{j}" for j in range(k)]
        df[f"cat{i}"] = np.asarray(cats, dtype=object)[codes]
        columns.append({"name": f"cat{i}", "kind": "categorical", "categories": cats})
        df[f"num{i}"] = np.clip(age * (1 + i / 10) + rng.normal(0, 10, ROWS), 0, 500)
        columns.append({"name": f"num{i}", "kind": "numeric", "lower": 0, "upper": 500})
    titles = [f"title {j}" for j in range(TITLES)]
    zipf = np.minimum(rng.zipf(1.3, ROWS) - 1, TITLES - 1)
    df["job"] = np.asarray(titles, dtype=object)[zipf]
    columns.append({"name": "job", "kind": "categorical", "categories": titles})
    schema = Schema.from_dict({"name": "wide", "target": adult_schema.target, "columns": columns})
    return df, schema, adult, adult_schema


def _job(schema, df, pooled: bool = True):
    import numpy as np

    from synthpool.common.dp_training import DPSGDConfig
    from synthpool.common.generators.registry import DEFAULT_FAMILY, build
    from synthpool.common.stats import collect_stats
    from synthpool.common.transforms import TableTransformer

    stats = collect_stats(schema, df, 2.0, np.random.default_rng(0))
    if not pooled:  # the title's histogram withheld: one token per title, as before pooling
        stats.histograms.pop("job", None)
    t = TableTransformer(schema, stats)
    rows = t.encode(df)
    gen = build(DEFAULT_FAMILY, t, seed=0)
    return gen, rows, DPSGDConfig(STEPS, BATCH / len(rows), 1.0, 1.0), t


def compare() -> dict:
    import torch

    from synthpool.common.dp_training import DPSGDConfig

    torch.manual_seed(0)
    df, schema, adult, adult_schema = wide_table()
    legs = {"adult": _job(adult_schema, adult), "wide": _job(schema, df),
            "wide, title not pooled": _job(schema, df, pooled=False)}
    for gen, rows, dp, _ in legs.values():
        gen.fit_steps(rows, DPSGDConfig(3, dp.sample_rate, 1.0, 1.0))  # warm-up
    ms = {name: [] for name in legs}
    for _ in range(REPEATS):
        for name, (gen, rows, dp, _) in legs.items():
            s = gen.fit_steps(rows, dp)
            ms[name].append(1000 * s.seconds / s.steps)
    shape = {name: {"columns": len(t.blocks) + 1, "one-hot width": t.feature_dim + t.target_dim,
                    "parameters": sum(p.numel() for p in gen.net.parameters())}
             for name, (gen, _, _, t) in legs.items()}
    title = legs["wide"][3].codecs["job"]
    return {"ms": ms, "shape": shape, "title_tokens": title.n_tokens,
            "title_rows_pooled": float(df["job"].isin(title.pooled).mean())}


def run() -> str:
    r = isolated("benchmarks.wide", "compare")
    rows = []
    for name in r["ms"]:
        ratio = [w / a for w, a in zip(r["ms"][name], r["ms"]["adult"])]
        rows.append({"table": name, **r["shape"][name],
                     "DP-SGD ms/step": median_range(r["ms"][name], ".1f"),
                     "x Adult's step": median_range(ratio, ".2f") if name != "adult" else "1"})
    return (markdown(rows) + f"\n\nThe title column ({TITLES:,} categories) has "
            f"{r['title_tokens']} tokens after pooling ({r['title_rows_pooled']:.0%} of rows "
            f"hold a pooled title). Expected batch {BATCH}, {STEPS} steps x {REPEATS} "
            "interleaved repeats, median (range); peak RSS of the process "
            f"{r['peak_rss_mb']:.0f} MB.")
