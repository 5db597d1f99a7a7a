//! One HTTP record -> one OpenTelemetry CLIENT span, following the stable HTTP semantic
//! conventions, and for a gRPC call the RPC ones too (its HTTP status says 200 whatever
//! happened; the gRPC status decides the span's). Pure data: no I/O, so the collector can
//! export the same spans from the same records.
//!
//! Identity. The span id is the last 8 bytes of the record's UUIDv7 id (its random part). A
//! request that carried a valid W3C `traceparent` joins that trace as a child of the caller's
//! span (and keeps its `tracestate`); any other request starts a trace whose id is the record
//! id itself, so `flowtap.record.id` and the trace id name the same exchange. Exporting the
//! same record twice (proxy and collector) therefore yields the same span, not two.
//!
//! Time. The span starts when the proxy began reading the request (the record's `start`) and
//! ends when the last byte of the response body went to the client (`start + duration_ms`).
//! The record's timings become events, placed back from the end: `first byte` (response
//! headers arrived), `request sent`, and before those the upstream connection's `tls`,
//! `connect` and `dns`, clamped to the span when the connection was opened before the
//! exchange began (CONNECT interception dials the upstream during the client's handshake).

use super::config::{HeaderCapture, Sampler};
use crate::output::rpc;
use flowtap_schema::{Flow, Header, Timings};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// Methods the HTTP conventions know (RFC 9110, PATCH, and QUERY); others become `_OTHER`.
const KNOWN_METHODS: [&str; 10] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE",
];

/// Error kinds that mean the caller gave up: a cancelled request is not an error of the
/// call (the conventions leave such a span's status Unset, without `error.type`).
const CALLER_CANCELLED: &str = "client_closed";

/// The instrumentation scope every span carries: this program and its version.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("flowtap")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// What [`to_span`] needs besides the record.
pub struct SpanSettings {
    pub headers: HeaderCapture,
    pub sampler: Sampler,
    pub scope: InstrumentationScope,
}

/// Why a record produced no span.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not an HTTP exchange (a tunnel or a refused connection).
    NotHttp,
    /// The sampler said no (e.g. the caller's traceparent was not sampled).
    NotSampled,
    /// The record lacks what a span needs (start time, request).
    Malformed,
}

/// A parsed W3C `traceparent` (and `tracestate`) of the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: TraceFlags,
    pub state: TraceState,
}

pub fn to_span(flow: &Flow, s: &SpanSettings) -> Result<SpanData, Skip> {
    if flow.kind != "http" {
        return Err(Skip::NotHttp);
    }
    let req = flow.request.as_ref().ok_or(Skip::Malformed)?;
    let start = parse_time(&flow.start).ok_or(Skip::Malformed)?;
    let end = start + millis(flow.duration_ms.unwrap_or(0.0));
    let id = uuid::Uuid::parse_str(&flow.id).map_err(|_| Skip::Malformed)?;
    let id = id.as_bytes();
    let mut span_bytes = [0u8; 8];
    span_bytes.copy_from_slice(&id[8..]);
    let span_id = SpanId::from_bytes(span_bytes);

    let parent = Header::find(&req.headers, "traceparent").and_then(|tp| {
        parse_traceparent(
            tp,
            Header::find(&req.headers, "tracestate").unwrap_or_default(),
        )
    });
    let (trace_id, flags, state, parent_span_id) = match &parent {
        Some(p) => (p.trace_id, p.flags, p.state.clone(), p.span_id),
        None => (
            TraceId::from_bytes(*id),
            TraceFlags::SAMPLED,
            TraceState::NONE,
            SpanId::INVALID,
        ),
    };
    if !s
        .sampler
        .samples(trace_id, parent.as_ref().map(|p| p.flags))
    {
        return Err(Skip::NotSampled);
    }
    let flags = flags.with_sampled(true);

    let (method, original) = method(&req.method);
    let call = rpc::is_call(req).then(|| rpc::method(&req.url));
    let name = match call {
        Some(Ok(rpc_method)) => Cow::Owned(rpc_method.to_string()),
        Some(Err(_)) => Cow::Borrowed("grpc"),
        None if method == "_OTHER" => Cow::Borrowed("HTTP"),
        None => Cow::Borrowed(method),
    };
    let mut attrs = Vec::with_capacity(24);
    attrs.push(KeyValue::new("http.request.method", method));
    if let Some(orig) = original {
        attrs.push(KeyValue::new(
            "http.request.method_original",
            orig.to_string(),
        ));
    }
    attrs.push(KeyValue::new("url.full", strip_userinfo(&req.url)));
    if let Some((scheme, _)) = req.url.split_once("://") {
        attrs.push(KeyValue::new("url.scheme", scheme.to_ascii_lowercase()));
    }
    if let Some(server) = &flow.server {
        attrs.push(KeyValue::new("server.address", server.host.clone()));
        attrs.push(KeyValue::new("server.port", i64::from(server.port)));
        if !server.ip.is_empty() {
            attrs.push(KeyValue::new("network.peer.address", server.ip.clone()));
            attrs.push(KeyValue::new("network.peer.port", i64::from(server.port)));
        }
    }
    let version = flow
        .response
        .as_ref()
        .map(|r| r.http_version.as_str())
        .filter(|v| !v.is_empty())
        .unwrap_or(&req.http_version);
    if let Some(v) = protocol_version(version) {
        attrs.push(KeyValue::new("network.protocol.version", v));
    }
    if let Some(ua) = Header::find(&req.headers, "user-agent") {
        attrs.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    if let Some(n) = req.body_size {
        attrs.push(KeyValue::new("http.request.body.size", n as i64));
    }
    if let Some(c) = &flow.client {
        if !c.ip.is_empty() {
            attrs.push(KeyValue::new("client.address", c.ip.clone()));
            attrs.push(KeyValue::new("client.port", i64::from(c.port)));
        }
    }
    if let Some(tls) = &flow.tls {
        if let Some(v) = tls.server_version.strip_prefix("TLSv") {
            attrs.push(KeyValue::new("tls.protocol.name", "tls"));
            attrs.push(KeyValue::new("tls.protocol.version", v.to_string()));
        }
        if !tls.alpn.is_empty() {
            attrs.push(KeyValue::new("tls.next_protocol", tls.alpn.clone()));
        }
    }
    if let Some(r) = &flow.response {
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(r.status),
        ));
        if let Some(n) = r.body_size {
            attrs.push(KeyValue::new("http.response.body.size", n as i64));
        }
    }
    capture_headers(&s.headers, "http.request.header.", &req.headers, &mut attrs);
    if let Some(r) = &flow.response {
        capture_headers(&s.headers, "http.response.header.", &r.headers, &mut attrs);
    }
    attrs.push(KeyValue::new("flowtap.record.id", flow.id.clone()));
    if !flow.connection_id.is_empty() {
        attrs.push(KeyValue::new(
            "flowtap.connection.id",
            flow.connection_id.clone(),
        ));
    }

    let grpc_status = match call {
        Some(rpc_method) => {
            attrs.push(KeyValue::new("rpc.system.name", "grpc"));
            attrs.push(KeyValue::new(
                "rpc.method",
                rpc_method.unwrap_or("_OTHER").to_string(),
            ));
            if let Err(path) = rpc_method {
                attrs.push(KeyValue::new("rpc.method_original", path.to_string()));
            }
            let status = flow.response.as_ref().and_then(rpc::status);
            if let Some(st) = &status {
                attrs.push(KeyValue::new(
                    "rpc.response.status_code",
                    st.code.to_string(),
                ));
            }
            status
        }
        None => None,
    };
    let status = outcome(flow, grpc_status, &mut attrs);
    let mut events = SpanEvents::default();
    events.events = timing_events(flow.timings.as_ref(), start, end);
    if let Some(e) = flow.error.as_ref().filter(|e| e.kind == CALLER_CANCELLED) {
        events.events.push(Event::new(
            "client closed",
            end,
            vec![KeyValue::new("flowtap.error.message", e.message.clone())],
            0,
        ));
    }

    Ok(SpanData {
        span_context: SpanContext::new(trace_id, span_id, flags, false, state),
        parent_span_id,
        parent_span_is_remote: parent.is_some(),
        span_kind: SpanKind::Client,
        name,
        start_time: start,
        end_time: end,
        attributes: attrs,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status,
        instrumentation_scope: s.scope.clone(),
    })
}

/// `error.type` and the span status: Error for a failed exchange and, on a client span, for
/// a 4xx or 5xx answer or a gRPC status other than OK (then `error.type` is the gRPC code and
/// the description its message); Unset otherwise (and when the caller itself went away).
fn outcome(flow: &Flow, grpc: Option<rpc::Status>, attrs: &mut Vec<KeyValue>) -> Status {
    let status_code = flow.response.as_ref().map(|r| r.status);
    if let Some(e) = flow.error.as_ref().filter(|e| e.kind != CALLER_CANCELLED) {
        attrs.push(KeyValue::new("error.type", e.kind.clone()));
        return Status::error(e.message.clone());
    }
    if let Some(st) = grpc {
        if st.ok {
            return Status::Unset;
        }
        attrs.push(KeyValue::new("error.type", st.code.to_string()));
        return Status::error(st.message.map(Cow::into_owned).unwrap_or_default());
    }
    match status_code {
        Some(code) if code >= 400 => {
            attrs.push(KeyValue::new("error.type", code.to_string()));
            Status::error("")
        }
        _ => Status::Unset,
    }
}

/// Events for the phases the record timed, placed back from the span's end.
fn timing_events(t: Option<&Timings>, start: SystemTime, end: SystemTime) -> Vec<Event> {
    let Some(t) = t else { return Vec::new() };
    let clamp = |at: SystemTime| at.clamp(start, end);
    let event = |name: &'static str, at: SystemTime, ms: f64| {
        Event::new(
            name,
            clamp(at),
            vec![KeyValue::new("flowtap.duration_ms", ms)],
            0,
        )
    };
    let mut out = Vec::new();
    // When did the upstream connection become ready? From the end backwards when the
    // exchange got that far; else from the start forwards (it failed while connecting).
    let ready = match (t.send_ms, t.wait_ms, t.receive_ms) {
        (Some(send), Some(wait), Some(receive)) => {
            let first_byte = end.checked_sub(millis(receive)).unwrap_or(start);
            let sent = first_byte.checked_sub(millis(wait)).unwrap_or(start);
            out.push(event("request sent", sent, send));
            out.push(event("first byte", first_byte, wait));
            sent.checked_sub(millis(send)).unwrap_or(start)
        }
        (Some(send), _, _) => {
            start
                + millis(
                    t.dns_ms.unwrap_or(0.0)
                        + t.connect_ms.unwrap_or(0.0)
                        + t.tls_ms.unwrap_or(0.0)
                        + send,
                )
        }
        _ => {
            start
                + millis(
                    t.dns_ms.unwrap_or(0.0) + t.connect_ms.unwrap_or(0.0) + t.tls_ms.unwrap_or(0.0),
                )
        }
    };
    let mut at = ready;
    let mut phases = Vec::new();
    for (name, ms) in [
        ("tls", t.tls_ms),
        ("connect", t.connect_ms),
        ("dns", t.dns_ms),
    ] {
        if let Some(ms) = ms {
            phases.push(event(name, at, ms));
            at = at.checked_sub(millis(ms)).unwrap_or(start);
        }
    }
    phases.reverse();
    phases.extend(out);
    phases
}

/// Parses a W3C `traceparent` (version 00, or a later version's first four fields) and its
/// `tracestate`; `None` for anything invalid, which the spec says to ignore whole.
pub fn parse_traceparent(value: &str, state: &str) -> Option<Parent> {
    let v = value.trim();
    // A repeated header arrives joined with ", ": more than one traceparent is invalid.
    if v.len() < 55 || v.contains(',') {
        return None;
    }
    let b = v.as_bytes();
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |s: &str| s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, span, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) || version == "ff" {
        return None;
    }
    if (version == "00" && v.len() != 55) || (v.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let state = TraceState::from_str(state.trim()).unwrap_or(TraceState::NONE);
    Some(Parent {
        trace_id,
        span_id,
        flags,
        state,
    })
}

/// `(http.request.method, http.request.method_original)`.
fn method(m: &str) -> (&'static str, Option<&str>) {
    match KNOWN_METHODS.iter().find(|k| k.eq_ignore_ascii_case(m)) {
        Some(k) if *k == m => (k, None),
        Some(k) => (k, Some(m)),
        None => ("_OTHER", Some(m)),
    }
}

/// `HTTP/1.1` -> `1.1`, `HTTP/2.0` -> `2`, as `network.protocol.version` spells them.
fn protocol_version(v: &str) -> Option<&'static str> {
    match v {
        "HTTP/1.0" => Some("1.0"),
        "HTTP/1.1" => Some("1.1"),
        "HTTP/2.0" | "HTTP/2" => Some("2"),
        "HTTP/3.0" | "HTTP/3" => Some("3"),
        _ => None,
    }
}

/// `url.full` never carries credentials: `user:pass@` becomes `REDACTED:REDACTED@`.
fn strip_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://REDACTED:REDACTED@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// `http.{request,response}.header.<name>`: string arrays, one element per field value for
/// `set-cookie` (joined with newlines in the record), one comma-joined element otherwise.
fn capture_headers(
    which: &HeaderCapture,
    prefix: &str,
    headers: &[Header],
    attrs: &mut Vec<KeyValue>,
) {
    for h in headers.iter().filter(|h| which.wants(&h.name)) {
        let values: Vec<StringValue> = if h.name == "set-cookie" {
            h.value.split('\n').map(|v| v.to_string().into()).collect()
        } else {
            vec![h.value.clone().into()]
        };
        attrs.push(KeyValue::new(
            format!("{prefix}{}", h.name),
            Value::Array(Array::String(values)),
        ));
    }
}

/// The record's `start` (RFC 3339) as a time.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.into())
}

fn millis(ms: f64) -> Duration {
    if ms.is_finite() && ms > 0.0 {
        Duration::from_secs_f64(ms / 1000.0)
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtap_schema::{Endpoint, Error, Request, Response, Server};
    use opentelemetry::trace::Status;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn settings() -> SpanSettings {
        SpanSettings {
            headers: HeaderCapture::None,
            sampler: Sampler::ParentBased(super::super::config::Root::AlwaysOn),
            scope: scope(),
        }
    }

    fn flow(headers: Vec<Header>) -> Flow {
        Flow {
            schema_version: 1,
            kind: "http".into(),
            id: "0192f0c4-7c1e-7cc3-9a51-6f1d2b1e8a10".into(),
            start: "2024-08-12T09:23:28.535123Z".into(),
            duration_ms: Some(47.21),
            connection_id: "c-17".into(),
            client: Some(Endpoint {
                ip: "10.76.3.78".into(),
                port: 57318,
            }),
            server: Some(Server {
                host: "s3.example.org".into(),
                port: 443,
                ip: "203.0.113.7".into(),
            }),
            request: Some(Request {
                method: "GET".into(),
                url: "https://u:p@s3.example.org/bucket?x=1".into(),
                http_version: "HTTP/2.0".into(),
                headers,
                body_size: Some(0),
                ..Default::default()
            }),
            response: Some(Response {
                status: 200,
                http_version: "HTTP/2.0".into(),
                headers: vec![
                    Header::new("content-type", "application/xml"),
                    Header::new("set-cookie", "a=1\nb=2"),
                ],
                body_size: Some(354),
                ..Default::default()
            }),
            timings: Some(Timings {
                dns_ms: Some(1.0),
                connect_ms: Some(1.9),
                tls_ms: Some(6.2),
                send_ms: Some(0.1),
                wait_ms: Some(37.4),
                receive_ms: Some(0.3),
            }),
            ..Default::default()
        }
    }

    fn get<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn client_span_with_conventional_attributes() {
        let s = to_span(
            &flow(vec![Header::new("user-agent", "curl/8")]),
            &settings(),
        )
        .unwrap();
        assert_eq!(s.name, "GET");
        assert_eq!(s.span_kind, SpanKind::Client);
        assert_eq!(s.status, Status::Unset);
        assert_eq!(
            s.span_context.trace_id(),
            TraceId::from_hex("0192f0c47c1e7cc39a516f1d2b1e8a10").unwrap()
        );
        assert_eq!(
            s.span_context.span_id(),
            SpanId::from_hex("9a516f1d2b1e8a10").unwrap()
        );
        assert_eq!(s.parent_span_id, SpanId::INVALID);
        assert_eq!(
            get(&s, "url.full"),
            Some(&Value::from(
                "https://REDACTED:REDACTED@s3.example.org/bucket?x=1"
            ))
        );
        assert_eq!(get(&s, "server.port"), Some(&Value::I64(443)));
        assert_eq!(get(&s, "network.protocol.version"), Some(&Value::from("2")));
        assert_eq!(get(&s, "http.response.status_code"), Some(&Value::I64(200)));
        assert_eq!(get(&s, "user_agent.original"), Some(&Value::from("curl/8")));
        assert_eq!(get(&s, "client.address"), Some(&Value::from("10.76.3.78")));
        assert!(get(&s, "error.type").is_none());
        assert!(get(&s, "http.response.header.content-type").is_none());
        let d = s.end_time.duration_since(s.start_time).unwrap();
        assert_eq!(d.as_micros(), 47_210);
        let names: Vec<&str> = s.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(
            names,
            ["dns", "connect", "tls", "request sent", "first byte"]
        );
        let first_byte = s.events.events[4].timestamp;
        assert_eq!(
            s.end_time.duration_since(first_byte).unwrap().as_micros(),
            300
        );
        for w in s.events.events.windows(2) {
            assert!(w[0].timestamp <= w[1].timestamp);
        }
    }

    #[test]
    fn traceparent_parents_the_span() {
        let f = flow(vec![
            Header::new("traceparent", TP),
            Header::new("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(
            s.span_context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            s.parent_span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(s.parent_span_is_remote);
        assert_eq!(s.span_context.trace_state().header(), "congo=t61rcWkgMzE");
        let unsampled = flow(vec![Header::new("traceparent", TP.replace("-01", "-00"))]);
        assert_eq!(
            to_span(&unsampled, &settings()).unwrap_err(),
            Skip::NotSampled
        );
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01, 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad, ""), None, "{bad}");
        }
        let later = parse_traceparent(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
            "",
        );
        assert!(later.is_some());
    }

    #[test]
    fn errors_and_status() {
        let mut f = flow(vec![]);
        f.response.as_mut().unwrap().status = 503;
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(get(&s, "error.type"), Some(&Value::from("503")));
        assert!(matches!(s.status, Status::Error { .. }));

        f.response.as_mut().unwrap().status = 404;
        assert!(matches!(
            to_span(&f, &settings()).unwrap().status,
            Status::Error { .. }
        ));

        f.response = None;
        f.error = Some(Error::new(
            flowtap_schema::ErrorKind::UpstreamConnect,
            "connection refused",
        ));
        f.timings = Some(Timings {
            dns_ms: Some(0.5),
            connect_ms: Some(0.2),
            ..Default::default()
        });
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(
            get(&s, "error.type"),
            Some(&Value::from("upstream_connect"))
        );
        assert_eq!(s.status, Status::error("connection refused"));
        assert!(get(&s, "http.response.status_code").is_none());
        let names: Vec<&str> = s.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["dns", "connect"]);

        f.error = Some(Error::new(flowtap_schema::ErrorKind::ClientClosed, "reset"));
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(s.status, Status::Unset);
        assert!(get(&s, "error.type").is_none());
    }

    #[test]
    fn grpc_calls_follow_the_rpc_conventions() {
        let mut f = flow(vec![Header::new("content-type", "application/grpc")]);
        f.request.as_mut().unwrap().method = "POST".into();
        f.request.as_mut().unwrap().url = "https://api.example/pkg.v1.Echo/Say".into();
        let r = f.response.as_mut().unwrap();
        r.trailers = vec![
            Header::new("grpc-status", "14"),
            Header::new("grpc-message", "backend%20down"),
        ];
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(s.name, "pkg.v1.Echo/Say");
        assert_eq!(get(&s, "rpc.system.name"), Some(&Value::from("grpc")));
        assert_eq!(get(&s, "rpc.method"), Some(&Value::from("pkg.v1.Echo/Say")));
        assert_eq!(
            get(&s, "rpc.response.status_code"),
            Some(&Value::from("UNAVAILABLE"))
        );
        assert_eq!(get(&s, "error.type"), Some(&Value::from("UNAVAILABLE")));
        assert_eq!(s.status, Status::error("backend down"));
        // The HTTP facts stay: the call went over HTTP/2 and got a 200.
        assert_eq!(get(&s, "http.response.status_code"), Some(&Value::I64(200)));

        f.response.as_mut().unwrap().trailers = vec![Header::new("grpc-status", "0")];
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(s.status, Status::Unset);
        assert!(get(&s, "error.type").is_none());
        assert_eq!(
            get(&s, "rpc.response.status_code"),
            Some(&Value::from("OK"))
        );

        // No gRPC status, a 404: the code the client derives from it.
        let r = f.response.as_mut().unwrap();
        r.trailers.clear();
        r.status = 404;
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(get(&s, "error.type"), Some(&Value::from("UNIMPLEMENTED")));
        assert!(matches!(s.status, Status::Error { .. }));

        // A path that names no method.
        f.request.as_mut().unwrap().url = "https://api.example/health".into();
        let s = to_span(&f, &settings()).unwrap();
        assert_eq!(s.name, "grpc");
        assert_eq!(get(&s, "rpc.method"), Some(&Value::from("_OTHER")));
        assert_eq!(
            get(&s, "rpc.method_original"),
            Some(&Value::from("/health"))
        );

        // Not gRPC: no rpc attributes.
        let plain = flow(vec![]);
        let s = to_span(&plain, &settings()).unwrap();
        assert!(s
            .attributes
            .iter()
            .all(|kv| !kv.key.as_str().starts_with("rpc.")));
    }

    #[test]
    fn methods_and_header_capture() {
        let mut f = flow(vec![Header::new("x-req", "1")]);
        f.request.as_mut().unwrap().method = "PROPFIND".into();
        let mut st = settings();
        st.headers = HeaderCapture::All;
        let s = to_span(&f, &st).unwrap();
        assert_eq!(s.name, "HTTP");
        assert_eq!(get(&s, "http.request.method"), Some(&Value::from("_OTHER")));
        assert_eq!(
            get(&s, "http.request.method_original"),
            Some(&Value::from("PROPFIND"))
        );
        assert_eq!(
            get(&s, "http.request.header.x-req"),
            Some(&Value::Array(Array::String(vec!["1".into()])))
        );
        assert_eq!(
            get(&s, "http.response.header.set-cookie"),
            Some(&Value::Array(Array::String(vec![
                "a=1".into(),
                "b=2".into()
            ])))
        );
        f.request.as_mut().unwrap().method = "get".into();
        let s = to_span(&f, &st).unwrap();
        assert_eq!(s.name, "GET");
        assert_eq!(
            get(&s, "http.request.method_original"),
            Some(&Value::from("get"))
        );
        f.kind = "tunnel".into();
        assert_eq!(to_span(&f, &st).unwrap_err(), Skip::NotHttp);
    }
}
