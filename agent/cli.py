"""`synthpool-agent`: the command a data owner runs at their site.

    synthpool-agent run --config site.toml       join the federation (caps applied first)
    synthpool-agent ledger --state-dir DIR       what has been spent on this site's rows
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False,
                                    help="The site's site.toml")) -> None:
    """Apply the site's privacy caps to its ledger and run its Flower SuperNode."""
    from . import daemon
    from .config import ConfigError, load_site_config

    try:
        cfg = load_site_config(config)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    try:
        code = daemon.run(cfg)
    except FileNotFoundError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def ledger(state_dir: Path = typer.Option(..., "--state-dir", exists=True, file_okay=False,
                                          help="The site's state dir (holds ledger.sqlite)"),
           study: str = typer.Option(None, help="Only this study"),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Show each study's cap, every charge, and the composed epsilon spent."""
    from .ledger import LEDGER_FILE, Ledger, composed_epsilon

    if not (state_dir / LEDGER_FILE).exists():
        typer.echo(f"{state_dir}: no ledger here ({LEDGER_FILE} missing)", err=True)
        raise typer.Exit(2)
    with Ledger(state_dir) as led:
        studies = [study] if study else led.studies()
        report = []
        for s in studies:
            cap = led.cap(s)
            charges = led.charges(s)
            # Recomposed now at the cap's delta (the stored per-charge numbers used the delta
            # of their day).
            spent = composed_epsilon(led.spent(s)) if cap else \
                (charges[-1].epsilon_after if charges else 0.0)
            report.append({
                "study": s,
                "cap": None if cap is None else {"epsilon": cap.epsilon, "delta": cap.delta},
                "epsilon_spent": spent,
                "charges": [c.to_dict() for c in charges],
            })
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    for item in report:
        cap = item["cap"]
        cap_text = "no cap (nothing may be charged)" if cap is None else \
            f"cap epsilon {cap['epsilon']:g} at delta {cap['delta']:g}"
        typer.echo(f"study {item['study']}: {cap_text}; spent epsilon {item['epsilon_spent']:.3f}")
        for c in item["charges"]:
            mech = ", ".join(f"{m['name']} (sigma {m['noise_multiplier']:.3g}, q "
                             f"{m['sample_rate']:.3g}, {m['steps']} steps)" for m in c["mechanisms"])
            typer.echo(f"  {c['job_id']}: {c['epsilon_before']:.3f} -> {c['epsilon_after']:.3f}"
                       f"  [{mech}]")


def main() -> None:
    app()
