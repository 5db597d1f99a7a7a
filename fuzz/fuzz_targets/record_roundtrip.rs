//! The record encoders (schema/src/json.rs, schema/src/delimited.rs). The first byte picks the
//! input: `J` a JSON line, anything else a stream of length-delimited protobuf records. Whatever
//! decodes must survive every re-encoding unchanged: JSON -> JSON, JSON -> protobuf, protobuf ->
//! protobuf, protobuf -> JSON; and an encoded JSON line is one valid line without `null`.
#![no_main]

use flowtap_schema::{delimited, json, Flow};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Every float the record carries. JSON cannot write NaN or infinities (serde_json writes
/// `null`), so a record holding one cannot go to JSON and back; see `finite`.
fn floats(f: &Flow) -> Vec<Option<f64>> {
    let mut v = vec![f.duration_ms];
    if let Some(t) = &f.timings {
        v.extend([t.dns_ms, t.connect_ms, t.tls_ms, t.send_ms, t.wait_ms, t.receive_ms]);
    }
    v
}

fn finite(f: &Flow) -> bool {
    floats(f).into_iter().flatten().all(f64::is_finite)
}

fn to_json(f: &Flow) -> Vec<u8> {
    let mut line = Vec::new();
    json::encode_line(f, &mut line);
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(
        line.iter().filter(|b| **b == b'\n').count(),
        1,
        "a record is exactly one line"
    );
    line
}

fn to_pb(f: &Flow) -> Vec<u8> {
    let mut out = Vec::new();
    delimited::encode(f, &mut out);
    out
}

fn from_pb(bytes: &[u8]) -> Flow {
    let mut buf = bytes;
    let flow = delimited::decode(&mut buf)
        .expect("our own protobuf decodes")
        .expect("one record");
    assert!(buf.is_empty(), "bytes left after one record");
    flow
}

fn has_null(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(a) => a.iter().any(has_null),
        serde_json::Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

/// Protobuf bytes are the canonical form: equal bytes, equal records (NaN included).
fn assert_same(a: &Flow, b: &Flow, what: &str) {
    assert_eq!(a.encode_to_vec(), b.encode_to_vec(), "{what}: {a:?} != {b:?}");
}

/// The record with every float replaced by 0 (presence kept), and the floats.
fn split_floats(f: &Flow) -> (Flow, Vec<Option<f64>>) {
    let zero = |x: &mut Option<f64>| {
        if x.is_some() {
            *x = Some(0.0);
        }
    };
    let mut g = f.clone();
    zero(&mut g.duration_ms);
    if let Some(t) = &mut g.timings {
        for x in [
            &mut t.dns_ms,
            &mut t.connect_ms,
            &mut t.tls_ms,
            &mut t.send_ms,
            &mut t.wait_ms,
            &mut t.receive_ms,
        ] {
            zero(x);
        }
    }
    (g, floats(f))
}

/// Distance in units in the last place between two finite floats of the same sign.
fn ulps(a: f64, b: f64) -> u64 {
    if a == b {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u64::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

/// Equal records, except that floats that went through JSON text may differ by one unit in the
/// last place. Known issue (reported): serde_json parses floats without correct rounding unless
/// its `float_roundtrip` feature is on, so `8.918728106950273e47` written by the encoder reads
/// back one ULP off. Tighten to 0 once the workspace enables that feature.
fn assert_same_via_json(a: &Flow, b: &Flow, what: &str) {
    let (a_rest, a_floats) = split_floats(a);
    let (b_rest, b_floats) = split_floats(b);
    assert_same(&a_rest, &b_rest, what);
    for (x, y) in a_floats.iter().zip(&b_floats) {
        match (x, y) {
            (Some(x), Some(y)) => assert!(ulps(*x, *y) <= 1, "{what}: float {x:e} became {y:e}"),
            (None, None) => {}
            _ => panic!("{what}: float presence changed: {x:?} -> {y:?}"),
        }
    }
}

/// Round trips of a record that decoded from somewhere.
fn check(flow: &Flow) {
    let pb = to_pb(flow);
    let back = from_pb(&pb);
    assert_same(flow, &back, "protobuf -> protobuf");
    assert_eq!(to_pb(&back), pb, "protobuf encoding is stable");

    if !finite(flow) {
        return;
    }
    let line = to_json(flow);
    let text = std::str::from_utf8(&line).expect("JSON lines are UTF-8");
    let value: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    assert!(!has_null(&value), "absent facts are omitted, never null: {text}");
    let decoded = json::decode_line(&line)
        .unwrap_or_else(|e| panic!("our own JSON does not decode ({e}): {text}"));
    assert_same_via_json(flow, &decoded, "-> JSON -> record");
    let again = json::decode_line(&to_json(&decoded)).expect("our own JSON decodes");
    assert_same_via_json(&decoded, &again, "JSON -> record -> JSON -> record");
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b'J', line)) => {
            if let Ok(flow) = json::decode_line(line) {
                check(&flow);
            }
        }
        Some((_, mut stream)) => {
            while let Ok(Some(flow)) = delimited::decode(&mut stream) {
                check(&flow);
            }
        }
        None => {}
    }
});
