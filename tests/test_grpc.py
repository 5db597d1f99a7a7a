"""gRPC through flowtap: a grpcio client and a grpcio server (gRPC's C-core implementation) on
loopback. gRPC core opens a CONNECT tunnel through the proxy (`grpc.http_proxy`), then speaks
TLS inside it (intercepted; HTTP/2 by ALPN) or, on a plain-text channel, HTTP/2 with prior
knowledge (h2c), as in-cluster gRPC mostly does. The records carry gRPC's status in the response
trailers (or, for a call that fails at once, in the response headers)."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from support.grpcserver import SERVICE, GrpcServer, channel, method
from support.net import free_port, wait_listening


@pytest.fixture(scope="module")
def grpc_server(pki):
    srv = GrpcServer(pki).start()
    yield srv
    srv.stop()


def tls_channel(proxy, srv) -> grpc.Channel:
    return channel(f"localhost:{srv.tls_port}", proxy=proxy.url, ca=proxy.ca_path.read_bytes())


def plain_channel(proxy, srv) -> grpc.Channel:
    return channel(f"127.0.0.1:{srv.plain_port}", proxy=proxy.url)


def frames(body: dict) -> list[bytes]:
    """The messages in a captured gRPC body (5-byte prefix: compressed flag, length)."""
    assert body["encoding"] == "base64" and body["truncated"] is False, body
    data = base64.b64decode(body["data"])
    out = []
    while data:
        flag, n = struct.unpack(">BI", data[:5])
        assert flag == 0, "uncompressed messages"
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out


def assert_grpc_exchange(rec, *, url, tls):
    assert rec["kind"] == "http"
    assert rec["request"]["method"] == "POST"
    assert rec["request"]["url"] == url
    assert rec["request"]["http_version"] == "HTTP/2.0"
    assert rec["request"]["headers"]["content-type"] == "application/grpc"
    assert rec["request"]["headers"]["te"] == "trailers"
    assert rec["response"]["status"] == 200
    assert rec["response"]["http_version"] == "HTTP/2.0", "gRPC went upstream as HTTP/2"
    assert rec["response"]["headers"]["content-type"] == "application/grpc"
    if tls:
        assert rec["tls"]["intercepted"] is True and rec["tls"]["alpn"] == "h2", rec["tls"]
        assert rec["tls"]["upstream_verified"] is True
    else:
        assert "tls" not in rec, rec.get("tls")


def test_grpc_unary_over_tls(start_proxy, grpc_server):
    proxy = start_proxy("--capture-bodies", "all")
    answer, call = tls_channel(proxy, grpc_server).unary_unary(method("Unary")).with_call(
        b"hello", metadata=(("authorization", "Bearer grpc-token-1234"),), timeout=10)
    assert answer == b"echo:hello:Bearer grpc-token-1234", "the server got the metadata unchanged"
    assert dict(call.trailing_metadata())["x-trailer"] == "t1", "trailers reached the client"

    rec = proxy.record()
    assert_grpc_exchange(rec, url=f"https://localhost:{grpc_server.tls_port}/{SERVICE}/Unary", tls=True)
    assert rec["request"]["headers"]["grpc-timeout"], "the deadline travels as a header"
    auth = rec["request"]["headers"]["authorization"]
    assert "grpc-token-1234" not in auth and auth.startswith("Bearer <redacted"), auth
    assert "request.headers.authorization" in rec["redacted"]
    assert rec["response"]["trailers"] == {"grpc-status": "0", "grpc-message": "", "x-trailer": "t1"}
    assert rec["request"]["body_size"] == 5 + len(b"hello")
    assert frames(rec["request"]["body"]) == [b"hello"]
    assert frames(rec["response"]["body"]) == [b"echo:hello:Bearer grpc-token-1234"]
    assert rec["response"]["body_size"] == 5 + len(answer)


def test_grpc_error_status_is_recorded(start_proxy, grpc_server):
    """A call the server fails at once gets a trailers-only response: the status is in the
    response headers, and it is a response, not a proxy error. The text view shows the gRPC
    status after the HTTP one (200 whatever happened)."""
    proxy = start_proxy(more_outputs=["text:{dir}/flows.txt"])
    ok = tls_channel(proxy, grpc_server).unary_unary(method("Unary"))(b"fine", timeout=10)
    assert ok == b"echo:fine:"
    with pytest.raises(grpc.RpcError) as failed:
        tls_channel(proxy, grpc_server).unary_unary(method("Unary"))(b"fail", timeout=10)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "no such thing: fail"

    good, rec = proxy.records(2)
    assert_grpc_exchange(rec, url=f"https://localhost:{grpc_server.tls_port}/{SERVICE}/Unary", tls=True)
    assert rec["response"]["headers"]["grpc-status"] == "5"
    assert rec["response"]["headers"]["grpc-message"] == "no such thing: fail"
    assert rec["response"]["body_size"] == 0
    assert "error" not in rec
    assert good["response"]["trailers"]["grpc-status"] == "0"
    text = (proxy.workdir / "flows.txt").read_text()
    answers = [line for line in text.splitlines() if line.startswith(" << ")]
    assert len(answers) == 2, text
    assert answers[0].startswith(" << HTTP/2.0 200 OK ") and answers[0].endswith(" grpc OK"), text
    assert answers[1].endswith(" grpc NOT_FOUND: no such thing: fail"), text
    # The README's jq query over the records file.
    query = ('select(.request.headers["content-type"] // "" | startswith("application/grpc"))'
             ' | {url: .request.url, grpc: (.response.trailers["grpc-status"] // .response.headers["grpc-status"]),'
             ' error: .error.kind}')
    out = subprocess.run(["jq", "-c", query, str(proxy.records_path)], capture_output=True, check=True).stdout
    url = f"https://localhost:{grpc_server.tls_port}/{SERVICE}/Unary"
    assert [json.loads(line) for line in out.splitlines()] == [
        {"url": url, "grpc": "0", "error": None}, {"url": url, "grpc": "5", "error": None}]


def test_grpc_streams_both_ways(start_proxy, grpc_server):
    proxy = start_proxy("--capture-bodies", "all")
    ch = tls_channel(proxy, grpc_server)
    assert list(ch.unary_stream(method("Stream"))(b"go", timeout=10)) == [b"part0", b"part1", b"part2"]
    assert ch.stream_unary(method("Collect"))(iter([b"a", b"bb", b"ccc"]), timeout=10) == b"a+bb+ccc"

    recs = proxy.records(2)
    by_path = {r["request"]["url"].rsplit("/", 1)[1]: r for r in recs}
    stream, collect = by_path["Stream"], by_path["Collect"]
    for rec in (stream, collect):
        assert_grpc_exchange(rec, url=rec["request"]["url"], tls=True)
        assert rec["response"]["trailers"]["grpc-status"] == "0"
        assert stream["connection_id"] == rec["connection_id"], "one channel, one connection"
    assert frames(stream["response"]["body"]) == [b"part0", b"part1", b"part2"]
    assert stream["response"]["body_size"] == 3 * (5 + 5)
    assert frames(collect["request"]["body"]) == [b"a", b"bb", b"ccc"]
    assert collect["request"]["body_size"] == 3 * 5 + 6


def test_grpc_plaintext_h2c_through_connect(proxy, grpc_server):
    """A plain-text channel speaks HTTP/2 with prior knowledge inside the tunnel; the server gets
    the same (it speaks nothing else)."""
    ch = plain_channel(proxy, grpc_server)
    call = ch.unary_unary(method("Unary"))
    assert call(b"plain", metadata=(("authorization", "Bearer h2c-secret"),), timeout=10) \
        == b"echo:plain:Bearer h2c-secret"
    assert list(ch.unary_stream(method("Stream"))(b"go", timeout=10)) == [b"part0", b"part1", b"part2"]

    recs = proxy.records(2)
    base = f"http://127.0.0.1:{grpc_server.plain_port}/{SERVICE}"
    unary = next(r for r in recs if r["request"]["url"] == f"{base}/Unary")
    stream = next(r for r in recs if r["request"]["url"] == f"{base}/Stream")
    for rec in (unary, stream):
        assert_grpc_exchange(rec, url=rec["request"]["url"], tls=False)
        assert rec["response"]["trailers"]["grpc-status"] == "0"
        assert rec["server"] == {"host": "127.0.0.1", "port": grpc_server.plain_port, "ip": "127.0.0.1"}
    assert unary["response"]["trailers"]["x-trailer"] == "t1"
    assert "h2c-secret" not in unary["request"]["headers"]["authorization"]
    assert stream["response"]["body_size"] == 3 * (5 + 5)


@pytest.mark.parametrize("front", ["h2c", "tls"])
def test_grpc_reverse_mode_h2c_upstream(start_proxy, grpc_server, front):
    """`--mode reverse:h2c://…` in front of a plain-text gRPC server: clients speak h2c or TLS to
    flowtap, flowtap speaks h2c to the server."""
    port = free_port()
    proxy = start_proxy("--mode", "regular",
                        "--mode", f"reverse:h2c://127.0.0.1:{grpc_server.plain_port}@127.0.0.1:{port}")
    wait_listening("127.0.0.1", port)
    if front == "tls":
        ch = channel(f"localhost:{port}", ca=proxy.ca_path.read_bytes())
    else:
        ch = channel(f"127.0.0.1:{port}")
    assert ch.unary_unary(method("Unary"))(b"rev", timeout=10) == b"echo:rev:"
    assert list(ch.unary_stream(method("Stream"))(b"go", timeout=10)) == [b"part0", b"part1", b"part2"]

    recs = proxy.records(2)
    base = f"http://127.0.0.1:{grpc_server.plain_port}/{SERVICE}"
    assert sorted(r["request"]["url"] for r in recs) == [f"{base}/Stream", f"{base}/Unary"]
    for rec in recs:
        assert rec["mode"] == "reverse"
        assert rec["request"]["http_version"] == "HTTP/2.0"
        assert rec["response"]["http_version"] == "HTTP/2.0"
        assert rec["response"]["trailers"]["grpc-status"] == "0"
        assert ("tls" in rec) == (front == "tls"), rec.get("tls")


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "h2c"])
def test_grpc_cancelled_call_is_recorded(proxy, grpc_server, tls):
    """The client cancels a call while the server still works on it (an HTTP/2 RST_STREAM): that
    exchange is a record with an error (before, it left no record at all), and the channel goes
    on working."""
    ch = tls_channel(proxy, grpc_server) if tls else plain_channel(proxy, grpc_server)
    pending = ch.unary_unary(method("Slow")).future(b"2000")
    time.sleep(0.3)
    assert pending.cancel()
    assert ch.unary_unary(method("Unary"))(b"after", timeout=10) == b"echo:after:"

    slow = proxy.record(where=lambda r: r["request"]["url"].endswith("/Slow"))
    assert "response" not in slow, "no response came before the client gave up"
    assert slow["error"]["kind"] == "client_closed", slow["error"]
    assert "went away before the response came" in slow["error"]["message"]
    assert 250 <= slow["duration_ms"] < 2000, slow["duration_ms"]
    assert slow["request"]["body_size"] == 5 + 4
    after = proxy.record(where=lambda r: r["request"]["url"].endswith("/Unary"))
    assert "error" not in after and after["response"]["trailers"]["grpc-status"] == "0"
    assert after["connection_id"] == slow["connection_id"], "the cancel ended one stream, not the connection"


def test_grpc_deadline_exceeded(proxy, grpc_server):
    """A deadline travels as `grpc-timeout`; when it passes, the call ends DEADLINE_EXCEEDED and the
    record shows how (the server's status 4, or the client's cancel if that came first)."""
    with pytest.raises(grpc.RpcError) as late:
        tls_channel(proxy, grpc_server).unary_unary(method("Slow"))(b"1500", timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    rec = proxy.record()
    assert rec["request"]["headers"]["grpc-timeout"].endswith("m"), rec["request"]["headers"]
    assert 250 <= rec["duration_ms"] < 1500, rec["duration_ms"]
    if "response" in rec:
        assert rec["response"]["headers"]["grpc-status"] == "4", rec["response"]
    else:
        assert rec["error"]["kind"] == "client_closed", rec


def test_grpc_many_concurrent_calls_one_channel(proxy, grpc_server):
    """200 calls multiplexed 16 at a time over one channel: each answer and each record its own."""
    call = tls_channel(proxy, grpc_server).unary_unary(method("Unary"))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: call(b"n%03d" % i, timeout=20), range(200)))
    assert answers == [b"echo:n%03d:" % i for i in range(200)]
    recs = proxy.records(200)
    assert len(recs) == 200
    assert all("error" not in r and r["response"]["trailers"]["grpc-status"] == "0" for r in recs)
    assert len({r["connection_id"] for r in recs}) == 1


def test_h2c_to_a_server_without_http2(proxy, pyserver):
    """A client that speaks h2c to a server that only speaks HTTP/1.1: the client gets a 502 and
    the record says the server broke HTTP/2 (a protocol error), not that it went away."""
    ch = channel(f"127.0.0.1:{pyserver.port}", proxy=proxy.url)
    with pytest.raises(grpc.RpcError) as failed:
        ch.unary_unary(method("Unary"))(b"x", timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "502" in failed.value.details()
    rec = proxy.record()
    assert rec["request"]["url"] == f"http://127.0.0.1:{pyserver.port}/{SERVICE}/Unary"
    assert rec["error"]["kind"] == "protocol", rec["error"]
    assert "http2" in rec["error"]["message"], rec["error"]
