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


def wide_table(rows: int = ROWS):
    import numpy as np
    import pandas as pd

    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TRAIN
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema

    adult_schema = Schema.load(ADULT_SCHEMA)
    adult, _ = load_table(ADULT_TRAIN, adult_schema)
    rng = np.random.default_rng(0)
    df = adult.sample(rows, random_state=0).reset_index(drop=True)
    columns = [c.model_dump(exclude_none=True) for c in adult_schema.columns]
    age = df["age"].to_numpy()
    for i in range(20):
        k = 3 + i % 10
        base = pd.factorize(df[["workclass", "education", "occupation", "race"][i % 4]])[0]
        codes = np.where(rng.random(rows) < 0.6, base % k, rng.integers(k, size=rows))
        cats = [f"c{j}" for j in range(k)]
        df[f"cat{i}"] = np.asarray(cats, dtype=object)[codes]
        columns.append({"name": f"cat{i}", "kind": "categorical", "categories": cats})
        df[f"num{i}"] = np.clip(age * (1 + i / 10) + rng.normal(0, 10, rows), 0, 500)
        columns.append({"name": f"num{i}", "kind": "numeric", "lower": 0, "upper": 500})
    titles = [f"title {j}" for j in range(TITLES)]
    zipf = np.minimum(rng.zipf(1.3, rows) - 1, TITLES - 1)
    df["job"] = np.asarray(titles, dtype=object)[zipf]
    columns.append({"name": "job", "kind": "categorical", "categories": titles})
    schema = Schema.from_dict({"name": "wide", "target": adult_schema.target, "columns": columns})
    return df, schema, adult, adult_schema


def _job(schema, df, pooled: bool = True, hyperparameters: dict | None = None):
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
    gen = build(DEFAULT_FAMILY, t, hyperparameters, seed=0)
    return gen, rows, DPSGDConfig(STEPS, BATCH / len(rows), 1.0, 1.0), t


def compare() -> dict:
    import torch

    from synthpool.common.dp_training import DPSGDConfig

    torch.manual_seed(0)
    df, schema, adult, adult_schema = wide_table()
    legs = {"adult": _job(adult_schema, adult), "wide": _job(schema, df),
            "wide, one-hot context": _job(schema, df, hyperparameters={"context": "one-hot"}),
            "wide, title not pooled": _job(schema, df, pooled=False)}
    for gen, rows, dp, _ in legs.values():
        gen.fit_steps(rows, DPSGDConfig(3, dp.sample_rate, 1.0, 1.0))  # warm-up
    ms = {name: [] for name in legs}
    for _ in range(REPEATS):
        for name, (gen, rows, dp, _) in legs.items():
            s = gen.fit_steps(rows, dp)
            ms[name].append(1000 * s.seconds / s.steps)
    shape = {name: {"columns": len(t.blocks) + 1, "one-hot width": t.feature_dim + t.target_dim,
                    "context": gen.describe()["context"],
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
            f"{r['peak_rss_mb']:.0f} MB.\n\n" + release_quality())


QUALITY = [{}, {"context": "one-hot"}]  # the default (embeddings, chosen by "auto") and before


def release_quality() -> str:
    rows, what = [], "wide table, single site, epsilon 3"
    for hp in QUALITY:
        r = isolated("benchmarks.wide", "quality", hyperparameters=hp)
        rows.append({what: r["context"] + (" (auto)" if not hp else ""),
                     "GB AUC": f"{r['gb_auc']:.3f}", "RF AUC": f"{r['rf_auc']:.3f}",
                     "shapes": f"{r['shapes']:.3f}",
                     "dependence kept": f"{r['dependence_kept']:.0%}"})
    real = isolated("benchmarks.wide", "real_rows")
    rows.append({what: "real rows", "GB AUC": f"{real['gb_auc']:.3f}",
                 "RF AUC": f"{real['rf_auc']:.3f}", "shapes": "1", "dependence kept": "100%"})
    return (markdown(rows) + f"\n\nTrained on {ROWS:,} wide rows, judged on {ROWS:,} held-out "
            "rows of the same construction (the title left out of the judging), one run each.")


def quality(hyperparameters: dict) -> dict:
    """The wide table's single-site release at epsilon 3 (train on ROWS rows, judge on as many
    held-out rows of the same construction), the title left out of the judging: GB AUC,
    shapes and dependence kept."""
    import torch

    from synthpool.common.synthesis import train_single_site

    from .generators import POSITIVE
    from .referee import independent_floor, judge

    torch.set_num_threads(2)
    df, schema, _, _ = wide_table(2 * ROWS)
    train, test = df.iloc[:ROWS], df.iloc[ROWS:]
    res = train_single_site(schema, train, epsilon=3.0, delta=1e-5, seed=0,
                            hyperparameters=hyperparameters)
    judged, cut = _without_title(schema)
    synthetic = res.sample(ROWS)[cut]
    return judge(judged, train[cut], test[cut], synthetic, POSITIVE,
                 independent_floor(judged, train[cut])) | {
        "context": res.manifest["model"]["context"]}


def real_rows() -> dict:
    from .generators import POSITIVE
    from .referee import utility

    df, schema, _, _ = wide_table(2 * ROWS)
    judged, cut = _without_title(schema)
    return utility(judged, df.iloc[:ROWS][cut], df.iloc[ROWS:][cut], POSITIVE)


def _without_title(schema):
    """The schema the referee judges by, and its columns: every column but the job title, whose
    5,000 one-hot columns would swamp the classifiers."""
    judged = schema.model_copy(update={"columns": [c for c in schema.columns if c.name != "job"]})
    return judged, [c.name for c in judged.columns]
