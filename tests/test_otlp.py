"""`--output otlp`: records exported as OpenTelemetry spans to a real OTLP receiver.

The receiver is rotel (`rotel-agent`, from PyPI): flowtap exports to its gRPC or HTTP/protobuf
endpoint on loopback, and rotel forwards what it received with its own OTLP/HTTP exporter to a
small reader here, which decodes the protobuf `ExportTraceServiceRequest`s (opentelemetry-proto).
Spans are matched to records by `flowtap.record.id`, then checked against the record: name,
kind, attributes, parent links, start and end times, events, status, resource."""

from __future__ import annotations

import gzip
import json
import select
import socket
import ssl
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.clients import curl
from support.net import dead_port, free_port, wait_listening
from contract_servers.fixtures import wait_until
from support.proxy import run_flowtap

SPAN_WAIT_S = 20.0
KIND_CLIENT = 3            # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_CLIENT
STATUS_UNSET, STATUS_ERROR = 0, 2
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- the reader behind rotel -------------------------------------------------------------------

def _value(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class Reader:
    """An OTLP/HTTP endpoint that keeps every span it is sent, flattened to dicts."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
        self._msg = trace_service_pb2.ExportTraceServiceRequest
        self.spans: list[dict] = []
        self.requests: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        reader = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                reader._take(self.path, dict(self.headers), body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _take(self, path, headers, body):
        req = self._msg()
        req.ParseFromString(body)
        out = []
        for rs in req.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append({
                        "resource": resource,
                        "scope": {"name": ss.scope.name, "version": ss.scope.version},
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "trace_state": s.trace_state,
                        "flags": s.flags,
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": _attrs(s.attributes),
                        "events": [{"name": e.name, "time": e.time_unix_nano,
                                    "attributes": _attrs(e.attributes)} for e in s.events],
                        "status": {"code": s.status.code, "message": s.status.message},
                    })
        with self.cond:
            self.requests.append((path, headers))
            self.spans.extend(out)
            self.cond.notify_all()

    def for_records(self, ids, timeout=SPAN_WAIT_S) -> dict[str, dict]:
        """{record id: span} once a span for every id in `ids` has arrived."""
        want = set(ids)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = {s["attributes"].get("flowtap.record.id"): s for s in self.spans}
                if want <= found.keys():
                    return {i: found[i] for i in want}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no span within {timeout}s for records {sorted(want - found.keys())}; "
                        f"{len(self.spans)} spans received")
                self.cond.wait(left)

    def all_for(self, record_id: str) -> list[dict]:
        with self.cond:
            return [s for s in self.spans if s["attributes"].get("flowtap.record.id") == record_id]

    def stop(self):
        self.httpd.shutdown()


class Rotel:
    """rotel-agent receiving OTLP on loopback (gRPC and HTTP) and exporting to a Reader."""

    def __init__(self, workdir: Path, reader: Reader):
        import rotel
        self.binary = Path(rotel.__file__).parent / "rotel-agent"
        assert self.binary.is_file(), f"rotel-agent missing at {self.binary}: pip install rotel"
        self.grpc_port, self.http_port = free_port(), free_port()
        self.workdir = workdir
        self.log = workdir / "rotel.log"
        cmd = [str(self.binary), "start",
               "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
               "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
               "--exporter", "otlp",
               "--otlp-exporter-protocol", "http",
               "--otlp-exporter-endpoint", f"http://127.0.0.1:{reader.port}",
               "--otlp-exporter-compression", "none",
               "--batch-timeout", "100ms",
               "--pid-file", str(workdir / "rotel.pid"),
               "--log-file", str(workdir / "rotel-agent.log")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT)
        try:
            wait_listening("127.0.0.1", self.grpc_port, timeout=15)
            wait_listening("127.0.0.1", self.http_port, timeout=15)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"rotel did not start: {self.log.read_text(errors='replace')[-3000:]}")

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def reader():
    r = Reader()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def rotel(tmp_path_factory, reader):
    agent = Rotel(tmp_path_factory.mktemp("rotel"), reader)
    yield agent
    agent.stop()


# --- helpers ---------------------------------------------------------------------------------------

def unix_ns(rfc3339: str) -> int:
    """`2024-08-12T09:23:28.535123Z` -> nanoseconds since the epoch (exact: µs precision)."""
    dt = datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return int(dt.replace(microsecond=0).timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def protocol_version(http_version: str) -> str:
    return {"HTTP/1.0": "1.0", "HTTP/1.1": "1.1", "HTTP/2.0": "2"}[http_version]


def check_span_matches_record(span: dict, rec: dict) -> None:
    """What every span must say about its record."""
    req, resp = rec["request"], rec.get("response")
    a = span["attributes"]
    assert span["kind"] == KIND_CLIENT
    assert span["name"] == req["method"]
    assert span["scope"]["name"] == "flowtap"
    assert a["http.request.method"] == req["method"]
    assert a["url.full"] == req["url"]
    assert a["server.address"] == rec["server"]["host"]
    assert a["server.port"] == rec["server"]["port"]
    assert a["client.address"] == rec["client"]["ip"]
    assert a["http.request.body.size"] == req["body_size"]
    assert a["flowtap.connection.id"] == rec["connection_id"]
    if "user-agent" in req["headers"]:
        assert a["user_agent.original"] == req["headers"]["user-agent"]
    if resp:
        assert a["http.response.status_code"] == resp["status"]
        assert a["http.response.body.size"] == resp["body_size"]
        assert a["network.protocol.version"] == protocol_version(resp["http_version"])
    else:
        assert "http.response.status_code" not in a
    # Times come from the record: start exactly, end = start + duration (to the microsecond).
    start = unix_ns(rec["start"])
    assert span["start"] == start, (span["start"], rec["start"])
    assert abs((span["end"] - span["start"]) - rec["duration_ms"] * 1e6) <= 1500, \
        (span["end"] - span["start"], rec["duration_ms"])
    for e in span["events"]:
        assert span["start"] <= e["time"] <= span["end"], e
    # Header capture is off by default.
    assert not [k for k in a if k.startswith(("http.request.header.", "http.response.header."))], a


def get_with_headers(proxy, url, *headers, cacert=None, extra=()):
    args = ["-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}"]
    if cacert:
        args += ["--cacert", str(cacert)]
    for h in headers:
        args += ["-H", h]
    return curl(*args, *extra, url).check()


# --- tests -------------------------------------------------------------------------------------

def test_spans_over_grpc(start_proxy, nginx, rotel, reader):
    """gRPC export: conventional attributes, times, parent links, status, default resource."""
    proxy = start_proxy("--otlp-protocol", "grpc", "--otlp-compression", "gzip",
                        more_outputs=[f"otlp:{rotel.grpc_url}"])
    parented = nginx.url(f"/small?t={uuid.uuid4().hex}")
    get_with_headers(proxy, parented, f"traceparent: {TRACEPARENT}", "tracestate: congo=t61rcWkgMzE",
                     "User-Agent: flowtap-test/1")
    root = nginx.url("/json", host="localhost", tls=True)
    get_with_headers(proxy, root, cacert=proxy.ca_path)                       # HTTP/2 via CONNECT
    failing = nginx.url("/status/500")
    get_with_headers(proxy, failing)
    recs = proxy.records(3)
    by_url = {r["request"]["url"]: r for r in recs}
    spans = reader.for_records([r["id"] for r in recs])

    for rec in recs:
        check_span_matches_record(spans[rec["id"]], rec)

    child = spans[by_url[parented]["id"]]
    assert child["trace_id"] == TRACEPARENT.split("-")[1], "joins the caller's trace"
    assert child["parent_span_id"] == TRACEPARENT.split("-")[2], "as a child of the caller's span"
    assert child["trace_state"] == "congo=t61rcWkgMzE"
    assert child["attributes"]["user_agent.original"] == "flowtap-test/1"
    assert child["status"]["code"] == STATUS_UNSET and "error.type" not in child["attributes"]
    assert child["attributes"]["network.protocol.version"] == "1.1"

    h2 = by_url[root]
    own = spans[h2["id"]]
    assert own["trace_id"] == h2["id"].replace("-", ""), "a trace of its own, named by the record id"
    assert own["parent_span_id"] == ""
    assert own["span_id"] == h2["id"].replace("-", "")[16:]
    assert own["attributes"]["network.protocol.version"] == "2"
    assert own["attributes"]["url.scheme"] == "https"
    assert own["attributes"]["tls.protocol.version"] in ("1.2", "1.3")
    names = [e["name"] for e in own["events"]]
    assert "first byte" in names and "request sent" in names, names
    first_byte = next(e for e in own["events"] if e["name"] == "first byte")
    assert abs(own["end"] - first_byte["time"] - h2["timings"]["receive_ms"] * 1e6) <= 1500

    err = spans[by_url[failing]["id"]]
    assert err["status"]["code"] == STATUS_ERROR
    assert err["attributes"]["error.type"] == "500"

    res = child["resource"]
    assert res["service.name"] == "flowtap"
    assert res.get("service.instance.id")
    assert not [k for k in res if k.startswith("k8s.")], res


def test_spans_over_http_protobuf_configured_by_otel_variables(start_proxy, nginx, pyserver, rotel,
                                                               reader):
    """HTTP/protobuf export, configured only by the standard variables; resource attributes
    from OTEL_* and the downward API; header capture when asked; a transport failure."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": rotel.http_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-scope-orgid=tenant-1",
        "OTEL_SERVICE_NAME": "checkout",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=e2e%2Ctest,team=payments",
        "POD_NAME": "checkout-7d9f-abcde", "POD_NAMESPACE": "shop", "NODE_NAME": "node-a",
    }
    proxy = start_proxy("--otlp-headers", "content-type,x-request-id,authorization",
                        more_outputs=["otlp"], env=env)
    url = f"{pyserver.base}/echo?q={uuid.uuid4().hex}"
    get_with_headers(proxy, url, "X-Request-Id: r-42", "Authorization: Bearer s3cr3t-t0ken-otlp",
                     "X-Not-Captured: 1")
    refused = f"http://127.0.0.1:{dead_port()}/nothing-here"
    curl("-x", proxy.url, "-o", "/dev/null", refused)
    recs = proxy.records(2)
    spans = reader.for_records([r["id"] for r in recs])
    by_url = {r["request"]["url"]: r for r in recs}

    ok = spans[by_url[url]["id"]]
    a = ok["attributes"]
    assert a["http.request.header.x-request-id"] == ["r-42"]
    assert a["http.response.header.content-type"] == ["application/json"]
    # Captured headers are redacted exactly as in the record.
    assert a["http.request.header.authorization"] == [by_url[url]["request"]["headers"]["authorization"]]
    assert "s3cr3t-t0ken-otlp" not in json.dumps(spans)
    assert "http.request.header.x-not-captured" not in a
    assert "http.request.header.user-agent" not in a

    res = ok["resource"]
    assert res["service.name"] == "checkout"
    assert res["deployment.environment.name"] == "e2e,test"
    assert res["team"] == "payments"
    assert res["k8s.pod.name"] == "checkout-7d9f-abcde"
    assert res["k8s.namespace.name"] == "shop"
    assert res["k8s.node.name"] == "node-a"
    assert res["service.instance.id"] == "shop.checkout-7d9f-abcde"

    rec = by_url[refused]
    bad = spans[rec["id"]]
    assert rec["error"]["kind"] == "upstream_connect"
    assert bad["status"]["code"] == STATUS_ERROR
    assert bad["status"]["message"] == rec["error"]["message"]
    assert bad["attributes"]["error.type"] == "upstream_connect"
    assert "http.response.status_code" not in bad["attributes"]
    assert bad["end"] - bad["start"] == pytest.approx(rec["duration_ms"] * 1e6, abs=1500)


@pytest.fixture(scope="module")
def grpc_server(pki):
    from support.grpcserver import GrpcServer
    srv = GrpcServer(pki).start()
    yield srv
    srv.stop()


def test_grpc_calls_become_rpc_spans(start_proxy, nginx, grpc_server, rotel, reader):
    """A gRPC call's span follows the RPC conventions: named by its method, with the status
    code its client got (HTTP says 200 whatever happened), and Error for every code but OK.
    Each span is checked against what the real grpcio client saw."""
    import grpc
    from support.grpcserver import SERVICE, channel, method

    proxy = start_proxy(more_outputs=[f"otlp:{rotel.http_url}", "text:{dir}/flows.txt"])
    ca = proxy.ca_path.read_bytes()
    tls = channel(f"localhost:{grpc_server.tls_port}", proxy=proxy.url, ca=ca)
    plain = channel(f"127.0.0.1:{grpc_server.plain_port}", proxy=proxy.url)
    # nginx speaks HTTP/2 but not gRPC: a 404 the client turns into UNIMPLEMENTED.
    no_grpc = channel(f"localhost:{nginx.tls_port}", proxy=proxy.url, ca=ca)

    def call(ch, name, payload):
        try:
            ch.unary_unary(method(name))(payload, timeout=10)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details()

    seen = [call(tls, "Unary", b"fine"),           # OK, status in the trailers
            call(tls, "Unary", b"fail"),           # NOT_FOUND, a trailers-only response
            call(plain, "Nope", b"x"),             # UNIMPLEMENTED from the server, over h2c
            call(no_grpc, "Unary", b"x")]          # UNIMPLEMENTED derived from HTTP 404
    assert [code for code, _ in seen] == ["OK", "NOT_FOUND", "UNIMPLEMENTED", "UNIMPLEMENTED"], seen
    assert seen[1][1] == "no such thing: fail"

    recs = proxy.records(4)
    assert [r["request"]["url"].rsplit("/", 1)[1] for r in recs] == ["Unary", "Unary", "Nope", "Unary"]
    assert [r["response"]["status"] for r in recs] == [200, 200, 200, 404]
    spans = reader.for_records([r["id"] for r in recs])
    for rec, (code, details) in zip(recs, seen):
        span, a = spans[rec["id"]], spans[rec["id"]]["attributes"]
        full = rec["request"]["url"].split("/", 3)[3]
        assert span["name"] == full == a["rpc.method"], (span["name"], full)
        assert a["rpc.system.name"] == "grpc"
        assert a["rpc.response.status_code"] == code, (a, code)
        assert a["http.request.method"] == "POST"
        assert a["http.response.status_code"] == rec["response"]["status"]
        assert a["url.full"] == rec["request"]["url"]
        if code == "OK":
            assert span["status"]["code"] == STATUS_UNSET and "error.type" not in a, span
        else:
            assert span["status"]["code"] == STATUS_ERROR, span
            assert a["error.type"] == code
    assert spans[recs[1]["id"]]["status"]["message"] == "no such thing: fail"
    assert spans[recs[0]["id"]]["name"] == f"{SERVICE}/Unary"
    assert "rpc." not in proxy.records_path.read_text(), "the records themselves are unchanged"
    # The text view gives each call's status after its HTTP status, the derived one marked.
    answers = [line for line in (proxy.workdir / "flows.txt").read_text().splitlines()
               if line.startswith(" << ")]
    assert [a.split(" grpc ", 1)[1] for a in answers] == [
        "OK", "NOT_FOUND: no such thing: fail", "UNIMPLEMENTED: Method not found!",
        "UNIMPLEMENTED (from HTTP 404)"], answers


def test_traceparent_sampling_and_the_wire_is_untouched(start_proxy, pyserver, rotel, reader):
    """An unsampled caller gets no span (parent-based sampling); an invalid traceparent is
    ignored (own trace); and the upstream sees exactly the headers the client sent."""
    proxy = start_proxy("--otlp-protocol", "grpc", more_outputs=[f"otlp:{rotel.grpc_url}"])
    unsampled_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    r = curl("-x", proxy.url, "-H", f"traceparent: {unsampled_tp}", f"{pyserver.base}/echo?u=1").check()
    seen = dict(json.loads(r.out)["headers"])
    assert seen["traceparent"] == unsampled_tp, "the proxy never changes headers"
    assert "tracestate" not in seen and "baggage" not in seen
    invalid_tp = "00-00000000000000000000000000000000-b7ad6b7169203331-01"
    r = curl("-x", proxy.url, "-H", f"traceparent: {invalid_tp}", f"{pyserver.base}/echo?u=2").check()
    assert dict(json.loads(r.out)["headers"])["traceparent"] == invalid_tp
    recs = proxy.records(2)
    by_q = {r["request"]["url"].rsplit("=", 1)[1]: r for r in recs}
    spans = reader.for_records([by_q["2"]["id"]])
    own = spans[by_q["2"]["id"]]
    assert own["trace_id"] == by_q["2"]["id"].replace("-", "") and own["parent_span_id"] == ""
    time.sleep(1.0)   # the later span has arrived; the unsampled one would have come with it
    assert reader.all_for(by_q["1"]["id"]) == []
    proxy.stop()
    assert "not_sampled=1" in proxy.stderr_text(), proxy.stderr_text()[-2000:]


def test_export_headers_compression_and_path_reach_the_endpoint(start_proxy, nginx):
    """Straight to an OTLP/HTTP endpoint (the reader itself): the request goes to /v1/traces,
    gzip-compressed when asked, with the flag's and the variable's headers."""
    direct = Reader()
    try:
        proxy = start_proxy("--otlp-export-header", "X-Scope-OrgID=tenant-7",
                            "--otlp-compression", "gzip",
                            more_outputs=[f"otlp:http://127.0.0.1:{direct.port}"],
                            env={"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0k3n"})
        get_with_headers(proxy, nginx.url("/small?direct=1"))
        rec = proxy.record()
        check_span_matches_record(direct.for_records([rec["id"]])[rec["id"]], rec)
        path, headers = direct.requests[0]
        headers = {k.lower(): v for k, v in headers.items()}
        assert path == "/v1/traces"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["content-encoding"] == "gzip"
        assert headers["x-scope-orgid"] == "tenant-7"
        assert headers["authorization"] == "Bearer t0k3n"
    finally:
        direct.stop()


class Blackhole:
    """Accepts TCP connections and never answers: an exporter talking to it waits until its
    own timeout."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                return

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_slow_or_unreachable_endpoint_drops_spans_not_traffic(start_proxy, nginx):
    """An endpoint that never answers, and one that refuses connections: traffic goes on at
    full speed, spans are dropped and counted, and the count is logged."""
    hole = Blackhole()
    try:
        proxy = start_proxy("--otlp-protocol", "http/protobuf", "--otlp-queue", "8",
                            "--otlp-timeout", "30",
                            more_outputs=[f"otlp:http://127.0.0.1:{hole.port}",
                                          f"otlp:http://127.0.0.1:{dead_port()}"])
        url = nginx.url("/small")
        n = 120
        # No request may wait on the exporters, whose requests hang for 30 s here: each one has
        # 10 s, far more than it needs and far less than the exporter's timeout.
        for _ in range(n):
            r = curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{http_code}", url, timeout=10).check()
            assert r.text == "200", r.text
        recs = proxy.records(n)
        assert len(recs) == n, "every record still written to the other outputs"
        assert all(rec["response"]["status"] == 200 and "error" not in rec for rec in recs)
        # /metrics counts them per output while the proxy runs: the stuck exporter holds one
        # batch and its queue 8 spans, every other span was dropped when queued; nothing was
        # exported anywhere.
        hole_output = f"otlp:http://127.0.0.1:{hole.port}"
        wait_until(lambda: (proxy.metric("flowtap_otlp_spans_dropped_total", output=hole_output)
                            or 0) >= n - 9 - 8, 10, "spans dropped by the stuck exporter on /metrics")
        assert proxy.metric("flowtap_otlp_spans_dropped_total", output=hole_output) <= n
        assert proxy.metric("flowtap_otlp_spans_exported_total", output=hole_output) == 0
        # Stopping must not wait for the stuck exporter, whose request hangs for 30 s.
        assert proxy.stop(timeout=15) == 0
    finally:
        hole.close()
    err = proxy.stderr_text()
    lines = [l for l in err.splitlines() if "OTLP export finished with spans dropped" in l]
    assert len(lines) == 2, err[-4000:]
    dropped = {}
    for l in lines:
        fields = dict(f.split("=", 1) for f in l.split() if "=" in f)
        dropped[fields["output"]] = int(fields["dropped"])
    hole_out = next(k for k in dropped if str(hole.port) in k)
    dead_out = next(k for k in dropped if str(hole.port) not in k)
    # The stuck exporter holds one batch, the queue 8 more: the rest were dropped when queued.
    assert dropped[hole_out] == n, dropped
    assert dropped[dead_out] == n, dropped
    assert "OTLP spans dropped" in err, "periodic reports while running"


class TlsRelay:
    """TLS in front of one of rotel's plain ports (rotel's receivers have no TLS): the test
    server certificate for localhost, ALPN `h2` (gRPC) or `http/1.1`."""

    def __init__(self, pki, target_port: int, alpn: str):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.ctx.set_alpn_protocols([alpn])
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.failed_handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(10)
            tls = self.ctx.wrap_socket(conn, server_side=True)
            self.handshakes += 1
        except (OSError, ssl.SSLError):
            self.failed_handshakes += 1
            conn.close()
            return
        up = socket.create_connection(("127.0.0.1", self.target))
        try:
            while True:
                ready = [tls] if tls.pending() else select.select([tls, up], [], [], 30)[0]
                if not ready:
                    return
                for src, dst in ((tls, up), (up, tls)):
                    if src in ready:
                        data = src.recv(65536)
                        if not data:
                            return
                        dst.sendall(data)
        except (OSError, ssl.SSLError):
            return
        finally:
            up.close()
            tls.close()

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("protocol,configured_by", [
    ("grpc", "flags"), ("grpc", "variables"), ("http/protobuf", "flags"), ("http/protobuf", "variables"),
])
def test_tls_endpoints_trust_the_given_ca(start_proxy, nginx, pki, rotel, reader, protocol,
                                          configured_by):
    """An https:// endpoint is verified: with --otlp-ca (or OTEL_EXPORTER_OTLP_CERTIFICATE)
    spans arrive; without it, the export fails and the spans are counted as dropped."""
    grpc = protocol == "grpc"
    relay = TlsRelay(pki, rotel.grpc_port if grpc else rotel.http_port, "h2" if grpc else "http/1.1")
    endpoint = f"https://localhost:{relay.port}"
    try:
        if configured_by == "flags":
            proxy = start_proxy("--otlp-protocol", protocol, "--otlp-ca", pki.server_ca,
                                more_outputs=[f"otlp:{endpoint}"])
        else:
            proxy = start_proxy(more_outputs=["otlp"], env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.server_ca)})
        get_with_headers(proxy, nginx.url(f"/small?tls={uuid.uuid4().hex}"))
        rec = proxy.record()
        span = reader.for_records([rec["id"]])[rec["id"]]
        check_span_matches_record(span, rec)
        assert relay.handshakes >= 1

        untrusted = start_proxy("--otlp-protocol", protocol, "--otlp-timeout", "3",
                                more_outputs=[f"otlp:{endpoint}"])
        get_with_headers(untrusted, nginx.url(f"/small?untrusted={uuid.uuid4().hex}"))
        lost = untrusted.record()
        assert untrusted.stop(timeout=30) == 0
        assert relay.failed_handshakes >= 1, "the server certificate was not checked"
        assert reader.all_for(lost["id"]) == []
        err = untrusted.stderr_text()
        assert "OTLP export finished with spans dropped" in err and "dropped=1" in err, err[-3000:]
    finally:
        relay.close()


@pytest.mark.parametrize("args,env,needle", [
    (["--otlp-protocol", "http/json"], {}, "--otlp-protocol"),
    ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    (["--otlp-endpoint", "collector:4317"], {}, "--otlp-endpoint"),
    ([], {"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
    (["--otlp-export-header", "x-scope-orgid=a"], {"OTEL_EXPORTER_OTLP_HEADERS": "X-Scope-OrgID=b"},
     "OTEL_EXPORTER_OTLP_HEADERS"),
    (["--otlp-ca", "/nonexistent/ca.pem"], {}, "--otlp-ca"),
])
def test_bad_otlp_configuration_is_refused_before_binding(tmp_path, args, env, needle):
    port = free_port()
    r = run_flowtap("proxy", "--listen", f"127.0.0.1:{port}", "--ca-dir", tmp_path / "ca",
                    "--output", "otlp", *args, env=env, timeout=20)
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0, err
    assert needle in err, err
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing may listen after a bad config"
