"""Single-site synthesis end to end through the CLI, on a table other than Adult and on Adult."""

import json

import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from synthpool.cli import app
from synthpool.common.loading import load_table
from synthpool.common.planning import TrainingPlan
from synthpool.common.privacy import InvalidBudget
from synthpool.common.schema import Provenance
from synthpool.common.synthesis import train_single_site
from synthpool.common.table_io import manifest_path

from accounting import recompute_epsilon
from tables import make_clinic_table, write_table

runner = CliRunner()


def _recompute_epsilon(manifest: dict) -> float:
    """Independent recomputation with dp-accounting from the manifest's own fields only."""
    return recompute_epsilon(manifest["privacy"])


@pytest.mark.parametrize("out_name", ["synthetic.csv", "synthetic.parquet"])
def test_synth_cli_on_clinic_table(tmp_path, out_name):
    df, schema = make_clinic_table(3000, seed=3)
    src = tmp_path / "clinic.parquet"
    write_table(df, src)
    schema.save(tmp_path / "clinic.yaml")
    out = tmp_path / out_name
    res = runner.invoke(app, ["synth", "--data", str(src), "--schema", str(tmp_path / "clinic.yaml"),
                              "--epsilon", "2", "--delta", "1e-5", "--rows", "1500", "--out", str(out),
                              "--steps", "60", "--seed", "1"])
    assert res.exit_code == 0, res.output
    syn = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
    assert len(syn) == 1500 and list(syn.columns) == schema.names
    # The output validates against the schema it was made from.
    (tmp_path / "back.csv").write_text(syn.to_csv(index=False))
    load_table(tmp_path / "back.csv", schema.model_copy(update={"drop": []}))
    # Missing values are reproduced where the schema allows them (bmi ~8%, smoker ~10%).
    assert 0.02 < syn["bmi"].isna().mean() < 0.2
    assert syn["age"].notna().all()
    manifest = json.loads((tmp_path / "synthetic.manifest.json").read_text())
    eps = manifest["privacy"]["epsilon"]
    assert eps <= 2.0 and eps > 1.9
    assert _recompute_epsilon(manifest) == pytest.approx(eps, rel=1e-9)
    assert manifest["schema"]["fingerprint"] == schema.fingerprint()
    for key in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm"):
        assert key in manifest["training"]
    assert manifest["training"]["steps"] == 60
    assert {"torch", "opacus", "python"} <= set(manifest["versions"])


def test_bad_input_is_reported_without_writing(tmp_path):
    df, schema = make_clinic_table(200, seed=0)
    df["age"] = df["age"].astype(object)
    df.loc[17, "age"] = "old"
    src = tmp_path / "clinic.csv"
    write_table(df, src)
    schema.save(tmp_path / "s.yaml")
    out = tmp_path / "o.csv"
    res = runner.invoke(app, ["synth", "--data", str(src), "--schema", str(tmp_path / "s.yaml"),
                              "--epsilon", "1", "--rows", "10", "--out", str(out)])
    assert res.exit_code == 2
    assert "clinic.csv" in res.output and "age" in res.output and "row 18" in res.output
    assert not out.exists()


def test_schema_dp_draft_spend_is_composed(adult_schema, adult_train):
    schema = adult_schema.model_copy(update={"provenance": [Provenance(mechanism="laplace", epsilon=0.5)]})
    res = train_single_site(schema, adult_train.head(4000), epsilon=2.0, delta=1e-5,
                            plan=TrainingPlan(steps=5), seed=0)
    assert res.spend.epsilon <= 2.0
    assert res.manifest["privacy"]["epsilon_per_mechanism"]["schema: laplace"] == 0.5
    assert _recompute_epsilon(res.manifest) == pytest.approx(res.spend.epsilon)


def test_adult_utility_after_short_dp_training(adult_schema, adult_train, adult_test):
    """A short run (150 of the 480 default steps) at epsilon=3 already learns the label: the
    full-size acceptance (AUC >= 0.87) is measured by benchmarks/."""
    res = train_single_site(adult_schema, adult_train, epsilon=3.0, delta=1e-5,
                            plan=TrainingPlan(steps=150), seed=0)
    syn = res.generator.sample(len(adult_train), seed=1)
    assert res.spend.epsilon <= 3.0
    cats = [c.name for c in adult_schema.columns if c.kind != "numeric" and c.name != "income"]
    both = pd.get_dummies(pd.concat([syn, adult_test]).drop(columns="income"), columns=cats).astype(float)
    xs, xt = both.iloc[:len(syn)], both.iloc[len(syn):]
    clf = HistGradientBoostingClassifier(random_state=0).fit(xs, syn["income"] == ">50K")
    auc = roc_auc_score(adult_test["income"] == ">50K", clf.predict_proba(xt)[:, 1])
    assert auc > 0.84
    # Label balance follows the DP histogram (real: 24%).
    assert abs((syn["income"] == ">50K").mean() - 0.24) < 0.03


def test_token_draws_follow_each_columns_softmax():
    """The sampler's inverse-CDF draw has exactly the softmax's distribution, per column, and
    never leaves a column's block (also for a uniform at the very top of the CDF)."""
    import torch

    from synthpool.common.generators.tokens import draw_tokens

    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5, 3.0, -2.0]])  # blocks of 3, 1 and 2 tokens
    blocks = [(0, 3), (3, 1), (4, 2)]
    n = 200_000
    u = torch.rand(n, 3, generator=gen)
    u[0] = 1.0
    tokens = draw_tokens(logits.expand(n, -1), blocks, u)
    for j, (start, size) in enumerate(blocks):
        freq = torch.bincount(tokens[:, j], minlength=size).double() / n
        want = torch.softmax(logits[0, start:start + size].double(), 0)
        assert freq.shape == (size,)
        assert torch.allclose(freq, want, atol=0.004), (j, freq, want)


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def _as_number(n: int) -> str:
    """`n` written as a number in JSON (1500, 1500.0), not as part of another token."""
    return rf"(?<![\w.]){n}(?:\.0+)?(?![\w.])"


def test_manifest_holds_no_exact_count_and_no_timing(tmp_path):
    """The manifest leaves the owner with the data: only DP estimates and public facts. The
    exact validation summary is printed on the owner's console only."""
    import re

    df, schema = make_clinic_table(3217, seed=4)
    df["age"] = df["age"].astype(object)
    df.loc[[5, 77, 901], "age"] = "old"
    src = tmp_path / "clinic.csv"
    write_table(df, src)
    schema.save(tmp_path / "s.yaml")
    out = tmp_path / "syn.csv"
    res = runner.invoke(app, ["synth", "--data", str(src), "--schema", str(tmp_path / "s.yaml"),
                              "--epsilon", "2", "--delta", "1e-3", "--rows", "100", "--out",
                              str(out), "--steps", "3", "--on-invalid", "drop"])
    assert res.exit_code == 0, res.output
    assert "read 3217 rows" in res.output and "dropped 3 invalid rows (age: 3)" in res.output
    # delta 1e-3 > 1/3214: legal, so a warning, on the console and in the manifest.
    assert "warning: delta 0.001 is above 1/rows" in res.output
    manifest = json.loads(manifest_path(out).read_text())
    assert "above 1/rows" in manifest["privacy"]["warnings"][0]
    keys = set(_keys(manifest))
    assert not {"validation", "rows_per_second", "rows_seen"} & keys
    assert not [k for k in keys if "second" in k], keys
    assert manifest["input"] == {"source": str(src), "on_invalid": "drop"}
    # The DP estimate may equal a count by chance (it is a DP release): every other field must
    # not hold one, nor the source's path.
    estimate = manifest.pop("rows_estimate_dp")
    text = json.dumps(manifest).replace(str(src), "SRC").replace(f"about {estimate} rows", "")
    for exact in (3217, 3214):
        assert not re.search(_as_number(exact), text), exact
    q = manifest["training"]["sample_rate"]
    assert manifest["training"]["expected_batch"] == pytest.approx(q * estimate, abs=q)


@pytest.mark.parametrize("flags, says", [
    (["--delta", "1.5"], "--delta must lie strictly between 0 and 1"),
    (["--delta", "1"], "--delta must lie strictly between 0 and 1"),
    (["--delta", "0"], "--delta must lie strictly between 0 and 1"),
    (["--epsilon", "inf"], "--epsilon must be a finite number > 0"),
])
def test_synth_refuses_a_budget_without_guarantee_before_reading_or_writing(tmp_path, flags, says):
    df, schema = make_clinic_table(50, seed=0)
    schema.save(tmp_path / "s.yaml")
    out = tmp_path / "o.csv"
    # The data path does not exist: the budget is refused before anything is read.
    res = runner.invoke(app, ["synth", "--data", str(tmp_path / "absent.csv"), "--schema",
                              str(tmp_path / "s.yaml"), "--epsilon", "1", "--rows", "10",
                              "--out", str(out), *flags])
    assert res.exit_code == 2 and says in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    with pytest.raises(InvalidBudget, match="delta must lie strictly between 0 and 1"):
        train_single_site(schema, df, epsilon=1.0, delta=1.5, plan=TrainingPlan(steps=1))
    with pytest.raises(InvalidBudget, match="epsilon must be a finite number > 0"):
        train_single_site(schema, df, epsilon=0.0, delta=1e-5, plan=TrainingPlan(steps=1))


def test_seed_help_does_not_claim_to_seed_the_noise():
    res = runner.invoke(app, ["synth", "--help"], terminal_width=200)
    text = " ".join(res.output.replace("│", " ").split())  # help wraps inside a box
    assert "OS entropy" in text and "noise" in text and "sampling and noise" not in text
