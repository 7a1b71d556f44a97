"""The default family's behaviour (its quality at scale is benchmarks/generators.py's business):
it keeps dependence between columns, samples conditionally on the target (a rare class too),
handles every column kind the schema has, and takes its column order from public or DP
information only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthpool.common.generators import registry
from synthpool.common.loading import load_table
from synthpool.common.planning import TrainingPlan
from synthpool.common.schema import Schema
from synthpool.common.stats import collect_stats
from synthpool.common.synthesis import train_single_site
from synthpool.common.transforms import TableTransformer

from tables import make_clinic_table, write_table

PAIRS = {"a": "w", "b": "x", "c": "y", "d": "z"}
SCHEMA = Schema.from_dict({
    "name": "pairs", "target": "label",
    "columns": [
        {"name": "first", "kind": "categorical", "categories": list(PAIRS)},
        {"name": "noise", "kind": "categorical", "categories": ["p", "q", "r"]},
        {"name": "second", "kind": "categorical", "categories": list(PAIRS.values())},
        {"name": "label", "kind": "categorical", "categories": ["common", "rare"]},
    ]})


def pairs_table(n: int, seed: int = 0) -> pd.DataFrame:
    """`second` is a function of `first`; the rare label (5%) almost always has first == 'd'."""
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(n) < 0.05, "rare", "common")
    first = np.where(label == "rare", np.where(rng.random(n) < 0.9, "d", "a"),
                     rng.choice(["a", "b", "c", "d"], size=n, p=[0.4, 0.3, 0.25, 0.05]))
    return pd.DataFrame({"first": first, "noise": rng.choice(["p", "q", "r"], size=n),
                         "second": [PAIRS[f] for f in first], "label": label}, dtype=object)


@pytest.fixture(scope="module", params=["one-hot", "embedding"])
def trained(request):
    """Trained with either context a head can see of the columns before it."""
    df = pairs_table(4000)
    # A generous budget: the model's ability is under test, not the noise.
    res = train_single_site(SCHEMA, df, epsilon=30.0, delta=1e-5, seed=0, device="cpu",
                            plan=TrainingPlan(steps=300, sample_rate=0.1),
                            hyperparameters={"context": request.param})
    assert res.manifest["model"]["context"] == request.param
    return df, res


def test_keeps_a_dependence_between_two_columns(trained):
    _, res = trained
    syn = res.generator.sample(4000, seed=1)
    agree = (syn["second"] == syn["first"].map(PAIRS)).mean()
    assert agree > 0.9, agree  # independent columns would agree about 30% of the time
    assert res.manifest["model"]["family"] == registry.DEFAULT_FAMILY == "autoregressive"


def test_samples_conditionally_on_a_rare_target_class(trained):
    df, res = trained
    rare = res.generator.sample(2000, conditions={"label": "rare"}, seed=2)
    assert set(rare["label"]) == {"rare"}
    assert (rare["first"] == "d").mean() > 0.6  # real rare rows: 90% 'd'; all rows: about 10%
    prior = res.generator.sample(4000, seed=3)
    assert 0.01 < (prior["label"] == "rare").mean() < 0.12  # the DP prior of the real 5%
    with pytest.raises(ValueError, match="only the target"):
        res.generator.sample(10, conditions={"first": "a"})


def test_every_column_kind_round_trips_through_the_schema(tmp_path):
    df, schema = make_clinic_table(3000, seed=11)
    res = train_single_site(schema, df, epsilon=20.0, delta=1e-5, seed=0, device="cpu",
                            plan=TrainingPlan(steps=200, sample_rate=0.1))
    syn = res.generator.sample(3000, seed=4)
    # What comes out passes the same validation as real rows (kinds, bounds, integers, missing).
    syn.insert(0, "patient_id", "P")  # the schema drops it; the loader wants it present
    back, _ = load_table(write_table(syn, tmp_path / "syn.parquet"), schema)
    assert len(back) == 3000
    assert abs((syn["charges"] == 0).mean() - (df["charges"] == 0).mean()) < 0.08  # point mass
    assert (syn["age"] % 1 == 0).all()                                           # integer
    assert 0.02 < syn["smoker"].isna().mean() < 0.2 and 0.02 < syn["bmi"].isna().mean() < 0.2
    assert set(syn["diabetic"].dropna()) <= {True, False}


def test_column_order_comes_from_the_dp_statistics_not_the_rows():
    df, schema = make_clinic_table(2000, seed=1)
    stats = collect_stats(schema, df, 2.0, np.random.default_rng(0))
    other_rows = make_clinic_table(2000, seed=2)[0]
    orders = []
    for rows in (df, other_rows):  # the transformer never sees rows; the order is of the stats
        t = TableTransformer(schema, stats)
        gen = registry.build("autoregressive", t, {"order": "entropy"})
        t.encode(rows)
        orders.append(gen.describe()["column_order"])
    assert orders[0] == orders[1]
    assert orders[0][0] == schema.target and sorted(orders[0]) == sorted(schema.names)
    schema_order = registry.build("autoregressive", TableTransformer(schema, stats)).describe()
    assert schema_order["column_order"] == [schema.target] + [
        n for n in schema.names if n != schema.target]
    assert schema_order["column_order_source"] == "schema"


def test_sampling_draws_what_the_network_predicts_for_the_tokens_drawn_so_far(trained):
    """Sampling sums a head's first-layer weights (or the tokens' embeddings) over the tokens
    drawn so far instead of running the head over the one-hot prefix. Every drawn row, fed back
    through the network as training sees it (teacher forcing), must give each column the
    distribution its token was drawn from: the drawn token lies where the uniform draw falls in that distribution's CDF."""
    import torch

    _, res = trained
    gen = res.generator
    n, seed = 3000, 5
    syn = gen.sample(n, seed=seed)
    # The same uniform draws sample() used (its generator is seeded the same way).
    rng = np.random.default_rng(seed)
    torch_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    from synthpool.common.generators.tokens import target_tokens

    target_tokens(gen.transformer, n, None, rng)
    u = torch.rand(len(gen.order), n, 1, generator=torch_gen)[:, :, 0].t()  # per column
    rows = gen.transformer.encode(syn).dense()
    with torch.inference_mode():
        logits = gen.net.column_logits(gen.net(rows))
    ok = []
    for j, k in enumerate(gen.net.sizes):
        cdf = torch.softmax(logits[j], 1).cumsum(1)
        tok = rows[:, gen.net.perm[gen.net.offsets[j] - 1:gen.net.offsets[j] - 1 + k]].argmax(1)
        below = torch.where(tok > 0, cdf.gather(1, (tok - 1).clamp(min=0)[:, None])[:, 0], 0.0)
        above = cdf.gather(1, tok[:, None])[:, 0]
        ok.append(((below <= u[:, j] + 1e-5) & ((u[:, j] <= above + 1e-5) | (tok == k - 1))))
    share = torch.stack(ok).float().mean().item()
    assert share == 1.0, share


def test_wide_layouts_get_the_embedding_context_and_narrow_ones_the_one_hot():
    """"auto" decides from the layout (schema and DP statistics): a head's one-hot prefix costs
    columns x width, which a wide table cannot afford."""
    from synthpool.common.generators.autoregressive import AutoregressiveHyperparameters as HP
    from synthpool.common.generators.autoregressive import resolved_context

    assert resolved_context(HP(), [2] + [10] * 14) == "one-hot"        # Adult-like: 15 x 10
    assert resolved_context(HP(), [2] + [14] * 55) == "embedding"      # 56 columns x 14
    assert resolved_context(HP(context="one-hot"), [2] + [14] * 55) == "one-hot"
    df, schema = make_clinic_table(300, seed=1)
    t = TableTransformer(schema, collect_stats(schema, df, 2.0, np.random.default_rng(0)))
    assert registry.build("autoregressive", t).describe()["context"] == "one-hot"
