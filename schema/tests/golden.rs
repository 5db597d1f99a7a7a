//! The golden records in `schema/golden/` pin both encodings: each `NAME.json` must decode to the
//! same `Flow` as its twin `NAME.binpb` (length-delimited protobuf), each must re-encode to the
//! other byte for byte (JSON in its canonical pretty form), and every one must validate against
//! `flow.v1.schema.json`. Regenerate the twins with `cargo run -p flowtap-schema --example bless_golden`.

use flowtap_schema::{delimited, json, ErrorKind, Flow};
use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;

/// Every golden record; a missing file fails the test rather than shrinking the set.
const GOLDEN: [&str; 5] = [
    "http_h2_get",
    "http_plain_post_body",
    "http_upstream_error",
    "tunnel_ignored",
    "http_grpc_trailers",
];

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    let path = schema_dir().join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_json(name: &str) -> (String, Value) {
    let text = String::from_utf8(read(&format!("golden/{name}.json"))).expect("golden is UTF-8");
    let value = serde_json::from_str(&text).expect("golden is JSON");
    (text, value)
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_slice(&read("flow.v1.schema.json")).expect("schema JSON");
    jsonschema::meta::validate(&schema).expect("schema follows its meta-schema");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn json_golden_encodes_to_binpb_golden() {
    for name in GOLDEN {
        let (text, _) = golden_json(name);
        let flow = json::decode_line(text.as_bytes()).expect(name);
        let mut bytes = Vec::new();
        delimited::encode(&flow, &mut bytes);
        assert!(
            bytes == read(&format!("golden/{name}.binpb")),
            "{name}: protobuf differs from .binpb"
        );
        let canonical = serde_json::to_string_pretty(&flow).expect(name) + "\n";
        assert_eq!(
            text, canonical,
            "{name}: .json is not in canonical form (bless it)"
        );
    }
}

#[test]
fn binpb_golden_decodes_to_json_golden() {
    for name in GOLDEN {
        let (text, value) = golden_json(name);
        let bytes = read(&format!("golden/{name}.binpb"));
        let mut buf = bytes.as_slice();
        let flow = delimited::decode(&mut buf).expect(name).expect(name);
        assert!(buf.is_empty(), "{name}: trailing bytes after the record");
        assert_eq!(delimited::decode(&mut buf).expect(name), None);
        assert_eq!(serde_json::to_value(&flow).expect(name), value, "{name}");
        // Value comparison ignores key order; Flow comparison keeps header order.
        assert_eq!(
            flow,
            json::decode_line(text.as_bytes()).expect(name),
            "{name}"
        );
    }
}

#[test]
fn json_lines_round_trip() {
    for name in GOLDEN {
        let flow = json::decode_line(golden_json(name).0.as_bytes()).expect(name);
        let mut line = Vec::new();
        json::encode_line(&flow, &mut line);
        assert_eq!(json::decode_line(&line).expect(name), flow, "{name}");
        let value: Value = serde_json::from_slice(&line).expect(name);
        assert_eq!(value, golden_json(name).1, "{name}");
    }
}

#[test]
fn goldens_validate_against_the_schema() {
    let validator = validator();
    for name in GOLDEN {
        let (_, value) = golden_json(name);
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

/// Takes a valid record, changes one thing with `edit`, and says whether it still validates.
fn still_valid(edit: impl FnOnce(&mut Value)) -> bool {
    let mut value = golden_json("http_plain_post_body").1;
    edit(&mut value);
    validator().is_valid(&value)
}

fn remove(object: &mut Value, key: &str) {
    object.as_object_mut().expect("an object").remove(key);
}

#[test]
fn schema_rejects_what_the_contract_forbids() {
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 10] = [
        ("null known field", |v| v["duration_ms"] = Value::Null),
        ("null nested field", |v| v["server"]["ip"] = Value::Null),
        ("null unknown field", |v| {
            v["request"]["later_fact"] = Value::Null
        }),
        ("null in an array", |v| v["redacted"] = json!([Value::Null])),
        ("schema_version 2", |v| v["schema_version"] = json!(2)),
        ("no id", |v| remove(v, "id")),
        ("start without micros", |v| {
            v["start"] = json!("2024-08-12T09:23:29Z")
        }),
        ("upper-case header", |v| {
            v["request"]["headers"]["Host"] = json!("x")
        }),
        ("body without truncated", |v| {
            remove(&mut v["request"]["body"], "truncated")
        }),
        ("port out of range", |v| v["client"]["port"] = json!(65536)),
    ];
    for (what, edit) in cases {
        assert!(!still_valid(edit), "schema accepted: {what}");
    }
}

#[test]
fn schema_accepts_what_consumers_must_ignore() {
    assert!(still_valid(
        |v| v["later_fact"] = json!({"nested": [1, "x"]})
    ));
    assert!(still_valid(|v| v["response"]["later_fact"] = json!(true)));
    assert!(still_valid(|v| v["kind"] = json!("websocket_frame")));
}

#[test]
fn schema_error_kinds_are_exactly_the_rust_set() {
    let schema: Value = serde_json::from_slice(&read("flow.v1.schema.json")).expect("schema JSON");
    let in_schema = &schema["$defs"]["error"]["properties"]["kind"]["enum"];
    let in_rust: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(in_schema, &json!(in_rust));
}

#[test]
fn encoded_records_validate_even_when_minimal() {
    let flow = Flow {
        schema_version: flowtap_schema::SCHEMA_VERSION,
        kind: "tunnel".into(),
        id: "0192f0c4-7c1e-7cc3-9a51-6f1d2b1e8a10".into(),
        start: "2024-08-12T09:23:28.535123Z".into(),
        ..Flow::default()
    };
    let value = serde_json::to_value(&flow).expect("encodes");
    assert!(validator().is_valid(&value), "{value}");
}
