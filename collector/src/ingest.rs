//! The gRPC service: the token check, and per stream a reader task (batch -> dedup -> sinks) and
//! an acker task (waits for the acking sinks, batch by batch, and sends the acks in order).

use crate::dedup::Seen;
use crate::hub::{Delivery, Hub, Pending};
use crate::metrics::Metrics;
use flowtap_schema::grpc::collector_server::Collector;
use flowtap_schema::grpc::{Ack, Batch};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Batches of one stream between "handed to the sinks" and "acknowledged": matches the proxy's
/// window, so the reader never waits on the acker while the proxy is within its window.
const ACKS_IN_FLIGHT: usize = 64;
/// The name a proxy that sent none is counted under.
const UNNAMED_SOURCE: &str = "unnamed";

pub struct Ingest {
    shared: Arc<Shared>,
}

struct Shared {
    /// Judging records new and submitting them happen under this one lock, so every acking
    /// sink sees submissions in the order the records were judged.
    seen_and_hub: Mutex<(Seen, Hub)>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Ingest {
    /// `stop` turns true when the collector shuts down: every stream then stops taking batches,
    /// acknowledges what it took, and ends with UNAVAILABLE so its proxy reconnects later.
    pub fn new(seen: Seen, hub: Hub, metrics: Arc<Metrics>, stop: watch::Receiver<bool>) -> Self {
        Ingest {
            shared: Arc::new(Shared {
                seen_and_hub: Mutex::new((seen, hub)),
                metrics,
                stop,
            }),
        }
    }

    /// Lets go of the sinks (after the gRPC server has stopped).
    pub fn close_sinks(&self) {
        let mut guard = self
            .shared
            .seen_and_hub
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard.1.close();
    }

    pub fn handle(&self) -> Ingest {
        Ingest {
            shared: self.shared.clone(),
        }
    }
}

impl Shared {
    /// Stamps, deduplicates and submits one batch. Never waits.
    fn accept(&self, batch: Batch) -> (Ack, Pending) {
        let source = if batch.source.trim().is_empty() {
            UNNAMED_SOURCE.to_string()
        } else {
            batch.source
        };
        let stats = self.metrics.source(&source);
        stats.batches.fetch_add(1, Relaxed);
        stats
            .received
            .fetch_add(batch.records.len() as u64, Relaxed);
        stats.note_proxy_dropped(batch.dropped_total);
        let mut flows = batch.records;
        for f in &mut flows {
            f.source.clone_from(&source);
        }
        // Encode before taking the lock; re-encode only in the rare batch with duplicates.
        let mut delivery = Delivery::new(flows);
        let mut guard = self.seen_and_hub.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, hub) = &mut *guard;
        let fresh: Vec<bool> = delivery
            .flows
            .iter()
            .map(|f| f.id.is_empty() || seen.insert(&f.id))
            .collect();
        let duplicates = fresh.iter().filter(|n| !**n).count();
        if duplicates > 0 {
            let kept = std::mem::take(&mut delivery.flows)
                .into_iter()
                .zip(&fresh)
                .filter_map(|(f, new)| new.then_some(f))
                .collect();
            delivery = Delivery::new(kept);
            stats.duplicates.fetch_add(duplicates as u64, Relaxed);
        }
        let written = delivery.len();
        let pending = hub.submit(Arc::new(delivery));
        drop(guard);
        let ack = Ack {
            seq: batch.seq,
            written: written as u32,
            duplicates: duplicates as u32,
        };
        (ack, pending)
    }
}

#[tonic::async_trait]
impl Collector for Ingest {
    type StreamStream = ReceiverStream<Result<Ack, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel::<Result<Ack, Status>>(ACKS_IN_FLIGHT);
        let (pending_tx, mut pending_rx) = mpsc::channel::<(Ack, Pending)>(ACKS_IN_FLIGHT);
        let shared = self.shared.clone();
        let metrics = shared.metrics.clone();
        metrics.streams_active.fetch_add(1, Relaxed);
        tracing::info!(peer = %peer, "proxy stream opened");

        let reader_shared = shared.clone();
        let reader_peer = peer.clone();
        tokio::spawn(async move {
            let mut stop = reader_shared.stop.clone();
            loop {
                if *stop.borrow() {
                    break;
                }
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    changed = stop.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                match msg {
                    Ok(Some(batch)) => {
                        let accepted = reader_shared.accept(batch);
                        if pending_tx.send(accepted).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(peer = %reader_peer, error = %status, "proxy stream broke");
                        break;
                    }
                }
            }
        });

        tokio::spawn(async move {
            let mut failed = false;
            while let Some((ack, pending)) = pending_rx.recv().await {
                match pending.wait().await {
                    Ok(()) => {
                        if out_tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(peer = %peer, error = %e, "batch not written; the proxy will send it again");
                        let _ = out_tx.send(Err(Status::unavailable(e))).await;
                        failed = true;
                        break;
                    }
                }
            }
            if !failed && *shared.stop.borrow() {
                let _ = out_tx
                    .send(Err(Status::unavailable("the collector is shutting down")))
                    .await;
            }
            metrics.streams_active.fetch_sub(1, Relaxed);
            tracing::info!(peer = %peer, "proxy stream closed");
        });

        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// The interceptor that checks `authorization: Bearer <token>` on every call.
pub fn auth(
    token: Option<String>,
    metrics: Arc<Metrics>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected: Option<Arc<[u8]>> = token.map(|t| Arc::from(t.as_bytes()));
    move |req: Request<()>| {
        let Some(expected) = &expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if same(g.as_bytes(), expected) => Ok(req),
            _ => {
                metrics.auth_failures.fetch_add(1, Relaxed);
                Err(Status::unauthenticated("missing or wrong bearer token"))
            }
        }
    }
}

/// Compares without stopping at the first difference, so the time taken says nothing about how
/// much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
