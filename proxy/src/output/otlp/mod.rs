//! `--output otlp` / `otlp:URL`: each HTTP record exported as an OpenTelemetry CLIENT span over
//! OTLP (gRPC or HTTP/protobuf), configured by `--otlp-*` flags and the standard `OTEL_*`
//! variables.
//!
//! The writer thread turns each record into a span ([`span`]) and hands it to a bounded queue
//! with `try_send`; a thread of its own (`export.rs`) batches the queue into export requests.
//! Nothing here waits on the network: when the endpoint is slow or down, the queue fills and
//! further spans are dropped and counted, and the count is logged every few seconds and when
//! the proxy stops.

mod config;
mod export;
mod http_client;
pub mod span;

pub use config::{parse_resource_attributes, HeaderCapture, OtlpArgs, Protocol, Sampler};

use super::{Output, OutputSpec, WriterSettings};
use export::Counters;
use flowtap_schema::Flow;
use opentelemetry_sdk::trace::SpanData;
use span::{Skip, SpanSettings};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;

/// Time the export thread gets, when the proxy stops, to send what is queued. Below the
/// writer's own final flush time so the other outputs still get theirs.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

struct Otlp {
    label: String,
    span: SpanSettings,
    tx: Option<tokio::sync::mpsc::Sender<SpanData>>,
    done: Option<Receiver<()>>,
    counters: Arc<Counters>,
    /// Spans accepted into the queue.
    queued: AtomicU64,
    /// Records that were not exported as spans, by reason.
    not_sampled: u64,
    malformed: u64,
}

pub fn open(
    spec: &OutputSpec,
    s: &WriterSettings,
    metrics: &crate::metrics::Metrics,
) -> Result<Box<dyn Output>, String> {
    let settings = config::resolve(&s.otlp, spec.address.as_deref(), &config::process_env)?;
    let counters = Arc::new(Counters::default());
    let thread = export::start(&settings, spec.raw.clone(), counters.clone())?;
    let exported = counters.clone();
    metrics.register(crate::metrics::OutputCounter {
        name: "flowtap_otlp_spans_exported_total",
        help: "Spans the OTLP endpoint accepted.",
        output: spec.raw.clone(),
        read: Box::new(move || exported.exported.load(Relaxed)),
    });
    let dropped = counters.clone();
    metrics.register(crate::metrics::OutputCounter {
        name: "flowtap_otlp_spans_dropped_total",
        help: "Spans dropped: the export queue was full (--otlp-queue) or the export failed.",
        output: spec.raw.clone(),
        read: Box::new(move || dropped.dropped()),
    });
    tracing::info!(
        output = %spec.raw,
        endpoint = %settings.endpoint_shown,
        protocol = settings.protocol.as_str(),
        queue = settings.queue,
        "exporting records as OTLP spans"
    );
    Ok(Box::new(Otlp {
        label: spec.raw.clone(),
        span: SpanSettings {
            headers: settings.headers.clone(),
            sampler: settings.sampler,
            scope: span::scope(),
        },
        tx: Some(thread.tx),
        done: Some(thread.done),
        counters,
        queued: AtomicU64::new(0),
        not_sampled: 0,
        malformed: 0,
    }))
}

impl Output for Otlp {
    fn write(&mut self, batch: &[Flow]) {
        for flow in batch {
            let span = match span::to_span(flow, &self.span) {
                Ok(span) => span,
                Err(Skip::NotHttp) => continue,
                Err(Skip::NotSampled) => {
                    self.not_sampled += 1;
                    continue;
                }
                Err(Skip::Malformed) => {
                    self.malformed += 1;
                    continue;
                }
            };
            let Some(tx) = &self.tx else {
                self.counters.dropped_queue_full.fetch_add(1, Relaxed);
                continue;
            };
            match tx.try_send(span) {
                Ok(()) => {
                    self.queued.fetch_add(1, Relaxed);
                }
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                    self.counters.dropped_queue_full.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn close(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        drop(tx);
        let finished = self
            .done
            .take()
            .is_some_and(|d| d.recv_timeout(CLOSE_TIMEOUT).is_ok());
        let c = &self.counters;
        let exported = c.exported.load(Relaxed);
        let failed = c.dropped_failed.load(Relaxed);
        let unsent = self.queued.load(Relaxed).saturating_sub(exported + failed);
        let dropped = c.dropped() + unsent;
        if !finished {
            tracing::warn!(
                output = %self.label,
                unsent,
                "the OTLP endpoint did not take the last spans in time"
            );
        }
        let level_warn = dropped > 0;
        if level_warn {
            tracing::warn!(
                output = %self.label,
                exported,
                dropped,
                not_sampled = self.not_sampled,
                "OTLP export finished with spans dropped"
            );
        } else {
            tracing::info!(
                output = %self.label,
                exported,
                dropped,
                not_sampled = self.not_sampled,
                malformed = self.malformed,
                "OTLP export finished"
            );
        }
    }
}
