"""What every manifest says the same way: its kind, when, the schema, the model, the versions
of the code that made it. Single-site synthesis and the federated release add their own sections
(training, privacy, data) between them."""

from __future__ import annotations

import platform
import time
from importlib import metadata

from .schema import Schema

PACKAGES = ("synthpool", "torch", "opacus", "flwr", "numpy", "pandas", "scikit-learn")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest(kind: str, schema: Schema, model: dict, **sections) -> dict:
    """A manifest of `kind` with `sections` in the order given. Its creation time is taken when
    it is written, after training: with the files' own times it does not bracket how long
    training took (a timing of private rows)."""
    return {"kind": kind, "created_unix": int(time.time()), "schema": schema.describe(),
            "model": model, **sections, "versions": package_versions()}
