"""Triastcyn & Faltings' empirical privacy estimate of single-site releases, beside the formal
epsilon:

    python -m benchmarks empirical_privacy

Adult at epsilon 3 (delta 1e-5), `synth`'s pipeline, for each family: the release trained on all
training rows, one trained without 200 of them, and one trained on all rows again (the null), as
`synthpool synth --empirical-privacy` does (common/evaluation/empirical_privacy.py). Two
reference generators frame the numbers: one that releases its rows as they are (the worst case) and one that
draws each column independently from the rows' marginals.
"""

from __future__ import annotations

from .common import isolated, machine, markdown  # noqa: F401

FAMILIES = ["autoregressive", "gan"]
REFERENCES = ["copy", "independent columns"]


def one(generator: str, epsilon: float = 3.0, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from synthpool.common.evaluation.empirical_privacy import estimate
    from synthpool.common.synthesis import train_single_site

    from .generators import tables

    torch.set_num_threads(2)
    schema, train, _ = tables("adult")
    formal = None

    def fit_and_sample(rows, run_seed):
        nonlocal formal
        if generator == "copy":
            return rows.copy()
        if generator == "independent columns":
            rng = np.random.default_rng(run_seed)
            return rows.apply(lambda c: c.iloc[rng.integers(len(c), size=len(c))].to_numpy())
        res = train_single_site(schema, rows, epsilon=epsilon, delta=1e-5, seed=run_seed,
                                family=generator)
        formal = res.spend.epsilon
        return res.sample(len(rows))

    found = estimate(schema, train, fit_and_sample, seed=seed)
    return found | {"formal_epsilon": formal}


def run() -> str:
    rows = []
    for generator in REFERENCES + FAMILIES:
        r = isolated("benchmarks.empirical_privacy", "one", generator=generator)
        for model, b in r["models"].items():
            rows.append({
                "release": generator, "formal epsilon": (f"{r['formal_epsilon']:.2f}"
                                                         if r["formal_epsilon"] else "none"),
                "outcome model": model, "epsilon estimate": f"{b['epsilon_hat']:.3f}",
                "null": f"{b['null']['epsilon_hat']:.3f}",
                "excess": f"{b['epsilon_hat'] - b['null']['epsilon_hat']:+.3f}",
                "mean loss": f"{b['expected_privacy_loss']:.4f}",
                "mean loss SE": f"{b['expected_privacy_loss_se']:.4f}"})
    return markdown(rows)
