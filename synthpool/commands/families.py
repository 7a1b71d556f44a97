"""`synthpool families`: the generator families installed here and their hyperparameters."""

from __future__ import annotations

import json
import sys

import typer


def families(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the installed generator families (the `synthpool.generators` entry points), each with
    its hyperparameters and their defaults."""
    from synthpool.common.generators import registry

    out = {}
    for name in registry.names():
        cls = registry.family(name)
        out[name] = {"default": name == registry.DEFAULT_FAMILY,
                     "doc": _summary(sys.modules[cls.__module__].__doc__ or cls.__doc__ or ""),
                     "hyperparameters": cls.Hyperparameters().model_dump()}
    if as_json:
        typer.echo(json.dumps(out, indent=1))
        return
    for name, info in out.items():
        typer.echo(f"{name}{' (default)' if info['default'] else ''}: {info['doc']}")
        typer.echo("  " + ", ".join(f"{k}={v}" for k, v in info["hyperparameters"].items()))


def _summary(doc: str) -> str:
    """The first sentence of a module's docstring."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".")
