//! One HTTP record -> one HAR 1.2 entry. Pure data, shared by `--output har:PATH` and
//! `flowtap convert --to har`.
//!
//! What is not known is said so: `headersSize` is -1 (the record keeps header values, not
//! the bytes on the wire), `bodySize` is -1 when the record has no size, `content.size` is -1
//! when the body was content-encoded and not captured whole (its decoded length is unknown),
//! and `dns`/`connect`/`ssl` are -1 on a reused connection. A failed exchange has status 0
//! and the record's error in `_error` (as browsers write it). Custom fields start with `_`.

use flowtap_schema::{Body, Flow, Header, Timings};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<'a> {
    started_date_time: &'a str,
    time: f64,
    request: Request<'a>,
    response: Response<'a>,
    cache: Cache,
    timings: HarTimings,
    #[serde(rename = "serverIPAddress", skip_serializing_if = "Option::is_none")]
    server_ip_address: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    connection: &'a str,
    /// The record's id, to find the same exchange in the JSON lines.
    #[serde(rename = "_id")]
    id: &'a str,
    #[serde(rename = "_error", skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Cache {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    method: &'a str,
    url: &'a str,
    http_version: &'a str,
    cookies: Vec<Cookie>,
    headers: Vec<NameValue>,
    query_string: Vec<NameValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    post_data: Option<PostData<'a>>,
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PostData<'a> {
    mime_type: &'a str,
    text: &'a str,
    /// `base64` when `text` is base64 (HAR 1.2 has `encoding` only on response content).
    #[serde(rename = "_encoding", skip_serializing_if = "Option::is_none")]
    encoding: Option<&'a str>,
    #[serde(rename = "_truncated", skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    status: u32,
    status_text: &'a str,
    http_version: &'a str,
    cookies: Vec<Cookie>,
    headers: Vec<NameValue>,
    content: Content<'a>,
    #[serde(rename = "redirectURL")]
    redirect_url: &'a str,
    headers_size: i64,
    body_size: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Content<'a> {
    size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<i64>,
    mime_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'a str>,
    /// The captured body was cut at the body limit: `text` is its beginning only.
    #[serde(rename = "_truncated", skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cookie {
    name: String,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secure: Option<bool>,
}

#[derive(Serialize)]
struct HarTimings {
    blocked: f64,
    dns: f64,
    connect: f64,
    ssl: f64,
    send: f64,
    wait: f64,
    receive: f64,
}

/// Media type written when the response names none (as browsers write it).
const UNKNOWN_MIME: &str = "x-unknown";

/// The entry for an HTTP record; `None` for tunnels and other kinds, which HAR cannot show.
pub fn entry(flow: &Flow) -> Option<Entry<'_>> {
    if flow.kind != "http" {
        return None;
    }
    let req = flow.request.as_ref()?;
    let (timings, time) = timings(flow.timings.as_ref(), flow.duration_ms);
    let request = Request {
        method: &req.method,
        url: req.url.split('#').next().unwrap_or(&req.url),
        http_version: &req.http_version,
        cookies: Header::find(&req.headers, "cookie")
            .map(request_cookies)
            .unwrap_or_default(),
        headers: name_values(&req.headers),
        query_string: query_string(&req.url),
        post_data: req.body.as_ref().map(|b| PostData {
            mime_type: Header::find(&req.headers, "content-type").unwrap_or(""),
            text: &b.data,
            encoding: (b.encoding == "base64").then_some("base64"),
            truncated: b.truncated,
        }),
        headers_size: -1,
        body_size: size(req.body_size),
    };
    let response = match &flow.response {
        Some(r) => Response {
            status: r.status,
            status_text: &r.reason,
            http_version: &r.http_version,
            cookies: Header::find(&r.headers, "set-cookie")
                .map(response_cookies)
                .unwrap_or_default(),
            headers: name_values(&r.headers),
            content: content(
                r.body.as_ref(),
                r.body_size,
                Header::find(&r.headers, "content-type"),
                Header::find(&r.headers, "content-encoding"),
            ),
            redirect_url: Header::find(&r.headers, "location").unwrap_or(""),
            headers_size: -1,
            body_size: size(r.body_size),
        },
        None => Response {
            status: 0,
            status_text: "",
            http_version: "",
            cookies: Vec::new(),
            headers: Vec::new(),
            content: Content {
                size: 0,
                compression: None,
                mime_type: UNKNOWN_MIME,
                text: None,
                encoding: None,
                truncated: false,
            },
            redirect_url: "",
            headers_size: -1,
            body_size: -1,
        },
    };
    Some(Entry {
        started_date_time: &flow.start,
        time,
        request,
        response,
        cache: Cache {},
        timings,
        server_ip_address: flow
            .server
            .as_ref()
            .map(|s| s.ip.as_str())
            .filter(|ip| !ip.is_empty()),
        connection: &flow.connection_id,
        id: &flow.id,
        error: flow.error.as_ref().map(|e| {
            if e.message.is_empty() {
                e.kind.clone()
            } else {
                format!("{}: {}", e.kind, e.message)
            }
        }),
    })
}

fn size(n: Option<u64>) -> i64 {
    n.map(|n| n as i64).unwrap_or(-1)
}

/// HAR timings and the entry's `time` (their sum). `connect` includes `ssl`, as HAR says;
/// `blocked` is what the record's duration has beyond the timed phases (reading the request,
/// waiting for a connection), or -1 when nothing is left.
fn timings(t: Option<&Timings>, duration_ms: Option<f64>) -> (HarTimings, f64) {
    let t = t.cloned().unwrap_or_default();
    let known = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
    let dns = known(t.dns_ms);
    let ssl = known(t.tls_ms);
    let connect = known(t.connect_ms).map(|c| c + ssl.unwrap_or(0.0));
    let send = known(t.send_ms).unwrap_or(0.0);
    let wait = known(t.wait_ms).unwrap_or(0.0);
    let receive = known(t.receive_ms).unwrap_or(0.0);
    let phases = dns.unwrap_or(0.0) + connect.unwrap_or(0.0) + send + wait + receive;
    let rest = known(duration_ms).unwrap_or(0.0) - phases;
    let blocked = (rest >= 0.001).then_some(rest);
    let time = round(phases + blocked.unwrap_or(0.0));
    let or_unknown = |v: Option<f64>| v.map(round).unwrap_or(-1.0);
    (
        HarTimings {
            blocked: or_unknown(blocked),
            dns: or_unknown(dns),
            connect: or_unknown(connect),
            ssl: or_unknown(ssl),
            send: round(send),
            wait: round(wait),
            receive: round(receive),
        },
        time,
    )
}

/// Milliseconds to the microsecond, as the record has them.
fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn content<'a>(
    body: Option<&'a Body>,
    body_size: Option<u64>,
    content_type: Option<&'a str>,
    content_encoding: Option<&str>,
) -> Content<'a> {
    let encoded = content_encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    let whole = body.filter(|b| !b.truncated);
    let size = match (whole, body_size) {
        (Some(b), _) => decoded_len(b) as i64,
        (None, Some(n)) if !encoded => n as i64,
        _ => -1,
    };
    let compression = match body_size {
        Some(n) if size > n as i64 => Some(size - n as i64),
        _ => None,
    };
    Content {
        size,
        compression,
        mime_type: content_type.unwrap_or(UNKNOWN_MIME),
        text: body.map(|b| b.data.as_str()),
        encoding: body.filter(|b| b.encoding == "base64").map(|_| "base64"),
        truncated: body.is_some_and(|b| b.truncated),
    }
}

/// Bytes of a captured body: the text's UTF-8 length, or what the base64 decodes to.
pub(super) fn decoded_len(b: &Body) -> usize {
    if b.encoding != "base64" {
        return b.data.len();
    }
    let data = b.data.trim_end();
    let pad = data.bytes().rev().take_while(|c| *c == b'=').count().min(2);
    let n = data.len() - pad;
    n / 4 * 3
        + match n % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

/// The record joins repeated fields into one value; `set-cookie` (joined with newlines) is
/// split back into one HAR header per field.
fn name_values(headers: &[Header]) -> Vec<NameValue> {
    let mut out = Vec::with_capacity(headers.len());
    for h in headers {
        if h.name == "set-cookie" {
            out.extend(h.value.split('\n').map(|v| NameValue {
                name: h.name.clone(),
                value: v.to_string(),
            }));
        } else {
            out.push(NameValue {
                name: h.name.clone(),
                value: h.value.clone(),
            });
        }
    }
    out
}

/// `cookie: a=1; b=2`.
fn request_cookies(value: &str) -> Vec<Cookie> {
    value
        .split(';')
        .filter_map(|pair| {
            let pair = pair.trim();
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (!name.is_empty()).then(|| Cookie {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                path: None,
                domain: None,
                http_only: None,
                secure: None,
            })
        })
        .collect()
}

/// `set-cookie` lines: `name=value; Path=/; Domain=x; HttpOnly; Secure`.
fn response_cookies(value: &str) -> Vec<Cookie> {
    value
        .split('\n')
        .filter_map(|line| {
            let mut parts = line.split(';');
            let first = parts.next()?.trim();
            let (name, value) = first.split_once('=')?;
            let mut c = Cookie {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
                path: None,
                domain: None,
                http_only: None,
                secure: None,
            };
            for attr in parts {
                let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "path" => c.path = Some(v.trim().to_string()),
                    "domain" => c.domain = Some(v.trim().to_string()),
                    "httponly" => c.http_only = Some(true),
                    "secure" => c.secure = Some(true),
                    _ => {}
                }
            }
            (!c.name.is_empty()).then_some(c)
        })
        .collect()
}

/// The URL's query as name/value pairs, `%XX` and `+` decoded.
fn query_string(url: &str) -> Vec<NameValue> {
    let Some((_, query)) = url.split('#').next().unwrap_or("").split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            NameValue {
                name: form_decode(n),
                value: form_decode(v),
            }
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
