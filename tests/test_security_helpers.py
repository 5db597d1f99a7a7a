"""Helpers shared by test_security*.py, test_limits*.py and test_malformed*.py (no tests here).

`support.proxy.Proxy.records()` validates every line and accepts only `http` and `tunnel` records,
so a file that also holds `connection` records (refused clients, limits, malformed heads) cannot
be read with it. `all_records` reads such files: every record still goes through
`support.proxy.check_record` (JSON Schema plus the contract rules), with `connection` records
checked as the same rules apply to them."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from support.clients import curl
from support.nginx import SMALL_BODY
from support.proxy import RECORD_WAIT_S, check_record

RECORD_KINDS = ("http", "tunnel", "connection")


def parse_records(data: bytes, source: str) -> list[dict]:
    """Every complete line of `data` as a record, validated; any kind of the contract."""
    out = []
    for line in data.split(b"\n")[:-1]:
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AssertionError(f"{source}: a record line is not UTF-8 ({e}): {line[:300]!r}") from None
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            raise AssertionError(f"{source}: not a JSON line ({e}): {line[:300]!r}") from None
        kind = rec.get("kind")
        assert kind in RECORD_KINDS, f"{source}: unknown record kind {kind!r}: {text[:300]}"
        # check_record knows http and tunnel only; the other rules hold for every kind.
        check_record(dict(rec, kind="tunnel") if kind == "connection" else rec)
        if kind == "connection":
            assert "error" in rec, f"a connection record says what happened: {text}"
            assert "request" not in rec and "response" not in rec, text
        out.append(rec)
    return out


def all_records(proxy, path: Path | None = None) -> list[dict]:
    path = path or proxy.records_path
    if not path.exists():
        return []
    return parse_records(path.read_bytes(), str(path))


def wait_records(proxy, where, count: int = 1, timeout: float = RECORD_WAIT_S) -> list[dict]:
    """At least `count` records matching `where` (waits for them), then a short settle."""
    deadline = time.monotonic() + timeout
    while True:
        recs = [r for r in all_records(proxy) if where(r)]
        if len(recs) >= count:
            time.sleep(0.2)
            return [r for r in all_records(proxy) if where(r)]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"expected {count} matching record(s) within {timeout}s, got {len(recs)}; all records:\n"
                f"{json.dumps(all_records(proxy), indent=1)[:6000]}\nstderr tail:\n{proxy.stderr_text()[-3000:]}")
        time.sleep(0.05)


def one_record(proxy, where) -> dict:
    recs = wait_records(proxy, where)
    assert len(recs) == 1, f"expected exactly one matching record, got {len(recs)}: {json.dumps(recs)[:4000]}"
    return recs[0]


def error_kind(kind: str, rec_kind: str | None = None):
    """A record filter: error.kind == kind (and the record kind, when given)."""
    def where(r: dict) -> bool:
        return r.get("error", {}).get("kind") == kind and (rec_kind is None or r["kind"] == rec_kind)
    return where


def url_is(url: str):
    return lambda r: r["kind"] == "http" and r.get("request", {}).get("url") == url


# --- raw sockets ----------------------------------------------------------------------------

def connect(port: int, source: str | None = None, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to the proxy on 127.0.0.1, optionally from another loopback address."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Reads one HTTP/1.x response (Content-Length or until close) -> (status, headers, body)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a complete response head: {buf[:500]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        want = int(headers["content-length"])
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    elif headers.get("connection", "").lower() == "close":
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            body += chunk
    return status, headers, body


def raw_exchange(port: int, data: bytes, source: str | None = None,
                 timeout: float = 10.0) -> tuple[int, dict, bytes]:
    with connect(port, source, timeout) as s:
        s.sendall(data)
        return read_response(s, timeout)


# --- "the proxy still serves others" -----------------------------------------------------------

def assert_serves(proxy, nginx, *extra_curl_args) -> None:
    """A normal request through the proxy (plain HTTP, absolute form) gets the right bytes."""
    assert proxy.running, f"flowtap is not running any more:\n{proxy.stderr_text()[-3000:]}"
    r = curl("--proxy", proxy.url, *extra_curl_args, nginx.url("/small")).check()
    assert r.out == SMALL_BODY, f"unexpected body through the proxy: {r.out[:200]!r}"


def assert_serves_https(proxy, nginx, *extra_curl_args) -> None:
    """A normal HTTPS request through the proxy (CONNECT + interception) gets the right bytes."""
    assert proxy.running, f"flowtap is not running any more:\n{proxy.stderr_text()[-3000:]}"
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, *extra_curl_args,
             nginx.url("/small", host="localhost", tls=True)).check()
    assert r.out == SMALL_BODY, f"unexpected body through the proxy: {r.out[:200]!r}"


# --- secrets ------------------------------------------------------------------------------------

def output_files(proxy) -> list[Path]:
    """Every file the proxy wrote into its work directory (records in every format, stdout,
    stderr), whatever outputs the test configured."""
    return sorted(p for p in proxy.workdir.iterdir() if p.is_file())


def assert_nowhere(proxy, *secrets: str | bytes, min_files: int = 3) -> None:
    """None of `secrets` occurs in any output of the proxy (read after it stopped or settled)."""
    files = output_files(proxy)
    assert len(files) >= min_files, f"expected at least {min_files} output files, got {files}"
    for path in files:
        data = path.read_bytes()
        for s in secrets:
            b = s.encode() if isinstance(s, str) else s
            assert b, "an empty secret proves nothing"
            if b in data:
                at = data.index(b)
                raise AssertionError(
                    f"secret {s!r} found in {path.name} at byte {at}: "
                    f"{data[max(0, at - 200):at + 200]!r}")
