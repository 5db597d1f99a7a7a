"""The test fixtures themselves, without flowtap: if these fail, the proxy tests say nothing."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl

from websockets.sync.client import connect as ws_connect

from support.clients import curl, write_out
from support.nginx import SET_COOKIES, SMALL_BODY
from support.pyserver import TRAILER_NAME, TRAILER_VALUE


def test_nginx_plain_and_tls_h2(nginx, pki):
    r = curl(nginx.url("/small")).check()
    assert r.out == SMALL_BODY
    r = curl("--cacert", pki.server_ca, "--http2", "-o", "/dev/null", "-w", "%{http_version}",
             nginx.url("/small", host="localhost", tls=True)).check()
    assert r.text == "2"
    r = curl("--cacert", pki.server_ca, "--http1.1", "-o", "/dev/null", "-w", "%{http_version}",
             nginx.url("/small", host="127.0.0.1", tls=True)).check()
    assert r.text == "1.1"


def test_nginx_routes(nginx, pki):
    r = curl("-D", "-", "-o", "/dev/null", nginx.url("/set-cookie")).check()
    cookies = [l.split(":", 1)[1].strip() for l in r.text.splitlines() if l.lower().startswith("set-cookie:")]
    assert cookies == list(SET_COOKIES)
    r = curl("-o", "/dev/null", "-w", "%{http_code}", nginx.url("/status/500")).check()
    assert r.text == "500"
    r = curl("-D", "/dev/stderr", nginx.url("/gzip")).check()
    assert hashlib.sha256(r.out).hexdigest() == nginx.files["/gzip"][1]
    assert "content-encoding: gzip" in r.err.lower()
    r = curl("-D", "/dev/stderr", nginx.url("/json")).check()
    json.loads(r.out)
    assert "content-type: application/json" in r.err.lower()
    r = curl("-o", "/dev/null", "-w", "%{size_download}", nginx.url("/big100m", tls=True),
             "--cacert", pki.server_ca).check()
    assert r.text == str(100 * 1024 * 1024)


def test_nginx_bad_cert_port(nginx, pki):
    assert curl("--cacert", pki.server_ca, nginx.url("/small", bad=True)).rc == 60
    curl("--cacert", pki.bad_ca, "-o", "/dev/null", nginx.url("/small", bad=True)).check()


def test_nginx_upload_over_h2(nginx, pki, tmp_path):
    f = tmp_path / "up.bin"
    data = bytes(range(256)) * 8192
    f.write_bytes(data)
    r = curl("--cacert", pki.server_ca, "--http2", "--data-binary", f"@{f}",
             nginx.url("/upload", host="localhost", tls=True)).check()
    got = json.loads(r.out)
    assert got["received"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()


def test_pyserver_uploads(pyserver, tmp_path):
    f = tmp_path / "up.bin"
    data = b"x" * 3_000_000
    f.write_bytes(data)
    r = curl("-H", "Expect: 100-continue", "--data-binary", f"@{f}", f"{pyserver.base}/upload").check()
    got = json.loads(r.out)
    assert got["received"] == len(data) and got["expect"] == "100-continue"
    r = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f}", f"{pyserver.base}/upload").check()
    got = json.loads(r.out)
    assert got["received"] == len(data) and got["chunked"] is True


def test_pyserver_trailers_slow_abort(pyserver):
    s = socket.create_connection(("127.0.0.1", pyserver.port))
    s.sendall(b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    assert f"{TRAILER_NAME}: {TRAILER_VALUE}".encode() in raw
    r = curl("-o", "/dev/null", "-w", "%{size_download}|%{time_total}",
             f"{pyserver.base}/slow?head=0.3&body=0.3&size=5000").check()
    size, total = write_out(r)
    assert size == "5000" and float(total) >= 0.5
    r = curl("-o", "/dev/null", f"{pyserver.base}/abort")
    assert r.rc == 18, r.err  # partial file


def test_ws_servers(ws_server, wss_server, pki):
    with ws_connect(ws_server.url(), proxy=None) as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
    ctx = ssl.create_default_context(cafile=str(pki.server_ca))
    with ws_connect(wss_server.url(host="localhost"), ssl=ctx, proxy=None) as ws:
        ws.send("hello tls")
        assert ws.recv() == "hello tls"
