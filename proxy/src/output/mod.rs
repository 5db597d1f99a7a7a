//! Outputs: a bounded queue from the traffic path to one writer thread, which builds each record,
//! encodes it once per format and writes every batch with one `write` per output.
//!
//! The traffic path only ever calls [`Emitter::send`], which never blocks: when the queue is full
//! the record is dropped and counted (`flowtap_records_dropped_total`, and a warning on stderr).

pub mod text;

use crate::metrics::Metrics;
use crate::record::build::to_flow;
use crate::record::capture::shrink_body;
use crate::record::Record;
use crate::redact::Redactor;
use flowtap_schema::{json, Flow};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records waiting for the writer. Bounded so a stalled output costs dropped records, not memory:
/// with bodies captured, each record may hold up to twice the body limit.
pub const QUEUE_RECORDS: usize = 8192;
/// Total bytes of captured bodies the queue may hold; shrinks the queue when bodies are captured.
pub const QUEUE_CAPTURE_BYTES: usize = 64 << 20;
/// Most records encoded into one write: bounds the writer's buffer and the latency of a batch.
const BATCH_RECORDS: usize = 512;
/// How often the writer reports records dropped since its last report.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub format: Format,
    pub target: Target,
}

impl OutputSpec {
    /// `jsonl`, `jsonl:PATH`, `text`, `text:PATH`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, path) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let format = match name {
            "jsonl" => Format::Jsonl,
            "text" => Format::Text,
            _ => {
                return Err(format!(
                    "{s:?}: expected jsonl, jsonl:PATH, text or text:PATH"
                ))
            }
        };
        let target = match path {
            None | Some("-") => Target::Stdout,
            Some("") => return Err(format!("{s:?}: the path after ':' is empty")),
            Some(p) => Target::File(PathBuf::from(p)),
        };
        Ok(OutputSpec { format, target })
    }
}

enum Msg {
    Record(Record),
    Flush(SyncSender<()>),
}

/// The traffic path's handle on the outputs. Cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
}

impl Emitter {
    pub fn send(&self, record: Record) {
        if let Err(e) = self.tx.try_send(Msg::Record(record)) {
            match e {
                TrySendError::Full(_) | TrySendError::Disconnected(_) => {
                    self.metrics.records_dropped.fetch_add(1, Relaxed)
                }
            };
        }
    }

    /// Waits until every record queued before this call is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_err() {
            return false;
        }
        ack_rx.recv_timeout(timeout).is_ok()
    }
}

struct Sink {
    format: Format,
    stdout: bool,
    file: Option<File>,
    buf: Vec<u8>,
    label: String,
}

impl Sink {
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = match self.file.as_mut() {
            Some(f) => f.write_all(&self.buf),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf).and_then(|_| out.flush())
            }
        };
        if let Err(e) = r {
            tracing::error!(output = %self.label, error = %e, "writing records failed");
        }
        self.buf.clear();
    }
}

pub struct WriterSettings {
    pub redactor: Redactor,
    pub verbose: bool,
    pub stdout_line_limit: usize,
}

/// The writer thread and the handle to feed it.
pub struct Writer {
    pub emitter: Emitter,
    handle: JoinHandle<()>,
}

/// Opens every output (so a bad path fails before anything binds) and starts the writer thread.
pub fn start(
    specs: &[OutputSpec],
    settings: WriterSettings,
    queue: usize,
    metrics: Arc<Metrics>,
) -> Result<Writer, String> {
    let mut sinks = Vec::with_capacity(specs.len());
    for spec in specs {
        let (file, label) = match &spec.target {
            Target::Stdout => (None, "stdout".to_string()),
            Target::File(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| {
                        format!("--output {}: cannot open for appending: {e}", p.display())
                    })?;
                (Some(f), p.display().to_string())
            }
        };
        sinks.push(Sink {
            format: spec.format,
            stdout: file.is_none(),
            file,
            buf: Vec::with_capacity(64 << 10),
            label,
        });
    }
    let (tx, rx) = sync_channel(queue);
    let m = metrics.clone();
    let handle = std::thread::Builder::new()
        .name("flowtap-writer".into())
        .spawn(move || run(rx, sinks, settings, m))
        .map_err(|e| format!("cannot start the writer thread: {e}"))?;
    Ok(Writer {
        emitter: Emitter { tx, metrics },
        handle,
    })
}

impl Writer {
    /// Writes everything queued, then stops the thread once every emitter is gone.
    pub fn finish(self, timeout: Duration) {
        let flushed = self.emitter.flush(timeout);
        if !flushed {
            tracing::warn!("the writer did not finish in time; some records may be lost");
        }
        drop(self.emitter);
        let _ = self.handle;
    }
}

fn run(rx: Receiver<Msg>, mut sinks: Vec<Sink>, s: WriterSettings, metrics: Arc<Metrics>) {
    let mut text = String::new();
    let mut last_report = Instant::now();
    let mut reported_drops = 0;
    loop {
        let first = match rx.recv_timeout(DROP_REPORT_EVERY) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut acks = Vec::new();
        let mut n = 0u64;
        let mut next = first;
        while let Some(msg) = next {
            match msg {
                Msg::Flush(ack) => acks.push(ack),
                Msg::Record(r) => {
                    let flow = to_flow(r, &s.redactor);
                    for sink in sinks.iter_mut() {
                        encode(sink, &flow, &s, &mut text);
                    }
                    n += 1;
                }
            }
            next = if n < BATCH_RECORDS as u64 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        for sink in sinks.iter_mut() {
            sink.write_out();
        }
        metrics.records_written.fetch_add(n, Relaxed);
        for ack in acks {
            let _ = ack.try_send(());
        }
        if last_report.elapsed() >= DROP_REPORT_EVERY {
            let dropped = metrics.records_dropped.load(Relaxed);
            if dropped > reported_drops {
                tracing::warn!(
                    dropped = dropped - reported_drops,
                    total = dropped,
                    "records dropped: the output queue was full"
                );
                reported_drops = dropped;
            }
            last_report = Instant::now();
        }
    }
}

fn encode(sink: &mut Sink, flow: &Flow, s: &WriterSettings, text: &mut String) {
    match sink.format {
        Format::Jsonl => {
            let at = sink.buf.len();
            json::encode_line(flow, &mut sink.buf);
            if sink.stdout && sink.buf.len() - at > s.stdout_line_limit {
                sink.buf.truncate(at);
                let fitted = fit_line(flow, s.stdout_line_limit);
                json::encode_line(&fitted, &mut sink.buf);
            }
        }
        Format::Text => {
            text.clear();
            text::format(flow, s.verbose, text);
            sink.buf.extend_from_slice(text.as_bytes());
        }
    }
}

/// Cuts captured bodies until the record's JSON line fits in `limit` bytes.
fn fit_line(flow: &Flow, limit: usize) -> Flow {
    let mut f = flow.clone();
    for _ in 0..4 {
        let len = serde_json::to_vec(&f).map(|v| v.len() + 1).unwrap_or(0);
        if len <= limit {
            break;
        }
        let mut excess = len - limit;
        let bodies = [
            f.response.as_mut().and_then(|r| r.body.as_mut()),
            f.request.as_mut().and_then(|r| r.body.as_mut()),
        ];
        let mut shrunk = false;
        for b in bodies.into_iter().flatten() {
            let before = b.data.len();
            if shrink_body(b, excess) {
                shrunk = true;
                excess = excess.saturating_sub(before - b.data.len());
            }
            if excess == 0 {
                break;
            }
        }
        if !shrunk {
            break;
        }
    }
    f
}
