//! One client connection: HTTP/1 or HTTP/2 served by hyper over any byte stream (the client's
//! socket, a CONNECT tunnel, a decrypted TLS stream), with graceful shutdown.

pub mod client_stream;
pub mod coalesce;
pub mod detect;
pub mod prefixed;
pub mod reclaim;
pub mod recv;

/// For tests: a connected TCP pair on loopback, as (the accepted side, the connecting side).
#[cfg(test)]
pub(crate) async fn loopback_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (accepted.expect("accept").0, client.expect("connect"))
}

use crate::connect::{inspect, Entry};
use crate::http::forward::handle;
use crate::http::{Route, Session, Shared};
use crate::mode::ModeKind;
use crate::record::{ConnInfo, ConnectionRecord, Mode, Record};
use flowtap_schema::ErrorKind;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long a silent transparent connection is given before the second look for the proxy's
/// own upstream sockets (see `serve_transparent`); clients that speak first are looked at as
/// soon as their first bytes arrive.
const OWN_UPSTREAM_SETTLE: Duration = Duration::from_millis(50);

/// Streams an HTTP/2 client may reset before the connection is closed with GOAWAY
/// (rapid-reset protection, CVE-2023-44487).
const MAX_PENDING_RESETS: usize = 64;

/// Resolves once the proxy starts to shut down.
pub async fn stopping(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    H1,
    H2,
}

/// How a client connection ended, when it ended badly outside any exchange.
#[derive(Debug)]
pub enum Ended {
    Fine,
    /// No complete request head within the header timeout.
    HeaderTimeout,
    /// The head was too large (hyper answered 431 itself).
    TooLarge(String),
    /// Unparsable request (hyper answered 400 itself).
    Malformed(String),
    /// HTTP/2: the proxy sent GOAWAY because the client broke a limit (reset flood).
    GoAway(String),
    /// Anything else: resets, I/O errors.
    Other(String),
}

/// Serves a freshly accepted client socket in the listener's mode.
pub async fn serve_client(
    shared: Arc<Shared>,
    stream: TcpStream,
    client: SocketAddr,
    mode: ModeKind,
) {
    let _ = stream.set_nodelay(true);
    // Each mode's future is boxed at its own size: the task of an idle connection then holds
    // only what its mode needs (inline, every task was as large as the largest mode's future).
    // (The box is made in its own statement: a future moved into `Box::pin` within the awaiting
    // statement still takes room in the caller's state.)
    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match mode {
        ModeKind::Regular => Box::pin(serve_regular(shared, stream, client)),
        ModeKind::Transparent => Box::pin(serve_transparent(shared, stream, client)),
        ModeKind::Reverse(target) => {
            let conn = ConnInfo::new(client, Mode::Reverse);
            let session = Session::new(shared, conn, None, Route::Forward);
            let local = stream.local_addr().ok().map(|a| a.ip());
            Box::pin(inspect(session, stream, Entry::Reverse { target, local }))
        }
    };
    serve.await
}

/// Transparent mode: the kernel redirected a connection meant for somewhere else; find out
/// where (SO_ORIGINAL_DST) and treat it as a CONNECT to there.
async fn serve_transparent(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let conn = ConnInfo::new(client, Mode::Transparent);
    let sock = socket2::SockRef::from(&stream);
    let local = stream.local_addr().ok().map(canonical);
    // By the client's address family, not the socket's: an IPv4 client of a dual-stack `[::]`
    // listener arrives v4-mapped, and its conntrack entry is IPv4 (SOL_IP works on that socket).
    let original = match client.ip().to_canonical() {
        IpAddr::V4(_) => sock.original_dst_v4(),
        IpAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()
    .and_then(|a| a.as_socket())
    .map(canonical);
    let mut failure = match original {
        _ if crate::upstream::tracked::is_own_upstream(client) => Some(own_upstream(client)),
        None => Some("no original destination (SO_ORIGINAL_DST): was the connection redirected by iptables/nftables REDIRECT?".to_string()),
        // Not redirected, or redirected back to the proxy: serving it would loop.
        Some(dst)
            if Some(dst) == local
                || shared.config.modes.iter().any(|m| canonical(m.listen) == dst) =>
        {
            Some(format!("original destination {dst} is the proxy itself; refusing to loop"))
        }
        Some(_) => None,
    };
    if failure.is_none() {
        // The proxy registers an upstream socket as soon as its connect returns, which can be
        // a moment after the redirected connection was accepted here; it writes to it only
        // after that. So once this connection has sent its first bytes, or stayed silent for a
        // moment (server-first protocols), an own connection is registered: look again.
        // (A peek, not `readable()`: tokio starts an accepted socket as readable, tokio#8435,
        // so `readable()` returns at once; `peek` waits until a byte really has arrived.)
        let _ = tokio::time::timeout(OWN_UPSTREAM_SETTLE, stream.peek(&mut [0u8; 1])).await;
        if crate::upstream::tracked::is_own_upstream(client) {
            failure = Some(own_upstream(client));
        }
    }
    if let Some(message) = failure {
        tracing::debug!(client = %client, "{message}");
        shared
            .emitter
            .send(Record::Connection(Box::new(ConnectionRecord {
                conn,
                start: std::time::SystemTime::now(),
                error: (ErrorKind::Refused, message),
            })));
        return;
    }
    let Some(dst) = original else { return };
    let session = Session::new(shared, conn, None, Route::Forward);
    let entry = Entry::Transparent {
        ip: dst.ip().to_canonical(),
        port: dst.port(),
    };
    inspect(session, stream, entry).await;
}

/// One of the proxy's own upstream connections, redirected back: the redirect rule lacks the
/// owner exclusion for the proxy's user. Serving it would loop until descriptors ran out.
fn own_upstream(client: SocketAddr) -> String {
    format!(
        "connection from the proxy's own upstream socket {client}: the redirect rule must \
         exclude the proxy's user (iptables -m owner ! --uid-owner UID); refusing to loop"
    )
}

/// `addr` with a v4-mapped IPv6 address written as the IPv4 address it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

async fn serve_regular(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let conn = ConnInfo::new(client, Mode::Regular);
    let session = Session::new(shared, conn, None, Route::Forward);
    serve_http(
        session,
        client_stream::ClientStream(stream),
        HttpProtocol::H1,
    )
    .await
}

fn first_request(session: &Session) -> bool {
    session.requests.load(std::sync::atomic::Ordering::Relaxed) == 0
}

/// Writes a connection record when a client connection ended on a limit or bad input outside
/// any exchange (hyper answered it itself: 431, 400; or `answer_408`; or GOAWAY on HTTP/2).
fn record_ended(session: &Session, ended: Ended) {
    let timeout = session.shared.config.limits.request_header_timeout;
    let (kind, message) = match ended {
        Ended::Fine => return,
        Ended::Other(e) => {
            tracing::debug!(conn = session.conn.id, error = %e, "client connection ended with an error");
            return;
        }
        // A keep-alive connection that sat idle after its requests: closing it is routine.
        Ended::HeaderTimeout if !first_request(session) => return,
        Ended::HeaderTimeout => (
            ErrorKind::Limit,
            format!("no complete request head within {timeout:?} (--request-header-timeout); answered 408"),
        ),
        Ended::TooLarge(m) => (ErrorKind::Limit, format!("{m}; answered 431")),
        Ended::Malformed(m) => (ErrorKind::Protocol, format!("{m}; answered 400")),
        Ended::GoAway(m) => (ErrorKind::Limit, m),
    };
    session
        .shared
        .emitter
        .send(Record::Connection(Box::new(ConnectionRecord {
            conn: session.conn.clone(),
            start: std::time::SystemTime::now(),
            error: (kind, message),
        })));
}

/// Time allowed to write the 408 before the socket is closed anyway.
const REPLY_408_TIMEOUT: Duration = Duration::from_secs(1);

async fn answer_408<IO: AsyncWrite + Unpin>(mut spare: IO) {
    use tokio::io::AsyncWriteExt;
    const REPLY: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 41\r\nconnection: close\r\n\r\nflowtap: the request head took too long.\n";
    let _ = tokio::time::timeout(REPLY_408_TIMEOUT, async {
        let _ = spare.write_all(REPLY).await;
        let _ = spare.shutdown().await;
    })
    .await;
}

/// Runs hyper on `io` until the connection ends or the proxy shuts down (then gracefully).
///
/// Returns a boxed future: a CONNECT inside the service leads back here, and the box breaks
/// that cycle of future types.
pub fn serve_http<IO>(
    session: Arc<Session>,
    io: IO,
    proto: HttpProtocol,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        // hyper drops the stream when it gives up on a slow request head; it comes back here,
        // so that the client hears 408 (on the proxy's port and inside tunnels alike).
        let (io, slot) = reclaim::Reclaim::new(io);
        let ended = serve_http_inner(session.clone(), io, proto).await;
        if proto == HttpProtocol::H1
            && matches!(ended, Ended::HeaderTimeout)
            && first_request(&session)
        {
            if let Some(io) = reclaim::take(&slot) {
                answer_408(io).await;
            }
        }
        record_ended(&session, ended);
    })
}

type HandleFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<crate::http::Response, std::convert::Infallible>>
            + Send,
    >,
>;

async fn serve_http_inner<IO>(session: Arc<Session>, io: IO, proto: HttpProtocol) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = session.shared.shutdown.clone();
    let limits = &session.shared.config.limits;
    let s = session.clone();
    // Each request's future is boxed: hyper keeps room for one in-flight future per connection
    // for as long as the connection lives, so an idle keep-alive connection holds 16 bytes
    // instead of the whole forwarding state (measured in bench/README, scenario f).
    let service = service_fn(move |req| -> HandleFuture { Box::pin(handle(s.clone(), req)) });
    let result = match proto {
        HttpProtocol::H1 => serve_h1(TokioIo::new(io), service, limits, shutdown).await,
        HttpProtocol::H2 => {
            // Boxed in its own statement, so the (larger) HTTP/2 state is not part of every
            // HTTP/1 connection's future.
            // Its writes are collected and go out once per poll (conn/coalesce.rs).
            let (io, batch) = coalesce::new(io);
            let h2 = Box::pin(serve_h2(TokioIo::new(io), service, limits, shutdown));
            batch.drive(h2).await
        }
    };
    match result {
        Ok(()) => Ended::Fine,
        Err(e) if e.is_timeout() => Ended::HeaderTimeout,
        Err(e) if e.is_parse_too_large() => Ended::TooLarge(format!("request head too large: {e}")),
        Err(e) if e.is_parse() => Ended::Malformed(format!("malformed request: {e}")),
        Err(e) if is_calm_down(&e) => Ended::GoAway(format!(
            "HTTP/2 client reset streams faster than allowed (rapid reset); sent GOAWAY: {e}"
        )),
        Err(e) => Ended::Other(e.to_string()),
    }
}

async fn serve_h1<IO, S>(
    io: TokioIo<IO>,
    service: S,
    limits: &crate::config::Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::http::RespBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout)
        .max_buf_size(limits.max_header_size.max(8192))
        .max_header_size(limits.max_header_size)
        .max_headers(limits.max_headers)
        .serve_connection(io, service)
        .with_upgrades();
    until_stopped(conn, shutdown, |c| c.graceful_shutdown()).await
}

async fn serve_h2<IO, S>(
    io: TokioIo<IO>,
    service: S,
    limits: &crate::config::Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::http::RespBody>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(limits.max_header_size as u32)
        .initial_stream_window_size(crate::upstream::H2_STREAM_WINDOW)
        .initial_connection_window_size(crate::upstream::H2_CONN_WINDOW)
        .serve_connection(io, service);
    until_stopped(conn, shutdown, |c| c.graceful_shutdown()).await
}

/// Drives a server connection until it ends; once the proxy starts to stop, asks it to finish
/// gracefully (`graceful`: hyper's `graceful_shutdown` of that connection type) and waits.
async fn until_stopped<C>(
    conn: C,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    graceful: fn(std::pin::Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stopping(&mut shutdown) => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// Whether a connection error is the HTTP/2 GOAWAY hyper sends a client that breaks the reset
/// limits (ENHANCE_YOUR_CALM).
fn is_calm_down(e: &hyper::Error) -> bool {
    crate::causes(e)
        .find_map(|c| c.downcast_ref::<h2::Error>())
        .is_some_and(|h2| h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
}
