//! The proxy's one use of `unsafe`, kept to this module as DESIGN.md asks: `recv` straight into
//! the spare room of a [`ReadBuf`], without zeroing that room first.
//!
//! hyper hands each read a buffer whose initialisation it does not pass on (its
//! `ReadBufCursor` becomes a fresh `ReadBuf::uninit`), so the safe route,
//! `ReadBuf::initialize_unfilled`, zeroes the whole spare room on every read: up to 8 KiB per
//! request on a client connection. Not zeroing saved 9-13 % of the proxy's CPU per request in
//! plain HTTP and up to 11 % over TLS (A/B), and it made both pages of every connection's read buffer
//! resident: 10,000 idle connections took 178 MiB with it and 150 MiB without (bench/README.md).
//! tokio's own `TcpStream` reads into the spare room the same way.
#![allow(unsafe_code)]

use socket2::SockRef;
use std::io;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

/// Receives into `buf`'s spare room and advances it past the bytes received; returns how many
/// (0 at end of stream, or when `buf` has no room).
pub fn into_spare(sock: &TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    if buf.remaining() == 0 {
        // A zero-length `recv` on a non-blocking socket fails with EAGAIN when nothing is
        // pending, which would read as "not ready" to the caller.
        return Ok(0);
    }
    // SAFETY: the room is only written by `recv`, which takes it as `MaybeUninit` (socket2's
    // signature) and reports how many bytes the kernel wrote; nothing de-initialises it.
    let room = unsafe { buf.unfilled_mut() };
    let n = SockRef::from(sock).recv(room)?;
    // SAFETY: `recv` wrote exactly these `n` bytes at the start of the room.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;
    use tokio::io::AsyncWriteExt;

    /// Bytes land where they should in an uninitialised buffer, the count is right, and a
    /// buffer without room reads nothing.
    #[tokio::test]
    async fn receives_into_uninitialised_room() {
        let (sock, mut peer) = crate::conn::loopback_pair().await;
        peer.write_all(b"hello, proxy").await.unwrap();
        sock.readable().await.unwrap();
        let mut storage = [MaybeUninit::<u8>::uninit(); 64];
        let mut buf = ReadBuf::uninit(&mut storage);
        buf.put_slice(b">");
        let n = into_spare(&sock, &mut buf).unwrap();
        assert_eq!(n, 12);
        assert_eq!(buf.filled(), b">hello, proxy");
        assert_eq!(
            buf.initialized().len(),
            13,
            "only what was received is initialised"
        );
        let mut full = [0u8; 4];
        let mut none = ReadBuf::new(&mut full);
        none.advance(4);
        assert_eq!(into_spare(&sock, &mut none).unwrap(), 0);
    }
}
