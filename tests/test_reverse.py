"""Reverse mode in front of a real server: nginx (TLS with h2 and http/1.1, and plain HTTP) in the
server namespace of support/netns.py, flowtap in the client namespace with `--mode reverse:URL`.
Clients speak plain HTTP or TLS (a leaf from the flowtap CA) to flowtap, HTTP/1.1 or HTTP/2; the
upstream is what the URL says. nginx reports the Host, scheme and protocol it saw (/host), and
the echo server behind it what it received (/echo)."""

from __future__ import annotations

import json

import pytest

from support.nginx import JSON_BODY, SMALL_BODY
from support.netns import (  # noqa: F401 - fixtures
    CLIENT_V4, CLIENT_V6, ECHO_PORT, SERVER_NAME, SERVER_V4, SERVER_V6, TRANSPARENT_PORT,
    ns_proxy, redirect, topo,
)

TLS_UP = 18443     # reverse:https://server.test
PLAIN_UP = 18080   # reverse:http://server.test
ECHO_UP = 18000    # reverse:http://server.test:8000 (a non-default port, no nginx in between)
V6_UP = 18444      # reverse:https://[fd77::2], listening on [::1]

MODES = [
    f"reverse:https://{SERVER_NAME}@127.0.0.1:{TLS_UP}",
    f"reverse:http://{SERVER_NAME}@127.0.0.1:{PLAIN_UP}",
    f"reverse:http://{SERVER_NAME}:{ECHO_PORT}@127.0.0.1:{ECHO_UP}",
    f"reverse:https://[{SERVER_V6}]@[::1]:{V6_UP}",
]


@pytest.fixture
def rproxy(ns_proxy):
    return ns_proxy(modes=MODES)


# (client side: how curl talks to flowtap) -> curl flags, scheme, expected client HTTP version
CLIENT_SIDES = {
    "plain-h1": (["--http1.1"], "http", "HTTP/1.1"),
    "plain-h2": (["--http2-prior-knowledge"], "http", "HTTP/2.0"),
    "tls-h1": (["--http1.1"], "https", "HTTP/1.1"),
    "tls-h2": (["--http2"], "https", "HTTP/2.0"),
}


@pytest.mark.parametrize("client_side", list(CLIENT_SIDES))
@pytest.mark.parametrize("upstream", ["https", "http"])
def test_reverse_matrix(topo, rproxy, upstream, client_side):
    flags, scheme, client_version = CLIENT_SIDES[client_side]
    port = TLS_UP if upstream == "https" else PLAIN_UP
    extra = ["--cacert", rproxy.ca_path] if scheme == "https" else []
    # Clients name the proxy "localhost" (SNI localhost; the leaf is minted for it).
    url = f"{scheme}://localhost:{port}/host?side={client_side}&n=1"
    r = topo.curl(*flags, *extra, "-H", f"X-Case: {upstream}-{client_side}", "-w", "|%{http_version}", url).check()
    body, _, got_version = r.text.rpartition("|")
    assert got_version == ("2" if client_version == "HTTP/2.0" else "1.1")
    seen = json.loads(body)
    # The server saw its own name as Host, on the scheme the reverse URL says.
    assert seen["host"] == SERVER_NAME, seen
    assert seen["uri"] == f"/host?side={client_side}&n=1"
    assert seen["x_case"] == f"{upstream}-{client_side}"
    assert seen["scheme"] == upstream
    assert seen["port"] == ("443" if upstream == "https" else "80")
    assert seen["client"] == CLIENT_V4
    # An HTTP/2 client is forwarded over HTTP/2 when the TLS upstream offers it; a plain-HTTP
    # upstream is spoken to in HTTP/1.1.
    upstream_version = client_version if upstream == "https" else "HTTP/1.1"
    assert seen["protocol"] == upstream_version

    rec = rproxy.record()
    assert rec["kind"] == "http" and rec["mode"] == "reverse", rec
    assert rec["request"]["url"] == f"{upstream}://{SERVER_NAME}/host?side={client_side}&n=1"
    assert rec["request"]["http_version"] == client_version
    assert rec["response"]["http_version"] == upstream_version
    assert rec["response"]["status"] == 200 and "error" not in rec, rec
    assert rec["response"]["body_size"] == len(body.encode())
    assert rec["server"] == {"host": SERVER_NAME, "port": 443 if upstream == "https" else 80, "ip": SERVER_V4}
    assert rec["client"]["ip"] == "127.0.0.1"
    if scheme == "https":
        assert rec["tls"]["intercepted"] is True and rec["tls"]["sni"] == "localhost"
        assert rec["tls"]["alpn"] == ("h2" if client_version == "HTTP/2.0" else "http/1.1")
    else:
        assert "tls" not in rec, rec
    if upstream == "https" and scheme == "https":
        assert rec["tls"]["upstream_verified"] is True


@pytest.mark.parametrize("upstream, port", [("https", TLS_UP), ("http", PLAIN_UP)])
def test_reverse_static_and_upload(topo, rproxy, upstream, port):
    small = topo.curl(f"http://127.0.0.1:{port}/small").check()
    assert small.out == SMALL_BODY
    js = topo.curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/json").check()
    assert js.out == JSON_BODY
    payload = bytes(range(256)) * 400
    body_file = rproxy.workdir / "upload.bin"
    body_file.write_bytes(payload)
    up = topo.curl("-X", "PUT", "--data-binary", f"@{body_file}", "-H", "Content-Type: application/octet-stream",
                   f"http://127.0.0.1:{port}/echo").check().json()
    assert up["body_size"] == len(payload) and up["method"] == "PUT"
    recs = rproxy.records(3)
    urls = [r["request"]["url"] for r in recs]
    assert sorted(urls) == sorted(f"{upstream}://{SERVER_NAME}{p}" for p in ("/small", "/json", "/echo")), urls
    put = next(r for r in recs if r["request"]["method"] == "PUT")
    assert put["request"]["body_size"] == len(payload)
    small_rec = next(r for r in recs if r["request"]["url"].endswith("/small"))
    assert small_rec["response"]["body_size"] == len(SMALL_BODY)
    assert small_rec["response"]["headers"]["content-type"] == "text/plain"


def test_reverse_non_default_port(topo, rproxy):
    """The Host names the upstream with its port when the port is not the scheme's default."""
    seen = topo.curl(f"http://127.0.0.1:{ECHO_UP}/direct?q=1").check().json()
    assert seen["host"] == f"{SERVER_NAME}:{ECHO_PORT}"
    assert "x-front-protocol" not in seen["headers"], "no nginx in between on this port"
    rec = rproxy.record()
    assert rec["request"]["url"] == f"http://{SERVER_NAME}:{ECHO_PORT}/direct?q=1"
    assert rec["server"] == {"host": SERVER_NAME, "port": ECHO_PORT, "ip": SERVER_V4}


def test_reverse_ipv6(topo, rproxy):
    """Listening on [::1], in front of an IPv6 literal over TLS (verified by its IP SAN)."""
    r = topo.curl("--http2", "--cacert", rproxy.ca_path, "--resolve", f"front.test:{V6_UP}:::1",
                  f"https://front.test:{V6_UP}/host").check()
    seen = r.json()
    assert seen["host"] == f"[{SERVER_V6}]"
    assert seen["client"] == CLIENT_V6
    assert seen["protocol"] == "HTTP/2.0"
    rec = rproxy.record()
    assert rec["mode"] == "reverse"
    assert rec["request"]["url"] == f"https://[{SERVER_V6}]/host"
    assert rec["server"]["ip"] == SERVER_V6 and rec["server"]["port"] == 443
    assert rec["client"]["ip"] == "::1"
    assert rec["tls"]["sni"] == "front.test" and rec["tls"]["upstream_verified"] is True


def test_reverse_python_clients(topo, rproxy):
    rproxy.ca_path.parent.chmod(0o755)
    code = f"""
import json, requests, httpx
s = requests.Session()
s.trust_env = False
a = s.post("https://localhost:{TLS_UP}/echo", json={{"k": "v"}}, verify={str(rproxy.ca_path)!r}, timeout=10)
with httpx.Client(http2=True, verify={str(rproxy.ca_path)!r}, trust_env=False, timeout=10) as c:
    h = c.get("https://localhost:{PLAIN_UP}/echo")
print(json.dumps({{"a": a.json(), "h": h.json(), "hv": h.http_version}}))
"""
    out = topo.python(code)
    assert out["a"]["host"] == SERVER_NAME and json.loads(out["a"]["body"]) == {"k": "v"}
    assert out["h"]["host"] == SERVER_NAME
    # httpx offers ALPN http/1.1 first; with a plain-HTTP upstream flowtap takes the client's
    # first choice (with a TLS upstream, the upstream's choice: h2 from nginx).
    assert out["hv"] in ("HTTP/1.1", "HTTP/2")
    assert out["h"]["headers"]["x-front-scheme"] == "http"
    recs = rproxy.records(2)
    assert {r["request"]["url"] for r in recs} == {f"https://{SERVER_NAME}/echo", f"http://{SERVER_NAME}/echo"}
    post = next(r for r in recs if r["request"]["method"] == "POST")
    assert post["request"]["headers"]["content-type"] == "application/json"
    assert post["request"]["body_size"] == len(b'{"k": "v"}')


def test_reverse_upstream_down_is_a_record(topo, ns_proxy):
    """An upstream nobody listens on: the client gets a 502 that says why, and a record."""
    proxy = ns_proxy(modes=[f"reverse:http://{SERVER_NAME}:9@127.0.0.1:{PLAIN_UP}"])
    r = topo.curl("-w", "|%{http_code}", f"http://127.0.0.1:{PLAIN_UP}/x")
    assert r.rc == 0 and r.text.endswith("|502"), r.text
    rec = proxy.record()
    assert rec["mode"] == "reverse" and rec["error"]["kind"] == "upstream_connect", rec
    assert "response" not in rec
    assert rec["request"]["url"] == f"http://{SERVER_NAME}:9/x"


def test_reverse_tls_client_without_sni(topo, rproxy):
    r = topo.curl("--cacert", rproxy.ca_path, f"https://127.0.0.1:{TLS_UP}/small")
    assert r.rc == 0, r.err
    assert r.out == SMALL_BODY
    rec = rproxy.record()
    assert rec["mode"] == "reverse" and rec["request"]["url"] == f"https://{SERVER_NAME}/small", rec
    assert rec["response"]["status"] == 200 and rec["response"]["body_size"] == len(SMALL_BODY)
    assert rec["tls"]["intercepted"] is True and "sni" not in rec["tls"], rec["tls"]
    assert rec["server"] == {"host": SERVER_NAME, "port": 443, "ip": SERVER_V4}


def test_h2_complete_response_is_not_client_closed(topo, rproxy):
    for i in range(30):
        topo.curl("--http2", "--cacert", rproxy.ca_path, f"https://localhost:{TLS_UP}/echo?i={i}").check()
    recs = rproxy.records(30)
    closed = [r for r in recs if r.get("error", {}).get("kind") == "client_closed"]
    assert not closed, f"{len(closed)} of 30 complete exchanges recorded as client_closed: {closed[0]}"


def test_modes_side_by_side(topo, redirect, ns_proxy):
    """regular, transparent and reverse in one process, each on its own listener; each record
    says which mode carried it."""
    redirect()
    proxy = ns_proxy(modes=[f"transparent@127.0.0.1:{TRANSPARENT_PORT}",
                            f"reverse:http://{SERVER_NAME}@127.0.0.1:{PLAIN_UP}"])
    assert topo.curl(f"http://{SERVER_NAME}/echo?via=transparent").check().json()["host"] == SERVER_NAME
    assert topo.curl(f"http://127.0.0.1:{PLAIN_UP}/echo?via=reverse").check().json()["host"] == SERVER_NAME
    # Regular (explicit proxy) on the regular listener, for a port that is not redirected.
    seen = topo.curl("--proxy", f"http://127.0.0.1:{proxy.port}",
                     f"http://{SERVER_NAME}:{ECHO_PORT}/echo?via=regular").check().json()
    assert seen["host"] == f"{SERVER_NAME}:{ECHO_PORT}"
    recs = proxy.records(3)
    modes = {r["request"]["url"].split("via=")[1]: r["mode"] for r in recs}
    assert modes == {"transparent": "transparent", "reverse": "reverse", "regular": "regular"}, modes
