"""coordinator/admin/pki.py: the coordinator's CA, certificates and keys."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from synthpool.common import signing
from synthpool.coordinator.admin.pki import (
    CoordinatorPKI, admin_identity, init_coordinator, issue_admin_certificate, site_public_key,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_coordinator(tmp_path_factory.mktemp("coord") / "state", ["coord.example.org",
                                                                         "10.1.2.3"])


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_and_modes(pki):
    for key in (pki.ca_key, pki.server_key, pki.admin_key, pki.signing_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for cert in (pki.ca_cert, pki.server_cert, pki.admin_cert):
        assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(pki.pki_dir.stat().st_mode) == 0o700
    # No temp files left behind by the atomic writes.
    assert not [p for p in pki.state_dir.rglob(".*") if p.name.endswith(".tmp")]


def test_chain_and_names(pki):
    ca, server, admin = _cert(pki.ca_cert), _cert(pki.server_cert), _cert(pki.admin_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"coord.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1")}
    assert ExtendedKeyUsageOID.SERVER_AUTH in \
        server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert admin_identity(pki.admin_cert.read_bytes(), pki.ca_cert.read_bytes()) == "admin"


def test_release_key_signs_releases(pki, tmp_path):
    key = signing.load_or_create_key(pki.signing_key)
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    signing.seal(tmp_path, key)
    assert signing.verify(tmp_path, signing.load_public_key(pki.signing_public_key)).ok


def test_rerun_keeps_what_exists(pki):
    before = {p: p.read_bytes() for p in (pki.ca_cert, pki.ca_key, pki.server_cert,
                                          pki.admin_cert, pki.signing_key)}
    init_coordinator(pki.state_dir, ["other.example.org"])
    assert {p: p.read_bytes() for p in before} == before


def test_half_a_ca_is_an_error(tmp_path):
    pki = init_coordinator(tmp_path / "s")
    pki.ca_key.unlink()
    with pytest.raises(FileExistsError, match="half of the CA"):
        init_coordinator(tmp_path / "s")


def test_admin_identity_rejects_other_certificates(pki, tmp_path):
    ca_pem = pki.ca_cert.read_bytes()
    # Signed by our CA but not an admin certificate (the server's own).
    assert admin_identity(pki.server_cert.read_bytes(), ca_pem) is None
    # An admin certificate from another CA.
    other = init_coordinator(tmp_path / "other")
    assert admin_identity(other.admin_cert.read_bytes(), ca_pem) is None
    assert admin_identity(b"not a certificate", ca_pem) is None
    # A second administrator issued later is recognised by name.
    issue_admin_certificate(pki, "alice", tmp_path / "alice.pem", tmp_path / "alice.key")
    assert admin_identity((tmp_path / "alice.pem").read_bytes(), ca_pem) == "alice"
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600


def test_site_public_key_formats():
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    openssh = key.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode()
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert site_public_key(openssh) == site_public_key(pem)
    normalized, fingerprint = site_public_key(pem + "\n")
    assert normalized == openssh and fingerprint.startswith("SHA256:")
    for wrong in (ed25519.Ed25519PrivateKey.generate().public_key(),
                  rsa.generate_private_key(65537, 2048).public_key()):
        text = wrong.public_bytes(serialization.Encoding.OpenSSH,
                                  serialization.PublicFormat.OpenSSH).decode()
        with pytest.raises(ValueError, match="NIST curve"):
            site_public_key(text)
    with pytest.raises(ValueError, match="not a readable public key"):
        site_public_key("ssh-rsa garbage")


def test_paths_derive_from_state_dir(tmp_path):
    pki = CoordinatorPKI(tmp_path)
    assert pki.signing_public_key == tmp_path / "signing" / "release.pub"
    assert set(pki.as_dict()) >= {"ca_cert", "server_cert", "admin_cert", "signing_public_key"}
