//! Connections to origin servers: DNS, TCP, TLS (verified against the system roots plus
//! `--upstream-ca`), then a hyper HTTP/1.1 or HTTP/2 client connection chosen by ALPN.

pub mod client_cert;
pub mod pool;
pub mod tracked;
pub mod via;

use crate::record::tap::RequestTap;
use crate::record::ConnectTimings;
use bytes::Bytes;
use flowtap_schema::ErrorKind;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The request body type sent upstream: the client's body behind its tap.
pub type ReqBody = RequestTap<ClientBody>;

/// A client's request body as it goes upstream: the client's own stream, or nothing (a request
/// without a body, sent again on a new connection after the first one closed unanswered), or
/// a body sent again after an HTTP/2 server refused it unprocessed: the frames that went out
/// the first time, then the rest of the client's stream.
#[derive(Default)]
pub enum ClientBody {
    Stream(Incoming),
    #[default]
    Empty,
    Replay(VecDeque<Frame<Bytes>>, Option<Incoming>),
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Stream(b) => std::pin::Pin::new(b).poll_frame(cx),
            ClientBody::Empty => std::task::Poll::Ready(None),
            ClientBody::Replay(sent, rest) => match (sent.pop_front(), rest) {
                (Some(frame), _) => std::task::Poll::Ready(Some(Ok(frame))),
                (None, Some(b)) => std::pin::Pin::new(b).poll_frame(cx),
                (None, None) => std::task::Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Stream(b) => b.is_end_stream(),
            ClientBody::Empty => true,
            ClientBody::Replay(sent, rest) => {
                sent.is_empty() && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ClientBody::Stream(b) => b.size_hint(),
            ClientBody::Empty => hyper::body::SizeHint::with_exact(0),
            ClientBody::Replay(sent, rest) => {
                let kept: u64 = sent
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let mut hint = hyper::body::SizeHint::new();
                match rest {
                    Some(b) => {
                        let r = b.size_hint();
                        hint.set_lower(kept + r.lower());
                        if let Some(upper) = r.upper() {
                            hint.set_upper(kept + upper);
                        }
                    }
                    None => hint.set_exact(kept),
                }
                hint
            }
        }
    }
}

/// Whether an HTTP/2 server refused the request's stream without processing it, so that it may
/// be sent again whatever its method (RFC 9113, 8.7): it reset the stream with REFUSED_STREAM,
/// or a graceful GOAWAY named a last stream below it. (A GOAWAY with an error code also ends
/// streams the server may have processed, so it does not count.)
pub fn refused_unprocessed(e: &hyper::Error) -> bool {
    crate::causes(e)
        .find_map(|c| c.downcast_ref::<h2::Error>())
        .is_some_and(|h| {
            h.is_remote()
                && (h.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR)))
        })
}

/// Whether a request that failed on a kept connection before any response met a connection
/// the server had already closed (or was closing: an idle keep-alive connection it timed out,
/// an HTTP/2 connection it sent GOAWAY on), rather than a server that answered badly.
pub fn closed_unanswered(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_incomplete_message() {
        return true;
    }
    // The innermost transport error decides: the first I/O or h2 error among the causes.
    crate::causes(e)
        .find_map(|c| {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                return Some(matches!(
                    io.kind(),
                    ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                ));
            }
            let h2e = c.downcast_ref::<h2::Error>()?;
            Some(
                (h2e.is_go_away() && h2e.is_remote())
                    || h2e.reason() == Some(h2::Reason::REFUSED_STREAM),
            )
        })
        .unwrap_or(false)
}

/// Whether the server broke HTTP/2 as the proxy's side reads it: that side found a frame it could
/// not accept and ended the connection (a server that does not speak HTTP/2 with prior knowledge
/// answers an h2c preface with HTTP/1.1 bytes, say), or refused one response (a head over
/// [`UPSTREAM_MAX_BUF`], or a malformed one: h2 does not say which).
pub fn broke_h2(e: &hyper::Error) -> Option<H2Break> {
    let h2e = crate::causes(e).find_map(|c| c.downcast_ref::<h2::Error>())?;
    if h2e.is_remote() {
        None
    } else if h2e.is_go_away() {
        Some(H2Break::Connection)
    } else if h2e.is_reset() && h2e.reason() == Some(h2::Reason::PROTOCOL_ERROR) {
        Some(H2Break::Response)
    } else {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Break {
    /// The proxy ended the whole connection.
    Connection,
    /// The proxy refused one response: its stream was reset.
    Response,
}

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_H1: &[u8] = b"http/1.1";

/// Why an upstream could not be reached, as a record will say it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ConnectError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConnectError {
            kind,
            message: message.into(),
        }
    }
}

/// A client connection to one origin.
pub enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>, H2End),
}

/// How an HTTP/2 connection's task ended, once it has: `Some(message)` when the server broke
/// HTTP/2 as the proxy reads it ([`broke_h2`]). A request the ending connection dropped
/// unanswered gets only "connection closed" from hyper; this says why.
pub type H2End = tokio::sync::watch::Receiver<Option<Option<Arc<str>>>>;

/// How long a request the connection dropped waits to learn why it ended (its task says so as
/// it finishes, right after dropping the request).
const H2_END_WAIT: Duration = Duration::from_millis(200);

/// Why the HTTP/2 connection behind `end` broke HTTP/2, if it did.
pub async fn h2_broke(end: &H2End) -> Option<Arc<str>> {
    let mut end = end.clone();
    let why = match tokio::time::timeout(H2_END_WAIT, end.wait_for(Option::is_some)).await {
        Ok(Ok(seen)) => seen.clone().flatten(),
        _ => None,
    };
    why
}

impl Sender {
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(..))
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s, _) => s.is_closed(),
        }
    }
}

/// An established upstream connection and what was learnt opening it.
pub struct Connection {
    pub sender: Sender,
    /// The server's address; `None` through an egress proxy (`--upstream-proxy`).
    pub ip: Option<IpAddr>,
    /// Requests go to an egress proxy in absolute form (plain HTTP/1.1 through `--upstream-proxy`).
    pub absolute: bool,
    /// Taken by the first exchange on the connection, which is the one that paid for it.
    pub timings: Option<ConnectTimings>,
    pub alpn: Option<Vec<u8>>,
    /// The ALPN protocols offered when it was opened (what `alpn` was chosen from).
    pub offered: Vec<Vec<u8>>,
    pub tls_version: Option<&'static str>,
    /// The server asked for a client certificate during the TLS handshake (flowtap presented
    /// `--upstream-client-cert` if it was given, none otherwise).
    pub client_cert_requested: bool,
}

impl Connection {
    /// A second handle on a multiplexed (HTTP/2) connection, carrying this one's timings;
    /// `None` for HTTP/1.1, which serves one exchange at a time.
    pub fn share(&mut self) -> Option<Connection> {
        match &self.sender {
            Sender::H2(s, end) => Some(Connection {
                sender: Sender::H2(s.clone(), end.clone()),
                ip: self.ip,
                absolute: self.absolute,
                timings: self.timings.take(),
                alpn: self.alpn.clone(),
                offered: self.offered.clone(),
                tls_version: self.tls_version,
                client_cert_requested: self.client_cert_requested,
            }),
            Sender::H1(_) => None,
        }
    }

    /// Like [`Connection::share`], but the timings stay with `self` (the exchange that opened it).
    pub fn share_without_timings(&mut self) -> Option<Connection> {
        let timings = self.timings.take();
        let shared = self.share();
        self.timings = timings;
        shared
    }
}

/// TLS client settings shared by every upstream connection.
pub struct UpstreamTls {
    base: Arc<ClientConfig>,
    by_alpn: Mutex<HashMap<Vec<Vec<u8>>, Arc<ClientConfig>>>,
    pub verified: bool,
    /// `--upstream-client-cert`: presented to every server that asks for a certificate.
    client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl UpstreamTls {
    /// System roots plus each PEM bundle in `extra`; or no verification at all when `insecure`.
    /// `client_cert` is presented to servers that ask for one.
    pub fn new(
        extra: &[PathBuf],
        insecure: bool,
        client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    ) -> Result<Self, String> {
        let provider = Arc::new(crate::tls::crypto_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "could not read some system CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            tracing::debug!(added, "system CA certificates loaded");
            for path in extra {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "--upstream-ca {}: no PEM certificates in the file",
                        path.display()
                    ));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("--upstream-ca {}: {e}", path.display()))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(UpstreamTls {
            base: Arc::new(config),
            by_alpn: Mutex::new(HashMap::new()),
            verified: !insecure,
            client_cert,
        })
    }

    /// Whether flowtap has a certificate of its own for servers that ask for one.
    pub fn has_client_cert(&self) -> bool {
        self.client_cert.is_some()
    }

    fn config(&self, alpn: &[Vec<u8>]) -> Arc<ClientConfig> {
        let Ok(mut map) = self.by_alpn.lock() else {
            return self.base.clone();
        };
        map.entry(alpn.to_vec())
            .or_insert_with(|| {
                let mut c = (*self.base).clone();
                c.alpn_protocols = alpn.to_vec();
                Arc::new(c)
            })
            .clone()
    }

    /// The settings for one new connection, with a flag raised if its server asks for a client
    /// certificate (rustls asks the resolver only then; it answers with `--upstream-client-cert`
    /// or none). A copy per connection is a few hundred nanoseconds against a handshake's
    /// milliseconds.
    fn config_watching_client_auth(
        &self,
        alpn: &[Vec<u8>],
    ) -> (Arc<ClientConfig>, Arc<AtomicBool>) {
        let asked = Arc::new(AtomicBool::new(false));
        let mut c = (*self.config(alpn)).clone();
        c.client_auth_cert_resolver = Arc::new(ClientCertAsked {
            asked: asked.clone(),
            cert: self.client_cert.clone(),
        });
        (Arc::new(c), asked)
    }
}

/// Raises its flag when the server requests a client certificate; presents `cert`, if any.
#[derive(Debug)]
struct ClientCertAsked {
    asked: Arc<AtomicBool>,
    cert: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::client::ResolvesClientCert for ClientCertAsked {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.cert.clone()
    }

    fn has_certs(&self) -> bool {
        self.cert.is_some()
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Resolves `host` and connects to the first address that answers, within `timeout` in all.
pub async fn connect_tcp(
    host: &str,
    port: u16,
    addr: Option<IpAddr>,
    timeout: Duration,
) -> Result<(tracked::Tracked, SocketAddr, Option<Duration>, Duration), ConnectError> {
    let deadline = Instant::now() + timeout;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let (addrs, dns) = match addr.or_else(|| bare.parse::<IpAddr>().ok()) {
        Some(ip) => (vec![SocketAddr::new(ip, port)], None),
        None => {
            let t0 = Instant::now();
            let lookup =
                tokio::time::timeout_at(deadline.into(), tokio::net::lookup_host((bare, port)));
            let addrs: Vec<SocketAddr> = match lookup.await {
                Err(_) => {
                    return Err(ConnectError::new(
                        ErrorKind::UpstreamTimeout,
                        format!("resolving {bare} took longer than {timeout:?}"),
                    ))
                }
                Ok(Err(e)) => {
                    return Err(ConnectError::new(
                        ErrorKind::UpstreamDns,
                        format!("cannot resolve {bare}: {e}"),
                    ))
                }
                Ok(Ok(a)) => a.collect(),
            };
            if addrs.is_empty() {
                return Err(ConnectError::new(
                    ErrorKind::UpstreamDns,
                    format!("{bare} resolved to no address"),
                ));
            }
            (addrs, Some(t0.elapsed()))
        }
    };
    let t0 = Instant::now();
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline.into(), TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ConnectError::new(
                    ErrorKind::UpstreamTimeout,
                    format!("connecting to {host}:{port} ({addr}) took longer than {timeout:?}"),
                ))
            }
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((tracked::Tracked::new(s), addr, dns, t0.elapsed()));
            }
            Ok(Err(e)) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.expect("at least one address was tried");
    Err(ConnectError::new(
        ErrorKind::UpstreamConnect,
        format!("cannot connect to {host}:{port} ({addr}): {e}"),
    ))
}

/// A byte stream to `target`: a TCP connection, or a `CONNECT` tunnel through `via` when it
/// applies (checked by the caller). The server's address (`None` through a tunnel), name lookup
/// and connect times.
pub async fn open(
    target: &Target,
    via: Option<&via::UpstreamProxy>,
    timeout: Duration,
) -> Result<(tracked::Tracked, Option<IpAddr>, Option<Duration>, Duration), ConnectError> {
    match via {
        Some(v) => {
            let (s, dns, connect) = v.tunnel(&target.host, target.port, timeout).await?;
            Ok((s, None, dns, connect))
        }
        None => {
            let (s, addr, dns, connect) =
                connect_tcp(&target.host, target.port, target.addr, timeout).await?;
            Ok((s, Some(addr.ip()), dns, connect))
        }
    }
}

fn tls_version(v: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    match v? {
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => Some("TLS"),
    }
}

/// Where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Name to send as SNI and verify the certificate against (defaults to `host`).
    pub sni: Option<String>,
    /// Address to connect to instead of resolving `host` (transparent mode: the client's
    /// original destination).
    pub addr: Option<IpAddr>,
}

impl Target {
    pub fn new(host: impl Into<String>, port: u16, tls: bool) -> Self {
        Target {
            host: host.into(),
            port,
            tls,
            sni: None,
            addr: None,
        }
    }
}

/// Opens a connection to `target`, offering `alpn` when it is TLS, and starts its hyper client.
/// On a plain-text connection an offer led by `h2` means HTTP/2 with prior knowledge (h2c), as
/// a client that spoke h2c itself asks for; otherwise plain text is HTTP/1.1.
/// Through `via` (`--upstream-proxy`) unless its no-proxy list names the target: plain HTTP/1.1
/// then goes to the egress proxy itself (requests in absolute form), the rest through `CONNECT`.
pub async fn connect(
    tls: &UpstreamTls,
    target: &Target,
    alpn: &[Vec<u8>],
    timeout: Duration,
    via: Option<&via::UpstreamProxy>,
) -> Result<Connection, ConnectError> {
    let h2c = alpn.first().is_some_and(|p| p == ALPN_H2);
    let via = via.filter(|v| v.applies(&target.host, target.addr));
    let absolute = via.is_some() && !target.tls && !h2c;
    let (tcp, ip, dns, connect) = match via {
        Some(v) if absolute => {
            let (s, _, dns, connect) = v.connect(timeout).await?;
            (s, None, dns, connect)
        }
        _ => open(target, via, timeout).await?,
    };
    let mut timings = ConnectTimings {
        dns,
        connect,
        tls: None,
    };
    if !target.tls {
        let sender = if h2c {
            handshake_h2(tcp).await?
        } else {
            handshake_h1(tcp).await?
        };
        return Ok(Connection {
            sender,
            ip,
            absolute,
            timings: Some(timings),
            alpn: None,
            offered: alpn.to_vec(),
            tls_version: None,
            client_cert_requested: false,
        });
    }
    let name = target.sni.as_deref().unwrap_or(&target.host);
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(bare.to_string()).map_err(|e| {
        ConnectError::new(
            ErrorKind::UpstreamTls,
            format!("invalid server name {bare:?}: {e}"),
        )
    })?;
    let t0 = Instant::now();
    let (config, client_cert_asked) = tls.config_watching_client_auth(alpn);
    let connector = TlsConnector::from(config);
    let stream =
        match tokio::time::timeout(timeout, connector.connect(server_name, tcp.read_ahead())).await
        {
            Err(_) => {
                return Err(ConnectError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "TLS handshake with {}:{} took longer than {timeout:?}",
                        target.host, target.port
                    ),
                ))
            }
            Ok(Err(e)) => {
                let hint = if e.to_string().contains("UnknownIssuer") {
                    " (signed by a CA flowtap does not trust: give it with --upstream-ca)"
                } else {
                    ""
                };
                return Err(ConnectError::new(
                    ErrorKind::UpstreamTls,
                    format!(
                        "TLS handshake with {}:{} failed: {e}{hint}",
                        target.host, target.port
                    ),
                ));
            }
            Ok(Ok(s)) => s,
        };
    timings.tls = Some(t0.elapsed());
    let (_, session) = stream.get_ref();
    let negotiated = session.alpn_protocol().map(|p| p.to_vec());
    let version = tls_version(session.protocol_version());
    let sender = if negotiated.as_deref() == Some(ALPN_H2) {
        handshake_h2(stream).await?
    } else {
        handshake_h1(stream).await?
    };
    Ok(Connection {
        sender,
        ip,
        absolute: false,
        timings: Some(timings),
        alpn: negotiated,
        offered: alpn.to_vec(),
        tls_version: version,
        client_cert_requested: client_cert_asked.load(Ordering::Relaxed),
    })
}

async fn handshake_h1<T>(io: T) -> Result<Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_MAX_BUF)
        .max_header_size(UPSTREAM_MAX_BUF)
        .max_headers(UPSTREAM_MAX_HEADERS)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| {
            ConnectError::new(ErrorKind::UpstreamClosed, format!("HTTP/1.1 setup: {e}"))
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
        }
    });
    Ok(Sender::H1(sender))
}

async fn handshake_h2<T>(io: T) -> Result<Sender, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        // hyper's default, 16 KiB, refused response heads that the application takes directly
        // (long Content-Security-Policy and Set-Cookie headers): the same bound as HTTP/1.1.
        .max_header_list_size(UPSTREAM_MAX_BUF as u32)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::new(ErrorKind::UpstreamClosed, format!("HTTP/2 setup: {e}")))?;
    let (ended, end) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let broke = match conn.await {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                broke_h2(&e).map(|_| Arc::from(crate::error_chain(&e)))
            }
        };
        let _ = ended.send(Some(broke));
    });
    Ok(Sender::H2(sender, end))
}

/// Read buffer of an upstream HTTP/1.1 connection: bounds the response head (exactly, on HTTP/1.1
/// and HTTP/2: nginx in front of an application stops at 4-8 KiB, Node at 16 KiB) and how much of
/// a body is read ahead of the client (hyper's default is about 400 KiB per connection).
pub const UPSTREAM_MAX_BUF: usize = 64 << 10;

/// Most header fields in one upstream HTTP/1.1 response head. hyper's default, 100, cut
/// responses that the application takes directly (a login that sets many cookies, a CDN's
/// debugging headers): Node accepts 2,000, Go and curl count bytes only. 512 fields still fit
/// the 64 KiB head above; hyper sizes its parse arrays by this (64 bytes a field, per response).
pub const UPSTREAM_MAX_HEADERS: usize = 512;

/// HTTP/2 flow-control windows: large enough that a fast download is not held to one round trip
/// per 64 KiB, small enough that a stalled reader pins at most this much per stream.
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
pub const H2_CONN_WINDOW: u32 = 4 << 20;
