#!/usr/bin/env python3
"""Scenario (f) client (stdlib only): open N keep-alive connections to a forward proxy
(or straight to the server when no --proxy is given), send one plain-HTTP request on each
and read its response, then hold every connection idle for --hold seconds and read the
proxy's VmRSS / VmHWM from /proc. Prints one JSON object on stdout.

Bounded: connection set-up stops after --setup-timeout seconds, each connection's request
after --timeout seconds; then all sockets are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


def mem_kib(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class BadStatus(Exception):
    """A response that was not 2xx."""


async def one(host: str, port: int, request: bytes, timeout: float, held: list, errors: dict) -> None:
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        await asyncio.wait_for(reader.readexactly(length), timeout)
        if not status.startswith(b"2"):
            raise BadStatus(f"status {status.decode(errors='replace')}")
        held.append((reader, writer))
        writer = None
    except BadStatus as e:
        errors[str(e)] = errors.get(str(e), 0) + 1
    except Exception as e:  # noqa: BLE001 - counted by kind
        kind = type(e).__name__
        errors[kind] = errors.get(kind, 0) + 1
    finally:
        if writer is not None:
            writer.close()


async def main_async(args) -> dict:
    url = urlsplit(args.target)
    if args.proxy:
        host, _, port = args.proxy.rpartition(":")
        path = args.target  # absolute-form, as a client of a forward proxy sends it
    else:
        host, port = url.hostname, url.port or 80
        path = url.path or "/"
    request = (f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUser-Agent: flowtap-bench-idle\r\n"
               f"Accept: */*\r\n\r\n").encode()
    before = mem_kib(args.pid) if args.pid else {}
    held: list = []
    errors: dict = {}
    sem = asyncio.Semaphore(args.concurrency)

    async def limited():
        async with sem:
            await one(host, int(port), request, args.timeout, held, errors)

    t0 = time.monotonic()
    tasks = [asyncio.create_task(limited()) for _ in range(args.conns)]
    done, pending = await asyncio.wait(tasks, timeout=args.setup_timeout)
    for t in pending:
        t.cancel()
    if pending:
        errors["setup_timeout"] = errors.get("setup_timeout", 0) + len(pending)
    setup_s = time.monotonic() - t0

    await asyncio.sleep(args.hold)
    # A connection the proxy closed shows as EOF on our (always reading) stream.
    alive = sum(1 for reader, _ in held if not reader.at_eof())
    mem = mem_kib(args.pid) if args.pid else {}
    for _, writer in held:
        writer.close()
    return {
        "conns": args.conns,
        "ok": len(held),
        "failed": args.conns - len(held),
        "alive_at_sample": alive,
        "setup_s": setup_s,
        "hold_s": args.hold,
        "rss_before_kib": before.get("VmRSS"),
        "rss_kib": mem.get("VmRSS"),
        "hwm_kib": mem.get("VmHWM"),
        "error_kinds": errors,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="http://host:port/path of the upstream")
    p.add_argument("--proxy", help="HOST:PORT of the forward proxy (none: connect to the target)")
    p.add_argument("--pid", type=int, help="process whose memory to read")
    p.add_argument("--conns", type=int, default=10_000)
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=256, help="connections being set up at once")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--setup-timeout", type=float, default=180.0)
    args = p.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
