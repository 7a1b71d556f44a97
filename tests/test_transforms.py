import numpy as np
import pandas as pd
import pytest

from synthpool.common.schema import NumericColumn, Schema
from synthpool.common.stats import TableStats, collect_stats, exact_counts, histogram_columns
from synthpool.common.transforms import TableTransformer

from tables import make_clinic_table


def _tokens(t: TableTransformer, df: pd.DataFrame):
    enc = t.encode(df).dense().numpy()
    feats = np.stack([enc[:, b.start:b.start + b.size].argmax(1) for b in t.blocks], axis=1)
    target = enc[:, t.feature_dim:].argmax(1)
    return enc, feats, target


def test_encoding_is_one_hot_per_column(adult_schema, adult_train):
    t = TableTransformer(adult_schema, None)
    enc, _, _ = _tokens(t, adult_train.head(500))
    sums = [enc[:, b.start:b.start + b.size].sum(1) for b in t.blocks]
    assert np.all(np.stack(sums) == 1)
    assert np.all(enc[:, t.feature_dim:].sum(1) == 1)


@pytest.mark.parametrize("which", ["adult", "clinic"])
def test_decode_inverts_encode_exactly_for_labels_and_within_bins(which, adult_schema, adult_train):
    if which == "adult":
        schema, df = adult_schema, adult_train.sample(3000, random_state=0).reset_index(drop=True)
    else:
        df, schema = make_clinic_table(3000, seed=1)
        df = df[schema.names]
    stats = collect_stats(schema, df, noise_multiplier=5.0, rng=np.random.default_rng(0))
    t = TableTransformer(schema, stats)
    _, feats, target = _tokens(t, df)
    back = t.decode(feats, target, np.random.default_rng(1))
    assert list(back.columns) == schema.names
    for col in schema.columns:
        real, syn = df[col.name], back[col.name]
        assert (real.isna() == syn.isna()).all(), col.name
        if isinstance(col, NumericColumn):
            assert syn.dtype == float
            ok = syn.dropna()
            assert ok.between(col.lower, col.upper).all()
            if col.integer:
                assert (ok == ok.round()).all()
            for p in col.point_masses:  # point masses come back exactly
                assert ((real == p) == (syn == p)).all()
            # Re-encoding the decoded value lands in the same token (same bin).
            codec = t.codecs[col.name]
            assert (codec.encode(real) == codec.encode(syn)).all(), col.name
        else:
            assert (real.dropna() == syn.dropna()).all(), col.name
            allowed = set(col.categories) if col.kind == "categorical" else {True, False}
            assert set(syn.dropna()) <= allowed


def test_numeric_bins_follow_dp_histogram_quantiles(adult_schema, adult_train):
    stats = collect_stats(adult_schema, adult_train, 2.0, np.random.default_rng(0))
    t = TableTransformer(adult_schema, stats)
    codec = t.codecs["fnlwgt"]
    tokens = codec.encode(adult_train["fnlwgt"])
    share = np.bincount(tokens, minlength=codec.n_tokens) / len(tokens)
    # Quantile bins: no bin holds much more than its 1/20 share (uniform bins would hold ~all).
    assert share.max() < 0.12
    assert codec.n_bins >= 15


def test_stats_are_noisy_and_merge_by_summing(adult_schema, adult_train):
    rng = np.random.default_rng(0)
    a = collect_stats(adult_schema, adult_train.iloc[:10000], 3.0, rng)
    b = collect_stats(adult_schema, adult_train.iloc[10000:], 3.0, rng)
    merged = TableStats.merge([a, b])
    exact = exact_counts(adult_schema, "income", adult_train["income"])
    assert not np.allclose(a.counts("income"), exact_counts(adult_schema, "income", adult_train["income"].iloc[:10000]))
    assert np.allclose(merged.counts("income"), a.counts("income") + b.counts("income"))
    assert abs(merged.noisy_rows() - len(adult_train)) < 200
    assert np.abs(merged.counts("income") - exact).max() < 100
    assert set(merged.histograms) == set(histogram_columns(adult_schema))
    assert len(merged.mechanisms) == 2


def test_stats_from_other_schema_are_refused(adult_schema, adult_train):
    _, clinic = make_clinic_table(10, seed=0)
    stats = collect_stats(adult_schema, adult_train.head(100), 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="different schema"):
        TableTransformer(clinic, stats)


def test_rows_are_cached_as_small_tokens_and_read_back_memory_mapped(tmp_path, adult_schema,
                                                                       adult_train):
    """A site caches 2 bytes per column per row, not the one-hot floats, and trains from a
    memory map of that cache: the batches must be exactly the one-hots encode() gives."""
    import torch

    from synthpool.common.token_matrix import token_dtype

    rows = adult_train.head(2000)
    t = TableTransformer(adult_schema, None)
    tokens = t.tokens(rows)
    assert tokens.dtype == np.int16 and tokens.shape == (2000, len(adult_schema.names))
    np.save(tmp_path / "tokens.npy", tokens)
    mapped = t.rows(np.load(tmp_path / "tokens.npy", mmap_mode="r"))
    idx = torch.tensor([5, 0, 1999, 5])
    assert torch.equal(mapped[idx], t.encode(rows).dense()[idx])
    assert mapped[idx].shape == (4, t.feature_dim + t.target_dim)
    assert token_dtype(40_000) == np.int32  # a 40k-category column does not wrap around


def test_a_big_code_list_pools_the_categories_its_dp_histogram_cannot_tell_from_noise():
    """2,000 job titles: 20 held by many rows, the rest by one row or none. The common ones keep their
    own token; the rare ones, whose DP counts are within the noise, share one, decoded as one
    of them drawn uniformly. A column under the vocabulary limit gets no histogram at all."""
    rng = np.random.default_rng(0)
    titles = [f"title {i}" for i in range(2000)]
    n, n_rare = 6000, 1800
    job = np.concatenate([rng.integers(20, size=n - n_rare), 20 + rng.permutation(1980)[:n_rare]])
    df = pd.DataFrame({"job": np.asarray(titles, dtype=object)[job],
                       "site": rng.choice(["a", "b"], n).astype(object),
                       "y": rng.choice(["no", "yes"], n).astype(object)})
    schema = Schema.from_dict({"name": "wide", "target": "y", "columns": [
        {"name": "job", "kind": "categorical", "categories": titles},
        {"name": "site", "kind": "categorical", "categories": ["a", "b"]},
        {"name": "y", "kind": "categorical", "categories": ["no", "yes"]}]})
    assert histogram_columns(schema) == ["job", "y"]
    t = TableTransformer(schema, collect_stats(schema, df, 1.0, np.random.default_rng(1)))
    codec = t.codecs["job"]
    # Every common title keeps its own token; a one-row title passes the threshold (set for
    # empty ones) only now and then.
    assert set(titles[:20]) <= set(codec.labels) and len(codec.labels) <= 23
    assert codec.n_tokens == len(codec.labels) + 1 and t.codecs["site"].n_tokens == 2
    tokens = t.tokens(df)
    decoded = t.decode(tokens[:, :2], tokens[:, 2], np.random.default_rng(2))["job"]
    own = df['job'].isin(codec.labels).to_numpy()
    assert (decoded[own] == df["job"][own]).all()
    assert decoded[~own].isin(codec.pooled).all() and decoded[~own].nunique() > 1000
    assert (df['job'] == decoded).mean() > 0.65  # the common 70% exactly, the rest by chance
