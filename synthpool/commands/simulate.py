"""`synthpool simulate`: the same ServerApp and ClientApp on Flower's simulation engine (Ray).

For trying many sites on one machine without starting a SuperLink and a SuperNode per site. The
protocol, the ledgers and the release are exactly those of a deployment (`synthpool demo` runs
that); only the transport differs: Flower's Simulation Runtime runs the ServerApp in a thread of
this process and the ClientApp in Ray actors.

Ray reuses an actor for many virtual nodes, so module-level state would leak from one simulated
site to the next. The ClientApp keeps none: every site's ledger, releases and plans live in its own
state dir, and each message resolves its site from the virtual node's `partition-id`
(`SimulatedSites`) exactly as a SuperNode resolves it from its `--node-config`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from synthpool.common.cli_paths import path_option

from .demo import DELTA, _cores, console, evaluate_release, print_summary


@dataclass(frozen=True)
class SimulatedSites:
    """Virtual node -> site: the i-th site.toml for partition i. Picklable (Ray ships it)."""

    configs: tuple[str, ...]

    def __call__(self, context):
        from synthpool.agent.site_state import SiteState

        partition = int(context.node_config["partition-id"])
        return SiteState.from_config_path(self.configs[partition])


def simulate(
    sites: int = typer.Option(..., "--sites", min=1, max=256, help="Number of simulated sites."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Federated rounds."),
    steps: int = typer.Option(160, "--steps-per-round", min=1, help="DP-SGD steps per round."),
    epsilon: float = typer.Option(3.0, "--epsilon", help="Epsilon each site spends (its cap)."),
    split: str = typer.Option("iid", "--split", help="iid or skewed (age bands)."),
    out: Path = path_option(Path("simulate-out"), "--out", help="Folder for sites, checkpoints "
                                                                 "and the release."),
    site_evaluation: bool = typer.Option(True, "--site-evaluation/--no-site-evaluation",
                                         help="The sites score the release (the release's report)."),
    evaluate: bool = typer.Option(False, "--evaluate/--no-evaluate",
                                  help="Also score the release against the Adult hold-out."),
    timeout: int = typer.Option(1800, "--timeout", help="Give up after this many seconds."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train on SITES slices of Adult with Flower's simulation engine; write the release."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from synthpool.agent.client_app import make_app as make_client_app
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.coordinator.federation import SiteSpec, split_rows, write_site_config
    from synthpool.coordinator.release import read_manifest
    from synthpool.coordinator.server_app import StudyRun, make_app as make_server_app

    if split not in ("iid", "skewed"):
        raise typer.BadParameter("must be 'iid' or 'skewed'", param_hint="--split")
    started = time.monotonic()
    out = out.resolve()
    if out.exists():
        for sub in ("sites", "coordinator", "release"):
            shutil.rmtree(out / sub, ignore_errors=True)  # fresh ledgers for a fresh simulation
    data = split_rows(ADULT_TRAIN, out / "sites" / "data", sites, split=split, seed=seed)
    configs = []
    for i, path in enumerate(data):
        spec = SiteSpec(f"site-{i}", path, {"adult": (epsilon, DELTA)}, torch_threads=1)
        site_dir = out / "sites" / spec.name
        configs.append(str(write_site_config(site_dir / "site.toml", spec, site_dir / "state",
                                             "simulation", 9094)))
    run = StudyRun(
        study="adult", checkpoint_dir=str(out / "coordinator" / "checkpoints"),
        num_rounds=rounds, local_steps=steps, target_epsilon=epsilon, expected_sites=sites,
        min_sites=min(2, sites), node_wait_timeout=60.0, round_timeout=float(timeout),
        straggler_grace=float(timeout), poll_interval=0.2, seed=seed,
        release_dir=str(out / "release"), population="disjoint", evaluate=site_evaluation,
    )
    console.print(f"[bold]synthpool simulate[/bold]: {sites} sites ({split}), epsilon "
                  f"{epsilon:g} per site, {rounds} rounds x {steps} steps, Flower simulation "
                  f"engine (Ray, {_cores()} CPUs, one per simulated site at a time)")

    def on_alarm(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"the simulation did not finish within {timeout} s (--timeout)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout)
    try:
        run_simulation(make_server_app(run), make_client_app(SimulatedSites(tuple(configs))),
                       sites)
    except (KeyboardInterrupt, TimeoutError) as e:
        console.print(f"[red]stopped[/red]: {e or 'interrupted'}")
        raise typer.Exit(130 if isinstance(e, KeyboardInterrupt) else 1) from None
    finally:
        signal.alarm(0)
        _shutdown_ray()
    if not (run.release_path / "manifest.json").exists():
        console.print(f"[red]the simulation wrote no release[/red]; events: "
                      f"{Path(run.checkpoint_dir) / 'events.jsonl'}")
        raise typer.Exit(1)
    manifest = read_manifest(run.release_path)
    trained = time.monotonic() - started
    if evaluate:
        public = out / "adult-test-report"
        result = evaluate_release(run.release_path, data, manifest, public, seed=seed,
                                  title=f"synthpool simulate: Adult across {sites} sites")
        print_summary(manifest, result, run.release_path, public, trained,
                      time.monotonic() - started)
        return
    if site_evaluation:
        print_summary(manifest, None, run.release_path, None, trained, time.monotonic() - started)
        return
    p = manifest["privacy"]
    console.print(f"{manifest['data']['rows']} synthetic rows in {run.release_path}; release "
                  f"epsilon {p['release']['epsilon']:.3f} (max over {len(p['per_site'])} sites), "
                  f"{trained:.0f} s")


def run_simulation(server_app, client_app, sites: int) -> None:
    import warnings

    from flwr.simulation import run_simulation as flower_run_simulation

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": _cores(), "include_dashboard": False,
                             "logging_level": "error", "log_to_driver": False}}
    logging.getLogger("flwr").setLevel(logging.INFO)  # Flower's per-message DEBUG lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_simulation's own deprecation notice
        flower_run_simulation(server_app=server_app, client_app=client_app,
                              num_supernodes=sites, backend_config=backend)


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
