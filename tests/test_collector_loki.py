"""The collector's `loki:URL` sink against the Loki contract server (contract_servers/loki.py):
real proxies, real traffic, the push requests checked as Loki's documentation specifies them,
the lines read back with LogQL as a user would query them."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import requests

from contract_servers.fixtures import get_through, start_collector, wait_until  # noqa: F401
from contract_servers.loki import LokiContract

LABELS = {"job", "source", "server_host", "method", "status_class"}


@pytest.fixture
def loki_server():
    servers = []

    def factory(**kw) -> LokiContract:
        s = LokiContract(**kw).start()
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.stop()


def ns(start: str) -> int:
    dt = datetime.fromisoformat(start.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def logql(loki: LokiContract, query: str) -> list[dict]:
    r = requests.get(f"{loki.url}/loki/api/v1/query_range", params={"query": query, "limit": 1000},
                     timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["data"]["resultType"] == "streams"
    return [json.loads(line) for s in body["data"]["result"] for _, line in s["values"]]


def check_entries(loki: LokiContract, recs: list[dict]) -> None:
    """Every record is one entry: the record as the line, at its own start, with its labels."""
    by_id = {r["id"]: r for r in recs}
    entries = loki.entries()
    assert len(entries) == len(recs), f"{len(entries)} entries for {len(recs)} records"
    for labels, ts, line in entries:
        rec = json.loads(line)
        assert rec == by_id[rec["id"]], "the line is the record as written to the files"
        assert ts == ns(rec["start"]), "the entry's timestamp is the record's start"
        assert set(labels) == LABELS, labels
        assert labels["job"] == "flowtap"
        assert labels["source"] == rec["source"]
        assert labels["server_host"] == rec["server"]["host"]
        assert labels["method"] == rec["request"]["method"]
        assert labels["status_class"] == f"{rec['response']['status'] // 100}xx"


def traffic(proxy, nginx) -> list[int]:
    return get_through(proxy, [nginx.url("/small?l=1"), nginx.url("/status/500?l=2"),
                               nginx.url("/missing?l=3"), nginx.url("/status/500?l=4"),
                               nginx.url("/json?l=5")])


def test_loki_push_json_gzip_and_logql(start_proxy, start_collector, nginx, loki_server):
    loki = loki_server(tenant="team-a")
    collector = start_collector(sinks=["jsonl:{records}", f"loki:{loki.url}"],
                                args=["--loki-tenant", "team-a"])
    proxy = start_proxy("--name", "shop-proxy", more_outputs=[collector.grpc_url])
    assert traffic(proxy, nginx) == [200, 500, 404, 500, 200]
    recs = collector.wait_records(5)
    wait_until(lambda: len(loki.entries()) >= 5, 20, "5 entries in Loki")
    assert loki.violations == []
    check_entries(loki, recs)
    for push in loki.pushes:
        assert push["status"] == 204 and push["format"] == "json-gzip"
        assert push["headers"]["x-scope-orgid"] == "team-a"
        assert push["headers"]["content-type"] == "application/json"
        assert push["headers"]["content-encoding"] == "gzip"

    # The queries of the README, as a user would run them.
    failed = {r["id"] for r in recs if r["response"]["status"] >= 500}
    assert len(failed) == 2
    got = logql(loki, '{job="flowtap"} | json | response_status >= 500')
    assert {r["id"] for r in got} == failed
    got = logql(loki, '{job="flowtap", status_class="5xx"}')
    assert {r["id"] for r in got} == failed
    got = logql(loki, '{source="shop-proxy"} | json | response_status == 404')
    assert [r["request"]["url"] for r in got] == [nginx.url("/missing?l=3")]
    got = logql(loki, '{job="flowtap"} | json | request_url =~ ".*/json.*"')
    assert len(got) == 1 and got[0]["response"]["status"] == 200

    assert collector.metric("flowtap_collector_records_written_total", sink="loki") == 5
    assert collector.metric("flowtap_collector_records_dropped_total", sink="loki", reason="rejected") == 0


def test_loki_push_protobuf_snappy(start_proxy, start_collector, nginx, loki_server):
    loki = loki_server()
    collector = start_collector(sinks=["jsonl:{records}", f"loki:{loki.url}"],
                                args=["--loki-format", "protobuf"])
    proxy = start_proxy("--name", "pb-proxy", more_outputs=[collector.grpc_url])
    traffic(proxy, nginx)
    recs = collector.wait_records(5)
    wait_until(lambda: len(loki.entries()) >= 5, 20, "5 entries in Loki")
    assert loki.violations == []
    check_entries(loki, recs)
    assert {p["format"] for p in loki.pushes} == {"protobuf"}
    assert all(p["headers"]["content-type"] == "application/x-protobuf" for p in loki.pushes)
    assert all("x-scope-orgid" not in p["headers"] for p in loki.pushes)
    assert len(logql(loki, '{job="flowtap"} | json | response_status >= 500')) == 2


def test_loki_429_and_5xx_are_retried(start_proxy, start_collector, nginx, loki_server):
    loki = loki_server(script=[429, 500, 429])
    collector = start_collector(sinks=["jsonl:{records}", f"loki:{loki.url}"])
    proxy = start_proxy("--name", "retry-proxy", more_outputs=[collector.grpc_url])
    traffic(proxy, nginx)
    recs = collector.wait_records(5)
    wait_until(lambda: len(loki.entries()) >= 5, 30, "the entries to get through after the retries")
    assert loki.violations == []
    check_entries(loki, recs)  # each record exactly once
    statuses = [p["status"] for p in loki.pushes]
    assert statuses[:3] == [429, 500, 429] and set(statuses[3:]) == {204}, statuses
    assert collector.metric("flowtap_collector_sink_retries_total", sink="loki") >= 3
    assert collector.metric("flowtap_collector_records_written_total", sink="loki") == 5
    assert collector.metric("flowtap_collector_sink_up", sink="loki") == 1
    assert "sink asked for a retry" in collector.stderr_text()
    # The file sink never waited for Loki.
    assert collector.metric("flowtap_collector_records_written_total", sink="jsonl") == 5


def test_loki_refusal_is_counted_not_retried(start_proxy, start_collector, nginx, loki_server):
    loki = loki_server(tenant="team-a")  # multi-tenant: a push without X-Scope-OrgID is a 401
    collector = start_collector(sinks=["jsonl:{records}", f"loki:{loki.url}"])
    proxy = start_proxy("--name", "no-tenant", more_outputs=[collector.grpc_url])
    traffic(proxy, nginx)
    collector.wait_records(5)
    wait_until(lambda: collector.metric("flowtap_collector_records_dropped_total", sink="loki",
                                        reason="rejected") == 5, 20, "the refusal to be counted")
    assert {p["status"] for p in loki.pushes} == {401}
    assert loki.entries() == []
    assert "Loki refused the push" in collector.stderr_text()
    assert len(collector.records()) == 5, "the files keep every record"


def test_contract_server_answers_as_documented(loki_server):
    """The contract server itself: pushes the Loki API refuses are refused and recorded."""
    import gzip
    import time

    import cramjam

    loki = loki_server(tenant="t")
    now = str(time.time_ns())

    def push(body, ctype="application/json", tenant="t", encoding=None):
        headers = {"Content-Type": ctype}
        if tenant:
            headers["X-Scope-OrgID"] = tenant
        if encoding:
            headers["Content-Encoding"] = encoding
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(f"{loki.url}/loki/api/v1/push", data=data, headers=headers, timeout=10)

    good = {"streams": [{"stream": {"job": "x"}, "values": [[now, "line"]]}]}
    assert push(good).status_code == 204
    assert push(gzip.compress(json.dumps(good).encode()), encoding="gzip").status_code == 204
    assert loki.violations == []
    assert push(good, tenant=None).status_code == 401
    assert push(good, ctype="text/plain").status_code == 400
    assert push({"streams": [{"stream": {"job": "x"}, "values": [[int(now), "line"]]}]}).status_code == 400
    assert push({"streams": [{"stream": {"job": ""}, "values": [[now, "line"]]}]}).status_code == 400
    assert push({"streams": [{"stream": {"1job": "x"}, "values": [[now, "line"]]}]}).status_code == 400
    assert push({"streams": [{"stream": {"job": "x"}, "values": [["1", "ancient"]]}]}).status_code == 400
    assert push(b"not gzip", encoding="gzip").status_code == 400
    assert push(b"\x0a\x03abc", ctype="application/x-protobuf").status_code == 400
    raw = bytes(cramjam.snappy.compress_raw(b"\x0a\x03abc"))
    assert push(raw, ctype="application/x-protobuf").status_code == 400
    assert len(loki.violations) == 8, loki.violations
    # Identical timestamp and line in one stream are stored once, as Loki does.
    assert len(loki.entries()) == 1
    r = requests.get(f"{loki.url}/loki/api/v1/query_range", params={"query": "{}"}, timeout=10)
    assert r.status_code == 400
