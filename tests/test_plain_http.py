"""Plain HTTP through the proxy: absolute-form requests, connection reuse across hosts, HTTP/1.0,
CONNECT to a plain-HTTP port, status codes, headers, trailers."""

from __future__ import annotations

import json
import socket

import requests

from support.clients import curl
from support.net import ipv6_loopback
from support.nginx import JSON_BODY, SET_COOKIES, SMALL_BODY
from support.pyserver import TRAILER_VALUE

LOOPBACK_IPS = ("127.0.0.1", "::1")


def by_url(records, url):
    found = [r for r in records if r.get("request", {}).get("url") == url]
    assert len(found) == 1, f"expected one record for {url}, got {[r.get('request', {}).get('url') for r in records]}"
    return found[0]


def assert_ok_get(rec, url, host, port, body_size, ctype, version="HTTP/1.1"):
    assert rec["kind"] == "http"
    assert rec["request"]["method"] == "GET"
    assert rec["request"]["url"] == url
    assert rec["request"]["http_version"] == version
    assert rec["request"].get("body_size", 0) == 0
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == body_size
    assert rec["response"]["headers"]["content-type"] == ctype
    assert rec["server"]["host"] == host
    assert rec["server"]["port"] == port
    assert rec["server"]["ip"] in LOOPBACK_IPS
    assert rec["client"]["ip"] == "127.0.0.1"
    assert rec["client"]["port"] > 0
    assert "wait_ms" in rec["timings"], rec["timings"]
    assert "duration_ms" in rec
    assert "error" not in rec


def test_two_hosts_one_connection_curl(proxy, nginx):
    u1 = nginx.url("/small", host="127.0.0.1")
    u2 = nginx.url("/json", host="localhost")
    r = curl("-x", proxy.url, "-w", "%{http_code}|%{num_connects}\n",
             "-o", "/dev/null", u1, "-o", "/dev/null", u2).check()
    lines = r.text.split()
    assert lines == ["200|1", "200|0"], f"curl should reuse its proxy connection: {lines}"

    recs = proxy.records(2)
    assert len(recs) == 2
    a, b = by_url(recs, u1), by_url(recs, u2)
    assert_ok_get(a, u1, "127.0.0.1", nginx.http_port, len(SMALL_BODY), "text/plain")
    assert a["server"]["ip"] == "127.0.0.1"
    assert_ok_get(b, u2, "localhost", nginx.http_port, len(JSON_BODY), "application/json")
    assert a["request"]["headers"]["user-agent"].startswith("curl/")
    assert a["request"]["headers"]["host"] == f"127.0.0.1:{nginx.http_port}"
    assert b["request"]["headers"]["host"] == f"localhost:{nginx.http_port}"
    assert a["response"]["headers"]["content-length"] == str(len(SMALL_BODY))
    assert a["id"] != b["id"]
    assert a["connection_id"] == b["connection_id"]
    assert a["client"]["port"] == b["client"]["port"]
    assert "tls" not in a and "tls" not in b


def test_two_hosts_one_connection_requests_session(proxy, nginx):
    s = requests.Session()
    s.trust_env = False
    s.proxies = proxy.requests_proxies
    u1 = nginx.url("/small", host="127.0.0.1")
    u2 = nginx.url("/json", host="localhost")
    r1 = s.get(u1, timeout=10)
    r2 = s.get(u2, timeout=10)
    assert r1.status_code == 200 and r1.content == SMALL_BODY
    assert r2.status_code == 200 and r2.json()["name"] == "flowtap"
    recs = proxy.records(2)
    assert len(recs) == 2
    a, b = by_url(recs, u1), by_url(recs, u2)
    assert a["connection_id"] == b["connection_id"]
    assert a["id"] != b["id"]
    assert a["request"]["headers"]["user-agent"].startswith("python-requests/")
    assert b["server"]["host"] == "localhost"


def test_separate_connections_get_separate_ids(proxy, nginx):
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/small")).check()
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/small")).check()
    a, b = proxy.records(2)
    assert a["connection_id"] != b["connection_id"]
    assert a["id"] != b["id"]
    assert a["id"] < b["id"], "UUIDv7 ids sort by time"


def test_http10_client(proxy, nginx):
    url = nginx.url("/small")
    r = curl("-0", "-x", proxy.url, url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert rec["request"]["http_version"] == "HTTP/1.0"
    assert rec["request"]["url"] == url
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == len(SMALL_BODY)


def test_connect_to_plain_http_port(proxy, nginx):
    url = nginx.url("/small")
    r = curl("--proxytunnel", "-x", proxy.url, url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert rec["kind"] == "http"
    assert rec["request"]["url"] == url
    assert rec["request"]["method"] == "GET"
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == len(SMALL_BODY)
    assert rec["server"] == {"host": "127.0.0.1", "port": nginx.http_port, "ip": "127.0.0.1"}
    assert not rec.get("tls", {}).get("intercepted", False), "no TLS was spoken"


def test_status_500_is_a_response_not_an_error(proxy, nginx):
    r = curl("-x", proxy.url, "-w", "|%{http_code}", nginx.url("/status/500")).check()
    assert r.text == "boom\n|500"
    rec = proxy.record()
    assert rec["response"]["status"] == 500
    assert rec["response"]["reason"] == "Internal Server Error"
    assert rec["response"]["body_size"] == 5
    assert "error" not in rec


def test_set_cookie_joined_with_newline(proxy, nginx):
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/set-cookie")).check()
    rec = proxy.record()
    got = rec["response"]["headers"]["set-cookie"].split("\n")
    assert len(got) == len(SET_COOKIES), got
    for g, want in zip(got, SET_COOKIES):
        name, rest = want.split("=", 1)
        attrs = rest.split(";", 1)[1]
        # Cookie values are secrets: redacted by default, name and attributes kept.
        assert g == f"{name}=<redacted>;{attrs}", g
    assert rec["redacted"] == ["response.headers.set-cookie"], rec.get("redacted")


def test_request_headers_forwarded_and_recorded(proxy, pyserver):
    url = f"{pyserver.base}/echo?q=1&x=%2F"
    r = curl("-x", proxy.url, "-H", "X-Flowtap-Test: one", "-H", "X-Multi: a", "-H", "X-Multi: b", url).check()
    seen = dict((k, v) for k, v in json.loads(r.out)["headers"] if k != "x-multi")
    assert seen["x-flowtap-test"] == "one"
    rec = proxy.record()
    assert rec["request"]["url"] == url
    assert rec["request"]["headers"]["x-flowtap-test"] == "one"
    assert rec["request"]["headers"]["x-multi"] == "a, b"
    assert rec["response"]["headers"]["server"] == "flowtap-test-upstream"


def test_trailers_forwarded_and_recorded(proxy, pyserver):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    target = f"http://127.0.0.1:{pyserver.port}/trailers"
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{pyserver.port}\r\n"
              "TE: trailers\r\nConnection: close\r\n\r\n".encode())
    raw = b""
    # Until the end of the chunked body (last chunk, trailers, blank line) or EOF.
    while not (b"\r\n0\r\n" in raw and raw.endswith(b"\r\n\r\n") and raw.count(b"\r\n\r\n") >= 2):
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    s.close()
    assert b"hello " in raw and b"trailers\n" in raw
    assert f"x-checksum: {TRAILER_VALUE}".encode() in raw.lower(), f"trailer not forwarded: {raw!r}"
    rec = proxy.record()
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == len(b"hello trailers\n")
    assert rec["response"]["trailers"] == {"x-checksum": TRAILER_VALUE}
    assert "error" not in rec, "the client read the whole response"


def test_header_order_and_non_utf8_values(proxy, pyserver):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    target = f"http://127.0.0.1:{pyserver.port}/echo"
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{pyserver.port}\r\n".encode()
              + b"X-Zeta: 1\r\nX-Alpha: 2\r\nX-Mid: 3\r\nX-Bin: a\xffb\r\nConnection: close\r\n\r\n")
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    upstream = [k for k, _ in json.loads(body)["headers"] if k.startswith("x-")]
    assert upstream == ["x-zeta", "x-alpha", "x-mid", "x-bin"], "header order is kept"
    rec = proxy.record()
    recorded = [k for k in rec["request"]["headers"] if k.startswith("x-")]
    assert recorded == ["x-zeta", "x-alpha", "x-mid", "x-bin"]
    # Non-UTF-8 bytes are escaped as \xHH, never dropped.
    assert rec["request"]["headers"]["x-bin"].lower() == "a\\xffb"


def test_head_request(proxy, nginx):
    r = curl("-x", proxy.url, "-I", nginx.url("/small")).check()
    assert "content-length: 1024" in r.text.lower()
    rec = proxy.record()
    assert rec["request"]["method"] == "HEAD"
    assert rec["response"]["status"] == 200
    assert rec["response"]["headers"]["content-length"] == "1024"
    assert rec["response"].get("body_size", 0) == 0, "a response to HEAD has no body"


def test_ipv6_literal_target(proxy, nginx):
    assert ipv6_loopback(), "this machine has no ::1"
    url = f"http://[::1]:{nginx.http_port}/small"
    r = curl("-x", proxy.url, url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert rec["request"]["url"] == url
    assert rec["server"]["host"] in ("::1", "[::1]")
    assert rec["server"]["port"] == nginx.http_port
    assert rec["server"]["ip"] == "::1"
