"""The coordinator's keys and certificates: its own small certificate authority.

Why a private CA rather than a public one: the only parties that must trust the coordinator are
the sites and its administrators, all enrolled by hand, and the coordinator often runs inside a
hospital or bank network with no public name. One CA we own lets us (1) serve the admin API and
the Flower SuperLink over TLS with a certificate the clients pin, and (2) recognise an
administrator by a client certificate we signed (mTLS) without any password store.

`init_coordinator` lays out, under ``<state_dir>/pki``::

    ca.key / ca.pem          the CA (EC P-256, self-signed, path length 0: it signs leaves only)
    server.key / server.pem  the coordinator's TLS certificate (SANs: the given hostnames plus
                             localhost, 127.0.0.1 and ::1, so local tools work out of the box)
    admin.key / admin.pem    the first administrator's client certificate (OU=admin, clientAuth)

and under ``<state_dir>/signing`` the Ed25519 release-signing key (``release.key`` and the
``release.pub`` that contractors use to verify releases). Every private key is written mode
0600 and every file atomically, so a crash never leaves half a key behind. Running it again keeps
what exists (re-creating the CA would silently orphan every certificate and enrolled site) and
only fills in what is missing.

EC P-256 and not RSA or Ed25519 for TLS: gRPC's BoringSSL and every TLS stack accept it, and it is
what Flower's own TLS examples use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ...common.atomic import atomic_write_bytes
from ...common.signing import generate_key, ssh_key_fingerprint

ORGANIZATION = "synthpool"
#: The organisational unit that marks an administrator's client certificate. The admin server
#: checks it in addition to the CA signature so that any other certificate this CA may sign later
#: (for instance for sites) is not an admin credential.
ADMIN_OU = "admin"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest lifetime mainstream TLS clients accept for a leaf certificate
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class CoordinatorPKI:
    """Where a coordinator's credentials live; all paths derive from the state dir."""

    state_dir: Path

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def ca_key(self) -> Path:
        return self.pki_dir / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.pki_dir / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.pki_dir / "server.pem"

    @property
    def admin_key(self) -> Path:
        return self.pki_dir / "admin.key"

    @property
    def admin_cert(self) -> Path:
        return self.pki_dir / "admin.pem"

    @property
    def signing_key(self) -> Path:
        return self.state_dir / "signing" / "release.key"

    @property
    def signing_public_key(self) -> Path:
        return self.signing_key.with_suffix(".pub")

    def as_dict(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in (
            "ca_cert", "server_cert", "server_key", "admin_cert", "admin_key", "signing_key",
            "signing_public_key")}


def init_coordinator(state_dir: Path, hostnames: Iterable[str] = ()) -> CoordinatorPKI:
    """Create whatever of the CA, server certificate, admin certificate and release-signing key
    is missing under `state_dir`, and return where they are."""
    pki = CoordinatorPKI(Path(state_dir))
    _private_dir(pki.state_dir)
    _private_dir(pki.pki_dir)
    _private_dir(pki.signing_key.parent)

    if pki.ca_key.exists() != pki.ca_cert.exists():
        raise FileExistsError(f"{pki.pki_dir}: only half of the CA (ca.key / ca.pem) is present; "
                              "restore the missing file rather than creating a new CA")
    if not pki.ca_key.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key)
        _write_key(pki.ca_key, ca_key)
        _write_cert(pki.ca_cert, ca_cert)
    if not pki.server_cert.exists():
        issue_server_certificate(pki, hostnames)
    if not pki.admin_cert.exists():
        issue_admin_certificate(pki, "admin", pki.admin_cert, pki.admin_key)
    if not pki.signing_key.exists():
        generate_key(pki.signing_key)
    return pki


def issue_server_certificate(pki: CoordinatorPKI, hostnames: Iterable[str] = ()) -> None:
    """(Re)issue the coordinator's TLS certificate, e.g. after adding a DNS name."""
    ca_key, ca_cert = load_ca(pki)
    names = list(dict.fromkeys([*hostnames, *LOCAL_NAMES]))
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_leaf_builder(key, ca_cert, names[0], ou="coordinator")
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(pki.server_key, key)
    _write_cert(pki.server_cert, cert)


def issue_admin_certificate(pki: CoordinatorPKI, name: str, cert_path: Path,
                            key_path: Path) -> None:
    """A client certificate for one administrator (CN = `name`, OU = admin): the admin server
    accepts it as a credential and records `name` as the actor in the audit log."""
    ca_key, ca_cert = load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_leaf_builder(key, ca_cert, name, ou=ADMIN_OU)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(Path(key_path), key)
    _write_cert(Path(cert_path), cert)


def load_ca(pki: CoordinatorPKI) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{pki.ca_key}: not an EC private key")
    return key, cert


def admin_identity(cert_pem: bytes, ca_pem: bytes) -> str | None:
    """The administrator named by a client certificate, or None if it is not an admin
    certificate issued by this CA.

    gRPC has already verified the chain during the TLS handshake; this re-checks the issuer
    signature (cheap, and keeps the function safe to call on its own) and requires the admin OU
    and clientAuth usage, so a future site or server certificate from the same CA is no admin.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - any parse or signature failure means "not ours"
        return None
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return None
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if ADMIN_OU not in ous:
        return None
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else None


class CertificateIds(NamedTuple):
    """What the deny list knows a certificate by (see normalize_serial, normalize_fingerprint)."""

    serial: str
    fingerprint: str
    not_after: float


def certificate_ids(cert_pem: bytes) -> CertificateIds:
    """Serial and SHA-256 fingerprint of a PEM certificate as the deny list stores them. Raises
    ValueError if `cert_pem` is not a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return CertificateIds(format(cert.serial_number, "x"), cert.fingerprint(hashes.SHA256()).hex(),
                          cert.not_valid_after_utc.timestamp())


def normalize_serial(text: str) -> str:
    """A certificate serial as `openssl x509 -noout -serial` prints it (`serial=4F1A...`), with or
    without colons or 0x: lowercase hex, no leading zeros."""
    raw = text.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{1,42}", raw):
        raise ValueError(f"serial {text!r}: expected the certificate's serial number in hex "
                         "(as `openssl x509 -noout -serial` prints it), e.g. 4F:1A:09 or 4f1a09")
    return format(int(raw, 16), "x")


def normalize_fingerprint(text: str) -> str:
    """A certificate's SHA-256 fingerprint as `openssl x509 -noout -fingerprint -sha256` prints it
    (`sha256 Fingerprint=AB:CD:...`), with or without colons or a `sha256:` prefix: lowercase
    hex."""
    raw = text.strip().lower().removeprefix("sha256 fingerprint=").removeprefix("sha256:")
    raw = raw.replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", raw):
        raise ValueError(f"fingerprint {text!r}: expected the certificate's SHA-256 fingerprint, "
                         "64 hex digits with or without colons (as `openssl x509 -noout "
                         "-fingerprint -sha256` prints it)")
    return raw


def site_public_key(text: str) -> tuple[str, str]:
    """Validate a site's enrollment key; return it in OpenSSH format with its fingerprint.

    Sites enroll with the key their Flower SuperNode will authenticate with, which Flower requires
    to be an EC key on a NIST curve (`flwr supernode register` reads the OpenSSH form). We accept
    OpenSSH or PEM so a site can send either, and store OpenSSH so the coordinator can register it
    with the SuperLink as is. The fingerprint (SHA256, base64, like `ssh-keygen -l`) is what an
    administrator compares with the site by phone before approving.
    """
    raw = text.strip().encode()
    try:
        if raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_ssh_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a readable public key (OpenSSH or PEM): {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or \
            key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise ValueError("the site key must be an EC key on a NIST curve (P-256, P-384 or "
                         "P-521): Flower's SuperNode authentication accepts nothing else")
    openssh = key.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()
    return openssh, ssh_key_fingerprint(openssh)


# -- internals --------------------------------------------------------------------------------

def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, "synthpool coordinator CA")])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))


def _leaf_builder(key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
                  ou: str) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # atomic_path's temp file comes from mkstemp (mode 0600), so the key is never readable by
    # others, not even between write and rename; the chmod states the intent.
    atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write_bytes(path, cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)
