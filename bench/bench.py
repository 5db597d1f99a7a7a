#!/usr/bin/env python3
"""flowtap benchmark driver (stdlib only). Started by bench/run, which installs the tools,
makes the throw-away PKI and starts nginx; this file runs the matrix and writes the results.

Matrix: for each scenario (scenario-major), `rounds` rounds; in each round every contender
runs once, in an order that rotates from round to round so that drift on the (shared,
noisy) machine hits all alike. Every run starts the proxy afresh (so VmHWM is that run's
peak), warms up with the same load, samples the proxy's CPU time, runs oha for a fixed
duration, samples CPU time and memory again and stops the proxy.

Reported per scenario and contender: the run with the median requests/s (with an even
count of runs, the lower of the two middle ones); every column of a row comes from that
one run. For (f) the run with the median resident memory is reported. All runs are kept
in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

CONTENDERS = ["direct", "flowtap", "mitmdump", "hudsucker"]

# name -> (description, body, scheme, oha flags)
SCENARIOS = {
    "a": ("plain HTTP 1 KiB, keep-alive, 32 connections", "1k", "http", ["-c", "32"]),
    "a1": ("plain HTTP 1 KiB, keep-alive, 1 connection", "1k", "http", ["-c", "1"]),
    "b": ("HTTPS 1 KiB, CONNECT + interception, HTTP/1.1 keep-alive, 32 connections", "1k", "https", ["-c", "32"]),
    "b1": ("HTTPS 1 KiB, CONNECT + interception, HTTP/1.1 keep-alive, 1 connection", "1k", "https", ["-c", "1"]),
    "c": ("HTTPS 1 KiB, CONNECT + interception, HTTP/2, 4 connections x 8 streams", "1k", "https", ["--http2", "-c", "4", "-p", "8"]),
    "d": ("HTTPS 1 KiB, new connection + TLS handshake per request, 32 concurrent", "1k", "https", ["--disable-keepalive", "-c", "32"]),
    "e": ("HTTPS 1 MiB, keep-alive, 32 connections", "1m", "https", ["-c", "32"]),
    "f": ("idle keep-alive connections held open (proxy memory)", "1k", "http", []),
}
SCENARIO_ORDER = list(SCENARIOS)

PROXY_START_TIMEOUT = 30.0  # mitmdump makes its CA and imports a lot on first start
START_FAILURES_TO_GIVE_UP = 2  # a contender that fails to start this often in a row is skipped after
OHA_REQUEST_TIMEOUT = "30s"  # bounds every request, so every oha run ends by itself
DEADLINE_ABORT = "aborted due to deadline"  # oha's name for requests cut off by -z


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 10s, 500ms, 1m)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def oha_duration(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"


# ------------------------------------------------------------------ /proc sampling

def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the whole process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


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


def children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


# ------------------------------------------------------------------ contenders

class Proxy:
    """One running proxy process (or none, for `direct`)."""

    def __init__(self, name: str, proc: subprocess.Popen | None, port: int | None, cacert: Path, logfile: Path | None):
        self.name = name
        self.proc = proc
        self.port = port
        self.cacert = cacert
        self.logfile = logfile

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class StartError(RuntimeError):
    """The proxy process did not come up."""


class Launcher:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work) / "contenders"
        self.work.mkdir(parents=True, exist_ok=True)
        self.seq = 0

    def available(self, name: str) -> str | None:
        """None if the contender can run, else why not."""
        binary = {"flowtap": self.args.flowtap, "mitmdump": self.args.mitmdump, "hudsucker": self.args.hudsucker}.get(name)
        if binary and not os.access(binary, os.X_OK):
            return f"binary not found: {binary}"
        return None

    def command(self, name: str, port: int, run_dir: Path) -> tuple[list[str], Path, Path | None]:
        """argv, the CA file clients must trust, the proxy's record/log file."""
        a = self.args
        listen = f"127.0.0.1:{port}"
        ca_dir = self.work / name / "ca"  # kept across runs: the CA is made once
        if name == "flowtap":
            out = run_dir / "records.jsonl"
            return ([a.flowtap, "proxy", "--listen", listen, "--ca-dir", str(ca_dir),
                     "--output", f"jsonl:{out}", "--upstream-ca", a.upstream_ca], ca_dir / "ca.pem", out)
        if name == "mitmdump":
            return ([a.mitmdump, "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                     "--set", f"confdir={ca_dir}", "--set", f"ssl_verify_upstream_trusted_ca={a.upstream_ca}"],
                    ca_dir / "mitmproxy-ca-cert.pem", None)
        if name == "hudsucker":
            out = run_dir / "requests.log"
            return ([a.hudsucker, "--listen", listen, "--ca-dir", str(ca_dir),
                     "--upstream-ca", a.upstream_ca, "--log", str(out)], ca_dir / "ca.pem", out)
        raise ValueError(name)

    def start(self, name: str) -> Proxy:
        if name == "direct":
            return Proxy(name, None, None, Path(self.args.upstream_ca), None)
        self.seq += 1
        run_dir = self.work / name / f"run{self.seq:03d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv, cacert, out = self.command(name, port, run_dir)
        (self.work / name / "ca").mkdir(parents=True, exist_ok=True)
        stderr = open(run_dir / "stderr.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
        proxy = Proxy(name, proc, port, cacert, out)
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if cacert.exists() and cacert.stat().st_size > 0:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.5).close()
                    return proxy
                except OSError:
                    pass
            time.sleep(0.05)
        proxy.stop()
        tail = (run_dir / "stderr.log").read_text(errors="replace")[-1500:]
        raise StartError(f"{name} did not start (exit {proc.returncode}): {' '.join(argv)}\n{tail}")


# ------------------------------------------------------------------ load runs

def target_url(args, scenario: str) -> str:
    _, body, scheme, _ = SCENARIOS[scenario]
    port = args.https_port if scheme == "https" else args.http_port
    return f"{scheme}://localhost:{port}/{body}"


def oha_argv(args, scenario: str, proxy: Proxy, seconds: float) -> list[str]:
    _, _, scheme, flags = SCENARIOS[scenario]
    argv = [args.oha, "--no-tui", "--output-format", "json", "-z", oha_duration(seconds),
            "-t", OHA_REQUEST_TIMEOUT, *flags]
    if scheme == "https":
        argv += ["--cacert", str(proxy.cacert)]
    if proxy.url:
        argv += ["-x", proxy.url]
    return argv + [target_url(args, scenario)]


def run_oha(argv: list[str], seconds: float) -> dict:
    # oha stops itself after -z; the timeout here is only a guard against a hang.
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90)
    if res.returncode != 0:
        raise RuntimeError(f"oha exited {res.returncode}: {res.stderr.strip()[-800:]}")
    return json.loads(res.stdout)


def summarize_oha(data: dict) -> dict:
    s = data["summary"]
    statuses = {k: int(v) for k, v in (data.get("statusCodeDistribution") or {}).items()}
    errors = {k: int(v) for k, v in (data.get("errorDistribution") or {}).items()}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    bad_status = sum(v for k, v in statuses.items() if not k.startswith("2"))
    aborted = errors.get(DEADLINE_ABORT, 0)
    failed = sum(v for k, v in errors.items() if k != DEADLINE_ABORT)
    total_s = s.get("total") or 0.0
    lat = data.get("latencyPercentiles") or {}
    return {
        "requests_ok": ok,
        "elapsed_s": total_s,
        "rps": ok / total_s if total_s else 0.0,
        "mbps": (s.get("totalData") or 0) / total_s / 1e6 if total_s else 0.0,
        "p50_ms": lat["p50"] * 1000 if lat.get("p50") is not None else None,
        "p99_ms": lat["p99"] * 1000 if lat.get("p99") is not None else None,
        "errors": failed + bad_status,
        "aborted_at_deadline": aborted,
        "status_codes": statuses,
        "error_kinds": errors,
        "oha_summary": s,
        "latency_percentiles_s": lat,
    }


def nginx_worker_cpu(args) -> float | None:
    kids = children(args.nginx_pid)
    vals = [cpu_seconds(k) for k in kids]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def load_run(args, launcher: Launcher, scenario: str, name: str) -> dict:
    run: dict = {"scenario": scenario, "contender": name}
    proxy = launcher.start(name)
    try:
        warm = summarize_oha(run_oha(oha_argv(args, scenario, proxy, args.warmup), args.warmup))
        run["warmup"] = {"requests_ok": warm["requests_ok"], "errors": warm["errors"]}
        if warm["requests_ok"] == 0:
            raise RuntimeError(f"no successful request in the warm-up: {warm['error_kinds'] or warm['status_codes']}")
        argv = oha_argv(args, scenario, proxy, args.duration)
        run["oha_argv"] = argv
        cpu0 = cpu_seconds(proxy.pid) if proxy.pid else None
        ng0 = nginx_worker_cpu(args)
        data = run_oha(argv, args.duration)
        cpu1 = cpu_seconds(proxy.pid) if proxy.pid else None
        ng1 = nginx_worker_cpu(args)
        run.update(summarize_oha(data))
        if not proxy.alive():
            raise RuntimeError(f"{name} exited during the run (code {proxy.proc.returncode})")
        if cpu0 is not None and cpu1 is not None:
            run["cpu_s"] = cpu1 - cpu0
            run["cpu_us_per_req"] = (cpu1 - cpu0) / run["requests_ok"] * 1e6 if run["requests_ok"] else None
        if ng0 is not None and ng1 is not None and run["requests_ok"]:
            run["nginx_cpu_us_per_req"] = (ng1 - ng0) / run["requests_ok"] * 1e6
        if proxy.pid:
            mem = mem_kib(proxy.pid)
            run["hwm_kib"] = mem.get("VmHWM")
            run["rss_kib"] = mem.get("VmRSS")
        run["ok"] = True
    finally:
        proxy.stop()
    count_records(args, proxy, run)
    return run


def count_records(args, proxy: Proxy, run: dict) -> None:
    """Lines the proxy wrote (flowtap: records; hudsucker: log lines), then drop the file:
    a full run would otherwise leave gigabytes of records behind."""
    if not (proxy.logfile and proxy.logfile.exists()):
        return
    with open(proxy.logfile, "rb") as f:
        run["proxy_log_lines"] = sum(1 for _ in f)
    run["proxy_log_bytes"] = proxy.logfile.stat().st_size
    served = run.get("requests_ok", 0) + run.get("warmup", {}).get("requests_ok", 0)
    run["responses_served"] = served
    if not args.keep_work:
        proxy.logfile.unlink()


def idle_run(args, launcher: Launcher, name: str) -> dict:
    run: dict = {"scenario": "f", "contender": name}
    proxy = launcher.start(name)
    try:
        conns = args.idle_conns
        # A proxy holds a client socket and (if it keeps one) an upstream socket per
        # connection. When the fd limit cannot hold both, nginx closes the upstream ones
        # 1 s after the response (IDLE_PORT), so the client connections alone are measured.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        short_upstream = proxy.pid is not None and nofile < 2 * conns + 1000
        port = args.idle_port if short_upstream else args.http_port
        argv = [sys.executable, str(HERE / "idle_conns.py"), "--conns", str(conns), "--hold", str(args.idle_hold),
                "--target", f"http://localhost:{port}/1k"]
        if proxy.url:
            argv += ["--proxy", f"127.0.0.1:{proxy.port}", "--pid", str(proxy.pid)]
        run["argv"] = argv
        run["upstream_keepalive"] = "1s (fd limit)" if short_upstream else "120s"
        cpu0 = cpu_seconds(proxy.pid) if proxy.pid else None
        res = subprocess.run(argv, capture_output=True, text=True, timeout=args.idle_hold + 300)
        if res.returncode != 0:
            raise RuntimeError(f"idle_conns.py exited {res.returncode}: {res.stderr.strip()[-800:]}")
        out = json.loads(res.stdout)
        run.update(out)
        if cpu0 is not None:
            cpu1 = cpu_seconds(proxy.pid)
            if cpu1 is not None:
                run["cpu_s"] = cpu1 - cpu0
        if not proxy.alive():
            raise RuntimeError(f"{name} exited during the run (code {proxy.proc.returncode})")
        run["errors"] = out["failed"] + (out["ok"] - out["alive_at_sample"])
        run["ok"] = True
    finally:
        proxy.stop()
    return run


def soak_run(args, launcher: Launcher, name: str, scenarios: list[str]) -> dict:
    """One proxy process for the whole soak: `args.soak` rounds, each running every scenario
    in turn for `args.duration`, with the proxy's memory sampled after every step."""
    run: dict = {"contender": name, "steps": []}
    proxy = launcher.start(name)
    try:
        run["start"] = mem_kib(proxy.pid)
        for rnd in range(1, args.soak + 1):
            for sc in scenarios:
                data = summarize_oha(run_oha(oha_argv(args, sc, proxy, args.duration), args.duration))
                if not proxy.alive():
                    raise RuntimeError(f"{name} exited during the soak (code {proxy.proc.returncode})")
                mem = mem_kib(proxy.pid)
                run["steps"].append({"round": rnd, "scenario": sc, "requests_ok": data["requests_ok"],
                                     "errors": data["errors"], "cut_off": data["aborted_at_deadline"],
                                     "rss_kib": mem.get("VmRSS"),
                                     "hwm_kib": mem.get("VmHWM")})
                log(f"soak {name} round {rnd}/{args.soak} ({sc}): {data['requests_ok']:,} ok, "
                    f"errors {data['errors']}, RSS {fmt(mem.get('VmRSS', 0) / 1024, '.1f')} MiB")
        run["ok"] = True
    except Exception as e:  # noqa: BLE001 - a failed soak is a result
        run["ok"], run["error"] = False, f"{type(e).__name__}: {e}"
    finally:
        proxy.stop()
    run["requests_ok"] = sum(s["requests_ok"] for s in run["steps"])
    run["errors"] = sum(s["errors"] for s in run["steps"])
    run["cut_off"] = sum(s["cut_off"] for s in run["steps"])
    count_records(args, proxy, run)
    return run


def soak_markdown(meta: dict, runs: list[dict], scenarios: list[str]) -> str:
    lines = [f"flowtap soak — {meta['date']} — {meta['machine']}", "",
             f"One proxy process per contender; {meta['soak_rounds']} rounds, each running "
             f"{', '.join(f'({s})' for s in scenarios)} in turn for {meta['duration_s']:g} s; memory "
             "sampled after every step. RSS per round = the largest VmRSS sampled in that round. "
             "Cut off = requests in flight when a step's time ran out (oha drops them; the proxy "
             "may still record them).", "",
             "| contender | requests | errors | cut off | records / served | RSS round 1 MiB | "
             "RSS last round MiB | VmHWM MiB | RSS MiB per round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        per_round: dict[int, int] = {}
        for st in run["steps"]:
            per_round[st["round"]] = max(per_round.get(st["round"], 0), st["rss_kib"] or 0)
        rounds = [per_round[r] / 1024 for r in sorted(per_round)]
        hwm = max((st["hwm_kib"] or 0 for st in run["steps"]), default=0) / 1024
        recs = (f"{run['proxy_log_lines']:,} / {run['responses_served']:,}"
                if "proxy_log_lines" in run else "—")
        lines.append(f"| {run['contender']} | {run['requests_ok']:,} | {run['errors']} | {run['cut_off']:,} | {recs} | "
                     f"{fmt(rounds[0] if rounds else None, '.1f')} | {fmt(rounds[-1] if rounds else None, '.1f')} | "
                     f"{hwm:.1f} | {', '.join(f'{r:.1f}' for r in rounds)} |")
    failed = [r for r in runs if not r.get("ok")]
    if failed:
        lines += ["", *[f"- {r['contender']}: {r['error'].splitlines()[0][:300]}" for r in failed]]
    return "\n".join(lines)


def soak_main(args, launcher: Launcher, contenders: list[str], scenarios: list[str], meta: dict) -> int:
    # (d) opens a connection per request and (f) holds idle ones: neither is a steady load.
    scenarios = [s for s in scenarios if s not in ("d", "f")]
    if not scenarios:
        log("--soak: no load scenario left (d and f are not soaked)")
        return 2
    contenders = [c for c in contenders if c != "direct"]
    meta.update({"soak_rounds": args.soak, "scenarios": {s: SCENARIOS[s][0] for s in scenarios},
                 "contenders": contenders})
    runs = []
    for name in contenders:
        try:
            runs.append(soak_run(args, launcher, name, scenarios))
        except StartError as e:
            runs.append({"contender": name, "ok": False, "error": f"StartError: {e}", "steps": [],
                         "requests_ok": 0, "errors": 0, "cut_off": 0})
    md = soak_markdown(meta, runs, scenarios)
    write_results(args, "soak-", "", {"meta": meta, "runs": runs}, md)
    return 0 if all(r.get("ok") for r in runs) else 1


def write_results(args, prefix: str, suffix: str, data: dict, md: str) -> None:
    """`{prefix}latest.{json,md}`, overwritten by every run, and stamped copies that keep
    earlier runs; then the table on stdout."""
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(data, indent=1) + "\n"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + suffix
    for name in (f"{prefix}latest", f"{prefix}{stamp}"):
        (out_dir / f"{name}.json").write_text(raw)
        (out_dir / f"{name}.md").write_text(md + "\n")
    print(md)
    log(f"raw results: {out_dir / f'{prefix}latest.json'}; table: {out_dir / f'{prefix}latest.md'}")


# ------------------------------------------------------------------ reporting

def median_run(runs: list[dict], key: str) -> dict | None:
    good = [r for r in runs if r.get("ok") and r.get(key) is not None]
    if not good:
        # `direct` in (f) has no proxy memory to rank by: report its first good run.
        return next((r for r in runs if r.get("ok")), None)
    good.sort(key=lambda r: r[key])
    return good[(len(good) - 1) // 2]


def summarize(runs: list[dict], scenarios: list[str], contenders: list[str]) -> dict:
    summary: dict = {}
    for sc in scenarios:
        rows = {}
        for name in contenders:
            mine = [r for r in runs if r["scenario"] == sc and r["contender"] == name]
            if not mine:
                continue
            key = "rss_kib" if sc == "f" else "rps"
            pick = median_run(mine, key)
            row = {"runs": len(mine), "failed_runs": sum(1 for r in mine if not r.get("ok")),
                   "all_" + key: [r.get(key) if r.get("ok") else "fail" for r in mine],
                   "failures": [r["error"] for r in mine if not r.get("ok") and r.get("error")]}
            if pick:
                row["reported"] = {k: v for k, v in pick.items() if k not in ("oha_summary", "latency_percentiles_s")}
            rows[name] = row
        d = rows.get("direct", {}).get("reported")
        m = rows.get("mitmdump", {}).get("reported")
        for name, row in rows.items():
            rep = row.get("reported")
            if not rep or sc == "f":
                continue
            metric = "mbps" if sc == "e" else "rps"
            if d and d.get(metric):
                row["share_of_direct"] = rep[metric] / d[metric]
            if m and m.get(metric):
                row["ratio_to_mitmdump"] = rep[metric] / m[metric]
        summary[sc] = rows
    return summary


def _rep(summary, sc, name):
    return summary.get(sc, {}).get(name, {}).get("reported")


def evaluate_targets(summary: dict, idle_conns: int) -> list[dict]:
    """The issue's targets for flowtap; each is PASS, MISS or n/a (data missing)."""
    out = []

    def check(sc, text, fn):
        try:
            ok, measured = fn()
        except (TypeError, KeyError, ZeroDivisionError):
            ok, measured = None, "n/a"
        out.append({"scenario": sc, "target": text, "measured": measured,
                    "status": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    def ratio(sc, a, b, metric="rps"):
        return _rep(summary, sc, a)[metric] / _rep(summary, sc, b)[metric]

    def ge(sc, other, factor, metric="rps"):
        def fn():
            r = ratio(sc, "flowtap", other, metric)
            return r >= factor, f"{r:.2f}x"
        return fn

    def share(sc, frac, metric="rps"):
        def fn():
            r = ratio(sc, "flowtap", "direct", metric)
            return r >= frac, f"{r * 100:.0f}%"
        return fn

    check("b", ">= 40x mitmdump req/s", ge("b", "mitmdump", 40))
    check("b", ">= hudsucker req/s", ge("b", "hudsucker", 1.0))
    check("b", ">= 45% of direct req/s", share("b", 0.45))
    check("c", ">= 40x mitmdump req/s", ge("c", "mitmdump", 40))
    check("c", ">= 1.5x hudsucker req/s", ge("c", "hudsucker", 1.5))
    check("c", ">= 40% of direct req/s", share("c", 0.40))
    check("a", ">= 50% of direct req/s", share("a", 0.50))
    check("d", ">= hudsucker req/s", ge("d", "hudsucker", 1.0))
    check("d", ">= 80% of direct req/s", share("d", 0.80))
    check("e", ">= 75% of direct MB/s", share("e", 0.75, "mbps"))

    def e_rss():
        h = _rep(summary, "e", "flowtap")["hwm_kib"] / 1024
        return h <= 32, f"{h:.1f} MiB"
    check("e", "flowtap peak RSS <= 32 MiB", e_rss)

    def b1_p50():
        f, d = _rep(summary, "b1", "flowtap")["p50_ms"], _rep(summary, "b1", "direct")["p50_ms"]
        return f <= 2 * d, f"{f:.3f} ms vs direct {d:.3f} ms ({f / d:.2f}x)"
    check("b1", "flowtap p50 <= 2x direct p50", b1_p50)

    def f_rss():
        r = _rep(summary, "f", "flowtap")
        mib = r["rss_kib"] / 1024
        note = "" if r["conns"] >= 10_000 else f" (only {r['conns']} connections: not the target's 10,000)"
        ok = mib <= 200 and r["alive_at_sample"] >= 10_000 if r["conns"] >= 10_000 else None
        if ok is None:
            return None, f"{mib:.1f} MiB at {r['alive_at_sample']} idle{note}"
        return ok, f"{mib:.1f} MiB at {r['alive_at_sample']} idle"
    check("f", "flowtap RSS <= 200 MiB at 10,000 idle connections", f_rss)

    def b_cpu():
        f, h = _rep(summary, "b", "flowtap")["cpu_us_per_req"], _rep(summary, "b", "hudsucker")["cpu_us_per_req"]
        return f <= h, f"{f:.1f} vs {h:.1f} us/req"
    check("b", "CPU/request <= hudsucker's", b_cpu)
    return out


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def markdown(meta: dict, summary: dict, targets: list[dict], scenarios: list[str], contenders: list[str],
             runs: list[dict]) -> str:
    runs_by: dict = {}
    for r in runs:
        runs_by.setdefault((r["scenario"], r["contender"]), []).append(r)
    lines = []
    lines.append(f"flowtap bench — {meta['date']} — {meta['machine']}")
    lines.append("")
    lines.append(f"{meta['rounds']} rounds per scenario, {meta['duration_s']:g} s timed after {meta['warmup_s']:g} s warm-up, "
                 "contenders in rotating order; each row is the run with the median req/s "
                 "(lower middle for an even count; (f): median RSS). `direct` has no proxy, so it has no CPU or RSS. "
                 "CPU = proxy utime+stime per request; nginx = nginx worker's utime+stime per request; peak RSS = proxy VmHWM (restarted every run); "
                 "MB/s = 10^6 bytes of body per second; errors = failed requests + non-2xx.")
    lines.append("")
    load = [s for s in scenarios if s != "f"]
    if load:
        lines.append("| scen. | contender | req/s | % direct | × mitmdump | p50 ms | p99 ms | MB/s | CPU µs/req | nginx µs/req | peak RSS MiB | errors | req/s of all runs |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for sc in load:
            for name in contenders:
                row = summary.get(sc, {}).get(name)
                if row is None:
                    continue
                rep = row.get("reported")
                runs = ", ".join(v if isinstance(v, str) else fmt(v, ".0f") for v in row["all_rps"])
                if not rep:
                    lines.append(f"| {sc} | {name} | FAILED | | | | | | | | | | {runs} |")
                    continue
                hwm = rep.get("hwm_kib")
                lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    sc, name, fmt(rep["rps"], ",.0f"),
                    fmt(row.get("share_of_direct") and row["share_of_direct"] * 100, ".0f") + ("%" if row.get("share_of_direct") else ""),
                    fmt(row.get("ratio_to_mitmdump"), ".1f"),
                    fmt(rep.get("p50_ms"), ".3f"), fmt(rep.get("p99_ms"), ".2f"), fmt(rep.get("mbps"), ".1f"),
                    fmt(rep.get("cpu_us_per_req"), ".1f"), fmt(rep.get("nginx_cpu_us_per_req"), ".1f"),
                    fmt(hwm and hwm / 1024, ".1f"),
                    rep.get("errors", 0) + row["failed_runs"], runs))
        lines.append("")
    if "f" in scenarios and summary.get("f"):
        lines.append("(f) idle keep-alive connections: each sends one proxied plain-HTTP request, then idles; memory sampled while all are held.")
        lines.append("")
        lines.append("| contender | connections | alive at sample | VmRSS MiB | VmHWM MiB | KiB per conn | setup s | upstream keep-alive | errors | RSS MiB of all runs |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
        for name in contenders:
            row = summary["f"].get(name)
            if row is None:
                continue
            rep = row.get("reported")
            runs = ", ".join(v if isinstance(v, str) else fmt(v and v / 1024, ".1f") for v in row["all_rss_kib"])
            if not rep:
                lines.append(f"| {name} | FAILED | | | | | | | | {runs} |")
                continue
            rss, hwm = rep.get("rss_kib"), rep.get("hwm_kib")
            per = (rss - rep["rss_before_kib"]) / max(rep["alive_at_sample"], 1) if rss and rep.get("rss_before_kib") else None
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                name, rep["conns"], rep["alive_at_sample"], fmt(rss and rss / 1024, ".1f"), fmt(hwm and hwm / 1024, ".1f"),
                fmt(per, ".1f"), fmt(rep.get("setup_s"), ".1f"), rep.get("upstream_keepalive", ""),
                rep.get("errors", 0) + row["failed_runs"], runs or "—"))
        lines.append("")
    if targets:
        lines.append("Targets (flowtap):")
        lines.append("")
        lines.append("| scen. | target | measured | result |")
        lines.append("|---|---|---|---|")
        for t in targets:
            if t["scenario"] in scenarios:
                lines.append(f"| {t['scenario']} | {t['target']} | {t['measured']} | {t['status']} |")
        lines.append("")
    short = []
    for sc in scenarios:
        if sc == "f":
            continue
        for name in contenders:
            for r in runs_by.get((sc, name), []):
                lines_, served = r.get("proxy_log_lines"), r.get("responses_served")
                if r.get("ok") and lines_ is not None and served and lines_ < served * 0.995:
                    short.append(f"- ({sc}) {name} round {r['round']}: {lines_:,} lines written for {served:,} "
                                 f"2xx responses served (warm-up + timed): {100 * (served - lines_) / served:.1f}% missing")
    if short:
        lines.append("Records / log lines missing (proxy wrote fewer lines than it served responses):")
        lines.append("")
        lines += short
        lines.append("")
    failures = [(sc, name, f) for sc in scenarios for name, row in summary.get(sc, {}).items() for f in row.get("failures", [])]
    if failures:
        lines.append("Failed runs:")
        lines.append("")
        for sc, name, f in failures:
            lines.append(f"- ({sc}) {name}: {f.splitlines()[0][:300]}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------ main

def versions(args) -> dict:
    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            return None
    v = {
        "oha": cmd([args.oha, "--version"]),
        "nginx": (subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()),
        "python": platform.python_version(),
    }
    if os.access(args.mitmdump, os.X_OK):
        out = cmd([args.mitmdump, "--version"]) or ""
        v["mitmproxy"] = out.splitlines()[0] if out else None
    lock = HERE / "hudsucker-proxy" / "Cargo.lock"
    if lock.exists():
        m = re.search(r'name = "hudsucker"\nversion = "([^"]+)"', lock.read_text())
        v["hudsucker"] = m.group(1) if m else None
    v["flowtap_git"] = cmd(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"])
    return v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s timed, 1 s warm-up, 2 rounds, 1,000 idle connections")
    p.add_argument("--scenarios", help="comma list of " + ",".join(SCENARIO_ORDER) + " (default all; --soak: a,b,c,e)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list of " + ",".join(CONTENDERS))
    p.add_argument("--duration", type=parse_duration, help="timed part of each run (default 10s, quick 2s)")
    p.add_argument("--warmup", type=parse_duration, help="warm-up before each timed run (default 2s, quick 1s)")
    p.add_argument("--rounds", type=int, help="runs per scenario and contender (default 3, quick 2)")
    p.add_argument("--idle-conns", type=int, help="(f) connections (default 10000, quick 1000)")
    p.add_argument("--idle-hold", type=float, default=5.0, help="(f) seconds to hold all connections idle before sampling")
    p.add_argument("--no-build", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir (logs, records)")
    p.add_argument("--soak", type=int, metavar="ROUNDS",
                   help="instead of the matrix: keep one process per proxy for ROUNDS rounds of the load "
                        "scenarios (default a,b,c,e; --duration each) and sample its memory after every step")
    # Set by bench/run:
    for flag in ("--work", "--upstream-ca", "--oha", "--mitmdump", "--hudsucker", "--flowtap", "--results"):
        p.add_argument(flag, required=True, help=argparse.SUPPRESS)
    for flag in ("--http-port", "--https-port", "--idle-port", "--nginx-pid"):
        p.add_argument(flag, type=int, required=True, help=argparse.SUPPRESS)
    args = p.parse_args()

    q = args.quick
    args.duration = args.duration or (2.0 if q else 10.0)
    args.warmup = args.warmup or (1.0 if q else 2.0)
    args.rounds = args.rounds or (2 if q else 3)
    args.idle_conns = args.idle_conns or (1000 if q else 10_000)
    if args.soak is not None and args.soak < 1:
        p.error("--soak: at least 1 round")
    default_scenarios = "a,b,c,e" if args.soak else ",".join(SCENARIO_ORDER)
    scenarios = [s.strip() for s in (args.scenarios or default_scenarios).split(",") if s.strip()]
    wanted = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"--scenarios: unknown scenario {s!r}")
    for c in wanted:
        if c not in CONTENDERS:
            p.error(f"--contenders: unknown contender {c!r}")
    scenarios = [s for s in SCENARIO_ORDER if s in scenarios]

    launcher = Launcher(args)
    contenders, missing = [], {}
    for c in [c for c in CONTENDERS if c in wanted]:
        why = launcher.available(c)
        if why:
            missing[c] = why
            log(f"contender {c} skipped: {why}")
        else:
            contenders.append(c)

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.release()}, {os.cpu_count()} cores (shared, noisy)",
        "quick": q, "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
        "idle_conns": args.idle_conns, "idle_hold_s": args.idle_hold,
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "scenarios": {s: SCENARIOS[s][0] for s in scenarios}, "contenders": contenders,
        "missing_contenders": missing, "versions": versions(args),
        "report": "median run by req/s (lower middle for even counts); (f): median run by VmRSS",
    }
    if args.soak:
        return soak_main(args, launcher, contenders, scenarios, meta)
    runs: list[dict] = []
    total = len(scenarios) * args.rounds * len(contenders)
    n = 0
    start_failures = {c: 0 for c in contenders}
    for si, sc in enumerate(scenarios):
        for rnd in range(args.rounds):
            k = (rnd + si) % len(contenders) if contenders else 0
            order = contenders[k:] + contenders[:k]
            for name in order:
                n += 1
                t0 = time.monotonic()
                if start_failures[name] >= START_FAILURES_TO_GIVE_UP:
                    run = {"scenario": sc, "contender": name, "ok": False,
                           "error": f"skipped: {name} failed to start {start_failures[name]} times in a row"}
                else:
                    try:
                        run = idle_run(args, launcher, name) if sc == "f" else load_run(args, launcher, sc, name)
                        start_failures[name] = 0
                    except StartError as e:
                        start_failures[name] += 1
                        run = {"scenario": sc, "contender": name, "ok": False, "error": f"StartError: {e}"}
                    except Exception as e:  # noqa: BLE001 - a failed run is a result, the matrix goes on
                        start_failures[name] = 0
                        run = {"scenario": sc, "contender": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
                run["round"] = rnd + 1
                runs.append(run)
                if run.get("ok"):
                    if sc == "f":
                        what = f"{run['alive_at_sample']} alive, RSS {fmt(run.get('rss_kib') and run['rss_kib'] / 1024, '.1f')} MiB"
                    else:
                        what = f"{run['rps']:,.0f} req/s, {run['mbps']:.1f} MB/s, p50 {fmt(run['p50_ms'], '.3f')} ms, errors {run['errors']}"
                else:
                    what = "FAILED: " + run["error"].splitlines()[0][:200]
                log(f"[{n}/{total}] ({sc}) round {rnd + 1} {name}: {what} ({time.monotonic() - t0:.0f}s)")

    summary = summarize(runs, scenarios, contenders)
    targets = evaluate_targets(summary, args.idle_conns) if "flowtap" in contenders or "flowtap" in missing else []
    md = markdown(meta, summary, targets, scenarios, contenders, runs)
    if missing:
        md += "\nNot run: " + "; ".join(f"{k} ({v})" for k, v in missing.items()) + "\n"
    write_results(args, "", "-quick" if q else "",
                  {"meta": meta, "summary": summary, "targets": targets, "runs": runs}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
