//! Counters per source (proxy) and per sink, rendered as Prometheus text on /metrics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// What one proxy has sent.
#[derive(Default, Debug)]
pub struct SourceStats {
    pub batches: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// The proxy's own count of records it dropped because its buffer was full.
    pub proxy_dropped: AtomicU64,
    /// The last running total the proxy reported (it starts again at 0 when the proxy restarts).
    last_reported: AtomicU64,
}

impl SourceStats {
    /// Adds what a proxy's running total of dropped records says is new.
    pub fn note_proxy_dropped(&self, total: u64) {
        let last = self.last_reported.swap(total, Relaxed);
        let new = if total >= last { total - last } else { total };
        self.proxy_dropped.fetch_add(new, Relaxed);
    }
}

/// What one sink has done.
#[derive(Debug)]
pub struct SinkStats {
    pub name: String,
    pub written: AtomicU64,
    /// Already in the sink (Elasticsearch 409 on create): written before, not again.
    pub already_present: AtomicU64,
    /// Dropped because the sink's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Refused by the sink for good (a 4xx other than 429, a mapping conflict): logged.
    pub rejected: AtomicU64,
    pub retries: AtomicU64,
    pub queued: AtomicI64,
    /// False while the sink's last attempt failed.
    pub up: AtomicBool,
}

impl SinkStats {
    pub fn new(name: &str) -> Self {
        SinkStats {
            name: name.to_string(),
            written: AtomicU64::new(0),
            already_present: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            up: AtomicBool::new(true),
        }
    }

    pub fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Relaxed);
    }
}

#[derive(Default, Debug)]
pub struct Metrics {
    pub streams_active: AtomicI64,
    pub auth_failures: AtomicU64,
    sources: Mutex<BTreeMap<String, Arc<SourceStats>>>,
    sinks: Mutex<Vec<Arc<SinkStats>>>,
}

impl Metrics {
    pub fn source(&self, name: &str) -> Arc<SourceStats> {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    pub fn add_sink(&self, name: &str) -> Arc<SinkStats> {
        let stats = Arc::new(SinkStats::new(name));
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stats.clone());
        stats
    }

    pub fn sinks(&self) -> Vec<Arc<SinkStats>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let sources: Vec<(String, Arc<SourceStats>)> = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sinks = self.sinks();
        let g = |c: &AtomicU64| c.load(Relaxed) as f64;

        family(
            &mut out,
            "flowtap_collector_streams_active",
            "gauge",
            "Proxy streams connected now.",
        );
        sample(
            &mut out,
            "flowtap_collector_streams_active",
            &[],
            self.streams_active.load(Relaxed) as f64,
        );
        family(
            &mut out,
            "flowtap_collector_auth_failures_total",
            "counter",
            "Streams refused for a missing or wrong token.",
        );
        sample(
            &mut out,
            "flowtap_collector_auth_failures_total",
            &[],
            g(&self.auth_failures),
        );

        let per_source: [(&str, &str, Field); 4] = [
            (
                "flowtap_collector_batches_received_total",
                "Batches received, per proxy.",
                |s| &s.batches,
            ),
            (
                "flowtap_collector_records_received_total",
                "Records received, per proxy.",
                |s| &s.received,
            ),
            (
                "flowtap_collector_records_duplicate_total",
                "Records received again and dropped by id, per proxy.",
                |s| &s.duplicates,
            ),
            (
                "flowtap_collector_proxy_records_dropped_total",
                "Records a proxy dropped because its buffer was full, as it reports them.",
                |s| &s.proxy_dropped,
            ),
        ];
        for (name, help, field) in per_source {
            family(&mut out, name, "counter", help);
            for (src, s) in &sources {
                sample(&mut out, name, &[("source", src)], g(field(s)));
            }
        }

        family(
            &mut out,
            "flowtap_collector_records_written_total",
            "counter",
            "Records a sink has written (or that were already in it), per sink.",
        );
        for s in &sinks {
            sample(
                &mut out,
                "flowtap_collector_records_written_total",
                &[("sink", &s.name)],
                g(&s.written),
            );
        }
        family(
            &mut out,
            "flowtap_collector_records_already_present_total",
            "counter",
            "Records a sink already had (Elasticsearch 409 on create), per sink.",
        );
        for s in &sinks {
            sample(
                &mut out,
                "flowtap_collector_records_already_present_total",
                &[("sink", &s.name)],
                g(&s.already_present),
            );
        }
        family(
            &mut out,
            "flowtap_collector_records_dropped_total",
            "counter",
            "Records a sink did not write, per sink and reason.",
        );
        for s in &sinks {
            for (reason, c) in [
                ("queue_full", &s.dropped_queue_full),
                ("rejected", &s.rejected),
            ] {
                sample(
                    &mut out,
                    "flowtap_collector_records_dropped_total",
                    &[("sink", &s.name), ("reason", reason)],
                    g(c),
                );
            }
        }
        family(
            &mut out,
            "flowtap_collector_sink_retries_total",
            "counter",
            "Attempts a sink repeated after a retryable failure.",
        );
        for s in &sinks {
            sample(
                &mut out,
                "flowtap_collector_sink_retries_total",
                &[("sink", &s.name)],
                g(&s.retries),
            );
        }
        family(
            &mut out,
            "flowtap_collector_sink_queue_records",
            "gauge",
            "Records waiting in a sink's queue.",
        );
        for s in &sinks {
            sample(
                &mut out,
                "flowtap_collector_sink_queue_records",
                &[("sink", &s.name)],
                s.queued.load(Relaxed) as f64,
            );
        }
        family(
            &mut out,
            "flowtap_collector_sink_up",
            "gauge",
            "1 when the sink's last attempt succeeded.",
        );
        for s in &sinks {
            sample(
                &mut out,
                "flowtap_collector_sink_up",
                &[("sink", &s.name)],
                if s.up.load(Relaxed) { 1.0 } else { 0.0 },
            );
        }
        out
    }
}

/// Picks one counter of a [`SourceStats`].
type Field = fn(&SourceStats) -> &AtomicU64;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {v}");
}

/// Label values escape backslash, double quote and newline (Prometheus text format).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels() {
        let m = Metrics::default();
        m.source("pod \"a\"").received.fetch_add(3, Relaxed);
        let s = m.add_sink("jsonl");
        s.written.fetch_add(2, Relaxed);
        let text = m.render();
        assert!(
            text.contains("flowtap_collector_records_received_total{source=\"pod \\\"a\\\"\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("flowtap_collector_records_written_total{sink=\"jsonl\"} 2\n"));
        assert!(text.contains(
            "flowtap_collector_records_dropped_total{sink=\"jsonl\",reason=\"queue_full\"} 0\n"
        ));
    }
}
