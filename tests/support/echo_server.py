"""A request echo for the network-namespace tests, run as its own process inside the server
namespace (`python3 echo_server.py PORT`): listens on every address, IPv4 and IPv6, and answers
every request with JSON describing what it received: method, path, the Host header, all headers
(nginx in front adds X-Front-* headers saying what it saw: protocol, scheme, port, address), and
the body's length, SHA-256 and first bytes. Standard library only."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY_ECHO_LIMIT = 4096   # bytes of the request body sent back as text


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flowtap-netns-echo"

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline(3)
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def _answer(self):
        body = self._body()
        reply = json.dumps({
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "request_version": self.request_version,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_size": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body[:BODY_ECHO_LIMIT].decode(errors="replace"),
            "client": self.client_address[0],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("X-Echo", "flowtap-netns")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


class _DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    port = int(sys.argv[1])
    srv = _DualStack(("::", port), _Handler)
    print("listening", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
