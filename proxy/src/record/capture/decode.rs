//! Content-encoding decoding of a captured body (gzip, deflate, brotli, zstd), for the record
//! only, each step capped at the capture limit.
//!
//! Memory while decoding stays near `limit`: output is pulled in steps and decoding stops at the
//! limit, so a zip bomb costs `limit` bytes plus the decoder's own window (32 KiB for deflate,
//! at most 16 MiB for brotli). zstd is planned from its block headers so that it decodes at most
//! one 128 KiB block past the limit, whatever window the frame asks for.

use std::borrow::Cow;
use std::io::{self, Read};

use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Decoded bytes are pulled from a decoder this many at a time, so a stream is decoded in steps
/// and stops close to the limit instead of being inflated whole.
const DECODE_STEP: usize = 8 * 1024;
/// Input buffer of the brotli decoder: the input is already in memory, a small buffer suffices.
const BROTLI_BUFFER: usize = 4 * 1024;
/// The largest block a zstd frame may hold (RFC 8878, Block_Maximum_Size); used to bound how much
/// a compressed block can decode to before decoding it.
const ZSTD_MAX_BLOCK: u64 = 128 * 1024;
/// Frame magic numbers of zstd (RFC 8878 §3.1.1 and §3.1.2), little-endian on the wire.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;

/// The output of one decoding step.
pub(super) struct Decoded<'a> {
    pub(super) bytes: Cow<'a, [u8]>,
    /// Output was cut: the limit was hit with more to come, or the input ended or broke early.
    pub(super) truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// The codings of a `content-encoding` value in the order they were applied, or None when one is
/// unknown (the body is then left as it is).
fn codings(content_encoding: &str) -> Option<Vec<Coding>> {
    let mut list = Vec::new();
    for name in content_encoding.split(',') {
        let coding = match name.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            "zstd" => Coding::Zstd,
            _ => return None,
        };
        list.push(coding);
    }
    Some(list)
}

/// Undoes the content codings, last applied first, each stage capped at `limit` output bytes.
/// When a stage can't decode anything, the raw bytes are returned as they are.
pub(super) fn decode<'a>(
    raw: &'a [u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Decoded<'a> {
    let as_is = Decoded {
        bytes: Cow::Borrowed(raw),
        truncated: false,
    };
    let Some(chain) = content_encoding.and_then(codings) else {
        return as_is;
    };
    let mut current = as_is;
    for coding in chain.into_iter().rev() {
        match decode_one(coding, &current.bytes, limit) {
            Some(step) => {
                current = Decoded {
                    bytes: Cow::Owned(step.bytes),
                    truncated: current.truncated || step.truncated,
                }
            }
            None => {
                return Decoded {
                    bytes: Cow::Borrowed(raw),
                    truncated: false,
                }
            }
        }
    }
    current
}

/// Output of one decoder.
struct Step {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Decodes `input` with one coding; None when nothing at all could be decoded.
fn decode_one(coding: Coding, input: &[u8], limit: usize) -> Option<Step> {
    match coding {
        Coding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(input), limit),
        Coding::Deflate => {
            // `deflate` means zlib, but some servers send raw deflate: try zlib when the first two
            // bytes are a valid zlib header, raw deflate otherwise or when zlib fails outright.
            let zlib = looks_like_zlib(input)
                .then(|| read_capped(flate2::read::ZlibDecoder::new(input), limit))
                .flatten();
            zlib.or_else(|| read_capped(flate2::read::DeflateDecoder::new(input), limit))
        }
        Coding::Brotli => read_capped(
            brotli_decompressor::Decompressor::new(input, BROTLI_BUFFER),
            limit,
        ),
        Coding::Zstd => zstd(input, limit),
    }
}

/// RFC 1950: CM = 8 (deflate), window ≤ 32K, and the header check bits.
fn looks_like_zlib(input: &[u8]) -> bool {
    match input {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Reads decoded output until the end, an error, or `limit` bytes (then probes one more byte to
/// tell a body of exactly `limit` bytes from a longer one). None when it fails before any output.
fn read_capped(mut reader: impl Read, limit: usize) -> Option<Step> {
    let mut out = Vec::new();
    let mut buf = [0u8; DECODE_STEP];
    loop {
        if out.len() >= limit {
            let mut probe = [0u8; 1];
            let more = !matches!(reader.read(&mut probe), Ok(0));
            return Some(Step {
                bytes: out,
                truncated: more,
            });
        }
        let want = (limit - out.len()).min(DECODE_STEP);
        match reader.read(&mut buf[..want]) {
            Ok(0) => {
                return Some(Step {
                    bytes: out,
                    truncated: false,
                })
            }
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if out.is_empty() => return None,
            Err(_) => {
                return Some(Step {
                    bytes: out,
                    truncated: true,
                })
            }
        }
    }
}

/// How much of one zstd frame to decode, worked out from its headers without decoding.
enum ZstdFrame {
    /// A skippable frame of this many bytes (header included); it carries no content.
    Skippable(usize),
    /// A frame wholly present and within budget: `end` is where it ends in the input.
    Whole { end: usize },
    /// A frame to decode only up to the block that ends at `blocks_end` (because the captured
    /// input ends inside it, or because decoding further could exceed the budget). `last_block`
    /// is where that block's header starts; None when not one block is complete.
    Cut {
        last_block: Option<usize>,
        blocks_end: usize,
    },
}

/// Decodes zstd frames one after another (RFC 8878 allows several). ruzstd keeps the last window
/// of output to itself until a frame ends, so a frame cut short by the capture would yield
/// nothing; instead each frame is planned from its block headers, and a cut frame is decoded as a
/// copy whose last complete block is marked as the last one. The plan also stops before blocks
/// that could take the output past the limit, so memory stays near the limit whatever the window.
fn zstd(input: &[u8], limit: usize) -> Option<Step> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut truncated = false;
    while !rest.is_empty() && !truncated {
        if out.len() >= limit {
            truncated = true;
            break;
        }
        let budget = limit - out.len();
        let frame = match plan_zstd_frame(rest, budget) {
            Some(frame) => frame,
            None if out.is_empty() => return None,
            None => {
                truncated = true;
                break;
            }
        };
        let data: Cow<[u8]> = match frame {
            ZstdFrame::Skippable(len) => {
                rest = &rest[len.min(rest.len())..];
                continue;
            }
            ZstdFrame::Whole { end } => {
                let whole = &rest[..end];
                rest = &rest[end..];
                Cow::Borrowed(whole)
            }
            ZstdFrame::Cut {
                last_block: None, ..
            } if out.is_empty() => return None,
            ZstdFrame::Cut {
                last_block: None, ..
            } => {
                truncated = true;
                break;
            }
            ZstdFrame::Cut {
                last_block: Some(last),
                blocks_end,
            } => {
                truncated = true;
                let mut copy = rest[..blocks_end].to_vec();
                copy[4] &= !0x04; // no content checksum follows
                copy[last] |= 0x01; // Last_Block
                Cow::Owned(copy)
            }
        };
        match zstd_frame(&data, budget) {
            Some(step) => {
                out.extend_from_slice(&step.bytes);
                truncated |= step.truncated;
            }
            None if out.is_empty() => return None,
            None => truncated = true,
        }
    }
    Some(Step {
        bytes: out,
        truncated,
    })
}

/// Decodes one frame that is known to end (whole, or cut and re-marked) and reads its output.
fn zstd_frame(frame: &[u8], budget: usize) -> Option<Step> {
    let mut source = frame;
    let mut decoder = FrameDecoder::new();
    decoder.init(&mut source).ok()?;
    decoder
        .decode_blocks(&mut source, BlockDecodingStrategy::All)
        .ok()?;
    read_capped(&mut decoder, budget)
}

/// Reads a zstd frame's header and walks its block headers (RFC 8878 §3.1.1).
fn plan_zstd_frame(input: &[u8], budget: usize) -> Option<ZstdFrame> {
    let magic = u32::from_le_bytes(input.get(..4)?.try_into().ok()?);
    if magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE_MAGIC {
        let size = u32::from_le_bytes(input.get(4..8)?.try_into().ok()?);
        return Some(ZstdFrame::Skippable(8usize.saturating_add(size as usize)));
    }
    if magic != ZSTD_MAGIC {
        return None;
    }
    let descriptor = *input.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    let checksum = descriptor & 0x04 != 0;
    if descriptor & 0x08 != 0 || descriptor & 0x03 != 0 {
        return None; // reserved bit set, or a dictionary we don't have
    }
    let fcs_len = match (descriptor >> 6, single_segment) {
        (0, false) => 0,
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    let window_len = usize::from(!single_segment);
    let header_len = 5 + window_len + fcs_len;
    let header = input.get(..header_len)?;
    let window = if single_segment {
        let mut fcs = [0u8; 8];
        fcs[..fcs_len].copy_from_slice(&header[5..]);
        u64::from_le_bytes(fcs) + if fcs_len == 2 { 256 } else { 0 }
    } else {
        let exponent = u32::from(header[5] >> 3);
        let base = 1u64 << (10 + exponent);
        base + base / 8 * u64::from(header[5] & 0x07)
    };
    let block_max = window.min(ZSTD_MAX_BLOCK);

    let mut pos = header_len;
    let mut last_block = None;
    let mut bound = 0u64;
    loop {
        let cut = ZstdFrame::Cut {
            last_block,
            blocks_end: pos,
        };
        if bound >= budget as u64 {
            return Some(cut);
        }
        let Some(&[b0, b1, b2]) = input.get(pos..pos + 3) else {
            return Some(cut);
        };
        let block = u32::from_le_bytes([b0, b1, b2, 0]);
        let size = (block >> 3) as usize;
        let (content, output) = match (block >> 1) & 0x03 {
            0 => (size, size as u64), // raw
            1 => (1, size as u64),    // RLE: one byte, repeated
            2 => (size, block_max),   // compressed: at most one full block
            _ => return Some(cut),    // reserved: corrupt from here on
        };
        let end = pos + 3 + content;
        if end > input.len() {
            return Some(cut);
        }
        last_block = Some(pos);
        bound += output;
        pos = end;
        if block & 0x01 != 0 {
            let frame_end = end + if checksum { 4 } else { 0 };
            // A whole frame may decode to one block more than the budget, no more: the loop only
            // reaches a block while the output bound before it is under the budget.
            return Some(if frame_end <= input.len() {
                ZstdFrame::Whole { end: frame_end }
            } else {
                ZstdFrame::Cut {
                    last_block,
                    blocks_end: end,
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;
    use crate::record::capture::tests::{base64, capture, text};
    use crate::record::capture::CaptureMode;

    /// `{"msg":"héllo","items":["flowtap" ×12]}`, as compressed by the `brotli` and `zstd` CLIs.
    const SMALL_TEXT: &str = r#"{"msg":"héllo","items":["flowtap","flowtap","flowtap","flowtap","flowtap","flowtap","flowtap","flowtap","flowtap","flowtap","flowtap","flowtap"]}"#;
    /// `brotli -q 11`
    const SMALL_BR: [u8; 54] = [
        0xa1, 0x88, 0x04, 0xc0, 0x6f, 0xa4, 0x16, 0x6b, 0xce, 0x70, 0x27, 0x28, 0xb7, 0xa5, 0x7e,
        0xb5, 0x2e, 0xad, 0x6c, 0x86, 0x97, 0x09, 0x0a, 0x06, 0x31, 0x06, 0x4b, 0x36, 0x59, 0x74,
        0xba, 0x52, 0x92, 0x85, 0x02, 0x2c, 0x05, 0x16, 0xe9, 0x43, 0x9f, 0x49, 0xb4, 0xff, 0xa4,
        0x02, 0xfd, 0x21, 0x23, 0x54, 0x7b, 0xf9, 0x00, 0x5f,
    ];
    /// `zstd -19` (single segment, content checksum)
    const SMALL_ZST: [u8; 58] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x92, 0x6d, 0x01, 0x00, 0x54, 0x02, 0x7b, 0x22, 0x6d, 0x73,
        0x67, 0x22, 0x3a, 0x22, 0x68, 0xc3, 0xa9, 0x6c, 0x6c, 0x6f, 0x22, 0x2c, 0x22, 0x69, 0x74,
        0x65, 0x6d, 0x73, 0x22, 0x3a, 0x5b, 0x22, 0x66, 0x6c, 0x6f, 0x77, 0x74, 0x61, 0x70, 0x22,
        0x2c, 0x5d, 0x7d, 0x01, 0x00, 0x53, 0x4d, 0xcb, 0x13, 0x07, 0x7f, 0x97, 0xb2,
    ];
    /// `yes "flowtap zstd block test line" | head -c 300000 | zstd -19`: three compressed blocks
    /// (128 KiB, 128 KiB, the rest) with headers at offsets 6, 47 and 58, then a checksum.
    const MULTI_ZST: [u8; 73] = [
        0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x68, 0x34, 0x01, 0x00, 0xe8, 0x66, 0x6c, 0x6f, 0x77, 0x74,
        0x61, 0x70, 0x20, 0x7a, 0x73, 0x74, 0x64, 0x20, 0x62, 0x6c, 0x6f, 0x63, 0x6b, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x6c, 0x69, 0x6e, 0x65, 0x0a, 0x01, 0x00, 0x81, 0xff, 0x83, 0x5c,
        0x39, 0x01, 0x44, 0x00, 0x00, 0x00, 0x01, 0x00, 0xfd, 0xff, 0x20, 0x57, 0x40, 0x45, 0x00,
        0x00, 0x00, 0x01, 0x00, 0xdd, 0x13, 0x1d, 0x00, 0x01, 0x48, 0x6e, 0x50, 0xe0,
    ];
    /// `yes "flowtap brotli test line" | head -c 300000 | brotli -q 5`
    const MULTI_BR: [u8; 35] = [
        0x5f, 0xdf, 0x93, 0x04, 0x40, 0xf4, 0x86, 0xbf, 0xe7, 0xda, 0xfd, 0x52, 0x3b, 0x94, 0x10,
        0x2b, 0x41, 0x2e, 0xac, 0x8a, 0xb3, 0x74, 0x81, 0x8b, 0x04, 0xf2, 0x45, 0xdc, 0xa8, 0x12,
        0xe2, 0x0b, 0x95, 0x4d, 0x43,
    ];

    /// What `yes "{line}" | head -c {len}` prints.
    fn yes(line: &str, len: usize) -> Vec<u8> {
        format!("{line}\n")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(len)
            .collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn gzip_round_trip() {
        let c = capture(CaptureMode::Text, 1 << 16, &[&gzip(SMALL_TEXT.as_bytes())]);
        let json = Some("application/json; charset=utf-8");
        assert_eq!(c.finish(json, Some("gzip")), text(SMALL_TEXT, false));
        assert_eq!(c.finish(json, Some("X-GZIP")), text(SMALL_TEXT, false));
    }

    #[test]
    fn deflate_round_trip_zlib_and_raw() {
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(SMALL_TEXT.as_bytes()).expect("zlib");
        let zlib = z.finish().expect("zlib");
        let mut d = DeflateEncoder::new(Vec::new(), Compression::best());
        d.write_all(SMALL_TEXT.as_bytes()).expect("deflate");
        let raw = d.finish().expect("deflate");
        for body in [zlib, raw] {
            let c = capture(CaptureMode::All, 1 << 16, &[&body]);
            assert_eq!(
                c.finish(Some("text/plain"), Some("deflate")),
                text(SMALL_TEXT, false)
            );
        }
    }

    #[test]
    fn brotli_round_trip() {
        let c = capture(CaptureMode::Text, 1 << 16, &[&SMALL_BR]);
        assert_eq!(
            c.finish(Some("application/json"), Some("br")),
            text(SMALL_TEXT, false)
        );
    }

    #[test]
    fn zstd_round_trip() {
        let c = capture(
            CaptureMode::Text,
            1 << 16,
            &[&SMALL_ZST[..20], &SMALL_ZST[20..]],
        );
        assert_eq!(
            c.finish(Some("application/json"), Some("zstd")),
            text(SMALL_TEXT, false)
        );

        let expected = yes("flowtap zstd block test line", 300_000);
        let c = capture(CaptureMode::All, 1 << 20, &[&MULTI_ZST]);
        let body = c.finish(None, Some("zstd"));
        assert_eq!(
            body,
            text(std::str::from_utf8(&expected).expect("ascii"), false)
        );
    }

    #[test]
    fn zstd_concatenated_and_skippable_frames() {
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        let body = [&skippable[..], &SMALL_ZST, &SMALL_ZST].concat();
        let c = capture(CaptureMode::Text, 1 << 16, &[&body]);
        let twice = format!("{SMALL_TEXT}{SMALL_TEXT}");
        assert_eq!(
            c.finish(Some("text/plain"), Some("zstd")),
            text(&twice, false)
        );
    }

    #[test]
    fn encoding_chain_is_decoded_right_to_left() {
        // "br, gzip": brotli applied first, then gzip.
        let c = capture(CaptureMode::Text, 1 << 16, &[&gzip(&SMALL_BR)]);
        assert_eq!(
            c.finish(Some("application/json"), Some("br, gzip")),
            text(SMALL_TEXT, false)
        );
        assert_eq!(
            c.finish(Some("application/json"), Some("identity, br , gzip")),
            text(SMALL_TEXT, false)
        );
    }

    #[test]
    fn unknown_or_broken_encoding_leaves_raw_bytes() {
        let c = capture(CaptureMode::Text, 1 << 16, &[b"plain words"]);
        assert_eq!(
            c.finish(Some("text/plain"), Some("compress")),
            text("plain words", false)
        );
        assert_eq!(
            c.finish(Some("text/plain"), Some("gzip, compress")),
            text("plain words", false)
        );
        assert_eq!(
            c.finish(Some("text/plain"), Some("gzip")),
            text("plain words", false)
        );
        assert_eq!(
            c.finish(Some("text/plain"), Some("br")),
            text("plain words", false)
        );
        assert_eq!(
            c.finish(Some("text/plain"), Some("zstd")),
            text("plain words", false)
        );
        assert_eq!(
            c.finish(Some("text/plain"), Some("deflate")),
            text("plain words", false)
        );
    }

    #[test]
    fn gzip_bomb_is_capped_at_the_limit() {
        let bomb = gzip(&vec![0u8; 10_000_000]);
        assert!(bomb.len() < 64 * 1024, "compressed bomb fits the capture");
        let limit = 64 * 1024;
        let c = capture(CaptureMode::All, limit, &[&bomb]);
        assert_eq!(c.size(), bomb.len() as u64);
        assert_eq!(
            c.finish(None, Some("gzip")),
            base64(&vec![0u8; limit], true)
        );
        // Textual by content type: NUL bytes are valid UTF-8, kept as text, still capped.
        let body = c.finish(Some("text/plain"), Some("gzip")).expect("body");
        assert_eq!((body.data.len(), body.truncated), (limit, true));
        let c = capture(CaptureMode::Text, limit, &[&bomb]);
        assert_eq!(c.finish(None, Some("gzip")), None);
    }

    #[test]
    fn zstd_bomb_is_planned_one_block_past_the_limit() {
        // 80 RLE blocks of 128 KiB of zeros (10 MiB) in 324 bytes, window 8 MiB, no checksum.
        let mut bomb = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x68];
        for i in 0..80u32 {
            let header = (128 * 1024) << 3 | 1 << 1 | u32::from(i == 79);
            bomb.extend_from_slice(&header.to_le_bytes()[..3]);
            bomb.push(0);
        }
        let limit = 64 * 1024;
        match plan_zstd_frame(&bomb, limit) {
            Some(ZstdFrame::Cut {
                last_block: Some(6),
                blocks_end: 10,
            }) => {}
            _ => panic!("the plan must stop after the first block"),
        }
        let c = capture(CaptureMode::All, limit, &[&bomb]);
        assert_eq!(
            c.finish(None, Some("zstd")),
            base64(&vec![0u8; limit], true)
        );
        // With room for it all, the whole frame decodes.
        let step = zstd(&bomb, 20 << 20).expect("decodes");
        assert_eq!((step.bytes.len(), step.truncated), (80 * 128 * 1024, false));
    }

    #[test]
    fn cut_zstd_frame_yields_its_complete_blocks() {
        let expected = yes("flowtap zstd block test line", 300_000);
        // Cut inside the third block: the first two (256 KiB) decode.
        let step = zstd(&MULTI_ZST[..65], 1 << 20).expect("decodes");
        assert_eq!(step.bytes, &expected[..256 * 1024]);
        assert!(step.truncated);
        // Cut in the checksum: all blocks decode, flagged because the capture was cut.
        let step = zstd(&MULTI_ZST[..71], 1 << 20).expect("decodes");
        assert_eq!(
            (step.bytes.as_slice(), step.truncated),
            (&expected[..], true)
        );
        // Cut inside the first block: nothing decodes, so the raw bytes stand.
        assert!(zstd(&MULTI_ZST[..30], 1 << 20).is_none());
        // Through a capture whose limit cuts the raw bytes.
        let c = capture(CaptureMode::Text, 65, &[&MULTI_ZST[..40], &MULTI_ZST[40..]]);
        let want = std::str::from_utf8(&expected[..65]).expect("ascii");
        assert_eq!(c.finish(Some("text/plain"), Some("zstd")), text(want, true));
    }

    #[test]
    fn cut_gzip_and_brotli_yield_a_decoded_prefix() {
        let original: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("line {i} {}\n", i.wrapping_mul(2_654_435_761)).into_bytes())
            .collect();
        let compressed = gzip(&original);
        let step = decode_one(Coding::Gzip, &compressed[..compressed.len() / 2], 1 << 24)
            .expect("prefix decodes");
        assert!(step.truncated && !step.bytes.is_empty());
        assert!(original.starts_with(&step.bytes));

        let expected = yes("flowtap brotli test line", 300_000);
        let step = decode_one(Coding::Brotli, &MULTI_BR[..25], 1 << 20).expect("prefix decodes");
        assert!(step.truncated && !step.bytes.is_empty());
        assert!(expected.starts_with(&step.bytes));
        let step = decode_one(Coding::Brotli, &MULTI_BR, 1 << 20).expect("decodes");
        assert_eq!((step.bytes, step.truncated), (expected, false));

        // Through a capture: 4 KiB of the compressed body, decoded and capped at 4 KiB.
        let c = capture(CaptureMode::Text, 4096, &[&compressed]);
        let want = std::str::from_utf8(&original[..4096]).expect("ascii");
        assert_eq!(c.finish(Some("text/plain"), Some("gzip")), text(want, true));
    }
}
