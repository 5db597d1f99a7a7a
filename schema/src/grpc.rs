//! The collector service of `proto/flowtap/v1/collector.proto` (feature `grpc`): the `Batch` and
//! `Ack` messages, `collector_client::CollectorClient` for the proxy and
//! `collector_server::{Collector, CollectorServer}` for flowtap-collector. The code is generated
//! by `tonic-prost-build` and checked in; `tests/grpc_codegen.rs` keeps it current. Records in a
//! `Batch` are the hand-written [`crate::Flow`].

#![allow(clippy::all, missing_docs)]

include!("generated/flowtap.v1.rs");
