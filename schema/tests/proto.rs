//! `flow.proto` and the Rust types agree. The proto is compiled with `protox` (pure Rust, no
//! `protoc`); a `Flow` is encoded by `prost` and decoded as a `prost_reflect::DynamicMessage` built
//! from that descriptor. Every proto field must come back populated, under the name serde writes
//! in JSON v1, with the same value, and nothing may be left over as an unknown field.

use flowtap_schema::{
    Body, Endpoint, Error, Flow, Header, Request, Response, Server, Timings, Tls,
};
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value as Proto,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;

const PACKAGE: &str = "flowtap.v1";

fn flow_descriptor() -> MessageDescriptor {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let files = protox::compile(["flowtap/v1/flow.proto"], [include]).expect("flow.proto compiles");
    let pool = DescriptorPool::from_file_descriptor_set(files).expect("descriptor pool");
    pool.get_message_by_name(&format!("{PACKAGE}.Flow"))
        .expect("Flow in the proto")
}

fn decode(flow: &Flow) -> (Vec<u8>, DynamicMessage) {
    let bytes = flow.encode_to_vec();
    let message = DynamicMessage::decode(flow_descriptor(), bytes.as_slice()).expect("decodes");
    (bytes, message)
}

/// Every field set, every value distinct (so swapped tags show), 64-bit sizes above `u32::MAX`
/// (so a narrower proto type shows).
fn full_flow() -> Flow {
    let headers = |side: &str| {
        vec![
            Header::new(format!("{side}-a"), "1"),
            Header::new(format!("{side}-b"), "2"),
        ]
    };
    let body = |data: &str| {
        Some(Body {
            encoding: "text".into(),
            data: data.into(),
            truncated: true,
        })
    };
    Flow {
        schema_version: 1,
        kind: "http".into(),
        id: "id".into(),
        start: "start".into(),
        duration_ms: Some(1.5),
        connection_id: "connection_id".into(),
        client: Some(Endpoint {
            ip: "client.ip".into(),
            port: 1,
        }),
        server: Some(Server {
            host: "server.host".into(),
            port: 2,
            ip: "server.ip".into(),
        }),
        tls: Some(Tls {
            intercepted: Some(true),
            sni: "sni".into(),
            alpn: "alpn".into(),
            client_version: "client_version".into(),
            server_version: "server_version".into(),
            upstream_verified: Some(false),
            client_alpn: vec!["h2".into(), "http/1.1".into()],
            client_cert_requested: Some(true),
            upstream_error: "upstream_error".into(),
        }),
        request: Some(Request {
            method: "method".into(),
            url: "url".into(),
            http_version: "request.http_version".into(),
            headers: headers("request"),
            body_size: Some(1 << 33),
            body: body("request.body"),
            trailers: headers("request-trailer"),
        }),
        response: Some(Response {
            status: 3,
            reason: "reason".into(),
            http_version: "response.http_version".into(),
            headers: headers("response"),
            body_size: Some((1 << 34) + 1),
            body: body("response.body"),
            trailers: headers("response-trailer"),
        }),
        error: Some(Error {
            kind: "error.kind".into(),
            message: "error.message".into(),
        }),
        timings: Some(Timings {
            dns_ms: Some(2.5),
            connect_ms: Some(3.5),
            tls_ms: Some(4.5),
            send_ms: Some(5.5),
            wait_ms: Some(6.5),
            receive_ms: Some(7.5),
        }),
        redacted: vec!["redacted.a".into(), "redacted.b".into()],
        mode: "mode".into(),
        bytes_up: Some((1 << 35) + 2),
        bytes_down: Some((1 << 36) + 3),
        source: "source".into(),
        upgrade: "upgrade".into(),
    }
}

/// Every field with explicit presence set to its zero value, everything else left at its default.
fn zero_flow() -> Flow {
    let body = Some(Body::default());
    Flow {
        duration_ms: Some(0.0),
        client: Some(Endpoint::default()),
        server: Some(Server::default()),
        tls: Some(Tls {
            intercepted: Some(false),
            upstream_verified: Some(false),
            client_cert_requested: Some(false),
            ..Tls::default()
        }),
        request: Some(Request {
            body_size: Some(0),
            body: body.clone(),
            ..Request::default()
        }),
        response: Some(Response {
            body_size: Some(0),
            body,
            ..Response::default()
        }),
        error: Some(Error::default()),
        timings: Some(Timings {
            dns_ms: Some(0.0),
            connect_ms: Some(0.0),
            tls_ms: Some(0.0),
            send_ms: Some(0.0),
            wait_ms: Some(0.0),
            receive_ms: Some(0.0),
        }),
        bytes_up: Some(0),
        bytes_down: Some(0),
        ..Flow::default()
    }
}

/// `message` (Rust's protobuf read through the proto) against `json` (Rust's JSON v1 of the same
/// value): the same field names, every field populated, the same values.
fn compare(message: &DynamicMessage, json: &Value, path: &str, seen: &mut BTreeSet<String>) {
    let desc = message.descriptor();
    seen.insert(desc.full_name().to_string());
    assert_eq!(
        message.unknown_fields().count(),
        0,
        "{path}: fields the proto does not have"
    );
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not a JSON object"));
    let proto_names: BTreeSet<String> = desc.fields().map(|f| f.name().to_string()).collect();
    let json_names: BTreeSet<String> = object.keys().cloned().collect();
    assert_eq!(
        proto_names, json_names,
        "{path}: proto field names vs JSON keys"
    );
    for field in desc.fields() {
        let path = format!("{path}.{}", field.name());
        assert!(
            message.has_field(&field),
            "{path}: not populated from the Rust side"
        );
        compare_value(
            &message.get_field(&field),
            &object[field.name()],
            &path,
            seen,
        );
    }
}

fn compare_value(value: &Proto, json: &Value, path: &str, seen: &mut BTreeSet<String>) {
    match value {
        Proto::Bool(b) => assert_eq!(Some(*b), json.as_bool(), "{path}"),
        Proto::U32(n) => assert_eq!(Some(u64::from(*n)), json.as_u64(), "{path}"),
        Proto::U64(n) => assert_eq!(Some(*n), json.as_u64(), "{path}"),
        Proto::F64(x) => assert_eq!(Some(*x), json.as_f64(), "{path}"),
        Proto::String(s) => assert_eq!(Some(s.as_str()), json.as_str(), "{path}"),
        Proto::Message(m) => compare(m, json, path, seen),
        Proto::List(items) => compare_list(items, json, path, seen),
        other => panic!("{path}: {other:?} has no JSON v1 mapping in this test yet; extend it"),
    }
}

fn compare_list(items: &[Proto], json: &Value, path: &str, seen: &mut BTreeSet<String>) {
    match json {
        Value::Array(array) => {
            assert_eq!(items.len(), array.len(), "{path}: length");
            for (i, (item, json)) in items.iter().zip(array).enumerate() {
                compare_value(item, json, &format!("{path}[{i}]"), seen);
            }
        }
        // A list of Header is a JSON object {name: value}: compare each entry as {name, value}.
        Value::Object(map) => {
            assert_eq!(items.len(), map.len(), "{path}: length");
            for item in items {
                let header = item
                    .as_message()
                    .unwrap_or_else(|| panic!("{path}: not messages"));
                assert_eq!(
                    header.descriptor().full_name(),
                    format!("{PACKAGE}.Header"),
                    "{path}"
                );
                let name = header.get_field_by_name("name").expect("Header.name");
                let name = name.as_str().expect("Header.name is a string");
                let entry = json!({"name": name, "value": map.get(name)});
                compare(header, &entry, &format!("{path}[{name}]"), seen);
            }
        }
        _ => panic!("{path}: repeated field is neither a JSON array nor an object"),
    }
}

#[test]
fn every_proto_field_round_trips_from_rust() {
    let flow = full_flow();
    let (bytes, message) = decode(&flow);
    let mut seen = BTreeSet::new();
    let json = serde_json::to_value(&flow).expect("encodes");
    compare(&message, &json, "Flow", &mut seen);
    let pool = message.descriptor().parent_pool().clone();
    let all: BTreeSet<String> = pool
        .all_messages()
        .filter(|m| m.package_name() == PACKAGE)
        .map(|m| m.full_name().to_string())
        .collect();
    assert_eq!(seen, all, "messages of the proto reached from Flow");
    assert!(
        message.encode_to_vec() == bytes,
        "proto re-encodes Rust's bytes differently"
    );
}

/// Explicit presence (proto3 `optional`, message fields) must match `Option` on the Rust side: a
/// zero held in an `Option` is still sent, a plain zero is not.
fn check_presence(message: &DynamicMessage, path: &str) {
    for field in message.descriptor().fields() {
        let path = format!("{path}.{}", field.name());
        let expected = field.supports_presence();
        assert_eq!(
            message.has_field(&field),
            expected,
            "{path}: presence (proto vs Option)"
        );
        if let Proto::Message(inner) = message.get_field(&field).as_ref() {
            check_presence(inner, &path);
        }
    }
}

#[test]
fn explicit_presence_agrees() {
    let (bytes, message) = decode(&zero_flow());
    check_presence(&message, "Flow");
    assert!(
        message.encode_to_vec() == bytes,
        "a zero without presence was sent by Rust"
    );
}
