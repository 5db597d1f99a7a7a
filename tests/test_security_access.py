"""Who gets in: client address ranges (refused with 403 and a `connection` record), proxy
authentication (407 with a challenge; the password never in any output or log), and the CA
key's file mode (world-readable refused; a Kubernetes Secret mount with defaultMode 0440 and an
fsGroup passes for a non-root proxy)."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.clients import curl
from support.net import free_port
from support.proxy import Proxy, clean_env, flowtap_bin, run_flowtap
from test_security_helpers import (all_records, assert_nowhere, assert_serves, assert_serves_https,
                                   error_kind, one_record, raw_exchange, url_is, wait_records)


# --- client address ranges ----------------------------------------------------------------------

class _RefusesLoopback(Proxy):
    """A proxy that refuses 127.0.0.1: it is ready when /healthz answers 403 (refused)."""

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flowtap exited: {self.stderr_text()[-3000:]}")
            try:
                if self.get("/healthz", timeout=1)[0] == 403:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("flowtap did not answer on its port")


class _AnyAnswer(_RefusesLoopback):
    """Ready as soon as /healthz answers at all (200 or 403)."""

    def get(self, path: str, timeout: float = 5.0):
        status, headers, body = super().get(path, timeout)
        return (403 if path == "/healthz" and status == 200 else status), headers, body


class _From127002(Proxy):
    """A proxy whose own pages are fetched from 127.0.0.2 (the address it admits)."""

    def get(self, path: str, timeout: float = 5.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=("127.0.0.2", 0))
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def _start(request, pki, tmp_path, cls, *args) -> Proxy:
    """Starts `cls` like the start_proxy fixture does, and hands it to that fixture's teardown
    (the test must request start_proxy)."""
    started = request.node._flowtap_proxies
    p = cls(tmp_path / f"custom{len(started)}", args, upstream_ca=[pki.server_ca])
    started.append(p)
    return p.start()


def test_client_outside_allow_clients_is_refused(request, start_proxy, pki, tmp_path, nginx):
    """Loopback is outside 10.0.0.0/8: every client of this proxy is refused, with a reason."""
    p = _start(request, pki, tmp_path, _RefusesLoopback,
               "--allow-clients", "10.0.0.0/8", "--allow-clients", "192.168.0.0/16")
    status, headers, body = raw_exchange(
        p.port, f"GET {nginx.url('/small')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 403, (status, body)
    assert b"--allow-clients" in body, body
    rec = wait_records(p, error_kind("refused"), count=2)[-1]   # the first one is the readiness probe
    assert rec["kind"] == "connection"
    assert rec["client"]["ip"] == "127.0.0.1"
    assert "--allow-clients" in rec["error"]["message"]
    # Refused before anything: not even the proxy's own pages.
    r = curl("--proxy", p.url, "-o", "/dev/null", "-w", "%{http_code}", nginx.url("/small"))
    assert r.text.strip() == "403", r.text
    assert p.running
    recs = wait_records(p, error_kind("refused"), count=3)
    assert all(r["kind"] == "connection" for r in recs)
    assert not [r for r in all_records(p) if r["kind"] == "http"], "a refused client got through"


def test_allowed_loopback_address_served_while_another_is_refused(request, start_proxy, pki, tmp_path,
                                                                  nginx):
    """--allow-clients 127.0.0.2/32: a client from 127.0.0.1 is refused, one from 127.0.0.2 (also
    loopback) is served, on the same proxy at the same time."""
    p = _start(request, pki, tmp_path, _From127002, "--allow-clients", "127.0.0.2/32")
    status, _, _ = raw_exchange(p.port, f"GET {nginx.url('/small')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 403
    rec = one_record(p, error_kind("refused"))
    assert rec["client"]["ip"] == "127.0.0.1"
    assert_serves(p, nginx, "--interface", "127.0.0.2")
    ok = one_record(p, url_is(nginx.url("/small")))
    assert ok["client"]["ip"] == "127.0.0.2" and ok["response"]["status"] == 200
    status, _, _ = raw_exchange(p.port, f"GET {nginx.url('/small')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 403


# Regression: Cidr::parse once kept an IPv4-mapped range as IPv6 while client addresses were
# compared in canonical (IPv4) form, so the range matched nobody.
def test_ipv4_mapped_allow_clients_range(request, start_proxy, pki, tmp_path, nginx):
    p = _start(request, pki, tmp_path, _AnyAnswer, "--allow-clients", "::ffff:127.0.0.0/104")
    assert_serves(p, nginx)


def test_bad_allow_clients_value_names_the_flag(tmp_path):
    r = run_flowtap("proxy", "--listen", "127.0.0.1:0", "--ca-dir", tmp_path / "ca",
                    "--allow-clients", "10.0.0.0/33")
    assert r.returncode == 64, r
    assert b"--allow-clients" in r.stderr, r.stderr


# --- proxy authentication -----------------------------------------------------------------------

PROXY_PASSWORD = "pr0xy-Passw0rd-9f2c"


def _assert_auth_enforced(p, nginx, user: str, password: str) -> None:
    # No credentials: 407 with a Basic challenge, for absolute-form and CONNECT alike.
    status, headers, body = raw_exchange(
        p.port, f"GET {nginx.url('/small')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 407, (status, body)
    assert headers.get("proxy-authenticate") == 'Basic realm="flowtap"', headers
    status, headers, _ = raw_exchange(
        p.port, f"CONNECT localhost:{nginx.tls_port} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status == 407 and headers.get("proxy-authenticate", "").startswith("Basic"), (status, headers)
    # Wrong password, and the right password for another user.
    for creds in (f"{user}:wrong-{password}", f"mallory:{password}"):
        r = curl("--proxy", p.url, "--proxy-user", creds, "-o", "/dev/null", "-w", "%{http_code}",
                 nginx.url("/small"))
        assert r.text.strip() == "407", (creds, r.text)
    refused = wait_records(p, error_kind("refused"), count=4)
    assert all(r["kind"] == "connection" for r in refused), refused
    assert any("wrong credentials" in r["error"]["message"] for r in refused), refused
    assert not [r for r in all_records(p) if r["kind"] == "http"], "an unauthenticated request got through"
    # The right credentials: plain HTTP and HTTPS through CONNECT.
    assert_serves(p, nginx, "--proxy-user", f"{user}:{password}")
    assert_serves_https(p, nginx, "--proxy-user", f"{user}:{password}")
    recs = wait_records(p, lambda r: r["kind"] == "http", count=2)
    assert {r["response"]["status"] for r in recs} == {200}
    for r in recs:
        # The proxy's own credential is hop-by-hop: if recorded at all, it is redacted.
        pa = r["request"]["headers"].get("proxy-authorization")
        assert pa in (None, f"Basic <redacted user={user}>"), pa
    # Probes and the CA stay open without credentials.
    status, _, body = p.get("/healthz")
    assert status == 200 and body.strip() == b"ok"
    status, _, body = p.get("/ca.pem")
    assert status == 200 and b"BEGIN CERTIFICATE" in body


def test_proxy_auth_flag(start_proxy, nginx):
    p = start_proxy("--proxy-auth", f"alice:{PROXY_PASSWORD}", "-v",
                    more_outputs=("text:{dir}/text.log", "pb:{dir}/records.pb"),
                    env={"RUST_LOG": "debug"})
    _assert_auth_enforced(p, nginx, "alice", PROXY_PASSWORD)
    assert p.stop() == 0
    assert_nowhere(p, PROXY_PASSWORD, base64.b64encode(f"alice:{PROXY_PASSWORD}".encode()), min_files=5)


def test_proxy_auth_file_and_env(start_proxy, nginx, tmp_path):
    secret_file = tmp_path / "proxy-auth"
    password = "f1le-Secret-" + os.urandom(4).hex()
    secret_file.write_text(f"bob:{password}\n")
    secret_file.chmod(0o600)
    p = start_proxy("--proxy-auth-file", secret_file, env={"RUST_LOG": "debug"})
    _assert_auth_enforced(p, nginx, "bob", password)
    assert p.stop() == 0
    assert_nowhere(p, password)

    env_password = "env-Secret-" + os.urandom(4).hex()
    q = start_proxy(env={"FLOWTAP_PROXY_AUTH": f"carol:{env_password}", "RUST_LOG": "debug"})
    _assert_auth_enforced(q, nginx, "carol", env_password)
    assert q.stop() == 0
    assert_nowhere(q, env_password)


def test_proxy_auth_without_colon_is_a_config_error(tmp_path):
    r = run_flowtap("proxy", "--listen", "127.0.0.1:0", "--ca-dir", tmp_path / "ca",
                    "--proxy-auth", "no-colon-here")
    assert r.returncode == 64, r
    assert b"--proxy-auth" in r.stderr and b"no-colon-here" not in r.stderr, r.stderr


# --- the CA key's file mode -----------------------------------------------------------------------

def _init_ca(directory: Path) -> None:
    r = run_flowtap("ca", "init", "--dir", directory)
    assert r.returncode == 0, r.stderr


def test_new_ca_key_is_private(proxy):
    assert stat.S_IMODE(os.stat(proxy.ca_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(proxy.ca_dir / "ca-key.pem").st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o444])
def test_world_readable_ca_key_is_refused(tmp_path, mode):
    ca = tmp_path / "ca"
    _init_ca(ca)
    key = ca / "ca-key.pem"
    key.chmod(mode)
    r = run_flowtap("proxy", "--listen", "127.0.0.1:0", "--ca-dir", ca, timeout=20)
    assert r.returncode != 0, "flowtap started on a world-readable CA key"
    err = r.stderr.decode()
    assert f"chmod 600 {key}" in err, err
    assert "BEGIN" not in err and "PRIVATE KEY" not in err, "the key must never be printed"


@pytest.mark.parametrize("mode", [0o640, 0o440, 0o400])
def test_group_or_owner_readable_ca_key_is_accepted(start_proxy, nginx, tmp_path, mode):
    ca = tmp_path / f"ca-{mode:o}"
    _init_ca(ca)
    (ca / "ca-key.pem").chmod(mode)
    p = start_proxy(ca_dir=ca)
    assert_serves_https(p, nginx)


def _secret_volume(root: Path, ca_src: Path, gid: int, key_mode: int) -> Path:
    """The layout kubelet gives a Secret volume: the files live in a timestamped directory,
    `..data` points at it, and each visible name is a symlink through `..data`. Files owned by
    root with group `gid` (fsGroup), directories read-only."""
    vol = root / "ca-secret"
    ts = vol / "..2026_11_28_06_00_00.000000001"
    ts.mkdir(parents=True)
    for name, mode in (("ca.pem", 0o440), ("ca-key.pem", key_mode)):
        shutil.copy(ca_src / name, ts / name)
        os.chown(ts / name, 0, gid)
        os.chmod(ts / name, mode)
    os.symlink(ts.name, vol / "..data")
    for name in ("ca.pem", "ca-key.pem"):
        os.symlink(f"..data/{name}", vol / name)
    for d in (ts, vol):
        os.chown(d, 0, gid)
        os.chmod(d, 0o2755 if d == vol else 0o755)
    return vol


class _AsUser(Proxy):
    """The real binary, started as another user: `setpriv` sets uid, gid and the supplementary
    groups the way a pod's runAsUser / runAsGroup / fsGroup do."""

    def __init__(self, *a, binary: Path, uid: int, gid: int, groups: list[int], **kw):
        super().__init__(*a, **kw)
        self.binary = str(binary)
        self.as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
                        "--groups=" + ",".join(map(str, groups)) if groups else "--clear-groups"]

    def command(self):
        cmd, env = super().command()
        env["HOME"] = str(self.workdir)
        return self.as_user + ["--", self.binary] + cmd[1:], env


@pytest.fixture
def world_dir():
    """A scratch directory another user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="flowtap-k8s-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _need_root_and_setpriv():
    assert os.geteuid() == 0, "this test simulates another user: it runs as root (as tests/run does in CI)"
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to run flowtap as another user"


UID, GID, FS_GROUP = 10001, 10002, 2000


def _start_as(world_dir: Path, vol: Path, groups: list[int], name: str) -> _AsUser:
    work = world_dir / name
    work.mkdir()
    os.chown(work, UID, GID)
    # A copy of the binary the other user can reach, wherever the checkout lives.
    binary = world_dir / "flowtap"
    if not binary.exists():
        shutil.copy(flowtap_bin(), binary)
        binary.chmod(0o755)
    p = _AsUser(work, (), binary=binary, ca_dir=vol, uid=UID, gid=GID, groups=groups,
                outputs=[f"jsonl:{work / 'records.jsonl'}", "jsonl"],
                upstream_ca=[])
    return p


def test_kubernetes_secret_mount_with_fsgroup_works_for_non_root(world_dir, pki, nginx):
    """defaultMode 0440 + fsGroup: the key is readable through the group only; a non-root
    proxy in that group starts, and intercepts with that CA."""
    _need_root_and_setpriv()
    src = world_dir / "src"
    _init_ca(src)
    vol = _secret_volume(world_dir, src, FS_GROUP, 0o440)
    upstream_ca = world_dir / "server-ca.pem"
    shutil.copy(pki.server_ca, upstream_ca)
    upstream_ca.chmod(0o644)
    p = _start_as(world_dir, vol, [FS_GROUP], "ok")
    p.upstream_ca = [str(upstream_ca)]
    try:
        p.start()
        assert p.running
        # The proxy runs as the pod's user, not as root.
        status = Path(f"/proc/{p.pid}/status").read_text()
        uids = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(UID)}, uids
        r = curl("--proxy", p.url, "--cacert", vol / "ca.pem",
                 nginx.url("/small", host="localhost", tls=True)).check()
        assert len(r.out) == 1024
        # It used the mounted CA (nothing written next to it: the volume is read-only for it).
        assert sorted(os.listdir(vol)) == sorted(["..2026_11_28_06_00_00.000000001", "..data",
                                                  "ca.pem", "ca-key.pem"])
    finally:
        if p.proc is not None and p.running:
            assert p.stop() == 0
    assert "panicked" not in p.stderr_text()


def test_kubernetes_secret_mount_world_readable_is_refused(world_dir):
    """defaultMode 0444 (the Kubernetes default is 0644): the key behind the symlinks is
    world-readable, and the proxy says how to fix it."""
    _need_root_and_setpriv()
    src = world_dir / "src"
    _init_ca(src)
    vol = _secret_volume(world_dir, src, FS_GROUP, 0o444)
    p = _start_as(world_dir, vol, [FS_GROUP], "bad")
    p.port = free_port()
    cmd, env = p.command()
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "chmod 600" in err and "defaultMode" in err, err


def test_kubernetes_secret_mount_without_the_group_fails_clearly(world_dir):
    """The same 0440 mount, but the proxy is not in the fsGroup: it cannot read the key and
    says so (no new CA is silently created in its place)."""
    _need_root_and_setpriv()
    src = world_dir / "src"
    _init_ca(src)
    vol = _secret_volume(world_dir, src, FS_GROUP, 0o440)
    p = _start_as(world_dir, vol, [], "nogroup")
    p.port = free_port()
    cmd, env = p.command()
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "ca-key.pem" in err and "ermission denied" in err, err
