"""`synthpool evaluate`: score a synthetic table against real rows and write report.json/.html.

Register in the main CLI with `app.command("evaluate")(evaluate_command)` (or mount `app`).
The real files are read with the project's validating loader: a bad cell there is an error, or,
with `--on-invalid drop|clip`, a dropped row or a numeric value clipped to the schema's bounds,
counted per table and column on this console and in the report (the counts stay here).
The synthetic file is read leniently, because values outside the schema are exactly what the
evaluation should count (boundary adherence, unknown categories), not refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from synthpool.common.cli_paths import path_option
from rich.markup import escape

from .consoles import stderr_console

app = typer.Typer(add_completion=False, help=__doc__)
console = stderr_console()


def evaluate_command(
    real: Path = path_option(..., "--real", help="Real rows the generator was trained on.",
                              exists=True, dir_okay=False),
    holdout: Path = path_option(..., "--holdout", help="Real rows the generator never saw.",
                                 exists=True, dir_okay=False),
    synthetic: Path = path_option(..., "--synthetic", help="The synthetic rows to score.",
                                   exists=True, dir_okay=False),
    schema: Path = path_option(..., "--schema", help="The study schema (YAML).",
                                exists=True, dir_okay=False),
    out: Path = path_option(..., "--out", help="Folder for report.json and report.html."),
    seed: int = typer.Option(0, "--seed", help="Seed of subsampling and models."),
    privacy: Path | None = path_option(None, "--privacy", exists=True, dir_okay=False,
                                        help='JSON with the formal guarantee, e.g. '
                                             '{"epsilon": 3, "delta": 1e-5, "per_site": {...}}.'),
    empirical: Path | None = path_option(
        None, "--empirical-privacy", exists=True, dir_okay=False,
        help="The *.empirical-privacy.json that `synthpool synth --empirical-privacy` wrote: "
             "shown beside the formal epsilon, as an estimate."),
    title: str = typer.Option("Synthetic data evaluation", "--title", help="Report title."),
    on_invalid: str = typer.Option(
        "error", "--on-invalid",
        help="What to do with cells of the real and hold-out tables the schema does not allow. "
             "error: stop, naming file, row and column. drop: leave those rows out. clip: set "
             "numeric values outside the schema's bounds to the nearest bound; only that: a "
             "category the schema lacks, text in a number column or a missing value cannot be "
             "clipped and is still an error (use drop for those). Dropped and clipped rows are "
             "counted per table and column, here and in the report."),
) -> None:
    """Compare SYNTHETIC with REAL and HOLDOUT rows; write an HTML report for people and JSON."""
    from synthpool.common.evaluation.evaluate import evaluate
    from synthpool.common.evaluation.report import write_report
    from synthpool.common.evaluation.tables import ON_INVALID, read_checked, read_table
    from synthpool.common.schema import Schema

    if on_invalid not in ON_INVALID:
        raise typer.BadParameter(f"must be one of {', '.join(ON_INVALID)}",
                                 param_hint="--on-invalid")
    try:
        study = Schema.load(schema)
        with console.status("reading tables"):
            train_df, train_read = read_checked(real, study, table="real", on_invalid=on_invalid)
            holdout_df, holdout_read = read_checked(holdout, study, table="holdout",
                                                    on_invalid=on_invalid)
            synthetic_df = read_table(synthetic, study, strict=False)
        guarantee = json.loads(privacy.read_text()) if privacy else None
        if empirical:
            found = json.loads(empirical.read_text())
            # synth records the release's formal epsilon with the estimate it made.
            guarantee = ((guarantee or {"epsilon": found.get("formal_epsilon")})
                         | {"empirical_estimate": found})
    except (ValueError, OSError) as e:  # SchemaError, DataError, bad JSON: say what and where
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    for read in (train_read, holdout_read):
        console.print(escape(read.summary()),
                      style="yellow" if read.rows_dropped or read.rows_clipped else None)

    with console.status("evaluating") as status:

        def progress(message: str) -> None:
            status.update(message)
            console.log(message)

        result = evaluate(study, train_df, holdout_df, synthetic_df, privacy=guarantee, seed=seed,
                          progress=progress)
        # How the real tables were read, for this evaluator's own report only.
        report = result.to_dict() | {"input": {"on_invalid": on_invalid, "tables": [
            train_read.to_dict(), holdout_read.to_dict()]}}
        paths = write_report(report, out, title=title)
    s = result.summary
    for key in ("useful", "safe", "privacy_spent"):
        console.print(f"[bold]{key.replace('_', ' ')}:[/bold] {s[key]['headline']}")
    console.print(f"report: {paths['html']}\nnumbers: {paths['json']}")


app.command("evaluate")(evaluate_command)
