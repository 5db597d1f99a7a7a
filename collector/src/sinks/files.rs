//! `jsonl:DIR`: JSON-lines files, one per hour (and per `--rotate-size`), fsynced before the ack.
//!
//! Files are named `flowtap-YYYY-MM-DDTHH-NNN.jsonl` (UTC hour of writing, then a counter for
//! size rotation), so names sort in writing order and `cat DIR/*.jsonl | jq` reads them in order.
//! One thread writes: it takes every submission waiting, appends their lines, calls
//! `fdatasync` once, then completes them all (group commit). A failed write is cut off and tried
//! again until it succeeds, with the acknowledgements held back meanwhile: the proxies keep the
//! records, and /healthz reports the sink as failing.

use crate::hub::Job;
use crate::metrics::SinkStats;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "flowtap-";
const SUFFIX: &str = ".jsonl";
/// Submissions written under one fsync at most: bounds the latency of the first of them.
const MAX_JOBS_PER_SYNC: usize = 256;
/// Waits between attempts after a failed write (a full disk, say), doubling up to the max.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Creates `dir`, checks it is writable, lists the files already there (oldest first) and starts
/// the writer thread.
#[allow(clippy::type_complexity)]
pub fn start(
    dir: &Path,
    rotate_size: Option<u64>,
    stats: Arc<SinkStats>,
) -> Result<(Sender<Job>, Vec<PathBuf>, std::thread::JoinHandle<()>), String> {
    let ctx = |e: io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(ctx)?;
    let probe = dir.join(".flowtap-write-probe");
    std::fs::write(&probe, b"").map_err(ctx)?;
    let _ = std::fs::remove_file(&probe);
    let existing = list(dir).map_err(ctx)?;
    let (tx, rx) = channel();
    let mut writer = Writer {
        dir: dir.to_path_buf(),
        rotate_size,
        current: None,
        stats,
    };
    let thread = std::thread::Builder::new()
        .name("sink-jsonl".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| format!("cannot start the writer thread: {e}"))?;
    Ok((tx, existing, thread))
}

/// The record files in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

struct Current {
    file: File,
    path: PathBuf,
    hour: String,
    index: u32,
    size: u64,
}

struct Writer {
    dir: PathBuf,
    rotate_size: Option<u64>,
    current: Option<Current>,
    stats: Arc<SinkStats>,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_JOBS_PER_SYNC {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let mut wait = RETRY_MIN;
            let mut failures = 0u32;
            while let Err(e) = self.write(&jobs) {
                failures += 1;
                self.stats.up.store(false, Relaxed);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(dir = %self.dir.display(), error = %e, attempt = failures,
                        "writing records failed; trying again (acknowledgements wait)");
                }
                self.current = None;
                std::thread::sleep(wait);
                wait = (wait * 2).min(RETRY_MAX);
            }
            self.stats.up.store(true, Relaxed);
            let records: usize = jobs.iter().map(|j| j.delivery.len()).sum();
            SinkStats::add(&self.stats.written, records);
            for j in jobs {
                let _ = j.done.send(());
            }
        }
        if let Some(c) = &self.current {
            let _ = c.file.sync_data();
        }
    }

    /// Appends every job's lines and syncs; on failure cuts the file back to where it was.
    fn write(&mut self, jobs: &[Job]) -> io::Result<()> {
        let hour = current_hour();
        let mut to_sync: Vec<File> = Vec::new();
        for job in jobs {
            let lines = &job.delivery.lines;
            if lines.is_empty() {
                continue;
            }
            let needs_new = match &self.current {
                None => true,
                Some(c) => {
                    c.hour != hour
                        || self
                            .rotate_size
                            .is_some_and(|max| c.size > 0 && c.size + lines.len() as u64 > max)
                }
            };
            if needs_new {
                if let Some(old) = self.current.take() {
                    to_sync.push(old.file);
                }
                self.current = Some(self.open(&hour)?);
            }
            let Some(c) = self.current.as_mut() else {
                continue;
            };
            if let Err(e) = c.file.write_all(lines) {
                let _ = c.file.set_len(c.size);
                return Err(e);
            }
            c.size += lines.len() as u64;
        }
        for f in to_sync {
            f.sync_data()?;
        }
        if let Some(c) = &self.current {
            c.file.sync_data()?;
        }
        Ok(())
    }

    /// The file to append to for `hour`: the newest one of that hour if it has room, else the
    /// next one. A last line cut short by a crash is removed first (it was never acknowledged,
    /// so its proxy sends it again).
    fn open(&self, hour: &str) -> io::Result<Current> {
        let prefix = format!("{PREFIX}{hour}-");
        let newest = list(&self.dir)?.into_iter().rev().find_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let index = name
                .strip_prefix(&prefix)?
                .strip_suffix(SUFFIX)?
                .parse()
                .ok()?;
            Some((p, index))
        });
        let (mut path, mut index) = newest.unwrap_or_else(|| (self.path(hour, 0), 0));
        loop {
            let existed = path.exists();
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?;
            let size = repair_tail(&mut file)?;
            if !existed {
                // Make the new name itself durable.
                File::open(&self.dir)?.sync_all()?;
                tracing::info!(file = %path.display(), "writing records to a new file");
            }
            let full = self.rotate_size.is_some_and(|max| size >= max);
            if !full {
                return Ok(Current {
                    file,
                    path,
                    hour: hour.to_string(),
                    index,
                    size,
                });
            }
            index += 1;
            path = self.path(hour, index);
        }
    }

    fn path(&self, hour: &str, index: u32) -> PathBuf {
        self.dir.join(format!("{PREFIX}{hour}-{index:03}{SUFFIX}"))
    }
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} bytes, #{})",
            self.path.display(),
            self.size,
            self.index
        )
    }
}

/// "2026-11-28T10": the UTC hour, the part of a file name that rotates it hourly.
fn current_hour() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour()
    )
}

/// Cuts a last line that has no newline; returns the file's size after.
fn repair_tail(file: &mut File) -> io::Result<u64> {
    const CHUNK: u64 = 64 << 10;
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(size - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(size);
    }
    let mut end = size;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(pos) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + pos as u64 + 1;
            tracing::warn!(cut = size - keep, "removing a record cut short by a crash");
            file.set_len(keep)?;
            return Ok(keep);
        }
        end = start;
    }
    tracing::warn!(cut = size, "removing a record cut short by a crash");
    file.set_len(0)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Delivery;
    use flowtap_schema::Flow;
    use tokio::sync::oneshot;

    fn job(ids: &[&str]) -> (Job, oneshot::Receiver<()>) {
        let flows = ids
            .iter()
            .map(|id| Flow {
                id: id.to_string(),
                ..Default::default()
            })
            .collect();
        let (done, rx) = oneshot::channel();
        (
            Job {
                delivery: Arc::new(Delivery::new(flows)),
                done,
            },
            rx,
        )
    }

    #[test]
    fn writes_rotates_and_repairs() {
        let dir = std::env::temp_dir().join(format!("flowtap-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stats = Arc::new(SinkStats::new("jsonl"));
        let (tx, existing, thread) = start(&dir, Some(1), stats.clone()).expect("start");
        assert!(existing.is_empty());
        let (a, a_done) = job(&["a1", "a2"]);
        let (b, b_done) = job(&["b1"]);
        tx.send(a).expect("send");
        tx.send(b).expect("send");
        drop(tx);
        thread.join().expect("thread");
        assert!(a_done.blocking_recv().is_ok() && b_done.blocking_recv().is_ok());
        assert_eq!(stats.written.load(Relaxed), 3);
        let files = list(&dir).expect("list");
        assert_eq!(
            files.len(),
            2,
            "a rotate size of 1 byte puts each submission in a new file"
        );
        let all: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("read"))
            .collect();
        assert_eq!(all.lines().count(), 3);

        // A torn last line is cut when the file is opened again.
        let last = files.last().expect("file");
        let mut f = OpenOptions::new().append(true).open(last).expect("open");
        f.write_all(b"{\"schema_version\":1,\"id\":\"torn")
            .expect("torn");
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(last)
            .expect("open");
        let size = repair_tail(&mut f).expect("repair");
        assert!(std::fs::read_to_string(last)
            .expect("read")
            .ends_with("}\n"));
        assert_eq!(size, std::fs::metadata(last).expect("meta").len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
