"""`synthpool`: the command line for data owners (schema, synth, evaluate), the demo, and the
coordinator's administrators. Each group lives beside the code it drives; this module only
assembles them."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def main() -> None:
    app()
