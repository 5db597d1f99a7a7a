"""A threaded HTTP/1.1 server on 127.0.0.1 that hands each request to a contract object."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Req:
    method: str
    path: str
    query: dict
    headers: dict            # lower-case names
    raw: bytes               # body as received
    body: bytes              # body after Content-Encoding


@dataclass
class Resp:
    status: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = raw
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(raw)
            except OSError:
                body = None
        u = urlsplit(self.path)
        req = Req(self.command, u.path, {k: v[-1] for k, v in parse_qs(u.query).items()},
                  headers, raw, body)
        try:
            resp = self.server.contract.handle(req)
        except Exception as e:  # a bug in the contract server must fail the test, not hang it
            self.server.contract.violations.append(f"contract server crashed: {e!r}")
            resp = Resp(500, b"contract server error\n")
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class ContractServer:
    """Base for the contract servers: `handle(req) -> Resp`, `violations`, start/stop, `url`."""

    def __init__(self):
        self.violations: list[str] = []
        self.lock = threading.RLock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.contract = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                         name=type(self).__name__)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def violate(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)

    def handle(self, req: Req) -> Resp:  # pragma: no cover - overridden
        raise NotImplementedError
