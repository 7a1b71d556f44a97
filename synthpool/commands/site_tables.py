"""`synthpool simulate --schema study.yaml --site NAME=TABLE ...`: the demo's federation on your
own tables, one site per table.

The same processes as `synthpool demo` (synthpool/local_federation.py: a SuperLink, one
`synthpool-agent run` per site, TLS and enrolled SuperNodes, SecAgg+ by default), the same run of
`deploy/app` (statistics stage, DP-SGD rounds, the sites' evaluation, the signed release), only
the schema and the tables are yours. Each table is validated with the loader `synth` uses before
any process starts, so a bad cell is reported as `site 'NAME': FILE, row R, column C: ...`.

A TABLE is a CSV (also gzipped) or Parquet file, or a database URL (SQLAlchemy) whose query is
given with `--site-query NAME=SQL`. A site agent reads a file, so a database table is read once,
here, and handed to its site as a Parquet snapshot of the query's result, as stored
(`DIR/federation/data/NAME.parquet`); the site validates it again as it loads it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from synthpool.common.budget import POPULATIONS
from synthpool.common.cli_paths import absolute
from synthpool.common.threads import usable_cores

from .demo import console, federate, next_steps, print_summary, release_key
from .signals import sigterm_as_interrupt

SITE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # agent/config.py's rule for a site's name


@dataclass
class SiteTable:
    name: str
    source: str          # as typed (`~` expanded): what errors name
    query: str | None

    @property
    def is_url(self) -> bool:
        return "://" in self.source


def parse_sites(sites: list[str], queries: list[str]) -> list[SiteTable]:
    """`--site NAME=TABLE` and `--site-query NAME=SQL` -> one SiteTable per site, in order."""
    import os
    import re

    out: dict[str, SiteTable] = {}
    for item in sites:
        name, sep, table = item.partition("=")
        name, table = name.strip(), table.strip()
        if not sep or not name or not table:
            raise typer.BadParameter(f"{item!r}: expected NAME=TABLE (a CSV or Parquet file, or "
                                     "a database URL)", param_hint="--site")
        if not re.match(SITE_NAME, name):
            raise typer.BadParameter(f"site name {name!r}: letters, digits, '_', '.', '-' only, "
                                     "starting with a letter or digit", param_hint="--site")
        if name in out:
            raise typer.BadParameter(f"site {name!r} is given twice", param_hint="--site")
        if "://" not in table:
            table = os.path.expanduser(table)
        out[name] = SiteTable(name, table, None)
    for item in queries:
        name, sep, query = item.partition("=")
        name, query = name.strip(), query.strip()
        if not sep or not name or not query:
            raise typer.BadParameter(f"{item!r}: expected NAME=SQL", param_hint="--site-query")
        if name not in out:
            raise typer.BadParameter(f"no --site {name}=... for this query",
                                     param_hint="--site-query")
        if not out[name].is_url:
            raise typer.BadParameter(f"site {name!r} is a file, not a database URL: a query is "
                                     "only meaningful with a URL", param_hint="--site-query")
        out[name].query = query
    for site in out.values():
        if site.is_url and site.query is None:
            raise typer.BadParameter(f"site {site.name!r} is a database URL: give the query that "
                                     f"selects its rows with --site-query {site.name}=SQL",
                                     param_hint="--site-query")
    return list(out.values())


def validate(sites: list[SiteTable], schema, on_invalid: str) -> None:
    """Every site's table through `load_table` (as `synth` reads it); exit 2 on the first bad
    one, naming the site and, from the loader, the file, row and column."""
    from synthpool.common.loading import DataError, load_table

    for site in sites:
        try:
            _df, report = load_table(site.source, schema, query=site.query,
                                     on_invalid=on_invalid)
        except DataError as e:
            console.print(f"site {site.name!r}: {e}", style="red", markup=False, highlight=False)
            raise typer.Exit(2) from None
        console.print(f"site {site.name!r}: {report.summary()}", markup=False, highlight=False)


def site_file(site: SiteTable, data_dir: Path) -> Path:
    """The file the site's agent reads: the user's own file, or a Parquet snapshot of a query."""
    if not site.is_url:
        return absolute(site.source)
    import pyarrow as pa

    from synthpool.common.loading import DataError, read_raw

    path = data_dir / f"{site.name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        read_raw(site.source, query=site.query).to_parquet(path, index=False)
    except DataError as e:
        console.print(f"site {site.name!r}: {e}", style="red", markup=False)
        raise typer.Exit(2) from None
    except (pa.ArrowException, ValueError, TypeError) as e:
        console.print(f"site {site.name!r}: the query's result cannot be stored as Parquet for "
                      f"the site (a column of mixed types?): {e}", style="red", markup=False)
        raise typer.Exit(2) from None
    return path


def run_on_tables(*, schema_file: Path, site_args: list[str], query_args: list[str],
                  study: str | None, epsilon: float, delta: float, rounds: int, steps: int,
                  out: Path, timeout: float, seed: int, family: str | None, on_invalid: str,
                  population: str, secure: bool, secure_aggregation: bool,
                  site_evaluation: bool, settings: list[str]) -> None:
    from synthpool.common.schema import Schema, SchemaError
    from synthpool.local_federation import SiteSpec
    from synthpool.coordinator.admin.flower_runner import parse_settings

    if on_invalid not in ("error", "drop"):
        raise typer.BadParameter("must be 'error' or 'drop'", param_hint="--on-invalid")
    if population not in POPULATIONS:
        raise typer.BadParameter(f"must be one of {POPULATIONS}", param_hint="--population")
    sites = parse_sites(site_args, query_args)
    if len(sites) < 2:
        raise typer.BadParameter("a federation needs at least two sites (one --site each)",
                                 param_hint="--site")
    try:
        extra = parse_settings(settings)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--run-config") from None
    try:
        schema = Schema.load(schema_file)
    except SchemaError as e:
        console.print(f"error: {e}", style="red", markup=False)
        raise typer.Exit(2) from None
    study = study or schema.name
    work, release_dir = out / "federation", out / "release"
    for site in sites:
        if not site.is_url and any(absolute(site.source).is_relative_to(d)
                                   for d in (work, release_dir)):
            raise typer.BadParameter(f"site {site.name!r}: {site.source} is inside {out}'s "
                                     "federation/ or release/ folder, which a run starts by "
                                     "emptying", param_hint="--site")
    sigterm_as_interrupt()
    started = time.monotonic()
    validate(sites, schema, on_invalid)  # before anything is started or deleted

    for old in (work, release_dir):  # fresh ledgers and no old release, as the demo
        if old.exists():
            shutil.rmtree(old)
    threads = max(1, usable_cores() // len(sites))  # the sites share this machine's cores
    specs = [SiteSpec(s.name, site_file(s, work / "data"), {study: (epsilon, delta)},
                      torch_threads=threads, schema=str(schema_file), on_invalid=on_invalid,
                      share_scores=True)
             for s in sites]
    run_config = {
        "study": study, "schema": str(schema_file), "num-rounds": rounds, "local-steps": steps,
        "target-epsilon": epsilon, "target-delta": delta, "expected-sites": len(sites), "min-sites": 2,
        "straggler-grace": 180.0, "round-timeout": 600.0, "node-wait-timeout": 120.0,
        "release-dir": str(release_dir), "seed": seed, "population": population,
        "secure-aggregation": secure_aggregation, "evaluate": site_evaluation,
        **({"family": family} if family else {}), **extra,
    }
    console.print(f"[bold]synthpool simulate[/bold]: study {study!r} on {len(sites)} sites "
                  f"({', '.join(s.name for s in sites)}), epsilon {epsilon:g} per site, "
                  f"{rounds} rounds x {steps} DP-SGD steps, real processes"
                  + (", TLS + enrolled SuperNodes" if secure else ", no TLS (loopback)")
                  + (", SecAgg+" if secure_aggregation else ""))
    manifest = federate(work, specs, run_config, rounds, timeout, started, secure=secure)
    elapsed = time.monotonic() - started
    print_summary(manifest, None, release_dir, None, elapsed, elapsed, files=False)
    next_steps(manifest, release_dir, release_key(work).with_suffix(".pub"), None,
               own_tables=True)
