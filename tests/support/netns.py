"""A real little network for the transparent- and reverse-mode tests: two network namespaces
joined by a veth pair, all addresses private to them (nothing here ever reaches the host's
network or the outside world).

    client namespace  (the "pod")                         server namespace  (the "internet")
    10.77.0.1 / fd77::1  ─────── veth ───────  10.77.0.2, 10.77.0.3 / fd77::2, fd77::3
      flowtap, as a dedicated uid (setpriv)                nginx :80, :443, :8443 (TLS, h2 + http/1.1), :8082 (h2c)
      curl, Python clients (no proxy configured)           echo server :8000 behind nginx
      nat rules from deploy/sidecar/init-redirect.sh

nginx answers /small and /json (static), /host (JSON: the Host, protocol, scheme, port and
client address nginx saw) and passes everything else to the echo server. Names resolve through
/etc/netns/<client>/hosts (`ip netns exec` bind-mounts it over /etc/hosts): server.test and
ignored.test are 10.77.0.2, api.test is 10.77.0.3 (stands for the API server), server6.test is
fd77::2. The server's certificate (its own test CA, `NetnsPki`) names all of them.

Everything made here is removed by `Topology.close()` (namespaces, veths with them, the
/etc/netns files, the processes), which the fixtures call from finalizers, also on failure.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .nginx import JSON_BODY, SMALL_BODY
from .proxy import REPO_ROOT, Proxy, _no_nulls, _validator, check_record, clean_env

INIT_SCRIPT = REPO_ROOT / "deploy" / "sidecar" / "init-redirect.sh"
ECHO_SCRIPT = Path(__file__).resolve().parent / "echo_server.py"

CLIENT_V4, SERVER_V4, API_V4 = "10.77.0.1", "10.77.0.2", "10.77.0.3"
CLIENT_V6, SERVER_V6, API_V6 = "fd77::1", "fd77::2", "fd77::3"
SERVER_NAME, SERVER6_NAME, IGNORED_NAME, API_NAME = "server.test", "server6.test", "ignored.test", "api.test"
HOSTS = {SERVER_NAME: SERVER_V4, IGNORED_NAME: SERVER_V4, API_NAME: API_V4, SERVER6_NAME: SERVER_V6}

ECHO_PORT = 8000          # the echo server in the server namespace (not a redirected port)
EXTRA_TLS_PORT = 8443     # nginx TLS on a port that only some rule sets redirect
H2C_PORT = 8082           # nginx plain-text HTTP/2 with prior knowledge only (h2c, as gRPC uses)
PROXY_UID = 41337         # flowtap runs as this uid (no passwd entry needed); the rules exclude it
APP_UID = 41338           # a second unprivileged uid, for clients that are not the proxy
TRANSPARENT_PORT = 15001  # the sidecar's port for --mode transparent
REGULAR_PORT = 15000      # the sidecar's regular listener (/healthz, /metrics)

SETUP_TIMEOUT_S = 15.0


def _run(argv, *, check=True, timeout=30.0, env=None, input=None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(a) for a in argv], capture_output=True, timeout=timeout, env=env,
                       stdin=None if input is not None else subprocess.DEVNULL, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {p.returncode}\n"
                             f"stdout: {p.stdout.decode(errors='replace')}\n"
                             f"stderr: {p.stderr.decode(errors='replace')}")
    return p


def require_tools() -> None:
    """The tools the topology needs; missing ones are installed (Debian), or the test fails."""
    want = {"ip": "iproute2", "iptables": "iptables", "setpriv": "util-linux", "nginx": "nginx",
            "curl": "curl"}
    missing = sorted({pkg for tool, pkg in want.items() if shutil.which(tool) is None})
    if missing:
        assert os.geteuid() == 0, f"missing {missing} and not root to install them"
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-qq"], timeout=300, env=env)
        _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], timeout=600, env=env)
    assert os.geteuid() == 0, "the network-namespace tests need root (ip netns, iptables)"


# --- PKI for the server namespace ------------------------------------------------------------

@dataclass(frozen=True)
class NetnsPki:
    ca: Path
    cert: Path
    key: Path


def make_netns_pki(directory: Path) -> NetnsPki:
    """A CA and a leaf naming every host and address of the server namespace."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flowtap netns tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("flowtap netns server CA"))
          .issuer_name(name("flowtap netns server CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(n) for n in HOSTS] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in (SERVER_V4, API_V4, SERVER_V6, API_V6)]
    leaf = (x509.CertificateBuilder().subject_name(name(SERVER_NAME)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = NetnsPki(directory / "netns-ca.pem", directory / "server.pem", directory / "server-key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


# --- the server namespace's nginx ------------------------------------------------------------

NGINX_CONF = r"""
user root;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 512; }
http {
    access_log %(dir)s/access.log;
    client_body_temp_path %(dir)s/tmp/body;
    proxy_temp_path %(dir)s/tmp/proxy;
    fastcgi_temp_path %(dir)s/tmp/fastcgi;
    uwsgi_temp_path %(dir)s/tmp/uwsgi;
    scgi_temp_path %(dir)s/tmp/scgi;
    types { }
    default_type application/octet-stream;
    server_tokens off;
    client_max_body_size 0;
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream echo { server 127.0.0.1:%(echo_port)d; keepalive 4; }
    server {
        listen 80;
        listen [::]:80 ipv6only=on;
        listen 443 ssl http2;
        listen [::]:443 ssl http2 ipv6only=on;
        listen %(extra_tls)d ssl http2;
        listen %(h2c)d http2;
        server_name _;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        root %(dir)s/www;
        location = /small { default_type text/plain; }
        location = /json  { default_type application/json; }
        # What nginx itself saw, answered by nginx (its HTTP/2 responses end with the last DATA
        # frame; proxied ones below may end with a separate empty one).
        location = /host {
            default_type application/json;
            return 200 '{"host": "$http_host", "protocol": "$server_protocol", "scheme": "$scheme", "port": "$server_port", "addr": "$server_addr", "client": "$remote_addr", "x_case": "$http_x_case", "uri": "$request_uri"}';
        }
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Front-Protocol $server_protocol;
            proxy_set_header X-Front-Scheme $scheme;
            proxy_set_header X-Front-Addr $server_addr;
            proxy_set_header X-Front-Port $server_port;
            proxy_set_header X-Front-Client $remote_addr;
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
}
"""


# --- the topology ----------------------------------------------------------------------------

class Topology:
    """Two namespaces and a veth pair; servers in one, clients and flowtap in the other."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.client = f"ftc-{tag}"
        self.server = f"fts-{tag}"
        self._veth = (f"ftc{tag}", f"fts{tag}")
        # Outside pytest's 0700 temp tree: the proxy's uid reads and writes below here.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"flowtap-netns-{tag}-"))
        self.workdir.chmod(0o755)
        self.pki = make_netns_pki(self.workdir / "pki")
        for f in (self.pki.ca, self.pki.cert):
            f.chmod(0o644)
        self._procs: list[subprocess.Popen] = []
        self._etc = Path("/etc/netns")
        self.closed = False

    # --- building --------------------------------------------------------------------------
    def open(self) -> "Topology":
        try:
            self._build()
            self._start_servers()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        c, s = self.client, self.server
        vc, vs = self._veth
        _run(["ip", "netns", "add", c])
        _run(["ip", "netns", "add", s])
        _run(["ip", "link", "add", vc, "type", "veth", "peer", "name", vs])
        _run(["ip", "link", "set", vc, "netns", c])
        _run(["ip", "link", "set", vs, "netns", s])
        for ns, dev, v4s, v6s in ((c, vc, [CLIENT_V4], [CLIENT_V6]), (s, vs, [SERVER_V4, API_V4], [SERVER_V6, API_V6])):
            self.ns(ns, "ip", "link", "set", "lo", "up")
            for a in v4s:
                self.ns(ns, "ip", "addr", "add", f"{a}/24", "dev", dev)
            for a in v6s:
                self.ns(ns, "ip", "-6", "addr", "add", f"{a}/64", "dev", dev, "nodad")
            self.ns(ns, "ip", "link", "set", dev, "up")
        # Per-namespace /etc/hosts (ip netns exec bind-mounts /etc/netns/NAME/hosts).
        d = self._etc / c
        d.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{ip} {name}" for name, ip in HOSTS.items()]
        (d / "hosts").write_text("\n".join(lines) + "\n")
        # The veth is up when both ends are; wait for the link, then for a ping each way.
        deadline = time.monotonic() + SETUP_TIMEOUT_S
        while True:
            r4 = self.ns(c, "ping", "-c1", "-W1", SERVER_V4, check=False) if shutil.which("ping") else None
            if r4 is None or r4.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no route from {c} to {SERVER_V4}: {r4.stdout!r} {r4.stderr!r}")
            time.sleep(0.1)

    def _start_servers(self) -> None:
        d = self.workdir / "nginx"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        www = d / "www"
        www.mkdir(parents=True, exist_ok=True)
        (www / "small").write_bytes(SMALL_BODY)
        (www / "json").write_bytes(JSON_BODY)
        (d / "nginx.conf").write_text(NGINX_CONF % {
            "dir": d, "echo_port": ECHO_PORT, "extra_tls": EXTRA_TLS_PORT, "h2c": H2C_PORT, "cert": self.pki.cert, "key": self.pki.key})
        echo_log = open(self.workdir / "echo.log", "wb")
        self._procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.server, sys.executable, str(ECHO_SCRIPT), str(ECHO_PORT)],
            stdin=subprocess.DEVNULL, stdout=echo_log, stderr=subprocess.STDOUT))
        echo_log.close()
        ng_log = open(d / "stderr.log", "wb")
        self.nginx = subprocess.Popen(
            ["ip", "netns", "exec", self.server, "nginx", "-p", str(d), "-c", str(d / "nginx.conf"),
             "-e", str(d / "error.log"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=ng_log)
        ng_log.close()
        self._procs.append(self.nginx)
        for port in (80, 443, EXTRA_TLS_PORT, H2C_PORT, ECHO_PORT):
            self.wait_listening(self.server, port)

    def wait_listening(self, ns: str, port: int, timeout: float = SETUP_TIMEOUT_S) -> None:
        """Waits for a TCP listener on `port` in namespace `ns` (ss -ltn)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.ns(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout.decode()
            if out.strip():
                return
            for p in self._procs:
                if p.poll() is not None:
                    raise AssertionError(f"{p.args} exited with {p.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listening on port {port} in {ns}: {self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        out = []
        for name in ("nginx/stderr.log", "nginx/error.log", "echo.log"):
            p = self.workdir / name
            if p.exists():
                out.append(f"--- {name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    # --- running things --------------------------------------------------------------------
    def ns(self, ns: str, *argv, check=True, timeout=30.0, env=None, input=None) -> subprocess.CompletedProcess:
        return _run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, env=env, input=input)

    def ns_popen(self, ns: str, *argv) -> subprocess.Popen:
        """A background process in namespace `ns`, stopped by close() at the latest."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *map(str, argv)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs.append(p)
        return p

    def curl(self, *args, uid: int | None = None, timeout: float = 20.0) -> "NsCurl":
        """curl in the client namespace, as root or as `uid`, with no proxy configured."""
        argv = ["ip", "netns", "exec", self.client]
        if uid is not None:
            argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        # No proxy unless the test names one (the environment has none either: clean_env).
        noproxy = [] if "--proxy" in args else ["--noproxy", "*"]
        argv += ["curl", "-sS", *noproxy, "--max-time", str(int(timeout)), *map(str, args)]
        p = subprocess.run(argv, capture_output=True, timeout=timeout + 10, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        return NsCurl(p.returncode, p.stdout, p.stderr.decode(errors="replace"), argv)

    def python(self, code: str, *, timeout: float = 30.0, uid: int | None = None) -> dict:
        """Runs `code` with this interpreter (requests, httpx available) in the client
        namespace; the code prints one JSON object, which is returned."""
        argv = ["ip", "netns", "exec", self.client]
        if uid is not None:
            argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        argv += [sys.executable, "-c", code]
        p = subprocess.run(argv, capture_output=True, timeout=timeout, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 0, f"python in {self.client} failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}"
        return json.loads(p.stdout.decode().strip().splitlines()[-1])

    # --- the sidecar's rules -----------------------------------------------------------------
    def init_redirect(self, action: str = "install", **env) -> subprocess.CompletedProcess:
        """Runs deploy/sidecar/init-redirect.sh in the client namespace (as the init container
        would); `env` are FLOWTAP_* settings without the prefix, e.g. PROXY_UID=41337."""
        e = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        e.update({k if k.startswith(("FLOWTAP_", "KUBERNETES_")) else f"FLOWTAP_{k}": str(v)
                  for k, v in env.items()})
        return self.ns(self.client, "sh", INIT_SCRIPT, action, env=e, check=False)

    def nat_rules(self) -> str:
        """iptables-save and ip6tables-save of the client namespace's nat table."""
        v4 = self.ns(self.client, "iptables-save", "-t", "nat").stdout.decode()
        v6 = self.ns(self.client, "ip6tables-save", "-t", "nat").stdout.decode()
        return v4 + v6

    # --- cleaning up -------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for p in self._procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self._procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in (self.client, self.server):
            # Whatever still runs in the namespace (a stray client) goes with it.
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.decode().split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self._etc / self.client, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def namespaces_left(self) -> list[str]:
        out = _run(["ip", "netns", "list"]).stdout.decode()
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n in (self.client, self.server)]


@dataclass
class NsCurl:
    rc: int
    out: bytes
    err: str
    args: list

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def check(self) -> "NsCurl":
        assert self.rc == 0, f"curl failed rc={self.rc}: {self.err}\nargs: {self.args}"
        return self

    def json(self) -> dict:
        return json.loads(self.out)


# --- flowtap inside the client namespace ------------------------------------------------------

def check_any_record(rec: dict) -> None:
    """check_record for http and tunnel records; the schema and no-nulls rule for the other
    kinds (`connection`: a client connection refused before any exchange)."""
    if rec.get("kind") in ("http", "tunnel"):
        check_record(rec)
        return
    errors = list(_validator().iter_errors(rec))
    assert not errors, f"record does not match the schema: {errors[0].message}\n{json.dumps(rec)}"
    _no_nulls(rec)
    assert rec.get("kind") == "connection", rec


class NsProxy(Proxy):
    """The real flowtap binary, run in the topology's client namespace as PROXY_UID (like the
    sidecar container), with a regular listener on 127.0.0.1:REGULAR_PORT for /healthz and the
    `--mode` flags given. Its work directory is owned by that uid."""

    def __init__(self, topo: Topology, name: str, modes=(), args=(), *, uid: int = PROXY_UID,
                 ca_dir: Path | None = None, upstream_ca=(), **kw):
        workdir = topo.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        os.chown(workdir, uid, uid)
        self.topo = topo
        self.uid = uid
        self.modes = list(modes)
        super().__init__(workdir, args, ca_dir=ca_dir, upstream_ca=upstream_ca, **kw)

    def command(self):
        cmd, env = super().command()
        # super() listens on --listen 127.0.0.1:PORT; here that is the regular mode's address.
        modes = ["regular", *self.modes]
        for m in modes:
            cmd += ["--mode", m]
        pre = ["ip", "netns", "exec", self.topo.client,
               "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--"]
        return pre + cmd, env

    def start(self) -> "NsProxy":
        self.port = REGULAR_PORT
        cmd, env = self.command()
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=env, cwd=self.workdir)
        try:
            self._wait_healthy()
        except Exception as e:  # noqa: BLE001 - re-raised with the stderr
            if self.proc.poll() is not None:
                raise AssertionError(f"flowtap exited with {self.proc.returncode} during startup\n"
                                     f"command: {cmd}\nstderr:\n{self.stderr_text()[-4000:]}") from None
            raise AssertionError(str(e)) from None
        return self

    def get(self, path: str, timeout: float = 5.0):
        """GET on the proxy's own regular listener, from inside the namespace."""
        r = self.topo.ns(self.topo.client, "curl", "-sS", "--noproxy", "*", "--max-time", str(timeout),
                         "-D", "-", f"http://127.0.0.1:{self.port}{path}", check=False, timeout=timeout + 5)
        if r.returncode != 0:
            raise OSError(f"curl rc={r.returncode}: {r.stderr.decode(errors='replace')}")
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        return status, headers, body

    def read_records(self, path: Path | None = None) -> list[dict]:
        path = path or self.records_path
        if not path.exists():
            return []
        out = []
        for line in path.read_bytes().split(b"\n")[:-1]:
            if line.strip():
                rec = json.loads(line)
                check_any_record(rec)
                out.append(rec)
        return out

    def stdout_records(self) -> list[dict]:
        return self.read_records(self.stdout_path)


class SidecarProxy(NsProxy):
    """flowtap started the way the sidecar manifest starts it: `args` and `env` as the built
    manifest gives them (no flags of the test's own), as `uid`. Records are read from stdout
    (FLOWTAP_OUTPUT=jsonl). `health_port` is the regular listener's port (FLOWTAP_LISTEN)."""

    def __init__(self, topo: Topology, name: str, args, env: dict, *, uid: int, health_port: int):
        super().__init__(topo, name, uid=uid)
        self.manifest_args = list(args)
        self.manifest_env = dict(env)
        self.health_port = health_port
        self.records_path = self.stdout_path

    def command(self):
        from .proxy import flowtap_bin
        pre = ["ip", "netns", "exec", self.topo.client,
               "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--"]
        return pre + [flowtap_bin(), *self.manifest_args], clean_env(self.manifest_env)

    def start(self) -> "SidecarProxy":
        super().start()
        return self

    @property
    def port(self):
        return self.health_port

    @port.setter
    def port(self, _value):
        pass

    @property
    def ca_path(self) -> Path:
        return Path(self.manifest_env["FLOWTAP_CA_DIR"]) / "ca.pem"


# --- fixtures (imported by the test modules that use them) ------------------------------------

import pytest  # noqa: E402 - fixtures only below


@pytest.fixture(scope="module")
def topo():
    """The two namespaces with nginx and the echo server running; removed at the end, and the
    removal checked."""
    require_tools()
    t = Topology().open()
    try:
        yield t
    finally:
        t.close()
    left = t.namespaces_left()
    assert not left, f"namespaces still present after teardown: {left}"
    assert not (Path("/etc/netns") / t.client).exists(), "/etc/netns entry left behind"


@pytest.fixture
def ns_proxy(request, topo):
    """ns_proxy(name, modes=[...], args=[...], **kw) -> a running NsProxy. Every proxy is
    stopped at teardown; a non-zero exit or a panic fails the test (as `start_proxy` does)."""
    started: list[NsProxy] = []
    request.node._flowtap_proxies = started   # the conftest hook shows their stderr on failure

    def factory(name: str = "proxy", modes=(), args=(), **kw) -> NsProxy:
        kw.setdefault("upstream_ca", [topo.pki.ca])
        p = NsProxy(topo, f"{request.node.name[:40]}-{name}", modes, args, **kw)
        started.append(p)
        return p.start()

    yield factory
    problems = []
    for i, p in enumerate(started):
        if p.running:
            try:
                rc = p.stop(timeout=15)
                if rc != 0:
                    problems.append(f"flowtap #{i} exited with {rc} on SIGTERM")
            except AssertionError as e:
                p.kill()
                problems.append(f"flowtap #{i}: {e}")
        elif p.proc is not None and p.returncode is None:
            problems.append(f"flowtap #{i} died during the test (exit {p.proc.returncode})")
        if "panicked at" in p.stderr_text():
            problems.append(f"flowtap #{i} panicked:\n{p.stderr_text()[-3000:]}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def redirect(topo):
    """redirect(**settings) runs deploy/sidecar/init-redirect.sh install in the client
    namespace; at teardown `remove` runs and the nat tables are checked to hold no flowtap rule."""
    installed = []

    def install(**env):
        env.setdefault("PROXY_UID", PROXY_UID)
        env.setdefault("PROXY_PORT", TRANSPARENT_PORT)
        r = topo.init_redirect("install", **env)
        installed.append(env)
        assert r.returncode == 0, f"init-redirect.sh failed ({r.returncode}):\n{r.stderr.decode()}"
        return r

    yield install
    if installed:
        r = topo.init_redirect("remove", IPV6=installed[-1].get("IPV6", "auto"))
        assert r.returncode == 0, f"init-redirect.sh remove failed:\n{r.stderr.decode()}"
        rules = topo.nat_rules()
        assert "FLOWTAP" not in rules and "REDIRECT" not in rules, f"rules left after remove:\n{rules}"
