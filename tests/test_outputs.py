"""Outputs and the proxy's own endpoints: JSON lines on stdout and in a file agree, the text
output, redaction in every output, /healthz, /metrics, /ca.pem."""

from __future__ import annotations

import json
import signal
import time

from cryptography import x509

from support.clients import curl
from support.nginx import SMALL_BODY

SECRET = "s3cr3t-t0ken-flowtap-XYZ"


def test_stdout_and_file_agree(proxy, nginx):
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/small")).check()
    curl("--proxy", proxy.url, "--cacert", proxy.ca_path, "-o", "/dev/null",
         nginx.url("/json", host="localhost", tls=True)).check()
    recs = proxy.records(2)
    assert proxy.stop() == 0
    from_file = proxy.read_records()
    from_stdout = proxy.stdout_records()     # fails if anything but JSON lines reached stdout
    assert from_file == from_stdout
    assert len(from_file) == 2 and [r["id"] for r in recs] == [r["id"] for r in from_file]


def test_text_output(start_proxy, nginx):
    proxy = start_proxy(more_outputs=["text:{dir}/flows.txt"])
    url = nginx.url("/small")
    curl("-x", proxy.url, "-o", "/dev/null", url).check()
    proxy.record()
    path = proxy.workdir / "flows.txt"
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if " << " in text:
            break
        time.sleep(0.05)
    lines = text.splitlines()
    assert any(f"GET {url}" in l for l in lines), text
    assert any(" << HTTP/1.1 200 OK" in l for l in lines), text
    assert not text.lstrip().startswith("{"), "text output is not JSON"


def _wait_text(path, needle, timeout=5.0):
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            break
        time.sleep(0.05)
    return text


def test_text_output_verbose_has_headers(start_proxy, nginx):
    quiet = start_proxy(name="quiet", more_outputs=["text:{dir}/flows.txt"])
    loud = start_proxy("-v", name="loud", more_outputs=["text:{dir}/flows.txt"])
    for p in (quiet, loud):
        curl("-x", p.url, "-o", "/dev/null", nginx.url("/small")).check()
        p.record()
    quiet_text = _wait_text(quiet.workdir / "flows.txt", " << ")
    loud_text = _wait_text(loud.workdir / "flows.txt", "content-type")
    header_lines = [l for l in loud_text.splitlines() if l[:1].isspace() and ": " in l]
    names = {l.strip().split(":", 1)[0].lower() for l in header_lines}
    assert {"user-agent", "host", "content-type", "content-length"} <= names, loud_text
    assert "user-agent" not in quiet_text.lower(), quiet_text


def test_authorization_is_redacted_everywhere(start_proxy, pyserver):
    proxy = start_proxy(more_outputs=["text:{dir}/flows.txt"])
    url = f"{pyserver.base}/echo"
    r = curl("-x", proxy.url, "-v", "-H", f"Authorization: Bearer {SECRET}", url).check()
    seen = dict(json.loads(r.out)["headers"])
    assert seen["authorization"] == f"Bearer {SECRET}", "traffic is never changed"
    rec = proxy.record()
    assert "request.headers.authorization" in rec.get("redacted", [])
    assert "authorization" in rec["request"]["headers"]
    proxy.stop()
    for name in ("records.jsonl", "stdout.jsonl", "flows.txt"):
        content = (proxy.workdir / name).read_text()
        assert content, f"{name} is empty"
        assert SECRET not in content, f"the secret leaked into {name}"
    assert SECRET not in proxy.stderr_text()


def test_proxy_endpoints(proxy, nginx):
    status, headers, body = proxy.get("/healthz")
    assert (status, body.strip()) == (200, b"ok")

    status, headers, body = proxy.get("/ca.pem")
    assert status == 200
    served = x509.load_pem_x509_certificate(body)
    assert served == x509.load_pem_x509_certificate(proxy.ca_path.read_bytes())

    m = proxy.metrics()
    for name in ("flowtap_records_written_total", "flowtap_records_dropped_total",
                 "flowtap_leaf_certificates_minted_total", "flowtap_connections_active"):
        assert name in m, f"{name} missing from /metrics: {sorted(m)}"
    before = m["flowtap_records_written_total"]
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/small")).check()
    proxy.record()
    time.sleep(0.2)
    after = proxy.metrics()
    # Records go to two outputs here; the counter counts records, not writes.
    assert after["flowtap_records_written_total"] == before + 1
    assert after["flowtap_records_dropped_total"] == 0
    # The endpoints themselves are not exchanges to record.
    assert len(proxy.records()) == 1


def test_connections_active_gauge(proxy, nginx):
    import socket
    socks = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(3)]
    try:
        deadline = time.monotonic() + 3
        while proxy.metrics()["flowtap_connections_active"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.metrics()["flowtap_connections_active"] >= 3
    finally:
        for s in socks:
            s.close()
    # Each /metrics call is a connection of its own (counted while it is served), and the
    # previous call's connection may still be closing: poll until the gauge settles.
    deadline = time.monotonic() + 3
    seen = proxy.metrics()["flowtap_connections_active"]
    while seen > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = proxy.metrics()["flowtap_connections_active"]
    assert seen <= 1, "closed connections still counted"


def test_sigusr1_reopens_output_files(start_proxy, nginx):
    """logrotate's default (`create`): the files are moved away, then the proxy gets SIGUSR1.
    Records of before the signal stay whole in the moved files; those after go to new files
    by the old names (JSON lines, text and HAR, a valid document on each side); stdout goes
    on; the proxy keeps serving."""
    proxy = start_proxy(more_outputs=["text:{dir}/flows.txt", "har:{dir}/flows.har"])
    d = proxy.workdir
    names = ("records.jsonl", "flows.txt", "flows.har")
    before, after = nginx.url("/small?rotation=before"), nginx.url("/json?rotation=after")
    curl("-x", proxy.url, "-o", "/dev/null", before).check()
    proxy.records(1)
    assert "rotation=before" in _wait_text(d / "flows.txt", "rotation=before")
    for n in names:
        (d / n).rename(d / f"{n}.1")
    proxy.proc.send_signal(signal.SIGUSR1)
    # The signal is handled on the runtime; the log line says it was.
    deadline = time.monotonic() + 5
    while "SIGUSR1" not in proxy.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "SIGUSR1" in proxy.stderr_text(), proxy.stderr_text()
    curl("-x", proxy.url, "-o", "/dev/null", after).check()
    new = proxy.records(1)
    assert [r["request"]["url"] for r in new] == [after]
    old = proxy.read_records(d / "records.jsonl.1")
    assert [r["request"]["url"] for r in old] == [before]
    assert "rotation=after" in _wait_text(d / "flows.txt", "rotation=after")
    assert "rotation=after" not in (d / "flows.txt.1").read_text()
    assert "rotation=before" not in (d / "flows.txt").read_text()
    assert proxy.stop() == 0
    hars = {n: json.loads((d / n).read_text()) for n in ("flows.har.1", "flows.har")}
    assert [e["request"]["url"] for e in hars["flows.har.1"]["log"]["entries"]] == [before]
    assert [e["request"]["url"] for e in hars["flows.har"]["log"]["entries"]] == [after]
    assert [r["request"]["url"] for r in proxy.stdout_records()] == [before, after]
