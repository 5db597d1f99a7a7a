"""Every failure is a record: upstream refused, DNS failure, timeout, bad certificate, and either
side closing in the middle of a body. The proxy's own 502 is described by `error`, never recorded
as a `response`. A kept upstream connection that the server closed without answering is not a
failure when the request may be sent again (a GET is, once, on a new connection); when it may
not (a POST with a body), it is."""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import threading

import httpx

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


def test_response_timeout(start_proxy, pyserver):
    proxy = start_proxy("--response-timeout", "1")
    url = f"{pyserver.base}/slow?head=4"
    r = curl("-x", proxy.url, "-w", W502, url).check()
    # Without the 1 s timeout the upstream's 200 would come after 4 s: the 502 and the record say so.
    assert_502(r)
    rec = proxy.record()
    assert_failed_record(rec, "upstream_timeout", url)
    assert "within 1s of the request's end (--response-timeout)" in rec["error"]["message"]


def test_bad_upstream_certificate_fails_on_request(start_proxy, nginx):
    """--upstream-tls-errors fail: a certificate flowtap does not trust is a 502 for every
    request, and an upstream_tls record that says how to trust it."""
    proxy = start_proxy("--upstream-tls-errors", "fail")
    url = nginx.url("/small", host="localhost", bad=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-w", W502, url).check()
    assert_502(r)
    rec = proxy.record()
    assert_failed_record(rec, "upstream_tls", url)
    assert rec["server"]["port"] == nginx.bad_tls_port
    assert "UnknownIssuer (signed by a CA flowtap does not trust: give it with --upstream-ca)" \
        in rec["error"]["message"]


def test_bad_upstream_certificate_is_left_to_the_client(proxy, nginx, pki):
    """By default, when flowtap's own TLS handshake with the server fails, the client's TLS goes
    to the server untouched and the client decides, as without the proxy: a client that trusts
    the server's (private) CA itself gets its answer, one that does not gets a certificate
    error from the real server's certificate. The tunnel records say why flowtap stood aside."""
    url = nginx.url("/small", host="localhost", bad=True)
    r = curl("--proxy", proxy.url, "--cacert", pki.bad_ca, url).check()
    assert r.out == SMALL_BODY
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, url)
    assert r.rc == 60, f"the real server's certificate, checked by the client: {r.rc} {r.err}"
    recs = proxy.records(where=lambda r: r["kind"] == "tunnel", count=2)
    for rec in recs:
        assert rec["tls"]["intercepted"] is False
        assert rec["tls"]["sni"] == "localhost"
        assert rec["server"]["port"] == nginx.bad_tls_port
        assert rec["tls"]["upstream_error"] == (
            f"TLS handshake with localhost:{nginx.bad_tls_port} failed: invalid peer certificate: "
            "UnknownIssuer (signed by a CA flowtap does not trust: give it with --upstream-ca)")
        assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0
    assert "error" not in recs[0], "the exchange the client accepted is not a failure"
    assert not proxy.records(where=lambda r: r["kind"] == "http", count=0)


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


def test_client_gives_up_before_the_response(proxy, pyserver):
    """A client timeout while the server is still thinking (the most common failure one comes to
    a proxy to see): the exchange is a record with `client_closed` and how long the client
    waited. It used to leave no record at all."""
    url = f"{pyserver.base}/slow?head=3"
    r = curl("-x", proxy.url, "--max-time", "1", url)
    assert r.rc == 28, f"curl timed out: {r.rc} {r.err}"
    rec = proxy.record(timeout=10)
    assert rec["request"]["url"] == url
    assert "response" not in rec
    assert rec["error"]["kind"] == "client_closed", rec["error"]
    assert "went away before the response came" in rec["error"]["message"]
    assert 900 <= rec["duration_ms"] < 3000, rec["duration_ms"]
    assert "connect_ms" in rec["timings"], "the upstream connection was made"


class _LoopbackServer:
    """A TCP server on 127.0.0.1 that serves each connection on a thread of its own
    (`_serve(sock, n)`, n counting connections from 1), and keeps what it saw in `seen`."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[tuple] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        n = 0
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _serve(self, c, n):
        raise NotImplementedError

    def close(self):
        self.sock.close()


class _Silent(_LoopbackServer):
    """Accepts TCP connections and never says a word (a TLS server that hangs in its handshake)."""

    def _serve(self, c, n):
        with c:
            while c.recv(65536):
                pass


def test_client_gives_up_while_the_upstream_tls_handshake_hangs(start_proxy):
    """The proxy finishes the upstream's TLS handshake before the client's; when the upstream
    hangs there and the client gives up first, the tunnel record names the upstream's timeout
    as the cause, and how long the client waited; it used to blame the client's trust of the
    flowtap CA, with a duration of 0."""
    silent = _Silent()
    try:
        proxy = start_proxy("--upstream-timeout", "2")
        r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "--max-time", "1",
                 f"https://127.0.0.1:{silent.port}/")
        assert r.rc == 28, (r.rc, r.err)
        rec = proxy.record(timeout=10)
    finally:
        silent.close()
    assert rec["kind"] == "tunnel"
    assert rec["server"]["port"] == silent.port
    assert rec["error"]["kind"] == "upstream_timeout", rec["error"]
    assert rec["error"]["message"].startswith(f"TLS handshake with 127.0.0.1:{silent.port} took longer than 2s; "
                                              "the client's TLS handshake then failed"), rec["error"]
    assert "trust" not in rec["error"]["message"]
    assert 1900 <= rec["duration_ms"] < 5000, rec["duration_ms"]


def _clean_second_record(proxy, base, first, second):
    """The records of two exchanges, `first` and `second` (paths under `base`); the second's,
    which must have ended well (200, no error)."""
    recs = proxy.records(2)
    by_path = {rec["request"]["url"].removeprefix(base): rec for rec in recs}
    assert sorted(by_path) == sorted([first, second]), recs
    again = by_path[second]
    assert "error" not in again, again
    assert again["response"]["status"] == 200
    return again


class _RawUpstream(_LoopbackServer):
    """A raw HTTP/1.1 upstream, for answers no real server gives on purpose: `answer(i, conn,
    method, path)` returns the bytes to send for the i-th request (from 0) on connection number
    `conn`, or None to close the connection without a word. After an answer the connection
    waits for its next request. Keeps (connection, method, path, body) of every request."""

    def __init__(self, answer):
        self.answer = answer
        super().__init__()

    def _serve(self, c, n):
        with c, c.makefile("rb") as f:
            for i in itertools.count():
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                length = 0
                while (h := f.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                with self.lock:
                    self.seen.append((n, method, path, f.read(length)))
                reply = self.answer(i, n, method, path)
                if reply is None:
                    return
                c.sendall(reply)


def _answers_once_per_connection() -> _RawUpstream:
    """Answers the first request on each connection with nothing saying the connection ends
    (HTTP/1.1 keep-alive), then closes it, unanswered, when the next request arrives: what a
    server that times idle connections out does to a request that crosses its close."""
    def answer(i, n, method, path):
        if i:
            return None
        body = f"{method} {path} on connection {n}".encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return _RawUpstream(answer)


def test_upstream_body_with_broken_framing(proxy):
    """A chunked body whose second chunk-size line is not a number: the client gets the first
    chunk and a cut, the record a `protocol` error that says what was wrong."""
    srv = _RawUpstream(lambda i, n, m, p: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                          b"5\r\nhello\r\nZZ\r\n")
    try:
        url = f"http://127.0.0.1:{srv.port}/chunks"
        r = curl("-x", proxy.url, "--max-time", "10", url)
        assert r.rc != 0 and r.text == "hello", (r.rc, r.text, r.err)
        rec = proxy.record()
        assert rec["response"]["status"] == 200 and rec["response"]["body_size"] == 5
        assert rec["error"]["kind"] == "protocol", rec["error"]
        assert "chunk size line" in rec["error"]["message"], rec["error"]
    finally:
        srv.close()


def test_kept_connection_closed_unanswered_get_is_sent_again(proxy):
    srv = _answers_once_per_connection()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        r = curl("-x", proxy.url, f"{base}/one", f"{base}/two?x=1",
                 "-H", "X-Trace: t-77").check()
        # /two went out on the kept connection, which the server closed without answering; the
        # proxy sent it again, as it was, on a new connection, and the client never knew.
        assert r.text == "GET /one on connection 1GET /two?x=1 on connection 2", r.text
        with srv.lock:
            assert [(n, m, p) for n, m, p, _ in srv.seen] == [
                (1, "GET", "/one"), (1, "GET", "/two?x=1"), (2, "GET", "/two?x=1")]
        again = _clean_second_record(proxy, base, "/one", "/two?x=1")
        assert again["response"]["body_size"] == len("GET /two?x=1 on connection 2")
        assert again["request"]["headers"]["x-trace"] == "t-77"
        # The record says what the exchange paid for: a new upstream connection.
        assert again["timings"]["connect_ms"] >= 0, again["timings"]
        assert proxy.metrics()["flowtap_upstream_retries_total"] == 1
    finally:
        srv.close()


def test_kept_connection_closed_unanswered_post_is_not_sent_again(proxy):
    srv = _answers_once_per_connection()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        curl("-x", proxy.url, f"{base}/first").check()
        r = curl("-x", proxy.url, "-w", W502, "--data-binary", "pay=once", f"{base}/charge").check()
        # A POST may not be repeated behind the client's back: the server may have acted on it.
        body = assert_502(r)
        assert "upstream_closed" in body, body
        with srv.lock:
            assert [(n, m, p, b) for n, m, p, b in srv.seen] == [
                (1, "GET", "/first", b""), (1, "POST", "/charge", b"pay=once")]
        rec = proxy.record(where=lambda rec: rec["request"]["url"].endswith("/charge"))
        assert "response" not in rec
        assert rec["error"]["kind"] == "upstream_closed", rec["error"]
        assert rec["request"]["method"] == "POST" and rec["request"]["body_size"] == 8
        assert proxy.metrics()["flowtap_upstream_retries_total"] == 0
    finally:
        srv.close()


class _H2AnswersOncePerConnection(_LoopbackServer):
    """HTTP/2 over TLS (ALPN h2, the test server certificate): answers the first request on each
    connection, then meets the next with GOAWAY (NO_ERROR, last stream the answered one: the
    new stream refused, unprocessed) and closes, as a server does that reached its limit of
    requests per connection or is shutting down. Keeps (connection, stream, method, path)."""

    def __init__(self, pki):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(pki.server_cert, pki.server_key)
        self.ctx.set_alpn_protocols(["h2"])
        super().__init__()

    def _serve(self, raw, n):
        import h2.config
        import h2.connection
        import h2.events
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            return
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        with tls:
            tls.sendall(conn.data_to_send())
            answered = 0
            while data := tls.recv(65536):
                for ev in conn.receive_data(data):
                    if not isinstance(ev, h2.events.RequestReceived):
                        continue
                    h = dict(ev.headers)
                    with self.lock:
                        self.seen.append((n, ev.stream_id, h[":method"], h[":path"]))
                    if answered:
                        conn.close_connection(error_code=0, last_stream_id=answered)
                        tls.sendall(conn.data_to_send())
                        return
                    body = f"{h[':method']} {h[':path']} on connection {n}".encode()
                    conn.send_headers(ev.stream_id, [
                        (":status", "200"), ("content-type", "text/plain"),
                        ("content-length", str(len(body)))])
                    conn.send_data(ev.stream_id, body, end_stream=True)
                    answered = ev.stream_id
                tls.sendall(conn.data_to_send())


def test_kept_http2_connection_going_away_get_is_sent_again(proxy, pki):
    srv = _H2AnswersOncePerConnection(pki)
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    base = f"https://localhost:{srv.port}"

    async def main():
        async with httpx.AsyncClient(http2=True, proxy=proxy.url, verify=ctx, trust_env=False,
                                     timeout=20) as c:
            return [await c.get(f"{base}/one"), await c.get(f"{base}/two")]

    try:
        first, second = asyncio.run(main())
        assert (first.status_code, first.text) == (200, "GET /one on connection 1")
        # /two went out on the kept HTTP/2 connection as stream 3, which the server refused
        # with GOAWAY; the proxy sent it again, on a new connection, and the client never knew.
        assert (second.status_code, second.text) == (200, "GET /two on connection 2")
        assert second.http_version == "HTTP/2"
        with srv.lock:
            assert srv.seen == [(1, 1, "GET", "/one"), (1, 3, "GET", "/two"), (2, 1, "GET", "/two")]
        again = _clean_second_record(proxy, base, "/one", "/two")
        assert again["response"]["http_version"] == "HTTP/2.0"
        assert again["timings"]["connect_ms"] >= 0, again["timings"]
        assert proxy.metrics()["flowtap_upstream_retries_total"] == 1
    finally:
        srv.close()
