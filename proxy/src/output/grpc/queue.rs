//! The batches the collector has not acknowledged yet, oldest first, within a byte limit.
//!
//! The writer thread pushes; the sender thread takes batches to send and removes them when they
//! are acknowledged. Over the limit, the oldest batches are dropped and their records counted:
//! the proxy's traffic never waits for the collector. In memory the limit is `--buffer`; with
//! `--spool` every batch is also on disk, the limit is `--spool-limit`, and only the first
//! `--buffer` bytes of batches are also kept in memory (the rest is read back when sent).

use super::spool::{Spool, Spooled};
use flowtap_schema::Flow;
use std::collections::VecDeque;
use std::sync::Arc;

/// One batch waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub records: u32,
    pub bytes: usize,
    /// The records, unless they are only on disk.
    pub flows: Option<Arc<Vec<Flow>>>,
}

#[derive(Debug)]
pub struct Queue {
    batches: VecDeque<Pending>,
    next_seq: u64,
    bytes: usize,
    mem_bytes: usize,
    limit: usize,
    mem_limit: usize,
    dropped_total: u64,
    spool: Option<Arc<Spool>>,
}

/// What the caller must do outside the lock after a change: spool files to delete.
#[must_use]
#[derive(Debug, Default)]
pub struct Removed(pub Vec<(u64, u32)>);

impl Queue {
    /// An in-memory queue holding up to `mem_limit` bytes.
    pub fn in_memory(mem_limit: usize) -> Queue {
        Queue {
            batches: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
            mem_bytes: 0,
            limit: mem_limit,
            mem_limit,
            dropped_total: 0,
            spool: None,
        }
    }

    /// A spool-backed queue holding up to `limit` bytes on disk, starting with the batches a
    /// previous run left there (read back from disk when their turn comes).
    pub fn spooled(mem_limit: usize, limit: usize, spool: Arc<Spool>, found: &[Spooled]) -> Queue {
        let mut q = Queue {
            limit,
            spool: Some(spool),
            ..Queue::in_memory(mem_limit)
        };
        for s in found {
            q.bytes += s.bytes;
            q.next_seq = q.next_seq.max(s.seq + 1);
            q.batches.push_back(Pending {
                seq: s.seq,
                records: s.records,
                bytes: s.bytes,
                flows: None,
            });
        }
        q
    }

    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    /// Takes the sequence number for the next batch (the writer thread is the only caller, so
    /// batches are added in this order).
    pub fn reserve_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Adds a batch (already on disk when the queue spools), then drops the oldest batches until
    /// the queue is within its limit.
    pub fn push(&mut self, seq: u64, flows: Vec<Flow>, bytes: usize) -> Removed {
        let records = flows.len() as u32;
        let keep_in_memory = self.spool.is_none() || self.mem_bytes + bytes <= self.mem_limit;
        let flows = keep_in_memory.then(|| {
            self.mem_bytes += bytes;
            Arc::new(flows)
        });
        self.bytes += bytes;
        self.batches.push_back(Pending {
            seq,
            records,
            bytes,
            flows,
        });
        let mut removed = Removed::default();
        while self.bytes > self.limit {
            let Some(oldest) = self.batches.pop_front() else {
                break;
            };
            self.forget(&oldest);
            self.dropped_total += u64::from(oldest.records);
            removed.0.push((oldest.seq, oldest.records));
        }
        removed
    }

    /// Counts records dropped before they reached the queue.
    pub fn count_dropped(&mut self, records: u64) {
        self.dropped_total += records;
    }

    fn forget(&mut self, p: &Pending) {
        self.bytes -= p.bytes;
        if p.flows.is_some() {
            self.mem_bytes -= p.bytes;
        }
    }

    /// The first batch after `last_sent` (or the oldest batch), to send next.
    pub fn next_after(&self, last_sent: Option<u64>) -> Option<Pending> {
        let from = match last_sent {
            None => 0,
            Some(s) => self.batches.partition_point(|p| p.seq <= s),
        };
        self.batches.get(from).cloned()
    }

    /// Removes an acknowledged batch; false when it is no longer queued (dropped meanwhile).
    pub fn ack(&mut self, seq: u64) -> (bool, Removed) {
        match self.batches.binary_search_by_key(&seq, |p| p.seq) {
            Ok(i) => {
                let Some(p) = self.batches.remove(i) else {
                    return (false, Removed::default());
                };
                self.forget(&p);
                (true, Removed(vec![(p.seq, p.records)]))
            }
            Err(_) => (false, Removed::default()),
        }
    }

    /// Drops a batch whose spooled copy cannot be read back, counting its records.
    pub fn drop_unreadable(&mut self, seq: u64) -> Removed {
        let (found, removed) = self.ack(seq);
        if found {
            let records: u64 = removed.0.iter().map(|(_, r)| u64::from(*r)).sum();
            self.dropped_total += records;
        }
        removed
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    pub fn pending_records(&self) -> u64 {
        self.batches.iter().map(|p| u64::from(p.records)).sum()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows(n: usize) -> Vec<Flow> {
        (0..n)
            .map(|i| Flow {
                id: format!("r{i}"),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn drops_oldest_over_the_limit_and_counts() {
        let mut q = Queue::in_memory(250);
        for _ in 0..3 {
            let seq = q.reserve_seq();
            let _ = q.push(seq, flows(2), 100);
        }
        assert_eq!(q.dropped_total(), 2, "the first batch no longer fits");
        assert_eq!(q.next_after(None).map(|p| p.seq), Some(2));
        assert_eq!(q.next_after(Some(2)).map(|p| p.seq), Some(3));
        assert!(q.next_after(Some(3)).is_none());
        assert!(q.ack(2).0);
        assert!(!q.ack(1).0, "dropped batches are not acknowledged twice");
        assert_eq!(q.pending_records(), 2);
    }

    #[test]
    fn spooled_queue_keeps_memory_bounded() {
        let dir = std::env::temp_dir().join(format!("flowtap-queue-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (spool, found) = Spool::open(&dir).expect("spool");
        let mut q = Queue::spooled(150, 10_000, Arc::new(spool), &found);
        for _ in 0..3 {
            let seq = q.reserve_seq();
            let _ = q.push(seq, flows(1), 100);
        }
        assert_eq!(q.dropped_total(), 0);
        assert!(q.next_after(None).and_then(|p| p.flows).is_some());
        assert!(q.next_after(Some(1)).and_then(|p| p.flows).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
