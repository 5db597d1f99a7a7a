//! The flowtap record: the one data contract every part of flowtap speaks.
//!
//! `proto/flowtap/v1/flow.proto` is the source of truth for fields and numbers. The types in
//! [`flow`] mirror it field for field and carry both encodings: protobuf (through `prost`) and the
//! JSON v1 encoding (through `serde`), so the two can never drift apart. [`json`] writes and reads
//! JSON lines, [`delimited`] frames protobuf records with a varint length prefix. This crate is
//! pure data: no sockets, no tokio. The proxy builds [`Flow`] values at the end of each exchange;
//! the collector and the converters only move them around. With the cargo feature `grpc` it also
//! carries the generated client and server of the collector service ([`grpc`]), the one place
//! where tonic enters this crate.

pub mod delimited;
pub mod flow;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod json;

pub use flow::{
    Body, Endpoint, Error, ErrorKind, Flow, Header, Request, Response, Server, Timings, Tls,
    SCHEMA_VERSION,
};
