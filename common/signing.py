"""Signed releases: a contractor holding only the coordinator's public key can check that every file
of a release is exactly what the coordinator published.

`seal` lists the SHA-256 of every file in the release folder inside manifest.json and signs the
manifest's bytes with Ed25519 into manifest.sig. `verify` checks the signature first, then every
listed hash, and that no file was added or removed.

"Every file" means every one: hidden names and files in subfolders called manifest.json too; only
the top-level manifest.json and manifest.sig are not listed, since they are what is signed. A
release holds regular files only: a symbolic link (or a fifo, a device) is refused by both, since
what it shows can change after the check, and a reader of the folder would follow it anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import atomic_write_bytes, atomic_write_text
from .digests import file_sha256

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


def generate_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 key as PKCS#8 PEM (mode 0600) with its public key beside it (`.pub`)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    atomic_write_bytes(path, pem)
    path.chmod(0o600)
    atomic_write_bytes(path.with_suffix(".pub"), public_pem(key.public_key()))
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        return generate_key(path)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def release_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Every regular file under `folder` by its '/'-separated relative path (the top-level
    manifest and signature included), and one problem, naming the entry, for anything else: a
    symbolic link (not followed) or a special file."""
    folder = Path(folder)
    files: dict[str, Path] = {}
    problems: list[str] = []

    def visit(directory: Path) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                path = Path(entry.path)
                rel = path.relative_to(folder).as_posix()
                if entry.is_symlink():
                    problems.append(f"{rel}: a symbolic link (a release holds regular files only)")
                elif entry.is_dir(follow_symlinks=False):
                    visit(path)
                elif entry.is_file(follow_symlinks=False):
                    files[rel] = path
                else:
                    problems.append(f"{rel}: not a regular file (a release holds regular files only)")

    visit(folder)
    return files, problems


def _payload(folder: Path) -> tuple[dict[str, Path], list[str]]:
    files, problems = release_files(folder)
    return {rel: p for rel, p in files.items() if rel not in (MANIFEST, SIGNATURE)}, problems


def seal(folder: Path, key: Ed25519PrivateKey) -> dict:
    """Add the hash of every file to manifest.json (created if absent) and sign it."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    payload, problems = _payload(folder)
    if problems:
        raise ValueError(f"{folder}: cannot seal: " + "; ".join(problems))
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    manifest["files"] = {rel: {"sha256": file_sha256(p), "bytes": p.stat().st_size}
                         for rel, p in payload.items()}
    manifest["signature"] = {
        "algorithm": "Ed25519", "file": SIGNATURE,
        "public_key_sha256": hashlib.sha256(public_pem(key.public_key())).hexdigest(),
    }
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(manifest_file, body)
    atomic_write_text(folder / SIGNATURE, base64.b64encode(key.sign(body)).decode() + "\n")
    return manifest


@dataclass
class Verification:
    ok: bool
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0


def verify(folder: Path, public_key: Ed25519PublicKey) -> Verification:
    folder = Path(folder)
    try:
        body = (folder / MANIFEST).read_bytes()
        signature = base64.b64decode((folder / SIGNATURE).read_text().strip(), validate=True)
    except (OSError, ValueError) as e:
        return Verification(False, [f"cannot read {MANIFEST} / {SIGNATURE}: {e}"])
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        return Verification(False, [f"{MANIFEST}: signature does not match (manifest altered or "
                                    "signed by another key)"])
    listed = json.loads(body).get("files", {})
    present, problems = _payload(folder)
    for name, meta in listed.items():
        if name not in present:
            problems.append(f"{name}: listed in the manifest but missing")
        elif file_sha256(present[name]) != meta["sha256"]:
            problems.append(f"{name}: content differs from the signed hash")
    problems += [f"{name}: not part of the signed release" for name in present if name not in listed]
    return Verification(not problems, problems, len(listed))


def ssh_key_fingerprint(openssh_public_key: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key as `ssh-keygen -l` prints it: what a site's
    and the coordinator's administrators compare by phone before the site is approved."""
    blob = base64.b64decode(openssh_public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
