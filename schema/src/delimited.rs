//! Protobuf framing: each record is prefixed with its length as a varint, as protobuf's own
//! `writeDelimitedTo` / `parseDelimitedFrom` do.

use crate::Flow;
use prost::Message;

/// Appends one length-delimited record to `out`.
pub fn encode(flow: &Flow, out: &mut Vec<u8>) {
    out.reserve(flow.encoded_len() + 10);
    // Writing into a Vec cannot run out of space, so this cannot fail.
    let _ = flow.encode_length_delimited(out);
}

/// Reads one length-delimited record from the front of `buf`, advancing it.
/// Returns `Ok(None)` at a clean end of input.
pub fn decode(buf: &mut &[u8]) -> Result<Option<Flow>, prost::DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    Flow::decode_length_delimited(buf).map(Some)
}
