"""The site's identity towards the coordinator: an EC key pair made at the site.

The SuperNode signs its requests with the private key (Flower's SuperNode authentication); the
coordinator's SuperLink admits only nodes whose public key an administrator registered after
enrollment (`synthpool-agent enroll`, then `synthpool sites approve`). The private key is created
here, kept in the state dir with owner-only permissions, and never sent anywhere.

Flower reads the private key in OpenSSH format and accepts EC keys only; P-384 here.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEY_FILE = "identity/supernode.key"
PUBLIC_FILE = "identity/supernode.pub"


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def ensure_node_key(state_dir: Path) -> str:
    """This site's public key (OpenSSH), creating the pair on first use."""
    private, public = key_path(state_dir), Path(state_dir) / PUBLIC_FILE
    if not private.exists():
        private.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(private.parent, 0o700)
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH))
    if not public.exists():  # derived again if only the public half went missing
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH))
    return public.read_text().strip()

