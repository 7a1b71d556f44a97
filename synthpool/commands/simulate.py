"""`synthpool simulate`: a federation on this machine, in one of two ways.

* `--schema study.yaml --site NAME=TABLE ...`: your own tables, one site each, run exactly as
  `synthpool demo` runs Adult (real processes, TLS, SecAgg+, the signed release and the sites'
  evaluation); see synthpool/commands/site_tables.py.
* `--sites N`: N slices of Adult on Flower's simulation engine (Ray), described below.

`--sites N`: the same ServerApp and ClientApp on Flower's simulation engine (Ray).
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
from typing import List, Optional

import typer
from synthpool.common.cli_paths import path_option
from synthpool.common.threads import usable_cores

from .demo import DELTA, console, evaluate_release, print_summary


@dataclass(frozen=True)
class SimulatedSites:
    """Virtual node -> site: the i-th site.toml for partition i. Picklable (Ray ships it)."""

    configs: tuple[str, ...]

    def __call__(self, context):
        from synthpool.agent.site_state import SiteState

        partition = int(context.node_config["partition-id"])
        return SiteState.from_config_path(self.configs[partition])


def simulate(
    sites: Optional[int] = typer.Option(None, "--sites", min=1, max=256,
                                        help="Number of simulated sites, each a slice of Adult "
                                             "(Flower's simulation engine)."),
    site: List[str] = typer.Option(
        [], "--site", metavar="NAME=TABLE",
        help="A site and its table (repeat, one per site): a CSV or Parquet file, or a database "
             "URL with --site-query NAME=SQL. Runs real processes, as `synthpool demo`."),
    site_query: List[str] = typer.Option([], "--site-query", metavar="NAME=SQL",
                                         help="The query selecting a database site's rows."),
    schema: Optional[Path] = path_option(None, "--schema", exists=True, dir_okay=False,
                                         help="The study schema (YAML) of the --site tables "
                                              "(`synthpool schema draft` makes one)."),
    study: Optional[str] = typer.Option(None, "--study", help="With --site: the study's name "
                                                               "(default: the schema's name)."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Federated rounds."),
    steps: int = typer.Option(160, "--steps-per-round", min=1, help="DP-SGD steps per round."),
    epsilon: float = typer.Option(3.0, "--epsilon", help="Epsilon each site spends (its cap)."),
    delta: float = typer.Option(DELTA, "--delta", help="Delta of each site's cap (well below "
                                                       "1/rows)."),
    split: Optional[str] = typer.Option(None, "--split", help="With --sites: iid (default) or "
                                                              "skewed (age bands)."),
    out: Path = path_option(Path("simulate-out"), "--out", help="Folder for sites, checkpoints "
                                                                 "and the release."),
    family: Optional[str] = typer.Option(None, "--family", help="Generator family (the run "
                                                                "config's `family`; default: "
                                                                "the app's)."),
    on_invalid: str = typer.Option("error", "--on-invalid",
                                   help="With --site: error or drop rows with cells the schema "
                                        "does not allow (each site's rule)."),
    population: str = typer.Option("disjoint", "--population",
                                   help="With --site: disjoint (each person at one site: the "
                                        "release's epsilon is the largest site's) or overlap "
                                        "(a person may be at several: they add up)."),
    secure: Optional[bool] = typer.Option(
        None, "--secure/--insecure", help="With --site: TLS on every Flower API and enrolled "
                                          "SuperNodes (default: on)."),
    secure_aggregation: Optional[bool] = typer.Option(
        None, "--secure-aggregation/--plain-aggregation",
        help="With --site: SecAgg+, the coordinator sees only the mean of the sites' updates "
             "(default: on)."),
    site_evaluation: bool = typer.Option(True, "--site-evaluation/--no-site-evaluation",
                                         help="The sites score the release (the release's report)."),
    evaluate: bool = typer.Option(False, "--evaluate/--no-evaluate",
                                  help="With --sites: also score the release against the Adult "
                                       "hold-out."),
    timeout: int = typer.Option(1800, "--timeout", help="Give up after this many seconds."),
    seed: int = typer.Option(0, "--seed"),
    run_config: List[str] = typer.Option([], "--run-config", hidden=True,
                                         help="With --site: KEY=VALUE run config setting."),
) -> None:
    """Run a federation here: your tables (--schema, --site NAME=TABLE ...) as real processes,
    or N slices of Adult (--sites N) on Flower's simulation engine; write the signed release."""
    from synthpool.common.privacy import InvalidBudget, check_budget

    try:  # before a site folder or a site.toml is written
        check_budget(epsilon, delta)
    except InvalidBudget as e:
        raise typer.BadParameter(str(e), param_hint="--epsilon / --delta") from None
    if site:
        given = [flag for flag, value in (("--sites", sites), ("--split", split),
                                          ("--evaluate", evaluate or None)) if value is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: only for the Adult simulation "
                                     "(--sites N), not with --site")
        if schema is None:
            raise typer.BadParameter("--site tables need the study schema: --schema study.yaml "
                                     "(`synthpool schema draft` makes one)", param_hint="--schema")
        from .site_tables import run_on_tables

        run_on_tables(schema_file=schema, site_args=site, query_args=site_query, study=study,
                      epsilon=epsilon, delta=delta, rounds=rounds, steps=steps, out=out,
                      timeout=float(timeout), seed=seed, family=family, on_invalid=on_invalid,
                      population=population, secure=True if secure is None else secure,
                      secure_aggregation=True if secure_aggregation is None else secure_aggregation,
                      site_evaluation=site_evaluation, settings=run_config)
        return
    if sites is None:
        raise typer.BadParameter("give your tables (--schema study.yaml --site NAME=TABLE "
                                 "--site NAME=TABLE ...) or a number of Adult slices (--sites N)",
                                 param_hint="--site / --sites")
    given = [flag for flag, value in (
        ("--site-query", site_query or None), ("--schema", schema), ("--study", study),
        ("--on-invalid", None if on_invalid == "error" else on_invalid),
        ("--population", None if population == "disjoint" else population),
        ("--secure/--insecure", secure), ("--secure-aggregation/--plain-aggregation",
                                          secure_aggregation),
        ("--run-config", run_config or None)) if value is not None]
    if given:
        raise typer.BadParameter(f"{', '.join(given)}: only with --site tables, not with --sites N")
    split = split or "iid"
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    from synthpool.agent.clientapp.app import make_app as make_client_app
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.local_federation import SiteSpec, split_rows, write_site_config
    from synthpool.coordinator.serverapp.release import read_manifest
    from synthpool.coordinator.serverapp.app import make_app as make_server_app
    from synthpool.coordinator.serverapp.run_config import RunConfig

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
        spec = SiteSpec(f"site-{i}", path, {"adult": (epsilon, delta)}, torch_threads=1,
                        share_scores=True)
        site_dir = out / "sites" / spec.name
        configs.append(str(write_site_config(site_dir / "site.toml", spec, site_dir / "state",
                                             "simulation", 9094)))
    run = RunConfig(
        study="adult", checkpoint_dir=str(out / "coordinator" / "checkpoints"),
        num_rounds=rounds, local_steps=steps, target_epsilon=epsilon,
        target_delta=delta, expected_sites=sites,
        min_sites=min(2, sites), node_wait_timeout=60.0, round_timeout=float(timeout),
        straggler_grace=float(timeout), poll_interval=0.2, seed=seed,
        release_dir=str(out / "release"), population="disjoint", evaluate=site_evaluation,
        **({"family": family} if family else {}),
    )
    console.print(f"[bold]synthpool simulate[/bold]: {sites} sites ({split}), epsilon "
                  f"{epsilon:g} per site, {rounds} rounds x {steps} steps, Flower simulation "
                  f"engine (Ray, {usable_cores()} CPUs, one per simulated site at a time)")

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
               "init_args": {"num_cpus": usable_cores(), "include_dashboard": False,
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
