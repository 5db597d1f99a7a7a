//! One submission per batch to every sink.
//!
//! Acking sinks (files, stdout) take every submission in order on their own thread and complete
//! it once written (the files: fsynced); a batch is acknowledged when all of them have completed
//! it. Because each acking sink completes submissions in order, the completion of a later
//! submission also means every earlier one is written, which is what lets a re-sent batch whose
//! records are all duplicates be acknowledged safely. Queued sinks (Loki, Elasticsearch) get the
//! records offered to their bounded queues and never delay an acknowledgement.

use crate::metrics::SinkStats;
use flowtap_schema::{json, Flow};
use std::sync::Arc;
use tokio::sync::oneshot;

/// The new records of one batch, each encoded once as a JSON line for every sink that wants it.
pub struct Delivery {
    pub flows: Vec<Flow>,
    /// All records as JSON lines, each ending in `\n`.
    pub lines: Vec<u8>,
    /// End offset (after the `\n`) of each record's line in `lines`.
    ends: Vec<usize>,
}

impl Delivery {
    pub fn new(flows: Vec<Flow>) -> Delivery {
        let mut lines = Vec::with_capacity(flows.len() * 1024);
        let mut ends = Vec::with_capacity(flows.len());
        for f in &flows {
            json::encode_line(f, &mut lines);
            ends.push(lines.len());
        }
        Delivery { flows, lines, ends }
    }

    /// Record `i`'s JSON line, without its `\n`.
    pub fn line(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.lines[start..self.ends[i] - 1]
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// One record of a delivery, as queued sinks hold it.
#[derive(Clone)]
pub struct Item {
    pub delivery: Arc<Delivery>,
    pub index: usize,
}

impl Item {
    pub fn flow(&self) -> &Flow {
        &self.delivery.flows[self.index]
    }

    pub fn line(&self) -> &[u8] {
        self.delivery.line(self.index)
    }
}

/// A submission to an acking sink and how to tell the submitter it is written.
pub struct Job {
    pub delivery: Arc<Delivery>,
    pub done: oneshot::Sender<()>,
}

/// The handle on an acking sink's thread. The channel is unbounded: what is in it is bounded by
/// the proxies' windows (each stream has at most a window of unacknowledged batches).
pub struct AckingSink {
    pub name: String,
    pub tx: std::sync::mpsc::Sender<Job>,
}

/// The handle on a queued sink's task.
pub struct QueuedSink {
    pub tx: tokio::sync::mpsc::Sender<Item>,
    pub stats: Arc<SinkStats>,
}

/// The handle on a sink that takes whole deliveries on a thread of its own (OTLP).
pub struct OutputSink {
    pub tx: std::sync::mpsc::SyncSender<Arc<Delivery>>,
    pub stats: Arc<SinkStats>,
}

pub struct Hub {
    pub acking: Vec<AckingSink>,
    pub queued: Vec<QueuedSink>,
    pub outputs: Vec<OutputSink>,
    /// Set at shutdown: submissions fail from then on.
    pub closed: bool,
}

/// Completions to wait for before acknowledging.
pub struct Pending(Vec<(String, oneshot::Receiver<()>)>);

impl Pending {
    pub async fn wait(self) -> Result<(), String> {
        for (name, rx) in self.0 {
            rx.await
                .map_err(|_| format!("sink {name} stopped before writing the batch"))?;
        }
        Ok(())
    }
}

impl Hub {
    /// Hands `delivery` to every sink without waiting. Called with the dedup lock held, so
    /// submissions reach every acking sink in the order their records were judged new.
    pub fn submit(&self, delivery: Arc<Delivery>) -> Pending {
        if self.closed {
            let (_, rx) = oneshot::channel();
            return Pending(vec![("(closed)".to_string(), rx)]);
        }
        for q in &self.queued {
            for index in 0..delivery.len() {
                let item = Item {
                    delivery: delivery.clone(),
                    index,
                };
                match q.tx.try_send(item) {
                    Ok(()) => {
                        q.stats
                            .queued
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(_) => SinkStats::add(&q.stats.dropped_queue_full, 1),
                }
            }
        }
        for o in &self.outputs {
            match o.tx.try_send(delivery.clone()) {
                Ok(()) => {
                    o.stats
                        .queued
                        .fetch_add(delivery.len() as i64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => SinkStats::add(&o.stats.dropped_queue_full, delivery.len()),
            }
        }
        let mut waits = Vec::with_capacity(self.acking.len());
        for s in &self.acking {
            let (done, rx) = oneshot::channel();
            let job = Job {
                delivery: delivery.clone(),
                done,
            };
            // A sink whose thread is gone makes `wait` fail, which fails the stream: the proxy
            // keeps the batch and sends it again.
            let _ = s.tx.send(job);
            waits.push((s.name.clone(), rx));
        }
        Pending(waits)
    }

    /// Lets go of every sink: queued sinks finish what is queued and stop, acking sinks' threads
    /// finish their last submissions and stop.
    pub fn close(&mut self) {
        self.closed = true;
        self.queued.clear();
        self.outputs.clear();
        self.acking.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_per_record() {
        let flows = (0..3)
            .map(|i| Flow {
                id: format!("id{i}"),
                ..Default::default()
            })
            .collect();
        let d = Delivery::new(flows);
        for i in 0..3 {
            let v: serde_json::Value = serde_json::from_slice(d.line(i)).expect("json");
            assert_eq!(v["id"], format!("id{i}"));
        }
        assert!(d.lines.ends_with(b"}\n"));
    }
}
