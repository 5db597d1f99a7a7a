//! Bounded body capture for the record.
//!
//! A [`Capture`] sits on each body tap and sees every data frame as it is forwarded. It always
//! counts the size; when capture is on it copies at most `limit` raw bytes and nothing more, so the
//! hot path costs one add when capture is off and one bounded copy when it is on. All the work
//! happens once, in [`Capture::finish`], when the record is built: the captured prefix is decoded
//! (`content-encoding`), capped at `limit` decoded bytes, classified as text or binary and turned
//! into the record's `body`. Decoding is for the record only; the traffic is never touched.
//!
//! The two steps of `finish` have their own files: `decode.rs` undoes the content codings within
//! bounded memory, and `classify.rs` tells text from binary; this file holds the tap, the glue in
//! `finish`, and the size helpers `shrink_body` and `parse_size`.

mod classify;
mod decode;

use std::str::FromStr;

use base64::Engine as _;
use bytes::Bytes;
use flowtap_schema::Body;

use classify::{classify, Class, ContentType, Declared};
use decode::decode;

/// Which bodies go into the record (`--capture-bodies none|text|all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// Count sizes only.
    None,
    /// Keep textual bodies (as text); drop binary ones.
    Text,
    /// Keep every body: text as text, binary as base64.
    All,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::None => "none",
            CaptureMode::Text => "text",
            CaptureMode::All => "all",
        }
    }
}

impl FromStr for CaptureMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(CaptureMode::None),
            "text" => Ok(CaptureMode::Text),
            "all" => Ok(CaptureMode::All),
            _ => Err(format!(
                "invalid body capture mode {s:?}: expected none, text or all"
            )),
        }
    }
}

/// The body tap of one message: its size, and a prefix of at most `limit` bytes.
#[derive(Clone, Debug)]
pub struct Capture {
    mode: CaptureMode,
    limit: usize,
    size: u64,
    raw: Vec<u8>,
}

impl Capture {
    pub fn new(mode: CaptureMode, limit: usize) -> Self {
        Capture {
            mode,
            limit,
            size: 0,
            raw: Vec::new(),
        }
    }

    /// Called for every data frame as it is forwarded. Always counts the size; keeps at most
    /// `limit` raw bytes when mode != None.
    #[inline]
    pub fn push(&mut self, chunk: &Bytes) {
        self.size += chunk.len() as u64;
        if self.mode == CaptureMode::None {
            return;
        }
        let room = self.limit.saturating_sub(self.raw.len());
        if room > 0 {
            let take = room.min(chunk.len());
            self.raw.extend_from_slice(&chunk[..take]);
        }
    }

    /// Total body bytes seen (always counted).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Builds the record's body: undoes `content_encoding` (a chain like "gzip, br" right to left;
    /// unknown codings leave the bytes raw; output capped at `limit`), then keeps it as text when
    /// the content type is textual or, absent/unknown, when the bytes are UTF-8 without control
    /// characters other than \t \r \n. Binary is base64 under All and dropped under Text.
    /// `truncated` is set when the capture, the decoded output or the decoding stopped short.
    /// None when capture is off or the body is empty.
    pub fn finish(
        &self,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> Option<Body> {
        if self.mode == CaptureMode::None || self.size == 0 {
            return None;
        }
        let content_type = ContentType::parse(content_type);
        if self.mode == CaptureMode::Text && content_type.declared() == Declared::Binary {
            return None; // dropped anyway: don't decode it
        }
        let cut = (self.raw.len() as u64) < self.size;
        let decoded = decode(&self.raw, content_encoding, self.limit);
        let truncated = cut || decoded.truncated;
        match (
            classify(&content_type, &decoded.bytes, truncated),
            self.mode,
        ) {
            (Class::Text(data), _) => Some(Body {
                encoding: "text".to_string(),
                data,
                truncated,
            }),
            // Declared text in an unknown charset is kept in Text mode too, as base64: it is text.
            (Class::DeclaredText, _) | (Class::Binary, CaptureMode::All) => Some(Body {
                encoding: "base64".to_string(),
                data: base64::engine::general_purpose::STANDARD.encode(&decoded.bytes),
                truncated,
            }),
            (Class::Binary, _) => None,
        }
    }
}

/// Trims a body so that its JSON encoding shrinks by at least `excess` bytes (used to keep stdout
/// lines under 16 KiB): text cut at a char boundary, base64 cut to a multiple of 4; sets
/// truncated = true. Returns false when the body is already empty.
pub fn shrink_body(body: &mut Body, excess: usize) -> bool {
    if body.data.is_empty() {
        return false;
    }
    let excess = excess.max(1);
    let keep = if body.encoding == "base64" {
        let whole = body.data.len() - body.data.len() % 4;
        whole.saturating_sub(excess.div_ceil(4) * 4)
    } else {
        let mut saved = 0;
        let mut keep = body.data.len();
        for (at, c) in body.data.char_indices().rev() {
            if saved >= excess {
                break;
            }
            saved += json_len(c);
            keep = at;
        }
        keep
    };
    body.data.truncate(keep);
    body.truncated = true;
    true
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{08}' | '\u{0c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Parses "64KiB", "1MiB", "1024", "10kb", "2M", "1.5M" into bytes (K, KB and KiB all mean 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = || {
        format!(
            "invalid size {s:?}: expected a number of bytes with an optional unit \
             B, K/KB/KiB, M/MB/MiB or G/GB/GiB (all powers of 1024), e.g. 1024, 64KiB, 10kb, 2M"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') || fraction.len() > 9 {
        return Err(bad());
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits.parse().map_err(|_| bad())?;
    let scale = 10u128.pow(fraction.len() as u32);
    let bytes = mantissa.checked_mul(multiplier).ok_or_else(bad)? / scale;
    usize::try_from(bytes).map_err(|_| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn capture(mode: CaptureMode, limit: usize, chunks: &[&[u8]]) -> Capture {
        let mut c = Capture::new(mode, limit);
        for chunk in chunks {
            c.push(&Bytes::copy_from_slice(chunk));
        }
        c
    }

    pub(super) fn text(data: &str, truncated: bool) -> Option<Body> {
        Some(Body {
            encoding: "text".into(),
            data: data.into(),
            truncated,
        })
    }

    pub(super) fn base64(data: &[u8], truncated: bool) -> Option<Body> {
        Some(Body {
            encoding: "base64".into(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
            truncated,
        })
    }

    #[test]
    fn size_is_counted_with_capture_off() {
        let c = capture(CaptureMode::None, 1024, &[b"hello ", b"world"]);
        assert_eq!(c.size(), 11);
        assert!(c.raw.is_empty());
        assert_eq!(c.finish(Some("text/plain"), None), None);
        let c = capture(CaptureMode::All, 1024, &[]);
        assert_eq!((c.size(), c.finish(Some("text/plain"), None)), (0, None));
    }

    #[test]
    fn chunks_crossing_the_limit() {
        let c = capture(CaptureMode::Text, 10, &[b"hello ", b"world ", b"again"]);
        assert_eq!(c.size(), 17);
        assert_eq!(c.raw, b"hello worl");
        assert_eq!(c.finish(Some("text/plain"), None), text("hello worl", true));
        // Exactly at the limit: not truncated.
        let c = capture(CaptureMode::Text, 11, &[b"hello ", b"world"]);
        assert_eq!(
            c.finish(Some("text/plain"), None),
            text("hello world", false)
        );
        // Cut inside a multibyte character: the partial character goes.
        let c = capture(CaptureMode::Text, 3, &["h€llo".as_bytes()]);
        assert_eq!(c.finish(Some("text/plain"), None), text("h", true));
        assert_eq!(c.finish(None, None), text("h", true));
    }

    #[test]
    fn shrink_text_at_char_boundaries() {
        let json_len = |b: &Body| serde_json::to_string(&b.data).expect("json").len();
        for excess in 1..12 {
            let mut body = text("aé€😀\"\n\u{1}", false).expect("body");
            let before = json_len(&body);
            assert!(shrink_body(&mut body, excess));
            assert!(before - json_len(&body) >= excess, "excess {excess}");
            assert!(body.truncated);
        }
        let mut body = text("aé€😀", false).expect("body");
        assert!(shrink_body(&mut body, 3));
        assert_eq!(body.data, "aé€");
        assert!(shrink_body(&mut body, 4));
        assert_eq!(body.data, "a");
        assert!(shrink_body(&mut body, 100));
        assert_eq!(body.data, "");
        assert!(!shrink_body(&mut body, 1));
    }

    #[test]
    fn shrink_base64_to_multiples_of_four() {
        let mut body = base64(b"ABCDEFG", false).expect("body");
        assert_eq!(body.data, "QUJDREVGRw==");
        assert!(shrink_body(&mut body, 1));
        assert_eq!((body.data.as_str(), body.truncated), ("QUJDREVG", true));
        assert!(shrink_body(&mut body, 5));
        assert_eq!(body.data, "");
        assert!(!shrink_body(&mut body, 5));
    }

    #[test]
    fn sizes() {
        for (s, n) in [
            ("1024", 1024),
            ("0", 0),
            ("64KiB", 65536),
            ("10kb", 10240),
            ("8 K", 8192),
            ("2M", 2 << 20),
            ("1MiB", 1 << 20),
            ("1mb", 1 << 20),
            ("1G", 1 << 30),
            ("1.5M", 3 << 19),
            ("512b", 512),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for s in ["", "k", "abc", "-1", "1.2.3", "10 parsecs", "1TB"] {
            let err = parse_size(s).expect_err(s);
            assert!(err.contains("KiB"), "{err}");
        }
    }

    #[test]
    fn capture_modes_parse() {
        assert_eq!("TEXT".parse(), Ok(CaptureMode::Text));
        assert_eq!("all".parse(), Ok(CaptureMode::All));
        assert_eq!("none".parse(), Ok(CaptureMode::None));
        assert!("some".parse::<CaptureMode>().is_err());
        assert_eq!(CaptureMode::All.as_str(), "all");
    }
}
