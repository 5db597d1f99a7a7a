//! The facts of one exchange, gathered on the hot path as cheaply as possible (header maps are
//! cloned, not rendered; bodies are counted and, when asked, captured up to a limit), then turned
//! into a [`flowtap_schema::Flow`] on the writer thread by [`build`].

pub mod build;
pub mod capture;
pub mod tap;

use capture::Capture;
use flowtap_schema::ErrorKind;
use http::{HeaderMap, Method, StatusCode, Version};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How the client reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Regular,
    Transparent,
    Reverse,
}

impl Mode {
    pub fn of(kind: &crate::mode::ModeKind) -> Self {
        match kind {
            crate::mode::ModeKind::Regular => Mode::Regular,
            crate::mode::ModeKind::Transparent => Mode::Transparent,
            crate::mode::ModeKind::Reverse(_) => Mode::Reverse,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Regular => "regular",
            Mode::Transparent => "transparent",
            Mode::Reverse => "reverse",
        }
    }
}

/// Facts of one client connection, shared by every exchange on it.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub client: SocketAddr,
    pub mode: Mode,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

impl ConnInfo {
    pub fn new(client: SocketAddr, mode: Mode) -> Arc<Self> {
        Arc::new(ConnInfo {
            id: NEXT_CONN_ID.fetch_add(1, Relaxed),
            client,
            mode,
        })
    }
}

/// TLS facts of an intercepted (or relayed) connection.
#[derive(Debug, Clone, Default)]
pub struct TlsFacts {
    pub intercepted: bool,
    pub sni: Option<String>,
    pub client_alpn: Vec<String>,
    pub alpn: Option<String>,
    pub client_version: Option<&'static str>,
    pub server_version: Option<&'static str>,
    pub upstream_verified: Option<bool>,
}

/// The server as the client named it, and the address actually used.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub host: String,
    pub port: u16,
    pub ip: Option<IpAddr>,
}

/// Time spent opening an upstream connection; only the exchange that opened it carries these.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectTimings {
    pub dns: Option<Duration>,
    pub connect: Duration,
    pub tls: Option<Duration>,
}

/// A copy of `map` for a record that shares no memory with the connection it came from.
///
/// hyper's header values are slices of the connection's read buffer: a plain clone would keep
/// that buffer (8 KiB and more) alive until the writer has written the record, and make hyper
/// allocate a new one for the next message on the connection. Here every value is copied into
/// one allocation for the whole map instead.
pub fn detached_headers(map: &HeaderMap) -> HeaderMap {
    let total: usize = map.values().map(|v| v.len()).sum();
    let mut bytes = bytes::BytesMut::with_capacity(total);
    for v in map.values() {
        bytes.extend_from_slice(v.as_bytes());
    }
    let mut all = bytes.freeze();
    let mut out = HeaderMap::with_capacity(map.len());
    for (name, v) in map {
        let copy = all.split_to(v.len());
        // Same bytes as a value that was valid already.
        let Ok(mut value) = http::HeaderValue::from_maybe_shared(copy) else {
            continue;
        };
        value.set_sensitive(v.is_sensitive());
        out.append(name.clone(), value);
    }
    out
}

#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub url: String,
    pub version: Version,
    pub headers: HeaderMap,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// What a body tap saw.
#[derive(Debug)]
pub struct BodyFacts {
    pub capture: Capture,
    pub trailers: Option<HeaderMap>,
    pub end: Option<Instant>,
    pub error: Option<String>,
}

impl BodyFacts {
    /// Notes one body frame as it goes by: data is counted (and captured), trailers kept.
    /// Returns the data bytes in the frame.
    pub fn note(&mut self, frame: &http_body::Frame<bytes::Bytes>) -> usize {
        if let Some(data) = frame.data_ref() {
            self.capture.push(data);
            data.len()
        } else {
            if let Some(t) = frame.trailers_ref() {
                self.trailers = Some(t.clone());
            }
            0
        }
    }

    pub fn new(capture: Capture) -> Self {
        BodyFacts {
            capture,
            trailers: None,
            end: None,
            error: None,
        }
    }
}

/// The request body's tap hands its facts over through this slot; `bytes` is readable while the
/// body is still streaming (a server may answer before it has read the whole upload).
#[derive(Debug, Default)]
pub struct RequestBodySlot {
    pub bytes: AtomicU64,
    pub facts: Mutex<Option<BodyFacts>>,
}

/// One request/response exchange.
#[derive(Debug)]
pub struct Exchange {
    pub conn: Arc<ConnInfo>,
    pub tls: Option<Arc<TlsFacts>>,
    pub start: SystemTime,
    pub started: Instant,
    pub server: ServerFacts,
    pub request: RequestHead,
    pub request_body: Option<Arc<RequestBodySlot>>,
    pub response: Option<ResponseHead>,
    pub response_body: Option<BodyFacts>,
    pub connect: Option<ConnectTimings>,
    /// TLS version of the upstream connection this exchange used.
    pub upstream_tls_version: Option<&'static str>,
    pub upstream_ready: Option<Instant>,
    pub response_at: Option<Instant>,
    pub end: Option<Instant>,
    pub error: Option<(ErrorKind, String)>,
}

impl Exchange {
    pub fn fail(&mut self, kind: ErrorKind, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some((kind, message.into()));
        }
    }
}

/// Bytes relayed without interception (ignored hosts, non-HTTP protocols, upgraded connections).
#[derive(Debug)]
pub struct TunnelRecord {
    pub conn: Arc<ConnInfo>,
    pub tls: Option<Arc<TlsFacts>>,
    pub start: SystemTime,
    pub started: Instant,
    pub end: Instant,
    pub server: ServerFacts,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub upgrade: Option<String>,
    pub error: Option<(ErrorKind, String)>,
}

/// A client connection that failed before any exchange (refused, broke a limit, spoke garbage).
#[derive(Debug)]
pub struct ConnectionRecord {
    pub conn: Arc<ConnInfo>,
    pub start: SystemTime,
    pub error: (ErrorKind, String),
}

/// What travels from the traffic path to the writer.
#[derive(Debug)]
pub enum Record {
    Http(Box<Exchange>),
    Tunnel(Box<TunnelRecord>),
    Connection(Box<ConnectionRecord>),
}

#[cfg(test)]
mod tests {
    use super::detached_headers;
    use http::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn detached_headers_are_equal_in_order_and_share_no_memory() {
        let buffer = bytes::Bytes::from_static(b"abc; q=1text/plainsecret");
        let mut map = HeaderMap::new();
        map.append(
            "accept",
            HeaderValue::from_maybe_shared(buffer.slice(0..8)).unwrap(),
        );
        map.append(
            "x-custom",
            HeaderValue::from_maybe_shared(buffer.slice(8..18)).unwrap(),
        );
        map.append("accept", HeaderValue::from_static("*/*"));
        let mut secret = HeaderValue::from_maybe_shared(buffer.slice(18..)).unwrap();
        secret.set_sensitive(true);
        map.append(http::header::AUTHORIZATION, secret);

        let copy = detached_headers(&map);
        let pairs = |m: &HeaderMap| -> Vec<(HeaderName, Vec<u8>, bool)> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(pairs(&copy), pairs(&map));
        assert!(copy[http::header::AUTHORIZATION].is_sensitive());
        let original = buffer.as_ptr_range();
        for v in copy.values() {
            assert!(
                !original.contains(&v.as_bytes().as_ptr()),
                "{v:?} still points into the connection's buffer"
            );
        }
        assert!(detached_headers(&HeaderMap::new()).is_empty());
    }
}
