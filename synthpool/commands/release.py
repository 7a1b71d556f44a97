"""`synthpool release`: check a release folder (anyone holding the coordinator's public key), and
sign one a by-hand run wrote (the coordinator's administrator)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Optional

import typer
from synthpool.common.cli_paths import path_argument, path_option

from .consoles import stderr_console, stdout_console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Inspect and verify releases.")
console = stdout_console()
err = stderr_console()

# Where `synthpool demo` and `synthpool simulate --site` keep the coordinator's key: beside the
# release folder, under federation/coordinator/ (they play the coordinator themselves).
DEMO_KEY = Path("federation") / "coordinator" / "release-key.pub"


@app.callback()
def _group() -> None:
    """Inspect and verify releases."""


@app.command()
def verify(
    folder: Path = path_argument(..., exists=True, file_okay=False, help="The release folder."),
    public_key: Path | None = path_option(
        None, "--public-key", exists=True, dir_okay=False,
        help="The coordinator's Ed25519 public key (PEM), obtained from the coordinator out of "
             "band (never the copy inside a release folder). Required."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check the release's signature and every file's hash; exit 1 on any mismatch."""
    from synthpool.common.signing import load_public_key, verify as check

    if public_key is None:
        err.print(no_key_message(folder), markup=False, highlight=False)
        raise typer.Exit(2)
    result = check(folder, load_public_key(public_key))
    if as_json:
        print(json.dumps({"ok": result.ok, "problems": result.problems,
                          "files_checked": result.files_checked}))
    elif result.ok:
        n = result.files_checked
        console.print(f"OK: signature valid, {n} "
                      + ("file matches its hash" if n == 1 else "files match their hashes")
                      + " (manifest.json and manifest.sig not counted)")
    else:
        console.print("FAILED:", style="red")
        for p in result.problems:
            console.print(f"  {p}", markup=False)
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def sign(
    folder: Path = path_argument(..., exists=True, file_okay=False,
                                 help="The release folder a training you submitted by hand wrote."),
    key: Path = path_option(..., "--key", exists=True, dir_okay=False,
                            help="The coordinator's release-signing key (signing/release.key)."),
    study: str = typer.Option(..., "--study", help="The study you launched."),
    sites: str = typer.Option(..., "--sites", help="Its sites, comma-separated."),
    population: str = typer.Option("overlapping", "--population",
                                   help="How the sites' guarantees compose: overlapping (sum) "
                                        "or disjoint (max), as the run config said."),
    max_rows: int = typer.Option(0, "--max-rows", min=0, help="The most rows it may hold."),
    out: Optional[Path] = path_option(
        None, "--out", file_okay=False,
        help="Copy the release here first and sign the copy: for a folder the SuperLink's "
             "account can still write (separate accounts, deploy/OPERATOR.md)."),
) -> None:
    """Check a release a by-hand run wrote (it is the study's, on its sites, its guarantee what
    its sites' give, only plain files) and sign it. The ServerApp never signs: it runs whatever
    app the SuperLink accepts, so its account holds no key (deploy/OPERATOR.md)."""
    from synthpool.coordinator.admin.release_signing import (
        ReleaseRefused, ReleaseTerms, sign_release, take_release,
    )

    terms = ReleaseTerms(study=study, population=population, max_rows=max_rows,
                         sites=frozenset(s.strip() for s in sites.split(",") if s.strip()))
    try:
        if out is not None:
            if out.exists() and any(out.iterdir()):
                err.print(f"{shown(out)} is not empty: --out takes a new folder", markup=False)
                raise typer.Exit(2)
            folder = take_release(folder, out)
        sealed = sign_release(folder, key, terms)
    except ReleaseRefused as e:
        err.print(str(e), markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"signed: {len(sealed['files'])} files in {shown(folder)}")


def shown(path: Path) -> str:
    """`path` as a user would type it here: relative when under the working directory, shell-quoted."""
    path = Path(path)
    try:
        path = path.relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.quote(os.fspath(path))


def verify_command(folder: Path, public_key: Path) -> str:
    return f"synthpool release verify {shown(folder)} --public-key {shown(public_key)}"


def no_key_message(folder: Path) -> str:
    """Why `verify` needs `--public-key`, and where a demo put the key it made."""
    text = ("synthpool release verify needs --public-key: a release is verified only against a "
            "public key you trust, one you obtained from the coordinator out of band (from its "
            "administrator, by a channel other than the one the release came by), never a key "
            "found inside or beside the release folder, which whoever changed the release could "
            "have replaced too.")
    key = Path(folder).parent / DEMO_KEY
    if key.is_file():
        text += (f"\nThis looks like a release of `synthpool demo` (or `simulate --site`), whose "
                 f"coordinator ran on this machine and wrote its public key to {key}. If you ran "
                 f"it yourself, that key is yours to trust:\n  {verify_command(folder, key)}")
    return text
