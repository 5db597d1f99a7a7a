//! Rewrites the golden records in `schema/golden/` from their JSON: each `NAME.json` is put in
//! canonical form (pretty-printed in field order, as `tests/golden.rs` expects) and its twin
//! `NAME.binpb` is written as the same record in length-delimited protobuf.
//!
//! Run after adding or editing a golden record, then review the diff:
//! `cargo run -p flowtap-schema --example bless_golden`

use flowtap_schema::{delimited, json};
use std::path::Path;
use std::{fs, io};

fn main() -> io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut paths: Vec<_> = fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    paths.sort();
    for path in paths
        .iter()
        .filter(|p| p.extension() == Some("json".as_ref()))
    {
        let flow = json::decode_line(&fs::read(path)?)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        let mut pretty = serde_json::to_string_pretty(&flow).map_err(io::Error::other)?;
        pretty.push('\n');
        fs::write(path, pretty)?;
        let mut binpb = Vec::new();
        delimited::encode(&flow, &mut binpb);
        fs::write(path.with_extension("binpb"), binpb)?;
        println!("blessed {}", path.display());
    }
    Ok(())
}
