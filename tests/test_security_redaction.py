"""Secrets stay out of the records: each redaction rule with real traffic (curl -u, boto3 signing
SigV4 against a local S3-compatible server over TLS, a JWT, opaque tokens, cookies, API keys, URL
query tokens), the flags that extend or lift the rules, and a check that the secret string
appears in no output at all: JSON lines (file and stdout), text, protobuf, stderr."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest

from support.clients import curl
from support.net import free_port, wait_listening
from support.proxy import run_flowtap
from test_security_helpers import (all_records, assert_nowhere, assert_serves, one_record,
                                   raw_exchange, url_is, wait_records)

# Every output format, so "nowhere" means every encoding a record can take.
ALL_OUTPUTS = ("text:{dir}/text.log", "pb:{dir}/records.pb")


def fp(secret: str | bytes) -> str:
    """The fingerprint the README promises: byte length and the first 8 hex digits of SHA-256."""
    b = secret.encode() if isinstance(secret, str) else secret
    return f"<redacted len={len(b)} sha256={hashlib.sha256(b).hexdigest()[:8]}>"


def url_fp(secret: str) -> str:
    return (fp(secret).replace("<", "%3C").replace(">", "%3E").replace("=", "%3D")
            .replace(" ", "%20"))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(header: dict, claims: dict, key: bytes) -> tuple[str, str]:
    """An HS256 JWS in compact form, built by hand; returns (token, signature segment)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    sig = b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{sig}", sig


def stopped(proxy):
    """Stops the proxy (flushing every output) so the files can be searched whole."""
    assert proxy.stop() == 0
    return proxy


# --- Basic --------------------------------------------------------------------------------------

def test_basic_auth_keeps_user_drops_password(start_proxy, nginx):
    p = start_proxy("-v", more_outputs=ALL_OUTPUTS)
    plain_url = nginx.url("/small")
    tls_url = nginx.url("/small", host="localhost", tls=True)
    curl("--proxy", p.url, "-u", "alice:s3cr3t", plain_url).check()
    curl("--proxy", p.url, "--cacert", p.ca_path, "-u", "alice:s3cr3t", tls_url).check()
    for url in (plain_url, tls_url):
        rec = p.record(url_is(url))
        assert rec["request"]["headers"]["authorization"] == "Basic <redacted user=alice>", rec
        assert rec["redacted"] == ["request.headers.authorization"], rec
    text = (p.workdir / "text.log").read_text()
    assert "Basic <redacted user=alice>" in text, text[:2000]
    stopped(p)
    assert_nowhere(p, "s3cr3t", base64.b64encode(b"alice:s3cr3t"), min_files=5)


# --- AWS SigV4 with boto3 against a local S3-compatible server ------------------------------------

@pytest.fixture
def s3_server(pki, tmp_path):
    """moto's S3 server on loopback over TLS with the test server certificate."""
    port = free_port()
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port),
         "--ssl-cert", str(pki.server_cert), "--ssl-key", str(pki.server_key)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", port, timeout=30)
        yield f"https://localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


AKID = "AKIAFLOWTAPTEST7EXAM"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYflowtapSECRET"
REGION = "eu-west-3"


def test_sigv4_boto3_keeps_key_id_region_service_drops_signature(start_proxy, s3_server, tmp_path,
                                                                monkeypatch):
    import boto3
    import requests
    from botocore.config import Config

    p = start_proxy("-v", more_outputs=ALL_OUTPUTS)
    bundle = tmp_path / "bundle.pem"
    out = run_flowtap("ca", "export", "--bundle", "--ca-dir", p.ca_dir)
    assert out.returncode == 0, out.stderr
    bundle.write_bytes(out.stdout)
    monkeypatch.setenv("HTTPS_PROXY", p.url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    client = boto3.client(
        "s3", endpoint_url=s3_server, region_name=REGION, verify=str(bundle),
        aws_access_key_id=AKID, aws_secret_access_key=SECRET_KEY,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}))
    sent: list[tuple[str, str]] = []

    def remember(request, **_):
        sent.append((request.method, request.headers["Authorization"].decode()
                     if isinstance(request.headers["Authorization"], bytes)
                     else request.headers["Authorization"]))

    client.meta.events.register("before-send.s3", remember)
    client.create_bucket(Bucket="backups", CreateBucketConfiguration={"LocationConstraint": REGION})
    client.put_object(Bucket="backups", Key="db.dump", Body=b"flowtap sigv4 body\n" * 10)
    got = client.get_object(Bucket="backups", Key="db.dump")["Body"].read()
    assert got == b"flowtap sigv4 body\n" * 10
    listing = client.list_objects_v2(Bucket="backups")
    assert [o["Key"] for o in listing["Contents"]] == ["db.dump"]

    # A presigned URL: the signature travels in the query instead.
    presigned = client.generate_presigned_url("get_object", Params={"Bucket": "backups", "Key": "db.dump"},
                                              ExpiresIn=600)
    query_sig = re.search(r"X-Amz-Signature=([0-9a-f]{64})", presigned).group(1)
    r = requests.get(presigned, proxies={"https": p.url}, verify=str(bundle), timeout=30)
    assert r.status_code == 200 and r.content == got

    assert len(sent) == 4, sent
    signatures = [re.search(r"Signature=([0-9a-f]{64})", auth).group(1) for _, auth in sent]
    recs = wait_records(p, lambda r: r["kind"] == "http", count=5)
    assert len(recs) == 5, json.dumps(recs)[:3000]
    shape = re.compile(
        rf"^AWS4-HMAC-SHA256 Credential={AKID}/\d{{8}}/{REGION}/s3/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=<redacted>$")
    header_recs = [r for r in recs if "authorization" in r["request"]["headers"]]
    assert len(header_recs) == 4
    for rec, (_, auth) in zip(sorted(header_recs, key=lambda r: r["id"]), sent):
        value = rec["request"]["headers"]["authorization"]
        m = shape.match(value)
        assert m, f"SigV4 authorization recorded as {value!r}"
        signed = re.search(r"SignedHeaders=([a-z0-9;-]+)", auth).group(1)
        assert m.group(1) == signed, (value, auth)
        assert {"host", "x-amz-date", "x-amz-content-sha256"} <= set(signed.split(";"))
        assert "request.headers.authorization" in rec["redacted"]
        assert rec["tls"]["intercepted"] is True and rec["tls"]["upstream_verified"] is True

    (pre,) = [r for r in recs if "X-Amz-Signature" in r["request"]["url"]]
    url = pre["request"]["url"]
    assert f"X-Amz-Signature={url_fp(query_sig)}" in url, url
    assert f"X-Amz-Credential={AKID}%2F" in url and f"%2F{REGION}%2Fs3%2Faws4_request" in url, url
    assert pre["redacted"] == ["request.url"], pre
    # The rest of the URL is byte-identical to what the client sent.
    # (Only a default port is dropped: the server's own port may begin with 443, as 44313 did.)
    assert url.replace(url_fp(query_sig), query_sig) == presigned.replace(":443/", "/", 1)
    stopped(p)
    assert_nowhere(p, SECRET_KEY, query_sig, *signatures, min_files=5)


# --- Bearer ---------------------------------------------------------------------------------------

def test_jwt_bearer_keeps_named_claims_only(start_proxy, nginx):
    p = start_proxy("-v", more_outputs=ALL_OUTPUTS)
    secret_claim = "internal-" + secrets.token_hex(12)
    token, sig = make_jwt(
        {"alg": "HS256", "kid": "key-2024", "typ": "JWT"},
        {"iss": "https://issuer.example", "sub": "alice", "aud": ["api", "web"], "azp": "cli",
         "exp": 1900000000, "iat": 1700000000, "email": "alice@example.org",
         "secret_claim": secret_claim},
        b"hmac key that never leaves the test")
    url = nginx.url("/small", host="localhost", tls=True)
    curl("--proxy", p.url, "--cacert", p.ca_path, "-H", f"Authorization: Bearer {token}", url).check()
    rec = p.record(url_is(url))
    assert rec["request"]["headers"]["authorization"] == (
        "Bearer <redacted jwt alg=HS256 kid=key-2024 iss=https://issuer.example sub=alice "
        "aud=api,web azp=cli exp=1900000000 iat=1700000000>"), rec["request"]["headers"]
    assert rec["redacted"] == ["request.headers.authorization"]
    stopped(p)
    claims_segment = token.split(".")[1]
    assert_nowhere(p, sig, secret_claim, "alice@example.org", claims_segment, token, min_files=5)


def test_opaque_bearer_is_fingerprinted(start_proxy, nginx):
    p = start_proxy(more_outputs=ALL_OUTPUTS)
    token = "gho_" + secrets.token_urlsafe(27)
    url = nginx.url("/small")
    curl("--proxy", p.url, "-H", f"Authorization: Bearer {token}", url).check()
    rec = p.record(url_is(url))
    got = rec["request"]["headers"]["authorization"]
    want = f"Bearer <redacted len={len(token)} sha256={hashlib.sha256(token.encode()).hexdigest()[:8]}>"
    assert got == want
    stopped(p)
    assert_nowhere(p, token, token[4:20], min_files=5)


def test_other_scheme_keeps_scheme_only(start_proxy, nginx):
    p = start_proxy()
    response = "6629fae49393a05397450978507c4ef1"
    url = nginx.url("/small")
    curl("--proxy", p.url, "-H",
         f'Authorization: Digest username="alice", realm="x", nonce="n", response="{response}"', url).check()
    assert p.record(url_is(url))["request"]["headers"]["authorization"] == "Digest <redacted>"
    stopped(p)
    assert_nowhere(p, response)


# --- Cookies, API keys, query parameters ------------------------------------------------------------

def test_cookie_and_set_cookie_keep_names_and_attributes(start_proxy, nginx):
    p = start_proxy("-v", more_outputs=ALL_OUTPUTS)
    session = secrets.token_hex(16)
    url = nginx.url("/set-cookie", host="localhost", tls=True)
    r = curl("--proxy", p.url, "--cacert", p.ca_path, "-D", "-", "-H",
             f"Cookie: session={session}; theme=solarized-dark", url).check()
    assert r.text.lower().count("set-cookie:") == 2, r.text    # the client still gets both
    rec = p.record(url_is(url))
    assert rec["request"]["headers"]["cookie"] == "session=<redacted>; theme=<redacted>"
    assert rec["response"]["headers"]["set-cookie"] == "a=<redacted>; Path=/\nb=<redacted>; Path=/; HttpOnly"
    assert sorted(rec["redacted"]) == ["request.headers.cookie", "response.headers.set-cookie"]
    stopped(p)
    assert_nowhere(p, session, "solarized-dark", min_files=5)


@pytest.mark.parametrize("name", ["X-Api-Key", "x-amz-security-token", "X-Goog-Api-Key", "x-auth-token"])
def test_api_key_headers_are_fingerprinted(start_proxy, nginx, name):
    p = start_proxy(more_outputs=ALL_OUTPUTS)
    key = "sk_live_" + secrets.token_hex(16)
    url = nginx.url("/small")
    curl("--proxy", p.url, "-H", f"{name}: {key}", url).check()
    rec = p.record(url_is(url))
    assert rec["request"]["headers"][name.lower()] == fp(key)
    assert rec["redacted"] == [f"request.headers.{name.lower()}"]
    stopped(p)
    assert_nowhere(p, key, min_files=5)


def test_query_tokens_are_fingerprinted_and_traffic_untouched(start_proxy, pyserver):
    p = start_proxy(more_outputs=ALL_OUTPUTS)
    token, sig, api = secrets.token_hex(10), secrets.token_hex(32), "AIza" + secrets.token_hex(8)
    query = (f"q=flow+tap&token={token}&X-Amz-Credential=AKIDEXAMPLE%2F20240812%2Fus-east-1%2Fs3%2Faws4_request"
             f"&X-Amz-Signature={sig}&API_KEY={api}&page=2#frag")
    url = f"{pyserver.base}/echo?{query}"
    r = curl("--proxy", p.url, url).check()
    # The upstream got the real values: redaction is for the record only.
    echoed = json.loads(r.out)
    assert f"token={token}" in echoed["path"] and f"X-Amz-Signature={sig}" in echoed["path"], echoed
    rec = p.record(lambda r: r["kind"] == "http")
    want = (f"{pyserver.base}/echo?q=flow+tap&token={url_fp(token)}"
            "&X-Amz-Credential=AKIDEXAMPLE%2F20240812%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Signature={url_fp(sig)}&API_KEY={url_fp(api)}&page=2")
    assert rec["request"]["url"] == want
    assert rec["redacted"] == ["request.url"]
    stopped(p)
    assert_nowhere(p, token, sig, api, min_files=5)


def test_url_userinfo_password_never_recorded(start_proxy, nginx):
    """A client may put credentials in an absolute-form URL (`http://user:pass@host/`); the
    record must not carry the password."""
    p = start_proxy("-v", more_outputs=ALL_OUTPUTS)
    password = "uRLpassw0rd" + secrets.token_hex(4)
    target = f"http://alice:{password}@127.0.0.1:{nginx.http_port}/small"
    status, _, _ = raw_exchange(p.port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{nginx.http_port}\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert status == 200, status
    rec = one_record(p, lambda r: r["kind"] == "http")
    # The recorded URL carries no userinfo at all (forward.rs), the rest is the target's.
    assert rec["request"]["url"] == f"http://127.0.0.1:{nginx.http_port}/small", rec["request"]
    assert rec["response"]["status"] == 200 and rec["response"]["body_size"] == 1024
    assert_serves(p, nginx)
    stopped(p)
    assert_nowhere(p, password, min_files=5)


# --- Flags: more rules, fewer rules ---------------------------------------------------------------

def test_redact_header_and_redact_query_flags(start_proxy, nginx):
    p = start_proxy("--redact-header", "X-Session-Id", "--redact-query", "session",
                    "--redact-query", "Trace", more_outputs=ALL_OUTPUTS)
    sid, qs, tr = secrets.token_hex(12), secrets.token_hex(12), secrets.token_hex(12)
    url = nginx.url(f"/small?session={qs}&TRACE={tr}&keep=yes")
    curl("--proxy", p.url, "-H", f"X-Session-Id: {sid}", url).check()
    rec = p.record(lambda r: r["kind"] == "http")
    assert rec["request"]["headers"]["x-session-id"] == fp(sid)
    assert rec["request"]["url"] == nginx.url(f"/small?session={url_fp(qs)}&TRACE={url_fp(tr)}&keep=yes")
    assert sorted(rec["redacted"]) == ["request.headers.x-session-id", "request.url"]
    stopped(p)
    assert_nowhere(p, sid, qs, tr, min_files=5)


def _reveal_warnings(proxy) -> list[str]:
    return [l for l in proxy.stderr_text().splitlines() if "WARN" in l and "reveal=" in l]


def test_reveal_one_rule(start_proxy, nginx):
    p = start_proxy("--reveal", "Authorization")
    cookie = secrets.token_hex(8)
    for _ in range(3):
        curl("--proxy", p.url, "-u", "alice:s3cr3t", "-H", f"Cookie: sid={cookie}", nginx.url("/small")).check()
    recs = p.records(3)
    for rec in recs:
        assert rec["request"]["headers"]["authorization"] == "Basic " + base64.b64encode(b"alice:s3cr3t").decode()
        assert rec["request"]["headers"]["cookie"] == "sid=<redacted>"        # other rules still on
        assert rec["redacted"] == ["request.headers.cookie"]
    warnings = _reveal_warnings(p)
    assert len(warnings) == 1, f"expected one warning about revealed secrets on stderr:\n{p.stderr_text()}"
    assert "authorization" in warnings[0].lower()


def test_reveal_all(start_proxy, nginx):
    p = start_proxy("--reveal", "all")
    token = secrets.token_hex(8)
    for _ in range(3):
        curl("--proxy", p.url, "-H", f"Authorization: Bearer {token}", "-H", f"X-Api-Key: {token}",
             nginx.url(f"/small?token={token}")).check()
    for rec in p.records(3):
        assert rec["request"]["headers"]["authorization"] == f"Bearer {token}"
        assert rec["request"]["headers"]["x-api-key"] == token
        assert rec["request"]["url"].endswith(f"?token={token}")
        assert "redacted" not in rec
    assert len(_reveal_warnings(p)) == 1, f"expected exactly one reveal warning:\n{p.stderr_text()}"


def test_redaction_is_default_and_no_warning(start_proxy, nginx):
    p = start_proxy()
    curl("--proxy", p.url, "-u", "alice:s3cr3t", nginx.url("/small")).check()
    p.record(url_is(nginx.url("/small")))
    assert _reveal_warnings(p) == [], p.stderr_text()
    assert "s3cr3t" not in p.stderr_text()


def _failed_exchanges(p, nginx) -> tuple[str, ...]:
    """Requests that cannot reach their upstream, with a bearer token, a cookie and a query
    token; returns the secrets."""
    from support.net import dead_port
    token, cookie, qtok = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)
    port = dead_port()
    for url in (f"http://127.0.0.1:{port}/x?token={qtok}", f"https://localhost:{port}/x?token={qtok}"):
        r = curl("--proxy", p.url, "--cacert", p.ca_path, "-o", "/dev/null", "-w", "%{http_code}",
                 "-H", f"Authorization: Bearer {token}", "-H", f"Cookie: sid={cookie}", url)
        assert r.text.strip() == "502", r.text
    recs = p.records(2)
    for rec in recs:
        assert rec["error"]["kind"] == "upstream_connect", rec
        assert "response" not in rec
        assert rec["request"]["url"].endswith(f"/x?token={url_fp(qtok)}"), rec["request"]["url"]
    assert_serves(p, nginx)
    stopped(p)
    return token, cookie, qtok


def test_failed_exchange_leaks_nothing(start_proxy, nginx):
    """Failures are records too: their error messages and the log carry no secret."""
    p = start_proxy("-v", more_outputs=ALL_OUTPUTS)
    assert_nowhere(p, *_failed_exchanges(p, nginx), min_files=5)


# Regression: forward.rs once logged `exchange failed ... url=` with the URL as sent, query tokens
# included, at debug level.
def test_failed_exchange_debug_log_leaks_nothing(start_proxy, nginx):
    p = start_proxy(env={"RUST_LOG": "debug"})
    assert_nowhere(p, *_failed_exchanges(p, nginx))
