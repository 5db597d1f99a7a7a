"""`--output har:PATH` and `flowtap convert --to har`: HAR 1.2 files from real traffic, checked
by an independent validator (npm `har-validator`, installed here into target/ on first use),
by the HAR rules a schema does not check, and entry by entry against the JSON-line records."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support.clients import curl
from support.net import dead_port, free_port
from support.nginx import GZIP_TEXT, JSON_BODY, SMALL_BODY
from support.proxy import REPO_ROOT, clean_env, flowtap_bin, run_flowtap

VALIDATOR_DIR = REPO_ROOT / "target" / "har-validator"
VALIDATOR_VERSION = "5.1.5"
VALIDATE_JS = r"""
const fs = require('fs');
const validate = require('har-validator');
let failed = 0;
Promise.all(process.argv.slice(2).map((path) => {
  let data;
  try { data = JSON.parse(fs.readFileSync(path, 'utf8')); }
  catch (e) { failed++; console.log(JSON.stringify({path, error: 'not JSON: ' + e.message})); return; }
  return validate.har(data).then(
    () => console.log(JSON.stringify({path, valid: true, entries: data.log.entries.length})),
    (e) => { failed++; console.log(JSON.stringify({path, error: e.message, errors: e.errors})); });
})).then(() => process.exit(failed ? 1 : 0));
"""


@pytest.fixture(scope="session")
def har_validator() -> Path:
    """target/har-validator/validate.js, with har-validator installed from npm if missing."""
    module = VALIDATOR_DIR / "node_modules" / "har-validator" / "package.json"
    installed = module.is_file() and json.loads(module.read_text()).get("version") == VALIDATOR_VERSION
    if not installed:
        if shutil.which("npm") is None or shutil.which("node") is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs", "npm"],
                           check=False, capture_output=True, timeout=600,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        assert shutil.which("npm") and shutil.which("node"), "node and npm are needed for har-validator"
        VALIDATOR_DIR.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "install", "--prefix", str(VALIDATOR_DIR), "--no-audit", "--no-fund",
                            "--loglevel=error", f"har-validator@{VALIDATOR_VERSION}"],
                           capture_output=True, timeout=600, env=clean_env())
        assert r.returncode == 0, f"npm install har-validator failed: {r.stderr.decode()[-2000:]}"
    script = VALIDATOR_DIR / "validate.js"
    script.write_text(VALIDATE_JS)
    return script


def validate(script: Path, *paths: Path) -> None:
    r = subprocess.run(["node", str(script), *map(str, paths)], capture_output=True, timeout=60,
                       cwd=VALIDATOR_DIR)
    out = r.stdout.decode()
    assert r.returncode == 0, f"har-validator rejected:\n{out[-4000:]}\n{r.stderr.decode()[-2000:]}"
    results = [json.loads(l) for l in out.splitlines() if l.strip()]
    assert len(results) == len(paths) and all(x["valid"] for x in results), out


def load(path: Path) -> dict:
    return json.loads(path.read_bytes())


def check_har_rules(doc: dict) -> None:
    """HAR 1.2 rules beyond the schema."""
    log = doc["log"]
    assert log["version"] == "1.2"
    assert log["creator"]["name"] == "flowtap" and log["creator"]["version"]
    for e in log["entries"]:
        t = e["timings"]
        for k in ("send", "wait", "receive"):
            assert t[k] >= 0, (k, t)
        for k in ("blocked", "dns", "connect", "ssl"):
            assert t[k] == -1 or t[k] >= 0, (k, t)
        if t["ssl"] >= 0:
            assert t["connect"] >= t["ssl"], "ssl is included in connect"
        total = sum(t[k] for k in ("blocked", "dns", "connect", "send", "wait", "receive") if t[k] >= 0)
        assert abs(e["time"] - total) < 0.002, ("time is the sum of the timings", e["time"], t)
        for side in ("request", "response"):
            m = e[side]
            assert m["headersSize"] == -1
            assert isinstance(m["bodySize"], int) and m["bodySize"] >= -1
            assert all(set(h) == {"name", "value"} for h in m["headers"])
        assert "#" not in e["request"]["url"]
        c = e["response"]["content"]
        if c.get("encoding") == "base64":
            base64.b64decode(c["text"], validate=True)
        for key in e:
            assert key in {"startedDateTime", "time", "request", "response", "cache", "timings",
                           "serverIPAddress", "connection", "comment", "pageref"} or key.startswith("_"), key


def header(entry_side: dict, name: str) -> list[str]:
    return [h["value"] for h in entry_side["headers"] if h["name"] == name]


def traffic(proxy, nginx, pyserver) -> dict[str, str]:
    """A mix of real exchanges; returns {label: url}."""
    urls = {
        "small": nginx.url("/small?a=1&b=x%20y&c=d+e"),
        "json_h2": nginx.url("/json", host="localhost", tls=True),
        "gzip": nginx.url("/gzip"),
        "bin": nginx.url("/bin4k", host="localhost", tls=True),
        "cookies": nginx.url("/set-cookie"),
        "status500": nginx.url("/status/500"),
        "upload": f"{pyserver.base}/upload",
        "refused": f"http://127.0.0.1:{dead_port()}/nowhere",
    }
    ca = ["--cacert", str(proxy.ca_path)]
    curl("-x", proxy.url, "-o", "/dev/null", "-H", "Cookie: sid=abc; theme=dark", urls["small"]).check()
    curl("-x", proxy.url, *ca, "-o", "/dev/null", urls["json_h2"]).check()
    curl("-x", proxy.url, "-o", "/dev/null", "-H", "Accept-Encoding: gzip", urls["gzip"]).check()
    curl("-x", proxy.url, *ca, "--http1.1", "-o", "/dev/null", urls["bin"]).check()
    curl("-x", proxy.url, "-o", "/dev/null", urls["cookies"]).check()
    curl("-x", proxy.url, "-o", "/dev/null", urls["status500"]).check()
    curl("-x", proxy.url, "-o", "/dev/null", "-H", "Content-Type: text/plain",
         "--data-binary", "hello from the client", urls["upload"]).check()
    curl("-x", proxy.url, "-o", "/dev/null", urls["refused"])
    return urls


def wait_entries(path: Path, n: int, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = load(path)
        if len(doc["log"]["entries"]) >= n or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)


def test_har_output_of_real_traffic(start_proxy, nginx, pyserver, har_validator):
    proxy = start_proxy("--capture-bodies", "all", more_outputs=["har:{dir}/flows.har"])
    path = proxy.workdir / "flows.har"
    urls = traffic(proxy, nginx, pyserver)
    recs = proxy.records(len(urls))
    doc = wait_entries(path, len(urls))
    # Valid while the proxy is still running, not only after it stopped.
    validate(har_validator, path)
    check_har_rules(doc)
    entries = {e["_id"]: e for e in doc["log"]["entries"]}
    assert set(entries) == {r["id"] for r in recs}
    by_label = {}
    for r in recs:
        label = next(k for k, u in urls.items() if r["request"]["url"] == u)
        by_label[label] = (r, entries[r["id"]])

    for label, (rec, e) in by_label.items():
        assert e["startedDateTime"] == rec["start"]
        assert e["request"]["method"] == rec["request"]["method"]
        assert e["request"]["url"] == rec["request"]["url"]
        assert e["request"]["httpVersion"] == rec["request"]["http_version"]
        assert e["request"]["bodySize"] == rec["request"]["body_size"]
        assert e["connection"] == rec["connection_id"]
        if rec["server"].get("ip"):
            assert e["serverIPAddress"] == rec["server"]["ip"]
        if "response" in rec:
            assert e["response"]["status"] == rec["response"]["status"]
            assert e["response"]["bodySize"] == rec["response"]["body_size"]
            assert e["response"]["httpVersion"] == rec["response"]["http_version"]
        t, rt = e["timings"], rec.get("timings", {})
        for har_key, rec_key in (("dns", "dns_ms"), ("ssl", "tls_ms"), ("send", "send_ms"),
                                 ("wait", "wait_ms"), ("receive", "receive_ms")):
            if rec_key in rt:
                assert t[har_key] == pytest.approx(rt[rec_key], abs=0.0015), (label, har_key)
        if "connect_ms" in rt:
            assert t["connect"] == pytest.approx(rt["connect_ms"] + rt.get("tls_ms", 0), abs=0.002)
        else:
            assert t["connect"] == -1 and t["dns"] == -1, "reused connection"
        assert e["time"] >= rec["duration_ms"] - 0.002

    rec, e = by_label["small"]
    c = e["response"]["content"]
    assert c["text"] == SMALL_BODY.decode() and "encoding" not in c
    assert c["size"] == len(SMALL_BODY) and c["mimeType"] == "text/plain"
    assert e["request"]["queryString"] == [{"name": "a", "value": "1"}, {"name": "b", "value": "x y"},
                                           {"name": "c", "value": "d e"}]
    # Cookie values are redacted in the record, and so in the HAR.
    assert e["request"]["cookies"] == [{"name": "sid", "value": "<redacted>"},
                                       {"name": "theme", "value": "<redacted>"}]
    assert e["response"]["statusText"] == "OK"

    rec, e = by_label["json_h2"]
    assert e["request"]["httpVersion"] == "HTTP/2.0"
    assert json.loads(e["response"]["content"]["text"]) == json.loads(JSON_BODY)
    assert e["timings"]["ssl"] > 0 or e["timings"]["ssl"] == -1

    rec, e = by_label["gzip"]
    c = e["response"]["content"]
    assert header(e["response"], "content-encoding") == ["gzip"]
    assert c["text"] == GZIP_TEXT.decode(), "content.text is the decoded body"
    assert c["size"] == len(GZIP_TEXT)
    assert e["response"]["bodySize"] == len(gzip.compress(GZIP_TEXT, mtime=0)) == rec["response"]["body_size"]
    assert c["compression"] == c["size"] - e["response"]["bodySize"] > 0

    rec, e = by_label["bin"]
    c = e["response"]["content"]
    assert c["encoding"] == "base64"
    raw = base64.b64decode(c["text"])
    assert len(raw) == 4096 == c["size"]
    import hashlib
    assert hashlib.sha256(raw).hexdigest() == nginx.files["/bin4k"][1], "binary body round-trips"

    rec, e = by_label["cookies"]
    assert len(header(e["response"], "set-cookie")) == 2, "one HAR header per set-cookie field"
    cookies = {c["name"]: c for c in e["response"]["cookies"]}
    assert set(cookies) == {"a", "b"}
    assert cookies["b"].get("httpOnly") is True and cookies["a"]["path"] == "/"

    rec, e = by_label["status500"]
    assert e["response"]["status"] == 500

    rec, e = by_label["upload"]
    assert e["request"]["method"] == "POST"
    assert e["request"]["postData"] == {"mimeType": "text/plain", "text": "hello from the client"}
    assert e["request"]["bodySize"] == len("hello from the client")

    rec, e = by_label["refused"]
    assert rec["error"]["kind"] == "upstream_connect"
    assert e["response"]["status"] == 0 and e["response"]["bodySize"] == -1
    assert e["_error"] == f"upstream_connect: {rec['error']['message']}"

    assert proxy.stop() == 0
    validate(har_validator, path)
    assert load(path) == doc, "nothing rewritten at stop"


def test_killed_proxy_leaves_a_readable_har(start_proxy, nginx, har_validator):
    proxy = start_proxy(more_outputs=["har:{dir}/flows.har"])
    path = proxy.workdir / "flows.har"
    url = nginx.url("/small")
    n = 0
    for batch in range(5):
        for _ in range(batch + 1):
            curl("-x", proxy.url, "-o", "/dev/null", url).check()
            n += 1
        proxy.records(n)
        doc = wait_entries(path, n)
        assert len(doc["log"]["entries"]) == n     # parses after every batch
    proxy.proc.kill()
    proxy.proc.wait()
    proxy.returncode = proxy.proc.returncode
    validate(har_validator, path)
    assert len(load(path)["log"]["entries"]) == n


def test_restart_continues_the_file_and_foreign_files_are_refused(start_proxy, nginx, tmp_path,
                                                                 har_validator):
    path = tmp_path / "shared.har"
    url = nginx.url("/small")
    first = start_proxy(more_outputs=[f"har:{path}"])
    curl("-x", first.url, "-o", "/dev/null", url).check()
    first.records(1)
    assert first.stop() == 0
    second = start_proxy(more_outputs=[f"har:{path}"])
    curl("-x", second.url, "-o", "/dev/null", url).check()
    second.records(1)
    assert second.stop() == 0
    ids = [e["_id"] for e in load(path)["log"]["entries"]]
    assert ids == [first.read_records()[0]["id"], second.read_records()[0]["id"]]
    validate(har_validator, path)

    foreign = tmp_path / "notes.har"
    foreign.write_text("my own notes\n")
    r = run_flowtap("proxy", "--listen", f"127.0.0.1:{free_port()}", "--ca-dir", tmp_path / "ca",
                    "--output", f"har:{foreign}", timeout=20)
    assert r.returncode != 0
    assert "not a HAR file written by flowtap" in r.stderr.decode(), r.stderr.decode()
    assert foreign.read_text() == "my own notes\n", "never overwritten"


def test_convert_to_har_from_jsonl_and_pb(start_proxy, nginx, pyserver, pki, har_validator, tmp_path):
    proxy = start_proxy("--capture-bodies", "all",
                        more_outputs=["pb:{dir}/records.pb", "har:{dir}/live.har"])
    urls = traffic(proxy, nginx, pyserver)
    proxy.records(len(urls))
    # A tunnel record too: HAR has no place for it and leaves it out.
    ignored = start_proxy("--ignore-hosts", "^localhost$", name="ignoring")
    curl("-x", ignored.url, "--cacert", str(pki.server_ca), "-o", "/dev/null",
         nginx.url("/small", host="localhost", tls=True)).check()
    ignored.records(1)
    assert ignored.stop() == 0
    assert proxy.stop() == 0
    jsonl = tmp_path / "all.jsonl"
    jsonl.write_bytes(proxy.records_path.read_bytes() + ignored.records_path.read_bytes())

    from_jsonl, from_pb = tmp_path / "from-jsonl.har", tmp_path / "from-pb.har"
    r = run_flowtap("convert", "--to", "har", "-o", from_jsonl, jsonl)
    assert r.returncode == 0, r.stderr.decode()
    r = run_flowtap("convert", "--to", "har", "-o", from_pb, proxy.workdir / "records.pb")
    assert r.returncode == 0, r.stderr.decode()
    validate(har_validator, from_jsonl, from_pb, proxy.workdir / "live.har")

    a, b, live = load(from_jsonl), load(from_pb), load(proxy.workdir / "live.har")
    for doc in (a, b):
        check_har_rules(doc)
    assert len(a["log"]["entries"]) == len(urls), "the tunnel record is left out"
    assert a == b, "JSON lines and protobuf give the same HAR"
    key = lambda e: e["_id"]
    assert sorted(a["log"]["entries"], key=key) == sorted(live["log"]["entries"], key=key), \
        "convert and the live output write the same entries"

    # HAR is written, not read: --from offers jsonl and pb only.
    r = run_flowtap("convert", "--from", "har", "--to", "jsonl", proxy.workdir / "live.har")
    assert r.returncode == 64 and "possible values: jsonl, pb" in r.stderr.decode(), r

    # stdin to stdout works too
    p = subprocess.run([flowtap_bin(), "convert", "--to", "har"], input=jsonl.read_bytes(),
                       capture_output=True, timeout=30, env=clean_env())
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout) == a
