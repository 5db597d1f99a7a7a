//! Upstream sockets that remember their local address while they live, so transparent mode can
//! recognise its own outgoing connections coming back (a redirect rule without the proxy's
//! owner exclusion) and refuse them instead of looping until descriptors run out.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{ready, Context, Poll};
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

/// Size of the read-ahead buffer of a streaming TLS connection (see [`Tracked::read_ahead`]).
const READ_AHEAD: usize = 64 << 10;

/// A connected upstream socket, registered until dropped.
pub struct Tracked {
    inner: TcpStream,
    local: Option<SocketAddr>,
    /// Whether reads may go through `ahead` (TLS connections).
    read_ahead: bool,
    ahead: Option<Ahead>,
}

/// Bytes read from the socket and not yet handed to the reader: `buf[pos..len]`.
struct Ahead {
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

impl Tracked {
    pub fn new(inner: TcpStream) -> Self {
        let local = inner.local_addr().ok().map(canonical);
        if let (Some(a), Ok(mut s)) = (local, LOCAL_ADDRS.lock()) {
            s.insert(a);
        }
        Tracked {
            inner,
            local,
            read_ahead: false,
            ahead: None,
        }
    }

    /// Lets reads go through a 64 KiB buffer while a transfer streams. rustls reads at most one
    /// TLS record (16 KiB) per call, so a large download cost one `recv` per record; with this,
    /// one `recv` takes up to four. The buffer exists only while reads keep filling it: it is
    /// taken when a direct read fills the caller's buffer, and given back when the socket has
    /// nothing more after a short read, so idle connections hold none.
    pub fn read_ahead(mut self) -> Self {
        self.read_ahead = true;
        self
    }

    /// Bytes waiting in the socket, left there (before any read-ahead is turned on).
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        debug_assert!(self.ahead.is_none());
        self.inner.peek(buf).await
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
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Some(ahead) = this.ahead.as_mut() else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            // The caller's buffer filled up: more is likely waiting, read ahead from now on.
            if this.read_ahead && buf.remaining() == 0 && buf.filled().len() > before {
                this.ahead = Some(Ahead {
                    buf: vec![0; READ_AHEAD].into_boxed_slice(),
                    pos: 0,
                    len: 0,
                });
            }
            return Poll::Ready(Ok(()));
        };
        if ahead.pos == ahead.len {
            let last = ahead.len;
            let mut fill = ReadBuf::new(&mut ahead.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut fill) {
                Poll::Pending => {
                    // The transfer slowed down (the last read was short): give the buffer back.
                    if last < READ_AHEAD / 2 {
                        this.ahead = None;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    ahead.len = fill.filled().len();
                    ahead.pos = 0;
                    if ahead.len == 0 {
                        this.ahead = None;
                        return Poll::Ready(Ok(())); // end of stream
                    }
                }
            }
        }
        let n = buf.remaining().min(ahead.len - ahead.pos);
        buf.put_slice(&ahead.buf[ahead.pos..ahead.pos + n]);
        ahead.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tracked {
    crate::delegate::delegate_async_write!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads through the read-ahead buffer in small pieces, as rustls does: every byte arrives
    /// once and in order, the buffer is taken while the data streams and given back once the
    /// sender pauses, and the end of the stream is seen.
    #[tokio::test]
    async fn read_ahead_passes_every_byte_and_gives_the_buffer_back() {
        let (mut s, client) = crate::conn::loopback_pair().await;
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let (pause_tx, pause_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            s.write_all(&sent[..300_000]).await.unwrap();
            let _ = pause_rx.await;
            s.write_all(&sent[300_000..]).await.unwrap();
        });
        let mut t = Tracked::new(client).read_ahead();
        let mut got = Vec::new();
        let mut piece = [0u8; 4096];
        let mut saw_buffer = false;
        while got.len() < 300_000 {
            let n = t.read(&mut piece).await.unwrap();
            got.extend_from_slice(&piece[..n]);
            saw_buffer |= t.ahead.is_some();
        }
        assert!(
            saw_buffer,
            "a streaming read never used the read-ahead buffer"
        );
        // Nothing more is coming until the pause ends: the next read is pending, and a short
        // last fill gives the buffer back.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(100), t.read(&mut piece)).await;
        assert!(pending.is_err(), "read returned while the sender paused");
        pause_tx.send(()).unwrap();
        t.read_to_end(&mut got).await.unwrap();
        server.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ after the read-ahead buffer");
        assert!(
            t.ahead.is_none(),
            "the buffer outlived the end of the stream"
        );
    }
}
