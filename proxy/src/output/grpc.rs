//! `--output grpc://HOST:PORT` / `grpcs://HOST:PORT`: records streamed to flowtap-collector.
//!
//! The writer thread hands each batch to `queue` (and, with `--spool`, to a file in `spool`)
//! and wakes the `sender` thread, which owns the network: one gRPC stream (`collector.proto` in
//! `schema/`), batches with sequence numbers, at most a window of them unacknowledged, everything
//! unacknowledged sent again after a reconnect. Delivery is at-least-once; the collector drops
//! records it already has by id. The writer never waits on the collector: when the queue is over
//! its limit the oldest batches are dropped, counted, reported on stderr and to the collector
//! (`Batch.dropped_total`, shown on the collector's /metrics per source).

mod queue;
mod sender;
mod spool;

use super::{Format, Output, OutputSpec, WriterSettings};
use crate::record::capture::parse_size;
use flowtap_schema::{delimited, Flow};
use prost::Message;
use queue::Queue;
use sender::{Shared, Target};
use spool::Spool;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig};

/// Unacknowledged records kept in memory by default: minutes of a busy proxy's records while the
/// collector restarts, at a cost a sidecar can afford.
pub const DEFAULT_BUFFER: &str = "64MiB";
/// Unacknowledged records kept on disk by default with `--spool`.
pub const DEFAULT_SPOOL_LIMIT: &str = "1GiB";
/// Smallest `--buffer`: a few records.
const MIN_BUFFER: usize = 4 << 10;
/// Largest batch on the wire: bounds the collector's per-message memory and the work repeated
/// when a stream breaks. A batch is also at most an eighth of the buffer, so dropping the oldest
/// batch when the buffer is full drops a small part of it.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// A single record larger than this is dropped (and counted): the collector accepts messages up
/// to 64 MiB, and a record this size means bodies captured with a very high --body-limit.
const MAX_RECORD_BYTES: usize = 32 << 20;
/// How long a stopping proxy keeps trying to deliver what is queued.
const DELIVER_ON_CLOSE: Duration = Duration::from_secs(5);

/// Flags of the collector stream (`--output grpc://…` / `grpcs://…`).
#[derive(clap::Args, Clone, Default)]
pub struct CollectorArgs {
    /// This proxy's name: the collector writes it into each record as `source`. Default: the host
    /// name (in Kubernetes, pass the pod name from the downward API).
    #[arg(long, env = "FLOWTAP_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Records not yet acknowledged by the collector kept in memory; over it, the oldest are
    /// dropped and counted.
    #[arg(long, env = "FLOWTAP_BUFFER", default_value = DEFAULT_BUFFER, value_name = "SIZE")]
    pub buffer: String,
    /// Keep unacknowledged records in this directory instead, so they survive a proxy restart.
    #[arg(long, env = "FLOWTAP_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// Most bytes of records kept in --spool; over it, the oldest are dropped and counted.
    #[arg(long, env = "FLOWTAP_SPOOL_LIMIT", default_value = DEFAULT_SPOOL_LIMIT, value_name = "SIZE")]
    pub spool_limit: String,
    /// CA certificate (PEM) that signed the collector's certificate, for grpcs:// (default: the
    /// system roots).
    #[arg(long, env = "FLOWTAP_COLLECTOR_CA", value_name = "FILE")]
    pub collector_ca: Option<PathBuf>,
    /// Bearer token the collector checks.
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub collector_token: Option<String>,
}

impl std::fmt::Debug for CollectorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorArgs")
            .field("name", &self.name)
            .field("buffer", &self.buffer)
            .field("spool", &self.spool)
            .field("spool_limit", &self.spool_limit)
            .field("collector_ca", &self.collector_ca)
            .field(
                "collector_token",
                &self.collector_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Checks the flags, opens the spool, starts the sender thread.
pub fn open(
    spec: &OutputSpec,
    s: &WriterSettings,
    metrics: &crate::metrics::Metrics,
) -> Result<Box<dyn Output>, String> {
    let tls = matches!(spec.format, Format::Grpc { tls: true });
    let a = &s.collector;
    let address = spec
        .address
        .as_deref()
        .ok_or_else(|| "no HOST:PORT".to_string())?;
    let buffer = size("--buffer", &a.buffer, DEFAULT_BUFFER)?;
    if buffer < MIN_BUFFER {
        return Err(format!("--buffer {}: must be at least 4KiB", a.buffer));
    }
    let source = match &a.name {
        Some(n) => n.trim().to_string(),
        None => host_name(),
    };
    if source.is_empty() || source.len() > 253 || source.chars().any(char::is_control) {
        return Err(format!(
            "--name {source:?}: expected 1 to 253 printable characters"
        ));
    }
    let authorization = match &a.collector_token {
        None => None,
        Some(t) => Some(
            AsciiMetadataValue::try_from(format!("Bearer {}", t.trim()))
                .map_err(|_| "--collector-token: must be printable ASCII".to_string())?,
        ),
    };
    let uri = format!("{}://{address}", if tls { "https" } else { "http" });
    let mut endpoint = sender::endpoint(&uri)?;
    if tls {
        endpoint = endpoint
            .tls_config(tls_config(address, a.collector_ca.as_deref())?)
            .map_err(|e| e.to_string())?;
    } else {
        if a.collector_ca.is_some() {
            return Err(format!(
                "--collector-ca: only used with grpcs://, not with {}",
                spec.raw
            ));
        }
        let loopback = ["127.0.0.1:", "localhost:", "[::1]:"]
            .iter()
            .any(|p| address.starts_with(p));
        if authorization.is_some() && !loopback {
            tracing::warn!(collector = %spec.raw,
                "--collector-token is sent unencrypted over grpc://; use grpcs:// outside a trusted network");
        }
    }
    let (queue, spool) = match &a.spool {
        None => (Queue::in_memory(buffer), None),
        Some(dir) => {
            let limit = size("--spool-limit", &a.spool_limit, DEFAULT_SPOOL_LIMIT)?;
            let (spool, found) = Spool::open(dir).map_err(|e| format!("--spool {e}"))?;
            let spool = Arc::new(spool);
            if !found.is_empty() {
                let records: u64 = found.iter().map(|f| u64::from(f.records)).sum();
                tracing::info!(spool = %dir.display(), batches = found.len(), records,
                    "records left by a previous run will be sent to the collector");
            }
            (
                Queue::spooled(buffer, limit.max(buffer), spool.clone(), &found),
                Some(spool),
            )
        }
    };
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
        wake: tokio::sync::Notify::new(),
        stop_at: Mutex::new(None),
    });
    let counted = shared.clone();
    metrics.register(crate::metrics::OutputCounter {
        name: "flowtap_collector_records_dropped_total",
        help: "Records the collector never acknowledged: dropped when --buffer or --spool-limit was full, or unreadable in the spool.",
        output: spec.raw.clone(),
        read: Box::new(move || counted.queue().dropped_total()),
    });
    let target = Target {
        endpoint,
        authorization,
        source,
        label: spec.raw.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let (done_tx, done_rx) = sync_channel(1);
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name("flowtap-collector".into())
        .spawn(move || {
            runtime.block_on(sender::run(thread_shared, target));
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    Ok(Box::new(CollectorOutput {
        shared,
        spool,
        done: done_rx,
        batch_limit: (buffer / 8).clamp(1, MAX_BATCH_BYTES),
        closed: false,
        spool_errors: 0,
    }))
}

fn size(flag: &str, value: &str, default: &str) -> Result<usize, String> {
    let v = if value.trim().is_empty() {
        default
    } else {
        value
    };
    parse_size(v).map_err(|e| format!("{flag}: {e}"))
}

fn tls_config(address: &str, ca: Option<&Path>) -> Result<ClientTlsConfig, String> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let config = ClientTlsConfig::new().domain_name(host);
    Ok(match ca {
        None => config.with_native_roots(),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--collector-ca {}: {e}", path.display()))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "--collector-ca {}: no PEM certificate in the file",
                    path.display()
                ));
            }
            config.ca_certificate(Certificate::from_pem(pem))
        }
    })
}

/// The host name, the default `--name`.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "flowtap".to_string())
}

/// The writer thread's side: queue and wake, never wait (except once, in `close`).
struct CollectorOutput {
    shared: Arc<Shared>,
    spool: Option<Arc<Spool>>,
    done: Receiver<()>,
    batch_limit: usize,
    closed: bool,
    spool_errors: u64,
}

impl CollectorOutput {
    fn push(&mut self, flows: Vec<Flow>, mut bytes: usize) {
        let seq = self.shared.queue().reserve_seq();
        if let Some(spool) = &self.spool {
            let mut buf = Vec::with_capacity(bytes);
            for f in &flows {
                delimited::encode(f, &mut buf);
            }
            bytes = buf.len();
            if let Err(e) = spool.write(seq, flows.len() as u32, &buf) {
                self.spool_errors += 1;
                if self.spool_errors.is_power_of_two() {
                    tracing::error!(spool = %spool.dir().display(), error = %e,
                        errors = self.spool_errors, "cannot write to the spool; records dropped");
                }
                self.shared.queue().count_dropped(flows.len() as u64);
                return;
            }
        }
        let removed = self.shared.queue().push(seq, flows, bytes);
        self.shared.remove_files(removed);
    }
}

impl Output for CollectorOutput {
    fn write(&mut self, batch: &[Flow]) {
        if self.closed {
            self.shared.queue().count_dropped(batch.len() as u64);
            return;
        }
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        for flow in batch {
            // The record plus its length prefix and field tag in the Batch message.
            let len = flow.encoded_len() + 6;
            if len > MAX_RECORD_BYTES {
                tracing::warn!(id = %flow.id, bytes = len, "record too large for the collector stream; dropped");
                self.shared.queue().count_dropped(1);
                continue;
            }
            if !chunk.is_empty() && chunk_bytes + len > self.batch_limit {
                self.push(std::mem::take(&mut chunk), chunk_bytes);
                chunk_bytes = 0;
            }
            chunk.push(flow.clone());
            chunk_bytes += len;
        }
        if !chunk.is_empty() {
            self.push(chunk, chunk_bytes);
        }
        self.shared.wake.notify_one();
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        *self
            .shared
            .stop_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + DELIVER_ON_CLOSE);
        self.shared.wake.notify_one();
        let _ = self
            .done
            .recv_timeout(DELIVER_ON_CLOSE + Duration::from_secs(1));
        let (pending, dropped) = {
            let q = self.shared.queue();
            (q.pending_records(), q.dropped_total())
        };
        match (&self.spool, pending) {
            (_, 0) => tracing::info!(dropped, "collector stream closed; all records delivered"),
            (Some(spool), _) => tracing::warn!(pending, dropped, spool = %spool.dir().display(),
                "collector not reachable: records kept in the spool for the next start"),
            (None, _) => tracing::warn!(
                lost = pending,
                dropped,
                "collector not reachable: records not delivered (no --spool)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn flags_fit_the_proxy_command_line() {
        // Panics on a flag or environment name used twice anywhere in the CLI.
        crate::config::Cli::command().debug_assert();
        let cli = crate::config::Cli::parse_from([
            "flowtap",
            "proxy",
            "--output",
            "grpc://collector:9700",
            "--name",
            "pod-a",
            "--buffer",
            "8MiB",
            "--collector-token",
            "t0ken",
        ]);
        let crate::config::Command::Proxy(args) = cli.command else {
            panic!("not the proxy command");
        };
        assert_eq!(args.collector.name.as_deref(), Some("pod-a"));
        assert_eq!(args.collector.buffer, "8MiB");
        assert_eq!(args.collector.spool_limit, DEFAULT_SPOOL_LIMIT);
        let shown = format!("{:?}", args.collector);
        assert!(!shown.contains("t0ken"), "{shown}");
    }

    #[test]
    fn tls_host_from_address() {
        assert!(tls_config("collector.ns.svc:9700", None).is_ok());
        assert!(tls_config("[::1]:9700", None).is_ok());
        let missing = Path::new("/nonexistent/ca.pem");
        let e = tls_config("collector:9700", Some(missing)).unwrap_err();
        assert!(e.starts_with("--collector-ca"), "{e}");
    }
}
