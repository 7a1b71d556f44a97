"""Generator families are plug-ins: a family defined here, in this test module only, is found
through the `synthpool.generators` entry-point group (as a package installed beside synthpool
would declare it) and runs through single-site synthesis and a federation (the coordinator's round
loop driving the sites' real ClientApps), with no other file changed.

The toy family is a real, if weak, model: each column's logits given the target, trained by
DP-SGD like any family, with an update bound of its own (plain SGD, not Adam)."""

from __future__ import annotations

import json
import sys
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import Field
from torch import nn
from typer.testing import CliRunner

from synthpool.common.dp_training import dp_sgd
from synthpool.common.generators import registry
from synthpool.common.generators.base import Generator, Hyperparameters
from synthpool.common.generators.tokens import ColumnLoss, draw_tokens, target_tokens
from synthpool.common.wire import model_setting

TOY = "toy-naive-bayes"
pytestmark = pytest.mark.usefixtures("flower_task_identity")


class ToyHyperparameters(Hyperparameters):
    temperature: float = Field(1.0, gt=0)


class _PerColumn(nn.Module):
    def __init__(self, target_dim: int, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.linear = nn.Linear(target_dim + 1, feature_dim)

    def forward(self, rows):
        ones = torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)
        return self.linear(torch.cat([ones, rows[:, self.feature_dim:]], 1))


class _FeatureLoss(ColumnLoss):
    def __init__(self, blocks, feature_dim):
        super().__init__(blocks)
        self.feature_dim = feature_dim

    def forward(self, logits, rows):
        return self.reduce(self.per_row(logits, rows[:, :self.feature_dim]))


class ToyGenerator(Generator):
    family: ClassVar[str] = TOY
    Hyperparameters: ClassVar[type] = ToyHyperparameters
    training: ClassVar[str] = "DP-SGD (Opacus), one linear layer per column given the target"

    def __init__(self, transformer, hyperparameters, *, seed=0, device="cpu"):
        super().__init__(transformer, hyperparameters, seed=seed, device=device)
        torch.manual_seed(seed)
        self.net = _PerColumn(transformer.target_dim, transformer.feature_dim)
        self.blocks = [(b.start, b.size) for b in transformer.blocks]
        self.loss = _FeatureLoss(self.blocks, transformer.feature_dim)

    @classmethod
    def max_update(cls, hyperparameters, local_steps):
        return 123.0 * local_steps  # its own bound, to see that the federation asks the family

    def fit_steps(self, encoded, dp, progress=None, proximal_mu=0.0):
        return dp_sgd(self.net, self.loss, encoded, dp, lr=self.hp.lr, device=self.device,
                      progress=progress, proximal_mu=proximal_mu)

    @torch.inference_mode()
    def sample(self, n, conditions=None, seed=None):
        t = self.transformer
        rng = np.random.default_rng(self.seed if seed is None else seed)
        y_tok = target_tokens(t, n, conditions, rng)
        y = torch.zeros(n, t.feature_dim + t.target_dim)
        y[torch.arange(n), t.feature_dim + torch.as_tensor(y_tok)] = 1.0
        logits = self.net(y) / self.hp.temperature
        u = torch.as_tensor(rng.random((n, len(self.blocks))), dtype=torch.float32)
        return t.decode(draw_tokens(logits, self.blocks, u).numpy(), y_tok, rng)


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """What `pip install` of a package declaring the entry point leaves on sys.path."""
    dist = tmp_path / "site-packages" / "synthpool_toy-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: synthpool-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[synthpool.generators]\n{TOY} = {__name__}:ToyGenerator\n")
    monkeypatch.syspath_prepend(str(dist.parent))
    assert TOY in registry.names()
    yield
    assert sys.modules[__name__].ToyGenerator is registry.family(TOY)


def test_an_installed_family_is_found_and_validates_its_own_hyperparameters(installed_plugin):
    assert registry.family(TOY) is ToyGenerator
    assert registry.hyperparameters(TOY, '{"temperature": 0.5}').temperature == 0.5
    with pytest.raises(ValueError, match="temperature"):
        registry.hyperparameters(TOY, {"temperature": -1})
    with pytest.raises(ValueError, match="hidden.*[Ee]xtra"):
        registry.hyperparameters(TOY, {"hidden": 3})  # another family's setting is refused
    with pytest.raises(ValueError, match="unknown generator family 'nope'.*toy-naive-bayes"):
        registry.family("nope")


def test_a_plugin_family_runs_single_site_through_synth(installed_plugin, tmp_path):
    from synthpool.cli import app
    from tables import synth_clinic

    result, out, schema = synth_clinic(tmp_path, 1500, 5, "--epsilon", "5", "--rows", "400",
                                       "--steps", "20", "--family", TOY,
                                       "--model", "temperature=0.8")
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["model"]["family"] == TOY
    assert manifest["model"]["hyperparameters"] == {"lr": 2e-3, "average": 0.0, "temperature": 0.8}
    assert manifest["training"]["method"] == ToyGenerator.training
    rows = pd.read_csv(out)
    assert len(rows) == 400 and list(rows.columns) == schema.names
    bad = CliRunner().invoke(app, [
        "synth", "--data", str(tmp_path / "clinic.csv"), "--schema", str(tmp_path / "clinic.yaml"),
        "--epsilon", "5", "--rows", "10", "--out", str(tmp_path / "x.csv"), "--family", TOY,
        "--model", "temperature=-2"])
    assert bad.exit_code == 2 and "temperature" in bad.output
    assert not (tmp_path / "x.csv").exists()


def test_a_plugin_family_federates(installed_plugin, tmp_path, adult_slices):
    from synthpool.coordinator.serverapp import release
    from synthpool.coordinator.serverapp.checkpoint import CheckpointStore
    from synthpool.coordinator.serverapp.study import run_study
    from test_federation_units import FakeGrid, make_run, write_site

    configs = {1: write_site(tmp_path, "a", adult_slices[0]),
               2: write_site(tmp_path, "b", adult_slices[1])}
    run = make_run(tmp_path, num_rounds=2, expected_sites=2, family=TOY,
                   model=model_setting({"temperature": 0.9}))
    assert run.max_update == 123.0 * run.local_steps  # the family's bound, not Adam's
    run_study(FakeGrid(configs), run)
    manifest = release.read_manifest(run.release_path)
    assert manifest["model"]["family"] == TOY
    assert manifest["model"]["hyperparameters"]["temperature"] == 0.9
    assert ToyGenerator.training in manifest["training"]["dp"]
    weights = CheckpointStore(run.checkpoint_dir).load().weights
    assert len(weights) == 2 and weights[0].shape[1] == 1 + 2  # constant + the target's tokens
    data = pd.read_csv(run.release_path / "synthetic.csv")
    assert set(data["income"]) <= {"<=50K", ">50K"} and len(data) == 300


def test_a_site_refuses_a_family_or_setting_it_cannot_build_before_charging(tmp_path, adult_slices):
    from synthpool.agent.ledger import Ledger
    from synthpool.agent.site_state import SiteState
    from synthpool.coordinator.serverapp.run_config import RunConfig

    with pytest.raises(ValueError, match="unknown generator family"):
        RunConfig(study="adult", checkpoint_dir=str(tmp_path), family="not-installed")
    with pytest.raises(ValueError, match="hidden"):
        RunConfig(study="adult", checkpoint_dir=str(tmp_path), model='{"hidden": -4}')
    with pytest.raises(ValueError, match="target-epsilon"):
        RunConfig(study="adult", checkpoint_dir=str(tmp_path), target_epsilon=-1.0)

    from synthpool.agent.clientapp.app import Refusal, _parse

    site = SiteState.from_config_path(
        __import__("test_federation_units").write_site(tmp_path, "a", adult_slices[0]))
    wire = {"study": "adult", "training-id": "t", "round": 0, "num-rounds": 1,
            "family": "autoregressive", "model": '{"depth": 99}'}
    with pytest.raises(Refusal, match="depth"):
        _parse(site, wire, "statistics")
    with pytest.raises(Refusal, match="not installed at this site"):
        _parse(site, {**wire, "family": "not-installed", "model": ""}, "statistics")
    assert Ledger(site.state_dir).charges("adult") == []


@pytest.fixture(scope="module")
def adult_slices(tmp_path_factory):
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.local_federation import split_rows

    return split_rows(ADULT_TRAIN, tmp_path_factory.mktemp("data"), 2, rows_per_site=1000)
