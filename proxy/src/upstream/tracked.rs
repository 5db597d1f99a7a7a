//! Upstream sockets that remember their local address while they live, so transparent mode can
//! recognise its own outgoing connections coming back (a redirect rule without the proxy's
//! owner exclusion) and refuse them instead of looping until descriptors run out.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

static LOCAL_ADDRS: LazyLock<Mutex<HashSet<SocketAddr>>> = LazyLock::new(Default::default);

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Whether `peer` is the local end of one of the proxy's own upstream connections.
pub fn is_own_upstream(peer: SocketAddr) -> bool {
    LOCAL_ADDRS
        .lock()
        .map(|s| s.contains(&canonical(peer)))
        .unwrap_or(false)
}

/// A connected upstream socket, registered until dropped.
pub struct Tracked {
    inner: TcpStream,
    local: Option<SocketAddr>,
}

impl Tracked {
    pub fn new(inner: TcpStream) -> Self {
        let local = inner.local_addr().ok().map(canonical);
        if let (Some(a), Ok(mut s)) = (local, LOCAL_ADDRS.lock()) {
            s.insert(a);
        }
        Tracked { inner, local }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(a), Ok(mut s)) = (self.local, LOCAL_ADDRS.lock()) {
            s.remove(&a);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
