//! A stream hyper serves and hands back when it is done with it. hyper's HTTP/1 server closes a
//! connection whose request head did not arrive in time without answering. This wrapper gives
//! the stream (the client's socket, or the TLS session inside a tunnel) back into a slot when
//! hyper drops it, so the proxy can still write the `408` through it. It costs nothing per read
//! or write: the slot is touched once, when the connection is dropped.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the stream lands once hyper has dropped it (boxed then, so the slot is small before).
pub type Slot<IO> = Arc<Mutex<Option<Box<IO>>>>;

pub struct Reclaim<IO> {
    io: Option<IO>,
    slot: Slot<IO>,
}

impl<IO> Reclaim<IO> {
    /// Wraps `io`; it is put into the returned slot when the wrapper is dropped.
    pub fn new(io: IO) -> (Self, Slot<IO>) {
        let slot = Arc::new(Mutex::new(None));
        (
            Reclaim {
                io: Some(io),
                slot: slot.clone(),
            },
            slot,
        )
    }
}

/// Takes the stream back out of its slot, if it has been given back.
pub fn take<IO>(slot: &Slot<IO>) -> Option<Box<IO>> {
    slot.lock().ok().and_then(|mut s| s.take())
}

impl<IO> Drop for Reclaim<IO> {
    fn drop(&mut self) {
        if let (Some(io), Ok(mut slot)) = (self.io.take(), self.slot.lock()) {
            *slot = Some(Box::new(io));
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream already given back")
}

impl<IO: AsyncRead + Unpin> AsyncRead for Reclaim<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Reclaim<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The stream works through the wrapper, and is still usable once the wrapper is dropped.
    #[tokio::test]
    async fn the_stream_comes_back_when_the_wrapper_is_dropped() {
        let (accepted, mut client) = crate::conn::loopback_pair().await;
        let (mut wrapped, slot) = Reclaim::new(accepted);
        assert!(
            wrapped.is_write_vectored() == wrapped.io.as_ref().expect("io").is_write_vectored()
        );
        wrapped.write_all(b"one ").await.expect("write");
        assert!(take(&slot).is_none(), "nothing to take while it is in use");
        drop(wrapped);
        let mut back = take(&slot).expect("given back on drop");
        back.write_all(b"two").await.expect("write after");
        back.shutdown().await.expect("shutdown");
        let mut got = String::new();
        client.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "one two");
        assert!(take(&slot).is_none(), "taken once");
    }
}
