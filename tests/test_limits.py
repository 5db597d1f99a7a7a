"""Limits keep one client from hurting the others: too many or too large headers (431), a slow
request head (408), too many connections (503), an idle tunnel, HTTP/2 stream limits and the
rapid-reset flood (GOAWAY). Each over-limit client gets the right answer and a record says what
happened; every test then checks that the proxy still serves a normal request."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest

from support.clients import connect_tunnel, curl
from support.nginx import MANY_HEADERS
from test_security_helpers import (all_records, assert_serves, assert_serves_https, connect,
                                   error_kind, one_record, raw_exchange, read_response, url_is,
                                   wait_records)


def _get(nginx, extra: str = "", path: str = "/small") -> bytes:
    return (f"GET {nginx.url(path)} HTTP/1.1\r\nHost: 127.0.0.1:{nginx.http_port}\r\n{extra}\r\n").encode()


# --- header count and size: 431 --------------------------------------------------------------------

def test_too_many_headers_431(start_proxy, nginx):
    p = start_proxy("--max-headers", "20")
    fine = "".join(f"X-H{i}: {i}\r\n" for i in range(15))
    status, _, _ = raw_exchange(p.port, _get(nginx, fine + "Connection: close\r\n"))
    assert status == 200
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(40))
    status, _, _ = raw_exchange(p.port, _get(nginx, many))
    assert status == 431
    rec = one_record(p, error_kind("limit"))
    assert rec["kind"] == "connection" and "431" in rec["error"]["message"], rec
    assert_serves(p, nginx)


def _get_py(pyserver, extra: str = "") -> bytes:
    """A request to the Python upstream (nginx itself refuses header lines over 8 KB)."""
    return f"GET {pyserver.base}/small HTTP/1.1\r\nHost: 127.0.0.1:{pyserver.port}\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("limit,size", [("16KiB", 20_000), ("64KiB", 200_000)])
def test_header_too_large_431(start_proxy, nginx, pyserver, limit, size):
    p = start_proxy("--max-header-size", limit)
    status, _, _ = raw_exchange(p.port, _get_py(pyserver, f"X-Big: {'b' * 10_000}\r\nConnection: close\r\n"))
    assert status == 200, "a head under the limit passes"
    status, _, _ = raw_exchange(p.port, _get(nginx, f"X-Big: {'b' * size}\r\n"))
    assert status == 431
    rec = one_record(p, error_kind("limit"))
    assert rec["kind"] == "connection" and "431" in rec["error"]["message"], rec
    assert_serves(p, nginx)


# Regression: --max-header-size once only set hyper's read-buffer cap (at least 8 KiB, and reads
# may go past it), so heads somewhat over the limit passed.


@pytest.mark.parametrize("limit,size", [("4KiB", 6_000), ("64KiB", 70_000)])
def test_max_header_size_is_the_limit(start_proxy, nginx, limit, size):
    """The flag says "larger ones get 431": a head a little over the limit is refused too (not
    only one over hyper's read buffer, which is at least 8 KiB and may grow past the limit)."""
    p = start_proxy("--max-header-size", limit)
    status, _, _ = raw_exchange(p.port, _get(nginx, f"X-Big: {'b' * size}\r\n"))
    assert status == 431, f"a {size}-byte request head passed --max-header-size {limit} (got {status})"
    one_record(p, error_kind("limit"))
    assert_serves(p, nginx)


def test_long_request_line_431(start_proxy, nginx):
    p = start_proxy("--max-header-size", "16KiB")
    path = "/small?" + "q" * 40_000
    status, _, _ = raw_exchange(p.port, _get(nginx, path=path))
    assert status in (414, 431), status
    one_record(p, error_kind("limit"))
    assert_serves(p, nginx)


# --- slow request heads: 408 ----------------------------------------------------------------------

def test_slow_request_head_408(start_proxy, nginx):
    p = start_proxy("--request-header-timeout", "1")
    with connect(p.port) as s:
        s.sendall(f"GET {nginx.url('/small')} HTTP/1.1\r\nHost: x\r\n".encode())   # never finished
        status, headers, body = read_response(s, timeout=10)
    assert status == 408, (status, body)
    rec = one_record(p, error_kind("limit"))
    assert rec["kind"] == "connection" and "--request-header-timeout" in rec["error"]["message"], rec
    assert_serves(p, nginx)


def test_slowloris_trickle_gets_408_on_time(start_proxy, nginx):
    """Bytes that keep coming, one at a time, do not extend the deadline for the whole head."""
    p = start_proxy("--request-header-timeout", "1")
    head = (f"GET {nginx.url('/small')} HTTP/1.1\r\nHost: x\r\n" + "X-Pad: y\r\n" * 50).encode()
    got = {}

    def trickle(s):
        try:
            for b in head:
                s.sendall(bytes([b]))
                time.sleep(0.05)
        except OSError:
            pass

    # The whole head takes ~28 s to trickle in: an answer before the read times out (15 s) can
    # only be the deadline's 408.
    with connect(p.port) as s:
        t = threading.Thread(target=trickle, args=(s,), daemon=True)
        t.start()
        try:
            got["status"], _, _ = read_response(s, timeout=15)
        except (ConnectionError, OSError) as e:
            got["error"] = e
    assert got.get("status") == 408, got
    rec = one_record(p, error_kind("limit"))
    assert rec["kind"] == "connection" and "--request-header-timeout" in rec["error"]["message"], rec
    assert_serves(p, nginx)


def test_silent_client_408_but_idle_keepalive_closes_quietly(start_proxy, nginx):
    p = start_proxy("--request-header-timeout", "1")
    with connect(p.port) as silent, connect(p.port) as used:
        used.sendall(_get(nginx))
        status, _, body = read_response(used)
        assert status == 200 and len(body) == 1024
        status, _, _ = read_response(silent, timeout=10)
        assert status == 408
        # The keep-alive connection that already had its request is closed without a 408.
        used.settimeout(10)
        rest = used.recv(65536)
        assert rest == b"", f"idle keep-alive connection got {rest[:200]!r}"
    time.sleep(0.5)
    limits = [r for r in all_records(p) if r.get("error", {}).get("kind") == "limit"]
    assert len(limits) == 1, limits
    assert_serves(p, nginx)


# --- connection cap: 503 ------------------------------------------------------------------------------

def test_max_connections_503_others_unaffected(start_proxy, nginx):
    p = start_proxy("--max-connections", "3")
    time.sleep(0.5)   # the readiness probe's connection is gone
    held = [connect(p.port) for _ in range(3)]
    try:
        # Each held connection is admitted (a request on it is served); they stay open, idle.
        for s in held:
            s.sendall(_get(nginx))
            assert read_response(s)[0] == 200
        status, _, body = raw_exchange(p.port, _get(nginx))
        assert status == 503, (status, body)
        rec = one_record(p, error_kind("limit"))
        assert rec["kind"] == "connection" and "--max-connections" in rec["error"]["message"], rec
        # A client already in keeps being served while others are turned away.
        busy = held[0]
        busy.sendall(_get(nginx))
        status, _, body = read_response(busy)
        assert status == 200 and len(body) == 1024
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while True:
        status, _, _ = raw_exchange(p.port, _get(nginx, "Connection: close\r\n"))
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, "closed connections free their slots"
    assert_serves(p, nginx)


# --- idle tunnels -------------------------------------------------------------------------------------

class _EchoServer:
    """A TCP echo server on loopback (an opaque, non-HTTP protocol for the tunnel)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        with c:
            try:
                while data := c.recv(65536):
                    c.sendall(data)
            except OSError:
                pass

    def close(self):
        self.sock.close()


def test_idle_tunnel_is_closed(start_proxy, nginx):
    echo = _EchoServer()
    try:
        p = start_proxy("--idle-timeout", "1")
        s = connect_tunnel(p.port, "127.0.0.1", echo.port)
        s.sendall(b"\x00flowtap opaque")
        got = b""
        while len(got) < 15:
            got += s.recv(100)
        assert got == b"\x00flowtap opaque"
        s.settimeout(10)
        assert s.recv(100) == b"", "the proxy closes an idle tunnel"
        s.close()
        rec = one_record(p, lambda r: r["kind"] == "tunnel")
        assert rec["error"]["kind"] == "limit" and "--idle-timeout" in rec["error"]["message"], rec
        assert rec["bytes_up"] == 15 and rec["bytes_down"] == 15
        assert_serves(p, nginx)
    finally:
        echo.close()


# --- HTTP/2: stream limit and rapid reset ----------------------------------------------------------------

def _h2_through_proxy(p, nginx):
    """An HTTP/2 connection to nginx through the proxy (CONNECT, TLS with ALPN h2, interception)."""
    import h2.config
    import h2.connection
    sock = connect_tunnel(p.port, "localhost", nginx.tls_port)
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    assert tls.selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    return tls, conn


def _pump(tls, conn, until, timeout: float = 10.0) -> list:
    """Reads frames until `until(events)` is true or the peer closes; returns all events."""
    import h2.exceptions
    events = []
    tls.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(events):
        try:
            data = tls.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        except (ssl.SSLError, OSError):
            break
        if not data:
            break
        try:
            events += conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            break
        out = conn.data_to_send()
        if out:
            try:
                tls.sendall(out)
            except OSError:
                break
    return events


def _headers(nginx, path="/small"):
    return [(":method", "GET"), (":scheme", "https"), (":authority", f"localhost:{nginx.tls_port}"),
            (":path", path)]


def test_h2_max_streams_is_advertised(start_proxy, nginx):
    import h2.events
    p = start_proxy("--max-streams", "8")
    tls, conn = _h2_through_proxy(p, nginx)
    try:
        _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        assert conn.remote_settings.max_concurrent_streams == 8
        # Eight streams at once work.
        ids = []
        for _ in range(8):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, _headers(nginx), end_stream=True)
            ids.append(sid)
        tls.sendall(conn.data_to_send())
        events = _pump(tls, conn, lambda ev: sum(isinstance(e, h2.events.StreamEnded) for e in ev) >= 8)
        ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
        assert ended == set(ids)
    finally:
        tls.close()
    assert_serves_https(p, nginx)


def test_h2_rapid_reset_gets_goaway_and_others_are_served(start_proxy, nginx):
    """CVE-2023-44487: open streams and reset them at once, hundreds of times. The proxy ends
    that connection with GOAWAY; other clients keep being served, during and after."""
    import h2.errors
    import h2.events
    p = start_proxy()
    tls, conn = _h2_through_proxy(p, nginx)
    others: list[bool] = []
    stop = threading.Event()

    def other_client():
        while not stop.is_set():
            try:
                assert_serves_https(p, nginx)
                others.append(True)
            except AssertionError:
                others.append(False)
            time.sleep(0.05)

    t = threading.Thread(target=other_client, daemon=True)
    try:
        _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        t.start()
        sent = 0
        goaway = None
        for _burst in range(20):
            for _ in range(100):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, _headers(nginx), end_stream=True)
                conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                sent += 1
            try:
                tls.sendall(conn.data_to_send())
            except OSError:
                break
            events = _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.ConnectionTerminated)
                                                     for e in ev), timeout=0.3)
            goaway = next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)
            if goaway:
                break
        if goaway is None:
            events = _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.ConnectionTerminated)
                                                     for e in ev), timeout=5)
            goaway = next((e for e in events if isinstance(e, h2.events.ConnectionTerminated)), None)
        assert goaway is not None, f"no GOAWAY after {sent} rapidly reset streams"
        assert goaway.error_code in (h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                     h2.errors.ErrorCodes.PROTOCOL_ERROR), goaway
    finally:
        stop.set()
        t.join(30)
        tls.close()
    assert others and all(others), f"other clients failed during the flood: {others}"
    assert_serves_https(p, nginx)
    assert p.running


# --- the same limits inside an intercepted TLS tunnel ------------------------------------------------

def _tls_tunnel(p, nginx):
    s = connect_tunnel(p.port, "localhost", nginx.tls_port)
    ctx = ssl.create_default_context(cafile=str(p.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(s, server_hostname="localhost")


def _origin_get(nginx, extra: str = "") -> bytes:
    return f"GET /small HTTP/1.1\r\nHost: localhost:{nginx.tls_port}\r\n{extra}\r\n".encode()


def test_too_many_headers_inside_tls_431(start_proxy, nginx):
    """Most traffic is HTTPS: a limit broken inside an intercepted tunnel gets the same answer."""
    p = start_proxy("--max-headers", "20")
    with _tls_tunnel(p, nginx) as tls:
        tls.sendall(_origin_get(nginx, "".join(f"X-H{i}: {i}\r\n" for i in range(40))))
        status, _, _ = read_response(tls)
    assert status == 431
    assert_serves_https(p, nginx)



def test_too_many_headers_inside_tls_is_recorded(start_proxy, nginx):
    p = start_proxy("--max-headers", "20")
    with _tls_tunnel(p, nginx) as tls:
        tls.sendall(_origin_get(nginx, "".join(f"X-H{i}: {i}\r\n" for i in range(40))))
        assert read_response(tls)[0] == 431
    one_record(p, error_kind("limit"))


def test_slow_request_head_inside_tls(start_proxy, nginx):
    """A slow head inside an intercepted tunnel: past the header timeout the client gets 408
    through the TLS session, as on the proxy's own port, and the connection closes."""
    p = start_proxy("--request-header-timeout", "1")
    with _tls_tunnel(p, nginx) as tls:
        tls.sendall(b"GET /small HTTP/1.1\r\nHost: localhost\r\n")
        tls.settimeout(10)
        try:
            data = tls.recv(65536)
        except (socket.timeout, TimeoutError):
            raise AssertionError("a slow head inside a tunnel was held open for 10 s (limit 1 s)") from None
        except (ssl.SSLError, OSError):
            data = b""
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    rec = one_record(p, error_kind("limit"))
    assert rec["kind"] == "connection" and "--request-header-timeout" in rec["error"]["message"], rec
    assert_serves_https(p, nginx)



def test_h2_rapid_reset_is_recorded(start_proxy, nginx):
    """The flood ends with GOAWAY (ENHANCE_YOUR_CALM, "too_many_resets"), and a record says so,
    so the attack is visible in the record stream."""
    import h2.errors
    import h2.events
    p = start_proxy()
    tls, conn = _h2_through_proxy(p, nginx)
    try:
        _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        for _ in range(300):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, _headers(nginx), end_stream=True)
            conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
        tls.sendall(conn.data_to_send())
        events = _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.ConnectionTerminated)
                                                 for e in ev), timeout=5)
        assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    finally:
        tls.close()
    recs = wait_records(p, lambda r: r.get("error", {}).get("kind") in ("limit", "protocol"))
    assert any("reset" in r["error"]["message"].lower() for r in recs), recs


def test_h2_header_list_too_large(start_proxy, nginx):
    """HTTP/2 has its own header limit (SETTINGS_MAX_HEADER_LIST_SIZE from --max-header-size):
    an oversized header list gets 431 or a reset stream, not a forwarded request, and the
    connection and proxy stay usable."""
    import h2.events
    p = start_proxy("--max-header-size", "16KiB")
    tls, conn = _h2_through_proxy(p, nginx)
    try:
        _pump(tls, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev))
        assert conn.remote_settings.max_header_list_size == 16 * 1024
        big = conn.get_next_available_stream_id()
        conn.send_headers(big, _headers(nginx) + [("x-big", "b" * 40_000)], end_stream=True)
        tls.sendall(conn.data_to_send())

        def done(ev):
            return any(getattr(e, "stream_id", None) == big and isinstance(
                e, (h2.events.StreamEnded, h2.events.StreamReset)) for e in ev) or any(
                isinstance(e, h2.events.ConnectionTerminated) for e in ev)

        events = _pump(tls, conn, done)
        statuses = [dict(e.headers).get(":status") for e in events
                    if isinstance(e, h2.events.ResponseReceived) and e.stream_id == big]
        reset = any(isinstance(e, h2.events.StreamReset) and e.stream_id == big for e in events)
        goaway = any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
        assert statuses == ["431"] or reset or goaway, events
        assert statuses != ["200"], "an oversized header list was forwarded"
    finally:
        tls.close()
    assert_serves_https(p, nginx)


# --- response heads: what clients take directly passes through; over flowtap's bound, a record --

_CLIENT_ROUTE = {"http": ([], False), "https-h1": (["--http1.1"], True), "https-h2": (["--http2"], True)}


def _curl_head_route(p, nginx, path: str, how: str):
    args, tls = _CLIENT_ROUTE[how]
    url = nginx.url(path, host="localhost", tls=tls)
    r = curl("--proxy", p.url, "--cacert", p.ca_path, *args, "-D", "-",
             "-w", "|%{http_code}|%{http_version}", url)
    return r, url


@pytest.mark.parametrize("how", list(_CLIENT_ROUTE))
def test_large_response_heads_pass(start_proxy, nginx, how):
    """150 header fields (hyper's default is 100) and 20 KiB of head (hyper's HTTP/2 default is
    16 KiB) reach curl whole, as they do directly, and the record holds every field."""
    p = start_proxy()
    r, url = _curl_head_route(p, nginx, "/many-headers", how)
    r.check()
    head, _, tail = r.text.rpartition("headers\n")
    code, version = tail.split("|")[1:]
    assert code == "200", r.text[-500:]
    assert version == ("2" if how == "https-h2" else "1.1")
    for name, value in MANY_HEADERS.items():
        assert f"{name}: {value}" in head, f"{name} missing from what curl got"
    rec = one_record(p, url_is(url))
    assert "error" not in rec, rec
    got = rec["response"]["headers"]
    assert {k: got.get(k) for k in MANY_HEADERS} == MANY_HEADERS
    assert rec["response"]["http_version"] == ("HTTP/2.0" if how == "https-h2" else "HTTP/1.1")


@pytest.mark.parametrize("how", list(_CLIENT_ROUTE))
def test_response_head_over_the_bound_is_a_record(start_proxy, nginx, how):
    """A 90 KiB response head is over what flowtap reads (64 KiB): the client gets a 502 and the
    record names the bound (over HTTP/2, h2 refuses the stream without saying why, so the record
    names the two possible causes), and the proxy goes on serving."""
    p = start_proxy()
    r, url = _curl_head_route(p, nginx, "/huge-headers", how)
    assert r.text.endswith("|502|" + ("2" if how == "https-h2" else "1.1")), r.text[-300:]
    rec = one_record(p, url_is(url))
    assert "response" not in rec, rec
    message = rec["error"]["message"]
    if how == "https-h2":
        assert rec["error"]["kind"] == "protocol", rec["error"]
        assert "refused the server's HTTP/2 response: its head was over 64 KiB, or malformed" in message
    else:
        assert rec["error"]["kind"] == "limit", rec["error"]
        assert "larger than flowtap reads (64 KiB, 512 header fields)" in message, message
    assert_serves(p, nginx)
    assert_serves_https(p, nginx)
