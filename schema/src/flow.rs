//! Record types, one per message of `flow.proto`, with both encodings derived on the same struct.

use serde::{Deserialize, Serialize};

/// The version written in every record's `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

/// One record per exchange (`kind: "http"`) or per relayed connection (`kind: "tunnel"`).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Flow {
    #[prost(uint32, tag = "1")]
    pub schema_version: u32,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(string, tag = "4")]
    pub start: String,
    #[prost(double, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[prost(string, tag = "6")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub connection_id: String,
    #[prost(message, optional, tag = "7")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Endpoint>,
    #[prost(message, optional, tag = "8")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    #[prost(message, optional, tag = "9")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[prost(message, optional, tag = "10")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[prost(message, optional, tag = "11")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    #[prost(message, optional, tag = "12")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[prost(message, optional, tag = "13")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    #[prost(string, repeated, tag = "14")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    #[prost(string, tag = "15")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    #[prost(uint64, optional, tag = "16")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    #[prost(uint64, optional, tag = "17")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    #[prost(string, tag = "18")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[prost(string, tag = "19")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upgrade: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Endpoint {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[prost(uint32, tag = "2")]
    #[serde(default)]
    pub port: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Server {
    #[prost(string, tag = "1")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[prost(uint32, tag = "2")]
    #[serde(default)]
    pub port: u32,
    #[prost(string, tag = "3")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Tls {
    #[prost(bool, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercepted: Option<bool>,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    #[prost(string, tag = "3")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alpn: String,
    #[prost(string, tag = "4")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_version: String,
    #[prost(string, tag = "5")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_version: String,
    #[prost(bool, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_verified: Option<bool>,
    #[prost(string, repeated, tag = "7")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_alpn: Vec<String>,
    /// The server asked for a client certificate. Without `--upstream-client-cert` flowtap has
    /// none to present for the client, so the connection was relayed untouched (`intercepted:
    /// false`; or intercepted anyway with `--client-cert-servers intercept`); with it, flowtap
    /// presented that certificate and intercepted.
    #[prost(bool, optional, tag = "8")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_requested: Option<bool>,
    /// Why flowtap's own TLS handshake with the server failed, when the client's TLS was then
    /// relayed untouched (`intercepted: false`) so that the client decides, as without the proxy.
    #[prost(string, tag = "9")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub upstream_error: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub method: String,
    #[prost(string, tag = "2")]
    pub url: String,
    #[prost(string, tag = "3")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http_version: String,
    #[prost(message, repeated, tag = "4")]
    #[serde(default, with = "crate::json::header_map")]
    pub headers: Vec<Header>,
    #[prost(uint64, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_size: Option<u64>,
    #[prost(message, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    #[prost(message, repeated, tag = "7")]
    #[serde(
        default,
        with = "crate::json::header_map",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trailers: Vec<Header>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Response {
    #[prost(uint32, tag = "1")]
    pub status: u32,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[prost(string, tag = "3")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub http_version: String,
    #[prost(message, repeated, tag = "4")]
    #[serde(default, with = "crate::json::header_map")]
    pub headers: Vec<Header>,
    #[prost(uint64, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_size: Option<u64>,
    #[prost(message, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    #[prost(message, repeated, tag = "7")]
    #[serde(
        default,
        with = "crate::json::header_map",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trailers: Vec<Header>,
}

/// One header field. In JSON a list of these is an object keyed by `name` (see `json::header_map`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The value of the field `name` (lower case, as records keep names) in `headers`.
    pub fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Body {
    /// `text` or `base64`.
    #[prost(string, tag = "1")]
    pub encoding: String,
    #[prost(string, tag = "2")]
    pub data: String,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Error {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct Timings {
    #[prost(double, optional, tag = "1")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_ms: Option<f64>,
    #[prost(double, optional, tag = "2")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    #[prost(double, optional, tag = "3")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<f64>,
    #[prost(double, optional, tag = "4")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_ms: Option<f64>,
    #[prost(double, optional, tag = "5")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<f64>,
    #[prost(double, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_ms: Option<f64>,
}

/// The closed set of `error.kind` values. Programs match on these strings; new kinds are additive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The client went away before the exchange ended (reset, closed mid-body).
    ClientClosed,
    /// The client's TLS handshake with the proxy failed (e.g. it does not trust the CA).
    ClientTls,
    /// TCP connect to the upstream failed (refused, unreachable).
    UpstreamConnect,
    /// The upstream host name did not resolve.
    UpstreamDns,
    /// The TLS handshake with the upstream failed (certificate not trusted, protocol error).
    UpstreamTls,
    /// The upstream did not connect or answer in time.
    UpstreamTimeout,
    /// The upstream closed or reset the connection mid-exchange.
    UpstreamClosed,
    /// A peer broke the HTTP protocol (malformed request, bad CONNECT target, garbage bytes).
    Protocol,
    /// A configured limit was hit (header size, connections, idle or header-read timeout).
    Limit,
    /// The client was refused by access control (address not allowed, proxy authentication).
    Refused,
    /// The proxy itself failed (a bug or a resource problem on the proxy's side).
    Proxy,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::ClientClosed,
        ErrorKind::ClientTls,
        ErrorKind::UpstreamConnect,
        ErrorKind::UpstreamDns,
        ErrorKind::UpstreamTls,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamClosed,
        ErrorKind::Protocol,
        ErrorKind::Limit,
        ErrorKind::Refused,
        ErrorKind::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ClientClosed => "client_closed",
            ErrorKind::ClientTls => "client_tls",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamDns => "upstream_dns",
            ErrorKind::UpstreamTls => "upstream_tls",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamClosed => "upstream_closed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Limit => "limit",
            ErrorKind::Refused => "refused",
            ErrorKind::Proxy => "proxy",
        }
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind: kind.as_str().to_string(),
            message: message.into(),
        }
    }
}
