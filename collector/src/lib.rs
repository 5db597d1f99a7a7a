//! flowtap-collector: receives records from many flowtap proxies over gRPC and fans them out to
//! sinks.
//!
//! It sits at the far end of the proxy's `--output grpc://…`: each proxy streams batches of
//! finished records (`collector.proto` in `schema/`); the collector stamps each record with the
//! proxy's name as `source`, drops records it has already written (by record id), hands the rest
//! to every sink, and acknowledges a batch once the acknowledging sinks hold it (the file sink has
//! fsynced it). Network sinks (Loki, Elasticsearch) have their own bounded queues, batching and
//! retries, so a slow or failing one never holds up the files or the acknowledgements.
//!
//! ```text
//! ingest    the gRPC service: token check, one task per stream, acks in batch order
//! dedup     recently written record ids (seeded from the files at start-up)
//! hub       one submission per batch to every sink; acking sinks complete in order
//! sinks     files (jsonl:DIR, rotated, fsynced), stdout, loki:URL, elasticsearch:URL, otlp
//! admin     /metrics (Prometheus text) and /healthz
//! ```

pub mod admin;
pub mod config;
pub mod dedup;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod sinks;
