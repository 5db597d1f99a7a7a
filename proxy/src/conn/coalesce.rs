//! Fewer, larger writes on a multiplexed (HTTP/2) connection.
//!
//! Each stream of an HTTP/2 connection is served by its own task; the connection's task writes
//! the frames they queue. Left alone it writes them as it goes, at least one `write` (and, under
//! TLS, one record) per response: h2 holds at most one body frame before it writes, and tokio
//! runs the task woken last first, so the connection task usually finds one response waiting,
//! writes it, and only then do the other streams' tasks run and queue theirs.
//!
//! [`new`] and [`Batch::drive`] change two things, without a timer or a byte count to wait for:
//! - while the connection's future is polled, what it writes is collected ([`Coalesce`]), and
//!   it goes out in one write when the poll ends;
//! - a poll that produced output steps aside once first (it wakes itself and yields, so the
//!   tasks already waiting to run go before it): when it comes back, the frames those tasks
//!   queued go out with its own.
//!
//! A connection with nothing else in flight writes after one turn of the scheduler. Large
//! writes (bodies in big frames) skip the buffer, so no byte is copied twice.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Collected output above this goes out at once, within the poll.
const MAX_BUFFERED: usize = 64 * 1024;
/// A write at least this large is not copied: what is buffered goes first, then it.
const WRITE_THROUGH: usize = 16 * 1024;
/// A buffer that grew beyond this is given back once it has been written.
const KEEP_CAPACITY: usize = 16 * 1024;

/// What the connection's future and its stream share.
#[derive(Default)]
struct Gate {
    /// Output was collected and a flush was put off.
    owed: AtomicBool,
}

thread_local! {
    /// The gate of the connection whose future this thread is polling in a first pass (the
    /// one whose flushes are put off), if any. Per thread, so that only that very poll puts
    /// its flushes off: a stream polled from any other task or thread flushes as usual.
    static DEFERRING: Cell<*const Gate> = const { Cell::new(std::ptr::null()) };
}

/// Marks this thread as in a connection's first pass until dropped (also on a panic).
struct Deferring(*const Gate);

impl Deferring {
    fn enter(gate: &Arc<Gate>) -> Self {
        Deferring(DEFERRING.replace(Arc::as_ptr(gate)))
    }
}

impl Drop for Deferring {
    fn drop(&mut self) {
        DEFERRING.set(self.0);
    }
}

/// A stream whose writes are collected while its connection's future is polled, and written
/// when the poll ends. Made by [`new`].
pub struct Coalesce<IO> {
    io: IO,
    gate: Arc<Gate>,
    buf: Vec<u8>,
    /// How much of `buf` has been written.
    sent: usize,
}

/// Wraps `io`; the connection made over it is then driven through [`Batch::drive`].
pub fn new<IO>(io: IO) -> (Coalesce<IO>, Batch) {
    let gate = Arc::new(Gate::default());
    let io = Coalesce {
        io,
        gate: gate.clone(),
        buf: Vec::new(),
        sent: 0,
    };
    (io, Batch { gate })
}

/// The other half of a [`Coalesce`] stream: drives the connection's future.
pub struct Batch {
    gate: Arc<Gate>,
}

impl Batch {
    /// The connection's future `conn` (over the stream this came with), writing once per poll.
    pub fn drive<F: Future + Unpin>(self, conn: F) -> Batched<F> {
        Batched {
            inner: conn,
            gate: self.gate,
            yielded: false,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Writes out what is collected; `Ready(Ok)` once all of it is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `len` bytes by `put`ting them into the buffer, or, when they are large or the
    /// buffer is full, by writing out what is buffered and then passing them on (`pass`).
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        put: impl FnOnce(&mut Vec<u8>),
        pass: impl FnOnce(Pin<&mut IO>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if len >= WRITE_THROUGH || self.buf.len() + len > MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
        }
        if len < WRITE_THROUGH {
            put(&mut self.buf);
            return Poll::Ready(Ok(len));
        }
        pass(Pin::new(&mut self.io), cx)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesce<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_take(
            cx,
            buf.len(),
            |b| b.extend_from_slice(buf),
            |io, cx| io.poll_write(cx, buf),
        )
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_take(
            cx,
            len,
            |b| bufs.iter().for_each(|s| b.extend_from_slice(s)),
            |io, cx| io.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && DEFERRING.get() == Arc::as_ptr(&self.gate) {
            // Within its connection's first pass: `Batched` flushes once that pass is over.
            self.gate.owed.store(true, Relaxed);
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A connection's future whose writes [`Coalesce`] collects; see the module's text.
pub struct Batched<F> {
    inner: F,
    gate: Arc<Gate>,
    /// The last poll produced output and stepped aside instead of writing it.
    yielded: bool,
}

impl<F: Future + Unpin> Future for Batched<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let first = {
            let _deferring = Deferring::enter(&this.gate);
            Pin::new(&mut this.inner).poll(cx)
        };
        if first.is_ready() || !this.gate.owed.load(Relaxed) {
            return first;
        }
        if !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // The second pass: the connection flushes at the end of every poll, for real this time.
        this.yielded = false;
        this.gate.owed.store(false, Relaxed);
        Pin::new(&mut this.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::task::{Wake, Waker};

    /// A socket that takes everything at once and keeps each write apart.
    #[derive(Clone, Default)]
    struct Wire(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Wire {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(b.to_vec());
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Frames the streams' tasks have queued for the connection.
    type Queue = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A connection as h2 drives one: each poll writes what its streams queued, one frame per
    /// write, then flushes, then waits.
    struct Conn {
        io: Coalesce<Wire>,
        queued: Queue,
        shut: bool,
    }

    impl Future for Conn {
        type Output = io::Result<()>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let frames: Vec<Vec<u8>> = self.queued.lock().unwrap().drain(..).collect();
            for f in frames {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &f))?;
                assert_eq!(n, f.len());
            }
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            if self.shut {
                ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    fn setup() -> (Batched<Conn>, Wire, Queue) {
        let wire = Wire::default();
        let (io, batch) = new(wire.clone());
        let queued = Arc::new(Mutex::new(Vec::new()));
        let conn = Conn {
            io,
            queued: queued.clone(),
            shut: false,
        };
        (batch.drive(conn), wire, queued)
    }

    fn queue(q: &Queue, frames: &[&[u8]]) {
        q.lock().unwrap().extend(frames.iter().map(|f| f.to_vec()));
    }

    /// Frames queued before the connection's poll and while it stepped aside go out in one
    /// write, in order; the step aside wakes the task, so nothing waits on anything else.
    #[test]
    fn frames_of_a_poll_and_of_the_tasks_it_let_go_first_leave_in_one_write() {
        let (mut batched, wire, queued) = setup();
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        queue(&queued, &[b"headers-1 ", b"data-1 ", b"headers-2 "]);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert!(
            wire.writes().is_empty(),
            "nothing is written before stepping aside"
        );
        assert!(wakes.0.load(Relaxed) >= 1, "stepping aside wakes the task");

        // Other streams' tasks run meanwhile and queue their frames.
        queue(&queued, &[b"data-2 ", b"headers-3"]);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert_eq!(
            wire.writes(),
            vec![b"headers-1 data-1 headers-2 data-2 headers-3".to_vec()]
        );

        // A poll with nothing to write does not step aside or write.
        let before = wakes.0.load(Relaxed);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert_eq!(wire.writes().len(), 1);
        assert_eq!(wakes.0.load(Relaxed), before);

        // The next round steps aside again, then writes once.
        queue(&queued, &[b"headers-4"]);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert_eq!(wire.writes().len(), 1);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert_eq!(wire.writes()[1], b"headers-4".to_vec());
    }

    /// A large frame is not copied: what was collected before it goes first, then the frame
    /// itself, as it came.
    #[test]
    fn large_writes_pass_through_after_what_was_collected() {
        let (mut batched, wire, queued) = setup();
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let big = vec![7u8; WRITE_THROUGH];
        queue(&queued, &[b"headers", &big, b"trailers"]);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert_eq!(wire.writes(), vec![b"headers".to_vec(), big.clone()]);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        assert_eq!(
            wire.writes(),
            vec![b"headers".to_vec(), big, b"trailers".to_vec()]
        );
    }

    /// The buffer is bounded: past `MAX_BUFFERED` what was collected is written at once, even
    /// while flushes are put off.
    #[test]
    fn collected_output_is_bounded() {
        let (mut batched, wire, queued) = setup();
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let frame = vec![1u8; WRITE_THROUGH - 1];
        let frames: Vec<&[u8]> = (0..MAX_BUFFERED / frame.len() + 2)
            .map(|_| &frame[..])
            .collect();
        queue(&queued, &frames);
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        let written: Vec<usize> = wire.writes().iter().map(|w| w.len()).collect();
        assert!(!written.is_empty() && written.iter().all(|&n| n <= MAX_BUFFERED));
        assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
        let total: usize = wire.writes().iter().map(|w| w.len()).sum();
        assert_eq!(
            total,
            frames.len() * frame.len(),
            "every byte written, once"
        );
    }

    /// Only its own connection's poll, on its own thread, puts a stream's flush off: flushed
    /// from anywhere else it writes at once, so nothing can wait for a second pass that never
    /// comes. (hyper's HTTP/2 client polls its connection from a task of its own: with the
    /// stream wrapped and the future hyper hands back driven, requests stalled.)
    #[test]
    fn a_stream_flushed_outside_its_connections_poll_writes_at_once() {
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        let wire = Wire::default();
        let (mut io, batch) = new(wire.clone());
        // Before the connection is driven (a handshake).
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"preface").is_ready());
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(wire.writes(), vec![b"preface".to_vec()]);

        // From another thread, while the connection's future is in its first pass here.
        let mut conn = batch.drive(std::future::poll_fn(|_| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let waker = Waker::from(Arc::new(Wakes::default()));
                    let mut cx = Context::from_waker(&waker);
                    assert!(Pin::new(&mut io)
                        .poll_write(&mut cx, b"settings")
                        .is_ready());
                    assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
                });
            });
            Poll::<()>::Pending
        }));
        assert!(Pin::new(&mut conn).poll(&mut cx).is_pending());
        assert_eq!(
            wire.writes(),
            vec![b"preface".to_vec(), b"settings".to_vec()]
        );
    }

    /// A connection that ends writes out what it collected before it shuts the stream down.
    #[test]
    fn shutdown_writes_what_was_collected() {
        let (mut batched, wire, queued) = setup();
        let waker = Waker::from(Arc::new(Wakes::default()));
        let mut cx = Context::from_waker(&waker);
        queue(&queued, &[b"goaway"]);
        batched.inner.shut = true;
        assert!(Pin::new(&mut batched).poll(&mut cx).is_ready());
        assert_eq!(wire.writes(), vec![b"goaway".to_vec()]);
    }
}
