//! The facts of one exchange, gathered on the hot path as cheaply as possible (header sections
//! are copied, not rendered; bodies are counted and, when asked, captured up to a limit), then turned
//! into a [`flowtap_schema::Flow`] on the writer thread by [`build`].

pub mod build;
pub mod capture;
pub mod tap;

use capture::Capture;
use flowtap_schema::ErrorKind;
use http::{HeaderMap, HeaderName, Method, StatusCode, Version};
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
    /// The server asked for a client certificate (the connection was then relayed untouched).
    pub client_cert_requested: bool,
    /// flowtap's TLS with the server failed and the client's was relayed untouched: why.
    pub upstream_error: Option<String>,
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

/// A header section as the record keeps it: every field in the order `HeaderMap::iter` gives
/// them (all values of a name together), sharing no memory with the connection it came from.
///
/// hyper's header values are slices of the connection's read buffer: a plain clone of the map
/// would keep that buffer (8 KiB and more) alive until the writer has written the record, and
/// make hyper allocate a new one for the next message on the connection. Here every value is
/// copied into one buffer for the whole section, and the names into one list: two allocations,
/// no hashing and no second validation of the values, on the traffic path. The writer reads it
/// in order and looks up the odd field (`content-type`) by scanning.
#[derive(Debug, Clone, Default)]
pub struct HeaderList {
    /// Every value, one after the other.
    values: Vec<u8>,
    /// Each field's name and where its value ends in `values`.
    fields: Vec<(HeaderName, usize)>,
}

impl HeaderList {
    pub fn from_map(map: &HeaderMap) -> Self {
        let total: usize = map.values().map(|v| v.len()).sum();
        let mut values = Vec::with_capacity(total);
        let mut fields = Vec::with_capacity(map.len());
        for (name, v) in map {
            values.extend_from_slice(v.as_bytes());
            fields.push((name.clone(), values.len()));
        }
        HeaderList { values, fields }
    }

    /// Every field, in order: the name and the value's bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &[u8])> {
        let mut start = 0;
        self.fields.iter().map(move |(name, end)| {
            let value = &self.values[start..*end];
            start = *end;
            (name, value)
        })
    }

    /// The first value of `name`, as `HeaderMap::get`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The first value of `name` if it is text, as `HeaderMap::get` + `to_str`.
    pub fn get_str(&self, name: &HeaderName) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub url: String,
    pub version: Version,
    pub headers: HeaderList,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderList,
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

impl RequestBodySlot {
    /// When the request body ended (or its tap was dropped), once it has.
    pub fn ended(&self) -> Option<Instant> {
        self.facts.lock().ok()?.as_ref()?.end
    }
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
    use super::HeaderList;
    use http::{header, HeaderMap, HeaderValue};

    #[test]
    fn header_list_keeps_order_and_values_and_shares_no_memory() {
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
        map.append("x-empty", HeaderValue::from_static(""));
        map.append(
            header::AUTHORIZATION,
            HeaderValue::from_maybe_shared(buffer.slice(18..)).unwrap(),
        );

        let list = HeaderList::from_map(&map);
        let pairs: Vec<(String, Vec<u8>)> = list
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        let want: Vec<(String, Vec<u8>)> = map
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(pairs, want);
        // HeaderMap::iter gives every value of a name together.
        assert_eq!(pairs[0].0, "accept");
        assert_eq!(pairs[1], ("accept".to_string(), b"*/*".to_vec()));
        assert_eq!(list.iter().count(), 5);

        assert_eq!(list.get(&header::ACCEPT), Some(&b"abc; q=1"[..]));
        assert_eq!(list.get_str(&header::AUTHORIZATION), Some("secret"));
        assert_eq!(list.get_str(&"x-empty".parse().unwrap()), Some(""));
        assert_eq!(list.get(&header::CONTENT_TYPE), None);

        let original = buffer.as_ptr_range();
        for (_, v) in list.iter() {
            assert!(
                v.is_empty() || !original.contains(&v.as_ptr()),
                "{v:?} still points into the connection's buffer"
            );
        }
        assert_eq!(HeaderList::from_map(&HeaderMap::new()).iter().count(), 0);
    }
}
