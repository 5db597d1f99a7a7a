"""A throw-away test PKI: a trusted "server CA" with a leaf for localhost / 127.0.0.1 / ::1, and an
untrusted second CA with its own leaf for the bad-certificate case. Files are PEM."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LEAF_NAMES = ("localhost",)
LEAF_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    server_ca: Path        # trusted by the tests (and by flowtap via --upstream-ca)
    server_cert: Path      # leaf for localhost, 127.0.0.1, ::1, signed by server_ca
    server_key: Path
    bad_ca: Path           # never trusted unless a test says so
    bad_cert: Path         # leaf for the same names, signed by bad_ca
    bad_key: Path
    client_cert: Path      # a client certificate (mutual TLS), signed by server_ca
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flowtap tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


def _make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(ca_key, ca_cert, cn: str, usage=ExtendedKeyUsageOID.SERVER_AUTH):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sans = [x509.DNSName(n) for n in LEAF_NAMES] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in LEAF_IPS
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    paths = Pki(
        server_ca=directory / "server-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        bad_ca=directory / "bad-ca.pem",
        bad_cert=directory / "bad.pem",
        bad_key=directory / "bad-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    ca_key, ca = _make_ca("flowtap test server CA")
    leaf_key, leaf = _make_leaf(ca_key, ca, "localhost")
    paths.server_ca.write_bytes(_pem(ca))
    paths.server_cert.write_bytes(_pem(leaf))
    _write_key(leaf_key, paths.server_key)

    bad_ca_key, bad_ca = _make_ca("flowtap test UNTRUSTED CA")
    bad_key, bad_leaf = _make_leaf(bad_ca_key, bad_ca, "localhost")
    paths.bad_ca.write_bytes(_pem(bad_ca))
    paths.bad_cert.write_bytes(_pem(bad_leaf))
    _write_key(bad_key, paths.bad_key)

    client_key, client = _make_leaf(ca_key, ca, "flowtap test client", ExtendedKeyUsageOID.CLIENT_AUTH)
    paths.client_cert.write_bytes(_pem(client))
    _write_key(client_key, paths.client_key)
    return paths


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when `leaf` carries a valid signature by `ca`'s key."""
    try:
        leaf.verify_directly_issued_by(ca)
        return True
    except Exception:
        return False
