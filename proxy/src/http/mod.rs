//! The per-connection HTTP service: every request a client sends through the proxy arrives here.
//!
//! A [`Session`] knows how to find the upstream for a request ([`Route`]): in explicit-proxy mode
//! each absolute-form request names its own target; inside a CONNECT tunnel every request goes to
//! the tunnel's target. [`forward`] does the rest: record, send, tap the response.

pub mod admin;
pub mod forward;
pub mod headers;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::output::Emitter;
use crate::record::{ConnInfo, TlsFacts};
use crate::tls::leaf::LeafCache;
use crate::upstream::{ConnectError, Connection, Target, UpstreamTls};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Everything the connections of one proxy share.
pub struct Shared {
    pub config: ProxyConfig,
    pub upstream_tls: UpstreamTls,
    pub leaves: LeafCache,
    pub ca_pem: String,
    pub emitter: Emitter,
    pub metrics: Arc<Metrics>,
    /// Flips to true when the proxy starts to shut down.
    pub shutdown: watch::Receiver<bool>,
    /// Upstream connections kept for reuse across client connections.
    pub pool: crate::upstream::pool::Pool,
    /// Traffic-carrying tasks still running, for the graceful drain.
    pub tracker: Arc<crate::listener::Tracker>,
}

/// The body of every response the proxy sends to a client.
pub type RespBody = Either<crate::record::tap::ResponseTap<Incoming>, Full<Bytes>>;
pub type Response = hyper::Response<RespBody>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where the requests of a session go.
pub enum Route {
    /// Explicit proxy: absolute-form requests name their target, CONNECT opens a tunnel,
    /// origin-form requests are for the proxy itself.
    Forward,
    /// Every request goes to `target` (inside a CONNECT tunnel).
    Fixed {
        target: Target,
        scheme: Scheme,
        /// `host[:port]` used in the record's URL when the request names no authority.
        authority: String,
        /// The connection could not be opened: every request is answered with this error.
        failed: Option<ConnectError>,
        /// Transparent plain HTTP: the record names the server from the Host header.
        host_from_request: bool,
        /// Reverse mode: the upstream gets its own name in Host, as reverse proxies do.
        rewrite_host: bool,
        /// How a plain-text `target` is spoken to.
        plain: PlainUpstream,
    },
}

/// How a fixed route speaks to a plain-text upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainUpstream {
    /// In the client's protocol: HTTP/2 with prior knowledge (h2c) when the client spoke h2c to
    /// what it took for the server (a CONNECT tunnel, a redirected connection), else HTTP/1.1.
    AsClient,
    /// HTTP/1.1 (reverse mode, `http://`).
    Http1,
    /// HTTP/2 with prior knowledge (reverse mode, `h2c://`), whatever the client spoke.
    H2c,
}

impl Route {
    /// Whether requests of a client speaking HTTP/2 (`client_h2`) or HTTP/1.1 go upstream over
    /// HTTP/2: over TLS when the client spoke it (the server's ALPN has the last word), in
    /// plain text as the route says.
    pub fn upstream_h2(&self, target_tls: bool, client_h2: bool) -> bool {
        match self {
            Route::Fixed { plain, .. } if !target_tls => match plain {
                PlainUpstream::AsClient => client_h2,
                PlainUpstream::Http1 => false,
                PlainUpstream::H2c => true,
            },
            _ => client_h2,
        }
    }
}

/// One client connection's view of the proxy.
pub struct Session {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnInfo>,
    pub tls: Option<Arc<TlsFacts>>,
    pub route: Route,
    /// A connection opened for this session before its first request (TLS interception
    /// connects upstream to learn the ALPN); used before the shared pool.
    /// Boxed: most sessions never have one, and every open connection carries its Session.
    reserved: Mutex<Option<Box<(Target, Connection)>>>,
    /// Requests received on this connection.
    pub requests: std::sync::atomic::AtomicU64,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        conn: Arc<ConnInfo>,
        tls: Option<Arc<TlsFacts>>,
        route: Route,
    ) -> Arc<Self> {
        Arc::new(Session {
            shared,
            conn,
            tls,
            route,
            reserved: Mutex::new(None),
            requests: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Keeps a connection opened before the first request (TLS interception) for this session.
    pub fn adopt(&self, target: Target, c: Connection) {
        if c.sender.is_h2() {
            // Shared: other clients of the same target may use it too.
            let mut c = c;
            if let Some(shared) = c.share() {
                self.shared.pool.put(target.clone(), shared);
            }
            if let Ok(mut r) = self.reserved.lock() {
                *r = Some(Box::new((target, c)));
            }
        } else if let Ok(mut r) = self.reserved.lock() {
            *r = Some(Box::new((target, c)));
        }
    }
}

/// Plain-text response from the proxy itself (errors, its own pages).
pub fn plain(status: hyper::StatusCode, text: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Either::Right(Full::new(text.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
