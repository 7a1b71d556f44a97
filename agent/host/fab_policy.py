"""Which Flower app (FAB) a site agrees to run: the check, on the FAB's bytes alone.

Why: a SuperNode executes whatever app the SuperLink hands it (Flower installs the FAB, puts its
folder first on sys.path and imports the component its pyproject.toml names). A coordinator that
wanted to could ship Python in a FAB, or name another component, and read a site's rows. synthpool's
FAB (deploy/app/) carries configuration only and names code every site installed itself at a
version it chose. So a site accepts a FAB only if

* it holds nothing but the allowed configuration files (by exact path; code suffixes such as .py,
  .pyc, .so, .pth are refused even if an operator listed them),
* its `[tool.flwr.app.components] clientapp` is exactly the site's pinned component, and
* when the site pinned FAB hashes, its sha256 (computed here, never the hash the link claims) is
  one of them.

This module imports no Flower and never extracts the archive: the zip is read in memory, and the
only file parsed is pyproject.toml, with a size limit. agent/host/trusted_app.py calls `inspect_fab`
before any of a run's code could be loaded, and loads the pinned component from the site's own
installation, not from the FAB.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

PINNED_CLIENTAPP = "synthpool.agent.clientapp.app:app"
# Flower's manifest of the FAB's files (flwr/cli/build.py writes it into every FAB).
FLOWER_MANIFEST = ".info/CONTENT"
DEFAULT_ALLOWED_FILES = ("pyproject.toml", "README.md", "LICENSE", "LICENSE.md")
# Files that are, or can carry, code Python would run: never allowed, whatever the config says.
CODE_SUFFIXES = frozenset({".py", ".pyc", ".pyo", ".pyd", ".pyi", ".pyx", ".pyw", ".so", ".dll",
                           ".dylib", ".pth", ".egg", ".whl", ".zip", ".sh", ".ipynb"})
MAX_FAB_BYTES = 10 * 1024 * 1024      # Flower's own limit (flwr/common/constant.py FAB_MAX_SIZE)
MAX_PYPROJECT_BYTES = 1024 * 1024
MAX_ENTRIES = 64


def is_code_path(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in CODE_SUFFIXES


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class TrustPolicy:
    """What a site runs: its pinned ClientApp component, the files a FAB may hold, and
    (optionally) the only FAB hashes it accepts. Built from site.toml's [trust] table."""

    clientapp: str = PINNED_CLIENTAPP
    allowed_files: frozenset[str] = frozenset(DEFAULT_ALLOWED_FILES)
    fab_sha256: frozenset[str] = frozenset()  # empty: any FAB that passes the other checks

    def __post_init__(self) -> None:
        module, sep, attr = self.clientapp.partition(":")
        if not (sep and module and attr):
            raise ValueError(f"clientapp must be 'module:attribute', got {self.clientapp!r}")
        code = sorted(p for p in self.allowed_files if is_code_path(p))
        if code:
            raise ValueError(f"allowed_files may not name code files: {code}")
        bad = sorted(h for h in self.fab_sha256 if not is_sha256(h))
        if bad:
            raise ValueError(f"fab_sha256 entries must be 64 lowercase hex digits: {bad}")


@dataclass(frozen=True)
class FabVerdict:
    trusted: bool
    reason: str                      # why it was refused ("" when trusted)
    sha256: str                      # of the FAB's bytes, computed here
    files: tuple[str, ...] = ()      # the archive's entries, in archive order
    clientapp: str | None = None     # the component the FAB names, if it could be read

    def summary(self) -> dict:
        return {"trusted": self.trusted, "reason": self.reason, "fab_sha256": self.sha256,
                "files": list(self.files), "clientapp": self.clientapp}


def _listing(paths: list[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _entry_problem(info: zipfile.ZipInfo) -> str:
    name = info.filename
    # Directory entries, absolute paths, dot segments, backslashes, drive letters: a FAB that
    # Flower built has none of them, and an extractor might treat them differently from us.
    if (not name or "\\" in name or ":" in name
            or any(part in ("", ".", "..") for part in name.split("/"))):
        return f"unsafe entry name {name!r}"
    mode = info.external_attr >> 16
    if mode and not (stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0):
        return f"entry {name!r} is not a regular file"
    return ""


def _read_clientapp(archive: zipfile.ZipFile) -> tuple[str | None, str]:
    """The clientapp component the archive's pyproject.toml names, or why it cannot be read.
    Parsing TOML runs no code; the size is capped before and while reading."""
    try:
        info = archive.getinfo("pyproject.toml")
    except KeyError:
        return None, "the app has no pyproject.toml"
    if info.file_size > MAX_PYPROJECT_BYTES:
        return None, f"the app's pyproject.toml is {info.file_size} bytes (at most {MAX_PYPROJECT_BYTES})"
    try:
        with archive.open(info) as f:
            # One byte past the limit: the size in the zip header is the sender's word.
            raw = f.read(MAX_PYPROJECT_BYTES + 1)
        if len(raw) > MAX_PYPROJECT_BYTES:
            return None, "the app's pyproject.toml is larger than its header says"
        project = tomllib.loads(raw.decode("utf-8"))
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, tomllib.TOMLDecodeError,
            ValueError) as e:
        return None, f"the app's pyproject.toml cannot be read ({type(e).__name__})"
    node: object = project
    for key in ("tool", "flwr", "app", "components", "clientapp"):
        node = node.get(key) if isinstance(node, dict) else None
    clientapp = node
    if not isinstance(clientapp, str):
        return None, "the app names no clientapp component"
    return clientapp, ""


def inspect_fab(content: bytes, policy: TrustPolicy) -> FabVerdict:
    """Decide whether this site runs the FAB `content` (the archive's bytes) under `policy`."""
    digest = hashlib.sha256(content).hexdigest()

    def refuse(reason: str, files: tuple[str, ...] = (), clientapp: str | None = None) -> FabVerdict:
        return FabVerdict(False, reason, digest, files, clientapp)

    if len(content) > MAX_FAB_BYTES:
        return refuse(f"the app is {len(content)} bytes, more than a FAB may be ({MAX_FAB_BYTES})")
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile:
        return refuse("the app is not a zip archive")
    with archive:
        infos = archive.infolist()
        files = tuple(i.filename for i in infos)
        if len(infos) > MAX_ENTRIES:
            return refuse(f"the app holds {len(infos)} entries (at most {MAX_ENTRIES})", files)
        for info in infos:
            problem = _entry_problem(info)
            if problem:
                return refuse(f"the app has an {problem}", files)
        if len(set(files)) != len(files):
            return refuse("the app holds the same path twice", files)
        # Read before the file checks only so that a refusal also records what the app named.
        clientapp, unreadable = _read_clientapp(archive)

    code = [f for f in files if is_code_path(f)]
    if code:
        return refuse(f"the app ships code ({_listing(code)}); this site runs only its own "
                      f"installed ClientApp", files, clientapp)
    allowed = set(policy.allowed_files) | {FLOWER_MANIFEST}
    extra = [f for f in files if f not in allowed]
    if extra:
        return refuse(f"the app holds files this site does not allow ({_listing(extra)}); "
                      f"allowed: {', '.join(sorted(allowed))}", files, clientapp)
    if unreadable:
        return refuse(unreadable, files)
    if clientapp != policy.clientapp:
        return refuse(f"the app names clientapp {clientapp!r}; this site runs only "
                      f"{policy.clientapp!r}", files, clientapp)
    if policy.fab_sha256 and digest not in policy.fab_sha256:
        return refuse(f"the app's sha256 {digest} is not one this site pinned", files, clientapp)
    return FabVerdict(True, "", digest, files, clientapp)


__all__ = ["TrustPolicy", "FabVerdict", "inspect_fab", "PINNED_CLIENTAPP", "DEFAULT_ALLOWED_FILES",
           "FLOWER_MANIFEST", "CODE_SUFFIXES"]
