"""Transparent mode on a real topology: a client namespace (the "pod") whose outgoing TCP to ports
80 and 443 is redirected to flowtap by the sidecar's own rules script
(deploy/sidecar/init-redirect.sh, run here for real), and a server namespace with nginx (TLS, h2)
and an echo server. Clients have no proxy configured; flowtap runs as its own uid, which the
rules exclude. See support/netns.py for the topology."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.nginx import JSON_BODY, SMALL_BODY
from support.netns import (  # noqa: F401 - fixtures
    API_NAME, API_V4, APP_UID, CLIENT_V4, CLIENT_V6, ECHO_PORT, H2C_PORT, IGNORED_NAME, PROXY_UID, SERVER6_NAME,
    SERVER_NAME, SERVER_V4, SERVER_V6, TRANSPARENT_PORT, Topology, ns_proxy, redirect, require_tools, topo,
)
from support.pki import issued_by, load_cert

V4_LISTEN = f"transparent@127.0.0.1:{TRANSPARENT_PORT}"
V6_LISTEN = f"transparent@[::1]:{TRANSPARENT_PORT}"


def http_records(proxy, n=1, **kw):
    return proxy.records(n, where=lambda r: r["kind"] == "http", **kw)


def assert_transparent(rec, *, host, port, ip, url, tls):
    assert rec["kind"] == "http", rec
    assert rec["mode"] == "transparent", rec
    assert rec["server"]["host"] == host, rec["server"]
    assert rec["server"]["port"] == port, rec["server"]
    assert rec["server"]["ip"] == ip, rec["server"]
    assert rec["request"]["url"] == url, rec["request"]
    assert rec["response"]["status"] == 200, rec
    assert "error" not in rec, rec
    if tls:
        assert rec["tls"]["intercepted"] is True, rec["tls"]
        assert rec["tls"]["upstream_verified"] is True, rec["tls"]
    else:
        assert "tls" not in rec, rec


# --- the rules script alone --------------------------------------------------------------------

def test_init_script_installs_and_removes_rules(topo):
    r = topo.init_redirect("install", PROXY_UID=PROXY_UID, PROXY_PORT=TRANSPARENT_PORT,
                           REDIRECT_PORTS="80,443,8443", EXCLUDE_CIDRS="192.168.77.0/24,fd77:99::/64",
                           KUBERNETES_SERVICE_HOST=API_V4, IPV6="on")
    try:
        assert r.returncode == 0, r.stderr.decode()
        again = topo.init_redirect("install", PROXY_UID=PROXY_UID, PROXY_PORT=TRANSPARENT_PORT,
                                   REDIRECT_PORTS="80,443,8443", EXCLUDE_CIDRS="192.168.77.0/24,fd77:99::/64",
                                   KUBERNETES_SERVICE_HOST=API_V4, IPV6="on")
        assert again.returncode == 0, again.stderr.decode()
        v4 = topo.ns(topo.client, "iptables", "-t", "nat", "-S").stdout.decode().splitlines()
        v6 = topo.ns(topo.client, "ip6tables", "-t", "nat", "-S").stdout.decode().splitlines()
        redirect_rule = (f"-A FLOWTAP_OUTPUT -p tcp -m multiport --dports 80,443,8443 -m owner ! --uid-owner "
                         f"{PROXY_UID} -j REDIRECT --to-ports {TRANSPARENT_PORT}")
        for rules, lo, excluded in ((v4, "127.0.0.0/8", ["192.168.77.0/24", f"{API_V4}/32"]),
                                    (v6, "::1/128", ["fd77:99::/64"])):
            # Installing twice leaves one hook and one set of rules.
            assert rules.count("-A OUTPUT -p tcp -j FLOWTAP_OUTPUT") == 1, rules
            chain = [line for line in rules if line.startswith("-A FLOWTAP_OUTPUT")]
            want = ["-A FLOWTAP_OUTPUT -o lo -j RETURN", f"-A FLOWTAP_OUTPUT -d {lo} -j RETURN"]
            want += [f"-A FLOWTAP_OUTPUT -d {c} -j RETURN" for c in excluded]
            want += [redirect_rule]
            assert chain == want, "\n".join(rules)
    finally:
        removed = topo.init_redirect("remove")
    assert removed.returncode == 0, removed.stderr.decode()
    after = topo.nat_rules()
    assert "FLOWTAP" not in after and "REDIRECT" not in after, after
    # Removing again is harmless.
    assert topo.init_redirect("remove").returncode == 0


@pytest.mark.parametrize("settings, says", [
    ({}, "FLOWTAP_PROXY_UID is not set"),
    ({"PROXY_UID": "flowtap"}, "not a numeric uid"),
    ({"PROXY_UID": "0"}, "FLOWTAP_PROXY_UID=0"),
    ({"PROXY_UID": PROXY_UID, "REDIRECT_PORTS": "80,https"}, "'https' is not a port"),
    ({"PROXY_UID": PROXY_UID, "REDIRECT_PORTS": f"80,{TRANSPARENT_PORT}"}, "the proxy's own port"),
    ({"PROXY_UID": PROXY_UID, "PROXY_PORT": "70000"}, "FLOWTAP_PROXY_PORT"),
    ({"PROXY_UID": PROXY_UID, "EXCLUDE_CIDRS": "kubernetes.default"}, "not an address or CIDR"),
    ({"PROXY_UID": PROXY_UID, "IPV6": "maybe"}, "FLOWTAP_IPV6"),
    ({"PROXY_UID": PROXY_UID, "CA_FROM": "/nonexistent"}, "FLOWTAP_CA_FROM"),
])
def test_init_script_rejects_bad_settings(topo, settings, says):
    r = topo.init_redirect("install", **settings)
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert says in r.stderr.decode(), r.stderr.decode()
    assert "FLOWTAP" not in topo.nat_rules(), "a rejected configuration must install nothing"


# --- traffic -----------------------------------------------------------------------------------

def test_plain_http_curl(topo, redirect, ns_proxy):
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN])
    r = topo.curl("-H", "X-Trace: plain-1", "http://server.test/echo?x=1&y=2").check()
    seen = r.json()
    # The real server answered: it saw the Host the client sent and a connection from the
    # client namespace (the proxy's upstream connection, not redirected again).
    assert seen["host"] == SERVER_NAME
    assert seen["path"] == "/echo?x=1&y=2"
    assert seen["headers"]["x-trace"] == "plain-1"
    assert seen["headers"]["x-front-client"] == CLIENT_V4
    assert seen["headers"]["x-front-addr"] == SERVER_V4
    rec = proxy.record()
    assert_transparent(rec, host=SERVER_NAME, port=80, ip=SERVER_V4,
                       url="http://server.test/echo?x=1&y=2", tls=False)
    assert rec["client"]["ip"] == CLIENT_V4
    assert rec["request"]["method"] == "GET"
    assert rec["request"]["http_version"] == "HTTP/1.1"
    assert rec["request"]["headers"]["host"] == SERVER_NAME
    assert rec["request"]["headers"]["x-trace"] == "plain-1"
    assert rec["response"]["headers"]["x-echo"] == "flowtap-netns"
    assert rec["response"]["body_size"] == len(r.out)


@pytest.mark.parametrize("flag, alpn, version, path, body", [
    ("--http1.1", "http/1.1", "HTTP/1.1", "/small", SMALL_BODY),
    ("--http2", "h2", "HTTP/2.0", "/json", JSON_BODY),
])
def test_https_curl(topo, redirect, ns_proxy, flag, alpn, version, path, body):
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN])
    url = f"https://{SERVER_NAME}{path}"
    r = topo.curl("--cacert", proxy.ca_path, flag, "-w", "|%{http_version}", url).check()
    assert r.out == body + b"|" + (b"2" if alpn == "h2" else b"1.1")
    rec = proxy.record()
    assert_transparent(rec, host=SERVER_NAME, port=443, ip=SERVER_V4, url=url, tls=True)
    assert rec["tls"]["sni"] == SERVER_NAME
    assert rec["tls"]["alpn"] == alpn
    assert rec["request"]["http_version"] == version
    assert rec["response"]["http_version"] == version
    assert rec["response"]["body_size"] == len(body)
    # The same URL without the flowtap CA fails: the client really talked to the proxy.
    bad = topo.curl(flag, url)
    assert bad.rc == 60, (bad.rc, bad.err)


def test_h2c_prior_knowledge(topo, redirect, ns_proxy):
    """Plain-text HTTP/2 with prior knowledge (what in-cluster gRPC speaks) to a server that
    speaks only that: redirected, it reaches the server as h2c, not HTTP/1.1."""
    redirect(REDIRECT_PORTS=f"80,443,{H2C_PORT}")
    proxy = ns_proxy(modes=[V4_LISTEN])
    url = f"http://{SERVER_NAME}:{H2C_PORT}/host"
    r = topo.curl("--http2-prior-knowledge", "-w", "|%{http_version}", url).check()
    body, _, version = r.text.rpartition("|")
    assert version == "2"
    seen = json.loads(body)
    assert seen["protocol"] == "HTTP/2.0" and seen["port"] == str(H2C_PORT), seen
    assert seen["client"] == CLIENT_V4, "the proxy's own connection, from the client namespace"
    rec = proxy.record()
    assert_transparent(rec, host=SERVER_NAME, port=H2C_PORT, ip=SERVER_V4, url=url, tls=False)
    assert rec["request"]["http_version"] == "HTTP/2.0"
    assert rec["response"]["http_version"] == "HTTP/2.0"
    assert rec["response"]["body_size"] == len(body.encode())


def test_leaf_is_from_flowtap_ca(topo, redirect, ns_proxy):
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN])
    pem = topo.ns(topo.client, "openssl", "s_client", "-connect", f"{SERVER_V4}:443", "-servername",
                  SERVER_NAME, "-showcerts", input=b"", timeout=20).stdout.decode()
    leaf_pem = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index("-----END CERTIFICATE-----") + 25]
    from cryptography import x509
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    assert issued_by(leaf, load_cert(proxy.ca_path)), leaf.issuer
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SERVER_NAME in sans.get_values_for_type(x509.DNSName)


def test_python_clients_as_app_uid(topo, redirect, ns_proxy):
    """requests and httpx (HTTP/2), as an ordinary application uid, no proxy settings at all."""
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN])
    proxy.ca_path.parent.chmod(0o755)
    code = f"""
import json, requests, httpx
# httpx first: once an HTTP/1.1 upstream connection is kept, flowtap answers a client that
# also offers http/1.1 with it (see the upstream pool), and this is to see HTTP/2 end to end.
with httpx.Client(http2=True, verify={str(proxy.ca_path)!r}, trust_env=False, timeout=10) as c:
    h = c.get("https://{SERVER_NAME}/json")
s = requests.Session()
s.trust_env = False
a = s.get("https://{SERVER_NAME}/echo?via=requests", verify={str(proxy.ca_path)!r}, timeout=10)
b = s.post("http://{SERVER_NAME}/echo", data=b"x" * 5000, headers={{"Content-Type": "application/octet-stream"}}, timeout=10)
print(json.dumps({{"a": a.json(), "b": b.json(), "h_version": h.http_version, "h_body": h.text}}))
"""
    out = topo.python(code, uid=APP_UID)
    assert out["a"]["host"] == SERVER_NAME and out["a"]["path"] == "/echo?via=requests"
    assert out["b"]["body_size"] == 5000 and out["b"]["method"] == "POST"
    assert out["h_version"] == "HTTP/2"
    assert out["h_body"] == JSON_BODY.decode()
    recs = http_records(proxy, 3)
    by_url = {r["request"]["url"]: r for r in recs}
    assert set(by_url) == {f"https://{SERVER_NAME}/echo?via=requests", f"http://{SERVER_NAME}/echo",
                           f"https://{SERVER_NAME}/json"}, list(by_url)
    post = by_url[f"http://{SERVER_NAME}/echo"]
    assert post["request"]["method"] == "POST"
    assert post["request"]["body_size"] == 5000
    assert post["request"]["headers"]["content-type"] == "application/octet-stream"
    assert by_url[f"https://{SERVER_NAME}/json"]["request"]["http_version"] == "HTTP/2.0"
    for rec in recs:
        assert rec["mode"] == "transparent" and rec["server"]["ip"] == SERVER_V4
        assert "error" not in rec, rec


def test_ip_literal_without_sni(topo, redirect, ns_proxy):
    """No SNI (an IP literal): the server is named by its address, the leaf carries an IP SAN."""
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN])
    r = topo.curl("--cacert", proxy.ca_path, f"https://{SERVER_V4}/small").check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert_transparent(rec, host=SERVER_V4, port=443, ip=SERVER_V4, url=f"https://{SERVER_V4}/small", tls=True)
    assert "sni" not in rec["tls"], rec["tls"]


def test_ipv6(topo, redirect, ns_proxy):
    redirect(IPV6="on")
    proxy = ns_proxy(modes=[V4_LISTEN, V6_LISTEN])
    r = topo.curl("-6", "--cacert", proxy.ca_path, "--http2", f"https://{SERVER6_NAME}/json").check()
    assert r.out == JSON_BODY
    seen = topo.curl("-H", "X-Trace: v6", f"http://[{SERVER_V6}]/echo").check().json()
    assert seen["host"] == f"[{SERVER_V6}]"
    assert seen["headers"]["x-front-client"] == CLIENT_V6, "the upstream connection left from the client ns"
    tls = proxy.record(lambda r: r["request"]["url"].startswith("https"))
    assert_transparent(tls, host=SERVER6_NAME, port=443, ip=SERVER_V6, url=f"https://{SERVER6_NAME}/json", tls=True)
    assert tls["tls"]["sni"] == SERVER6_NAME
    assert tls["client"]["ip"] == CLIENT_V6
    plain = proxy.record(lambda r: r["request"]["url"].startswith("http:"))
    assert plain["request"]["url"] == f"http://[{SERVER_V6}]/echo"
    assert plain["server"]["ip"] == SERVER_V6 and plain["server"]["port"] == 80
    # Both spellings occur across modes today (see the report); the address is what matters.
    assert plain["server"]["host"].strip("[]") == SERVER_V6
    assert plain["mode"] == "transparent" and plain["response"]["status"] == 200


def test_dual_stack_listener(topo, redirect, ns_proxy):
    """One `transparent@[::]:PORT` listener takes both families: IPv4 clients arrive v4-mapped
    and their original destination is still found."""
    redirect(IPV6="on")
    proxy = ns_proxy(modes=[f"transparent@[::]:{TRANSPARENT_PORT}"])
    assert topo.curl("-4", f"http://{SERVER_NAME}/echo").check().json()["host"] == SERVER_NAME
    assert topo.curl("-6", "--cacert", proxy.ca_path, f"https://{SERVER6_NAME}/small").check().out == SMALL_BODY
    recs = proxy.records(2)
    assert all(r["kind"] == "http" for r in recs), json.dumps(recs)[:3000]
    v4 = next(r for r in recs if r["server"]["ip"] == SERVER_V4)
    v6 = next(r for r in recs if r["server"]["ip"] == SERVER_V6)
    assert v4["request"]["url"] == f"http://{SERVER_NAME}/echo" and v4["client"]["ip"] == CLIENT_V4
    assert v6["request"]["url"] == f"https://{SERVER6_NAME}/small" and v6["client"]["ip"] == CLIENT_V6


# --- what is not intercepted -------------------------------------------------------------------

def peer_cert_issuer(topo, host: str, port: int = 443, sni: str | None = None) -> str:
    out = topo.ns(topo.client, "openssl", "s_client", "-connect", f"{host}:{port}",
                  *(["-servername", sni] if sni else ["-noservername"]), input=b"", timeout=20).stdout.decode()
    line = next(l for l in out.splitlines() if l.strip().startswith("i:") or "issuer=" in l)
    return line


def test_ignored_host_relayed_untouched(topo, redirect, ns_proxy):
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN], args=["--ignore-hosts", r"^ignored\.test$"])
    # Trusting only the server's own CA works: the client talked to nginx end to end.
    r = topo.curl("--cacert", topo.pki.ca, f"https://{IGNORED_NAME}/small").check()
    assert r.out == SMALL_BODY
    assert "flowtap netns server CA" in peer_cert_issuer(topo, SERVER_V4, sni=IGNORED_NAME)
    # A host that is not ignored is intercepted on the same connection path.
    assert topo.curl("--cacert", proxy.ca_path, f"https://{SERVER_NAME}/small").check().out == SMALL_BODY
    recs = proxy.records(3)
    tunnels = [t for t in recs if t["kind"] == "tunnel"]
    assert len(tunnels) == 2, json.dumps(recs)[:3000]      # curl and openssl s_client
    for t in tunnels:
        assert t["mode"] == "transparent"
        assert t["tls"]["intercepted"] is False and t["tls"]["sni"] == IGNORED_NAME
        assert t["server"]["ip"] == SERVER_V4 and t["server"]["port"] == 443
        assert t["bytes_up"] > 0 and t["bytes_down"] > 0
    http = [r for r in recs if r["kind"] == "http"]
    assert [r["request"]["url"] for r in http] == [f"https://{SERVER_NAME}/small"]


def test_ignored_ip_relayed_untouched(topo, redirect, ns_proxy):
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN], args=["--ignore-hosts", r"^10\.77\.0\.2$"])
    assert topo.curl("--cacert", topo.pki.ca, f"https://{SERVER_NAME}/json").check().out == JSON_BODY
    t = proxy.record()
    assert t["kind"] == "tunnel" and t["mode"] == "transparent", t
    assert t["server"]["ip"] == SERVER_V4 and t["tls"]["intercepted"] is False
    assert t["tls"]["sni"] == SERVER_NAME


def test_excluded_destinations_are_not_redirected(topo, redirect, ns_proxy):
    """The API server (KUBERNETES_SERVICE_HOST), ports not in the list, and loopback go direct."""
    redirect(KUBERNETES_SERVICE_HOST=API_V4)
    proxy = ns_proxy(modes=[V4_LISTEN])
    # The "API server": the client sees the server's own certificate, flowtap sees nothing.
    assert topo.curl("--cacert", topo.pki.ca, f"https://{API_NAME}/small").check().out == SMALL_BODY
    # A port that is not redirected.
    assert topo.curl(f"http://{SERVER_NAME}:{ECHO_PORT}/direct").check().json()["path"] == "/direct"
    # Loopback port 80 in the client namespace stays local.
    srv = topo.ns_popen(topo.client, "python3", "-m", "http.server", "--bind", "127.0.0.1", "80",
                        "--directory", str(topo.workdir / "nginx" / "www"))
    try:
        topo.wait_listening(topo.client, 80)
        assert topo.curl("http://127.0.0.1/small").check().out == SMALL_BODY
    finally:
        srv.terminate()
        srv.wait(10)
    # One request that is redirected, so that "nothing recorded" above means something.
    topo.curl(f"http://{SERVER_NAME}/counted").check()
    recs = proxy.records(1)
    assert [r["request"]["url"] for r in recs] == [f"http://{SERVER_NAME}/counted"], json.dumps(recs)[:3000]


# --- loops and strays --------------------------------------------------------------------------

def test_owner_match_keeps_proxy_traffic_out_of_the_loop(topo, redirect, ns_proxy):
    """The proxy's upstream connections leave directly: one client connection per request at the
    proxy, the server sees the client namespace's address, one record per exchange."""
    redirect()
    proxy = ns_proxy(modes=[V4_LISTEN])
    before = proxy.metrics()["flowtap_connections_total"]   # the /healthz checks so far
    for i in range(3):
        assert topo.curl(f"http://{SERVER_NAME}/echo?i={i}").check().json()["headers"]["x-front-client"] == CLIENT_V4
        assert topo.curl("--cacert", proxy.ca_path, f"https://{SERVER_NAME}/small").check().out == SMALL_BODY
    recs = proxy.records(6)
    assert len(recs) == 6 and all(r["kind"] == "http" and "error" not in r for r in recs), json.dumps(recs)[:3000]
    after = proxy.metrics()["flowtap_connections_total"]
    # 6 redirected client connections + the one /metrics request just made.
    assert after - before == 7, (before, after)
    # The rule that made this so is the owner match on the proxy's uid.
    assert f"! --uid-owner {PROXY_UID}" in topo.nat_rules()


def test_not_redirected_connection_is_refused(topo, ns_proxy):
    """A client that connects to the transparent port itself (no redirect) is refused with a
    record, not proxied to itself."""
    proxy = ns_proxy(modes=[V4_LISTEN])
    # Load conntrack in the namespace (it is what SO_ORIGINAL_DST reads).
    topo.ns(topo.client, "iptables", "-t", "nat", "-S")
    r = topo.curl(f"http://127.0.0.1:{TRANSPARENT_PORT}/loop", timeout=5)
    assert r.rc != 0, r.text
    rec = proxy.records(1, where=lambda r: r["kind"] == "connection")[0]
    assert rec["mode"] == "transparent"
    assert rec["error"]["kind"] == "refused", rec
    assert "proxy itself" in rec["error"]["message"] or "original destination" in rec["error"]["message"]
    assert not [r for r in proxy.records() if r["kind"] == "http"]


def test_loop_without_owner_exclusion_is_refused(topo, redirect, ns_proxy):
    """Rules that exclude the wrong uid: the proxy's own upstream connection comes back to it.
    Expected: that connection is refused with a `connection` record naming the loop, and the
    client gets an error quickly; not a chain of connections."""
    redirect(PROXY_UID=APP_UID)          # the proxy runs as PROXY_UID: not excluded
    proxy = ns_proxy(modes=[V4_LISTEN], args=["--upstream-timeout", "3", "--response-timeout", "3",
                                                      "--max-connections", "64"])
    url = f"http://{SERVER_NAME}/echo"
    r = topo.curl("-w", "|%{http_code}", url, timeout=10)
    assert r.rc == 0 and r.text.endswith("|502"), (r.rc, r.text, r.err)
    refused = proxy.records(1, where=lambda x: x["kind"] == "connection")
    assert refused[0]["error"]["kind"] == "refused", refused
    assert "loop" in refused[0]["error"]["message"], refused[0]
    # The client's exchange failed at once on the refused connection, not after
    # --response-timeout, and no hop was served in between (an own connection that comes back
    # before its socket is registered is looked at again once it sends its first bytes).
    failed = proxy.record(where=lambda x: x["kind"] == "http")
    assert failed["request"]["url"] == url and "response" not in failed, failed
    assert failed["error"]["kind"] in ("upstream_closed", "upstream_connect"), failed["error"]
    assert proxy.metrics()["flowtap_connections_total"] < 10, "the loop went on"


# --- cleanup -----------------------------------------------------------------------------------

def test_rules_and_namespaces_are_removed():
    """A topology of its own: rules installed, then everything torn down, and checked gone."""
    require_tools()
    t = Topology().open()
    try:
        assert t.init_redirect("install", PROXY_UID=PROXY_UID, IPV6="on").returncode == 0
        assert "FLOWTAP_OUTPUT" in t.nat_rules()
        assert t.init_redirect("remove").returncode == 0
        rules = t.nat_rules()
        assert "FLOWTAP" not in rules and "REDIRECT" not in rules, rules
    finally:
        t.close()
    assert t.namespaces_left() == []
    assert not t.workdir.exists()
    assert not (Path("/etc/netns") / t.client).exists()
