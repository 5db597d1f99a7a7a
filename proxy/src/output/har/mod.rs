//! `--output har:PATH`: a HAR 1.2 file that is valid JSON after every batch, so a proxy that is
//! killed leaves a file any HAR viewer opens; and `flowtap convert --to har`.
//!
//! The file is one document, entries one per line:
//!
//! ```text
//! {"log":{"version":"1.2","creator":{…},"entries":[
//! {…entry…},
//! {…entry…}
//! ]}}
//! ```
//!
//! Each batch is written with one positioned write over the closing `\n]}}\n`: the new entries,
//! then the closing again. An existing file is continued when flowtap wrote it (it starts with
//! our opening and ends with our closing); any other existing file is refused, never
//! overwritten. HTTP records become entries; tunnel records have no place in HAR and are left out.

mod entry;

pub use entry::{entry, Entry};

use super::{Generation, Output, OutputSpec, Target, WriterSettings};
use flowtap_schema::Flow;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Everything before the first entry; `creator.version` follows.
const OPENING: &str = r#"{"log":{"version":"1.2","creator":{"name":"flowtap","version":""#;
/// Closes the document after the last entry.
const CLOSING: &[u8] = b"\n]}}\n";

fn opening() -> String {
    format!("{OPENING}{}\"}},\"entries\":[", env!("CARGO_PKG_VERSION"))
}

/// Writes `flows` as one HAR 1.2 document (used by `flowtap convert --to har`).
pub fn write_document(
    flows: &mut dyn Iterator<Item = Flow>,
    out: &mut dyn Write,
) -> Result<(), String> {
    let io = |e: std::io::Error| format!("writing HAR: {e}");
    out.write_all(opening().as_bytes()).map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut first = true;
    for flow in flows {
        buf.clear();
        if append_entry(&flow, first, &mut buf) {
            first = false;
            out.write_all(&buf).map_err(io)?;
        }
    }
    out.write_all(CLOSING).map_err(io)?;
    Ok(())
}

/// Appends `,\n` (or `\n` before the first) and the record's entry; false for a record that
/// is not an HTTP exchange.
fn append_entry(flow: &Flow, first: bool, buf: &mut Vec<u8>) -> bool {
    let Some(e) = entry(flow) else { return false };
    let at = buf.len();
    buf.extend_from_slice(if first { b"\n" } else { b",\n" });
    if serde_json::to_writer(&mut *buf, &e).is_err() {
        buf.truncate(at);
        return false;
    }
    true
}

struct HarFile {
    file: File,
    path: PathBuf,
    generation: Generation,
    /// Where the closing starts: the next batch is written from here.
    closing_at: u64,
    has_entries: bool,
    buf: Vec<u8>,
}

pub fn open(spec: &OutputSpec, _s: &WriterSettings) -> Result<Box<dyn Output>, String> {
    let Target::File(path) = &spec.target else {
        return Err("HAR needs a file path".to_string());
    };
    Ok(Box::new(HarFile::open(path)?))
}

impl HarFile {
    fn open(path: &Path) -> Result<Self, String> {
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| fail("cannot open", e))?;
        let len = file.metadata().map_err(|e| fail("cannot stat", e))?.len();
        let (closing_at, has_entries) = if len == 0 {
            let mut start = opening().into_bytes();
            start.extend_from_slice(CLOSING);
            file.write_all_at(&start, 0)
                .map_err(|e| fail("cannot write", e))?;
            ((start.len() - CLOSING.len()) as u64, false)
        } else {
            continued(&mut file, len).ok_or_else(|| {
                format!(
                    "{} exists and is not a HAR file written by flowtap; \
                     move it away or choose another path",
                    path.display()
                )
            })?
        };
        Ok(HarFile {
            file,
            path: path.to_path_buf(),
            generation: Generation::now(),
            closing_at,
            has_entries,
            buf: Vec::with_capacity(64 << 10),
        })
    }
}

/// For a file flowtap wrote: where its closing starts and whether it holds entries.
fn continued(file: &mut File, len: u64) -> Option<(u64, bool)> {
    let mut head = vec![0u8; OPENING.len()];
    file.read_exact(&mut head).ok()?;
    if head != OPENING.as_bytes() || len < (OPENING.len() + CLOSING.len()) as u64 {
        return None;
    }
    let tail_len = CLOSING.len() as u64 + 1;
    file.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail).ok()?;
    if &tail[1..] != CLOSING {
        return None;
    }
    Some((len - CLOSING.len() as u64, tail[0] != b'['))
}

impl Output for HarFile {
    fn write(&mut self, batch: &[Flow]) {
        if self.generation.reopen_due() {
            // A file moved away is closed as it is (a whole document); the path gets a new one,
            // or, if the file is still there, its entries go on.
            match HarFile::open(&self.path) {
                Ok(new) => {
                    self.close();
                    *self = new;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reopening the HAR file failed; writing to the one open")
                }
            }
        }
        self.buf.clear();
        let mut first = !self.has_entries;
        for flow in batch {
            if append_entry(flow, first, &mut self.buf) {
                first = false;
            }
        }
        if self.buf.is_empty() {
            return;
        }
        let body = self.buf.len() as u64;
        self.buf.extend_from_slice(CLOSING);
        match self.file.write_all_at(&self.buf, self.closing_at) {
            Ok(()) => {
                self.closing_at += body;
                self.has_entries = true;
            }
            Err(e) => {
                tracing::error!(output = %self.path.display(), error = %e, "writing HAR entries failed");
                // Put the closing back where it was so the file stays a valid document.
                let restored = self
                    .file
                    .write_all_at(CLOSING, self.closing_at)
                    .and_then(|_| self.file.set_len(self.closing_at + CLOSING.len() as u64));
                if let Err(e) = restored {
                    tracing::error!(output = %self.path.display(), error = %e, "the HAR file may be cut short");
                }
            }
        }
    }

    fn close(&mut self) {
        if let Err(e) = self.file.sync_data() {
            tracing::warn!(output = %self.path.display(), error = %e, "syncing the HAR file failed");
        }
    }
}

#[cfg(test)]
mod tests;
