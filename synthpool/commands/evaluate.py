"""`synthpool evaluate`: score a synthetic table against real rows and write report.json/.html.

Register in the main CLI with `app.command("evaluate")(evaluate_command)` (or mount `app`).
The real files are read with the project's validating loader: a bad cell there is an error.
The synthetic file is read leniently, because values outside the schema are exactly what the
evaluation should count (boundary adherence, unknown categories), not refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from synthpool.common.cli_paths import path_option
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(stderr=True)


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
    title: str = typer.Option("Synthetic data evaluation", "--title", help="Report title."),
) -> None:
    """Compare SYNTHETIC with REAL and HOLDOUT rows; write an HTML report for people and JSON."""
    from synthpool.common.evaluation.evaluate import evaluate
    from synthpool.common.evaluation.report import write_report
    from synthpool.common.evaluation.tables import read_table
    from synthpool.common.schema import Schema

    try:
        study = Schema.load(schema)
        with console.status("reading tables"):
            train_df = read_table(real, study)
            holdout_df = read_table(holdout, study)
            synthetic_df = read_table(synthetic, study, strict=False)
        guarantee = json.loads(privacy.read_text()) if privacy else None
    except (ValueError, OSError) as e:  # SchemaError, DataError, bad JSON: say what and where
        console.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None

    with console.status("evaluating") as status:

        def progress(message: str) -> None:
            status.update(message)
            console.log(message)

        result = evaluate(study, train_df, holdout_df, synthetic_df, privacy=guarantee, seed=seed,
                          progress=progress)
        paths = write_report(result, out, title=title)
    s = result.summary
    for key in ("useful", "safe", "privacy_spent"):
        console.print(f"[bold]{key.replace('_', ' ')}:[/bold] {s[key]['headline']}")
    console.print(f"report: {paths['html']}\nnumbers: {paths['json']}")


app.command("evaluate")(evaluate_command)
