"""The federation's arithmetic without its processes, for tuning a family for federated training:

    python -m benchmarks fedavg

The demo's study on Adult (3 sites, each keeping 15% of its rows aside, epsilon 3 per site,
delta 1e-5, 3 rounds x 160 DP-SGD steps) run in one process: merged DP statistics, each site's
DP-SGD job from the global weights with its own noise calibrated for its own rows, plain FedAvg.
What it leaves out (Flower, SecAgg+'s quantization, process start) changes the time, not the
model: at the same settings it gave GB AUC 0.903 and column shapes 0.970 where the real-process
demo gave 0.902 and 0.969. `iid` cuts the rows at random; `skewed` by age bands, as
`synthpool demo --split skewed` does, and then each site's own single-site release (same
epsilon, its rows only) is judged on the same hold-out: the reason to federate.
"""

from __future__ import annotations

import statistics

import numpy as np

from .common import isolated, machine, markdown, median_range  # noqa: F401
from .generators import POSITIVE, tables

SITES, ROUNDS, STEPS, EPSILON, DELTA, ASIDE = 3, 3, 480, 3.0, 1e-5, 0.15
# (split, family, hyperparameters, repeats)
JOBS = [
    ("iid", "autoregressive", {}, 2),
    ("iid", "autoregressive", {"lr": 0.005, "average": 0.0}, 1),  # the previous default
    ("skewed", "autoregressive", {}, 2),
]


def site_rows(split: str):
    schema, train, test = tables("adult")
    if split == "iid":
        train = train.sample(frac=1, random_state=0)
    else:
        train = train.sort_values("age", kind="stable")
    train = train.reset_index(drop=True)
    per = len(train) // SITES
    sites = [train.iloc[i * per:(i + 1) * per] for i in range(SITES)]
    return schema, [s.iloc[:int(len(s) * (1 - ASIDE))] for s in sites], test


def pooled(split: str, family: str, hyperparameters: dict, seed: int = 0) -> dict:
    import pandas as pd
    import torch

    from synthpool.common.pipeline import Synthesizer
    from synthpool.common.planning import TrainingPlan, dp_sgd_config, preprocessing_noise
    from synthpool.common.stats import collect_stats

    from .referee import independent_floor, judge

    torch.set_num_threads(2)
    schema, sites, test = site_rows(split)
    union = pd.concat(sites, ignore_index=True)
    plan = TrainingPlan(steps=STEPS)
    noise = preprocessing_noise(plan, EPSILON, DELTA)
    rng = np.random.default_rng()
    # Merged statistics: the sum of the sites' noisy histograms has sqrt(sites) x one's noise.
    merged = collect_stats(schema, union, noise * np.sqrt(SITES), rng)
    model = Synthesizer(schema, merged, family, hyperparameters, max_bins=plan.max_bins,
                        seed=seed)
    jobs = []
    for rows in sites:
        own = collect_stats(schema, rows, noise, rng)
        dp = dp_sgd_config(plan, EPSILON, DELTA, own.noisy_rows(), own.mechanisms,
                           steps=STEPS // ROUNDS)
        jobs.append((model.encode(rows), dp))
    for _ in range(ROUNDS):
        start, updates = model.get_weights(), []
        for encoded, dp in jobs:
            model.set_weights(start)
            model.fit(encoded, dp)
            updates.append(model.get_weights())
        model.set_weights([np.mean(ws, axis=0) for ws in zip(*updates)])
    synthetic = model.sample(len(union))
    return judge(schema, union, test, synthetic, POSITIVE, independent_floor(schema, union))


def alone(site: int, family: str, seed: int = 0) -> dict:
    import torch

    from synthpool.common.synthesis import train_single_site

    from .referee import utility

    torch.set_num_threads(2)
    schema, sites, test = site_rows("skewed")
    res = train_single_site(schema, sites[site], epsilon=EPSILON, delta=DELTA, seed=seed,
                            family=family)
    return utility(schema, res.sample(32561), test, POSITIVE)


def run(jobs=JOBS) -> str:
    rows = []
    for split, family, hp, repeats in jobs:
        rs = [isolated("benchmarks.fedavg", "pooled", split=split, family=family,
                       hyperparameters=hp, seed=s) for s in range(repeats)]
        label = family + "".join(f", {k}={v}" for k, v in hp.items())
        rows.append({"what": f"{SITES} sites, {split}, pooled: {label}"
                             + (f" (x{repeats})" if repeats > 1 else ""),
                     "GB AUC": median_range([r["gb_auc"] for r in rs]),
                     "shapes": median_range([r["shapes"] for r in rs]),
                     "dependence": median_range([r["dependence"] for r in rs]),
                     "kept": f"{100 * statistics.median(r['dependence_kept'] for r in rs):.0f}%"})
        if split == "skewed":
            for i in range(SITES):
                r = isolated("benchmarks.fedavg", "alone", site=i, family=family)
                rows.append({"what": f"site-{i} alone (skewed slice, single-site DP, {family})",
                             "GB AUC": f"{r['gb_auc']:.3f}", "shapes": "", "dependence": "",
                             "kept": ""})
    return markdown(rows)
