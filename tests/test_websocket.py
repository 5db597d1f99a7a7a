"""WebSocket through the proxy: the 101 handshake is an `http` record written right away; when
the upgraded connection ends, a `tunnel` record with upgrade "websocket" and byte counts follows."""

from __future__ import annotations

import ssl
import time

from websockets.sync.client import connect as ws_connect

from support.clients import RawWs

MESSAGES = ["hello", "flowtap " * 20, "ünïcødé ✓"]
# The server closes TCP right after the closing handshake; the proxy must pass that on at once
# (the client would otherwise wait for its close timeout, 10 s in `websockets`).
CLOSE_WITHIN_S = 3.0


def _handshake_record(proxy):
    return proxy.record(where=lambda r: r["kind"] == "http")


def _tunnel_record(proxy):
    return proxy.record(where=lambda r: r["kind"] == "tunnel")


def assert_ws_pair(http_rec, tunnel_rec, *, up_min, down_min):
    assert http_rec["request"]["method"] == "GET"
    assert http_rec["request"]["headers"]["upgrade"].lower() == "websocket"
    assert http_rec["response"]["status"] == 101
    assert "error" not in http_rec
    assert tunnel_rec["upgrade"] == "websocket"
    assert tunnel_rec["connection_id"] == http_rec["connection_id"]
    assert tunnel_rec["id"] != http_rec["id"]
    assert tunnel_rec["server"]["host"] == http_rec["server"]["host"]
    assert tunnel_rec["server"]["port"] == http_rec["server"]["port"]
    assert tunnel_rec["bytes_up"] >= up_min, (tunnel_rec["bytes_up"], up_min)
    assert tunnel_rec["bytes_down"] >= down_min, (tunnel_rec["bytes_down"], down_min)
    assert "error" not in tunnel_rec, f"a clean WebSocket close is no failure: {tunnel_rec['error']}"


def _frame_len(payload: bytes, masked: bool) -> int:
    n = len(payload)
    ext = 0 if n < 126 else (2 if n < 65536 else 8)
    return 2 + ext + (4 if masked else 0) + n


def test_ws_absolute_form(proxy, ws_server):
    ws, _ = RawWs.absolute_form(proxy.port, "127.0.0.1", ws_server.port, "/echo")
    # The handshake record is written while the WebSocket is still open.
    http_rec = _handshake_record(proxy)
    assert http_rec["request"]["url"] in (f"http://127.0.0.1:{ws_server.port}/echo",
                                          f"ws://127.0.0.1:{ws_server.port}/echo")
    assert http_rec["server"] == {"host": "127.0.0.1", "port": ws_server.port, "ip": "127.0.0.1"}
    assert not [r for r in proxy.read_records() if r["kind"] == "tunnel"], "tunnel record before the end"
    for m in MESSAGES:
        ws.send_text(m)
        assert ws.recv_text() == m
    ws.close()
    sent = sum(_frame_len(m.encode(), True) for m in MESSAGES)
    received = sum(_frame_len(m.encode(), False) for m in MESSAGES)
    tunnel = _tunnel_record(proxy)
    assert_ws_pair(http_rec, tunnel, up_min=sent, down_min=received)


def test_ws_via_connect(proxy, ws_server):
    with ws_connect(ws_server.url(), proxy=proxy.url, open_timeout=10) as ws:
        for m in MESSAGES:
            ws.send(m)
            assert ws.recv(timeout=10) == m
        http_rec = _handshake_record(proxy)
        t0 = time.monotonic()
    closed_in = time.monotonic() - t0
    assert closed_in < CLOSE_WITHIN_S, f"closing the WebSocket took {closed_in:.1f} s through the proxy"
    tunnel = _tunnel_record(proxy)
    assert http_rec["request"]["url"] in (f"http://127.0.0.1:{ws_server.port}/echo",
                                          f"ws://127.0.0.1:{ws_server.port}/echo")
    assert_ws_pair(http_rec, tunnel, up_min=sum(len(m.encode()) for m in MESSAGES),
                   down_min=sum(len(m.encode()) for m in MESSAGES))


def test_wss_via_connect_intercepted(proxy, wss_server):
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    with ws_connect(wss_server.url(host="localhost"), proxy=proxy.url, ssl=ctx, open_timeout=10) as ws:
        for m in MESSAGES:
            ws.send(m)
            assert ws.recv(timeout=10) == m
        http_rec = _handshake_record(proxy)
        t0 = time.monotonic()
    closed_in = time.monotonic() - t0
    assert closed_in < CLOSE_WITHIN_S, f"closing the WebSocket took {closed_in:.1f} s through the proxy"
    tunnel = _tunnel_record(proxy)
    assert http_rec["request"]["url"] in (f"https://localhost:{wss_server.port}/echo",
                                          f"wss://localhost:{wss_server.port}/echo")
    assert http_rec["tls"]["intercepted"] is True
    assert http_rec["tls"]["sni"] == "localhost"
    assert http_rec["request"]["http_version"] == "HTTP/1.1"
    assert_ws_pair(http_rec, tunnel, up_min=sum(len(m.encode()) for m in MESSAGES),
                   down_min=sum(len(m.encode()) for m in MESSAGES))
