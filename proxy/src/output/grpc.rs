//! `--output grpc://HOST:PORT` / `grpcs://HOST:PORT`: batches streamed to flowtap-collector.
//! (Being built for the collector issue; until then the output is refused at start-up.)

use super::{Output, OutputSpec, WriterSettings};

/// Flags of the collector stream.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CollectorArgs {}

pub fn open(spec: &OutputSpec, _s: &WriterSettings) -> Result<Box<dyn Output>, String> {
    Err(format!(
        "--output {}: the gRPC output is not available yet",
        spec.raw
    ))
}
