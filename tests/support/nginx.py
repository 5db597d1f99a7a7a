"""nginx on loopback from its own temporary configuration (never the system one): a plain HTTP
port, a TLS port with HTTP/2 and HTTP/1.1 by ALPN (test server CA), and a TLS port whose
certificate comes from an untrusted CA, and a TLS port that ends each connection after 10
requests (an HTTP/2 GOAWAY while other streams are in flight), and a TLS port that requires a
client certificate (mutual TLS, /whoami). Static files are made here; /upload and /echo are passed
to the Python upstream so uploads also work over TLS and HTTP/2."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .net import free_port, ipv6_loopback, stop_process, wait_started
from .pki import Pki

SMALL_BODY = (b"0123456789abcdef" * 63) + b"flowtap-small!!\n"   # exactly 1024 bytes
JSON_BODY = (
    '{"name": "flowtap", "größe": "überall", "items": [1, 2, 3], '
    '"nested": {"ok": true, "text": "a fairly long string so that the body passes one hundred bytes"}}\n'
).encode()
GZIP_TEXT = ("flowtap gzip line: the record shows decoded text, the client gets gzip bytes\n" * 50).encode()
BIG_SIZE = 100 * 1024 * 1024
BIG1M_SIZE = 1024 * 1024
SET_COOKIES = ("a=1; Path=/", "b=2; Path=/; HttpOnly")
# /many-headers: more header fields than hyper's default (100) and a larger head than its HTTP/2
# default (16 KiB), both of which clients take directly; /huge-headers: a head over 64 KiB.
MANY_HEADERS = {f"x-many-{i:03}": f"{i:03}" + "m" * 120 for i in range(150)}
HUGE_HEADERS = {f"x-huge-{i:02}": "h" * 3000 for i in range(30)}


def _header_route(path: str, headers: dict) -> str:
    adds = " ".join(f'add_header {k} "{v}" always;' for k, v in headers.items())
    return f'        location = {path} {{ default_type text/plain; {adds} return 200 "headers\\n"; }}\n'


ROUTES = r"""
        location = /small      { default_type text/plain; }
        location = /json       { default_type application/json; }
        location = /gzip       { default_type text/plain; gzip_static always; }
        location = /big100m    { default_type application/octet-stream; }
        location = /big1m      { default_type application/octet-stream; }
        location = /bin4k      { default_type application/octet-stream; }
        location = /set-cookie {
            default_type text/plain;
            add_header Set-Cookie "%(cookie_a)s";
            add_header Set-Cookie "%(cookie_b)s";
            return 200 "cookies\n";
        }
        location = /status/500 { default_type text/plain; return 500 "boom\n"; }
        location = /protocol   { default_type text/plain; return 200 "$server_protocol\n"; }
        location ~ ^/(upload|echo)$ {
            proxy_pass http://pyserver;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }
"""

CONFIG = r"""
%(user)s
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 1024; }
http {
    access_log %(dir)s/access.log;
    client_body_temp_path %(dir)s/tmp/body;
    proxy_temp_path %(dir)s/tmp/proxy;
    fastcgi_temp_path %(dir)s/tmp/fastcgi;
    uwsgi_temp_path %(dir)s/tmp/uwsgi;
    scgi_temp_path %(dir)s/tmp/scgi;
    types { }
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    keepalive_requests 10000;
    client_max_body_size 0;
    ssl_protocols TLSv1.2 TLSv1.3;

    upstream pyserver { server 127.0.0.1:%(py_port)d; keepalive 4; }

    server {
%(listen_main)s
        server_name localhost;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        root %(dir)s/www;
%(routes)s
    }
    server {
%(listen_bad)s
        server_name localhost;
        ssl_certificate %(bad_cert)s;
        ssl_certificate_key %(bad_key)s;
        root %(dir)s/www;
%(routes)s
    }
    # Mutual TLS: a client certificate from the test server CA is required.
    server {
%(listen_mtls)s
        server_name localhost;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        ssl_client_certificate %(client_ca)s;
        ssl_verify_client on;
        location = /whoami { default_type text/plain; return 200 "client $ssl_client_s_dn\n"; }
    }
    # Ends every connection after 10 requests: on HTTP/2, a GOAWAY while others are in flight.
    server {
%(listen_short)s
        server_name localhost;
        keepalive_requests 10;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        root %(dir)s/www;
%(routes)s
    }
}
"""


@dataclass
class Nginx:
    directory: Path
    http_port: int
    tls_port: int
    bad_tls_port: int
    short_tls_port: int
    proc: subprocess.Popen | None = None
    files: dict = field(default_factory=dict)   # path -> (size, sha256 hex) of served bytes
    mtls_port: int = 0                          # requires a client certificate (pki.client_cert)

    def url(self, path: str, host: str = "127.0.0.1", tls: bool = False, bad: bool = False,
            short: bool = False, mtls: bool = False) -> str:
        if mtls:
            return f"https://{host}:{self.mtls_port}{path}"
        if short:
            return f"https://{host}:{self.short_tls_port}{path}"
        if bad:
            return f"https://{host}:{self.bad_tls_port}{path}"
        if tls:
            return f"https://{host}:{self.tls_port}{path}"
        return f"http://{host}:{self.http_port}{path}"

    def stop(self) -> None:
        stop_process(self.proc)

    def error_log(self) -> str:
        p = self.directory / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""


def _write_files(www: Path) -> dict:
    www.mkdir(parents=True, exist_ok=True)
    files = {}

    def put(name: str, data: bytes) -> None:
        (www / name).write_bytes(data)
        files["/" + name] = (len(data), hashlib.sha256(data).hexdigest())

    put("small", SMALL_BODY)
    put("json", JSON_BODY)
    gz = gzip.compress(GZIP_TEXT, mtime=0)
    (www / "gzip").write_bytes(GZIP_TEXT)
    (www / "gzip.gz").write_bytes(gz)
    files["/gzip"] = (len(gz), hashlib.sha256(gz).hexdigest())
    put("big1m", os.urandom(BIG1M_SIZE))
    put("bin4k", os.urandom(4096))
    big = www / "big100m"
    with open(big, "wb") as f:          # sparse: no disk, reads as zeros
        f.truncate(BIG_SIZE)
    h = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(BIG_SIZE >> 20):
        h.update(zeros)
    files["/big100m"] = (BIG_SIZE, h.hexdigest())
    return files


def _listen(port: int, tls: bool, v6: bool) -> str:
    suffix = " ssl http2" if tls else ""
    lines = [f"        listen 127.0.0.1:{port}{suffix};"]
    if v6:
        lines.append(f"        listen [::1]:{port}{suffix};")
    return "\n".join(lines)


def start_nginx(directory: Path, pki: Pki, py_port: int) -> Nginx:
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    files = _write_files(directory / "www")
    v6 = ipv6_loopback()
    last_err = ""
    for _attempt in range(3):
        http_port, tls_port, bad_port, short_port, mtls_port = (free_port() for _ in range(5))
        if len({http_port, tls_port, bad_port, short_port, mtls_port}) < 5:
            continue
        routes = (ROUTES % {"cookie_a": SET_COOKIES[0], "cookie_b": SET_COOKIES[1]}
                  + _header_route("/many-headers", MANY_HEADERS)
                  + _header_route("/huge-headers", HUGE_HEADERS))
        conf = CONFIG % {
            "user": "user root;" if os.geteuid() == 0 else "",
            "dir": directory,
            "py_port": py_port,
            "listen_main": _listen(http_port, False, v6) + "\n" + _listen(tls_port, True, v6),
            "listen_bad": _listen(bad_port, True, v6),
            "listen_short": _listen(short_port, True, v6),
            "listen_mtls": _listen(mtls_port, True, v6),
            "client_ca": pki.server_ca,
            "cert": pki.server_cert, "key": pki.server_key,
            "bad_cert": pki.bad_cert, "bad_key": pki.bad_key,
            "routes": routes,
        }
        (directory / "nginx.conf").write_text(conf)
        stderr = open(directory / "stderr.log", "wb")
        proc = subprocess.Popen(
            ["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"),
             "-e", str(directory / "error.log"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )
        stderr.close()
        ng = Nginx(directory, http_port, tls_port, bad_port, short_port, proc, files, mtls_port)
        try:
            wait_started(proc, "nginx", (http_port, tls_port, bad_port, short_port, mtls_port))
            return ng
        except (RuntimeError, TimeoutError) as e:
            ng.stop()
            last_err = f"{e}: {(directory / 'stderr.log').read_text(errors='replace')}\n{ng.error_log()}"
    raise RuntimeError(f"nginx did not start: {last_err}")
