"""Releases are signed by the process that launched the training, never by the ServerApp.

The ServerApp runs whatever app the SuperLink's Control API accepts, and in Flower 1.42 that API
has no authentication: any local user of the coordinator host can submit one, and its ServerApp
runs as the SuperLink's account. So that account holds no signing key (deploy/OPERATOR.md,
"Threat model"). The ServerApp writes the release unsigned; the launcher (the admin daemon's
runner, or the local harness behind `demo` and `simulate`) checks that the folder is a release
of the study it launched, on that study's sites and terms, and only then seals it
(common/signing.py), which also refuses symbolic links and anything that is not a plain file.

What the checks cannot catch: the per-site epsilons are the sites' ledger reports as the
ServerApp relayed them; a ServerApp that lies about them consistently is not detected here (each
site's own ledger and `synthpool-agent ledger` remain the authority).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ...common.signing import MANIFEST, SIGNATURE, load_or_create_key, release_files, seal
from ..serverapp.release import release_guarantee

RELEASE_KIND = "synthpool.federated-release"


class ReleaseRefused(ValueError):
    """The folder is not a release the launcher will sign; the message says why."""


@dataclass(frozen=True)
class ReleaseTerms:
    """What the launcher asked for: the study, its sites, how sites' guarantees compose, the
    most rows the release may hold (0: no limit) and the schema's fingerprint ("": unchecked)."""

    study: str
    sites: frozenset[str]
    population: str
    max_rows: int = 0
    schema_fingerprint: str = ""


def release_problems(folder: Path, terms: ReleaseTerms) -> list[str]:
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return [f"no readable {MANIFEST} ({e})"]
    if not isinstance(manifest, dict):
        return [f"{MANIFEST} is not an object"]
    problems = []
    if manifest.get("kind") != RELEASE_KIND:
        problems.append(f"kind {manifest.get('kind')!r} is not {RELEASE_KIND!r}")
    if manifest.get("study") != terms.study:
        problems.append(f"study {manifest.get('study')!r} is not the one launched, "
                        f"{terms.study!r}")
    schema = manifest.get("schema") or {}
    if terms.schema_fingerprint and schema.get("fingerprint") != terms.schema_fingerprint:
        problems.append(f"schema fingerprint {schema.get('fingerprint')!r} is not the study's "
                        f"{terms.schema_fingerprint!r}")
    if (Path(folder) / SIGNATURE).exists() or "signature" in manifest:
        problems.append("it is already signed, and the ServerApp signs nothing")
    rows = (manifest.get("data") or {}).get("rows")
    if not isinstance(rows, int) or rows < 1:
        problems.append(f"data rows {rows!r} is not a positive number")
    elif terms.max_rows and rows > terms.max_rows:
        problems.append(f"{rows} rows, more than the study's {terms.max_rows}")
    privacy = manifest.get("privacy") or {}
    per_site = privacy.get("per_site") or {}
    outside = sorted(set(per_site) - terms.sites)
    if not per_site:
        problems.append("it states no site's privacy")
    elif outside:
        problems.append(f"sites {outside} are not the study's")
    else:
        problems.extend(_guarantee_problems(per_site, privacy.get("release") or {},
                                            terms.population))
    return problems


def _guarantee_problems(per_site: dict, stated: dict, population: str) -> list[str]:
    for site, v in per_site.items():
        eps, delta = (v or {}).get("epsilon"), (v or {}).get("delta")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0
                and isinstance(delta, (int, float)) and 0 <= delta < 1):
            return [f"site {site!r}: epsilon {eps!r}, delta {delta!r} are not a DP guarantee"]
    want = release_guarantee(per_site, population)
    for key in ("epsilon", "delta"):
        got = stated.get(key)
        if not isinstance(got, (int, float)) or not math.isclose(got, want[key], rel_tol=1e-9,
                                                                 abs_tol=1e-15):
            return [f"the release's {key} {got!r} is not what its sites' give "
                    f"({population}: {want[key]!r})"]
    return []


def take_release(source: Path, dest: Path) -> Path:
    """Copy the release the ServerApp wrote in `source` into `dest`, a folder only the launcher
    can write, before anything checks it: under separate accounts (deploy/OPERATOR.md) the
    ServerApp's account can still change `source` after the checks, and what is signed must be
    what was checked. Regular files only, opened without following links; raises
    ReleaseRefused naming anything else, copying nothing."""
    source, dest = Path(source), Path(dest)
    files, problems = release_files(source)
    if problems:
        raise ReleaseRefused(f"{source}: not taken: " + "; ".join(problems))
    if dest.exists():
        shutil.rmtree(dest)  # a copy left by a publish that failed half-way
    for rel, path in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a file swapped for a link meanwhile
        with os.fdopen(fd, "rb") as src, open(target, "xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return dest


def sign_release(folder: Path, key_path: Path, terms: ReleaseTerms) -> dict:
    """Check `folder` against `terms`, then seal it with the Ed25519 key at `key_path` (created
    if absent); returns the sealed manifest. Raises ReleaseRefused, signing nothing."""
    problems = release_problems(folder, terms)
    if problems:
        raise ReleaseRefused(f"{folder}: not signed: " + "; ".join(problems))
    try:
        return seal(Path(folder), load_or_create_key(Path(key_path)))
    except ValueError as e:  # a symbolic link, a file that is not plain
        raise ReleaseRefused(str(e)) from None
