"""SHA-256 digests: of a file, read in blocks (release files and a site's table can be
gigabytes), and of a payload as the wire names it ("sha256:<hex>")."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes (no "sha256:" prefix)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(data: bytes | str) -> str:
    """How a schema, the merged statistics and a synthetic sample are named on the wire, so that
    a site checks it holds what the coordinator meant: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()
