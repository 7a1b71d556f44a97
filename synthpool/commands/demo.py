"""`synthpool demo`: the main job on the bundled Adult data, end to end, with a report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the release and report."),
    epsilon: float = typer.Option(3.0, "--epsilon", help="Epsilon to spend."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthesise the bundled Adult data under DP, then evaluate it on the real hold-out."""
    from synthpool.common.bundled import ADULT_SCHEMA, ADULT_TEST, ADULT_TRAIN
    from synthpool.common.evaluation.evaluate import evaluate
    from synthpool.common.evaluation.report import write_report
    from synthpool.common.loading import load_table
    from synthpool.common.schema import Schema
    from synthpool.common.synthesis import train_single_site
    from synthpool.common.table_io import write_json, write_table

    from .progress import step_progress

    schema = Schema.load(ADULT_SCHEMA)
    train, _ = load_table(ADULT_TRAIN, schema)
    holdout, _ = load_table(ADULT_TEST, schema)
    with step_progress("DP-SGD on Adult") as progress:
        result = train_single_site(schema, train, epsilon=epsilon, delta=1e-5, seed=seed,
                                   progress=progress)
    synthetic = result.generator.sample(len(train), seed=seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    write_table(synthetic, out / "synthetic.csv")
    write_json(result.manifest, out / "synthetic.manifest.json")
    privacy = {"epsilon": result.spend.epsilon, "delta": result.spend.delta}
    with console.status("evaluating against the Adult hold-out") as status:
        report = evaluate(schema, train, holdout, synthetic, privacy=privacy, seed=seed,
                          progress=status.update)
        paths = write_report(report, out, title="synthpool demo: Adult")
    s = report.summary
    console.print(f"{len(synthetic)} synthetic rows, epsilon={result.spend.epsilon:.3f}, delta=1e-5")
    for key in ("useful", "safe", "privacy_spent"):
        console.print(f"{key.replace('_', ' ')}: {s[key]['headline']}")
    console.print(f"report: {paths['html']}")
