//! `stdout`: the records as JSON lines on standard output, for a cluster's log shipper.
//! Diagnostics go to stderr, so stdout carries nothing but records.

use crate::hub::Job;
use crate::metrics::SinkStats;
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

pub fn start(stats: Arc<SinkStats>) -> Result<(Sender<Job>, std::thread::JoinHandle<()>), String> {
    let (tx, rx) = channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("sink-stdout".into())
        .spawn(move || {
            let mut broken = false;
            while let Ok(job) = rx.recv() {
                let n = job.delivery.len();
                if !broken {
                    let mut out = std::io::stdout().lock();
                    if let Err(e) = out.write_all(&job.delivery.lines).and_then(|_| out.flush()) {
                        // Nobody reads stdout any more: count the records, keep acknowledging
                        // so the other sinks carry on.
                        tracing::error!(error = %e, "stdout is closed; records for it are dropped");
                        stats.up.store(false, Relaxed);
                        broken = true;
                    }
                }
                if broken {
                    SinkStats::add(&stats.rejected, n);
                } else {
                    SinkStats::add(&stats.written, n);
                }
                let _ = job.done.send(());
            }
        })
        .map_err(|e| format!("cannot start the stdout thread: {e}"))?;
    Ok((tx, thread))
}
