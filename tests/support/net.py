"""Loopback networking helpers: free ports, waiting for listeners, starting and stopping servers."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (and, for 127.0.0.1, on ::1 too when possible)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if _free_on_v6(port):
            return port
    raise RuntimeError("no free port found")


def _free_on_v6(port: int) -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", port))
        return True
    except OSError as e:
        # EADDRNOTAVAIL: no IPv6 loopback on this machine; the port is as good as free.
        return e.errno != 98


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def dead_port() -> int:
    """A port with nothing listening (connections are refused)."""
    return free_port()


def wait_listening(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s: {last}")


def stop_process(proc) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing when `proc` is None or already gone."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_started(proc, name: str, ports, timeout: float = 10.0) -> None:
    """Waits until `proc` listens on each of `ports` on 127.0.0.1; RuntimeError if it exits
    first, TimeoutError if a port stays closed for `timeout` seconds."""
    for port in ports:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            try:
                wait_listening("127.0.0.1", port, timeout=0.2)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
