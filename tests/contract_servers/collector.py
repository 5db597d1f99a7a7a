"""A handle on the real `flowtap-collector` binary (built next to `flowtap`): start it on free
loopback ports, kill or stop it, start it again on the same ports, read back its files and its
/metrics with their labels."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from support.net import free_port
from support.proxy import clean_env, flowtap_bin, parse_lines

STARTUP_WAIT_S = 20.0


def collector_bin() -> str:
    b = os.environ.get("FLOWTAP_COLLECTOR_BIN")
    path = Path(b) if b else Path(flowtap_bin()).parent / "flowtap-collector"
    if not path.is_file():
        raise AssertionError(f"{path} does not exist (build with cargo build --release --workspace)")
    return str(path)


def parse_labeled_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(name, ((label, value), ...)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$', line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = tuple(sorted(
            (k, json.loads(f'"{v}"')) for k, v in re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Collector:
    def __init__(self, workdir: Path, *, sinks=None, args=(), env=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.records_dir = self.workdir / "records"
        # "{records}" in a sink spec stands for this collector's records directory.
        sinks = list(sinks) if sinks is not None else ["jsonl:{records}"]
        self.sinks = [s.replace("{records}", str(self.records_dir)) for s in sinks]
        self.args = [str(a) for a in args]
        self.env = dict(env or {})
        self.port = free_port()
        self.admin_port = free_port()
        self.stderr_path = self.workdir / "collector.stderr"
        self.stdout_path = self.workdir / "collector.stdout"
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [collector_bin(), "--listen", f"127.0.0.1:{self.port}",
               "--admin-listen", f"127.0.0.1:{self.admin_port}"]
        for s in self.sinks:
            cmd += ["--sink", s]
        return cmd + self.args

    def start(self) -> "Collector":
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=clean_env(self.env), cwd=self.workdir)
        deadline = time.monotonic() + STARTUP_WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flowtap-collector exited with {self.proc.returncode}\n"
                                     f"{self.stderr_text()[-3000:]}")
            try:
                status, body = self.get("/healthz", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"flowtap-collector not healthy after {STARTUP_WAIT_S}s\n"
                             f"{self.stderr_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: the collector gets no chance to finish anything."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("flowtap-collector did not stop within "
                                     f"{timeout}s of SIGTERM\n{self.stderr_text()[-3000:]}") from None
        return self.proc.returncode if self.proc else 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 5.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return parse_labeled_metrics(body.decode())

    def metric(self, name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        m = self.metrics()
        assert key in m, f"{key} not on /metrics: {sorted(k for k in m if k[0] == name)}"
        return m[key]

    def files(self) -> list[Path]:
        return sorted(self.records_dir.glob("flowtap-*.jsonl")) if self.records_dir.exists() else []

    def records(self) -> list[dict]:
        """Every record in the files, checked against the JSON Schema and the record contract."""
        out = []
        for f in self.files():
            out += parse_lines(f.read_bytes(), str(f))
        return out

    def wait_records(self, count: int, timeout: float = 20.0, where=None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            recs = [r for r in self.records() if where is None or where(r)]
            if len(recs) >= count or time.monotonic() > deadline:
                return recs
            time.sleep(0.1)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
