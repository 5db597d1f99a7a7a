//! Bind, accept, spawn one task per connection, and drain on shutdown.

use crate::conn::serve_client;
use crate::http::Shared;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

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
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    loop {
        tokio::select! {
            _ = crate::conn::stopping(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let shared = shared.clone();
                    shared.metrics.connections_total.fetch_add(1, Relaxed);
                    shared.metrics.connections_active.fetch_add(1, Relaxed);
                    let guard = shared.tracker.guard();
                    tokio::spawn(async move {
                        let m = shared.metrics.clone();
                        serve_client(shared, stream, addr).await;
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
    drop(listener);
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
