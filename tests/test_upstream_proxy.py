"""An egress proxy behind flowtap (`--upstream-proxy`, `--upstream-no-proxy`), with a real one:
tinyproxy (support/tinyproxy.py). Intercepted HTTPS, tunnels, h2c and WebSockets reach it as
CONNECT host:port; plain HTTP as an absolute-form request. Records name the real server but no
server.ip when flowtap did not connect to the server itself. A CONNECT the egress proxy refuses,
a 407 for plain HTTP, or an egress proxy that is down: 502 with error.kind upstream_connect.
The credentials in the URL never reach a record, stdout or stderr.

tinyproxy 1.11 answers a request without credentials with 407 but one with wrong credentials
with 401 (see support/tinyproxy.py): the 407 cases below send none."""

from __future__ import annotations

import base64
import ssl
import uuid

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import UPSTREAM_PROXY_PASSWORD, UPSTREAM_PROXY_USER
from support.clients import curl
from support.grpcserver import GrpcServer, channel, method
from support.net import dead_port, free_port
from support.nginx import SMALL_BODY
from support.proxy import run_flowtap
from support.tinyproxy import start_tinyproxy
from test_security_helpers import assert_nowhere, assert_serves_https, one_record, url_is

LOOPBACK_IPS = ("127.0.0.1", "::1")
WRONG_PASSWORD = "wr0ng-upstream-pw"


# --- helpers -------------------------------------------------------------------------------------

def https_url(nginx, tag: str | None = None) -> str:
    return nginx.url(f"/small?{tag}" if tag else "/small", host="localhost", tls=True)


def plain_url(nginx, tag: str | None = None) -> str:
    return nginx.url(f"/small?{tag}" if tag else "/small")


def get_https(p, url: str, *args) -> bytes:
    return curl("--proxy", p.url, "--cacert", p.ca_path, *args, url).check().out


def get_plain(p, url: str, *args) -> bytes:
    return curl("--proxy", p.url, *args, url).check().out


def status_of(p, url: str, *args) -> str:
    """The HTTP status curl got (through flowtap; HTTPS with flowtap's CA), body discarded. curl
    must succeed at the transport level: the CONNECT to flowtap and the TLS with it work."""
    extra = ["--cacert", p.ca_path] if url.startswith("https:") else []
    r = curl("--proxy", p.url, *extra, "-o", "/dev/null", "-w", "%{http_code}", *args, url)
    assert r.rc == 0, f"curl rc={r.rc} ({r.err.strip()}): expected flowtap's own answer inside the session"
    return r.text.strip()


def assert_via_upstream(rec: dict, *, host: str, port: int) -> None:
    """A record for an exchange that went through the egress proxy: the real server, no IP."""
    assert rec["server"]["host"] == host, rec["server"]
    assert rec["server"]["port"] == port, rec["server"]
    assert "ip" not in rec["server"], f"flowtap did not connect to the server itself: {rec['server']}"


def assert_ok(rec: dict, url: str) -> None:
    assert rec["kind"] == "http"
    assert rec["request"]["url"] == url
    assert rec["request"]["method"] == "GET"
    assert rec["response"]["status"] == 200, rec.get("response")
    assert rec["response"]["body_size"] == len(SMALL_BODY)
    assert "error" not in rec, rec["error"]


def assert_no_request(tp, mark: int, prefix: str) -> None:
    """tinyproxy logged no request starting with `prefix` after `mark`. A barrier request sent
    straight to tinyproxy (after the exchange under test ended) proves its log has caught up."""
    barrier = f"GET http://127.0.0.1:{dead_port()}/barrier-{uuid.uuid4().hex}"
    creds = [] if tp.user is None else ["--proxy-user", f"{tp.user}:{tp.password}"]
    curl("--proxy", tp.url(), *creds, "-o", "/dev/null", barrier.split(" ", 1)[1])
    tp.wait_request(barrier + " ", since=mark)
    seen = tp.requests(mark)
    before = seen[:next(i for i, line in enumerate(seen) if line.startswith(barrier + " "))]
    went = [line for line in before if line.startswith(prefix)]
    assert not went, f"went through tinyproxy although it should have gone direct: {went}"


def upstream_error(rec: dict, *, url: str) -> str:
    """The record of an exchange flowtap failed with upstream_connect (its own 502): the message."""
    assert rec["kind"] == "http"
    assert rec["request"]["url"] == url
    assert "response" not in rec, f"flowtap's own 502 is not a response: {rec.get('response')}"
    assert rec["error"]["kind"] == "upstream_connect", rec["error"]
    return rec["error"]["message"]


# --- the egress proxy alone (no flowtap): tells a broken fixture from a flowtap failure -----------

def test_tinyproxy_alone(tinyproxy, tinyproxy_auth, nginx, pki):
    mark = tinyproxy.mark()
    r = curl("--proxy", tinyproxy.url(), "--cacert", pki.server_ca, https_url(nginx, "alone")).check()
    assert r.out == SMALL_BODY
    assert tinyproxy.wait_request(f"CONNECT localhost:{nginx.tls_port} ", since=mark)
    plain = plain_url(nginx, f"alone-{uuid.uuid4().hex}")
    assert curl("--proxy", tinyproxy.url(), plain).check().out == SMALL_BODY
    assert tinyproxy.wait_request(f"GET {plain} ", since=mark) == f"GET {plain} HTTP/1.1"

    tp = tinyproxy_auth
    assert curl("--proxy", tp.auth_url(), plain).check().out == SMALL_BODY
    code = curl("--proxy", tp.url(), "-o", "/dev/null", "-w", "%{http_code}", plain).check().text
    assert code == "407", "no credentials: 407"
    code = curl("--proxy", tp.url(UPSTREAM_PROXY_USER, WRONG_PASSWORD), "-o", "/dev/null", "-w",
                "%{http_code}", plain).check().text
    assert code == "401", "tinyproxy 1.11 answers wrong credentials with 401"


# --- through the egress proxy ----------------------------------------------------------------------

@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_https_through_upstream_proxy(start_proxy, nginx, tinyproxy, version):
    p = start_proxy("--upstream-proxy", tinyproxy.url())
    url = https_url(nginx)
    mark = tinyproxy.mark()
    assert get_https(p, url, version) == SMALL_BODY
    line = tinyproxy.wait_request(f"CONNECT localhost:{nginx.tls_port} ", since=mark)
    assert line == f"CONNECT localhost:{nginx.tls_port} HTTP/1.1", line
    rec = one_record(p, url_is(url))
    assert_ok(rec, url)
    assert_via_upstream(rec, host="localhost", port=nginx.tls_port)
    want = "HTTP/2.0" if version == "--http2" else "HTTP/1.1"
    assert rec["request"]["http_version"] == want
    assert rec["response"]["http_version"] == want, "TLS inside the tunnel offered the client's ALPN"
    assert rec["tls"]["intercepted"] is True
    assert rec["tls"]["sni"] == "localhost"
    assert rec["tls"]["alpn"] == ("h2" if version == "--http2" else "http/1.1")
    assert rec["tls"]["upstream_verified"] is True, "the server's certificate is checked as usual"


def test_plain_http_through_upstream_proxy(start_proxy, nginx, tinyproxy):
    p = start_proxy("--upstream-proxy", tinyproxy.url())
    url = plain_url(nginx, f"plain-{uuid.uuid4().hex}")
    mark = tinyproxy.mark()
    assert get_plain(p, url) == SMALL_BODY
    line = tinyproxy.wait_request(f"GET {url} ", since=mark)
    assert line == f"GET {url} HTTP/1.1", f"absolute form to the egress proxy: {line}"
    rec = one_record(p, url_is(url))
    assert_ok(rec, url)
    assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)
    # The client's own request as the client sent it; nothing of the egress hop in it.
    assert "proxy-authorization" not in rec["request"]["headers"]


def test_upstream_proxy_keeps_serving_many_requests(start_proxy, nginx, tinyproxy):
    """Several exchanges in a row through the same flowtap and egress proxy, both kinds."""
    p = start_proxy("--upstream-proxy", tinyproxy.url())
    urls = []
    for i in range(3):
        urls += [https_url(nginx, f"n={i}"), plain_url(nginx, f"n={i}")]
        assert get_https(p, urls[-2]) == SMALL_BODY
        assert get_plain(p, urls[-1]) == SMALL_BODY
    for url in urls:
        rec = one_record(p, url_is(url))
        assert_ok(rec, url)
        assert "ip" not in rec["server"]


def test_upstream_proxy_from_environment(start_proxy, nginx, tinyproxy_auth):
    """FLOWTAP_UPSTREAM_PROXY (with credentials) and FLOWTAP_UPSTREAM_NO_PROXY."""
    tp = tinyproxy_auth
    p = start_proxy(env={"FLOWTAP_UPSTREAM_PROXY": tp.auth_url(),
                         "FLOWTAP_UPSTREAM_NO_PROXY": "example.invalid,127.0.0.1"})
    mark = tp.mark()
    url = https_url(nginx, "env")
    assert get_https(p, url) == SMALL_BODY
    tp.wait_request(f"CONNECT localhost:{nginx.tls_port} ", since=mark)
    assert_via_upstream(one_record(p, url_is(url)), host="localhost", port=nginx.tls_port)

    direct = plain_url(nginx, f"env-direct-{uuid.uuid4().hex}")
    assert get_plain(p, direct) == SMALL_BODY
    rec = one_record(p, url_is(direct))
    assert_ok(rec, direct)
    assert rec["server"] == {"host": "127.0.0.1", "port": nginx.http_port, "ip": "127.0.0.1"}
    assert_no_request(tp, mark, f"GET {direct}")
    assert p.stop() == 0
    assert_nowhere(p, UPSTREAM_PROXY_PASSWORD, UPSTREAM_PROXY_USER, tp.basic_token)


# --- credentials -----------------------------------------------------------------------------------

def test_upstream_proxy_with_credentials(start_proxy, nginx, tinyproxy_auth):
    tp = tinyproxy_auth
    p = start_proxy("--upstream-proxy", tp.auth_url())
    mark = tp.mark()
    https = https_url(nginx, "auth")
    assert get_https(p, https) == SMALL_BODY
    assert get_https(p, https_url(nginx, "auth-h2"), "--http2") == SMALL_BODY
    plain = plain_url(nginx, f"auth-{uuid.uuid4().hex}")
    assert get_plain(p, plain) == SMALL_BODY
    tp.wait_request(f"CONNECT localhost:{nginx.tls_port} ", since=mark)
    tp.wait_request(f"GET {plain} ", since=mark)
    rec = one_record(p, url_is(https))
    assert_ok(rec, https)
    assert_via_upstream(rec, host="localhost", port=nginx.tls_port)
    rec = one_record(p, url_is(plain))
    assert_ok(rec, plain)
    assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)
    assert "proxy-authorization" not in rec["request"]["headers"]
    assert p.stop() == 0
    assert_nowhere(p, UPSTREAM_PROXY_PASSWORD, UPSTREAM_PROXY_USER, tp.basic_token)


def test_upstream_proxy_without_credentials_407(start_proxy, nginx, tinyproxy_auth):
    """The egress proxy wants credentials flowtap does not have (tinyproxy: 407). HTTPS: the
    refused CONNECT is flowtap's 502. Plain HTTP: the 407 is not passed on (the client would take
    it for flowtap's own), it is flowtap's 502 too. Both records hint at --upstream-proxy."""
    tp = tinyproxy_auth
    p = start_proxy("--upstream-proxy", tp.url())
    https = https_url(nginx, "no-creds")
    assert status_of(p, https) == "502"
    msg = upstream_error(one_record(p, url_is(https)), url=https)
    for part in (f"upstream proxy 127.0.0.1:{tp.port}", f"CONNECT localhost:{nginx.tls_port}", "407",
                 "--upstream-proxy"):
        assert part in msg, f"{part!r} not in {msg!r}"

    plain = plain_url(nginx, f"no-creds-{uuid.uuid4().hex}")
    mark = tp.mark()
    assert status_of(p, plain) == "502", "a 407 from the egress proxy must not reach the client"
    tp.wait_request(f"GET {plain} ", since=mark)
    rec = one_record(p, url_is(plain))
    msg = upstream_error(rec, url=plain)
    assert "407" in msg and "--upstream-proxy" in msg, msg
    assert "upstream proxy" in msg, msg
    assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)
    assert p.running, "flowtap keeps running after the egress proxy refused it"


def test_upstream_proxy_wrong_password(start_proxy, nginx, tinyproxy_auth):
    """Wrong credentials (tinyproxy answers 401, not 407). HTTPS: the refused CONNECT is a 502
    with the status in the record. Plain HTTP: a status other than 407 from the egress proxy is
    passed on and recorded as the response. The wrong password appears nowhere either."""
    tp = tinyproxy_auth
    p = start_proxy("--upstream-proxy", tp.url(UPSTREAM_PROXY_USER, WRONG_PASSWORD))
    https = https_url(nginx, "wrong-pw")
    assert status_of(p, https) == "502"
    rec = one_record(p, url_is(https))
    msg = upstream_error(rec, url=https)
    for part in (f"upstream proxy 127.0.0.1:{tp.port}", f"CONNECT localhost:{nginx.tls_port}", "401"):
        assert part in msg, f"{part!r} not in {msg!r}"
    assert_via_upstream(rec, host="localhost", port=nginx.tls_port)

    plain = plain_url(nginx, f"wrong-pw-{uuid.uuid4().hex}")
    assert status_of(p, plain) == "401"
    rec = one_record(p, url_is(plain))
    assert rec["response"]["status"] == 401, rec
    assert "error" not in rec, rec["error"]
    assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)

    b64 = base64.b64encode(f"{UPSTREAM_PROXY_USER}:{WRONG_PASSWORD}".encode()).decode()
    assert p.stop() == 0
    assert_nowhere(p, WRONG_PASSWORD, UPSTREAM_PROXY_USER, b64)


def test_upstream_proxy_refusal_by_acl(start_proxy, nginx, tmp_path):
    """An egress proxy whose ACL refuses the hosts (tinyproxy's Filter: 403). HTTPS: the refused
    CONNECT is flowtap's 502 with the status in the record; plain HTTP: the 403 is the proxy's
    answer to the request, passed on and recorded as the response."""
    tp = start_tinyproxy(tmp_path / "tinyproxy-acl", filter_rules=[r"^localhost$", r"^127\.0\.0\.1$"])
    try:
        p = start_proxy("--upstream-proxy", tp.url())
        https = https_url(nginx, "acl")
        assert status_of(p, https) == "502"
        msg = upstream_error(one_record(p, url_is(https)), url=https)
        for part in (f"upstream proxy 127.0.0.1:{tp.port}", f"CONNECT localhost:{nginx.tls_port}", "403"):
            assert part in msg, f"{part!r} not in {msg!r}"

        plain = plain_url(nginx, "acl")
        assert status_of(p, plain) == "403"
        rec = one_record(p, url_is(plain))
        assert rec["response"]["status"] == 403, rec
        assert "error" not in rec, rec["error"]
        assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)
        assert p.running
    finally:
        tp.stop()


# --- what goes direct --------------------------------------------------------------------------------

# (flowtap arguments, localhost direct?, 127.0.0.1 direct?)
NO_PROXY_CASES = {
    "name": (["--upstream-no-proxy", "localhost"], True, False),
    "dot-name-any-case": (["--upstream-no-proxy", ".LocalHost"], True, False),
    "comma-list": (["--upstream-no-proxy", "example.invalid,localhost"], True, False),
    "repeated": (["--upstream-no-proxy", "example.invalid", "--upstream-no-proxy", "localhost"], True, False),
    "cidr": (["--upstream-no-proxy", "127.0.0.0/8"], False, True),
    "ip-literal": (["--upstream-no-proxy", "127.0.0.1"], False, True),
    "star": (["--upstream-no-proxy", "*"], True, True),
    "not-a-suffix": (["--upstream-no-proxy", "calhost,sub.localhost"], False, False),
    "none": ([], False, False),
}


@pytest.mark.parametrize("case", NO_PROXY_CASES.keys())
def test_upstream_no_proxy(start_proxy, nginx, tinyproxy, case):
    args, localhost_direct, ip_direct = NO_PROXY_CASES[case]
    p = start_proxy("--upstream-proxy", tinyproxy.url(), *args)
    mark = tinyproxy.mark()
    https = https_url(nginx, case)
    plain = plain_url(nginx, f"{case}-{uuid.uuid4().hex}")
    assert get_https(p, https) == SMALL_BODY
    assert get_plain(p, plain) == SMALL_BODY

    rec = one_record(p, url_is(https))
    assert_ok(rec, https)
    connect_line = f"CONNECT localhost:{nginx.tls_port} "
    if localhost_direct:
        assert rec["server"]["ip"] in LOOPBACK_IPS, f"went direct: {rec['server']}"
        assert_no_request(tinyproxy, mark, connect_line)
    else:
        assert_via_upstream(rec, host="localhost", port=nginx.tls_port)
        tinyproxy.wait_request(connect_line, since=mark)

    rec = one_record(p, url_is(plain))
    assert_ok(rec, plain)
    if ip_direct:
        assert rec["server"] == {"host": "127.0.0.1", "port": nginx.http_port, "ip": "127.0.0.1"}
        assert_no_request(tinyproxy, mark, f"GET {plain}")
    else:
        assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)
        tinyproxy.wait_request(f"GET {plain} ", since=mark)


def test_cidr_no_proxy_for_https_to_an_ip(start_proxy, nginx, tinyproxy):
    """A CIDR entry matches an HTTPS target given as an IP literal too (CONNECT 127.0.0.1:port)."""
    p = start_proxy("--upstream-proxy", tinyproxy.url(), "--upstream-no-proxy", "10.0.0.0/8,127.0.0.0/8")
    mark = tinyproxy.mark()
    url = nginx.url("/small?cidr-https", tls=True)
    assert get_https(p, url) == SMALL_BODY
    rec = one_record(p, url_is(url))
    assert_ok(rec, url)
    assert rec["server"] == {"host": "127.0.0.1", "port": nginx.tls_port, "ip": "127.0.0.1"}
    assert_no_request(tinyproxy, mark, "CONNECT 127.0.0.1:")


# --- the egress proxy down -------------------------------------------------------------------------

def test_upstream_proxy_down(start_proxy, nginx):
    """Nothing listens where the egress proxy should be: 502 and upstream_connect for what goes
    through it; what goes direct (--upstream-no-proxy localhost) still works."""
    port = dead_port()
    p = start_proxy("--upstream-proxy", f"http://127.0.0.1:{port}", "--upstream-no-proxy", "localhost")
    https = nginx.url("/small?down", tls=True)          # 127.0.0.1: through the (dead) proxy
    assert status_of(p, https) == "502"
    msg = upstream_error(one_record(p, url_is(https)), url=https)
    assert "upstream proxy" in msg, msg

    plain = plain_url(nginx, "down")
    assert status_of(p, plain) == "502"
    rec = one_record(p, url_is(plain))
    msg = upstream_error(rec, url=plain)
    assert "upstream proxy" in msg, msg
    assert_via_upstream(rec, host="127.0.0.1", port=nginx.http_port)

    assert_serves_https(p, nginx)
    rec = one_record(p, url_is(https_url(nginx)))
    assert_ok(rec, https_url(nginx))
    assert rec["server"]["ip"] in LOOPBACK_IPS


# --- tunnels: ignored hosts, h2c, WebSocket ----------------------------------------------------------

def test_ignored_host_tunnel_through_upstream_proxy(start_proxy, nginx, tinyproxy, pki):
    p = start_proxy("--upstream-proxy", tinyproxy.url(), "--ignore-hosts", "^localhost$")
    url = https_url(nginx)
    mark = tinyproxy.mark()
    # Only the server's own CA: this works only if flowtap relayed the bytes untouched.
    r = curl("--proxy", p.url, "--cacert", pki.server_ca, "--http1.1", url).check()
    assert r.out == SMALL_BODY
    tinyproxy.wait_request(f"CONNECT localhost:{nginx.tls_port} ", since=mark)
    rec = one_record(p, lambda r: r["kind"] == "tunnel")
    assert rec["tls"]["intercepted"] is False
    assert_via_upstream(rec, host="localhost", port=nginx.tls_port)
    assert rec["bytes_up"] > 0
    assert rec["bytes_down"] > len(SMALL_BODY)
    assert "request" not in rec and "response" not in rec
    assert "error" not in rec, rec["error"]


@pytest.fixture(scope="module")
def grpc_server(pki):
    srv = GrpcServer(pki).start()
    yield srv
    srv.stop()


def test_h2c_through_upstream_proxy(start_proxy, tinyproxy, grpc_server):
    """gRPC on a plain-text channel: CONNECT to flowtap, h2c inside; flowtap's own CONNECT goes
    to the egress proxy and it speaks h2c inside that."""
    p = start_proxy("--upstream-proxy", tinyproxy.url())
    mark = tinyproxy.mark()
    call = channel(f"127.0.0.1:{grpc_server.plain_port}", proxy=p.url).unary_unary(method("Unary"))
    assert call(b"via-egress", timeout=10) == b"echo:via-egress:"
    tinyproxy.wait_request(f"CONNECT 127.0.0.1:{grpc_server.plain_port} ", since=mark)
    rec = one_record(p, lambda r: r["kind"] == "http")
    assert rec["request"]["http_version"] == "HTTP/2.0"
    assert rec["response"]["status"] == 200
    assert rec["response"]["trailers"]["grpc-status"] == "0"
    assert_via_upstream(rec, host="127.0.0.1", port=grpc_server.plain_port)


def test_wss_through_upstream_proxy(start_proxy, tinyproxy, wss_server):
    p = start_proxy("--upstream-proxy", tinyproxy.url())
    mark = tinyproxy.mark()
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    with ws_connect(wss_server.url(host="localhost"), proxy=p.url, ssl=ctx, open_timeout=10) as ws:
        for m in ("hello", "via the egress proxy"):
            ws.send(m)
            assert ws.recv(timeout=10) == m
    tinyproxy.wait_request(f"CONNECT localhost:{wss_server.port} ", since=mark)
    handshake = one_record(p, lambda r: r["kind"] == "http")
    assert handshake["response"]["status"] == 101
    assert handshake["tls"]["intercepted"] is True
    assert_via_upstream(handshake, host="localhost", port=wss_server.port)
    tunnel = one_record(p, lambda r: r["kind"] == "tunnel")
    assert tunnel["upgrade"] == "websocket"
    assert_via_upstream(tunnel, host="localhost", port=wss_server.port)
    assert "error" not in tunnel, tunnel["error"]


# --- bad values --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "https://127.0.0.1:3128",
    "socks5://127.0.0.1:1080",
    "notaurl",
    "http://",
    f"https://{UPSTREAM_PROXY_USER}:{UPSTREAM_PROXY_PASSWORD}@127.0.0.1:3128",
])
@pytest.mark.parametrize("via", ["flag", "env"])
def test_bad_upstream_proxy_is_refused(tmp_path, value, via):
    args = ["proxy", "--ca-dir", tmp_path / "ca", "--listen", f"127.0.0.1:{free_port()}"]
    if via == "flag":
        r = run_flowtap(*args, "--upstream-proxy", value, timeout=10)
    else:
        r = run_flowtap(*args, env={"FLOWTAP_UPSTREAM_PROXY": value}, timeout=10)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 64, f"{value!r}: exit {r.returncode}: {err}"
    assert "--upstream-proxy" in err, f"{value!r}: the message does not name the flag: {err}"
    assert not r.stdout, "nothing but diagnostics on a failed start"
    assert UPSTREAM_PROXY_PASSWORD not in err, f"the password is echoed: {err}"
