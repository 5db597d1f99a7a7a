"""A Loki contract server: the push API checked as Loki's HTTP API documentation specifies it,
and a LogQL subset to read back what was pushed.

Push (`POST /loki/api/v1/push`, docs: Loki HTTP API "Ingest logs"):
- `Content-Type: application/json`: body `{"streams": [{"stream": {label: value}, "values":
  [["<unix epoch in nanoseconds, as a string>", "<log line>"(, {structured metadata})]]}]}`,
  optionally `Content-Encoding: gzip`;
- `Content-Type: application/x-protobuf`: a snappy (block format) compressed
  `logproto.PushRequest` (streams = 1; StreamAdapter labels = 1 as a selector `{k="v"}`,
  entries = 2; EntryAdapter timestamp = 1 as google.protobuf.Timestamp, line = 2,
  structuredMetadata = 3);
- label names `[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed; at most 15 labels
  (`max_label_names_per_series`), names up to 1024 bytes, values up to 2048; lines up to 256 KiB
  (`max_line_size`); samples no older than a week (`reject_old_samples_max_age`) and no more
  than 10 minutes in the future (`creation_grace_period`);
- `X-Scope-OrgID` when the server is multi-tenant (`tenant=`): 401 `no org id` without it.
Answers: 204 with no body; the scripted failures answer as Loki does (429 with its rate-limit
message and `Retry-After`, 500); a request that breaks the contract gets 400 and is recorded in
`violations`. Entries with the same timestamp and line in one stream are stored once, as Loki
drops such duplicates.

Query (`GET /loki/api/v1/query_range?query=…`): a stream selector with `=`, `!=`, `=~`, `!~`
matchers, then any of `| json` (every JSON property becomes a label: nested keys joined with
`_`, characters invalid in a label name replaced by `_`, arrays skipped, a name that clashes
with a stream label gets `_extracted`) and label filters `| name OP value` (numbers compare as
numbers: `== != > >= < <=`; quoted strings with `= != =~ !~`). The answer has the documented
`{"status":"success","data":{"resultType":"streams","result":[...]}}` shape.
"""

from __future__ import annotations

import json
import re
import time

import cramjam

from .base import ContractServer, Req, Resp

PUSH_PATH = "/loki/api/v1/push"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_LABELS = 15
MAX_LABEL_NAME = 1024
MAX_LABEL_VALUE = 2048
MAX_LINE = 256 * 1024
OLDEST_NS = 7 * 24 * 3600 * 10**9
FUTURE_NS = 10 * 60 * 10**9
RATE_LIMITED = (b"Ingestion rate limit exceeded for user fake (limit: 4194304 bytes/sec) while "
                b"attempting to ingest '1' lines totaling '100' bytes, reduce log volume or contact "
                b"your Loki administrator to see if the limit can be increased")


class LokiContract(ContractServer):
    def __init__(self, tenant: str | None = None, script=()):
        """`script`: statuses (429 or 500) for the first pushes, in order; then 204s."""
        super().__init__()
        self.tenant = tenant
        self.script = list(script)
        self.pushes: list[dict] = []                     # one per push request
        self.streams: dict[tuple, list[tuple[int, str]]] = {}

    # --- push -------------------------------------------------------------------------------
    def handle(self, req: Req) -> Resp:
        if req.path == PUSH_PATH:
            return self._push(req)
        if req.path == "/loki/api/v1/query_range" and req.method == "GET":
            return self._query(req)
        return Resp(404, b"404 page not found\n")

    def _bad(self, req: Req, message: str) -> Resp:
        self.violate(f"push: {message}")
        with self.lock:
            self.pushes.append({"status": 400, "headers": req.headers, "error": message})
        return Resp(400, message.encode() + b"\n")

    def _push(self, req: Req) -> Resp:
        if req.method != "POST":
            return self._bad(req, f"method {req.method}, expected POST")
        if self.tenant is not None and req.headers.get("x-scope-orgid") != self.tenant:
            with self.lock:
                self.pushes.append({"status": 401, "headers": req.headers})
            return Resp(401, b"no org id\n")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        encoding = req.headers.get("content-encoding", "").lower()
        if ctype == "application/json":
            if encoding not in ("", "gzip"):
                return self._bad(req, f"Content-Encoding {encoding!r} with JSON")
            if req.body is None:
                return self._bad(req, "Content-Encoding: gzip but the body is not gzip")
            try:
                entries = self._parse_json(req.body)
            except ValueError as e:
                return self._bad(req, str(e))
            fmt = "json-gzip" if encoding == "gzip" else "json"
        elif ctype == "application/x-protobuf":
            if encoding:
                return self._bad(req, f"Content-Encoding {encoding!r} on a protobuf push "
                                      "(the body itself is snappy-compressed)")
            try:
                raw = bytes(cramjam.snappy.decompress_raw(req.raw))
            except Exception as e:  # noqa: BLE001 - any decoding failure is a contract breach
                return self._bad(req, f"protobuf body is not snappy block-compressed: {e}")
            try:
                entries = _parse_push_request(raw)
            except ValueError as e:
                return self._bad(req, f"protobuf body: {e}")
            fmt = "protobuf"
        else:
            return self._bad(req, f"Content-Type {ctype!r}, expected application/json or "
                                  "application/x-protobuf")
        try:
            for labels, ts, line in entries:
                _check_entry(labels, ts, line)
        except ValueError as e:
            return self._bad(req, str(e))

        with self.lock:
            status = self.script.pop(0) if self.script else 204
            self.pushes.append({"status": status, "headers": req.headers, "format": fmt,
                                "entries": len(entries)})
            if status == 204:
                for labels, ts, line in entries:
                    key = tuple(sorted(labels.items()))
                    stored = self.streams.setdefault(key, [])
                    if (ts, line) not in stored:
                        stored.append((ts, line))
        if status == 429:
            return Resp(429, RATE_LIMITED, {"Retry-After": "1"})
        if status == 204:
            return Resp(204)
        return Resp(status, b"internal server error\n")

    @staticmethod
    def _parse_json(body: bytes):
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise ValueError(f"body is not JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("streams"), list) or not doc["streams"]:
            raise ValueError('body must be {"streams": [...]} with at least one stream')
        out = []
        for s in doc["streams"]:
            if not isinstance(s, dict) or set(s) - {"stream", "values"}:
                raise ValueError(f"a stream has unexpected keys: {sorted(s) if isinstance(s, dict) else s!r}")
            labels = s.get("stream")
            if not isinstance(labels, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
                raise ValueError("stream labels must be an object of strings")
            values = s.get("values")
            if not isinstance(values, list) or not values:
                raise ValueError("values must be a non-empty list")
            for v in values:
                if not isinstance(v, list) or len(v) not in (2, 3):
                    raise ValueError(f"a value must be [timestamp, line(, metadata)]: {v!r:.200}")
                ts, line = v[0], v[1]
                if not isinstance(ts, str) or not ts.isdigit():
                    raise ValueError(f"timestamp must be a string of nanoseconds: {ts!r}")
                if not isinstance(line, str):
                    raise ValueError("the log line must be a string")
                if len(v) == 3 and not (isinstance(v[2], dict) and all(
                        isinstance(k, str) and isinstance(x, str) for k, x in v[2].items())):
                    raise ValueError("structured metadata must be an object of strings")
                out.append((labels, int(ts), line))
        return out

    # --- read back ----------------------------------------------------------------------------
    def entries(self) -> list[tuple[dict, int, str]]:
        with self.lock:
            return [(dict(k), ts, line) for k, vals in self.streams.items() for ts, line in vals]

    def _query(self, req: Req) -> Resp:
        try:
            result = self.logql(req.query.get("query", ""))
        except ValueError as e:
            return Resp(400, f"parse error : {e}\n".encode())
        body = {"status": "success", "data": {"resultType": "streams", "result": [
            {"stream": labels, "values": [[str(ts), line] for ts, line in vals]}
            for labels, vals in result]}}
        return Resp(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def logql(self, query: str):
        """Evaluates the LogQL subset described above; returns [(labels, [(ts, line)])]."""
        selector, stages = _parse_logql(query)
        grouped: dict[tuple, list] = {}
        for labels, ts, line in self.entries():
            if not all(_match(labels.get(n, ""), op, v) for n, op, v in selector):
                continue
            lbs = dict(labels)
            keep = True
            for stage in stages:
                if stage == ("json",):
                    lbs.update(_json_labels(line, lbs))
                    continue
                _, name, op, value = stage
                if name not in lbs:
                    keep = False
                    break
                if isinstance(value, float):
                    try:
                        got = float(lbs[name])
                    except ValueError:
                        lbs["__error__"] = "LabelFilterErr"
                        continue
                    keep = {"==": got == value, "!=": got != value, ">": got > value,
                            ">=": got >= value, "<": got < value, "<=": got <= value}[op]
                else:
                    keep = _match(lbs[name], op, value)
                if not keep:
                    break
            if keep:
                grouped.setdefault(tuple(sorted(lbs.items())), []).append((ts, line))
        return [(dict(k), sorted(v, reverse=True)) for k, v in grouped.items()]


def _check_entry(labels: dict, ts: int, line: str) -> None:
    if not labels:
        raise ValueError("error at least one label pair is required per stream")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"stream has {len(labels)} labels, more than {MAX_LABELS}")
    for k, v in labels.items():
        if not LABEL_NAME.match(k) or k.startswith("__"):
            raise ValueError(f"invalid label name {k!r}")
        if len(k) > MAX_LABEL_NAME or len(v) > MAX_LABEL_VALUE:
            raise ValueError(f"label {k!r} name or value too long")
        if v == "":
            raise ValueError(f"label {k!r} has an empty value")
    if len(line.encode()) > MAX_LINE:
        raise ValueError(f"line too long ({len(line.encode())} bytes, max {MAX_LINE})")
    now = time.time_ns()
    if ts < now - OLDEST_NS:
        raise ValueError(f"entry too old: timestamp {ts}")
    if ts > now + FUTURE_NS:
        raise ValueError(f"entry too far in the future: timestamp {ts}")


# --- protobuf (logproto.PushRequest), decoded by hand from the wire format -------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            val, i = buf[i:i + n], i + n
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, val


def _parse_push_request(buf: bytes):
    out = []
    for num, wire, stream in _fields(buf):
        if num != 1 or wire != 2:
            raise ValueError(f"PushRequest: unexpected field {num}")
        selector, entries = None, []
        for snum, swire, sval in _fields(stream):
            if snum == 1 and swire == 2:
                selector = sval.decode()
            elif snum == 2 and swire == 2:
                entries.append(sval)
            elif snum == 3:
                pass  # hash: set by Loki itself
            else:
                raise ValueError(f"StreamAdapter: unexpected field {snum}")
        if selector is None:
            raise ValueError("StreamAdapter without labels")
        labels = _parse_selector(selector)
        for e in entries:
            seconds = nanos = 0
            line = None
            for enum, ewire, eval_ in _fields(e):
                if enum == 1 and ewire == 2:
                    for tnum, _, tval in _fields(eval_):
                        if tnum == 1:
                            seconds = tval
                        elif tnum == 2:
                            nanos = tval
                elif enum == 2 and ewire == 2:
                    line = eval_.decode()
                elif enum == 3:
                    pass
                else:
                    raise ValueError(f"EntryAdapter: unexpected field {enum}")
            if line is None:
                raise ValueError("EntryAdapter without a line")
            out.append((labels, seconds * 10**9 + nanos, line))
    if not out:
        raise ValueError("no entries")
    return out


_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _parse_selector(s: str) -> dict:
    s = s.strip()
    if not (s.startswith("{") and s.endswith("}")):
        raise ValueError(f"labels {s!r} are not a {{…}} selector")
    inner, labels, pos = s[1:-1], {}, 0
    while pos < len(inner):
        m = _PAIR.match(inner, pos)
        if not m:
            raise ValueError(f"cannot parse labels {s!r}")
        labels[m.group(1)] = json.loads(f'"{m.group(2)}"')
        pos = m.end()
    return labels


# --- LogQL subset ----------------------------------------------------------------------------
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
_FILTER = re.compile(r'^([a-zA-Z_][a-zA-Z0-9_]*)\s*(==|!=|>=|<=|=~|!~|=|>|<)\s*(.+)$')


def _parse_logql(q: str):
    q = q.strip()
    if not q.startswith("{") or "}" not in q:
        raise ValueError("queries must start with a stream selector")
    end = q.index("}")
    body, rest = q[1:end], q[end + 1:]
    selector, pos = [], 0
    while pos < len(body):
        m = _MATCHER.match(body, pos)
        if not m:
            raise ValueError(f"bad matcher in {body!r}")
        selector.append((m.group(1), m.group(2), json.loads(f'"{m.group(3)}"')))
        pos = m.end()
    if not any(op in ("=", "=~") and v for _, op, v in selector):
        raise ValueError("queries require at least one regexp or equality matcher that does not "
                         "have an empty-compatible value")
    stages = []
    for part in [p.strip() for p in rest.split("|")][1:]:
        if part == "json":
            stages.append(("json",))
            continue
        m = _FILTER.match(part)
        if not m:
            raise ValueError(f"unsupported stage {part!r}")
        name, op, value = m.groups()
        value = value.strip()
        if value.startswith('"'):
            stages.append(("filter", name, op, json.loads(value)))
        else:
            stages.append(("filter", name, "==" if op == "=" else op, float(value)))
    return selector, stages


def _match(got: str, op: str, want: str) -> bool:
    if op in ("=", "=="):
        return got == want
    if op == "!=":
        return got != want
    if op == "=~":
        return re.fullmatch(want, got) is not None
    if op == "!~":
        return re.fullmatch(want, got) is None
    raise ValueError(f"operator {op} on a string")


def _sanitize(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def _json_labels(line: str, existing: dict) -> dict:
    try:
        doc = json.loads(line)
    except ValueError:
        return {"__error__": "JSONParserErr"}
    out: dict[str, str] = {}

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}_{_sanitize(k)}" if prefix else _sanitize(k), v)
        elif isinstance(value, list):
            return  # arrays are skipped
        elif isinstance(value, bool):
            out[prefix] = "true" if value else "false"
        elif value is None:
            out[prefix] = ""
        elif isinstance(value, float) and value.is_integer():
            out[prefix] = repr(value)
        else:
            out[prefix] = str(value)

    walk("", doc)
    return {(f"{k}_extracted" if k in existing else k): v for k, v in out.items()}
