"""Client-side helpers: curl, a CONNECT + TLS handshake that returns the presented leaf, and a
minimal WebSocket client over a raw socket (for absolute-form upgrades through the proxy)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import subprocess
from dataclasses import dataclass

from cryptography import x509

from .proxy import clean_env

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class CurlResult:
    rc: int
    out: bytes
    err: str
    args: list

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def check(self) -> "CurlResult":
        assert self.rc == 0, f"curl failed rc={self.rc}: {self.err}\nargs: {self.args}"
        return self


def curl(*args, timeout: float = 60.0) -> CurlResult:
    """curl -sS with the given arguments; never reads proxy settings from the environment."""
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), *map(str, args)]
    p = subprocess.run(argv, capture_output=True, timeout=timeout + 10, env=clean_env(),
                       stdin=subprocess.DEVNULL)
    return CurlResult(p.returncode, p.stdout, p.stderr.decode(errors="replace"), argv)


def write_out(result: CurlResult, sep: str = "|") -> list[str]:
    """The fields curl printed with -w '...' (separated by `sep`), from the last line of stdout."""
    return result.text.strip().splitlines()[-1].split(sep)


def connect_tunnel(proxy_port: int, host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """Opens a CONNECT tunnel through the proxy; returns the socket after the 2xx."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed during CONNECT: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 200 <= status < 300, f"CONNECT answered {head!r}"
    assert not rest, "bytes after the CONNECT response before the client spoke"
    return s


def leaf_via_proxy(proxy_port: int, host: str, port: int, sni: str | None = None,
                   alpn=("http/1.1",)) -> x509.Certificate:
    """The certificate the proxy presents for host:port (no verification on our side)."""
    s = connect_tunnel(proxy_port, host, port)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    with ctx.wrap_socket(s, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


# --- WebSocket over a raw socket (RFC 6455, text frames, client side) ---------------------------

class RawWs:
    def __init__(self, sock: socket.socket, leftover: bytes = b""):
        self.sock = sock
        self.buf = leftover

    @classmethod
    def absolute_form(cls, proxy_port: int, host: str, port: int, path: str = "/echo") -> tuple["RawWs", bytes]:
        """GET http://host:port/path with Upgrade: websocket sent to the proxy (no CONNECT).
        Returns the client and the raw 101 response head."""
        s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET http://{host}:{port}{path} HTTP/1.1\r\n"
               f"Host: {host}:{port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        s.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the upgrade: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].split(" ")[1] == "101", f"upgrade answered {lines[0]!r}"
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert headers.get("sec-websocket-accept") == want, headers
        return cls(s, rest), head

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed by peer")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8))[0]
        mask = self._need(4) if b1 & 0x80 else None
        payload = self._need(n)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return b0 & 0x0F, payload

    def send_text(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv_text(self) -> str:
        op, payload = self.recv()
        assert op == 0x1, f"expected a text frame, got opcode {op}"
        return payload.decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
            op, _ = self.recv()
            assert op == 0x8
        finally:
            self.sock.close()
