"""At-least-once delivery to the collector, measured: the collector is SIGKILLed in the middle of
a steady stream of traffic and started again on the same port and files. With --spool nothing
is lost and nothing is written twice; without it the proxy's small buffer overflows during the
outage, and every lost record is counted as dropped. The spool also survives a proxy restart."""

from __future__ import annotations

import re
import time

from support.proxy import run_flowtap
from contract_servers.fixtures import Traffic, get_through, numbers, start_collector, wait_until  # noqa: F401

REQUESTS = 400
OUTAGE_S = 2.0


def stream_through_outage(proxy, collector, nginx, run: str) -> Traffic:
    """Starts the traffic, kills the collector once records flow, restarts it after OUTAGE_S,
    and waits for the traffic to finish."""
    traffic = Traffic(proxy, nginx.url("/small"), run, REQUESTS)
    traffic.start()
    wait_until(lambda: len(numbers(collector.records(), run)) >= 60, 30, "records to reach the collector")
    collector.kill()
    time.sleep(OUTAGE_S)
    collector.start()
    traffic.join(120)
    assert not traffic.is_alive()
    assert traffic.errors == [] and traffic.sent == REQUESTS, traffic.errors[:3]
    # The proxy itself recorded every exchange (its own file is the reference).
    assert numbers(proxy.records(REQUESTS), run) == {n: 1 for n in range(REQUESTS)}
    return traffic


def reported_drops(proxy) -> int:
    """The proxy's own count, from its last words: `collector stream closed; … dropped=N`."""
    found = re.findall(r"dropped=(\d+)", proxy.stderr_text())
    assert found, proxy.stderr_text()[-2000:]
    return int(found[-1])


def test_collector_restart_with_spool_loses_nothing(start_proxy, start_collector, nginx, tmp_path):
    collector = start_collector()
    spool = tmp_path / "spool"
    proxy = start_proxy("--name", "spooler", "--spool", spool, "--buffer", "4KiB",
                        more_outputs=[collector.grpc_url])
    stream_through_outage(proxy, collector, nginx, "spool")
    wait_until(lambda: len(numbers(collector.records(), "spool")) >= REQUESTS, 30,
               "every record to reach the collector")
    assert proxy.metric("flowtap_collector_records_dropped_total", output=collector.grpc_url) == 0
    assert proxy.stop() == 0
    recs = collector.records()
    counts = numbers(recs, "spool")
    missing = sorted(set(range(REQUESTS)) - set(counts))
    twice = sorted(n for n, c in counts.items() if c > 1)
    assert missing == [] and twice == [], f"lost {missing[:20]}, duplicated {twice[:20]}"
    assert len({r["id"] for r in recs}) == len(recs) == REQUESTS
    assert reported_drops(proxy) == 0
    assert collector.metric("flowtap_collector_proxy_records_dropped_total", source="spooler") == 0
    assert list(spool.glob("*.pb")) == [], "acknowledged batches are removed from the spool"
    # Resent batches the collector had already written were recognised by id.
    dups = collector.metric("flowtap_collector_records_duplicate_total", source="spooler")
    print(f"spool: lost 0, duplicated in files 0, re-sent duplicates dropped by id after restart: {dups:.0f}")


def test_collector_restart_without_spool_counts_losses(start_proxy, start_collector, nginx):
    collector = start_collector()
    proxy = start_proxy("--name", "buffered", "--buffer", "4KiB", more_outputs=[collector.grpc_url])
    stream_through_outage(proxy, collector, nginx, "mem")
    # Settled once the proxy's total of drops reached the collector and the records stop coming.
    time.sleep(1.5)
    on_metrics = proxy.metric("flowtap_collector_records_dropped_total", output=collector.grpc_url)
    assert proxy.stop() == 0
    recs = collector.records()
    counts = numbers(recs, "mem")
    twice = sorted(n for n, c in counts.items() if c > 1)
    assert twice == [], f"duplicated {twice[:20]}"
    lost = sorted(set(range(REQUESTS)) - set(counts))
    dropped = reported_drops(proxy)
    reported = collector.metric("flowtap_collector_proxy_records_dropped_total", source="buffered")
    print(f"no spool: {len(lost)} of {REQUESTS} lost, {dropped} counted as dropped by the proxy, "
          f"{reported:.0f} reported to the collector")
    assert lost, "a 4 KiB buffer cannot hold a 2 s outage of this traffic"
    # Every loss is counted; the count may include batches that were on the wire when the
    # collector died and had been written (at most the sender's window).
    assert len(lost) <= dropped <= len(lost) + 32
    assert reported == dropped
    # The proxy's own /metrics showed the drops while it ran.
    assert on_metrics is not None and 0 < on_metrics <= dropped, on_metrics
    # The buffer drops the oldest records: what is lost is one run of consecutive requests
    # from the outage, and the newest records before the reconnect were delivered.
    assert lost == list(range(lost[0], lost[0] + len(lost))), lost


def test_spool_survives_a_proxy_restart(start_proxy, start_collector, nginx, tmp_path):
    collector = start_collector()
    collector.kill()  # down from the start; its port and directory are kept for later
    spool = tmp_path / "spool"
    first = start_proxy("--name", "restarted", "--spool", spool, name="first",
                        more_outputs=[collector.grpc_url])
    get_through(first, [nginx.url(f"/small?run=restart&n={i}") for i in range(20)])
    first.records(20)
    assert first.stop() == 0
    assert "kept in the spool" in first.stderr_text()
    spooled = sum(int(p.stem.split("-")[1]) for p in spool.glob("*.pb"))
    assert spooled == 20, f"{spooled} records in the spool"

    collector.start()
    second = start_proxy("--name", "restarted", "--spool", spool, name="second",
                         more_outputs=[collector.grpc_url])
    get_through(second, [nginx.url(f"/small?run=restart&n={i}") for i in range(20, 25)])
    wait_until(lambda: len(numbers(collector.records(), "restart")) >= 25, 30,
               "the spooled records to be delivered")
    assert second.stop() == 0
    assert numbers(collector.records(), "restart") == {n: 1 for n in range(25)}
    assert list(spool.glob("*.pb")) == []


def test_batch_written_but_not_acknowledged_is_not_written_twice(start_proxy, start_collector,
                                                                   nginx, tmp_path):
    """The case at-least-once delivery exists for: the collector wrote a batch and died before
    its acknowledgement reached the proxy, so the proxy sends the batch again to the restarted
    collector. Made deterministic by putting the delivered records back into the proxy's spool
    (the spool format is `--output pb`'s, written here with `flowtap convert`)."""
    collector = start_collector()
    spool = tmp_path / "spool"
    first = start_proxy("--name", "unacked", "--spool", spool, name="first",
                        more_outputs=[collector.grpc_url])
    get_through(first, [nginx.url(f"/small?run=unacked&n={i}") for i in range(10)])
    collector.wait_records(10)
    assert first.stop() == 0
    collector.kill()
    collector.start()  # remembers the ids in its files
    p = run_flowtap("convert", "--from", "jsonl", "--to", "pb", "-o",
                    spool / f"{999:020}-10.pb", first.records_path)
    assert p.returncode == 0, p.stderr
    second = start_proxy("--name", "unacked", "--spool", spool, name="second",
                         more_outputs=[collector.grpc_url])
    wait_until(lambda: not list(spool.glob("*.pb")), 20, "the re-sent batch to be acknowledged")
    assert second.stop() == 0
    assert numbers(collector.records(), "unacked") == {n: 1 for n in range(10)}
    assert collector.metric("flowtap_collector_records_duplicate_total", source="unacked") == 10
