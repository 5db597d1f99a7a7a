"""Process lifecycle: graceful SIGTERM, the CA kept across restarts, one leaf minted under
concurrency, configuration through FLOWTAP_* variables, and bad flags refused up front."""

from __future__ import annotations

import hashlib
import http.client
import signal
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from support.clients import curl, leaf_via_proxy
from support.nginx import SMALL_BODY
from support.pki import issued_by, load_cert
from support.proxy import Proxy, clean_env, run_flowtap


def _accepts(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def test_sigterm_lets_inflight_exchange_finish(start_proxy, pyserver):
    proxy = start_proxy("--grace", "5")
    url = f"{pyserver.base}/slow?head=0&body=2&size=20000&tag=sigterm"
    client = subprocess.Popen(["curl", "-sS", "--max-time", "20", "-x", proxy.url, "-o", "/dev/null",
                               "-w", "%{http_code}|%{size_download}", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    pyserver.wait_for_path("/slow?head=0&body=2&size=20000&tag=sigterm")
    time.sleep(0.3)
    proxy.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proxy.running, "flowtap exited with an exchange in flight"
    assert not _accepts(proxy.port), "flowtap still accepts new connections after SIGTERM"
    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert out.decode() == "200|20000"
    rc = proxy.stop(timeout=10)
    assert rc == 0, f"exit code {rc} after SIGTERM"
    rec = proxy.record()
    assert rec["request"]["url"] == url
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == 20000
    assert "error" not in rec


def test_sigterm_idle_exits_zero_and_flushes(start_proxy, nginx):
    # A grace period far beyond the stop deadline: an idle proxy must not wait for it.
    proxy = start_proxy("--grace", "60")
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/small")).check()
    assert proxy.stop(timeout=10) == 0
    recs = proxy.read_records()
    assert len(recs) == 1 and recs[0]["response"]["status"] == 200
    assert [r["id"] for r in proxy.stdout_records()] == [recs[0]["id"]]


def test_sigterm_grace_expires(start_proxy, pyserver):
    proxy = start_proxy("--grace", "1")
    url = f"{pyserver.base}/slow?head=0&body=8&size=8000&tag=grace"
    client = subprocess.Popen(["curl", "-sS", "--max-time", "20", "-x", proxy.url, "-o", "/dev/null", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    pyserver.wait_for_path("/slow?head=0&body=8&size=8000&tag=grace")
    time.sleep(0.3)
    rc = proxy.stop(timeout=10)
    client.communicate(timeout=30)
    assert rc == 0
    assert client.returncode != 0, "the cut exchange cannot have completed"
    rec = proxy.record()
    assert rec["request"]["url"] == url
    assert "error" in rec, "an exchange cut at the end of the grace period is a failure"
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] < 8000, "the body was cut, not completed"


def test_sigterm_grace_expires_before_the_response(start_proxy, pyserver):
    """Cut while the server has not answered yet: the record says the proxy stopped, not that
    the client went away."""
    proxy = start_proxy("--grace", "1")
    url = f"{pyserver.base}/slow?head=8&tag=grace-head"
    client = subprocess.Popen(["curl", "-sS", "--max-time", "20", "-x", proxy.url, "-o", "/dev/null", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    pyserver.wait_for_path("/slow?head=8&tag=grace-head")
    rc = proxy.stop(timeout=10)
    client.communicate(timeout=30)
    assert rc == 0
    assert client.returncode != 0
    rec = proxy.record()
    assert rec["request"]["url"] == url
    assert "response" not in rec
    assert rec["error"]["kind"] == "proxy", rec["error"]
    assert "stopped before the response came" in rec["error"]["message"]


def test_ca_reused_across_restarts(start_proxy, nginx, tmp_path):
    ca_dir = tmp_path / "shared-ca"
    first = start_proxy(name="first", ca_dir=ca_dir)
    ca_pem = (ca_dir / "ca.pem").read_bytes()
    key_mode = stat.S_IMODE((ca_dir / "ca-key.pem").stat().st_mode)
    assert key_mode == 0o600, f"ca-key.pem mode {oct(key_mode)}"
    status, _, served = first.get("/ca.pem")
    assert status == 200 and load_cert_bytes(served) == load_cert_bytes(ca_pem)
    leaf1 = leaf_via_proxy(first.port, "localhost", nginx.tls_port, sni="localhost")
    assert first.stop() == 0

    second = start_proxy(name="second", ca_dir=ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == ca_pem, "ca.pem changed on restart"
    assert stat.S_IMODE((ca_dir / "ca-key.pem").stat().st_mode) == 0o600
    leaf2 = leaf_via_proxy(second.port, "localhost", nginx.tls_port, sni="localhost")
    ca = load_cert(ca_dir / "ca.pem")
    assert issued_by(leaf1, ca) and issued_by(leaf2, ca)
    r = curl("--proxy", second.url, "--cacert", ca_dir / "ca.pem", nginx.url("/small", host="localhost", tls=True))
    assert r.check().out == SMALL_BODY

    other = start_proxy(name="other")
    assert load_cert(other.ca_path) != ca, "a fresh --ca-dir gets its own CA"


def load_cert_bytes(pem: bytes):
    from cryptography import x509
    return x509.load_pem_x509_certificate(pem)


def test_concurrent_first_requests_mint_one_leaf(proxy, nginx):
    url = nginx.url("/small", host="localhost", tls=True)
    n = 20
    before = proxy.metrics()
    assert before.get("flowtap_leaf_certificates_minted_total", 0) == 0
    argv = ["curl", "-sS", "--max-time", "30", "--proxy", proxy.url, "--cacert", str(proxy.ca_path), url]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
             for _ in range(n)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out == SMALL_BODY
    recs = proxy.records(n)
    assert len(recs) == n
    assert len({r["id"] for r in recs}) == n
    assert len({r["connection_id"] for r in recs}) == n
    assert all(r["response"]["status"] == 200 for r in recs)
    m = proxy.metrics()
    assert m["flowtap_leaf_certificates_minted_total"] == 1
    assert m["flowtap_records_written_total"] >= n
    assert m["flowtap_records_dropped_total"] == 0


def test_many_concurrent_clients_python(proxy, nginx):
    """Threads with their own connections, mixed plain and intercepted: every exchange recorded."""
    import requests

    def one(i):
        s = requests.Session()
        s.trust_env = False
        s.proxies = proxy.requests_proxies
        s.verify = str(proxy.ca_path)
        url = nginx.url(f"/small?i={i}", host="localhost", tls=bool(i % 2))
        r = s.get(url, timeout=20)
        s.close()
        return url, r.status_code, r.content

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(24)))
    assert all(code == 200 and body == SMALL_BODY for _, code, body in results)
    recs = proxy.records(24)
    assert sorted(r["request"]["url"] for r in recs) == sorted(u for u, _, _ in results)


def test_configuration_from_environment(tmp_path, nginx, pki):
    p = Proxy(tmp_path / "envproxy", flags_via_env=True, upstream_ca=[pki.server_ca])
    p.start()
    try:
        assert (p.ca_dir / "ca.pem").is_file(), "FLOWTAP_CA_DIR was not used"
        curl("--proxy", p.url, "--cacert", p.ca_path, "-o", "/dev/null",
             nginx.url("/small", host="localhost", tls=True)).check()
        assert p.record()["response"]["status"] == 200
    finally:
        p.stop()


def test_capture_bodies_from_environment(start_proxy, nginx):
    proxy = start_proxy(env={"FLOWTAP_CAPTURE_BODIES": "text"})
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/json")).check()
    assert proxy.record()["response"]["body"]["encoding"] == "text"


def test_bad_flags_are_refused_by_name(tmp_path):
    """Every kind of bad value exits 64 (EX_USAGE) naming the flag: those the parser rejects,
    those the configuration check rejects, and those an output cannot start with."""
    cases = [
        (["--capture-bodies", "bogus"], "capture-bodies"),
        (["--grace", "abc"], "grace"),
        (["--ignore-hosts", "(unclosed"], "ignore-hosts"),
        (["--body-limit", "lots"], "body-limit"),
        (["--listen", "not-an-address"], "listen"),
        (["--upstream-timeout", "0"], "upstream-timeout"),
        (["--response-timeout", "0"], "response-timeout"),
        (["--max-streams", "0"], "max-streams"),
        (["--output", "otlp", "--otlp-compression", "br"], "otlp-compression"),
        (["--output", "grpc://127.0.0.1:9", "--buffer", "1KiB"], "buffer"),
        (["--output", f"jsonl:{tmp_path}/no/such/dir/x.jsonl"], "--output jsonl:"),
    ]
    for args, name in cases:
        listen = [] if "--listen" in args else ["--listen", "127.0.0.1:0"]
        r = run_flowtap("proxy", "--ca-dir", tmp_path / "ca", *listen, *args, timeout=10)
        assert r.returncode == 64, f"{args}: exit {r.returncode}: {r.stderr.decode()}"
        assert name in r.stderr.decode(), f"{args}: message does not name the flag: {r.stderr.decode()}"
        assert not r.stdout, "nothing but diagnostics on a failed start"


# --- glibc's rep movsb on AMD CPUs (flowtap::glibc) -----------------------------------------------
MOVSB = "glibc.cpu.x86_rep_movsb_threshold"
MOVSB_OFF = f"{MOVSB}=18446744073709551615"
LD_SO = "/lib64/ld-linux-x86-64.so.2"


def _cpu_vendor() -> str:
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def _environ(pid: int) -> dict[str, str]:
    raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def test_amd_cpus_run_with_rep_movsb_off(start_proxy, nginx):
    """On an AMD CPU the proxy executes itself once more with glibc's rep movsb turned off: the
    same process (the pid the test started) then carries the tunable, glibc accepts its value,
    and the proxy intercepts a 1 MiB download whole. On other CPUs nothing changes."""
    amd = _cpu_vendor() in ("AuthenticAMD", "HygonGenuine")
    p = start_proxy()
    env = _environ(p.pid)
    if amd:
        assert env.get("GLIBC_TUNABLES") == MOVSB_OFF, env.get("GLIBC_TUNABLES")
        assert env.get("FLOWTAP_GLIBC_TUNED") == "1"
        assert open(f"/proc/{p.pid}/cmdline", "rb").read().split(b"\0")[1] == b"proxy"
        # glibc's loader reads the value as the proxy's glibc does: within bounds, not ignored.
        listed = subprocess.run([LD_SO, "--list-tunables"], capture_output=True, text=True,
                                env={"GLIBC_TUNABLES": MOVSB_OFF}, check=True).stdout
        assert f"{MOVSB}: 0xffffffffffffffff" in listed, listed
    else:
        assert "GLIBC_TUNABLES" not in env and "FLOWTAP_GLIBC_TUNED" not in env, env
    size, digest = nginx.files["/big1m"]
    r = curl("-x", p.url, "--cacert", p.ca_path, nginx.url("/big1m", host="localhost", tls=True)).check()
    assert hashlib.sha256(r.out).hexdigest() == digest
    rec = p.record()
    assert rec["tls"]["intercepted"] is True and rec["response"]["body_size"] == size


def test_glibc_tunables_of_the_user_are_kept(start_proxy):
    """A GLIBC_TUNABLES that names the tunable is the user's choice (the way to opt out) and is
    left as it is; other tunables are kept, with rep movsb turned off after them on AMD."""
    amd = _cpu_vendor() in ("AuthenticAMD", "HygonGenuine")
    own = f"{MOVSB}=2112"
    p = start_proxy(name="own", env={"GLIBC_TUNABLES": own})
    env = _environ(p.pid)
    assert env["GLIBC_TUNABLES"] == own and "FLOWTAP_GLIBC_TUNED" not in env, env
    other = "glibc.malloc.arena_max=2"
    q = start_proxy(name="other", env={"GLIBC_TUNABLES": other})
    raw = open(f"/proc/{q.pid}/environ", "rb").read()
    if amd:
        # glibc 2.36 splits the value in place at each ':' as it parses it (the process itself
        # still reads the whole value), so /proc shows either form.
        joined = f"GLIBC_TUNABLES={other}:{MOVSB_OFF}\0".encode()
        split = f"GLIBC_TUNABLES={other}\0{MOVSB_OFF}\0".encode()
        assert joined in raw or split in raw, raw
    else:
        assert f"GLIBC_TUNABLES={other}\0".encode() in raw and b"FLOWTAP_GLIBC_TUNED" not in raw
