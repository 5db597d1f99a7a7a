"""A handle on the real `flowtap` binary: start it on a free loopback port with its own CA
directory, read back its records (validated against the JSON Schema and the record contract),
scrape /metrics, stop it with SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
from functools import lru_cache
from pathlib import Path

from .net import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "schema" / "flow.v1.schema.json"

# How long records may take to appear after the exchange ended: written asynchronously but promptly.
RECORD_WAIT_S = 5.0
STARTUP_WAIT_S = 20.0

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_US = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
HTTP_VERSIONS = {"HTTP/1.0", "HTTP/1.1", "HTTP/2.0"}
ERROR_KINDS = {
    "client_closed", "client_tls", "upstream_connect", "upstream_dns", "upstream_tls",
    "upstream_timeout", "upstream_closed", "protocol", "limit", "refused", "proxy",
}


def flowtap_bin() -> str:
    b = os.environ.get("FLOWTAP_BIN")
    if not b:
        raise AssertionError("FLOWTAP_BIN is not set: run the suite with `bash tests/run`")
    p = Path(b)
    if not p.is_absolute():
        p = REPO_ROOT / p
    if not p.is_file():
        raise AssertionError(f"FLOWTAP_BIN={b} does not exist (build with cargo build --release)")
    return str(p)


def clean_env(extra: dict | None = None) -> dict:
    """The environment for child processes: no proxy variables, no stray FLOWTAP_* settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith("FLOWTAP_") and not k.lower().endswith("_proxy")}
    env.setdefault("RUST_LOG", "info")
    env["RUST_BACKTRACE"] = "1"
    if extra:
        env.update(extra)
    return env


@lru_cache(maxsize=1)
def _validator():
    import jsonschema
    if not SCHEMA_PATH.is_file():
        raise AssertionError(f"JSON Schema for records is missing: {SCHEMA_PATH}")
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _no_nulls(value, where="record"):
    if value is None:
        raise AssertionError(f"{where} is null: absent facts must be omitted, never null")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_nulls(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_nulls(v, f"{where}[{i}]")


def check_record(rec: dict) -> None:
    """The JSON Schema plus the parts of the contract a schema cannot say."""
    errors = sorted(_validator().iter_errors(rec), key=lambda e: list(e.path))
    if errors:
        msgs = "; ".join(f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:5])
        raise AssertionError(f"record does not match {SCHEMA_PATH.name}: {msgs}\n{json.dumps(rec)}")
    _no_nulls(rec)
    assert rec.get("schema_version") == 1, rec
    assert rec.get("kind") in ("http", "tunnel", "connection"), rec
    assert UUID7.match(rec.get("id", "")), f"id is not a UUIDv7: {rec.get('id')}"
    assert RFC3339_US.match(rec.get("start", "")), f"start is not RFC 3339 UTC with µs: {rec.get('start')}"
    assert isinstance(rec.get("connection_id"), str) and rec["connection_id"], rec
    if "duration_ms" in rec:
        assert isinstance(rec["duration_ms"], (int, float)) and rec["duration_ms"] >= 0, rec
    for name, ms in rec.get("timings", {}).items():
        assert name.endswith("_ms") and isinstance(ms, (int, float)) and ms >= 0, rec["timings"]
    for side in ("request", "response"):
        msg = rec.get(side)
        if not msg:
            continue
        if "http_version" in msg:
            assert msg["http_version"] in HTTP_VERSIONS, msg["http_version"]
        for part in ("headers", "trailers"):
            for hname in msg.get(part, {}):
                assert hname == hname.lower(), f"{side}.{part} name not lower case: {hname}"
                assert not hname.startswith(":"), f"pseudo-header recorded as a header: {hname}"
        body = msg.get("body")
        if body is not None:
            assert body.get("encoding") in ("text", "base64"), body
            assert isinstance(body.get("truncated"), bool), "body.truncated must always be present"
    if "error" in rec:
        assert rec["error"].get("kind") in ERROR_KINDS, rec["error"]
        assert rec["error"].get("message"), "error.message must say something"


def parse_lines(data: bytes, source: str) -> list[dict]:
    """Complete lines only (a record being written may lack its newline yet)."""
    out = []
    for line in data.split(b"\n")[:-1]:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AssertionError(f"{source}: not a JSON line ({e}): {line[:300]!r}") from None
        check_record(rec)
        out.append(rec)
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {metric name: value summed over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


class Proxy:
    def __init__(self, workdir: Path, args=(), *, ca_dir: Path | None = None,
                 upstream_ca=(), outputs=None, more_outputs=(), env: dict | None = None,
                 flags_via_env=False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_dir = Path(ca_dir) if ca_dir else self.workdir / "ca"
        self.records_path = self.workdir / "records.jsonl"
        self.stdout_path = self.workdir / "stdout.jsonl"
        self.stderr_path = self.workdir / "stderr.log"
        self.outputs = list(outputs) if outputs is not None else [f"jsonl:{self.records_path}", "jsonl"]
        self.outputs += [o.replace("{dir}", str(self.workdir)) for o in more_outputs]
        self.upstream_ca = [str(p) for p in upstream_ca]
        self.extra_args = [str(a) for a in args]
        self.env_extra = dict(env or {})
        self.flags_via_env = flags_via_env
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def command(self) -> tuple[list[str], dict]:
        cmd = [flowtap_bin(), "proxy"]
        env = clean_env(self.env_extra)
        if self.flags_via_env:
            env["FLOWTAP_LISTEN"] = f"127.0.0.1:{self.port}"
            env["FLOWTAP_CA_DIR"] = str(self.ca_dir)
        else:
            cmd += ["--listen", f"127.0.0.1:{self.port}", "--ca-dir", str(self.ca_dir)]
        for o in self.outputs:
            cmd += ["--output", o]
        for ca in self.upstream_ca:
            cmd += ["--upstream-ca", ca]
        return cmd + self.extra_args, env

    def start(self) -> "Proxy":
        for attempt in range(3):
            self.port = free_port()
            cmd, env = self.command()
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                             env=env, cwd=self.workdir)
            try:
                self._wait_healthy()
                return self
            except _Exited:
                if "in use" in self.stderr_text().lower() and attempt < 2:
                    continue
                raise AssertionError(
                    f"flowtap exited with {self.proc.returncode} during startup\n"
                    f"command: {cmd}\nstderr:\n{self.stderr_text()[-4000:]}") from None
        raise AssertionError("flowtap could not bind a port")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_WAIT_S
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _Exited()
            try:
                status, _, body = self.get("/healthz", timeout=1)
                if status == 200:
                    assert body.strip() == b"ok", f"/healthz body: {body!r}"
                    return
                last = f"status {status}"
            except OSError as e:
                last = e
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"flowtap /healthz not ready after {STARTUP_WAIT_S}s ({last})\n"
                             f"{self.stderr_text()[-4000:]}")

    def stop(self, timeout: float = 20.0, sig=signal.SIGTERM) -> int:
        """SIGTERM, wait for the exit, return the exit code."""
        if self.proc is None:
            raise AssertionError("not started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"flowtap did not exit within {timeout}s of {sig!r}") from None
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --- addresses ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def requests_proxies(self) -> dict:
        return {"http": self.url, "https": self.url}

    # --- the proxy's own endpoints ----------------------------------------------------------
    def get(self, path: str, timeout: float = 5.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        status, _, body = self.get("/metrics")
        assert status == 200, f"/metrics status {status}"
        return parse_metrics(body.decode())

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of /metrics whose labels are exactly `labels` (None when absent)."""
        status, _, body = self.get("/metrics")
        assert status == 200, f"/metrics status {status}"
        for line in body.decode().splitlines():
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$', line.strip())
            if not m or m.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if found == labels:
                return float(m.group(3))
        return None

    # --- records --------------------------------------------------------------------------
    def read_records(self, path: Path | None = None) -> list[dict]:
        path = path or self.records_path
        if not path.exists():
            return []
        return parse_lines(path.read_bytes(), str(path))

    def records(self, count: int | None = None, *, timeout: float = RECORD_WAIT_S,
                path: Path | None = None, where=None) -> list[dict]:
        """All records so far (matching `where`). With `count`, waits until at least that many
        have arrived; without it, waits until the file has stopped growing for a moment."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.read_records(path)
            if where is not None:
                recs = [r for r in recs if where(r)]
            if count is None:
                time.sleep(0.3)
                again = self.read_records(path)
                if where is not None:
                    again = [r for r in again if where(r)]
                if len(again) == len(recs) or time.monotonic() > deadline:
                    return again
                continue
            if len(recs) >= count:
                return recs
            if time.monotonic() > deadline:
                everything = self.read_records(path)
                raise AssertionError(
                    f"expected at least {count} matching record(s) within {timeout}s, got {len(recs)}; "
                    f"all records: {json.dumps(everything, indent=1)[:6000]}\n"
                    f"stderr tail:\n{self.stderr_text()[-3000:]}")
            time.sleep(0.05)

    def record(self, where=None, timeout: float = RECORD_WAIT_S) -> dict:
        """The one record matching `where` (asserts there is exactly one after it appears)."""
        recs = self.records(1, where=where, timeout=timeout)
        time.sleep(0.2)
        recs = self.records(1, where=where, timeout=timeout)
        assert len(recs) == 1, f"expected one matching record, got {len(recs)}: {json.dumps(recs)[:4000]}"
        return recs[0]

    def stdout_records(self) -> list[dict]:
        return parse_lines(self.stdout_path.read_bytes(), "stdout")

    # --- diagnostics ----------------------------------------------------------------------
    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def vm_hwm_kib(self) -> int:
        """Peak resident set size of the running proxy, from /proc/PID/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


class _Exited(Exception):
    pass


def run_flowtap(*args, env: dict | None = None, timeout: float = 30.0, cwd=None) -> subprocess.CompletedProcess:
    """Runs a one-shot flowtap command (ca export, --version, ...)."""
    return subprocess.run([flowtap_bin(), *map(str, args)], env=clean_env(env), capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=cwd)
