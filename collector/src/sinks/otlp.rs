//! `otlp` / `otlp:URL`: each HTTP record forwarded as an OpenTelemetry span.
//!
//! The spans are made and exported by the proxy's own OTLP output (`flowtap::output::otlp`), so
//! a span means the same whether a proxy exports it directly or the collector forwards it, and
//! the same `--otlp-*` flags and `OTEL_*` variables configure it. That output never waits on the
//! network (its own bounded queue drops and counts, and logs the count when it stops); this
//! thread feeds it deliveries from a bounded channel of its own.

use crate::hub::Delivery;
use crate::metrics::SinkStats;
use flowtap::output::otlp::OtlpArgs;
use flowtap::output::{OutputSpec, WriterSettings};
use flowtap::redact::{Redactor, RedactorConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

/// Deliveries (one per proxy batch, up to 1 MiB of records) waiting for the exporter: the
/// exporter only converts and queues, so this is a buffer for bursts, not for outages.
const QUEUE_DELIVERIES: usize = 1024;

pub fn start(
    url: Option<&str>,
    args: &OtlpArgs,
    stats: Arc<SinkStats>,
) -> Result<(SyncSender<Arc<Delivery>>, std::thread::JoinHandle<()>), String> {
    let raw = url.map_or_else(|| "otlp".to_string(), |u| format!("otlp:{u}"));
    let spec = OutputSpec::parse(&raw)?;
    let settings = WriterSettings {
        // Records arrive redacted by their proxy; the OTLP output does not redact again.
        redactor: Redactor::new(&RedactorConfig::default()),
        verbose: false,
        stdout_line_limit: usize::MAX,
        collector: Default::default(),
        otlp: args.clone(),
    };
    // The output's own span counters are for the proxy's /metrics; the collector counts what
    // it hands this sink in `stats` and the output logs its dropped spans.
    let unserved = flowtap::metrics::Metrics::default();
    let mut output = flowtap::output::otlp::open(&spec, &settings, &unserved)?;
    let (tx, rx) = sync_channel::<Arc<Delivery>>(QUEUE_DELIVERIES);
    let thread = std::thread::Builder::new()
        .name("sink-otlp".into())
        .spawn(move || {
            while let Ok(d) = rx.recv() {
                output.write(&d.flows);
                stats.queued.fetch_sub(d.len() as i64, Relaxed);
                SinkStats::add(&stats.written, d.len());
            }
            output.close();
        })
        .map_err(|e| format!("cannot start the OTLP thread: {e}"))?;
    Ok((tx, thread))
}
