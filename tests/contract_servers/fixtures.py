"""Fixtures and helpers the collector tests share (imported into each test_collector*.py)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest
import requests

from .collector import Collector


@pytest.fixture
def start_collector(request, tmp_path):
    """start_collector(name=..., sinks=..., args=..., env=...) -> a running Collector; every one
    is stopped at teardown (SIGTERM must work) and must not have panicked."""
    started: list[Collector] = []
    request.node._flowtap_collectors = started

    def factory(name: str | None = None, **kw) -> Collector:
        c = Collector(tmp_path / (name or f"collector{len(started)}"), **kw)
        started.append(c)
        return c.start()

    yield factory
    problems = []
    for i, c in enumerate(started):
        if c.running:
            try:
                rc = c.stop()
                if rc != 0:
                    problems.append(f"collector #{i} exited with {rc} on SIGTERM")
            except AssertionError as e:
                problems.append(str(e))
        if "panicked at" in c.stderr_text():
            problems.append(f"collector #{i} panicked:\n{c.stderr_text()[-3000:]}")
    if problems:
        pytest.fail("\n".join(problems))


def get_through(proxy, urls, headers=None, verify=None, timeout: float = 30) -> list[int]:
    """GETs each URL through the proxy on one keep-alive session, each within `timeout`
    seconds; returns the statuses."""
    s = requests.Session()
    s.trust_env = False
    s.proxies = proxy.requests_proxies
    out = []
    for u in urls:
        r = s.get(u, headers=headers or {}, timeout=timeout, verify=verify if verify else True)
        out.append(r.status_code)
    s.close()
    return out


class Traffic(threading.Thread):
    """Sends `count` numbered requests (`?run=RUN&n=I`) through a proxy at a steady pace in the
    background; `sent` counts the ones that got a response."""

    def __init__(self, proxy, base_url: str, run: str, count: int, pause: float = 0.01):
        super().__init__(daemon=True)
        self.proxy, self.base_url, self.run_id = proxy, base_url, run
        self.count, self.pause = count, pause
        self.sent = 0
        self.errors: list[str] = []

    def run(self):
        s = requests.Session()
        s.trust_env = False
        s.proxies = self.proxy.requests_proxies
        for i in range(self.count):
            try:
                r = s.get(f"{self.base_url}?run={self.run_id}&n={i}", timeout=30)
                r.raise_for_status()
                self.sent += 1
            except requests.RequestException as e:
                self.errors.append(str(e))
            time.sleep(self.pause)
        s.close()


def numbers(records, run: str) -> Counter:
    """How often each request number of `run` appears in `records`."""
    out = Counter()
    for r in records:
        m = re.search(rf"[?&]run={run}&n=(\d+)", r.get("request", {}).get("url", ""))
        if m:
            out[int(m.group(1))] += 1
    return out


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
