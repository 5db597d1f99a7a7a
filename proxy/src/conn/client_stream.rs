//! The client's socket on the proxy's own port, as hyper reads and writes it: tokio's
//! `TcpStream` I/O, with reads that do not zero the buffer first (see [`super::recv`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub struct ClientStream(pub TcpStream);

impl AsyncRead for ClientStream {
    /// Reads like tokio's own `TcpStream::poll_read`, including its shortcut: a read that did
    /// not fill the buffer drained the socket, so readiness is cleared then and there, and the
    /// next poll waits for the reactor instead of finding out with a `recv` that fails with
    /// `EAGAIN` (one wasted syscall per request otherwise). Readiness is cleared only if no new
    /// event arrived since the read began (`try_io` compares the event's tick), so data that
    /// lands meanwhile still wakes the task. Like tokio's, it does not zero the buffer's spare
    /// room first (see [`super::recv`]).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let room = buf.remaining();
            let mut drained = false;
            let read = self.0.try_io(Interest::READABLE, || {
                let n = super::recv::into_spare(&self.0, buf)?;
                if 0 < n && n < room {
                    // Reported as WouldBlock so that `try_io` clears readiness; the bytes
                    // are in `buf` already.
                    drained = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (read, drained) {
                (_, true) | (Ok(_), false) => return Poll::Ready(Ok(())),
                (Err(e), false) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), false) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClientStream {
    crate::delegate::delegate_async_write!(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ClientStream, TcpStream) {
        let (accepted, client) = crate::conn::loopback_pair().await;
        (ClientStream(accepted), client)
    }

    /// A short read clears readiness; bytes that arrive afterwards must still wake the reader.
    #[tokio::test]
    async fn data_after_a_short_read_still_wakes_the_reader() {
        let (mut shared, mut peer) = pair().await;
        let mut buf = [0u8; 64];
        peer.write_all(b"first").await.expect("write");
        let n = shared.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"first");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peer.write_all(b"second").await.expect("write");
            peer
        });
        let n = tokio::time::timeout(Duration::from_secs(5), shared.read(&mut buf))
            .await
            .expect("woken by the second write")
            .expect("read");
        assert_eq!(&buf[..n], b"second");
        drop(writer.await.expect("writer"));
        let n = tokio::time::timeout(Duration::from_secs(5), shared.read(&mut buf))
            .await
            .expect("woken by EOF")
            .expect("read");
        assert_eq!(n, 0, "EOF after the peer closed");
    }

    /// Many small exchanges in both directions, racing writes against reads: every byte
    /// arrives and nothing hangs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ping_pong_never_loses_a_wakeup() {
        let (shared, mut peer) = pair().await;
        let echo = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(shared);
            let mut buf = [0u8; 7];
            loop {
                let n = r.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).await.expect("write");
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..2000u32 {
            let msg = i.to_string();
            peer.write_all(msg.as_bytes()).await.expect("write");
            let mut seen = 0;
            while seen < msg.len() {
                let n = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf))
                    .await
                    .expect("echo within 5 s")
                    .expect("read");
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
                seen += n;
            }
        }
        peer.shutdown().await.expect("shutdown");
        echo.await.expect("echo task");
        let want: String = (0..2000u32).map(|i| i.to_string()).collect();
        assert_eq!(String::from_utf8(got).expect("utf8"), want);
    }
}
