"""The empirical privacy estimate of Triastcyn & Faltings: the privacy loss of releasing artificial
data, estimated after training by retraining the generator without some records.

Source: A. Triastcyn and B. Faltings, "Generating Artificial Data for Private Deep Learning"
(arXiv 1803.03148, v1 titled "Generating Differentially Private Datasets Using GANs"; CEUR
Vol-2335, AAAI Spring Symposium PAL 2019), the section on evaluating privacy ("Empirical privacy
estimate"). We could not read the paper's text when writing this, so what follows is their
argument as we understand it, in words, and then which choices are ours.

Their argument:
- The privacy loss of an outcome o of a mechanism M on neighbouring data sets D and D' is the
  random variable L(o) = log P[M(D) = o] / P[M(D') = o] (the standard one, Dwork & Roth). Pure
  epsilon-DP means |L| <= epsilon for every outcome; |L| <= epsilon except with probability delta
  implies (epsilon, delta)-DP.
- Its expectation under o ~ M(D) is the Kullback-Leibler divergence KL(M(D) || M(D')).
- The outcome that matters is what a user gets from the artificial data: a model trained on it,
  seen through its predictive distribution on the records.
- From an estimated mean mu and standard deviation sigma of L, Chebyshev's inequality
  P(|L - mu| >= k sigma) <= 1/k^2 with k = 1/sqrt(delta_hat) gives L <= mu + sigma/sqrt(delta_hat)
  except with probability delta_hat: a DP-like (epsilon_hat, delta_hat) pair that holds on
  average (Triastcyn later called the notion average-case DP), not in the worst case.

What `estimate` does (the choices marked "ours" are not taken from the paper):
1. S = `records` rows of the training data drawn at random (ours: 200 by default);
   D = the training data, D' = D without S. S is removed TOGETHER (ours, for cost: one retraining
   instead of one per record), so the loss measured is that of a group of |S| records, larger in
   expectation than one record's: the estimate leans high.
2. The generator is trained on D and on D' and each is sampled: two releases. One training each
   (ours, for cost), so the mu and sigma below are themselves noisy estimates.
3. An outcome model is trained on each release to predict the schema's target from the other
   columns, and its predictive distributions p(.|x) (from D's release) and q(.|x) (from D''s) are
   taken on the records x of S. Two outcome models (ours): a logistic regression, what an
   analyst typically fits on a release, and a 5-nearest-neighbour class frequency, which sees
   memorised rows that a linear model averages away. Features are the evaluation's PUBLIC,
   schema-driven encoding (`encoding.Encoder`), so nothing about the records leaks in through it.
4. For each record, with y ~ p(.|x), L(y) = log p(y|x) - log q(y|x): its mean is KL(p || q) and
   its second moment sum_y p(y|x) L(y)^2, both exact sums over the target's categories.
   Probabilities are floored at PROB_FLOOR = 1e-6 and renormalised first (ours), so an outcome
   impossible under one release but not the other has a finite loss; this caps |L| at about
   log(1/PROB_FLOOR) = 13.8 nats, so a huge loss reads as ~13.8, never as infinity.
5. Records are pooled (ours): L over (record drawn uniformly from S, y ~ p(.|x)) is a mixture,
   mu = mean over records of KL, sigma^2 = mean of second moments - mu^2. Chebyshev as above on
   these plug-in values, with no confidence correction for their estimation error (ours).
6. A null (ours): the generator trained on D a second time, with another seed, and the same bound
   of p against that release. It is the part of the estimate that is only run-to-run randomness of
   training (DP noise, initialisation, sampling), which a reader compares the estimate against:
   an estimate near its null says the records' presence is not distinguishable from a re-run.

What the result is: an average-case estimate on THIS data set, for THIS outcome model, from one
draw of each training. What it is NOT: a differential-privacy guarantee, or an upper bound on the
formal epsilon (the spread can be underestimated from one draw; the people most at risk are
averaged in with everyone else; another outcome model could see more). The formal (epsilon, delta)
of the training is the guarantee; this number only says how much of it a typical record's presence
visibly used, as seen by one kind of analyst.

Pure numpy/pandas/sklearn: the generator comes in as a callable, so this module imports none.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

from ..grids import category_codes, column_labels
from ..schema import Schema
from .encoding import Encoder

DELTAS = (0.1, 0.05, 0.01)
HEADLINE_DELTA = 0.05
PROB_FLOOR = 1e-6
OUTCOME_MODELS = ("logistic", "neighbours")
NEIGHBOURS = 5
JEFFREYS = 0.5

SOURCE = ('A. Triastcyn and B. Faltings, "Generating Artificial Data for Private Deep Learning" '
          "(arXiv 1803.03148; PAL 2019, CEUR Vol-2335), section on evaluating privacy "
          '("Empirical privacy estimate")')


# -- the privacy loss and its bound ---------------------------------------------------------------
def _floored(p: np.ndarray) -> np.ndarray:
    p = np.maximum(np.asarray(p, float), PROB_FLOOR)
    return p / p.sum(axis=1, keepdims=True)


def privacy_loss_moments(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p, q: (records x classes) predictive distributions of the outcome model trained on the
    release from D and from D'. Per record, with L(y) = log p(y) - log q(y) and y ~ p:
    (E[L], E[L^2]) = (KL(p || q), sum_y p(y) L(y)^2).

    Both are first floored at PROB_FLOOR and renormalised, so the logs stay finite: this caps |L|
    at about log(1/PROB_FLOOR) = 13.8 nats (a class one release never predicts and the other does
    reads as a loss of ~13.8, not infinity)."""
    p, q = _floored(p), _floored(q)
    if p.shape != q.shape:
        raise ValueError(f"p and q differ in shape: {p.shape} vs {q.shape}")
    loss = np.log(p) - np.log(q)
    return (p * loss).sum(axis=1), (p * loss ** 2).sum(axis=1)


def chebyshev_epsilon(mu: float, sigma: float, delta_hat: float) -> float:
    """The epsilon_hat that two-sided Chebyshev gives for probability delta_hat:
    P(|L - mu| >= sigma / sqrt(delta_hat)) <= delta_hat, so L <= mu + sigma / sqrt(delta_hat) except
    with probability delta_hat. Clamped at 0 (a negative bound says nothing more than 0 does)."""
    return max(0.0, mu + sigma / math.sqrt(delta_hat))


def bound(first: np.ndarray, second: np.ndarray, deltas=DELTAS) -> dict:
    """Chebyshev bound from per-record moments (`privacy_loss_moments`).

    Records are pooled: L over (a record of S drawn uniformly, an outcome drawn from p) is a
    mixture, whose mean is the mean of the per-record means and whose variance is the mean of the
    second moments minus the squared mean (clamped at 0 against rounding). The standard error is
    that of mu across records only: the randomness of training is what the null measures."""
    first, second = np.asarray(first, float), np.asarray(second, float)
    mu = float(first.mean())
    sigma = float(math.sqrt(max(0.0, float(second.mean()) - mu ** 2)))
    se = float(first.std(ddof=1) / math.sqrt(first.size)) if first.size > 1 else float("nan")
    return {
        "expected_privacy_loss": mu,
        "expected_privacy_loss_se": se,
        "std": sigma,
        "epsilon_hat": chebyshev_epsilon(mu, sigma, HEADLINE_DELTA),
        "delta_hat": HEADLINE_DELTA,
        "bounds": [{"delta_hat": d, "epsilon_hat": chebyshev_epsilon(mu, sigma, d)} for d in deltas],
    }


# -- the outcome: a model trained on a release ----------------------------------------------------
def outcome_predictions(schema: Schema, synthetic: pd.DataFrame, records: pd.DataFrame,
                        model: str, seed: int = 0) -> np.ndarray:
    """Train the outcome model on the synthetic rows to predict schema.target from the other
    columns and return its predictive distribution on `records`, (len(records) x categories),
    columns in the schema's order of the target's categories.

    Features: `Encoder` over the non-target columns (public, schema-driven: no statistic of either
    table enters it). Synthetic rows with a missing or unknown target are left out of training.
    Classes absent from the synthetic rows get probability 0 (before the floor of
    `privacy_loss_moments`): an analyst's model trained on the release cannot predict them.
    - "logistic": LogisticRegression (lbfgs, max_iter=1000): deterministic for given rows, so two
      identical releases give identical predictions and a zero loss.
    - "neighbours": class frequencies among the NEIGHBOURS=5 nearest synthetic rows (Euclidean on
      the encoding), plus 0.5 per class present in the release (Jeffreys), so that no present
      class gets probability 0 from five votes. A memorised row is its own nearest neighbour and
      votes for its own label, which a linear model averages away.
    If the release has no usable target at all, the prediction is uniform (nothing was learnt);
    if it has one class only, that class gets probability 1."""
    if model not in OUTCOME_MODELS:
        raise ValueError(f"unknown outcome model {model!r}; one of {OUTCOME_MODELS}")
    if schema.target is None:
        raise ValueError("the schema names no target")
    labels = column_labels(schema.column(schema.target))
    enc = Encoder(schema, [c for c in schema.names if c != schema.target])
    y = category_codes(synthetic[schema.target], labels)
    keep = y >= 0
    x_syn, y = enc.transform(synthetic.iloc[np.flatnonzero(keep)]), y[keep]
    x_rec = enc.transform(records)

    out = np.zeros((len(records), len(labels)))
    present = np.unique(y)
    if present.size == 0:
        out[:] = 1.0 / len(labels)
        return out
    if present.size == 1:
        out[:, present[0]] = 1.0
        return out
    if model == "logistic":
        clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x_syn, y)
        out[:, clf.classes_] = clf.predict_proba(x_rec)
        return out
    k = min(NEIGHBOURS, len(x_syn))
    # sklearn's NearestNeighbors, not neighbours.Index: the class votes need the neighbours'
    # indices, which Index does not expose (it serves distances only).
    _, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x_syn).kneighbors(x_rec)
    votes = np.zeros_like(out)
    np.add.at(votes, (np.repeat(np.arange(len(records)), k), y[idx].ravel()), 1.0)
    out[:, present] = (votes[:, present] + JEFFREYS) / (k + JEFFREYS * present.size)
    return out


# -- the procedure --------------------------------------------------------------------------------
def estimate(schema: Schema, train: pd.DataFrame,
             fit_and_sample: Callable[[pd.DataFrame, int], pd.DataFrame], *,
             records: int = 200, seed: int = 0, models=OUTCOME_MODELS, null: bool = True,
             release: pd.DataFrame | None = None,
             progress: Callable[[str], None] | None = None) -> dict:
    """Triastcyn & Faltings' empirical privacy estimate of the release that `fit_and_sample`
    makes (see the module's docstring for the argument and which choices are ours).

    `fit_and_sample(rows, seed)` trains the generator on `rows` with `seed` and returns its
    synthetic table. It is called two times, three with `null`:
        release   = fit_and_sample(D, seed)        trained on D
        release'  = fit_and_sample(D', seed + 1)   trained on D without S (|S| = `records`)
        release'' = fit_and_sample(D, seed + 2)    trained on D again: the null
    For each outcome model, p = its predictions on S trained on release, q on release' (q'' on
    release''), and the Chebyshev bound of the privacy loss of p against q (and, as "null", of p
    against q'').

    The result is an average-case estimate on THIS data set, for THIS outcome model, from one draw
    of each training (so mu and sigma are noisy): not a DP guarantee, not an upper bound on the
    formal epsilon, and the people most at risk are averaged in. S is removed together, so it is a
    group's loss and leans high. The formal (epsilon, delta) of the training is the guarantee.

    `release`: the synthetic table already made from D, if there is one (one training fewer).

    Returns {"skipped": reason} when the schema has no target (no outcome model to train) or
    `train` has fewer than 2 * `records` rows (D' would be mostly gone)."""
    if schema.target is None:
        return {"skipped": "the schema names no target, so there is no outcome model to train"}
    if len(train) < 2 * records:
        return {"skipped": f"needs at least {2 * records} training rows to remove {records}; "
                           f"has {len(train)}"}
    unknown = [m for m in models if m not in OUTCOME_MODELS]
    if unknown:
        raise ValueError(f"unknown outcome models {unknown}; choose from {OUTCOME_MODELS}")
    say = progress or (lambda _msg: None)

    rng = np.random.default_rng(seed)
    d = train.reset_index(drop=True)
    removed = np.zeros(len(d), bool)
    removed[rng.choice(len(d), records, replace=False)] = True
    s, d_prime = d[removed], d[~removed].reset_index(drop=True)

    # Copies: a generator that edits its input in place must not change D for the next training.
    if release is None:
        say(f"empirical privacy: training on all {len(d):,} rows")
        release = fit_and_sample(d.copy(), seed)
    say(f"empirical privacy: training without {records} of them")
    release_prime = fit_and_sample(d_prime, seed + 1)
    release_null = None
    if null:
        say("empirical privacy: training on all rows again (the null)")
        release_null = fit_and_sample(d.copy(), seed + 2)

    results = {}
    for name in models:
        say(f"empirical privacy: outcome model {name}")
        p = outcome_predictions(schema, release, s, name, seed)
        q = outcome_predictions(schema, release_prime, s, name, seed)
        results[name] = bound(*privacy_loss_moments(p, q))
        if release_null is not None:
            q_null = outcome_predictions(schema, release_null, s, name, seed)
            results[name]["null"] = bound(*privacy_loss_moments(p, q_null))

    return {
        "method": "empirical privacy estimate (Triastcyn & Faltings): Chebyshev bound on the "
                  "privacy loss between outcome models trained on a release from D and one from "
                  f"D' = D without {records} records",
        "source": SOURCE,
        "records": int(records),
        "removed_together": True,
        "training_rows": int(len(d)),
        "models": results,
        "epsilon_hat": max(r["epsilon_hat"] for r in results.values()),
        "delta_hat": HEADLINE_DELTA,
        "null_epsilon_hat": (max(r["null"]["epsilon_hat"] for r in results.values())
                             if release_null is not None else None),
        "assumptions": [
            "average-case on this data set and these outcome models: not a DP guarantee and not "
            "an upper bound on the formal epsilon, which is the guarantee",
            f"{records} records removed together: a group's loss, larger than one record's",
            "one training per data set: the mean and spread of the loss are themselves noisy; "
            "compare with the null (a second training on D)",
            "the most exposed records are averaged in with the rest",
            f"probabilities floored at {PROB_FLOOR:g}: |L| is capped at about "
            f"{math.log(1 / PROB_FLOOR):.1f} nats",
            "Chebyshev on the plug-in mean and standard deviation, without a confidence correction",
        ],
    }
