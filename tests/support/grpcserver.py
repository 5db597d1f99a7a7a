"""A real gRPC server (grpcio, the C-core implementation) on loopback, with one TLS port (the test
server certificate) and one plain-text port (HTTP/2 with prior knowledge, as in-cluster gRPC
usually runs). Its service, `flowtap.test.Echo`, takes raw bytes (no generated code):

- `Unary`: answers `echo:<request>:<authorization metadata>` with a trailer `x-trailer: t1`;
  the request `fail` is answered with NOT_FOUND (a trailers-only response);
- `Stream`: answers `part0`, `part1`, `part2`;
- `Collect`: joins the requests with `+`;
- `Slow`: sleeps for the number of milliseconds in the request, then answers `late`.
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc

from .net import free_port
from .pki import Pki

SERVICE = "flowtap.test.Echo"


def _unary(request: bytes, context) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: fail")
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-trailer", "t1"),))
    return b"echo:" + request + b":" + metadata.get("authorization", "").encode()


def _stream(request: bytes, context):
    for i in range(3):
        yield b"part%d" % i


def _collect(requests, context) -> bytes:
    return b"+".join(requests)


def _slow(request: bytes, context) -> bytes:
    time.sleep(int(request) / 1000)
    return b"late"


def _raw(x: bytes) -> bytes:
    return x


class GrpcServer:
    def __init__(self, pki: Pki):
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, _raw, _raw),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream, _raw, _raw),
            "Collect": grpc.stream_unary_rpc_method_handler(_collect, _raw, _raw),
            "Slow": grpc.unary_unary_rpc_method_handler(_slow, _raw, _raw),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())])
        self.tls_port = free_port()
        self.plain_port = free_port()
        assert self.server.add_secure_port(f"127.0.0.1:{self.tls_port}", creds) == self.tls_port
        assert self.server.add_insecure_port(f"127.0.0.1:{self.plain_port}") == self.plain_port

    def start(self) -> "GrpcServer":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=0).wait(5)


def channel(target: str, *, proxy: str | None = None, ca: bytes | None = None) -> grpc.Channel:
    """A grpcio channel to `target`, through the explicit proxy at `proxy` (gRPC core sends
    CONNECT, then TLS when `ca` is given, or plain-text HTTP/2 otherwise)."""
    options = [("grpc.enable_retries", 0)]
    options.append(("grpc.http_proxy", proxy) if proxy else ("grpc.enable_http_proxy", 0))
    if ca is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=options)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"
