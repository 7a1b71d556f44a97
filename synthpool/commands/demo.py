"""`synthpool demo`: a whole federation on this machine, on the bundled Adult data, end to end.

A coordinator (Flower SuperLink + our ServerApp) and N site agents (each `synthpool-agent run`
-> its own SuperNode) start as separate processes on loopback (synthpool/local_federation.py). Each
site holds a different slice of the Adult training rows and a privacy cap in its own site.toml.
The sites release DP histograms, train the study's generator family with DP-SGD for a few
rounds, the coordinator pools the updates and samples a release; each site scores it against its
own rows and the coordinator pools their answers into the release's report (data + report +
manifest, signed).
Because Adult is public, the demo can also do what no real study can: score the release against
the union of the sites' rows and the Adult hold-out (rows no site ever held), in
`adult-test-report/` beside the release.

Everything is stopped by PID on success, failure, Ctrl-C, SIGTERM or the outer timeout.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer
from synthpool.common.cli_paths import path_option
from synthpool.common.threads import usable_cores

from .consoles import stderr_console
from .progress import StageProgress
from .signals import sigterm_as_interrupt

console = stderr_console()

DELTA = 1e-5




def demo(
    out: Path = path_option(Path("demo-out"), "--out", help="Folder for the release, report and "
                                                            "the federation's files."),
    split: str = typer.Option("iid", "--split", help="iid: random slices; skewed: each site "
                                                     "holds a different age band."),
    sites: int = typer.Option(3, "--sites", min=2, max=8, help="Number of sites."),
    epsilon: float = typer.Option(3.0, "--epsilon", help="Epsilon each site spends (its cap)."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Federated rounds."),
    steps: int = typer.Option(160, "--steps-per-round", min=1, help="DP-SGD steps per round."),
    timeout: float = typer.Option(900.0, "--timeout", help="Give up (and stop every process) "
                                                           "after this many seconds of training."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the model's initialisation "
                                               "and sampling (never of the DP noise)."),
    secure: bool = typer.Option(True, "--secure/--insecure",
                                help="TLS on every Flower API and SuperNode authentication: "
                                     "each site makes its key and is enrolled before it joins."),
    secure_aggregation: bool = typer.Option(
        True, "--secure-aggregation/--plain-aggregation",
        help="SecAgg+: the coordinator sees only the mean of the sites' updates (three more "
             "message stages per round)."),
    release_rows: int = typer.Option(0, "--release-rows", min=0,
                                     help="Rows to sample (0: as many as the sites' DP row "
                                          "count)."),
    family: str | None = typer.Option(None, "--family", help="Generator family (the run "
                                                             "config's `family`; default: the "
                                                             "app's)."),
) -> None:
    """Federated DP synthesis of Adult across SITES local processes, evaluated on the hold-out."""
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.local_federation import SiteSpec, split_rows

    if split not in ("iid", "skewed"):
        raise typer.BadParameter("must be 'iid' or 'skewed'", param_hint="--split")
    sigterm_as_interrupt()
    started = time.monotonic()
    work = out / "federation"
    release_dir = out / "release"
    for old in (work, release_dir):  # a demo starts from empty ledgers and no release
        if old.exists():
            shutil.rmtree(old)
    data = split_rows(ADULT_TRAIN, work / "data", sites, split=split, seed=seed)
    threads = max(1, usable_cores() // sites)  # the sites share this machine's cores
    specs = [SiteSpec(f"site-{i}", path, {"adult": (epsilon, DELTA)}, torch_threads=threads,
                      share_scores=True)
             for i, path in enumerate(data)]
    run_config = {
        "study": "adult", "num-rounds": rounds, "local-steps": steps,
        "target-epsilon": epsilon, "target-delta": DELTA, "expected-sites": sites, "min-sites": min(2, sites),
        # Sites share 2 cores here: wait for a slow one rather than drop it.
        "straggler-grace": 180.0, "round-timeout": 600.0, "node-wait-timeout": 120.0,
        "release-dir": str(release_dir.resolve()), "seed": seed, "population": "disjoint",
        "secure-aggregation": secure_aggregation, "release-rows": release_rows,
    }
    if family:
        run_config["family"] = family
    console.print(f"[bold]synthpool demo[/bold]: {sites} sites ({split} split of Adult), "
                  f"epsilon {epsilon:g} per site, {rounds} rounds x {steps} DP-SGD steps"
                  + (", TLS + enrolled SuperNodes" if secure else ", no TLS (loopback)")
                  + (", SecAgg+" if secure_aggregation else ""))
    manifest = federate(work, specs, run_config, rounds, timeout, started, secure=secure)
    trained = time.monotonic() - started
    result = evaluate_release(release_dir, [Path(p) for p in data], manifest, out / "adult-test-report",
                              seed=seed, title=f"synthpool demo: Adult across {sites} sites "
                                                f"({split}), judged on the public Adult hold-out")
    print_summary(manifest, result, release_dir, None, trained, time.monotonic() - started,
                  files=False)
    next_steps(manifest, release_dir, release_key(work).with_suffix(".pub"),
               out / "adult-test-report")


def federate(work: Path, specs, run_config: dict, rounds: int, timeout: float, started: float,
             *, secure: bool) -> dict:
    """The sites and the coordinator as processes on this machine, through to the release;
    returns its manifest. Every process is stopped however it ends; a failure exits with why."""
    from synthpool.local_federation import LocalFederation

    try:
        with LocalFederation(work, specs, tls=secure, node_auth=secure) as fed:
            return run_federation(fed, run_config, rounds, timeout, started)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: every process was stopped")
        raise typer.Exit(130) from None
    except (RuntimeError, TimeoutError) as e:
        console.print(f"[red]the federated run failed[/red]: {e}", markup=True)
        console.print(f"logs: {work / 'logs'}")
        raise typer.Exit(1) from None


def run_federation(fed, run_config: dict, rounds: int, timeout: float, started: float) -> dict:
    """Start the processes, submit the run, follow its events with a progress bar; returns the
    release manifest. Raises on failure or when `timeout` (from `started`) passes."""
    from synthpool.coordinator.admin.release_signing import ReleaseRefused, ReleaseTerms, sign_release
    from synthpool.common.bundled import DEFAULT_SCHEMA, schema_path
    from synthpool.common.schema import Schema

    deadline = started + timeout
    total = rounds + 3  # statistics, rounds, evaluation at the sites, release
    with StageProgress(console, total, "starting the coordinator and the sites") as bar:
        fed.start()
        proc = fed.start_run(run_config)
        bar.update(description="waiting for the sites to connect")
        seen = 0
        while True:
            events = fed.events()
            for e in events[seen:]:
                kind = e["event"]
                if kind == "stats_started":
                    bar.update(description="statistics stage: DP histograms")
                elif kind == "stats_completed":
                    bar.update(completed=1, description=f"round 1/{rounds}")
                elif kind == "round_completed":
                    done = e["round"]
                    bar.update(completed=1 + done,
                               description=f"round {done + 1}/{rounds}" if done < rounds
                               else "sampling the release")
                elif kind == "secagg_stage":
                    bar.update(description=f"round {e['round']}/{rounds}: SecAgg+ "
                                                 f"{e['stage'].replace('_', ' ')}")
                elif kind == "evaluation_started":
                    bar.update(description="the sites score the release against their rows")
                elif kind == "evaluation_completed":
                    bar.update(completed=rounds + 2, description="writing the release")
                elif kind.startswith("site_"):
                    bar.print(f"[yellow]{e.get('site')} {kind[5:]}[/yellow] "
                                      f"(round {e.get('round')}): {e.get('reason', '')}")
                elif kind == "round_failed":
                    bar.print(f"[red]round {e.get('round')} failed[/red]: {e.get('reason')}")
                elif kind == "release_written":
                    bar.update(completed=total, description="release written")
            seen = len(events)
            if proc.popen.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no release after {timeout:.0f} s (--timeout)")
            bar.tick()
            time.sleep(0.5)
    if proc.popen.returncode != 0 or not any(e["event"] == "release_written" for e in fed.events()):
        raise RuntimeError(f"`flwr run` ended with {proc.popen.returncode} and no release; its "
                           f"output:\n{proc.log_tail(3000)}")
    # This process launched the run, so it signs the release; the ServerApp holds no key.
    terms = ReleaseTerms(study=run_config["study"], sites=frozenset(fed.sites),
                         population=run_config["population"],
                         max_rows=int(run_config.get("release-rows", 0)),
                         schema_fingerprint=Schema.load(schema_path(
                             run_config.get("schema", DEFAULT_SCHEMA))).fingerprint())
    try:
        return sign_release(Path(run_config["release-dir"]), release_key(fed.workdir), terms)
    except ReleaseRefused as e:
        raise RuntimeError(str(e)) from None


def release_key(work: Path) -> Path:
    """The local federation's release-signing key (its public half beside it, `.pub`)."""
    return Path(work).resolve() / "coordinator" / "release-key.pem"


def site_rows(paths: list[Path]):
    """The union of the sites' rows (the demo may look at them: it plays every site)."""
    import pandas as pd

    from synthpool.common.bundled import ADULT_SCHEMA
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema

    schema = Schema.load(ADULT_SCHEMA)
    return schema, pd.concat([load_table(p, schema)[0] for p in paths], ignore_index=True)


def evaluate_release(release_dir: Path, site_files: list[Path], manifest: dict, out: Path, *,
                     seed: int, title: str):
    """Score the release against the union of the sites' rows and the Adult hold-out; write
    report.html / report.json into `out` (outside the signed release: only a public data set
    allows this view)."""
    from synthpool.common.bundled import ADULT_TEST
    from synthpool.common.evaluation.evaluate import evaluate
    from synthpool.common.evaluation.report import write_report
    from synthpool.common.evaluation.tables import read_table
    from synthpool.common.loading import load_table

    schema, train = site_rows(site_files)
    holdout, _ = load_table(ADULT_TEST, schema)
    synthetic = read_table(release_dir / manifest["data"]["file"], schema, strict=False)
    p = manifest["privacy"]
    privacy = {"epsilon": p["release"]["epsilon"], "delta": p["release"]["delta"],
               "composition": p["release"]["composition"],
               "per_site": {s: {"epsilon": v["epsilon"], "delta": v["delta"]}
                            for s, v in p["per_site"].items()}}
    with console.status("evaluating the release against the Adult hold-out") as status:
        result = evaluate(schema, train, holdout, synthetic, privacy=privacy, seed=seed,
                          progress=status.update)
        write_report(result, out, title=title)
    return result


def print_summary(manifest: dict, result, release_dir: Path, public_report: Path | None,
                  trained: float, total: float, *, files: bool = True) -> None:
    """Rows, epsilon per site, the sites' verdicts (the release's own report) and, for the
    public Adult data only, utility on the Adult hold-out."""
    p = manifest["privacy"]
    console.print(f"\n[bold]{manifest['data']['rows']} synthetic rows[/bold] in "
                  f"{release_dir / manifest['data']['file']}")
    for site, v in p["per_site"].items():
        console.print(f"  {site}: epsilon {v['epsilon']:.3f} (cap {v['cap']['epsilon']:g}), "
                      f"delta {v['delta']:g}")
    console.print(f"release: epsilon {p['release']['epsilon']:.3f}, delta "
                  f"{p['release']['delta']:g} ({p['release']['composition']})")
    ev = manifest.get("evaluation", {})
    if ev.get("performed"):
        sc = ev["scores"]
        gb = sc["tstr_roc_auc"].get("hist_gradient_boosting", {})
        console.print(f"scored at the sites ({', '.join(ev['sites'])}): overall quality "
                      f"{_fmt(sc['overall_quality'])}, gradient boosting AUC on their set-aside "
                      f"rows {_fmt(gb.get('synthetic'))} (trained on their real rows "
                      f"{_fmt(gb.get('real'))}), worst attack AUC {_fmt(sc['worst_site_attack_auc'])}")
        for site, why in ev["not_evaluated"].items():
            console.print(f"  [yellow]{site} did not score the release[/yellow]: {why}")
    if result is not None:
        gb = result.utility.get("models", {}).get("hist_gradient_boosting", {})
        if gb:
            console.print(f"gradient boosting ROC AUC on the Adult hold-out: trained on synthetic "
                          f"{gb['synthetic']['roc_auc']:.3f}, on the sites' real rows "
                          f"{gb['real']['roc_auc']:.3f}")
        for key in ("useful", "safe", "privacy_spent"):
            console.print(f"{key.replace('_', ' ')}: {result.summary[key]['headline']}")
    if files:
        console.print(f"report: {release_dir / 'report.html'}"
                      + (f" (and {public_report / 'report.html'})" if public_report else "")
                      + f"  (training {trained:.0f} s, total {total:.0f} s)")
    else:
        console.print(f"training {trained:.0f} s, total {total:.0f} s")


def next_steps(manifest: dict, release_dir: Path, public_key: Path,
               public_report: Path | None, *, own_tables: bool = False) -> None:
    """What to open next, the command that checks the signature, and (after the demo) how to
    run the same on one's own tables. Paths as typed here (relative under the working
    directory) and shell-quoted."""
    from .release import shown, verify_command

    public = (f"  (on the public Adult hold-out: {shown(public_report / 'report.html')})"
              if public_report else "")
    console.print("\n[bold]next[/bold]")
    lines = [f"  report:   {shown(release_dir / 'report.html')}{public}",
             f"  data:     {shown(release_dir / manifest['data']['file'])}, manifest "
             f"{shown(release_dir / 'manifest.json')}",
             f"  verify:   {verify_command(release_dir, public_key)}"]
    if not own_tables:
        lines += ["  your own tables: synthpool schema draft --data a.csv --target COLUMN --out "
                  "study.yaml   (then review it)",
                  "                   synthpool simulate --schema study.yaml --site a=a.csv "
                  "--site b=b.parquet --epsilon 3 --out my-study"]
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"
