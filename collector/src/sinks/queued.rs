//! The loop every network sink runs: a bounded queue of records, batches cut by count, size or
//! time, and retries with exponential backoff for what the service asks to get again.
//!
//! A sink says per attempt which records are done, which it refused for good (logged and
//! counted: a 400, a mapping conflict) and which to try again (a 429, a 5xx, a lost connection),
//! optionally after the time the service asked for (`Retry-After`). Records that keep failing
//! stay in the loop while the queue fills behind them; once it is full, new records for this sink
//! are dropped and counted, and the other sinks are not affected.

use crate::hub::Item;
use crate::metrics::SinkStats;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// First wait before a retry; doubles per failed attempt up to [`BACKOFF_MAX`]. Grafana Alloy's
/// `loki.write` starts at 500 ms as well.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest wait between attempts: a recovered service is used again within this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How a sink cuts batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    /// Longest a record waits for its batch to fill.
    pub max_wait: Duration,
}

/// The result of one attempt.
#[derive(Default)]
pub struct Report {
    /// Records to send again.
    pub retry: Vec<Item>,
    /// Records refused for good (the sink has logged why).
    pub rejected: usize,
    /// Records the service already had (counted as written too).
    pub already_present: usize,
    /// Wait the service asked for before the retry.
    pub retry_after: Option<Duration>,
    /// Why the retry is needed, for the log.
    pub reason: String,
}

impl Report {
    pub fn retry_all(items: &[Item], reason: String, retry_after: Option<Duration>) -> Report {
        Report {
            retry: items.to_vec(),
            reason,
            retry_after,
            ..Report::default()
        }
    }

    pub fn reject_all(items: &[Item]) -> Report {
        Report {
            rejected: items.len(),
            ..Report::default()
        }
    }
}

/// One network service.
pub trait Push: Send + 'static {
    /// A name for logs.
    fn name(&self) -> &str;
    /// Sends `items` once and says what became of each.
    fn push(&mut self, items: &[Item]) -> impl Future<Output = Report> + Send;
}

/// Starts the sink's task; returns the queue's sending side. The task ends once every sender is
/// dropped and the queue is empty.
pub fn start<P: Push>(
    sink: P,
    stats: Arc<SinkStats>,
    capacity: usize,
    limits: BatchLimits,
) -> (mpsc::Sender<Item>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(run(sink, rx, stats, limits));
    (tx, task)
}

async fn run<P: Push>(
    mut sink: P,
    mut rx: mpsc::Receiver<Item>,
    stats: Arc<SinkStats>,
    limits: BatchLimits,
) {
    while let Some(batch) = gather(&mut rx, &limits).await {
        stats.queued.fetch_sub(batch.len() as i64, Relaxed);
        deliver(&mut sink, batch, &stats).await;
    }
}

/// Waits for one record, then takes more until the batch is full or `max_wait` has passed.
async fn gather(rx: &mut mpsc::Receiver<Item>, limits: &BatchLimits) -> Option<Vec<Item>> {
    let first = rx.recv().await?;
    let mut bytes = first.line().len();
    let mut batch = vec![first];
    let deadline = Instant::now() + limits.max_wait;
    while batch.len() < limits.max_records && bytes < limits.max_bytes {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => {
                bytes += item.line().len();
                batch.push(item);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

async fn deliver<P: Push>(sink: &mut P, batch: Vec<Item>, stats: &SinkStats) {
    let mut todo = batch;
    let mut wait = BACKOFF_MIN;
    let mut attempt = 0u32;
    loop {
        let sent = todo.len();
        let report = sink.push(&todo).await;
        let retried = report.retry.len();
        SinkStats::add(&stats.written, sent - retried - report.rejected);
        SinkStats::add(&stats.rejected, report.rejected);
        SinkStats::add(&stats.already_present, report.already_present);
        if retried == 0 {
            stats.up.store(true, Relaxed);
            return;
        }
        attempt += 1;
        stats.retries.fetch_add(1, Relaxed);
        stats.up.store(retried < sent, Relaxed);
        let delay = report.retry_after.unwrap_or(wait).min(BACKOFF_MAX);
        if attempt == 1 || attempt.is_power_of_two() {
            tracing::warn!(sink = sink.name(), records = retried, attempt,
                retry_in_ms = delay.as_millis() as u64, reason = %report.reason,
                "sink asked for a retry");
        }
        tokio::time::sleep(delay).await;
        wait = (wait * 2).min(BACKOFF_MAX);
        todo = report.retry;
    }
}

/// The `Retry-After` of a response, in seconds (the HTTP-date form is not used by Loki or
/// Elasticsearch).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}
