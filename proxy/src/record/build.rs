//! Record facts -> [`Flow`], on the writer thread: header rendering, redaction, body decoding.

use super::{BodyFacts, Exchange, Record, TlsFacts, TunnelRecord};
use crate::redact::Redactor;
use flowtap_schema::json::{escape_bytes, join_separator};
use flowtap_schema::{self as schema, Flow, Header, SCHEMA_VERSION};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, Version};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

pub fn to_flow(record: Record, redactor: &Redactor) -> Flow {
    match record {
        Record::Http(x) => http_flow(*x, redactor),
        Record::Tunnel(t) => tunnel_flow(*t),
        Record::Connection(c) => Flow {
            schema_version: SCHEMA_VERSION,
            kind: "connection".into(),
            id: record_id(c.start),
            start: rfc3339_micros(c.start),
            connection_id: connection_id(c.conn.id),
            client: Some(endpoint(c.conn.client)),
            error: error_section(Some(c.error)),
            mode: c.conn.mode.as_str().into(),
            ..Default::default()
        },
    }
}

pub fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Milliseconds with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn since(later: Instant, earlier: Instant) -> f64 {
    ms(later.saturating_duration_since(earlier))
}

/// RFC 3339, UTC, microseconds: `2024-08-12T09:23:28.535123Z`. Written digit by digit: this
/// runs once per record on the writer thread, where `format!` was a measurable share.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let mut out = String::with_capacity(27);
    let fields = [
        (dt.year().clamp(0, 9999) as u32, 4, '-'),
        (u8::from(dt.month()) as u32, 2, '-'),
        (dt.day() as u32, 2, 'T'),
        (dt.hour() as u32, 2, ':'),
        (dt.minute() as u32, 2, ':'),
        (dt.second() as u32, 2, '.'),
        (dt.microsecond(), 6, 'Z'),
    ];
    for (n, width, sep) in fields {
        push_padded(&mut out, n, width);
        out.push(sep);
    }
    out
}

/// Appends `n` in decimal, zero-padded to `width` digits (0: as many as it takes).
fn push_padded<I: itoa::Integer>(out: &mut String, n: I, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// `c-ID`, the record's `connection_id`.
fn connection_id(id: u64) -> String {
    let mut out = String::with_capacity(22);
    out.push_str("c-");
    push_padded(&mut out, id, 0);
    out
}

/// An address as text; IPv4 without going through `fmt` (once or twice per record).
fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_padded(&mut out, octet, 0);
            }
            out
        }
        IpAddr::V6(v6) => v6.to_string(),
    }
}

/// A UUIDv7 whose time part is the record's start, so ids sort by start time. The random part
/// comes from a per-thread SplitMix64 stream seeded once from the OS, not a syscall per record.
fn record_id(start: SystemTime) -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            // Seeding is best effort: a weak seed still gives unique ids within a process.
            let _ = getrandom_seed(&mut seed);
            u64::from_le_bytes(seed) ^ std::process::id() as u64
        });
    }
    let next = || {
        STATE.with(|s| {
            let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let millis = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&next().to_le_bytes());
    random[8..].copy_from_slice(&next().to_le_bytes()[..2]);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_string()
}

/// Fills `buf` from the OS's random source.
fn getrandom_seed(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Renders a header section as the record's list: one entry per name, repeated fields joined.
/// The fields come with every value of a name together (as `HeaderMap::iter` and
/// [`super::HeaderList::iter`] give them), so one pass comparing each name with the one
/// before is enough.
pub fn render_headers<'a>(
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a [u8])>,
) -> Vec<Header> {
    let fields = fields.into_iter();
    let mut out: Vec<Header> = Vec::with_capacity(fields.size_hint().0);
    let mut last: Option<&HeaderName> = None;
    for (name, v) in fields {
        if let (Some(prev), Some(h)) = (last, out.last_mut()) {
            if prev == name {
                h.value.push_str(join_separator(name.as_str()));
                h.value.push_str(&escape_bytes(v));
                continue;
            }
        }
        last = Some(name);
        out.push(Header {
            name: name.as_str().to_string(),
            value: escape_bytes(v),
        });
    }
    out
}

/// A header map's fields for [`render_headers`].
fn map_fields(map: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &[u8])> {
    map.iter().map(|(n, v)| (n, v.as_bytes()))
}

/// IPv6 literals without their URL brackets, the same on every path.
fn bare_host(host: String) -> String {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.to_string(),
        None => host,
    }
}

fn endpoint(addr: SocketAddr) -> schema::Endpoint {
    schema::Endpoint {
        ip: ip_text(addr.ip().to_canonical()),
        port: addr.port() as u32,
    }
}

fn tls_section(t: &TlsFacts) -> schema::Tls {
    schema::Tls {
        intercepted: Some(t.intercepted),
        sni: t.sni.clone().unwrap_or_default(),
        alpn: t.alpn.clone().unwrap_or_default(),
        client_version: t.client_version.unwrap_or_default().to_string(),
        server_version: t.server_version.unwrap_or_default().to_string(),
        upstream_verified: t.upstream_verified,
        client_alpn: t.client_alpn.clone(),
        client_cert_requested: t.client_cert_requested.then_some(true),
        upstream_error: t.upstream_error.clone().unwrap_or_default(),
    }
}

fn error_section(e: Option<(schema::ErrorKind, String)>) -> Option<schema::Error> {
    e.map(|(kind, message)| schema::Error::new(kind, message))
}

fn http_flow(x: Exchange, redactor: &Redactor) -> Flow {
    let end = x.end.unwrap_or_else(Instant::now);
    let mut redacted = Vec::new();

    let req_facts: Option<BodyFacts> = x
        .request_body
        .as_ref()
        .and_then(|slot| slot.facts.lock().ok().and_then(|mut f| f.take()));
    let req_bytes = x
        .request_body
        .as_ref()
        .map(|s| s.bytes.load(std::sync::atomic::Ordering::Relaxed));
    let req_end = req_facts.as_ref().and_then(|f| f.end);

    let mut req_headers = render_headers(x.request.headers.iter());
    redactor.headers(&mut req_headers, "request.headers", &mut redacted);
    let url = match redactor.url(&x.request.url, &mut redacted) {
        Some(u) => u,
        None => x.request.url,
    };
    let mut request = schema::Request {
        method: x.request.method.as_str().to_string(),
        url,
        http_version: version_str(x.request.version).to_string(),
        headers: req_headers,
        body_size: req_facts
            .as_ref()
            .map(|f| f.capture.size())
            .or(req_bytes)
            .or(Some(0)),
        body: req_facts.as_ref().and_then(|f| {
            f.capture.finish(
                x.request.headers.get_str(&CONTENT_TYPE),
                x.request.headers.get_str(&CONTENT_ENCODING),
            )
        }),
        trailers: Vec::new(),
    };
    if let Some(t) = req_facts.as_ref().and_then(|f| f.trailers.as_ref()) {
        request.trailers = render_headers(map_fields(t));
        redactor.headers(&mut request.trailers, "request.trailers", &mut redacted);
    }

    let response = x.response.as_ref().map(|head| {
        let mut headers = render_headers(head.headers.iter());
        redactor.headers(&mut headers, "response.headers", &mut redacted);
        let body = x.response_body.as_ref();
        let mut r = schema::Response {
            status: head.status.as_u16() as u32,
            // HTTP/2 has no reason phrase; HTTP/1 responses get the standard one for the status.
            reason: if head.version < Version::HTTP_2 {
                head.status
                    .canonical_reason()
                    .unwrap_or_default()
                    .to_string()
            } else {
                String::new()
            },
            http_version: version_str(head.version).to_string(),
            headers,
            body_size: Some(body.map(|b| b.capture.size()).unwrap_or(0)),
            body: body.and_then(|b| {
                b.capture.finish(
                    head.headers.get_str(&CONTENT_TYPE),
                    head.headers.get_str(&CONTENT_ENCODING),
                )
            }),
            trailers: Vec::new(),
        };
        if let Some(t) = body.and_then(|b| b.trailers.as_ref()) {
            r.trailers = render_headers(map_fields(t));
            redactor.headers(&mut r.trailers, "response.trailers", &mut redacted);
        }
        r
    });

    let mut timings = schema::Timings::default();
    if let Some(c) = x.connect {
        timings.dns_ms = c.dns.map(ms);
        timings.connect_ms = Some(ms(c.connect));
        timings.tls_ms = c.tls.map(ms);
    }
    if let Some(ready) = x.upstream_ready {
        let sent = req_end.map(|e| e.max(ready)).unwrap_or(ready);
        timings.send_ms = Some(since(sent, ready));
        if let Some(head) = x.response_at {
            timings.wait_ms = Some(since(head, sent.min(head)));
            timings.receive_ms = Some(since(end, head));
        }
    }

    Flow {
        schema_version: SCHEMA_VERSION,
        kind: "http".into(),
        id: record_id(x.start),
        start: rfc3339_micros(x.start),
        duration_ms: Some(since(end, x.started)),
        connection_id: connection_id(x.conn.id),
        client: Some(endpoint(x.conn.client)),
        server: Some(schema::Server {
            host: bare_host(x.server.host),
            port: x.server.port as u32,
            ip: x.server.ip.map(ip_text).unwrap_or_default(),
        }),
        tls: x.tls.as_deref().map(|t| {
            let mut tls = tls_section(t);
            if let Some(v) = x.upstream_tls_version {
                tls.server_version = v.to_string();
            }
            tls
        }),
        request: Some(request),
        response,
        error: error_section(x.error),
        timings: (timings != schema::Timings::default()).then_some(timings),
        redacted,
        mode: x.conn.mode.as_str().into(),
        ..Default::default()
    }
}

fn tunnel_flow(t: TunnelRecord) -> Flow {
    Flow {
        schema_version: SCHEMA_VERSION,
        kind: "tunnel".into(),
        id: record_id(t.start),
        start: rfc3339_micros(t.start),
        duration_ms: Some(since(t.end, t.started)),
        connection_id: connection_id(t.conn.id),
        client: Some(endpoint(t.conn.client)),
        server: Some(schema::Server {
            host: bare_host(t.server.host),
            port: t.server.port as u32,
            ip: t.server.ip.map(ip_text).unwrap_or_default(),
        }),
        tls: t.tls.as_deref().map(tls_section),
        error: error_section(t.error),
        mode: t.conn.mode.as_str().into(),
        bytes_up: Some(t.bytes_up),
        bytes_down: Some(t.bytes_down),
        upgrade: t.upgrade.unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_micros_and_z() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_723_454_608_535_123);
        assert_eq!(rfc3339_micros(t), "2024-08-12T09:23:28.535123Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_000_007);
        assert_eq!(rfc3339_micros(t), "1970-01-01T00:00:01.000007Z");
    }

    #[test]
    fn ids_and_addresses_match_their_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "203.0.113.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        assert_eq!(connection_id(0), "c-0");
        assert_eq!(connection_id(u64::MAX), format!("c-{}", u64::MAX));
        let id = record_id(SystemTime::UNIX_EPOCH + Duration::from_millis(1_723_454_608_535));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(parsed.to_string(), id);
    }

    #[test]
    fn repeated_headers_join() {
        let mut m = HeaderMap::new();
        m.append("accept", "a".parse().unwrap());
        m.append("accept", "b".parse().unwrap());
        m.append("set-cookie", "x=1".parse().unwrap());
        m.append("set-cookie", "y=2".parse().unwrap());
        m.append("x-one", "1".parse().unwrap());
        m.append("accept", "c".parse().unwrap());
        let h = render_headers(map_fields(&m));
        assert_eq!(
            render_headers(super::super::HeaderList::from_map(&m).iter()),
            h
        );
        assert_eq!(h.len(), 3);
        assert_eq!(h[0], Header::new("accept", "a, b, c"));
        assert_eq!(h[1], Header::new("set-cookie", "x=1\ny=2"));
        assert_eq!(h[2], Header::new("x-one", "1"));
    }
}
