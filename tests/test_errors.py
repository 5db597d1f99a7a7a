"""Every failure is a record: upstream refused, DNS failure, timeout, bad certificate, and either
side closing in the middle of a body. The proxy's own 502 is described by `error`, never recorded
as a `response`."""

from __future__ import annotations

import socket

from support.clients import curl, write_out
from support.net import dead_port
from support.nginx import SMALL_BODY
from support.pyserver import ABORT_SENT

W502 = "\n%{http_code}|%{content_type}"


def assert_502(r):
    lines = r.text.rsplit("\n", 1)
    body, (code, ctype) = lines[0], lines[1].split("|")
    assert code == "502", f"expected 502 from the proxy, got {code}: {r.text!r} {r.err}"
    assert ctype.startswith("text/plain"), ctype
    assert body.strip(), "the 502 should say why"
    return body


def assert_failed_record(rec, kind, url=None):
    assert rec["kind"] == "http"
    assert "response" not in rec, "the proxy's own error reply is not a response"
    assert rec["error"]["kind"] == kind, rec["error"]
    assert rec["error"]["message"]
    if url:
        assert rec["request"]["url"] == url
        assert rec["request"]["method"] == "GET"


def test_upstream_refused(proxy):
    port = dead_port()
    url = f"http://127.0.0.1:{port}/nothing"
    r = curl("-x", proxy.url, "-w", W502, url).check()
    assert_502(r)
    rec = proxy.record()
    assert_failed_record(rec, "upstream_connect", url)
    assert rec["server"]["host"] == "127.0.0.1"
    assert rec["server"]["port"] == port


def test_upstream_refused_behind_connect(proxy):
    port = dead_port()
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-w", "%{http_code}",
             "-o", "/dev/null", f"https://127.0.0.1:{port}/nothing")
    # Whether flowtap answers the CONNECT with 502 or the tunnelled request, curl gets no 200.
    assert r.rc != 0 or r.text == "502", (r.rc, r.text, r.err)
    rec = proxy.record()
    assert rec["error"]["kind"] == "upstream_connect", rec
    assert "response" not in rec
    assert rec["server"]["port"] == port


def test_upstream_dns_failure(proxy):
    url = "http://flowtap-test.invalid/"          # the suite's one non-loopback name (also the JDK case in test_k8s_attach)
    r = curl("-x", proxy.url, "-w", W502, url).check()
    assert_502(r)
    rec = proxy.record()
    assert_failed_record(rec, "upstream_dns", url)
    assert rec["server"]["host"] == "flowtap-test.invalid"
    assert rec["server"]["port"] == 80
    assert "ip" not in rec["server"]


def test_upstream_timeout(start_proxy, pyserver):
    proxy = start_proxy("--upstream-timeout", "1")
    url = f"{pyserver.base}/slow?head=4"
    r = curl("-x", proxy.url, "-w", W502, url).check()
    # Without the 1 s timeout the upstream's 200 would come after 4 s: the 502 and the record say so.
    assert_502(r)
    rec = proxy.record()
    assert_failed_record(rec, "upstream_timeout", url)


def test_bad_upstream_certificate(proxy, nginx):
    url = nginx.url("/small", host="localhost", bad=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-w", W502, url).check()
    assert_502(r)
    rec = proxy.record()
    assert_failed_record(rec, "upstream_tls", url)
    assert rec["server"]["port"] == nginx.bad_tls_port


def test_bad_upstream_certificate_trusted_with_upstream_ca(start_proxy, nginx, pki):
    proxy = start_proxy(upstream_ca=[pki.server_ca, pki.bad_ca])
    url = nginx.url("/small", host="localhost", bad=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert rec["response"]["status"] == 200
    assert rec["tls"]["upstream_verified"] is True
    assert "error" not in rec


def test_bad_upstream_certificate_insecure_upstream(start_proxy, nginx):
    proxy = start_proxy("--insecure-upstream", upstream_ca=[])
    url = nginx.url("/small", host="localhost", bad=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert rec["response"]["status"] == 200
    assert rec["tls"]["intercepted"] is True
    assert rec["tls"]["upstream_verified"] is False
    assert "error" not in rec


def test_upstream_closes_mid_body(proxy, pyserver):
    url = f"{pyserver.base}/abort"
    r = curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}|%{size_download}", url)
    assert r.rc != 0, "the client must see that the body was cut short"
    code, size = write_out(r)
    assert code == "200" and int(size) == ABORT_SENT
    rec = proxy.record()
    assert rec["response"]["status"] == 200, "headers did come back"
    assert rec["error"]["kind"] == "upstream_closed", rec["error"]
    assert rec["response"]["body_size"] == ABORT_SENT, "the bytes forwarded before the cut"


def test_client_closes_mid_body(proxy, nginx):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    url = nginx.url("/big100m")
    s.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{nginx.http_port}\r\n\r\n".encode())
    raw = b""
    while len(raw) < 256 * 1024:
        chunk = s.recv(65536)
        assert chunk
        raw += chunk
    body_read = len(raw.partition(b"\r\n\r\n")[2])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    s.close()
    rec = proxy.record(timeout=10)
    assert rec["request"]["url"] == url
    assert rec["response"]["status"] == 200
    assert rec["error"]["kind"] == "client_closed", rec["error"]
    # At least the body bytes the client read were forwarded; far from all of them.
    assert body_read <= rec["response"]["body_size"] < 100 * 1024 * 1024, (body_read, rec["response"])
