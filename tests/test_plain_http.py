"""Plain HTTP through the proxy: absolute-form requests, connection reuse across hosts, HTTP/1.0,
CONNECT to a plain-HTTP port, status codes, headers, trailers."""

from __future__ import annotations

import json
import socket

import requests

from support.clients import curl
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
    assert rec["response"]["headers"]["set-cookie"] == "\n".join(SET_COOKIES)


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
