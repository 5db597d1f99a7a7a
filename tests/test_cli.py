"""The one-shot commands: --version, ca init, ca export (plain and --bundle)."""

from __future__ import annotations

import re
import stat

from cryptography import x509

from support.proxy import run_flowtap

PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)


def _certs(pem: bytes) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(m.group(0)) for m in PEM_CERT.finditer(pem)]


def test_version():
    r = run_flowtap("--version")
    assert r.returncode == 0, r.stderr
    assert re.match(rb"^flowtap \d+\.\d+\.\d+", r.stdout), r.stdout


def test_ca_init_then_export(tmp_path):
    d = tmp_path / "ca"
    r = run_flowtap("ca", "init", "--dir", d)
    assert r.returncode == 0, r.stderr
    assert (d / "ca.pem").is_file() and (d / "ca-key.pem").is_file()
    assert stat.S_IMODE((d / "ca-key.pem").stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in (d / "ca.pem").read_bytes()
    (ca,) = _certs((d / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.subject == ca.issuer

    r = run_flowtap("ca", "export", "--ca-dir", d)
    assert r.returncode == 0, r.stderr
    assert _certs(r.stdout) == [ca]
    assert b"PRIVATE KEY" not in r.stdout

    r = run_flowtap("ca", "export", env={"FLOWTAP_CA_DIR": str(d)})
    assert r.returncode == 0, r.stderr
    assert _certs(r.stdout) == [ca], "FLOWTAP_CA_DIR is read by ca export"


def test_ca_init_keeps_an_existing_ca(tmp_path):
    d = tmp_path / "ca"
    assert run_flowtap("ca", "init", "--dir", d).returncode == 0
    before = (d / "ca.pem").read_bytes(), (d / "ca-key.pem").read_bytes()
    run_flowtap("ca", "init", "--dir", d)
    after = (d / "ca.pem").read_bytes(), (d / "ca-key.pem").read_bytes()
    assert before == after, "ca init must never replace an existing CA"


def test_ca_export_bundle(tmp_path, pki):
    d = tmp_path / "ca"
    assert run_flowtap("ca", "init", "--dir", d).returncode == 0
    system = tmp_path / "system-bundle.pem"
    system_bytes = pki.server_ca.read_bytes() + pki.bad_ca.read_bytes()
    system.write_bytes(system_bytes)
    r = run_flowtap("ca", "export", "--bundle", "--system-bundle", system, "--ca-dir", d)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(system_bytes), "the system bundle comes first, unchanged"
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert _certs(r.stdout) == _certs(system_bytes) + [ca]
    assert r.stdout.rstrip().endswith((d / "ca.pem").read_bytes().rstrip())
