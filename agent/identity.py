"""The site's identity towards the coordinator: an EC key pair made at the site.

The SuperNode signs its requests with the private key (Flower's SuperNode authentication); the
coordinator's SuperLink admits only nodes whose public key an administrator registered after
enrollment (`synthpool-agent enroll`, then `synthpool sites approve`). The private key is created
here, kept in the state dir with owner-only permissions, and never sent anywhere.

Flower reads the private key in OpenSSH format and accepts EC keys only; P-384 here.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..common.atomic import atomic_write_bytes, create_once

KEY_FILE = "identity/supernode.key"
PUBLIC_FILE = "identity/supernode.pub"


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def ensure_node_key(state_dir: Path) -> str:
    """This site's public key (OpenSSH), creating the pair on first use."""
    private, public = key_path(state_dir), Path(state_dir) / PUBLIC_FILE
    if not private.exists():
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        create_once(private, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    if not public.exists():  # derived from the private key (which may be another call's)
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
        atomic_write_bytes(public, key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return public.read_text().strip()

