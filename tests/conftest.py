"""Session fixtures (test PKI, nginx, Python upstream, WebSocket echo servers) and the per-test
`proxy` / `start_proxy` fixtures that run the real flowtap binary. See support/ for the parts."""

from __future__ import annotations

import os
import shutil

import pytest

from support.nginx import start_nginx
from support.pki import make_pki
from support.proxy import Proxy
from support.pyserver import PyServer
from support.wsserver import WsServer

# Clients in the tests must never pick up a proxy from the environment.
for _var in list(os.environ):
    if _var.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ws_proxy", "wss_proxy"):
        del os.environ[_var]


@pytest.fixture(scope="session", autouse=True)
def _tools():
    missing = [t for t in ("nginx", "curl", "openssl") if shutil.which(t) is None]
    assert not missing, f"missing tools {missing}: run the suite with `bash tests/run`"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def pyserver():
    srv = PyServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory, pki, pyserver):
    ng = start_nginx(tmp_path_factory.mktemp("nginx"), pki, pyserver.port)
    yield ng
    ng.stop()


@pytest.fixture(scope="session")
def ws_server():
    srv = WsServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def wss_server(pki):
    srv = WsServer(pki.server_cert, pki.server_key).start()
    yield srv
    srv.stop()


@pytest.fixture
def start_proxy(request, tmp_path, pki):
    """start_proxy(*args, **kw) -> a running Proxy. Defaults: records to tmp/records.jsonl and to
    stdout, a fresh CA dir, and the test server CA added with --upstream-ca. Each call gets its own
    work directory; every proxy is stopped (SIGTERM, then kill) at teardown."""
    started: list[Proxy] = []
    request.node._flowtap_proxies = started

    def factory(*args, name=None, upstream_ca=None, **kw) -> Proxy:
        workdir = tmp_path / (name or f"proxy{len(started)}")
        if upstream_ca is None:
            upstream_ca = [pki.server_ca]
        p = Proxy(workdir, args, upstream_ca=upstream_ca, **kw)
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
        elif p.returncode is None:
            problems.append(f"flowtap #{i} died during the test (exit {p.proc.returncode})")
        if "panicked at" in p.stderr_text():
            problems.append(f"flowtap #{i} panicked:\n{p.stderr_text()[-3000:]}")
    if problems:
        pytest.fail("\n".join(problems))


@pytest.fixture
def proxy(start_proxy):
    """A default flowtap proxy for one test."""
    return start_proxy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for i, p in enumerate(getattr(item, "_flowtap_proxies", [])):
            rep.sections.append((f"flowtap #{i} stderr (tail)", p.stderr_text()[-5000:]))


# --- an egress proxy for `--upstream-proxy` (support/tinyproxy.py) ---------------------------------
UPSTREAM_PROXY_USER = "corp-egress-user"
UPSTREAM_PROXY_PASSWORD = "s3cret-upstream-pw"


@pytest.fixture(scope="session")
def tinyproxy(tmp_path_factory):
    """tinyproxy on loopback without authentication."""
    from support.tinyproxy import start_tinyproxy
    tp = start_tinyproxy(tmp_path_factory.mktemp("tinyproxy"))
    yield tp
    tp.stop()


@pytest.fixture(scope="session")
def tinyproxy_auth(tmp_path_factory):
    """tinyproxy on loopback with BasicAuth UPSTREAM_PROXY_USER / UPSTREAM_PROXY_PASSWORD."""
    from support.tinyproxy import start_tinyproxy
    tp = start_tinyproxy(tmp_path_factory.mktemp("tinyproxy-auth"), UPSTREAM_PROXY_USER,
                         UPSTREAM_PROXY_PASSWORD)
    yield tp
    tp.stop()
