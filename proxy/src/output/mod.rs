//! Outputs: a bounded queue from the traffic path to one writer thread, which builds each record,
//! encodes it once per format and writes every batch with one `write` per output.
//!
//! The traffic path only ever calls [`Emitter::send`], which never blocks: when the queue is full
//! the record is dropped and counted (`flowtap_records_dropped_total`, and a warning on stderr).

pub mod grpc;
pub mod har;
pub mod otlp;
pub mod rpc;
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
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
/// After a batch, the writer waits this long before taking the next, so that under load records
/// arrive in batches (one write per output, few thread wake-ups) while staying well within
/// the 100 ms promise of a record reaching its output.
const BATCH_PAUSE: Duration = Duration::from_millis(5);
/// How often the writer reports records dropped since its last report.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON lines, the v1 encoding.
    Jsonl,
    /// The human view.
    Text,
    /// Length-delimited protobuf records.
    Pb,
    /// A HAR 1.2 file.
    Har,
    /// OpenTelemetry spans over OTLP.
    Otlp,
    /// A stream to flowtap-collector (`grpc://` plain, `grpcs://` TLS).
    Grpc { tls: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub format: Format,
    pub target: Target,
    /// The spec as given, for messages.
    pub raw: String,
    /// `HOST:PORT` of `grpc://HOST:PORT`, or the endpoint of `otlp:URL`.
    pub address: Option<String>,
}

const SPEC_HELP: &str = "expected jsonl, jsonl:PATH, text, text:PATH, pb:PATH, har:PATH, otlp, \
                         otlp:URL, grpc://HOST:PORT or grpcs://HOST:PORT";

impl OutputSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut spec = OutputSpec {
            format: Format::Jsonl,
            target: Target::Stdout,
            raw: s.to_string(),
            address: None,
        };
        for (scheme, tls) in [("grpc://", false), ("grpcs://", true)] {
            if let Some(addr) = s.strip_prefix(scheme) {
                if addr.is_empty() || !addr.contains(':') {
                    return Err(format!("{s:?}: expected {scheme}HOST:PORT"));
                }
                spec.format = Format::Grpc { tls };
                spec.address = Some(addr.trim_end_matches('/').to_string());
                return Ok(spec);
            }
        }
        let (name, rest) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        spec.format = match name {
            "jsonl" => Format::Jsonl,
            "text" => Format::Text,
            "pb" => Format::Pb,
            "har" => Format::Har,
            "otlp" => {
                spec.format = Format::Otlp;
                spec.address = rest.filter(|r| !r.is_empty()).map(str::to_string);
                return Ok(spec);
            }
            _ => return Err(format!("{s:?}: {SPEC_HELP}")),
        };
        spec.target = match rest {
            None | Some("-") => Target::Stdout,
            Some("") => return Err(format!("{s:?}: the path after ':' is empty")),
            Some(p) => Target::File(PathBuf::from(p)),
        };
        if matches!(spec.format, Format::Pb | Format::Har) && spec.target == Target::Stdout {
            return Err(format!("{s:?}: {name} needs a file path ({name}:PATH)"));
        }
        Ok(spec)
    }
}

enum Msg {
    Record(Record),
    /// Write everything queued before this, close the outputs, then acknowledge.
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

    /// Waits until every record queued before this call is written and the outputs are closed
    /// (used once, when the proxy stops).
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_err() {
            return false;
        }
        ack_rx.recv_timeout(timeout).is_ok()
    }
}

/// One destination for records. Each gets every batch the writer builds, in order, on the
/// writer thread; an output that talks to the network must hand off to its own task rather
/// than block here.
pub trait Output: Send {
    /// Takes one batch of records.
    fn write(&mut self, batch: &[Flow]);
    /// Called when the proxy stops, after the last batch.
    fn close(&mut self) {}
}

/// Bumped by [`reopen_files`]; a file output whose generation differs opens its path again.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Makes every file output open its path again before its next write (`flowtap proxy` calls
/// this on SIGUSR1): after logrotate moved a file away, records go to a new file by that name.
pub fn reopen_files() {
    REOPEN.fetch_add(1, Relaxed);
}

/// A file output's mark of the last [`reopen_files`] it followed.
#[derive(Clone, Copy)]
pub struct Generation(u64);

impl Generation {
    pub fn now() -> Self {
        Generation(REOPEN.load(Relaxed))
    }

    /// Whether a reopen was asked for since `self`; if so, `self` becomes now.
    pub fn reopen_due(&mut self) -> bool {
        let now = Self::now();
        std::mem::replace(self, now).0 != now.0
    }
}

/// Where byte-stream outputs write: stdout, or a file opened for appending.
pub enum Dest {
    Stdout,
    File(File, PathBuf, Generation),
}

impl Dest {
    pub fn open(target: &Target) -> Result<Self, String> {
        match target {
            Target::Stdout => Ok(Dest::Stdout),
            Target::File(p) => Ok(Dest::File(append(p)?, p.clone(), Generation::now())),
        }
    }

    pub fn is_stdout(&self) -> bool {
        matches!(self, Dest::Stdout)
    }

    /// Writes `buf` whole (one `write` for a batch) and clears it.
    pub fn write_all(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        if let Dest::File(f, p, generation) = self {
            if generation.reopen_due() {
                match append(p) {
                    Ok(new) => *f = new,
                    Err(e) => {
                        tracing::error!(error = %e, "reopening an output file failed; writing to the one open")
                    }
                }
            }
        }
        let r = match self {
            Dest::File(f, _, _) => f.write_all(buf),
            Dest::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf).and_then(|_| out.flush())
            }
        };
        if let Err(e) = r {
            let label = match self {
                Dest::Stdout => "stdout".to_string(),
                Dest::File(_, p, _) => p.display().to_string(),
            };
            tracing::error!(output = %label, error = %e, "writing records failed");
        }
        buf.clear();
    }
}

/// `path` opened for appending (created if missing).
fn append(path: &std::path::Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {} for appending: {e}", path.display()))
}

/// JSON lines (the record contract's v1 encoding).
struct JsonLines {
    dest: Dest,
    buf: Vec<u8>,
    /// Longest line allowed (stdout only), see `--stdout-line-limit`.
    line_limit: Option<usize>,
}

impl Output for JsonLines {
    fn write(&mut self, batch: &[Flow]) {
        for flow in batch {
            let at = self.buf.len();
            json::encode_line(flow, &mut self.buf);
            if let Some(limit) = self.line_limit {
                if self.buf.len() - at > limit {
                    self.buf.truncate(at);
                    json::encode_line(&fit_line(flow, limit), &mut self.buf);
                }
            }
        }
        self.dest.write_all(&mut self.buf);
    }
}

/// The human view, close to mitmdump's.
struct Text {
    dest: Dest,
    buf: Vec<u8>,
    verbose: bool,
    scratch: String,
}

impl Output for Text {
    fn write(&mut self, batch: &[Flow]) {
        for flow in batch {
            self.scratch.clear();
            text::format(flow, self.verbose, &mut self.scratch);
            self.buf.extend_from_slice(self.scratch.as_bytes());
        }
        self.dest.write_all(&mut self.buf);
    }
}

/// Length-delimited protobuf: the same records as JSON lines, in `flow.proto`'s binary form.
struct Protobuf {
    dest: Dest,
    buf: Vec<u8>,
}

impl Output for Protobuf {
    fn write(&mut self, batch: &[Flow]) {
        for flow in batch {
            flowtap_schema::delimited::encode(flow, &mut self.buf);
        }
        self.dest.write_all(&mut self.buf);
    }
}

/// Opens one output; every failure names the `--output` it came from.
/// Opens one output; a failure is a configuration error naming the output's spec.
fn open_output(
    spec: &OutputSpec,
    s: &WriterSettings,
    metrics: &Metrics,
) -> Result<Box<dyn Output>, String> {
    open_format(spec, s, metrics).map_err(|e| format!("--output {}: {e}", spec.raw))
}

fn open_format(
    spec: &OutputSpec,
    s: &WriterSettings,
    metrics: &Metrics,
) -> Result<Box<dyn Output>, String> {
    let out: Box<dyn Output> = match spec.format {
        Format::Jsonl => {
            let dest = Dest::open(&spec.target)?;
            let line_limit = dest.is_stdout().then_some(s.stdout_line_limit);
            Box::new(JsonLines {
                dest,
                buf: Vec::with_capacity(64 << 10),
                line_limit,
            })
        }
        Format::Text => Box::new(Text {
            dest: Dest::open(&spec.target)?,
            buf: Vec::with_capacity(64 << 10),
            verbose: s.verbose,
            scratch: String::new(),
        }),
        Format::Pb => Box::new(Protobuf {
            dest: Dest::open(&spec.target)?,
            buf: Vec::with_capacity(64 << 10),
        }),
        Format::Har => har::open(spec, s)?,
        Format::Otlp => otlp::open(spec, s, metrics)?,
        Format::Grpc { .. } => grpc::open(spec, s, metrics)?,
    };
    Ok(out)
}

pub struct WriterSettings {
    pub redactor: Redactor,
    pub verbose: bool,
    pub stdout_line_limit: usize,
    pub collector: grpc::CollectorArgs,
    pub otlp: otlp::OtlpArgs,
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
    let sinks = specs
        .iter()
        .map(|spec| open_output(spec, &settings, &metrics))
        .collect::<Result<Vec<_>, _>>()?;
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

fn run(
    rx: Receiver<Msg>,
    mut outputs: Vec<Box<dyn Output>>,
    s: WriterSettings,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Flow> = Vec::with_capacity(BATCH_RECORDS);
    let mut last_report = Instant::now();
    let mut reported_drops = 0;
    loop {
        let first = match rx.recv_timeout(DROP_REPORT_EVERY) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut acks = Vec::new();
        let mut next = first;
        while let Some(msg) = next {
            match msg {
                Msg::Flush(ack) => acks.push(ack),
                Msg::Record(r) => batch.push(to_flow(r, &s.redactor)),
            }
            next = if batch.len() < BATCH_RECORDS {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // A full batch means the queue is backing up: take the next one at once.
        let behind = batch.len() >= BATCH_RECORDS;
        if !batch.is_empty() {
            for out in outputs.iter_mut() {
                out.write(&batch);
            }
            metrics
                .records_written
                .fetch_add(batch.len() as u64, Relaxed);
            batch.clear();
        }
        if !acks.is_empty() {
            for out in outputs.iter_mut() {
                out.close();
            }
        }
        let flushed = !acks.is_empty();
        for ack in acks {
            let _ = ack.try_send(());
        }
        if !flushed && !behind {
            std::thread::sleep(BATCH_PAUSE);
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
    for out in outputs.iter_mut() {
        out.close();
    }
}

/// Says, once the proxy stops, how many records were dropped in all (also on /metrics).
pub fn report_drops(metrics: &Metrics) {
    let dropped = metrics.records_dropped.load(Relaxed);
    let written = metrics.records_written.load(Relaxed);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            written,
            "records were dropped because the output queue was full"
        );
    } else {
        tracing::info!(written, "all records written");
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
