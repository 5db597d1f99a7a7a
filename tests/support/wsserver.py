"""WebSocket echo servers on loopback (plain ws and wss with the test server certificate), built on
the `websockets` package's threaded server."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve


def _echo(ws) -> None:
    try:
        for message in ws:
            ws.send(message)
    except ConnectionClosed:
        pass


class WsServer:
    def __init__(self, cert: Path | None = None, key: Path | None = None):
        ctx = None
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
        self.scheme = "wss" if ctx else "ws"
        self.server = serve(_echo, "127.0.0.1", 0, ssl=ctx, compression=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name=f"{self.scheme}-echo",
                                       daemon=True)

    def start(self) -> "WsServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def url(self, host: str = "127.0.0.1", path: str = "/echo") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"
