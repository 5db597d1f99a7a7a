//! Process-wide counters, served as Prometheus text on the proxy's own `/metrics` page.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicI64,
    pub records_written: AtomicU64,
    pub records_dropped: AtomicU64,
    pub exchanges_failed: AtomicU64,
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Renders the counters; `leaves_minted` comes from the leaf cache, which owns that count.
    pub fn render(&self, leaves_minted: u64) -> String {
        let mut s = String::with_capacity(1024);
        let mut put = |name: &str, kind: &str, help: &str, v: i64| {
            let _ = write!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            );
        };
        let g = |c: &AtomicU64| c.load(Relaxed) as i64;
        put(
            "flowtap_connections_total",
            "counter",
            "Client connections accepted.",
            g(&self.connections_total),
        );
        put(
            "flowtap_connections_active",
            "gauge",
            "Client connections open now.",
            self.connections_active.load(Relaxed),
        );
        put(
            "flowtap_records_written_total",
            "counter",
            "Records written to the outputs.",
            g(&self.records_written),
        );
        put(
            "flowtap_records_dropped_total",
            "counter",
            "Records dropped because the output queue was full.",
            g(&self.records_dropped),
        );
        put(
            "flowtap_exchanges_failed_total",
            "counter",
            "Exchanges that ended with an error.",
            g(&self.exchanges_failed),
        );
        put(
            "flowtap_leaf_certificates_minted_total",
            "counter",
            "Leaf certificates minted.",
            leaves_minted as i64,
        );
        s
    }
}
