//! `--spool DIR`: unacknowledged batches on disk, one file per batch, so they outlive the proxy.
//!
//! A batch file is named `SEQ-RECORDS.pb` (sequence number zero-padded so names sort by it) and
//! holds the batch's records as length-delimited protobuf, the same bytes `--output pb:PATH`
//! writes, so `flowtap convert --from pb` reads a spool file as it is. Files are written to a
//! temporary name and renamed, so a crash never leaves a torn batch under a batch name. A file is
//! removed when the collector acknowledges its batch, or when the spool is over its limit.

use flowtap_schema::{delimited, Flow};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".pb";
const TMP_PREFIX: &str = ".incoming-";

/// A batch found on disk at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spooled {
    pub seq: u64,
    pub records: u32,
    pub bytes: usize,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Creates `dir` if needed, checks it is writable, removes half-written files and lists the
    /// batches waiting in it, oldest first.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<Spooled>), String> {
        let ctx = |e: io::Error| format!("{}: {e}", dir.display());
        fs::create_dir_all(dir).map_err(ctx)?;
        let probe = dir.join(format!("{TMP_PREFIX}probe"));
        fs::write(&probe, b"").map_err(ctx)?;
        let _ = fs::remove_file(&probe);
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(ctx)? {
            let entry = entry.map_err(ctx)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some((seq, records)) = parse_name(&name) else {
                continue;
            };
            let bytes = entry.metadata().map_err(ctx)?.len() as usize;
            found.push(Spooled {
                seq,
                records,
                bytes,
            });
        }
        found.sort_by_key(|s| s.seq);
        Ok((
            Spool {
                dir: dir.to_path_buf(),
            },
            found,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seq: u64, records: u32) -> PathBuf {
        self.dir.join(format!("{seq:020}-{records}{SUFFIX}"))
    }

    /// Writes one batch (already encoded as delimited records) under its final name.
    pub fn write(&self, seq: u64, records: u32, encoded: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{TMP_PREFIX}{seq}"));
        fs::write(&tmp, encoded)?;
        fs::rename(&tmp, self.path(seq, records))
    }

    /// Reads one batch back.
    pub fn read(&self, seq: u64, records: u32) -> io::Result<Vec<Flow>> {
        let path = self.path(seq, records);
        let data = fs::read(&path)?;
        let mut buf = data.as_slice();
        let mut out = Vec::with_capacity(records as usize);
        loop {
            match delimited::decode(&mut buf) {
                Ok(Some(flow)) => out.push(flow),
                Ok(None) => break,
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Removes one batch (acknowledged, or dropped to stay within the limit).
    pub fn remove(&self, seq: u64, records: u32) {
        let path = self.path(seq, records);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a spooled batch");
            }
        }
    }
}

/// `00000000000000000042-17.pb` -> (42, 17).
fn parse_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (seq, records) = stem.split_once('-')?;
    Some((seq.parse().ok()?, records.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let dir = std::env::temp_dir().join(format!("flowtap-spool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (spool, found) = Spool::open(&dir).expect("open");
        assert!(found.is_empty());
        let flow = Flow {
            schema_version: 1,
            kind: "http".into(),
            id: "x".into(),
            ..Default::default()
        };
        let mut buf = Vec::new();
        delimited::encode(&flow, &mut buf);
        delimited::encode(&flow, &mut buf);
        spool.write(42, 2, &buf).expect("write");
        fs::write(dir.join(format!("{TMP_PREFIX}43")), b"torn").expect("torn file");
        let (spool, found) = Spool::open(&dir).expect("reopen");
        assert_eq!(
            found,
            vec![Spooled {
                seq: 42,
                records: 2,
                bytes: buf.len()
            }]
        );
        assert_eq!(spool.read(42, 2).expect("read"), vec![flow.clone(), flow]);
        spool.remove(42, 2);
        assert!(Spool::open(&dir).expect("again").1.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_names() {
        assert_eq!(parse_name("00000000000000000042-17.pb"), Some((42, 17)));
        assert_eq!(parse_name("lock"), None);
        assert_eq!(parse_name(".incoming-3"), None);
    }
}
