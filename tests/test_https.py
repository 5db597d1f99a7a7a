"""HTTPS through CONNECT with interception: HTTP/1.1 and HTTP/2 clients, IP literals, Python
clients, the minted leaf, and ignored hosts relayed untouched."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import ssl

import httpx
import pytest
import requests
from cryptography import x509

from support.clients import curl, leaf_via_proxy
from support.nginx import JSON_BODY, SMALL_BODY
from support.pki import issued_by, load_cert
from support.net import free_port, wait_listening
from support.proxy import run_flowtap

LOOPBACK_IPS = ("127.0.0.1", "::1")


def assert_intercepted(rec, *, host, port, sni, alpn, version):
    assert rec["kind"] == "http"
    assert rec["server"]["host"] == host
    assert rec["server"]["port"] == port
    assert rec["server"]["ip"] in LOOPBACK_IPS
    tls = rec["tls"]
    assert tls["intercepted"] is True
    if sni is None:
        assert "sni" not in tls, f"the client sent no SNI, record says {tls.get('sni')!r}"
    else:
        assert tls["sni"] == sni
    assert tls["alpn"] == alpn
    assert tls["upstream_verified"] is True
    assert tls["client_version"] == "TLSv1.3"
    assert tls["server_version"] == "TLSv1.3"
    assert rec["request"]["http_version"] == version
    assert rec["response"]["http_version"] == version, "the upstream was offered the client's ALPN"
    assert "wait_ms" in rec["timings"], rec["timings"]
    assert "error" not in rec


def test_https_h1_curl(proxy, nginx):
    url = nginx.url("/small", host="localhost", tls=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--http1.1", "-w", "|%{http_version}", url).check()
    assert r.out == SMALL_BODY + b"|1.1"
    rec = proxy.record()
    assert_intercepted(rec, host="localhost", port=nginx.tls_port, sni="localhost", alpn="http/1.1",
                       version="HTTP/1.1")
    assert rec["request"]["method"] == "GET"
    assert rec["request"]["url"] == url
    assert rec["request"]["headers"]["host"] == f"localhost:{nginx.tls_port}"
    assert rec["response"]["status"] == 200
    assert rec["response"]["reason"] == "OK"
    assert rec["response"]["body_size"] == len(SMALL_BODY)
    assert rec["response"]["headers"]["content-type"] == "text/plain"
    assert rec["tls"]["client_alpn"] == ["http/1.1"]


def test_https_h2_curl(proxy, nginx):
    url = nginx.url("/json", host="localhost", tls=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--http2", "-w", "|%{http_version}", url).check()
    assert r.out == JSON_BODY + b"|2"
    rec = proxy.record()
    assert_intercepted(rec, host="localhost", port=nginx.tls_port, sni="localhost", alpn="h2",
                       version="HTTP/2.0")
    assert rec["request"]["url"] == url
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == len(JSON_BODY)
    assert rec["response"]["headers"]["content-type"] == "application/json"
    assert rec["tls"]["client_alpn"] == ["h2", "http/1.1"]


def test_server_sees_the_clients_protocol(proxy, nginx):
    """An HTTP/1.1 client's requests reach the server as HTTP/1.1 even when the proxy keeps an
    HTTP/2 connection to that server for an HTTP/2 client (an `Upgrade`, or a server that acts
    on the protocol, must see what the client sent), and the other way round."""
    h2 = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--http2",
              nginx.url("/small", host="localhost", tls=True)).check()
    assert h2.out == SMALL_BODY
    url = nginx.url("/protocol", host="localhost", tls=True)
    h1 = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--http1.1", url, url).check()
    assert h1.out == b"HTTP/1.1\nHTTP/1.1\n", "both requests of the HTTP/1.1 connection"
    h2 = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--http2", url).check()
    assert h2.out == b"HTTP/2.0\n"
    recs = proxy.records(4)
    versions = [(r["request"]["http_version"], r["response"]["http_version"])
                for r in recs if r["request"]["url"] == url]
    assert sorted(versions) == [("HTTP/1.1", "HTTP/1.1")] * 2 + [("HTTP/2.0", "HTTP/2.0")], versions


def test_https_h2_httpx_one_connection(proxy, nginx):
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    base = nginx.url("", host="localhost", tls=True)
    urls = [base + "/small", base + "/json", base + "/small?x=1&y=%20z"]
    with httpx.Client(http2=True, proxy=proxy.url, verify=ctx, trust_env=False, timeout=10) as c:
        for u in urls:
            resp = c.get(u)
            assert resp.status_code == 200
            assert resp.http_version == "HTTP/2"
    recs = proxy.records(3)
    assert len(recs) == 3
    assert sorted(r["request"]["url"] for r in recs) == sorted(urls)
    assert len({r["id"] for r in recs}) == 3
    assert len({r["connection_id"] for r in recs}) == 1, "one client connection carried all three"
    for rec in recs:
        assert_intercepted(rec, host="localhost", port=nginx.tls_port, sni="localhost", alpn="h2",
                           version="HTTP/2.0")
        assert rec["request"]["headers"]["user-agent"].startswith("python-httpx/")


def test_https_ip_literal(proxy, nginx):
    url = nginx.url("/small", host="127.0.0.1", tls=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--http1.1", url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record()
    assert rec["request"]["url"] == url
    assert rec["server"] == {"host": "127.0.0.1", "port": nginx.tls_port, "ip": "127.0.0.1"}
    assert_intercepted(rec, host="127.0.0.1", port=nginx.tls_port, sni=None, alpn="http/1.1",
                       version="HTTP/1.1")
    leaf = leaf_via_proxy(proxy.port, "127.0.0.1", nginx.tls_port, sni=None)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)


def test_python_requests_session(proxy, nginx):
    s = requests.Session()
    s.trust_env = False
    s.proxies = proxy.requests_proxies
    s.verify = str(proxy.ca_path)
    r = s.get(nginx.url("/json", host="localhost", tls=True), timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "flowtap"
    payload = bytes(range(256)) * 4096          # 1 MiB
    r = s.post(nginx.url("/upload", host="localhost", tls=True), data=payload,
               headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 200 and r.json()["received"] == len(payload)
    recs = proxy.records(2)
    assert len(recs) == 2
    get = next(r for r in recs if r["request"]["method"] == "GET")
    post = next(r for r in recs if r["request"]["method"] == "POST")
    assert get["connection_id"] == post["connection_id"]
    assert post["request"]["url"] == nginx.url("/upload", host="localhost", tls=True)
    assert post["request"]["body_size"] == len(payload)
    assert post["request"]["headers"]["content-length"] == str(len(payload))
    assert post["request"]["headers"]["content-type"] == "application/octet-stream"
    assert post["response"]["status"] == 200
    assert post["response"]["headers"]["content-type"] == "application/json"
    assert get["response"]["body_size"] == len(JSON_BODY)


def test_leaf_is_minted_by_the_proxy_ca(proxy, nginx):
    leaf = leaf_via_proxy(proxy.port, "localhost", nginx.tls_port, sni="localhost")
    ca = load_cert(proxy.ca_path)
    assert issued_by(leaf, ca)
    assert leaf.issuer == ca.subject
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca_bc.ca is True


def test_ignored_host_is_relayed_untouched(start_proxy, nginx, pki):
    # A regex with a comma in it: --ignore-hosts is not split at commas.
    proxy = start_proxy("--ignore-hosts", r"^local[a-z]{4,4}$")
    url = nginx.url("/small", host="localhost", tls=True)
    # Only the server's own CA: this succeeds only if flowtap did not intercept.
    r = curl("--proxy", proxy.url, "--cacert", pki.server_ca, "--http1.1", url).check()
    assert r.out == SMALL_BODY
    rec = proxy.record(where=lambda r: r["kind"] == "tunnel")
    assert rec["tls"]["intercepted"] is False
    assert rec["server"]["host"] == "localhost"
    assert rec["server"]["port"] == nginx.tls_port
    assert rec["bytes_up"] > 0
    assert rec["bytes_down"] > len(SMALL_BODY)
    assert "request" not in rec and "response" not in rec
    # A host that does not match is still intercepted by the same proxy.
    url2 = nginx.url("/small", host="127.0.0.1", tls=True)
    curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-o", "/dev/null", url2).check()
    rec2 = proxy.record(where=lambda r: r["kind"] == "http")
    assert rec2["tls"]["intercepted"] is True
    assert rec2["request"]["url"] == url2
    assert proxy.metrics()["flowtap_leaf_certificates_minted_total"] == 1


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_client_certificate_server_is_relayed_untouched(proxy, nginx, pki, version):
    """A server that asks for a client certificate (mutual TLS) gets the client's own TLS: the
    client presents its certificate to the real server, as without the proxy (flowtap has none
    to present for it), and a tunnel record says why it was not intercepted."""
    url = nginx.url("/whoami", host="localhost", mtls=True)
    r = curl("--proxy", proxy.url, "--cacert", pki.server_ca, "--cert", pki.client_cert,
             "--key", pki.client_key, version, url).check()
    assert r.text.startswith("client ") and "CN=flowtap test client" in r.text, r.text
    rec = proxy.record(where=lambda r: r["kind"] == "tunnel")
    assert rec["tls"] == {"intercepted": False, "sni": "localhost", "client_cert_requested": True,
                          "client_alpn": ["h2", "http/1.1"] if version == "--http2" else ["http/1.1"]}
    assert rec["server"]["host"] == "localhost" and rec["server"]["port"] == nginx.mtls_port
    assert rec["server"]["ip"] in LOOPBACK_IPS
    assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0
    assert "error" not in rec and "request" not in rec
    # Other servers are intercepted as before, and their records do not carry the field.
    curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-o", "/dev/null",
         nginx.url("/small", host="localhost", tls=True)).check()
    rec = proxy.record(where=lambda r: r["kind"] == "http")
    assert rec["tls"]["intercepted"] is True and "client_cert_requested" not in rec["tls"]


def test_client_certificate_server_intercepted_on_request(start_proxy, nginx, pki):
    """--client-cert-servers intercept: for servers that ask but do not require a certificate.
    flowtap presents none; this nginx requires one and answers 400, which the record shows,
    with the fact that it asked."""
    proxy = start_proxy("--client-cert-servers", "intercept")
    url = nginx.url("/whoami", host="localhost", mtls=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-o", "/dev/null", "-w",
             "%{http_code}", url).check()
    assert r.text == "400"
    rec = proxy.record(where=lambda r: r["kind"] == "http")
    assert rec["response"]["status"] == 400
    assert rec["tls"]["intercepted"] is True and rec["tls"]["client_cert_requested"] is True


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_client_certificate_presented_by_flowtap(start_proxy, nginx, pki, tmp_path, version):
    """--upstream-client-cert: flowtap presents its own client certificate to servers that ask,
    so mutual-TLS exchanges are intercepted and recorded like any other; the client needs no
    certificate of its own. Over HTTP/2 the certificate and key come in one file."""
    if version == "--http2":
        both = tmp_path / "client-both.pem"
        both.write_bytes(pki.client_cert.read_bytes() + pki.client_key.read_bytes())
        flags = ["--upstream-client-cert", str(both)]
    else:
        flags = ["--upstream-client-cert", str(pki.client_cert),
                 "--upstream-client-key", str(pki.client_key)]
    proxy = start_proxy(*flags, "--capture-bodies", "text")
    url = nginx.url("/whoami", host="localhost", mtls=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, version, url).check()
    assert r.text.startswith("client ") and "CN=flowtap test client" in r.text, r.text
    rec = proxy.record()
    assert rec["kind"] == "http" and rec["request"]["url"] == url
    assert rec["tls"]["intercepted"] is True and rec["tls"]["client_cert_requested"] is True
    assert rec["tls"]["alpn"] == ("h2" if version == "--http2" else "http/1.1")
    assert rec["response"]["status"] == 200
    assert rec["response"]["body"]["data"] == r.text, "the server's answer is in the record"
    # Servers that do not ask are not given the certificate, and nothing changes for them.
    curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-o", "/dev/null", version,
         nginx.url("/small", host="localhost", tls=True)).check()
    rec = proxy.record(where=lambda r: r["request"]["url"].endswith("/small"))
    assert rec["tls"]["intercepted"] is True and "client_cert_requested" not in rec["tls"]
    assert rec["response"]["status"] == 200


def test_client_certificate_in_reverse_mode(start_proxy, nginx, pki):
    """In front of a mutual-TLS server (reverse mode, for clients that ignore HTTP_PROXY), the
    plain-HTTP client gets the server's answer to flowtap's certificate."""
    port = free_port()
    proxy = start_proxy("--upstream-client-cert", str(pki.client_cert),
                        "--upstream-client-key", str(pki.client_key), "--mode", "regular",
                        "--mode", f"reverse:https://localhost:{nginx.mtls_port}@127.0.0.1:{port}")
    wait_listening("127.0.0.1", port)
    r = curl(f"http://127.0.0.1:{port}/whoami").check()
    assert "CN=flowtap test client" in r.text, r.text
    rec = proxy.record()
    assert rec["mode"] == "reverse" and rec["response"]["status"] == 200
    assert rec["request"]["url"] == f"https://localhost:{nginx.mtls_port}/whoami"


def test_client_certificate_flags_are_checked_before_starting(tmp_path, pki):
    """A certificate flowtap could not present exits 64 naming the flag, before binding."""
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(pki.server_key.read_bytes())
    cases = [
        (["--upstream-client-cert", str(pki.client_cert), "--upstream-client-key", str(other_key)],
         "--upstream-client-key", "does not belong to the certificate"),
        (["--upstream-client-cert", str(pki.client_cert)],
         "--upstream-client-cert", "give the key's file with --upstream-client-key"),
        (["--upstream-client-cert", str(pki.client_key), "--upstream-client-key", str(pki.client_key)],
         "--upstream-client-cert", "no PEM certificate"),
        (["--upstream-client-cert", str(tmp_path / "missing.pem")], "--upstream-client-cert", "missing.pem"),
        (["--upstream-client-key", str(pki.client_key)], "--upstream-client-key",
         "given without --upstream-client-cert"),
    ]
    for args, flag, words in cases:
        r = run_flowtap("proxy", "--ca-dir", tmp_path / "ca", "--listen", "127.0.0.1:0", *args, timeout=10)
        err = r.stderr.decode()
        assert r.returncode == 64, f"{args}: exit {r.returncode}: {err}"
        assert flag in err and words in err, f"{args}: {err}"
        assert pki.client_key.read_text().splitlines()[1] not in err, "the key never reaches a message"


def test_intercepted_host_rejected_with_server_ca_only(proxy, nginx, pki):
    """The converse of the ignored host: intercepted traffic is signed by flowtap, not the server."""
    r = curl("--proxy", proxy.url, "--cacert", pki.server_ca, nginx.url("/small", host="localhost", tls=True))
    assert r.rc == 60, f"expected a certificate error (60), got {r.rc}: {r.err}"


def test_https_h2_concurrent_streams(proxy, nginx):
    """Many requests in flight at once on one HTTP/2 connection: one record each, one connection."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    urls = [nginx.url(f"/json?stream={i}", host="localhost", tls=True) for i in range(12)]

    async def main():
        async with httpx.AsyncClient(http2=True, proxy=proxy.url, verify=ctx, trust_env=False,
                                     timeout=20) as c:
            # One request first: until ALPN has said h2, httpx opens a connection per request.
            first = await c.get(urls[0])
            return [first] + list(await asyncio.gather(*(c.get(u) for u in urls[1:])))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in responses)
    recs = proxy.records(len(urls))
    assert sorted(r["request"]["url"] for r in recs) == sorted(urls)
    assert len({r["connection_id"] for r in recs}) == 1
    assert len({r["id"] for r in recs}) == len(urls)
    assert all(r["response"]["body_size"] == len(JSON_BODY) for r in recs)


def test_https_h2_mixed_streams_arrive_whole_and_apart(proxy, nginx):
    """Streams of one HTTP/2 connection whose responses the proxy writes together (several per
    write, large frames straight through): 1 MiB downloads, 4 KiB and 1 KiB files and uploads
    echoed by the server, all in flight at once. Every response is its own stream's, byte for
    byte, and every exchange has its record."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    small = nginx.url("/small", host="localhost", tls=True)
    jobs = []
    for i in range(40):
        kind = ("big1m", "echo", "small", "bin4k")[i % 4]
        if kind == "echo":
            body = hashlib.sha256(b"stream %d" % i).digest() * (3 + 97 * i)
            jobs.append(("POST", nginx.url(f"/echo?stream={i}", host="localhost", tls=True), body))
        else:
            jobs.append(("GET", nginx.url(f"/{kind}?stream={i}", host="localhost", tls=True), None))

    async def main():
        async with httpx.AsyncClient(http2=True, proxy=proxy.url, verify=ctx, trust_env=False,
                                     timeout=60) as c:
            first = await c.get(small)  # until ALPN has said h2, httpx opens a connection per request
            rest = await asyncio.gather(*(c.request(m, u, content=b) for m, u, b in jobs))
            return first, rest

    first, responses = asyncio.run(main())
    assert first.content == SMALL_BODY and first.http_version == "HTTP/2"
    for (method, url, body), r in zip(jobs, responses):
        assert r.status_code == 200 and r.http_version == "HTTP/2", (url, r.status_code)
        if method == "POST":
            echo = r.json()
            assert echo["path"] == "/" + url.split("/", 3)[3], (url, echo["path"])
            assert echo["received"] == len(body)
            assert echo["sha256"] == hashlib.sha256(body).hexdigest(), url
        else:
            size, sha = nginx.files["/" + url.split("/", 3)[3].split("?")[0]]
            assert len(r.content) == size and hashlib.sha256(r.content).hexdigest() == sha, url

    recs = proxy.records(len(jobs) + 1)
    assert len({r["connection_id"] for r in recs}) == 1
    by_url = {r["request"]["url"]: r for r in recs}
    assert set(by_url) == {u for _, u, _ in jobs} | {small}
    for (method, url, body), r in zip(jobs, responses):
        rec = by_url[url]
        assert rec["request"]["method"] == method
        assert rec["response"]["status"] == 200
        assert rec["response"]["body_size"] == len(r.content)
        if body is not None:
            assert rec["request"]["body_size"] == len(body)


def test_https_h2_upstream_goaway_fails_no_request(proxy, nginx):
    """nginx ends an HTTP/2 connection with GOAWAY after `keepalive_requests` streams (1,000
    by default, 10 on this port), refusing the streams that were opened after the last one it
    takes. Requests that meet the shared upstream connection as it goes away are sent again on
    a new connection (test_errors has the deterministic case): with 8 in flight at a time, 600
    GETs over at least 60 upstream connections all succeed, each with its record."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    urls = [nginx.url(f"/small?n={i}", host="localhost", short=True) for i in range(600)]

    async def main():
        async with httpx.AsyncClient(http2=True, proxy=proxy.url, verify=ctx, trust_env=False,
                                     timeout=30) as c:
            first = await c.get(urls[0])  # until ALPN has said h2, httpx opens a connection per request
            gate = asyncio.Semaphore(8)

            async def one(u):
                async with gate:
                    return await c.get(u)
            return [first] + list(await asyncio.gather(*(one(u) for u in urls[1:])))

    responses = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * len(urls), {s: statuses.count(s) for s in set(statuses)}
    assert all(r.content == SMALL_BODY and r.http_version == "HTTP/2" for r in responses)
    recs = proxy.records(len(urls))
    assert sorted(r["request"]["url"] for r in recs) == sorted(urls)
    assert [r for r in recs if "error" in r or r["response"]["status"] != 200] == []
    assert {(r["request"]["http_version"], r["response"]["http_version"]) for r in recs} == {
        ("HTTP/2.0", "HTTP/2.0")}


def test_https_h2_upstream_goaway_fails_no_post(proxy, nginx, tmp_path):
    """The same with requests that carry a body (POST: gRPC calls, API writes). A stream the
    server refused (above the GOAWAY's last stream id) was not processed (RFC 9113, 8.7), so it
    is sent again on a new connection with the same body, as HTTP/2 clients do: 300 POSTs from
    curl, 8 at a time on one HTTP/2 connection, all succeed, the server saw each body whole,
    and each has one record."""
    url = nginx.url("/echo", host="localhost", short=True)
    config, outs, bodies = [], [], []
    for i in range(300):
        body = hashlib.sha256(b"%d" % i).hexdigest().encode() * (1 + i % 40)
        (tmp_path / f"b{i}").write_bytes(body)
        outs.append(tmp_path / f"o{i}")
        bodies.append(body)
        config += [f'url = "{url}?n={i}"', f'data-binary = "@{tmp_path}/b{i}"',
                   f'output = "{outs[-1]}"', f'proxy = "{proxy.url}"', f'cacert = "{proxy.ca_path}"',
                   'write-out = "%{http_code}\\n"', "max-time = 60", "http2", "next"]
    (tmp_path / "curl.conf").write_text("\n".join(config[:-1]) + "\n")
    r = curl("--parallel", "--parallel-max", "8", "--config", tmp_path / "curl.conf", timeout=120)
    assert r.text.split() == ["200"] * len(bodies), r.text + r.err
    for out, body in zip(outs, bodies):
        echo = json.loads(out.read_bytes())
        assert (echo["method"], echo["received"]) == ("POST", len(body))
        assert echo["sha256"] == hashlib.sha256(body).hexdigest()
    recs = proxy.records(len(bodies))
    assert [r for r in recs if "error" in r or r["response"]["status"] != 200] == []
    assert sorted(r["request"]["body_size"] for r in recs) == sorted(len(b) for b in bodies)
    assert {r["request"]["http_version"] for r in recs} == {"HTTP/2.0"}
    refused = proxy.metrics()["flowtap_upstream_retries_total"]
    assert refused > 0, "some streams met a GOAWAY and were sent again"
