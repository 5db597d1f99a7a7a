//! `--output har:PATH`: a HAR 1.2 file that stays readable even if the proxy is killed.
//! (Being built for the HAR issue; until then the output is refused at start-up.)

use super::{Output, OutputSpec, WriterSettings};
use flowtap_schema::Flow;
use std::io::Write;

pub fn open(spec: &OutputSpec, _s: &WriterSettings) -> Result<Box<dyn Output>, String> {
    Err(format!(
        "--output {}: the HAR output is not available yet",
        spec.raw
    ))
}

/// Writes `flows` as one HAR 1.2 document (used by `flowtap convert --to har`).
pub fn write_document(
    _flows: &mut dyn Iterator<Item = Flow>,
    _out: &mut dyn Write,
) -> Result<(), String> {
    Err("HAR conversion is not available yet".into())
}
