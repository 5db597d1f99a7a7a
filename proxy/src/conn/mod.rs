//! One client connection: HTTP/1 or HTTP/2 served by hyper over any byte stream (the client's
//! socket, a CONNECT tunnel, a decrypted TLS stream), with graceful shutdown.

pub mod detect;
pub mod prefixed;

use crate::http::forward::handle;
use crate::http::{Route, Session, Shared};
use crate::record::{ConnInfo, Mode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Time a client gets to send a complete request head (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted (request line plus headers).
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 128;
/// Concurrent HTTP/2 streams one client connection may open.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Resolves once the proxy starts to shut down.
pub async fn stopping(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    H1,
    H2,
}

/// Serves a freshly accepted client socket in regular (explicit proxy) mode.
pub async fn serve_client(shared: Arc<Shared>, stream: TcpStream, client: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let conn = ConnInfo::new(client, Mode::Regular);
    let session = Session::new(shared, conn, None, Route::Forward);
    serve_http(session, stream, HttpProtocol::H1).await;
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
    Box::pin(serve_http_inner(session, io, proto))
}

async fn serve_http_inner<IO>(session: Arc<Session>, io: IO, proto: HttpProtocol)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = session.shared.shutdown.clone();
    let s = session.clone();
    let service = service_fn(move |req| handle(s.clone(), req));
    let io = TokioIo::new(io);
    let result = match proto {
        HttpProtocol::H1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .max_headers(MAX_HEADERS)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping(&mut shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        HttpProtocol::H2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                .initial_stream_window_size(crate::upstream::H2_STREAM_WINDOW)
                .initial_connection_window_size(crate::upstream::H2_CONN_WINDOW)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping(&mut shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(conn = session.conn.id, error = %e, "client connection ended with an error");
    }
}
