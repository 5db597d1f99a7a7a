"""deploy/Dockerfile, built and run for real without a registry: a minimal Debian root made with
`debootstrap --variant=minbase` (from the mirror apt already uses) is imported as the base image,
`buildah bud --isolation chroot` builds deploy/Dockerfile on it with the binaries from
target/release, and the image's root is mounted and run with `chroot` as the image's non-root
user: `flowtap --version`, then a short proxy session (health, CA, one intercepted HTTPS
exchange, records on stdout).

Slow (about a minute and a half the first time): the debootstrap root is cached as
target/k8s-image/rootfs-CODENAME.tar and its imported image kept in target/k8s-image/storage."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import k8s
from support.net import free_port
from support.proxy import REPO_ROOT, flowtap_bin

WORK = REPO_ROOT / "target" / "k8s-image"
STORAGE = WORK / "storage"
IMAGE = "localhost/flowtap:k8s-test"


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise AssertionError("no VERSION_CODENAME in /etc/os-release")


def debian_mirror(suite: str) -> str:
    """The Debian archive apt itself uses (deb822 .sources or one-line .list entries)."""
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text()
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                    return fields["URIs"].split()[0]
        elif f.suffix == ".list" or f.name == "sources.list":
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    uri_at = 2 if parts[1].startswith("[") else 1
                    if parts[uri_at + 1:uri_at + 2] == [suite]:
                        return parts[uri_at]
    raise AssertionError(f"no apt source for suite {suite} in /etc/apt")


def run(cmd, timeout=600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def rootfs_tar(suite: str) -> Path:
    """The debootstrap root as a tarball, made once and kept under target/."""
    tar = WORK / f"rootfs-{suite}.tar"
    if tar.is_file():
        return tar
    debootstrap = k8s.ensure_apt_tool("debootstrap", "debootstrap")
    WORK.mkdir(parents=True, exist_ok=True)
    root = WORK / f"rootfs-{suite}.tmp"
    shutil.rmtree(root, ignore_errors=True)
    run([debootstrap, "--variant=minbase", suite, root, debian_mirror(suite)], timeout=900)
    partial = tar.with_suffix(".partial")
    run(["tar", "-C", root, "--numeric-owner", "-cf", partial, "."])
    partial.rename(tar)
    shutil.rmtree(root, ignore_errors=True)
    return tar


class Buildah:
    def __init__(self):
        self.exe = k8s.ensure_apt_tool("buildah", "buildah")
        self.base = [self.exe, "--root", STORAGE / "root", "--runroot", STORAGE / "run",
                     "--storage-driver", "vfs"]

    def __call__(self, *args, timeout=900) -> str:
        return run(self.base + list(args), timeout=timeout).stdout.strip()

    def has_image(self, name: str) -> bool:
        r = subprocess.run([str(c) for c in self.base + ["images", "-q", name]],
                           capture_output=True, text=True)
        return r.returncode == 0 and bool(r.stdout.strip())


def base_image(b: Buildah, suite: str) -> str:
    name = f"localhost/flowtap-test-base:{suite}"
    if b.has_image(name):
        return name
    tar = rootfs_tar(suite)
    ctx = WORK / "base-context"
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    os.link(tar, ctx / "rootfs.tar")
    (ctx / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n')
    b("bud", "--isolation", "chroot", "-t", name, "-f", ctx / "Containerfile", ctx)
    shutil.rmtree(ctx, ignore_errors=True)
    return name


@pytest.mark.timeout(1800)
def test_image_builds_and_runs_as_non_root(nginx, pki, tmp_path):
    for binary in ("flowtap", "flowtap-collector"):
        assert (REPO_ROOT / "target" / "release" / binary).is_file(), \
            f"target/release/{binary} missing: cargo build --release --workspace"
    assert Path(flowtap_bin()).resolve() == (REPO_ROOT / "target" / "release" / "flowtap").resolve(), \
        "the image takes the binaries from target/release"
    suite = codename()
    b = Buildah()
    base = base_image(b, suite)
    b("bud", "--isolation", "chroot", "--pull-never", "--layers=false",
      "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "BINARIES=local",
      "-f", REPO_ROOT / "deploy" / "Dockerfile", "-t", IMAGE, REPO_ROOT, timeout=1200)
    ctr = None
    try:
        config = json.loads(b("inspect", "--type", "image", IMAGE))["OCIv1"]["config"]
        assert config["User"] == "10001:10001", "numeric, for runAsNonRoot"
        assert config["Entrypoint"] == ["flowtap"] and config["Cmd"] == ["proxy"]
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["FLOWTAP_CA_DIR"] == "/var/lib/flowtap/ca"
        assert "8080/tcp" in config.get("ExposedPorts", {})

        ctr = b("from", "--pull-never", IMAGE)
        mnt = Path(b("mount", ctr))
        assert (mnt / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 10_000, \
            "ca-certificates installed by the Dockerfile"
        home = (mnt / "var/lib/flowtap").stat()
        assert (home.st_uid, home.st_gid, home.st_mode & 0o777) == (10001, 10001, 0o700)
        passwd = (mnt / "etc/passwd").read_text()
        assert re.search(r"^flowtap:x:10001:10001:", passwd, re.M), passwd
        for binary in ("flowtap", "flowtap-collector"):
            st = (mnt / "usr/local/bin" / binary).stat()
            assert st.st_uid == 0 and st.st_mode & 0o755 == 0o755, binary

        as_user = ["chroot", "--userspec=10001:10001", mnt, "env", "-i", "-C", config.get("WorkingDir") or "/",
                   *[f"{k}={v}" for k, v in env.items()]]
        version = run(as_user + ["flowtap", "--version"]).stdout
        assert version.startswith("flowtap "), version
        cversion = run(as_user + ["flowtap-collector", "--version"]).stdout
        assert cversion.startswith("flowtap-collector "), cversion
        uid = run(as_user + ["id", "-u"]).stdout.strip()
        assert uid == "10001"

        # The proxy, as the non-root user, with the image's environment: it creates its CA in
        # its home, answers /healthz and /ca.pem, and intercepts one HTTPS exchange.
        shutil.copy(pki.server_ca, mnt / "tmp/upstream-ca.pem")
        port = free_port()
        stdout = tmp_path / "stdout.jsonl"
        with open(stdout, "wb") as out, open(tmp_path / "stderr.log", "wb") as err:
            proc = subprocess.Popen([str(c) for c in as_user + [
                "RUST_LOG=info", "flowtap", "proxy", "--listen", f"127.0.0.1:{port}",
                "--upstream-ca", "/tmp/upstream-ca.pem"]], stdout=out, stderr=err)
        try:
            _wait_health(port, proc, tmp_path / "stderr.log")
            key = mnt / "var/lib/flowtap/ca/ca-key.pem"
            kst = key.stat()
            assert (kst.st_uid, kst.st_mode & 0o777) == (10001, 0o600)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ca.pem")
            ca_pem = conn.getresponse().read()
            assert ca_pem == (mnt / "var/lib/flowtap/ca/ca.pem").read_bytes()
            (tmp_path / "ca.pem").write_bytes(ca_pem)
            url = nginx.url("/small", tls=True)
            r = subprocess.run(["curl", "-sS", "--fail", "-x", f"http://127.0.0.1:{port}",
                                "--cacert", str(tmp_path / "ca.pem"), url],
                               capture_output=True, text=True, timeout=30, env=k8s.clean_env())
            assert r.returncode == 0, r.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()
        records = [json.loads(line) for line in stdout.read_text().splitlines() if line.strip()]
        (rec,) = [r for r in records if r.get("request", {}).get("url") == url]
        assert rec["tls"]["intercepted"] is True and rec["response"]["status"] == 200
    finally:
        if ctr:
            subprocess.run([str(c) for c in b.base + ["umount", ctr]], capture_output=True)
            subprocess.run([str(c) for c in b.base + ["rm", ctr]], capture_output=True)
        subprocess.run([str(c) for c in b.base + ["rmi", "-f", IMAGE]], capture_output=True)


def _wait_health(port: int, proc: subprocess.Popen, stderr: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flowtap exited:\n{stderr.read_text()}"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            if resp.status == 200 and resp.read().strip() == b"ok":
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no /healthz from the image's flowtap:\n{stderr.read_text()}")
