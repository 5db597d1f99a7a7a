//! Bind, accept, spawn one task per connection, and drain on shutdown.

use crate::access::Refusal;
use crate::conn::serve_client;
use crate::http::Shared;
use crate::record::{ConnInfo, ConnectionRecord, Mode, Record};
use flowtap_schema::ErrorKind;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Time allowed to tell a refused client why, before the socket is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counts the tasks that carry traffic (connections, and the tunnels they hand off to), so
/// shutdown can wait for them.
#[derive(Default)]
pub struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

/// Held by a traffic-carrying task for as long as it runs.
pub struct Guard(Arc<Tracker>);

impl Tracker {
    pub fn guard(self: &Arc<Self>) -> Guard {
        self.open.fetch_add(1, Relaxed);
        Guard(self.clone())
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Accepts until `stop` flips, then waits up to `grace` for open connections to finish.
pub async fn run(
    listener: TcpListener,
    mode: crate::mode::ModeKind,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::conn::stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    if let Err(why) = shared.config.access.admit(addr.ip()) {
                        refuse(&shared, stream, addr, why, &mode);
                        continue;
                    }
                    let active = shared.metrics.connections_active.load(Relaxed);
                    if active >= shared.config.limits.max_connections as i64 {
                        refuse(&shared, stream, addr, Refusal::TooManyConnections, &mode);
                        continue;
                    }
                    let shared = shared.clone();
                    shared.metrics.connections_total.fetch_add(1, Relaxed);
                    shared.metrics.connections_active.fetch_add(1, Relaxed);
                    let guard = shared.tracker.guard();
                    let mode = mode.clone();
                    tokio::spawn(async move {
                        let m = shared.metrics.clone();
                        serve_client(shared, stream, addr, mode).await;
                        m.connections_active.fetch_sub(1, Relaxed);
                        drop(guard);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
}

/// After the listeners stopped: waits up to `grace` for open connections to finish.
pub async fn drain(shared: &Shared, grace: Duration) {
    let open = shared.tracker.open();
    if open > 0 {
        tracing::info!(open, ?grace, "waiting for open connections to finish");
    }
    if tokio::time::timeout(grace, shared.tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            left = shared.tracker.open(),
            "grace period over; closing the remaining connections"
        );
    }
}

/// Answers a client that may not use the proxy with a 403 and writes a record of it.
fn refuse(
    shared: &Arc<Shared>,
    stream: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    why: Refusal,
    mode: &crate::mode::ModeKind,
) {
    let (status, kind, reason) = match why {
        Refusal::PublicAddress => (
            "403 Forbidden",
            ErrorKind::Refused,
            "public client addresses are refused (start the proxy with --allow-public-clients to accept them)",
        ),
        Refusal::NotInAllowedRanges => (
            "403 Forbidden",
            ErrorKind::Refused,
            "the client address is outside --allow-clients",
        ),
        Refusal::TooManyConnections => (
            "503 Service Unavailable",
            ErrorKind::Limit,
            "too many open connections (--max-connections)",
        ),
    };
    let message = format!("client {} refused: {reason}", addr.ip());
    tracing::debug!(client = %addr, "{message}");
    let conn = ConnInfo::new(addr, Mode::of(mode));
    shared
        .emitter
        .send(Record::Connection(Box::new(ConnectionRecord {
            conn,
            start: std::time::SystemTime::now(),
            error: (kind, message.clone()),
        })));
    let body = format!("flowtap: {message}\n");
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}
