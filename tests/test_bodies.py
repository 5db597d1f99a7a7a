"""Request and response bodies: 100-continue and chunked uploads, uploads over HTTP/2, a 100 MiB
download in bounded memory, body capture (text, decoded gzip, base64, limits)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess

import httpx
import pytest

from support.clients import curl
from support.nginx import BIG1M_SIZE, BIG_SIZE, GZIP_TEXT, JSON_BODY
from support.proxy import clean_env

RSS_LIMIT_KIB = 64 * 1024


@pytest.fixture
def upload_file(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    return f, data


def test_expect_100_continue_upload(proxy, pyserver, upload_file):
    f, data = upload_file
    url = f"{pyserver.base}/upload"
    r = curl("-x", proxy.url, "-H", "Expect: 100-continue", "--data-binary", f"@{f}", url).check()
    got = json.loads(r.out)
    assert got["received"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    rec = proxy.record()
    assert rec["request"]["method"] == "POST"
    assert rec["request"]["url"] == url
    assert rec["request"]["body_size"] == len(data)
    assert rec["response"]["status"] == 200, "the final status, not the interim 100"
    assert rec["response"]["body_size"] == len(r.out)
    assert "error" not in rec


@pytest.mark.parametrize("tls", [False, True], ids=["http1", "https-h2"])
def test_slow_upload_outlasts_the_response_timeout(start_proxy, pyserver, nginx, upload_file, tls):
    """An upload that takes longer than --response-timeout to a server that answers once it has
    the whole body (as S3 does): the clock starts at the end of the body, so nothing is cut.
    It used to be a 502 once the upload had taken longer than the timeout (30 s by default)."""
    proxy = start_proxy("--response-timeout", "1")
    f, data = upload_file
    url = nginx.url("/upload", host="localhost", tls=True) if tls else f"{pyserver.base}/upload"
    extra = ["--cacert", proxy.ca_path, "--http2"] if tls else []
    # 3 MiB at 1 MiB/s: about 3 s of upload, three times the timeout.
    r = curl("-x", proxy.url, *extra, "--limit-rate", "1M", "--data-binary", f"@{f}", url).check()
    got = json.loads(r.out)
    assert got["received"] == len(data) and got["sha256"] == hashlib.sha256(data).hexdigest()
    rec = proxy.record()
    assert "error" not in rec, rec["error"]
    assert rec["response"]["status"] == 200
    assert rec["request"]["body_size"] == len(data)
    assert rec["timings"]["send_ms"] > 1000, "the upload outlasted the timeout"


def test_chunked_upload(proxy, pyserver, upload_file):
    f, data = upload_file
    url = f"{pyserver.base}/upload"
    r = curl("-x", proxy.url, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{f}", url).check()
    got = json.loads(r.out)
    assert got["received"] == len(data)
    assert got["sha256"] == hashlib.sha256(data).hexdigest()
    rec = proxy.record()
    assert rec["request"]["body_size"] == len(data), "body_size is after the chunked coding is removed"
    assert rec["request"]["headers"]["transfer-encoding"] == "chunked"
    assert "content-length" not in rec["request"]["headers"]
    assert rec["response"]["status"] == 200


def test_put_upload_over_h2(proxy, nginx, upload_file):
    _, data = upload_file
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    url = nginx.url("/upload", host="localhost", tls=True)
    with httpx.Client(http2=True, proxy=proxy.url, verify=ctx, trust_env=False, timeout=30) as c:
        resp = c.put(url, content=data)
    assert resp.http_version == "HTTP/2"
    assert resp.json()["received"] == len(data)
    assert resp.json()["sha256"] == hashlib.sha256(data).hexdigest()
    rec = proxy.record()
    assert rec["request"]["method"] == "PUT"
    assert rec["request"]["http_version"] == "HTTP/2.0"
    assert rec["request"]["body_size"] == len(data)
    assert rec["response"]["status"] == 200


@pytest.mark.parametrize("scheme,version", [("http", "--http1.1"), ("https", "--http1.1"), ("https", "--http2")])
def test_100mib_download_bounded_memory(start_proxy, nginx, scheme, version):
    proxy = start_proxy()
    url = nginx.url("/big100m", host="localhost", tls=scheme == "https")
    argv = ["curl", "-sS", "--max-time", "90", version, "--proxy", proxy.url, "--cacert", str(proxy.ca_path), url]
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env()) as p:
        while chunk := p.stdout.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        err = p.stderr.read().decode()
    assert p.returncode == 0, err
    assert n == BIG_SIZE
    assert h.hexdigest() == nginx.files["/big100m"][1]
    rec = proxy.record(timeout=10)
    peak = proxy.vm_hwm_kib()
    assert peak < RSS_LIMIT_KIB, f"proxy peak RSS {peak} KiB >= {RSS_LIMIT_KIB} KiB"
    assert rec["response"]["status"] == 200
    assert rec["response"]["body_size"] == BIG_SIZE
    assert rec["response"]["headers"]["content-length"] == str(BIG_SIZE)
    assert rec["response"]["http_version"] == ("HTTP/2.0" if version == "--http2" else "HTTP/1.1")
    assert "error" not in rec


def test_capture_text_json(start_proxy, nginx):
    proxy = start_proxy("--capture-bodies", "text")
    url = nginx.url("/json", host="localhost", tls=True)
    r = curl("--proxy", proxy.url, "--cacert", proxy.ca_path, url).check()
    assert r.out == JSON_BODY
    rec = proxy.record()
    assert rec["response"]["body"] == {"encoding": "text", "data": JSON_BODY.decode(), "truncated": False}
    assert "body" not in rec["request"], "a GET has no body to capture"


def test_capture_text_gzip_decoded_for_record_only(start_proxy, nginx):
    proxy = start_proxy("--capture-bodies", "text")
    r = curl("-x", proxy.url, "-H", "Accept-Encoding: gzip", nginx.url("/gzip")).check()
    size, digest = nginx.files["/gzip"]
    assert hashlib.sha256(r.out).hexdigest() == digest, "the client gets the gzip bytes unchanged"
    rec = proxy.record()
    resp = rec["response"]
    assert resp["headers"]["content-encoding"] == "gzip"
    assert resp["body_size"] == size, "body_size is before content decoding"
    assert resp["body"] == {"encoding": "text", "data": GZIP_TEXT.decode(), "truncated": False}


def test_capture_text_request_body(start_proxy, pyserver):
    proxy = start_proxy("--capture-bodies", "text")
    payload = '{"hello": "wörld", "n": 1}'
    curl("-x", proxy.url, "-H", "Content-Type: application/json", "--data-binary", payload,
         f"{pyserver.base}/upload").check()
    rec = proxy.record()
    assert rec["request"]["body"] == {"encoding": "text", "data": payload, "truncated": False}
    assert rec["request"]["body_size"] == len(payload.encode())
    assert rec["response"]["body"]["encoding"] == "text"
    assert json.loads(rec["response"]["body"]["data"])["received"] == len(payload.encode())


def test_capture_all_binary_is_base64(start_proxy, nginx):
    proxy = start_proxy("--capture-bodies", "all", "--body-limit", "8KiB")
    r = curl("-x", proxy.url, nginx.url("/bin4k")).check()
    expected = (nginx.directory / "www" / "bin4k").read_bytes()
    assert r.out == expected
    body = proxy.record()["response"]["body"]
    assert body["encoding"] == "base64"
    assert body["truncated"] is False
    assert base64.b64decode(body["data"]) == expected


def test_capture_none_records_no_body(start_proxy, nginx):
    proxy = start_proxy("--capture-bodies", "none")
    curl("-x", proxy.url, "-o", "/dev/null", nginx.url("/json")).check()
    rec = proxy.record()
    assert "body" not in rec["response"]
    assert rec["response"]["body_size"] == len(JSON_BODY)


def test_body_limit_truncates_capture(start_proxy, nginx):
    proxy = start_proxy("--capture-bodies", "text", "--body-limit", "100")
    r = curl("-x", proxy.url, nginx.url("/json")).check()
    assert r.out == JSON_BODY, "the limit applies to the record, never to the traffic"
    rec = proxy.record()
    body = rec["response"]["body"]
    assert body["truncated"] is True
    assert body["encoding"] == "text"
    assert 0 < len(body["data"].encode()) <= 100
    assert JSON_BODY.decode().startswith(body["data"])
    assert rec["response"]["body_size"] == len(JSON_BODY)


def test_records_stay_small_with_capture_all(start_proxy, nginx):
    proxy = start_proxy("--capture-bodies", "all")
    r = curl("-x", proxy.url, "-o", "/dev/null", "-w", "%{size_download}", nginx.url("/big1m")).check()
    assert r.text == str(BIG1M_SIZE)
    rec = proxy.record()
    assert rec["response"]["body_size"] == BIG1M_SIZE
    assert rec["response"]["body"]["truncated"] is True
    lines = proxy.stdout_path.read_bytes().split(b"\n")
    assert any(lines)
    for line in lines:
        assert len(line) < 16 * 1024, f"a stdout record is {len(line)} bytes"
