//! Process-wide counters, served as Prometheus text on the proxy's own `/metrics` page.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default, Debug)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicI64,
    pub records_written: AtomicU64,
    pub records_dropped: AtomicU64,
    pub exchanges_failed: AtomicU64,
    /// Requests sent again on a new upstream connection after a kept one closed unanswered.
    pub upstream_retries: AtomicU64,
    outputs: OutputCounters,
}

/// A counter an output keeps itself (records the collector never got, spans exported or
/// dropped), shown with the output as a label: `NAME{output="grpc://collector:9700"} N`.
pub struct OutputCounter {
    pub name: &'static str,
    pub help: &'static str,
    pub output: String,
    pub read: Box<dyn Fn() -> u64 + Send + Sync>,
}

#[derive(Default)]
struct OutputCounters(Mutex<Vec<OutputCounter>>);

impl std::fmt::Debug for OutputCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "OutputCounters({n})")
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    /// Adds an output's own counter to `/metrics`.
    pub fn register(&self, counter: OutputCounter) {
        if let Ok(mut v) = self.outputs.0.lock() {
            v.push(counter);
        }
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
            "flowtap_upstream_retries_total",
            "counter",
            "Requests sent again on a new upstream connection after a kept one closed without answering.",
            g(&self.upstream_retries),
        );
        put(
            "flowtap_leaf_certificates_minted_total",
            "counter",
            "Leaf certificates minted.",
            leaves_minted as i64,
        );
        if let Ok(counters) = self.outputs.0.lock() {
            let mut names: Vec<&str> = Vec::new();
            for c in counters.iter() {
                if !names.contains(&c.name) {
                    names.push(c.name);
                }
            }
            for name in names {
                let mut first = true;
                for c in counters.iter().filter(|c| c.name == name) {
                    if first {
                        let _ = write!(s, "# HELP {name} {}\n# TYPE {name} counter\n", c.help);
                        first = false;
                    }
                    let _ = writeln!(
                        s,
                        "{name}{{output=\"{}\"}} {}",
                        label_value(&c.output),
                        (c.read)()
                    );
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn output_counters_are_rendered_once_per_name_with_escaped_labels() {
        let m = Metrics::default();
        let live = Arc::new(AtomicU64::new(3));
        let read = live.clone();
        m.register(OutputCounter {
            name: "flowtap_x_total",
            help: "X.",
            output: "grpc://a:1".into(),
            read: Box::new(move || read.load(Relaxed)),
        });
        m.register(OutputCounter {
            name: "flowtap_x_total",
            help: "X.",
            output: "otlp:http://b/\"q\"\\".into(),
            read: Box::new(|| 7),
        });
        live.store(5, Relaxed);
        let text = m.render(0);
        assert_eq!(
            text.matches("# HELP flowtap_x_total X.\n").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE flowtap_x_total counter\n").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("flowtap_x_total{output=\"grpc://a:1\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("flowtap_x_total{output=\"otlp:http://b/\\\"q\\\"\\\\\"} 7\n"),
            "{text}"
        );
    }
}
