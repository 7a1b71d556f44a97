"""Releases as the admin API serves them: folders under the releases directory, each sealed with
common.signing (manifest.json + manifest.sig), indexed in the state database as they are found."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from ...common import signing
from ...protos import admin_pb2 as pb
from . import state as st

CHUNK_SIZE = 64 * 1024


class ReleaseStore:
    """Release folders under `root`, indexed in the state database as they are found."""

    def __init__(self, root: Path, state: st.State) -> None:
        self.root = Path(root)
        self.state = state

    def scan(self) -> None:
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if not st.NAME.match(folder.name) or not (folder / signing.MANIFEST).is_file():
                continue
            body = (folder / signing.MANIFEST).read_bytes()
            try:
                manifest = json.loads(body)
            except ValueError:
                manifest = {}
            if not isinstance(manifest, dict):
                manifest = {}
            files = self.files(folder.name)
            study = manifest.get("study")
            self.state.put_release(st.ReleaseRecord(
                name=folder.name, study=str(study) if study is not None else None,
                created_at=float(manifest.get("created_unix") or
                                 (folder / signing.MANIFEST).stat().st_mtime),
                files=len(files), bytes=sum(p.stat().st_size for _, p in files),
                manifest_sha256=hashlib.sha256(body).hexdigest()))

    def present(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if (p / signing.MANIFEST).is_file()}

    def folder(self, name: str) -> Path:
        if not st.NAME.match(name or ""):
            raise st.Invalid(f"invalid release name {name!r}")
        folder = self.root / name
        if folder.is_symlink() or not (folder / signing.MANIFEST).is_file():
            raise st.NotFound(f"no release {name!r}")
        return folder

    def files(self, name: str) -> list[tuple[str, Path]]:
        """(relative path, file) for every regular file of the release, sorted: the files the
        signature covers plus the manifest and signature. Symbolic links are left out: a
        release must not be a way to read other files of the coordinator (and `verify` fails
        it for them)."""
        files, _links = signing.release_files(self.folder(name))
        return sorted(files.items())

    def chunks(self, name: str, chunk_size: int = CHUNK_SIZE) -> Iterator[pb.FileChunk]:
        for rel, path in self.files(name):
            size = path.stat().st_size
            with open(path, "rb") as f:
                offset = 0
                while True:
                    data = f.read(chunk_size)
                    last = offset + len(data) >= size or not data
                    yield pb.FileChunk(path=rel, offset=offset, data=data, file_size=size,
                                       last=last)
                    offset += len(data)
                    if last:
                        break

