"""An Elasticsearch contract server: the bulk API checked as its documentation specifies it, a
mapping that behaves like a data stream's, and a Query DSL subset to read documents back.

Bulk (`POST /_bulk` or `POST /<target>/_bulk`, docs: Elasticsearch API "Bulk index or delete
documents"):
- `Content-Type: application/x-ndjson` (the type the flowtap collector must send),
  `Content-Encoding: gzip` allowed; the body is action/metadata lines each followed by a source
  line (none for `delete`), and must end with a newline (400 otherwise);
- an action line is one of `index`, `create`, `update`, `delete` with only documented metadata
  (`_index`, `_id`, `routing`, `pipeline`, `require_alias`, `require_data_stream`,
  `if_seq_no`, `if_primary_term`, `dynamic_templates`, `op_type`); anything else is a 400 for
  the whole request;
- targets named `logs-*-*` are data streams (the built-in `logs` index template): only `create`
  is allowed (item 400 `illegal_argument_exception` otherwise) and every document needs a valid
  `@timestamp` (item 400 `document_parsing_exception`);
- `create` with an `_id` already stored: item 409 `version_conflict_engine_exception`;
- each document's fields are checked against the mapping: types set with
  `PUT /<index>/_mapping`, the ECS types of the fields the collector writes, and dynamic
  mapping by first use for the rest; a value the mapped type cannot take is an item 400
  `document_parsing_exception` ("failed to parse field [...] of type [...]").
Answers: 200 `{"took", "errors", "items": [{"<action>": {"_index": <backing index>, "_id",
"status", ("result", "_version", ...) | "error": {"type", "reason", ...}}}]}` in request order.
Scripted steps for the next bulk requests (`script=[...]`): `"429"` (whole request rejected
with `es_rejected_execution_exception`), `"item429"` (the first item rejected with 429, the
others processed), `"store_then_503"` (processed and stored, but answered 503 as if a proxy in
front had timed out, so the client retries into 409s).

Search (`GET|POST /<index>/_search`, `/<index>/_count`): `match_all`, `term`, `terms`, `range`
(`gt`, `gte`, `lt`, `lte`), `exists`, and `bool` (`must`, `filter`, `must_not`, `should`) over
dotted field paths; hits as `{"hits": {"total": {"value", "relation"}, "hits": [{"_index",
"_id", "_source"}]}}`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from datetime import datetime

from .base import ContractServer, Req, Resp

ACTIONS = {"index", "create", "update", "delete"}
META = {"_index", "_id", "routing", "pipeline", "require_alias", "require_data_stream",
        "if_seq_no", "if_primary_term", "dynamic_templates", "op_type"}
DATA_STREAM = re.compile(r"^logs-[^-]+(-[^-]+)*-[^-]+$")
# ECS types of the fields the collector writes (ecs@mappings in the built-in logs template).
ECS_TYPES = {
    "@timestamp": "date", "event.start": "date", "event.duration": "long",
    "event.kind": "keyword", "event.category": "keyword", "event.type": "keyword",
    "event.outcome": "keyword", "event.id": "keyword", "event.dataset": "keyword",
    "http.request.method": "keyword", "http.response.status_code": "long",
    "http.request.body.bytes": "long", "http.response.body.bytes": "long", "http.version": "keyword",
    "url.full": "wildcard", "url.original": "wildcard", "url.domain": "keyword", "url.port": "long",
    "url.path": "wildcard", "url.query": "keyword", "url.scheme": "keyword",
    "source.ip": "ip", "source.port": "long", "source.address": "keyword", "source.bytes": "long",
    "destination.ip": "ip", "destination.port": "long", "destination.domain": "keyword",
    "destination.address": "keyword", "destination.bytes": "long",
    "network.protocol": "keyword", "network.transport": "keyword", "network.type": "keyword",
    "network.bytes": "long",
    "tls.version": "keyword", "tls.version_protocol": "keyword", "tls.next_protocol": "keyword",
    "tls.established": "boolean", "tls.client.server_name": "keyword",
    "user_agent.original": "keyword", "error.type": "keyword", "error.message": "match_only_text",
    "observer.name": "keyword", "observer.type": "keyword", "message": "match_only_text",
    "ecs.version": "keyword", "data_stream.type": "constant_keyword",
    "data_stream.dataset": "constant_keyword", "data_stream.namespace": "constant_keyword",
}
REJECTED = {"type": "es_rejected_execution_exception",
            "reason": "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, "
                      "replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1024, "
                      "max_coordinating_and_primary_bytes=0]"}


class ElasticsearchContract(ContractServer):
    def __init__(self, script=()):
        super().__init__()
        self.script = list(script)
        self.docs: dict[str, dict[str, dict]] = {}        # data stream -> _id -> source
        self.mappings: dict[str, dict[str, str]] = {}     # index -> field path -> type
        self.bulks: list[dict] = []                       # one per bulk request
        self.seq = 0

    def handle(self, req: Req) -> Resp:
        parts = [p for p in req.path.split("/") if p]
        if parts and parts[-1] == "_bulk":
            return self._bulk(req, parts[0] if len(parts) == 2 else None)
        if len(parts) == 2 and parts[1] == "_mapping" and req.method in ("PUT", "POST"):
            return self._put_mapping(parts[0], req)
        if parts and parts[-1] in ("_search", "_count") and req.method in ("GET", "POST"):
            return self._search(parts[0] if len(parts) == 2 else "*", req, parts[-1] == "_count")
        if not parts and req.method == "GET":
            return _json(200, {"name": "contract", "version": {"number": "9.0.0"},
                               "tagline": "You Know, for Search"})
        return _json(404, _error("resource_not_found_exception", f"no handler for {req.path}", 404))

    # --- bulk -------------------------------------------------------------------------------
    def _bad(self, message: str, violation=True) -> Resp:
        if violation:
            self.violate(f"bulk: {message}")
        return _json(400, _error("illegal_argument_exception", message, 400))

    def _bulk(self, req: Req, path_target: str | None) -> Resp:
        if req.method != "POST":
            return self._bad(f"method {req.method}, expected POST")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/x-ndjson":
            return self._bad(f"Content-Type {ctype!r}, expected application/x-ndjson")
        if req.body is None:
            return self._bad("Content-Encoding: gzip but the body is not gzip")
        if not req.body.endswith(b"\n"):
            return self._bad("The bulk request must be terminated by a newline [\\n]")
        lines = req.body.decode().split("\n")[:-1]
        ops, i = [], 0
        while i < len(lines):
            try:
                action = json.loads(lines[i])
            except ValueError:
                return self._bad(f"Malformed action/metadata line [{i + 1}]")
            if not isinstance(action, dict) or len(action) != 1 or next(iter(action)) not in ACTIONS:
                return self._bad(f"Malformed action/metadata line [{i + 1}], expected one of "
                                 f"{sorted(ACTIONS)} but found {list(action)}")
            op, meta = next(iter(action.items()))
            unknown = set(meta) - META
            if unknown:
                return self._bad(f"Action/metadata line [{i + 1}] contains an unknown parameter "
                                 f"[{sorted(unknown)[0]}]")
            source = None
            if op != "delete":
                if i + 1 >= len(lines):
                    return self._bad(f"action [{op}] on line [{i + 1}] has no source line")
                try:
                    source = json.loads(lines[i + 1])
                except ValueError:
                    source = ValueError(lines[i + 1][:100])
                i += 1
            ops.append((op, meta, source))
            i += 1
        if not ops:
            return self._bad("request body is required")

        with self.lock:
            step = self.script.pop(0) if self.script else None
            record = {"ops": [(op, meta) for op, meta, _ in ops], "step": step,
                      "content_type": ctype, "headers": req.headers}
            self.bulks.append(record)
            if step == "429":
                record["status"] = 429
                return _json(429, {"error": {"root_cause": [REJECTED], **REJECTED}, "status": 429})
            items = []
            for n, (op, meta, source) in enumerate(ops):
                if step == "item429" and n == 0:
                    items.append({op: {"_index": meta.get("_index", path_target), "_id": meta.get("_id"),
                                       "status": 429, "error": REJECTED}})
                    continue
                items.append({op: self._item(op, meta, source, path_target)})
            errors = any("error" in next(iter(it.values())) for it in items)
            record["statuses"] = [next(iter(it.values()))["status"] for it in items]
            if step == "store_then_503":
                record["status"] = 503
                return _json(503, {"error": {"type": "unavailable_shards_exception",
                                             "reason": "[timeout] the proxy gave up"}, "status": 503})
            record["status"] = 200
            return _json(200, {"took": 3, "errors": errors, "items": items})

    def _item(self, op: str, meta: dict, source, path_target: str | None) -> dict:
        index = meta.get("_index", path_target)
        if not index:
            return _item_error(None, meta.get("_id"), 400, "action_request_validation_exception",
                               "Validation Failed: 1: index is missing;")
        is_ds = DATA_STREAM.match(index) is not None
        backing = f".ds-{index}-2026.01.01-000001" if is_ds else index
        doc_id = meta.get("_id")
        if is_ds and op != "create":
            self.violate(f"bulk: {op} into data stream {index} (data streams accept only create)")
            return _item_error(backing, doc_id, 400, "illegal_argument_exception",
                               f"only write ops with an op_type of create are allowed in data streams")
        if isinstance(source, ValueError):
            return _item_error(backing, doc_id, 400, "document_parsing_exception",
                               f"[1:1] failed to parse: {source}")
        if is_ds:
            ts = source.get("@timestamp") if isinstance(source, dict) else None
            if ts is None:
                self.violate(f"bulk: document {doc_id} has no @timestamp")
                return _item_error(backing, doc_id, 400, "document_parsing_exception",
                                   "[1:1] failed to parse: data stream timestamp field [@timestamp] is missing")
        stored = self.docs.setdefault(index, {})
        if doc_id is not None and doc_id in stored and op == "create":
            return _item_error(backing, doc_id, 409, "version_conflict_engine_exception",
                               f"[{doc_id}]: version conflict, document already exists (current version [1])")
        problem = self._check_mapping(index, source)
        if problem:
            field, ftype, value = problem
            return _item_error(backing, doc_id, 400, "document_parsing_exception",
                               f"[1:100] failed to parse field [{field}] of type [{ftype}] in document "
                               f"with id '{doc_id}'. Preview of field's value: '{value}'")
        self.seq += 1
        if doc_id is None:
            doc_id = f"auto-{self.seq}"
        stored[doc_id] = source
        return {"_index": backing, "_id": doc_id, "_version": 1, "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": self.seq,
                "_primary_term": 1, "status": 201}

    def _check_mapping(self, index: str, source: dict):
        mapping = self.mappings.setdefault(index, {})
        for path, value in _leaves(source):
            ftype = mapping.get(path) or ECS_TYPES.get(path)
            if ftype is None:
                mapping[path] = _dynamic_type(value)
                continue
            if not _fits(ftype, value):
                return path, ftype, str(value)[:50]
        return None

    def _put_mapping(self, index: str, req: Req) -> Resp:
        try:
            body = json.loads(req.body)
            props = body["properties"]
        except (ValueError, KeyError, TypeError):
            return _json(400, _error("mapper_parsing_exception", "expected {\"properties\": {...}}", 400))
        mapping = self.mappings.setdefault(index, {})

        def walk(prefix, props):
            for name, spec in props.items():
                path = f"{prefix}{name}"
                if "properties" in spec:
                    walk(f"{path}.", spec["properties"])
                else:
                    mapping[path] = spec.get("type", "object")

        walk("", props)
        return _json(200, {"acknowledged": True})

    # --- search -------------------------------------------------------------------------------
    def documents(self, pattern: str = "*") -> list[tuple[str, dict]]:
        with self.lock:
            return [(i, d) for idx, docs in self.docs.items() if fnmatch.fnmatch(idx, pattern)
                    for i, d in docs.items()]

    def _search(self, pattern: str, req: Req, count_only: bool) -> Resp:
        try:
            body = json.loads(req.body) if req.body else {}
            query = body.get("query", {"match_all": {}})
            hits = [(i, d) for i, d in self.documents(pattern) if _matches(query, d)]
        except (ValueError, KeyError, TypeError) as e:
            return _json(400, _error("parsing_exception", str(e), 400))
        if count_only:
            return _json(200, {"count": len(hits), "_shards": {"total": 1, "successful": 1,
                                                                 "skipped": 0, "failed": 0}})
        size = int(body.get("size", 10))
        return _json(200, {"took": 1, "timed_out": False,
                           "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                           "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": 1.0,
                                    "hits": [{"_index": pattern, "_id": i, "_score": 1.0, "_source": d}
                                             for i, d in hits[:size]]}})


def _json(status: int, body) -> Resp:
    return Resp(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _error(etype: str, reason: str, status: int) -> dict:
    return {"error": {"root_cause": [{"type": etype, "reason": reason}], "type": etype,
                      "reason": reason}, "status": status}


def _item_error(index, doc_id, status, etype, reason) -> dict:
    return {"_index": index, "_id": doc_id, "status": status,
            "error": {"type": etype, "reason": reason, "index": index, "shard": "0"}}


def _leaves(doc, prefix=""):
    if isinstance(doc, dict):
        for k, v in doc.items():
            if isinstance(v, dict):
                yield f"{prefix}{k}", v  # an object where a concrete value may be mapped
                yield from _leaves(v, f"{prefix}{k}.")
            elif isinstance(v, list):
                for x in v:
                    if isinstance(x, dict):
                        yield from _leaves(x, f"{prefix}{k}.")
                    else:
                        yield f"{prefix}{k}", x
            else:
                yield f"{prefix}{k}", v


def _dynamic_type(value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "float"
    return "keyword"


def _fits(ftype: str, value) -> bool:
    if isinstance(value, dict):
        return ftype in ("object", "flattened", "nested")
    if ftype == "object":
        return False
    if value is None:
        return True
    if ftype in ("long", "integer", "short", "byte"):
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return True
        try:
            float(value)
            return True
        except (TypeError, ValueError):
            return False
    if ftype in ("float", "double", "half_float", "scaled_float"):
        return not isinstance(value, bool) and isinstance(value, (int, float))
    if ftype == "boolean":
        return isinstance(value, bool) or value in ("true", "false")
    if ftype == "ip":
        try:
            ipaddress.ip_address(value)
            return True
        except ValueError:
            return False
    if ftype in ("date", "date_nanos"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        try:
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            return True
        except ValueError:
            return False
    return True  # keyword, wildcard, text, constant_keyword, match_only_text


def _get(doc: dict, path: str):
    """Values at a dotted path (following objects and lists), as ES sees them."""
    out = [doc]
    for part in path.split("."):
        nxt = []
        for v in out:
            if isinstance(v, dict) and part in v:
                x = v[part]
                nxt.extend(x if isinstance(x, list) else [x])
        out = nxt
    return out


def _matches(q: dict, doc: dict) -> bool:
    (kind, arg), = q.items()
    if kind == "match_all":
        return True
    if kind == "term":
        (field, want), = arg.items()
        want = want["value"] if isinstance(want, dict) else want
        return any(v == want for v in _get(doc, field))
    if kind == "terms":
        (field, wants), = arg.items()
        return any(v in wants for v in _get(doc, field))
    if kind == "exists":
        return bool(_get(doc, arg["field"]))
    if kind == "range":
        (field, bounds), = arg.items()
        ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
               "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        return any(all(ops[o](v, b) for o, b in bounds.items() if o in ops)
                   for v in _get(doc, field) if isinstance(v, (int, float)))
    if kind == "bool":
        must = arg.get("must", []) + arg.get("filter", [])
        must = must if isinstance(must, list) else [must]
        must_not = arg.get("must_not", [])
        must_not = must_not if isinstance(must_not, list) else [must_not]
        should = arg.get("should", [])
        should = should if isinstance(should, list) else [should]
        return (all(_matches(m, doc) for m in must)
                and not any(_matches(m, doc) for m in must_not)
                and (not should or any(_matches(m, doc) for m in should)))
    raise ValueError(f"query [{kind}] is not supported by the contract server")
