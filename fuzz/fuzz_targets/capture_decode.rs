//! Body capture and its decoders (proxy/src/record/capture/): arbitrary bytes under every
//! content-encoding, in chunks, with a small limit: never panics, and the body in the record
//! never holds more than the limit (decoded bytes, or characters for text). Also `parse_size`,
//! the parser of every SIZE flag.
#![no_main]

use base64::Engine as _;
use bytes::Bytes;
use flowtap::record::capture::{parse_size, Capture, CaptureMode};
use libfuzzer_sys::fuzz_target;

const ENCODINGS: [&str; 10] = [
    "gzip", "deflate", "br", "zstd", "gzip, br", "zstd, gzip", "identity", "x-gzip", "GZIP",
    "deflate, deflate",
];
const TYPES: [&str; 4] = [
    "image/png",
    "text/plain; charset=iso-8859-1",
    "application/json",
    "application/octet-stream",
];

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    if head == b'S' {
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Ok(n) = parse_size(text) {
                let t = text.trim();
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    assert_eq!(Some(n), t.parse::<usize>().ok(), "{text:?}");
                }
            }
        }
        return;
    }
    let Some((&limit_byte, body)) = rest.split_first() else {
        return;
    };
    let encoding = ENCODINGS[usize::from(head) % ENCODINGS.len()];
    let content_type = TYPES[usize::from(head >> 4) % TYPES.len()];
    let limit = 1 + usize::from(limit_byte) * 16; // 1 ..= 4081 bytes
    let mut capture = Capture::new(CaptureMode::All, limit);
    // Chunks of varying size, as frames arrive.
    let mut at = 0;
    let mut step = 1 + usize::from(limit_byte % 7);
    while at < body.len() {
        let end = (at + step).min(body.len());
        capture.push(&Bytes::copy_from_slice(&body[at..end]));
        at = end;
        step = step * 3 % 97 + 1;
    }
    assert_eq!(capture.size(), body.len() as u64);
    let Some(out) = capture.finish(Some(content_type), Some(encoding)) else {
        assert!(body.is_empty(), "capture all dropped a non-empty body");
        return;
    };
    match out.encoding.as_str() {
        "base64" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&out.data)
                .expect("valid base64");
            assert!(bytes.len() <= limit, "{} decoded bytes > limit {limit}", bytes.len());
        }
        "text" => {
            let chars = out.data.chars().count();
            assert!(chars <= limit, "{chars} characters > limit {limit}");
        }
        other => panic!("unknown body encoding {other:?}"),
    }
    if body.len() > limit {
        assert!(out.truncated, "a body over the limit is marked truncated");
    }
});
