"""Bad input gets a clear answer and a record, and nothing else breaks: malformed request heads,
invalid CONNECT targets, garbage in place of a TLS ClientHello, a ClientHello without SNI to an
IP, non-UTF-8 header bytes (recorded escaped, the JSON line stays valid). After each, the proxy
serves a normal request."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509

from support.clients import connect_tunnel, curl, leaf_via_proxy
from support.net import ipv6_loopback
from support.pki import issued_by, load_cert
from test_security_helpers import (all_records, assert_nowhere, assert_serves, assert_serves_https,
                                   connect, error_kind, one_record, raw_exchange, read_response,
                                   url_is, wait_records)


# --- malformed request heads ------------------------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"HELLO\r\n\r\n",
    b"GET http://127.0.0.1/ HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET http://127.0.0.1/ HTTP/1.1\r\nNo colon in this header line\r\n\r\n",
    b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET http://127.0.0.1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\x01\x02\x03garbage\r\n\r\n",
], ids=["no-version", "http-9.9", "header-without-colon", "conflicting-content-length",
        "non-ascii-target", "binary"])
def test_malformed_request_400_and_record(start_proxy, nginx, head):
    p = start_proxy()
    status, _, _ = raw_exchange(p.port, head)
    assert status == 400, status
    rec = one_record(p, error_kind("protocol"))
    assert rec["kind"] == "connection" and "400" in rec["error"]["message"], rec
    assert_serves(p, nginx)


# --- CONNECT targets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "localhost",                 # no port
    "localhost:0",               # port 0
    "localhost:99999",           # port out of range
    "localhost:-1",
    "localhost:http",
    "[::1]",
    ":443",                      # no host
    pytest.param("alice:s3cr3t@localhost:443", id="userinfo"),
    "%zz:443",
    "a..b::c:443",
    pytest.param("-[::1]:8443", id="stray-brackets"),
    pytest.param("a[b]:80", id="brackets-in-name"),
])
def test_invalid_connect_target_400(start_proxy, nginx, target):
    p = start_proxy()
    status, _, body = raw_exchange(p.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert status == 400, (status, body)
    recs = wait_records(p, error_kind("protocol"))
    assert len(recs) == 1, recs
    assert recs[0]["kind"] in ("tunnel", "connection"), recs[0]
    assert_serves_https(p, nginx)
    assert p.stop() == 0
    if "s3cr3t" in target:
        # The reason may name the target, but never the password in it.
        assert_nowhere(p, "s3cr3t")


# --- what comes through a CONNECT tunnel --------------------------------------------------------------------

def test_garbage_that_looks_like_tls_gets_protocol_record(start_proxy, nginx):
    """A TLS record header followed by garbage where the ClientHello should be."""
    p = start_proxy()
    s = connect_tunnel(p.port, "localhost", nginx.tls_port)
    junk = os.urandom(200)
    s.sendall(b"\x16\x03\x01" + len(junk).to_bytes(2, "big") + junk)
    s.settimeout(10)
    try:
        while s.recv(4096):      # an alert, perhaps; then the proxy closes
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    rec = one_record(p, lambda r: r["kind"] == "tunnel")
    assert rec["error"]["kind"] == "protocol", rec
    assert rec["server"] == {"host": "localhost", "port": nginx.tls_port}, rec["server"]
    assert_serves_https(p, nginx)


def test_non_tls_garbage_is_relayed_not_crashed(start_proxy, nginx):
    """Bytes that are neither TLS nor HTTP are relayed as an opaque tunnel (here to a TLS
    server, which rejects them) and counted."""
    p = start_proxy()
    s = connect_tunnel(p.port, "127.0.0.1", nginx.tls_port)
    sent = b"\x00\xffnot tls, not http\r\n\r\n" + os.urandom(100)
    s.sendall(sent)
    s.settimeout(10)
    try:
        while s.recv(4096):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    rec = one_record(p, lambda r: r["kind"] == "tunnel")
    assert rec["bytes_up"] == len(sent), rec
    assert rec.get("tls", {}).get("intercepted") is not True
    assert_serves_https(p, nginx)


def test_client_hello_without_sni_to_an_ip(start_proxy, nginx, pki):
    """No SNI, CONNECT to an IP: the leaf names the IP (IP SAN), the client can verify it, and
    the request goes through to the upstream (verified by its IP SAN too)."""
    p = start_proxy()
    leaf = leaf_via_proxy(p.port, "127.0.0.1", nginx.tls_port, sni=None)
    assert issued_by(leaf, load_cert(p.ca_path))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress), san

    # A full request with verification on, as a client that sends no SNI for IPs does.
    s = connect_tunnel(p.port, "127.0.0.1", nginx.tls_port)
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    with ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:   # an IP: Python sends no SNI
        tls.sendall(f"GET /small HTTP/1.1\r\nHost: 127.0.0.1:{nginx.tls_port}\r\nConnection: close\r\n\r\n".encode())
        status, _, body = read_response(tls)
    assert status == 200 and len(body) == 1024
    rec = one_record(p, lambda r: r["kind"] == "http")
    assert "sni" not in rec["tls"], rec["tls"]
    assert rec["tls"]["intercepted"] is True and rec["tls"]["upstream_verified"] is True
    assert rec["server"]["host"] == "127.0.0.1"
    assert rec["request"]["url"] == f"https://127.0.0.1:{nginx.tls_port}/small"

    # openssl s_client -noservername: the same leaf, verified against the flowtap CA.
    out = subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{p.port}", "-connect", f"127.0.0.1:{nginx.tls_port}",
         "-noservername", "-CAfile", str(p.ca_path), "-verify_ip", "127.0.0.1", "-verify_return_error",
         "-brief"],
        input=b"", capture_output=True, timeout=30)
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode == 0 and "Verification: OK" in text, text
    assert_serves_https(p, nginx)


def test_client_hello_without_sni_to_an_ipv6_literal(start_proxy, nginx):
    assert ipv6_loopback(), "this machine has no ::1"
    p = start_proxy()
    leaf = leaf_via_proxy(p.port, "::1", nginx.tls_port, sni=None)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("::1") in san.get_values_for_type(x509.IPAddress), san
    assert_serves_https(p, nginx)


# --- non-UTF-8 header bytes ---------------------------------------------------------------------------------

class _RawUpstream:
    """An HTTP/1.1 server that answers every request with a fixed raw response (bytes as given)."""

    def __init__(self, response: bytes):
        self.response = response
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                buf = b""
                try:
                    while b"\r\n\r\n" not in buf:
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    c.sendall(self.response)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_non_utf8_header_bytes_are_escaped(start_proxy, nginx):
    body = b"raw upstream\n"
    upstream = _RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Resp: ok \xfe\xff end\r\n"
                            b"Connection: close\r\n\r\n%s" % (len(body), body))
    try:
        p = start_proxy("-v", more_outputs=("text:{dir}/text.log", "pb:{dir}/records.pb"))
        url = f"http://127.0.0.1:{upstream.port}/bytes"
        status, headers, got = raw_exchange(
            p.port, f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n".encode()
            + b"X-Bin: caf\xe9 \xff\xfe end\r\nX-Utf8: gr\xc3\xb6\xc3\x9fe\r\nConnection: close\r\n\r\n")
        assert status == 200 and got == body
        # The client got the upstream's bytes untouched.
        rec = one_record(p, url_is(url))
        assert rec["request"]["headers"]["x-bin"] == "caf\\xE9 \\xFF\\xFE end"
        assert rec["request"]["headers"]["x-utf8"] == "größe"
        assert rec["response"]["headers"]["x-resp"] == "ok \\xFE\\xFF end"
        # Every output line is valid UTF-8 JSON (parse_records checks each), on stdout too.
        raw = p.stdout_path.read_bytes()
        raw.decode("utf-8")
        for line in raw.splitlines():
            json.loads(line)
        text = (p.workdir / "text.log").read_bytes().decode("utf-8")
        assert "\\xE9" in text or "\\xe9" in text, text
        assert_serves(p, nginx)
    finally:
        upstream.close()
