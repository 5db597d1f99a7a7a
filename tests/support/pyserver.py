"""A tiny threaded HTTP/1.1 upstream for what nginx does not do out of the box: an upload echo
(Content-Length or chunked, with 100-continue), response trailers, slow responses, a response
that dies mid-body, and a request-echo endpoint. Listens on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TRAILER_NAME = "X-Checksum"
TRAILER_VALUE = "abc123"
ABORT_DECLARED = 100_000   # Content-Length announced by /abort
ABORT_SENT = 1_000         # bytes actually sent before the connection is cut


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flowtap-test-upstream"

    # --- plumbing -------------------------------------------------------------------------
    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def handle_expect_100(self):
        self.server.saw_expect += 1
        return super().handle_expect_100()

    def _note(self):
        with self.server.cond:
            # Normalised to origin-form: an absolute-form target is legal HTTP/1.1 too.
            u = urlsplit(self.path)
            self.server.seen.append((self.command, u.path + (f"?{u.query}" if u.query else "")))
            self.server.cond.notify_all()

    def _query(self):
        q = parse_qs(urlsplit(self.path).query)
        return {k: v[-1] for k, v in q.items()}

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        """Reads the whole request body; returns (size, sha256 hex, chunked?)."""
        h = hashlib.sha256()
        n = 0
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        raise ConnectionError("client closed mid-chunk")
                    h.update(chunk)
                    n += len(chunk)
                    left -= len(chunk)
                self.rfile.readline(3)  # CRLF after the chunk
            return n, h.hexdigest(), True
        left = int(self.headers.get("Content-Length", "0") or 0)
        while left:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                raise ConnectionError("client closed mid-body")
            h.update(chunk)
            n += len(chunk)
            left -= len(chunk)
        return n, h.hexdigest(), False

    # --- routes ---------------------------------------------------------------------------
    def do_GET(self):
        self._note()
        path = urlsplit(self.path).path
        try:
            if path == "/echo":
                return self._echo(0, None, False)
            if path == "/trailers":
                return self._trailers()
            if path == "/slow":
                return self._slow()
            if path == "/abort":
                return self._abort()
            if path == "/small":
                return self._send(200, b"python upstream small\n")
            self._send(404, b"not found\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_HEAD = do_GET

    def do_POST(self):
        self._note()
        try:
            n, digest, chunked = self._read_body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        self._echo(n, digest, chunked)

    do_PUT = do_POST

    def _echo(self, n, digest, chunked):
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "request_version": self.request_version,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "received": n,
            "sha256": digest,
            "chunked": chunked,
            "expect": self.headers.get("Expect"),
        }).encode()
        self._send(200, body, "application/json")

    def _trailers(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", TRAILER_NAME)
        self.end_headers()
        for piece in (b"hello ", b"trailers\n"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(f"0\r\n{TRAILER_NAME}: {TRAILER_VALUE}\r\n\r\n".encode())
        self.wfile.flush()

    def _slow(self):
        """?head=SECONDS before the status line, then ?size=BYTES trickled over ?body=SECONDS."""
        q = self._query()
        head = float(q.get("head", "0"))
        body_secs = float(q.get("body", "0"))
        size = int(q.get("size", "1000"))
        time.sleep(head)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.flush()
        pieces = 10
        sent = 0
        for i in range(pieces):
            part = size // pieces if i < pieces - 1 else size - sent
            self.wfile.write(b"s" * part)
            self.wfile.flush()
            sent += part
            if body_secs:
                time.sleep(body_secs / pieces)

    def _abort(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(ABORT_DECLARED))
        self.end_headers()
        self.wfile.write(b"a" * ABORT_SENT)
        self.wfile.flush()
        time.sleep(0.2)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class PyServer:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.seen = []
        self.httpd.saw_expect = 0
        self.httpd.cond = threading.Condition()
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="pyserver", daemon=True)

    def start(self) -> "PyServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def saw_expect(self) -> int:
        return self.httpd.saw_expect

    def wait_for_path(self, path: str, timeout: float = 5.0) -> None:
        """Blocks until a request whose path starts with `path` has reached this server."""
        deadline = time.monotonic() + timeout
        with self.httpd.cond:
            while not any(p.startswith(path) for _, p in self.httpd.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no request for {path} reached the upstream; saw {self.httpd.seen}")
                self.httpd.cond.wait(left)
