//! `src/generated/flowtap.v1.rs` (the collector service's messages, client and server) is what
//! `tonic-prost-build` makes of `collector.proto` today. The file is checked in so that building
//! flowtap needs neither `protoc` nor a build script; this test compiles the proto with `protox`
//! (pure Rust), generates the code again and compares.
//!
//! After editing `collector.proto`: `FLOWTAP_BLESS=1 cargo test -p flowtap-schema --test grpc_codegen`.

use std::path::{Path, PathBuf};

/// The messages of flow.proto are the hand-written types in `flowtap_schema::flow`; the generated
/// code refers to them instead of generating its own.
const FLOW_MESSAGES: &[&str] = &[
    "Flow", "Endpoint", "Server", "Tls", "Request", "Response", "Header", "Body", "Error",
    "Timings",
];

fn generate(out_dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["flowtap/v1/collector.proto"], [root.join("proto")])
        .expect("collector.proto compiles");
    let mut builder = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out_dir);
    for name in FLOW_MESSAGES {
        builder = builder.extern_path(
            format!(".flowtap.v1.{name}"),
            format!("crate::flow::{name}"),
        );
    }
    builder.compile_fds(fds).expect("code generation");
    out_dir.join("flowtap.v1.rs")
}

#[test]
fn generated_code_is_current() {
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/generated/flowtap.v1.rs");
    let tmp = std::env::temp_dir().join(format!("flowtap-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let fresh = std::fs::read_to_string(generate(&tmp)).expect("generated file");
    let _ = std::fs::remove_dir_all(&tmp);
    if std::env::var_os("FLOWTAP_BLESS").is_some() {
        std::fs::write(&checked_in, &fresh).expect("write the generated file");
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is stale: run FLOWTAP_BLESS=1 cargo test -p flowtap-schema --test grpc_codegen",
        checked_in.display()
    );
}
