"""The collector's `otlp` sink: records that proxies streamed to the collector are forwarded as
OpenTelemetry spans to a real OTLP receiver (rotel, with the reader of test_otlp.py behind it),
and each span says what the proxy's own `--output otlp` would say about its record."""

from __future__ import annotations

import pytest

from contract_servers.fixtures import get_through, start_collector  # noqa: F401
from test_otlp import STATUS_ERROR, Reader, Rotel, check_span_matches_record


@pytest.fixture
def otlp_receiver(tmp_path):
    reader = Reader()
    (tmp_path / "rotel").mkdir()
    rotel = Rotel(tmp_path / "rotel", reader)
    yield rotel, reader
    rotel.stop()
    reader.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_records_forwarded_as_spans(start_proxy, start_collector, nginx, otlp_receiver, protocol):
    rotel, reader = otlp_receiver
    endpoint = rotel.grpc_url if protocol == "grpc" else rotel.http_url
    collector = start_collector(sinks=["jsonl:{records}", f"otlp:{endpoint}"],
                                args=["--otlp-protocol", protocol])
    proxy = start_proxy("--name", "span-proxy", more_outputs=[collector.grpc_url])
    assert get_through(proxy, [nginx.url("/small?o=1"), nginx.url("/status/500?o=2")]) == [200, 500]
    assert get_through(proxy, [nginx.url("/json?o=3", host="localhost", tls=True)],
                       verify=str(proxy.ca_path)) == [200]
    recs = collector.wait_records(3)
    assert len(recs) == 3
    spans = reader.for_records([r["id"] for r in recs])
    for rec in recs:
        check_span_matches_record(spans[rec["id"]], rec)
    failed = next(r for r in recs if r["response"]["status"] == 500)
    assert spans[failed["id"]]["status"]["code"] == STATUS_ERROR
    assert collector.metric("flowtap_collector_records_written_total", sink="otlp") == 3
    collector.stop()
    assert "OTLP export finished" in collector.stderr_text()
