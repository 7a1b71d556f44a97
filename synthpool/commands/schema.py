"""`synthpool schema`: draft a study schema from a table you hold.

The draft is a starting point, not a finished schema: without --epsilon every category and bound in
it is read from your rows and must be replaced with public values before anyone else sees it; with
--epsilon they are differentially private and the spend is recorded inside the file. Either way the
warnings printed (to stderr, so the YAML on stdout stays clean) say what to review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from synthpool.common.cli_paths import path_option
from rich.markup import escape

from synthpool.common.atomic import atomic_write_text
from synthpool.common.loading import DataError, read_raw
from synthpool.common.schema import CsvOptions, SchemaError
from synthpool.common.schema_draft import draft_schema

from .consoles import stderr_console

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Draft a study schema from a table you hold (review every draft).")


@app.callback()
def _group() -> None:
    """Draft and check study schemas."""  # a callback keeps `draft` a named sub-command


def _default_name(data: str) -> str:
    if "://" in data:
        return "table"
    name = Path(data).name
    for suffix in (".gz", ".csv", ".parquet", ".pq", ".data", ".txt"):
        name = name.removesuffix(suffix)
    return name or "table"


@app.command()
def draft(
    data: str = typer.Option(..., "--data", help="CSV (.gz ok) or Parquet file, or a database "
                             "URL such as sqlite:///site.db (then give --query)."),
    query: Optional[str] = typer.Option(None, "--query", help="SQL selecting the table's columns."),
    target: Optional[str] = typer.Option(None, "--target", help="The class label column."),
    name: Optional[str] = typer.Option(None, "--name", help="Study name (default: the file name)."),
    out: Optional[Path] = path_option(None, "--out", help="Write the YAML here (atomically) "
                                       "instead of to stdout."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", min=0.0, help="Derive bounds and "
                                            "categories with this differential-privacy budget."),
    delta: float = typer.Option(1e-6, "--delta", help="DP delta for the category lists."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Noise seed, for tests only."),
    no_header: bool = typer.Option(False, "--no-header", help="The CSV has no header line; "
                                   "columns are named col0, col1, ..."),
    missing: Optional[list[str]] = typer.Option(
        None, "--missing", help="A CSV cell text that means missing (repeatable; default: the "
        "empty cell)."),
    comment: Optional[str] = typer.Option(None, "--comment", help="CSV lines starting with this "
                                          "are skipped."),
    separator: str = typer.Option(",", "--separator", help="CSV field separator."),
    site: Optional[str] = typer.Option(None, "--site", help="The study site whose table this "
                                       "is: its agent charges a DP draft's spend to its ledger "
                                       "(without --site, every site charges it)."),
) -> None:
    """Draft a schema from DATA and print it as YAML; review it before use."""
    err = stderr_console()
    markers = list(missing) if missing else [""]
    csv = CsvOptions(header=not no_header, separator=separator, missing=markers, comment=comment)
    try:
        df = read_raw(data, query=query, header=csv.header, separator=separator, missing=markers,
                      comment=comment)
        schema, warnings = draft_schema(df, name=name or _default_name(data), target=target,
                                        epsilon=epsilon, delta=delta, seed=seed, csv=csv,
                                        site=site)
    except DataError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    except (ValueError, SchemaError) as e:
        err.print(f"[red]error:[/red] cannot draft a schema: {escape(str(e))}")
        raise typer.Exit(2) from None
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}")
    header = "".join(f"# {line}\n" for line in _comment_lines(warnings))
    text = header + schema.to_yaml()
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        err.print(f"wrote {escape(str(out))} ({len(schema.columns)} columns, "
                  f"{len(schema.drop)} dropped)")


def _comment_lines(warnings: list[str]) -> list[str]:
    """The warnings travel inside the file too, so a reviewer who only sees the YAML sees them."""
    import textwrap

    lines = ["DRAFT made by `synthpool schema draft`: review before use."]
    for w in warnings:
        lines += textwrap.wrap(w, 96, initial_indent="- ", subsequent_indent="  ")
    return lines
