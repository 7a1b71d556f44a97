"""The same ServerApp and ClientApp on Flower's simulation engine (Ray): three simulated sites,
the statistics stage, one tiny round, a release. Ray reuses its actors across virtual nodes, so
this also checks that nothing of one site leaks into another through module state: each site's
ledger holds exactly its own charges, and the manifest reports each site's own ledger."""

from __future__ import annotations

import importlib.util

import pytest

from tables import TINY_MODEL

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="flwr[simulation] (Ray) is not installed")

DELTA = 1e-5


@pytest.mark.timeout(500)
def test_simulation_engine_runs_the_same_apps(tmp_path):
    from synthpool.agent.clientapp.app import make_app as make_client_app
    from synthpool.agent.ledger import Ledger
    from synthpool.commands.simulate import SimulatedSites, run_simulation
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.local_federation import SiteSpec, split_rows, write_site_config
    from synthpool.coordinator.serverapp.release import read_manifest
    from synthpool.coordinator.serverapp.app import make_app as make_server_app
    from synthpool.coordinator.serverapp.run_config import RunConfig

    data = split_rows(ADULT_TRAIN, tmp_path / "data", 3, rows_per_site=800)
    configs, caps = [], [1.5, 2.0, 2.5]
    for i, (path, cap) in enumerate(zip(data, caps)):
        spec = SiteSpec(f"site-{i}", path, {"adult": (cap, DELTA)}, torch_threads=1)
        configs.append(str(write_site_config(tmp_path / spec.name / "site.toml", spec,
                                             tmp_path / spec.name / "state", "simulation", 1)))
    run = RunConfig(study="adult", checkpoint_dir=str(tmp_path / "ckpt"), num_rounds=1,
                   local_steps=2, model=TINY_MODEL, release_rows=100,
                   noise_multiplier=0.0, stats_noise_multiplier=0.0, expected_sites=3,
                   min_sites=3, node_wait_timeout=120, round_timeout=240, poll_interval=0.2)
    run_simulation(make_server_app(run), make_client_app(SimulatedSites(tuple(configs))), 3)
    manifest = read_manifest(run.release_path)
    assert manifest["participation"][0]["dropped"] == []
    assert manifest["evaluation"]["sites"] == ["site-0", "site-1", "site-2"]
    assert (run.release_path / "report.html").exists()
    assert sorted(manifest["participation"][0]["sites"]) == ["site-0", "site-1", "site-2"]
    for i in range(3):
        with Ledger(tmp_path / f"site-{i}" / "state") as led:
            jobs = [c.job_id.split("/")[1] for c in led.charges("adult")]
            assert jobs == ["stats", "round-1", "evaluate"]  # the sites scored the release
            assert manifest["privacy"]["per_site"][f"site-{i}"]["epsilon"] == \
                pytest.approx(led.spent("adult").epsilon, rel=1e-9)
            assert led.cap("adult").epsilon == caps[i]
