"""flowtap-collector end to end: real proxies stream real traffic to a real collector over gRPC
(plain and TLS, with a bearer token), and the collector's files, stdout, /metrics and /healthz
say exactly what happened."""

from __future__ import annotations

import json
import subprocess

from contract_servers.collector import collector_bin
from contract_servers.fixtures import get_through, start_collector, wait_until  # noqa: F401
from support.proxy import clean_env, parse_lines, run_flowtap

TOKEN = "collector-token-for-tests"


def without_source(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "source"}


def test_two_proxies_one_collector(start_proxy, start_collector, nginx):
    collector = start_collector(env={"FLOWTAP_COLLECTOR_TOKEN": TOKEN})
    proxies = {
        name: start_proxy("--name", name, name=name, more_outputs=[collector.grpc_url],
                          env={"FLOWTAP_COLLECTOR_TOKEN": TOKEN})
        for name in ("alpha", "beta")
    }
    alpha, beta = proxies["alpha"], proxies["beta"]
    statuses = get_through(alpha, [nginx.url(f"/small?p=alpha&n={i}") for i in range(5)]
                           + [nginx.url("/status/500?p=alpha")])
    statuses += get_through(alpha, [nginx.url(f"/json?p=alpha&tls={i}", host="localhost", tls=True)
                                    for i in range(2)], verify=str(alpha.ca_path))
    assert statuses == [200] * 5 + [500] + [200] * 2
    statuses = get_through(beta, [nginx.url(f"/small?p=beta&n={i}") for i in range(4)]
                           + [nginx.url("/missing?p=beta")])
    assert statuses == [200] * 4 + [404]

    expected = {"alpha": 8, "beta": 5}
    recs = collector.wait_records(13)
    # Both proxies are done: nothing more may arrive, and nothing twice.
    for p in proxies.values():
        assert p.stop() == 0
    recs = collector.records()
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)) == 13, f"each record once: {len(ids)} records, {len(set(ids))} ids"
    for name, p in proxies.items():
        mine = [r for r in recs if r["source"] == name]
        assert len(mine) == expected[name]
        # The collector's record is the proxy's record, plus its name as `source`.
        local = {r["id"]: r for r in p.read_records()}
        assert {r["id"]: without_source(r) for r in mine} == local
        assert all(f"p={name}" in r["request"]["url"] for r in mine)
    assert sum(1 for r in recs if r.get("response", {}).get("status") == 500) == 1
    assert {r["tls"]["alpn"] for r in recs if "tls" in r} == {"http/1.1"}

    m = collector.metrics()
    for name, n in expected.items():
        assert m[("flowtap_collector_records_received_total", (("source", name),))] == n
        assert m[("flowtap_collector_records_duplicate_total", (("source", name),))] == 0
        assert m[("flowtap_collector_proxy_records_dropped_total", (("source", name),))] == 0
    assert m[("flowtap_collector_records_written_total", (("sink", "jsonl"),))] == 13
    assert m[("flowtap_collector_auth_failures_total", ())] == 0
    wait_until(lambda: collector.metric("flowtap_collector_streams_active") == 0, 10,
               "the proxies' streams to close")
    assert collector.get("/healthz") == (200, b"ok\n")
    assert collector.get("/nope")[0] == 404


def test_jq_and_stdout(start_proxy, start_collector, nginx):
    collector = start_collector(sinks=["jsonl:{records}", "stdout"])
    proxy = start_proxy("--name", "jq-proxy", more_outputs=[collector.grpc_url])
    get_through(proxy, [nginx.url("/small?jq=1"), nginx.url("/status/500?jq=2"),
                        nginx.url("/status/500?jq=3"), nginx.url("/json?jq=4")])
    recs = collector.wait_records(4)
    assert len(recs) == 4
    files = [str(f) for f in collector.files()]

    def jq(*args) -> str:
        p = subprocess.run(["jq", *args, *files], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout

    failed = jq("-r", "select(.response.status >= 500) | .id").split()
    assert sorted(failed) == sorted(r["id"] for r in recs if r["response"]["status"] >= 500)
    assert len(failed) == 2
    per_source = json.loads(jq("-s", "-c", "group_by(.source) | map({source: .[0].source, n: length})"))
    assert per_source == [{"source": "jq-proxy", "n": 4}]
    urls = jq("-r", '"\\(.request.method) \\(.request.url) \\(.response.status)"').splitlines()
    assert f"GET {nginx.url('/json?jq=4')} 200" in urls

    # stdout carries the same records as the files, and nothing else.
    collector.stop()
    assert parse_lines(collector.stdout_path.read_bytes(), "collector stdout") == recs


def test_token_is_checked(start_proxy, start_collector, nginx):
    collector = start_collector(args=["--token", TOKEN])
    wrong = start_proxy("--name", "wrong", "--collector-token", "not-the-token", name="wrong",
                        more_outputs=[collector.grpc_url])
    missing = start_proxy("--name", "missing", name="missing", more_outputs=[collector.grpc_url])
    for p in (wrong, missing):
        get_through(p, [nginx.url("/small?auth=1")])
        p.record()  # the proxy did record it
    wait_until(lambda: collector.metric("flowtap_collector_auth_failures_total") >= 2, 10,
               "the collector to refuse both proxies")
    assert collector.records() == []
    for p in (wrong, missing):
        wait_until(lambda: "Unauthenticated" in p.stderr_text(), 10, "the proxy to log the refusal")
        assert p.stop() == 0
        assert "records not delivered" in p.stderr_text()
        assert "not-the-token" not in p.stderr_text()
    right = start_proxy("--name", "right", name="right", more_outputs=[collector.grpc_url],
                        env={"FLOWTAP_COLLECTOR_TOKEN": TOKEN})
    get_through(right, [nginx.url("/small?auth=2")])
    recs = collector.wait_records(1)
    assert [r["source"] for r in recs] == ["right"]
    assert TOKEN not in collector.stderr_text() + right.stderr_text()


def test_grpcs_with_collector_ca(start_proxy, start_collector, nginx, pki):
    collector = start_collector(args=["--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                                      "--token", TOKEN])
    url = f"grpcs://127.0.0.1:{collector.port}"
    good = start_proxy("--name", "tls-good", "--collector-ca", pki.server_ca, "--collector-token",
                       TOKEN, name="good", more_outputs=[url])
    untrusting = start_proxy("--name", "tls-untrusting", "--collector-token", TOKEN,
                             name="untrusting", more_outputs=[url])
    get_through(good, [nginx.url("/small?tls=good")])
    get_through(untrusting, [nginx.url("/small?tls=untrusting")])
    recs = collector.wait_records(1)
    wait_until(lambda: "certificate" in untrusting.stderr_text().lower(), 10,
               "the proxy without --collector-ca to refuse the collector's certificate")
    assert [r["source"] for r in collector.records()] == ["tls-good"]
    assert recs[0]["request"]["url"].endswith("tls=good")
    # A plain-text client cannot talk to the TLS port.
    plain = start_proxy("--name", "plain", "--collector-token", TOKEN, name="plain",
                        more_outputs=[collector.grpc_url])
    get_through(plain, [nginx.url("/small?tls=plain")])
    wait_until(lambda: "collector stream failed" in plain.stderr_text(), 10, "the plain stream to fail")
    assert [r["source"] for r in collector.records()] == ["tls-good"]


def test_bad_flags_are_named(tmp_path):
    """Bad values exit 64 (EX_USAGE) and name the flag, on the proxy and on the collector."""
    cases = [
        (["--output", "grpc://127.0.0.1:1", "--buffer", "1KiB"], "--buffer"),
        (["--output", "grpc://127.0.0.1:1", "--buffer", "lots"], "--buffer"),
        (["--output", "grpc://127.0.0.1:1", "--collector-ca", str(tmp_path / "ca.pem")], "--collector-ca"),
        (["--output", "grpcs://127.0.0.1:1", "--collector-ca", str(tmp_path / "missing.pem")], "--collector-ca"),
        (["--output", "grpc://127.0.0.1:1", "--spool", "/proc/nope"], "--spool"),
    ]
    for args, flag in cases:
        p = run_flowtap("proxy", "--listen", "127.0.0.1:0", "--ca-dir", tmp_path / "ca", *args)
        err = p.stderr.decode()
        assert p.returncode == 64, f"{args}: exit {p.returncode}: {err}"
        assert flag in err, f"{args}: the message does not name {flag}: {err}"
    for args, flag, code in [
        (["--sink", "kafka:x"], "--sink", 64),
        (["--sink", "loki:loki:3100"], "--sink", 64),
        (["--rotate-size", "10"], "--rotate-size", 64),
        (["--tls-cert", str(tmp_path / "c.pem")], "--tls-key", 64),
        (["--sink-queue", "abc"], "--sink-queue", 64),
        # A sink that cannot start with its settings is found once the runtime is up: still 64,
        # and named by the collector's own flag, not the proxy's.
        (["--sink", "otlp", "--otlp-compression", "br"], "--sink otlp: --otlp-compression", 64),
    ]:
        p = subprocess.run([collector_bin(), "--listen", "127.0.0.1:0", "--admin-listen",
                            "127.0.0.1:0", *args], capture_output=True, text=True, timeout=30,
                           env=clean_env(), cwd=tmp_path)
        assert p.returncode == code, f"{args}: exit {p.returncode}: {p.stderr}"
        assert flag in p.stderr, f"{args}: the message does not name {flag}: {p.stderr}"


def test_traffic_never_waits_for_the_collector(start_proxy, nginx):
    """A collector that accepts connections and never answers (a hung process, a black hole):
    the proxy's exchanges go on at full speed and its own file keeps every record."""
    import socket
    import threading

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    accepted = []
    stop = threading.Event()

    def accept_and_hold():
        hung.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(hung.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept_and_hold, daemon=True)
    t.start()
    try:
        proxy = start_proxy("--name", "patient", more_outputs=[f"grpc://127.0.0.1:{hung.getsockname()[1]}"])
        # A request that waited on the collector would wait forever: each one has 5 s.
        statuses = get_through(proxy, [nginx.url(f"/small?hung={i}") for i in range(200)], timeout=5)
        assert statuses == [200] * 200
        assert len(proxy.records(200)) == 200
        assert accepted, "the proxy did try the collector"
        assert proxy.stop() == 0
        assert "records not delivered" in proxy.stderr_text()
    finally:
        stop.set()
        t.join()
        for s in accepted:
            s.close()
        hung.close()
