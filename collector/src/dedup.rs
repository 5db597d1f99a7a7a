//! Record ids written recently, to drop the copies a proxy sends again after a reconnect.
//!
//! Delivery is at-least-once: a proxy re-sends every batch it has no acknowledgement for, and
//! some of those were written before the stream broke (or before the collector was killed). The
//! set holds the last [`SEEN_IDS`] ids, oldest forgotten first, and is seeded at start-up from
//! the newest files of the `jsonl:DIR` sink, so a restart does not forget what was written.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Ids remembered: far more than a proxy keeps unacknowledged (a 64 MiB buffer holds some
/// 100 000 records), at 16 bytes each plus the set's overhead (about 50 MiB in all).
pub const SEEN_IDS: usize = 1 << 20;

/// A set of recent ids with first-in-first-out forgetting.
pub struct Seen {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl Seen {
    pub fn new(capacity: usize) -> Self {
        Seen {
            set: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records `id`; false when it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        let key = key(id);
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Reads ids from the newest files first (in `files`, oldest first) until the set is full
    /// or the files are read, then orders them oldest first. Returns how many ids were read.
    pub fn seed_from_files(&mut self, files: &[impl AsRef<Path>]) -> usize {
        let mut ids: Vec<u128> = Vec::new();
        for path in files.iter().rev() {
            let Ok(f) = std::fs::File::open(path.as_ref()) else {
                continue;
            };
            let mut from_file = Vec::new();
            for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
                if let Some(id) = id_of_line(&line) {
                    from_file.push(key(id));
                }
            }
            from_file.reverse();
            ids.extend(from_file);
            if ids.len() >= self.capacity {
                break;
            }
        }
        ids.truncate(self.capacity);
        let n = ids.len();
        for k in ids.into_iter().rev() {
            if self.set.insert(k) {
                self.order.push_back(k);
            }
        }
        n
    }
}

/// A UUID as its 128 bits; anything else (ids are UUIDv7 by contract, but the collector must
/// not trust that) as a hash of its text.
fn key(id: &str) -> u128 {
    match uuid::Uuid::try_parse(id) {
        Ok(u) => u.as_u128(),
        Err(_) => {
            use std::hash::{Hash, Hasher};
            let mut a = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut a);
            let mut b = std::collections::hash_map::DefaultHasher::new();
            (id, 0x5eed_u32).hash(&mut b);
            (u128::from(a.finish()) << 64) | u128::from(b.finish())
        }
    }
}

/// The `id` of one JSON line, without parsing the whole record: fields are written in
/// `flow.proto` order, so `"id":"…"` comes within the first few dozen bytes.
fn id_of_line(line: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"id\":\"";
    let head = &line[..line.len().min(256)];
    let at = head.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &line[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_oldest() {
        let mut s = Seen::new(2);
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        assert!(s.insert("b"));
        assert!(s.insert("c"));
        assert!(s.insert("a"), "a was forgotten");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn reads_ids_from_lines() {
        let line = br#"{"schema_version":1,"kind":"http","id":"0192f0c4-7c1e-7cc3-9a51-6f1d2b1e8a10","start":"x"}"#;
        assert_eq!(
            id_of_line(line),
            Some("0192f0c4-7c1e-7cc3-9a51-6f1d2b1e8a10")
        );
        assert_eq!(id_of_line(b"{\"partial"), None);
    }

    #[test]
    fn seeds_newest_first() {
        let dir = std::env::temp_dir().join(format!("flowtap-seen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let old = dir.join("a.jsonl");
        let new = dir.join("b.jsonl");
        std::fs::write(&old, "{\"id\":\"old1\"}\n{\"id\":\"old2\"}\n").expect("old");
        std::fs::write(&new, "{\"id\":\"new1\"}\n{\"id\":\"new2\"}\n{\"id\":\"torn").expect("new");
        let mut s = Seen::new(3);
        assert_eq!(s.seed_from_files(&[&old, &new]), 3);
        assert!(!s.insert("new1") && !s.insert("new2") && !s.insert("old2"));
        assert!(s.insert("old1"), "beyond the capacity: not remembered");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
