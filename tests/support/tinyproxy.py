"""tinyproxy (Debian's 1.11) on loopback from its own temporary configuration: the corporate egress
proxy that `flowtap proxy --upstream-proxy` sends its outbound traffic through. Optionally with
`BasicAuth`; optionally with a domain `Filter` (tinyproxy answers a filtered host with 403).

No `ConnectPort` line: tinyproxy then allows CONNECT to every port (tinyproxy.conf(5)). It runs
in the foreground (`-d`) as the user that starts it (no `User`/`Group`, so root keeps root and can
write the log; no pid file). Its log (LogLevel Info) has one line per request it read, e.g.

    CONNECT   Nov 30 00:46:45.250 [369]: Request (file descriptor 5): CONNECT localhost:8443 HTTP/1.1
    CONNECT   Nov 30 00:46:45.241 [369]: Request (file descriptor 5): GET http://127.0.0.1:8080/small HTTP/1.1

which `requests()` returns as "CONNECT localhost:8443 HTTP/1.1" / "GET http://... HTTP/1.1".

Note: tinyproxy 1.11 answers a request without Proxy-Authorization with 407, but one with wrong
credentials with 401 Unauthorized (reqs.c), for CONNECT and plain requests alike."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .net import free_port, stop_process, wait_started

CONFIG = """\
Port {port}
Listen 127.0.0.1
Timeout 30
LogFile "{log}"
LogLevel Info
MaxClients 100
Allow 127.0.0.1
DisableViaHeader Yes
"""

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.*)$")


@dataclass
class Tinyproxy:
    directory: Path
    port: int
    user: str | None = None
    password: str | None = None
    proc: subprocess.Popen | None = None

    # --- addresses ------------------------------------------------------------------------
    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """http://[USER:PASS@]127.0.0.1:PORT; without arguments, no credentials."""
        if user is None:
            return f"http://{self.addr}"
        return f"http://{user}:{password}@{self.addr}"

    def auth_url(self) -> str:
        """The URL with this instance's own (right) credentials."""
        assert self.user is not None, "this tinyproxy has no BasicAuth"
        return self.url(self.user, self.password)

    @property
    def basic_token(self) -> str:
        """base64(user:pass), as it travels in Proxy-Authorization."""
        return base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    # --- its log ------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.directory / "tinyproxy.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def mark(self) -> int:
        """A position in the log: `requests(since=mark)` sees only what came after it."""
        return len(self.log_path.read_bytes()) if self.log_path.exists() else 0

    def requests(self, since: int = 0) -> list[str]:
        """The request lines tinyproxy read (after `since`), e.g. 'CONNECT localhost:443 HTTP/1.1'."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_bytes()[since:].decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _REQUEST.search(line)
            if m:
                out.append(m.group(1).strip())
        return out

    def wait_request(self, prefix: str, since: int = 0, timeout: float = 5.0) -> str:
        """The first request line after `since` that starts with `prefix` (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.requests(since):
                if line.startswith(prefix):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"tinyproxy did not log a request starting with {prefix!r} within {timeout}s; "
                    f"requests since the mark: {self.requests(since)}\nlog tail:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    # --- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        stop_process(self.proc)


def start_tinyproxy(directory: Path, user: str | None = None, password: str | None = None,
                    filter_rules: list[str] | None = None) -> Tinyproxy:
    """tinyproxy on 127.0.0.1 and a free port; BasicAuth when `user` is given; a domain filter
    (POSIX extended regexes, hosts matching one are answered 403) when `filter_rules` is."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    last_err = ""
    for _attempt in range(3):
        port = free_port()
        conf = CONFIG.format(port=port, log=directory / "tinyproxy.log")
        if user is not None:
            conf += f"BasicAuth {user} {password}\n"
        if filter_rules is not None:
            (directory / "filter").write_text("".join(f"{r}\n" for r in filter_rules))
            conf += f'Filter "{directory / "filter"}"\nFilterType ere\n'
        (directory / "tinyproxy.conf").write_text(conf)
        (directory / "tinyproxy.log").unlink(missing_ok=True)
        with open(directory / "stderr.log", "wb") as err:
            proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(directory / "tinyproxy.conf")],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        tp = Tinyproxy(directory, port, user, password, proc)
        try:
            wait_started(proc, "tinyproxy", (port,))
            return tp
        except (RuntimeError, TimeoutError) as e:
            tp.stop()
            last_err = (f"{e}: {(directory / 'stderr.log').read_text(errors='replace')}\n"
                        f"{tp.log()[-3000:]}")
    raise RuntimeError(f"tinyproxy did not start: {last_err}")
