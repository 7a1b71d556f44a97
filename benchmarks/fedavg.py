"""The federation's arithmetic without its processes, for tuning a family for federated training:

    python -m benchmarks fedavg

The demo's study on Adult (3 sites, each keeping 15% of its rows aside, epsilon 3 per site,
delta 1e-5, 3 rounds x 160 DP-SGD steps) run in one process: merged DP statistics, each site's
DP-SGD job from the global weights with its own noise calibrated for its own rows, plain FedAvg.
What it leaves out (Flower, SecAgg+'s quantization, process start) changes the time, not the
model: at the same settings it gave GB AUC 0.903 and column shapes 0.970 where the real-process
demo gave 0.902 and 0.969. `iid` cuts the rows at random; `skewed` by age bands, as
`synthpool demo --split skewed` does, and then each site's own single-site release (same
epsilon, its rows only) is judged on the same hold-out: the reason to federate. Beside them,
the same classifier trained on each site's REAL rows and on all of them: how much pooling is
worth on that split before any privacy, the most a pooled release could gain over a site alone
if DP cost nothing.
"""

from __future__ import annotations

import statistics

import numpy as np

from .common import isolated, machine, markdown, median_range  # noqa: F401
from .generators import POSITIVE, tables

SITES, ROUNDS, STEPS, EPSILON, DELTA, ASIDE = 3, 3, 480, 3.0, 1e-5, 0.15
# (split, sites, family, hyperparameters, repeats)
JOBS = [
    ("iid", SITES, "autoregressive", {}, 2),
    ("iid", SITES, "autoregressive", {"lr": 0.005, "average": 0.0}, 1),  # the previous default
    ("skewed", SITES, "autoregressive", {}, 2),
    ("skewed", 6, "autoregressive", {}, 2),
]


def site_rows(split: str, n_sites: int = SITES):
    schema, train, test = tables("adult")
    if split == "iid":
        train = train.sample(frac=1, random_state=0)
    else:
        train = train.sort_values("age", kind="stable")
    train = train.reset_index(drop=True)
    per = len(train) // n_sites
    sites = [train.iloc[i * per:(i + 1) * per] for i in range(n_sites)]
    return schema, [s.iloc[:int(len(s) * (1 - ASIDE))] for s in sites], test


def pooled(split: str, family: str, hyperparameters: dict, seed: int = 0,
           n_sites: int = SITES) -> dict:
    import pandas as pd
    import torch

    from synthpool.common.pipeline import Synthesizer
    from synthpool.common.planning import TrainingPlan, dp_sgd_config, preprocessing_noise
    from synthpool.common.stats import collect_stats

    from .referee import independent_floor, judge

    torch.set_num_threads(2)
    schema, sites, test = site_rows(split, n_sites)
    union = pd.concat(sites, ignore_index=True)
    plan = TrainingPlan(steps=STEPS)
    noise = preprocessing_noise(plan, EPSILON, DELTA)
    rng = np.random.default_rng()
    # Merged statistics: the sum of the sites' noisy histograms has sqrt(sites) x one's noise.
    merged = collect_stats(schema, union, noise * np.sqrt(n_sites), rng)
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


def alone(site: int, family: str, seed: int = 0, n_sites: int = SITES) -> dict:
    import torch

    from synthpool.common.synthesis import train_single_site

    from .referee import utility

    torch.set_num_threads(2)
    schema, sites, test = site_rows("skewed", n_sites)
    res = train_single_site(schema, sites[site], epsilon=EPSILON, delta=DELTA, seed=seed,
                            family=family)
    return utility(schema, res.sample(32561), test, POSITIVE)


def real(split: str, n_sites: int) -> dict:
    """The referee's GB AUC trained on each site's real rows, and on all of them."""
    import pandas as pd

    from .referee import utility

    schema, sites, test = site_rows(split, n_sites)
    return {"sites": [utility(schema, rows, test, POSITIVE)["gb_auc"] for rows in sites],
            "all": utility(schema, pd.concat(sites), test, POSITIVE)["gb_auc"]}


def run(jobs=JOBS) -> str:
    rows = []
    blank = {"what": "", "GB AUC": "", "shapes": "", "dependence": "", "kept": "",
             "real rows' GB AUC": ""}
    for split, n_sites, family, hp, repeats in jobs:
        rs = [isolated("benchmarks.fedavg", "pooled", split=split, family=family,
                       hyperparameters=hp, seed=s, n_sites=n_sites) for s in range(repeats)]
        label = family + "".join(f", {k}={v}" for k, v in hp.items())
        rows.append(blank | {"what": f"{n_sites} sites, {split}, pooled: {label}"
                             + (f" (x{repeats})" if repeats > 1 else ""),
                     "GB AUC": median_range([r["gb_auc"] for r in rs]),
                     "shapes": median_range([r["shapes"] for r in rs]),
                     "dependence": median_range([r["dependence"] for r in rs]),
                     "kept": f"{100 * statistics.median(r['dependence_kept'] for r in rs):.0f}%"})
        if split == "skewed":
            ceiling = real(split, n_sites)
            best = 0.0
            for i in range(n_sites):
                r = isolated("benchmarks.fedavg", "alone", site=i, family=family,
                             n_sites=n_sites)
                best = max(best, r["gb_auc"])
                rows.append(blank | {"what": f"site-{i} of {n_sites} alone (skewed slice, "
                                             f"single-site DP, {family})",
                                     "GB AUC": f"{r['gb_auc']:.3f}",
                                     "real rows' GB AUC": f"{ceiling['sites'][i]:.3f}"})
            pooled_auc = statistics.median(r["gb_auc"] for r in rs)
            rows.append(blank | {
                "what": f"{n_sites} sites, skewed: pooled release - best site alone",
                "GB AUC": f"{pooled_auc - best:+.3f}",
                "real rows' GB AUC": f"{ceiling['all']:.3f} all, "
                                     f"{ceiling['all'] - max(ceiling['sites']):+.3f} over the "
                                     "best site"})
    return markdown(rows)
