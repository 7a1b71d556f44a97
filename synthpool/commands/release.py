"""`synthpool release`: check a release folder (anyone holding the coordinator's public key)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from synthpool.common.cli_paths import path_argument, path_option
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Inspect and verify releases.")
console = Console(soft_wrap=True)


@app.callback()
def _group() -> None:
    """Inspect and verify releases."""


@app.command()
def verify(
    folder: Path = path_argument(..., exists=True, file_okay=False, help="The release folder."),
    public_key: Path = path_option(..., "--public-key", exists=True, dir_okay=False,
                                    help="The coordinator's Ed25519 public key (PEM)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check the release's signature and every file's hash; exit 1 on any mismatch."""
    from synthpool.common.signing import load_public_key, verify as check

    result = check(folder, load_public_key(public_key))
    if as_json:
        print(json.dumps({"ok": result.ok, "problems": result.problems,
                          "files_checked": result.files_checked}))
    elif result.ok:
        console.print(f"OK: signature valid, {result.files_checked} files match their hashes")
    else:
        console.print("FAILED:", style="red")
        for p in result.problems:
            console.print(f"  {p}", markup=False)
    raise typer.Exit(0 if result.ok else 1)
