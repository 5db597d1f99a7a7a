"""The collector's `elasticsearch:URL` sink against the Elasticsearch contract server
(contract_servers/elasticsearch.py): real proxies, real traffic, bulk requests checked as the
bulk API documentation specifies them, ECS documents, the documented hard answers (429 for the
request, 429 for an item, a mapping conflict, a 409 for a document already written) and a query
on `http.response.status_code` as a user would run it."""

from __future__ import annotations

import json

import pytest
import requests

from contract_servers.elasticsearch import ElasticsearchContract
from contract_servers.fixtures import get_through, start_collector, wait_until  # noqa: F401

STREAM = "logs-flowtap-default"


@pytest.fixture
def es_server():
    servers = []

    def factory(**kw) -> ElasticsearchContract:
        s = ElasticsearchContract(**kw).start()
        servers.append(s)
        return s

    yield factory
    for s in servers:
        s.stop()


def search(es: ElasticsearchContract, query: dict, endpoint: str = "_search") -> dict:
    r = requests.post(f"{es.url}/{STREAM}/{endpoint}", json=query, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_bulk_into_a_data_stream_with_ecs_fields(start_proxy, start_collector, nginx, es_server):
    es = es_server()
    collector = start_collector(sinks=["jsonl:{records}", f"elasticsearch:{es.url}"])
    proxy = start_proxy("--name", "es-proxy", more_outputs=[collector.grpc_url])
    assert get_through(proxy, [nginx.url("/small?e=1"), nginx.url("/status/500?e=2"),
                               nginx.url("/missing?e=3")]) == [200, 500, 404]
    assert get_through(proxy, [nginx.url("/json?e=4", host="localhost", tls=True)],
                       verify=str(proxy.ca_path)) == [200]
    recs = collector.wait_records(4)
    wait_until(lambda: len(es.documents()) >= 4, 20, "4 documents in Elasticsearch")
    assert es.violations == []
    for bulk in es.bulks:
        assert bulk["content_type"] == "application/x-ndjson"
        assert {op for op, _ in bulk["ops"]} == {"create"}
        assert {meta["_index"] for _, meta in bulk["ops"]} == {STREAM}

    by_id = {r["id"]: r for r in recs}
    docs = dict(es.documents(STREAM))
    assert set(docs) == set(by_id), "each document's _id is its record's id"
    for doc_id, d in docs.items():
        rec = by_id[doc_id]
        assert d["flowtap"] == rec, "the whole record is kept under flowtap"
        assert d["@timestamp"] == rec["start"]
        assert d["ecs"]["version"]
        assert d["event"]["kind"] == "event" and d["event"]["id"] == rec["id"]
        assert d["event"]["duration"] == round(rec["duration_ms"] * 1_000_000)
        assert d["event"]["outcome"] == ("failure" if rec["response"]["status"] >= 500 else "success")
        assert d["http"]["request"]["method"] == "GET"
        assert d["http"]["response"]["status_code"] == rec["response"]["status"]
        assert d["http"]["version"] == "1.1"
        assert d["url"]["full"] == rec["request"]["url"]
        assert d["url"]["domain"] == rec["server"]["host"]
        assert d["url"]["port"] == rec["server"]["port"]
        assert d["url"]["query"] == rec["request"]["url"].split("?", 1)[1]
        assert d["source"]["ip"] == rec["client"]["ip"] and d["source"]["port"] == rec["client"]["port"]
        assert d["destination"]["port"] == rec["server"]["port"]
        assert d["user_agent"]["original"].startswith("python-requests/")
        assert d["observer"]["name"] == "es-proxy"
        assert d["data_stream"] == {"type": "logs", "dataset": "flowtap", "namespace": "default"}
        if "tls" in rec:
            assert d["tls"]["version"] == rec["tls"]["client_version"].removeprefix("TLSv")
            assert d["tls"]["client"]["server_name"] == "localhost"
            assert d["url"]["scheme"] == "https"

    # The query of the README.
    failed = {r["id"] for r in recs if r["response"]["status"] >= 500}
    hits = search(es, {"query": {"range": {"http.response.status_code": {"gte": 500}}}})
    assert hits["hits"]["total"]["value"] == 1
    assert {h["_id"] for h in hits["hits"]["hits"]} == failed
    count = search(es, {"query": {"bool": {"filter": [
        {"term": {"http.response.status_code": 404}}, {"term": {"observer.name": "es-proxy"}}]}}},
        "_count")
    assert count["count"] == 1
    assert collector.metric("flowtap_collector_records_written_total", sink="elasticsearch") == 4


def test_bulk_hard_answers(start_proxy, start_collector, nginx, es_server):
    # 1st bulk: 429 for the whole request; 2nd: the first item 429, the others processed;
    # 3rd: stored but answered 503, so the retry meets 409s. One header value conflicts with
    # the mapping a user set.
    es = es_server(script=["429", "item429", "store_then_503"])
    r = requests.put(f"{es.url}/{STREAM}/_mapping", timeout=10, json={"properties": {"flowtap": {
        "properties": {"request": {"properties": {"headers": {"properties": {
            "x-conflict": {"type": "long"}}}}}}}}})
    assert r.status_code == 200 and r.json() == {"acknowledged": True}
    collector = start_collector(sinks=["jsonl:{records}", f"elasticsearch:{es.url}"])
    proxy = start_proxy("--name", "hard", more_outputs=[collector.grpc_url])
    get_through(proxy, [nginx.url(f"/small?h={i}") for i in range(4)])
    get_through(proxy, [nginx.url("/small?h=conflict")], headers={"X-Conflict": "not-a-number"})
    recs = collector.wait_records(5)
    conflict = next(r for r in recs if r["request"]["url"].endswith("h=conflict"))

    wait_until(lambda: collector.metric("flowtap_collector_records_written_total",
                                        sink="elasticsearch") == 4
               and collector.metric("flowtap_collector_records_dropped_total",
                                    sink="elasticsearch", reason="rejected") == 1,
               30, "every record to be written or refused")
    assert es.violations == []
    docs = dict(es.documents(STREAM))
    assert set(docs) == {r["id"] for r in recs} - {conflict["id"]}
    # Every stored document was created once: later creates of the same _id met 409.
    created = [s for b in es.bulks for s in b.get("statuses", []) if s == 201]
    assert len(created) == 4
    steps = [(b["step"], b["status"]) for b in es.bulks]
    assert steps[:3] == [("429", 429), ("item429", 200), ("store_then_503", 503)], steps
    assert any(409 in b.get("statuses", []) for b in es.bulks[3:]), es.bulks
    assert collector.metric("flowtap_collector_records_already_present_total", sink="elasticsearch") >= 1
    assert collector.metric("flowtap_collector_sink_retries_total", sink="elasticsearch") >= 3
    # The mapping conflict is reported with the record's id and Elasticsearch's reason, and the
    # record is still in the files: nothing is discarded silently.
    log = collector.stderr_text()
    assert conflict["id"] in log
    assert "failed to parse field [flowtap.request.headers.x-conflict] of type [long]" in log
    assert len(collector.records()) == 5


def test_contract_server_answers_as_documented(es_server):
    """The contract server itself: a request the bulk API refuses is refused and recorded."""
    es = es_server()
    ok = '{"create":{"_index":"%s","_id":"a"}}\n{"@timestamp":"2026-01-01T00:00:00Z"}\n' % STREAM
    post = lambda body, ctype="application/x-ndjson": requests.post(  # noqa: E731
        f"{es.url}/_bulk", data=body, headers={"Content-Type": ctype}, timeout=10)
    r = post(ok)
    assert r.status_code == 200 and r.json()["items"][0]["create"]["status"] == 201
    r = post(ok)
    item = r.json()["items"][0]["create"]
    assert r.json()["errors"] is True and item["status"] == 409
    assert item["error"]["type"] == "version_conflict_engine_exception"
    assert es.violations == []
    assert post(ok.rstrip("\n")).status_code == 400
    assert post(ok, "text/plain").status_code == 400
    r = post('{"index":{"_index":"%s"}}\n{"@timestamp":"2026-01-01T00:00:00Z"}\n' % STREAM)
    assert r.json()["items"][0]["index"]["status"] == 400
    r = post('{"create":{"_index":"%s","_id":"b"}}\n{"no":"timestamp"}\n' % STREAM)
    assert r.json()["items"][0]["create"]["error"]["type"] == "document_parsing_exception"
    assert len(es.violations) == 4, es.violations
    assert json.loads(requests.get(f"{es.url}/{STREAM}/_count", timeout=10).text)["count"] == 1


def test_a_failing_sink_does_not_stall_the_others(start_proxy, start_collector, nginx, es_server):
    """Elasticsearch answers 429 to everything: its small queue fills and drops (counted), while
    the files get every record and the proxy's batches are acknowledged as usual."""
    es = es_server(script=["429"] * 10_000)
    collector = start_collector(sinks=["jsonl:{records}", f"elasticsearch:{es.url}"],
                                args=["--sink-queue", "3"])
    proxy = start_proxy("--name", "busy", more_outputs=[collector.grpc_url])
    for i in range(20):
        get_through(proxy, [nginx.url(f"/small?busy={i}")])
    assert len(collector.wait_records(20)) == 20
    wait_until(lambda: collector.metric("flowtap_collector_records_dropped_total",
                                        sink="elasticsearch", reason="queue_full") > 0, 10,
               "the Elasticsearch queue to overflow")
    wait_until(lambda: collector.metric("flowtap_collector_sink_retries_total",
                                        sink="elasticsearch") >= 2, 10, "Elasticsearch to be retried")
    assert collector.metric("flowtap_collector_records_written_total", sink="jsonl") == 20
    assert collector.metric("flowtap_collector_records_written_total", sink="elasticsearch") == 0
    assert collector.metric("flowtap_collector_sink_up", sink="elasticsearch") == 0
    assert collector.get("/healthz") == (200, b"ok\n"), "a network sink's outage is not the collector's"
    assert proxy.stop() == 0
    assert "all records delivered dropped=0" in proxy.stderr_text()
    assert es.documents() == []
