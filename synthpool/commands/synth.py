"""`synthpool synth`: a single data owner turns a table into a DP synthetic table + manifest."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer
from synthpool.common.cli_paths import path_option

from synthpool.common.generators import DEFAULT_FAMILY
from synthpool.common.loading import DataError, load_table
from synthpool.common.planning import TrainingPlan
from synthpool.common.privacy import DeltaWarning, InvalidBudget, check_budget
from synthpool.common.schema import Schema, SchemaError
from synthpool.common.table_io import manifest_path, write_json, write_table

from .consoles import stderr_console
from .progress import read_progress, step_progress

err = stderr_console()


def synth(
    data: str = typer.Option(..., "--data", help="CSV/Parquet file or database URL (with --query)."),
    schema_file: Path = path_option(..., "--schema", help="The study schema (YAML)."),
    epsilon: float = typer.Option(..., "--epsilon", min=0.01, help="Total DP epsilon to spend."),
    delta: float = typer.Option(1e-5, "--delta", help="DP delta, strictly between 0 and 1 "
                                                      "(well below 1/rows)."),
    rows: int = typer.Option(..., "--rows", min=1, help="Synthetic rows to write."),
    out: Path = path_option(..., "--out", help="Output .csv, .csv.gz or .parquet."),
    query: Optional[str] = typer.Option(None, "--query", help="SQL query for a database URL."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model's initialisation and of drawing "
                                               "the synthetic rows (published in the manifest). "
                                               "The DP noise and batches never use it: they come "
                                               "from OS entropy."),
    steps: int = typer.Option(TrainingPlan.steps, "--steps", help="DP-SGD steps."),
    on_invalid: str = typer.Option("error", "--on-invalid", help="error or drop invalid rows."),
    family: str = typer.Option(DEFAULT_FAMILY, "--family",
                               help="Generator family (installed: see `synthpool families`)."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", help="KEY=VALUE hyperparameter of the family (repeatable), "
                              "e.g. hidden=128."),
    empirical_privacy: bool = typer.Option(
        False, "--empirical-privacy",
        help="Also estimate the release's privacy loss empirically (Triastcyn & Faltings): "
             "trains the generator twice more (without 200 rows, and again on all), so it takes "
             "about three times as long. Written beside the output for your eyes only "
             "(*.empirical-privacy.json): it is computed from your rows without DP noise, so it "
             "is not part of the manifest; `synthpool evaluate --privacy` shows it beside the "
             "formal epsilon."),
) -> None:
    """Train a DP generator on your table and write synthetic rows plus a manifest."""
    if on_invalid not in ("error", "drop"):
        raise typer.BadParameter("must be 'error' or 'drop'", param_hint="--on-invalid")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("must be auto, cpu or cuda", param_hint="--device")
    try:
        # Before a row is read or a file written: a budget no guarantee can be stated at.
        check_budget(epsilon, delta)
    except InvalidBudget as e:
        err.print(f"error: --{e}", style="red", markup=False)
        raise typer.Exit(2)
    from synthpool.common.generators import registry
    from synthpool.common.generators.registry import model_options
    from synthpool.common.synthesis import train_single_site

    try:
        # Checked before a row is read: nothing is spent on a model that cannot be built.
        hyperparameters = registry.hyperparameters(family, model_options(model or []))
    except ValueError as e:
        err.print(f"error: {e}", style="red", markup=False)
        raise typer.Exit(2)
    try:
        schema = Schema.load(schema_file)
        with read_progress(f"reading {data}") as progress:
            df, report = load_table(data, schema, query=query, on_invalid=on_invalid,
                                    progress=progress)
    except (SchemaError, DataError) as e:
        err.print(f"error: {e}", style="red", markup=False)
        raise typer.Exit(2)
    # The exact counts (rows read, dropped per column) are for the owner's eyes: printed here,
    # never written into the manifest that travels with the release.
    err.print(report.summary(), markup=False)
    if schema.exact_draft_warning():
        err.print(f"warning: {schema.exact_draft_warning()}", style="yellow", markup=False)
    def train(rows, run_seed: int, label: str = "DP-SGD"):
        with step_progress(label, enabled=True) as progress:
            return train_single_site(schema, rows, epsilon=epsilon, delta=delta,
                                     plan=TrainingPlan(steps=steps), device=device,
                                     seed=run_seed, progress=progress, family=family,
                                     hyperparameters=hyperparameters.model_dump())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeltaWarning)
        result = train(df, seed)
    for w in caught:
        if issubclass(w.category, DeltaWarning):
            err.print(f"warning: {w.message}", style="yellow", markup=False)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if result.train is not None and result.train.seconds > 0:
        err.print(f"trained {result.train.steps} DP-SGD steps in {result.train.seconds:.1f} s "
                  "(this console only: the manifest holds no timings)", markup=False)
    # In the table's own vocabulary and column order: spellings, integers, missing markers.
    write_table(result.sample(rows), out, schema, columns=report.columns)
    write_json(result.release_manifest(out.name, rows, report.source, on_invalid),
               manifest_path(out))
    err.print(f"wrote {rows} rows to {out} and {manifest_path(out).name}: "
              f"epsilon={result.spend.epsilon:.3f}, delta={delta:g} (PLD accountant)", markup=False)
    if empirical_privacy:
        _estimate_privacy(schema, df, result, train, out, seed)


def _estimate_privacy(schema, df, result, train, out: Path, seed: int) -> None:
    """The empirical estimate beside the release: the release's own model is the training on all
    rows; the estimator retrains without its records, and on all rows again (the null)."""
    from synthpool.common.evaluation.empirical_privacy import estimate

    def fit_and_sample(rows, run_seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeltaWarning)  # said once, for the release
            return train(rows, run_seed, "DP-SGD (estimate)").sample(len(rows))

    found = estimate(schema, df, fit_and_sample, seed=seed,
                     release=result.sample(len(df)),
                     progress=lambda m: err.print(m, markup=False))
    path = manifest_path(out, "empirical-privacy")
    write_json(found | {"formal_epsilon": result.spend.epsilon}, path)
    if "skipped" in found:
        err.print(f"empirical privacy estimate skipped: {found['skipped']}", markup=False)
        return
    err.print(f"empirical privacy estimate (not a guarantee; yours only, not in the manifest): "
              f"epsilon_hat={found['epsilon_hat']:.3f} at delta_hat={found['delta_hat']:g}, "
              f"against {found['null_epsilon_hat']:.3f} for a second training on the same rows; "
              f"formal epsilon {result.spend.epsilon:.3f}. Written to {path}", markup=False)
