//! The sender thread: one `Stream` call to the collector at a time, batches out, acks in.
//!
//! Loop: connect (with backoff) -> open the stream -> send queued batches oldest first, keeping
//! at most [`WINDOW`] unacknowledged on the wire -> remove each batch when its ack arrives. When
//! the stream breaks, everything not acknowledged is sent again on the next one, from the oldest.
//! The thread has its own single-threaded tokio runtime: the writer thread only locks the queue
//! for a moment and wakes this thread.

use super::queue::{Pending, Queue, Removed};
use flowtap_schema::grpc::collector_client::CollectorClient;
use flowtap_schema::grpc::{Ack, Batch};
use flowtap_schema::Flow;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Batches on the wire without an acknowledgement: keeps the pipe full while the collector
/// fsyncs, and bounds what is sent twice after a broken stream.
pub const WINDOW: usize = 32;
/// First wait after a failed attempt; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between attempts: a restarted collector is found again within this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream with batches in flight and no ack for this long is treated as broken: the collector
/// acks within milliseconds unless its sinks are stuck.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP connect and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a dead collector behind a silent network.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often dropped records are reported on stderr, at most.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(5);

/// State shared by the writer thread (the `Output`) and the sender thread.
pub struct Shared {
    pub queue: Mutex<Queue>,
    pub wake: Notify,
    /// Set by `close()`: deliver what is queued until this instant, then stop.
    pub stop_at: Mutex<Option<Instant>>,
}

impl Shared {
    pub fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere while holding the lock leaves the queue consistent (every change
        // is a few field updates), so keep going with it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_at(&self) -> Option<Instant> {
        *self.stop_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes the spool files of batches that left the queue.
    pub fn remove_files(&self, removed: Removed) {
        if removed.0.is_empty() {
            return;
        }
        let spool = self.queue().spool().cloned();
        if let Some(spool) = spool {
            for (seq, records) in removed.0 {
                spool.remove(seq, records);
            }
        }
    }
}

/// Where and how to connect.
pub struct Target {
    pub endpoint: Endpoint,
    /// `Bearer <token>`, when the collector wants one.
    pub authorization: Option<AsciiMetadataValue>,
    pub source: String,
    /// For messages: `grpc://HOST:PORT`.
    pub label: String,
}

/// Runs until `close()` asks it to stop and the queue is delivered (or the time is up).
pub async fn run(shared: Arc<Shared>, target: Target) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut reporter = DropReporter::default();
    loop {
        if stop_now(&shared) {
            break;
        }
        match session(&shared, &target, &mut reporter, &mut failures).await {
            Ok(()) => break,
            Err(e) => {
                if failures == 0 {
                    // The stream had been up: start the backoff over.
                    backoff = BACKOFF_MIN;
                }
                failures += 1;
                let pending = shared.queue().pending_records();
                if failures == 1 {
                    tracing::warn!(collector = %target.label, error = %e, pending,
                        "collector stream failed; records are kept and sent again after reconnecting");
                } else {
                    tracing::debug!(collector = %target.label, error = %e, attempt = failures,
                        "collector still unreachable");
                }
            }
        }
        reporter.report(&shared);
        let wait = jitter(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
        match shared.stop_at() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(wait.min(left)).await;
            }
            None => {
                // Only a stop request cuts the wait short; new batches (which also wake this
                // thread) wait for the next attempt like the others.
                let until = tokio::time::Instant::now() + wait;
                while tokio::time::timeout_at(until, shared.wake.notified())
                    .await
                    .is_ok()
                {
                    if shared.stop_at().is_some() {
                        break;
                    }
                }
            }
        }
    }
    reporter.report(&shared);
}

/// True once stopping and nothing is left to deliver, or the delivery time is up.
fn stop_now(shared: &Shared) -> bool {
    match shared.stop_at() {
        None => false,
        Some(deadline) => shared.queue().is_empty() || Instant::now() >= deadline,
    }
}

/// One connection and one stream. `Ok` when asked to stop; `Err` when the stream broke.
async fn session(
    shared: &Shared,
    target: &Target,
    reporter: &mut DropReporter,
    failures: &mut u32,
) -> Result<(), String> {
    let channel: Channel = target
        .endpoint
        .connect()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let auth = target.authorization.clone();
    let mut client =
        CollectorClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            if let Some(v) = &auth {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        });
    let (tx, rx) = mpsc::channel::<Batch>(WINDOW);
    let mut acks = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    if *failures > 0 {
        tracing::info!(collector = %target.label, pending = shared.queue().pending_records(),
            "connected to the collector again");
    } else {
        tracing::info!(collector = %target.label, "streaming records to the collector");
    }
    *failures = 0;

    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut last_sent: Option<u64> = None;
    let mut last_progress = Instant::now();
    loop {
        // Fill the window, oldest unsent first.
        while in_flight.len() < WINDOW {
            let next = shared.queue().next_after(last_sent);
            let Some(p) = next else { break };
            last_sent = Some(p.seq);
            let Some(records) = load(shared, &p) else {
                continue;
            };
            let batch = Batch {
                seq: p.seq,
                source: target.source.clone(),
                records,
                dropped_total: shared.queue().dropped_total(),
            };
            if in_flight.is_empty() {
                last_progress = Instant::now();
            }
            tx.send(batch)
                .await
                .map_err(|_| "the stream closed".to_string())?;
            in_flight.push_back(p.seq);
        }
        if stop_now(shared) {
            return Ok(());
        }
        let deadline = match (in_flight.is_empty(), shared.stop_at()) {
            (false, stop) => {
                let ack_by = last_progress + ACK_TIMEOUT;
                stop.map_or(ack_by, |s| s.min(ack_by))
            }
            (true, Some(stop)) => stop,
            (true, None) => Instant::now() + DROP_REPORT_EVERY,
        };
        tokio::select! {
            msg = acks.message() => match msg {
                Ok(Some(ack)) => {
                    last_progress = Instant::now();
                    on_ack(shared, &ack, &mut in_flight);
                }
                Ok(None) => return Err("the collector ended the stream".into()),
                Err(status) => return Err(status_text(&status)),
            },
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                if !in_flight.is_empty() && last_progress.elapsed() >= ACK_TIMEOUT {
                    return Err(format!("no acknowledgement for {}s", ACK_TIMEOUT.as_secs()));
                }
            }
        }
        reporter.report(shared);
    }
}

fn on_ack(shared: &Shared, ack: &Ack, in_flight: &mut VecDeque<u64>) {
    in_flight.retain(|s| *s != ack.seq);
    let (_, removed) = shared.queue().ack(ack.seq);
    shared.remove_files(removed);
    if ack.duplicates > 0 {
        tracing::debug!(
            seq = ack.seq,
            duplicates = ack.duplicates,
            "collector already had some records"
        );
    }
}

/// The batch's records, from memory or from the spool. A spooled batch that cannot be read back
/// is dropped and counted.
fn load(shared: &Shared, p: &Pending) -> Option<Vec<Flow>> {
    if let Some(flows) = &p.flows {
        return Some(flows.as_ref().clone());
    }
    let spool = shared.queue().spool().cloned()?;
    match spool.read(p.seq, p.records) {
        Ok(flows) => Some(flows),
        Err(e) => {
            tracing::error!(error = %e, records = p.records, "cannot read a spooled batch; dropping it");
            let removed = shared.queue().drop_unreadable(p.seq);
            shared.remove_files(removed);
            None
        }
    }
}

/// Warns about records dropped since the last report, at most every [`DROP_REPORT_EVERY`].
#[derive(Default)]
struct DropReporter {
    reported: u64,
    last: Option<Instant>,
}

impl DropReporter {
    fn report(&mut self, shared: &Shared) {
        if self.last.is_some_and(|t| t.elapsed() < DROP_REPORT_EVERY) {
            return;
        }
        let (total, pending) = {
            let q = shared.queue();
            (q.dropped_total(), q.pending_records())
        };
        if total > self.reported {
            tracing::warn!(
                dropped = total - self.reported,
                total,
                pending,
                "records dropped: the collector buffer was full"
            );
            self.reported = total;
        }
        self.last = Some(Instant::now());
    }
}

pub fn endpoint(uri: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(uri.to_string())
        .map_err(|e| format!("{uri}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Spreads reconnects of many proxies: the wait is 75..100% of `d`.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let quarter = (h.finish() % 1000) as f64 / 4000.0;
    d.mul_f64(1.0 - quarter)
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
