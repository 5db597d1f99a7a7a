//! The export thread: its own single-threaded tokio runtime, a bounded span queue fed by the
//! writer thread with `try_send` (never blocks; a full queue drops and counts), and the OTLP
//! exporter (gRPC through tonic, or HTTP/protobuf through hyper), both on rustls with ring.

use super::config::{OtlpSettings, Protocol};
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{
    Compression, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest one export may take before the thread gives up on it, over and above the
/// exporter's own timeout and retries (guards against a transport that never answers).
const EXPORT_GUARD: Duration = Duration::from_secs(30);
/// How often the export thread reports spans dropped since its last report.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Retries of a failed export (429/502/503/504, gRPC UNAVAILABLE...): few and short, since
/// spans keep arriving and a long backlog only means more of them dropped later.
const RETRIES: usize = 2;
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);

/// What happened to spans, shared between the writer thread and the export thread.
#[derive(Debug, Default)]
pub struct Counters {
    /// Handed to the exporter and accepted by the endpoint.
    pub exported: AtomicU64,
    /// Dropped because the queue was full (the endpoint is slow or down).
    pub dropped_queue_full: AtomicU64,
    /// Dropped because the export failed (unreachable, refused, timed out).
    pub dropped_failed: AtomicU64,
}

impl Counters {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.load(Relaxed) + self.dropped_failed.load(Relaxed)
    }
}

/// The writer thread's end of the queue, and the thread's completion signal.
pub struct ExportThread {
    pub tx: mpsc::Sender<SpanData>,
    pub done: Receiver<()>,
}

/// Builds the exporter on a new thread (tonic needs a runtime to set up its channel) and
/// returns once it is ready, or with the reason it could not be built.
pub fn start(
    s: &OtlpSettings,
    label: String,
    counters: Arc<Counters>,
) -> Result<ExportThread, String> {
    let (tx, rx) = mpsc::channel(s.queue);
    let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(1);
    let (done_tx, done_rx) = sync_channel::<()>(1);
    let s = s.clone();
    std::thread::Builder::new()
        .name("flowtap-otlp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                    return;
                }
            };
            let exporter = {
                let _guard = rt.enter();
                build(&s)
            };
            let mut exporter = match exporter {
                Ok(e) => {
                    let _ = ready_tx.send(Ok(()));
                    e
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            exporter.set_resource(
                &Resource::builder_empty()
                    .with_attributes(s.resource.clone())
                    .build(),
            );
            rt.block_on(run(exporter, rx, s.batch, &label, &counters));
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start the OTLP export thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ExportThread { tx, done: done_rx }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the OTLP export thread stopped while starting".into()),
    }
}

fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(RETRIES)
        .with_initial_delay(RETRY_FIRST_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
}

fn build(s: &OtlpSettings) -> Result<SpanExporter, String> {
    let built = match s.protocol {
        Protocol::Grpc => {
            let mut b = SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_retry_policy(retry_policy());
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b = b.with_timeout(s.timeout);
            if s.gzip == Some(true) {
                b = b.with_compression(Compression::Gzip);
            }
            if !s.export_headers.is_empty() {
                let mut map = http::HeaderMap::new();
                for (k, v) in &s.export_headers {
                    let (Ok(k), Ok(v)) = (
                        http::HeaderName::from_bytes(k.as_bytes()),
                        http::HeaderValue::from_str(v),
                    ) else {
                        continue;
                    };
                    map.append(k, v);
                }
                b = b.with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map),
                );
            }
            if s.tls {
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &s.ca_pem {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                b = b.with_tls_config(tls);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let client = super::http_client::client(s)?;
            let mut b = SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client)
                .with_retry_policy(retry_policy());
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b = b.with_timeout(s.timeout);
            if s.gzip == Some(true) {
                b = b.with_compression(Compression::Gzip);
            }
            if !s.export_headers.is_empty() {
                b = b.with_headers(s.export_headers.iter().cloned().collect());
            }
            b.build()
        }
    };
    built.map_err(|e| format!("cannot set up the OTLP exporter: {e}"))
}

/// Exports batches until the writer side closes the queue, then exports what is left.
async fn run(
    exporter: SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    batch_max: usize,
    label: &str,
    counters: &Counters,
) {
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = 0;
    let mut last_error: Option<String> = None;
    let mut buf = Vec::with_capacity(batch_max);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut buf, batch_max) => {
                if n == 0 {
                    break;
                }
                let batch = std::mem::replace(&mut buf, Vec::with_capacity(batch_max));
                if let Err(e) = export(&exporter, batch, counters).await {
                    last_error = Some(e);
                }
            }
            _ = report.tick() => {
                reported = report_drops(label, counters, reported, last_error.take());
            }
        }
    }
    report_drops(label, counters, reported, last_error);
    let _ = exporter.shutdown();
}

async fn export(exporter: &SpanExporter, batch: Vec<SpanData>, c: &Counters) -> Result<(), String> {
    let n = batch.len() as u64;
    let result = match tokio::time::timeout(EXPORT_GUARD, exporter.export(batch)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", EXPORT_GUARD.as_secs())),
    };
    match &result {
        Ok(()) => c.exported.fetch_add(n, Relaxed),
        Err(_) => c.dropped_failed.fetch_add(n, Relaxed),
    };
    result
}

/// Logs the spans dropped since the last report (if any); returns the new total reported.
fn report_drops(label: &str, c: &Counters, reported: u64, error: Option<String>) -> u64 {
    let total = c.dropped();
    if total > reported {
        tracing::warn!(
            output = %label,
            dropped = total - reported,
            total,
            queue_full = c.dropped_queue_full.load(Relaxed),
            export_failed = c.dropped_failed.load(Relaxed),
            exported = c.exported.load(Relaxed),
            error = error.as_deref().unwrap_or(""),
            "OTLP spans dropped: the endpoint is slow or unreachable"
        );
    }
    total
}
