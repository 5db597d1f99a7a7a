//! Body taps: wrap a body, pass every frame through untouched, and note what went by.
//!
//! [`RequestTap`] hands its facts to the exchange through a shared slot. [`ResponseTap`] owns the
//! exchange and finishes its record exactly once: at the end of the body, on an error, or when the
//! body is dropped early (the client went away). Before the response, [`Waiting`] owns it, so an
//! exchange the client gives up on while the server thinks still gets its record.

use super::{BodyFacts, Exchange, Record, RequestBodySlot};
use crate::output::Emitter;
use bytes::Bytes;
use flowtap_schema::ErrorKind;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

/// Set once the proxy's grace period is over and the exchanges still open are being cut, so
/// their records say so instead of blaming the client.
pub static STOPPING: AtomicBool = AtomicBool::new(false);

/// An exchange waiting for its response head. The request's future holds it; when that future
/// is dropped first (the client closed its connection or cancelled its HTTP/2 stream, a client
/// timeout say, or the proxy's grace period ended), the record is written, saying so. Otherwise
/// [`Waiting::take`] hands the exchange on, to a failure or to the response's tap.
pub struct Waiting<'a> {
    exchange: Option<Box<Exchange>>,
    emitter: &'a Emitter,
}

impl<'a> Waiting<'a> {
    pub fn new(exchange: Box<Exchange>, emitter: &'a Emitter) -> Self {
        Waiting {
            exchange: Some(exchange),
            emitter,
        }
    }

    pub fn take(mut self) -> Box<Exchange> {
        self.exchange.take().expect("an exchange is taken once")
    }
}

impl std::ops::Deref for Waiting<'_> {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        self.exchange.as_ref().expect("present until taken")
    }
}

impl std::ops::DerefMut for Waiting<'_> {
    fn deref_mut(&mut self) -> &mut Exchange {
        self.exchange.as_mut().expect("present until taken")
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut x) = self.exchange.take() {
            x.end = Some(Instant::now());
            if STOPPING.load(Relaxed) {
                x.fail(
                    ErrorKind::Proxy,
                    "the proxy stopped before the response came (--grace over)",
                );
            } else {
                x.fail(
                    ErrorKind::ClientClosed,
                    "the client went away before the response came: it closed the \
                     connection (or its sending side) or cancelled the request",
                );
            }
            self.emitter.send(Record::Http(x));
        }
    }
}

/// Bytes of a request body kept for sending it again ([`RequestTap::keep_for_replay`]): gRPC
/// calls and API writes fit; a larger upload is not kept, and is not sent again.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// What a dropped [`RequestTap`] hands back for sending the request again: the frames it passed
/// on, and the body with the rest of the client's stream.
pub type Reclaimed<B> = (Vec<Frame<Bytes>>, B);

/// The frames passed on so far, while they stay within [`REPLAY_LIMIT`].
struct Keep<B> {
    frames: Vec<Frame<Bytes>>,
    bytes: usize,
    tx: tokio::sync::oneshot::Sender<Reclaimed<B>>,
}

pub struct RequestTap<B: Default> {
    inner: B,
    facts: Option<BodyFacts>,
    slot: Arc<RequestBodySlot>,
    keep: Option<Box<Keep<B>>>,
}

impl<B: Default> RequestTap<B> {
    pub fn new(inner: B, facts: BodyFacts, slot: Arc<RequestBodySlot>) -> Self {
        RequestTap {
            inner,
            facts: Some(facts),
            slot,
            keep: None,
        }
    }

    /// From now on, keep (a reference to) each frame passed on, up to [`REPLAY_LIMIT`] bytes;
    /// when the tap is dropped (by the HTTP client, done with it or failed), the frames and
    /// the body's unread rest arrive on the returned receiver. Nothing arrives if the body
    /// outgrew the limit.
    pub fn keep_for_replay(&mut self) -> tokio::sync::oneshot::Receiver<Reclaimed<B>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.keep = Some(Box::new(Keep {
            frames: Vec::new(),
            bytes: 0,
            tx,
        }));
        rx
    }

    fn kept(&mut self, frame: &Frame<Bytes>) {
        let Some(k) = self.keep.as_mut() else { return };
        let copy = match (frame.data_ref(), frame.trailers_ref()) {
            // The exchange got its answer: nothing will be sent again.
            _ if k.tx.is_closed() => {
                self.keep = None;
                return;
            }
            (Some(d), _) if k.bytes + d.len() <= REPLAY_LIMIT => {
                k.bytes += d.len();
                Frame::data(d.clone())
            }
            (None, Some(t)) => Frame::trailers(t.clone()),
            _ => {
                self.keep = None;
                return;
            }
        };
        k.frames.push(copy);
    }

    fn hand_over(&mut self, error: Option<String>) {
        if let Some(mut f) = self.facts.take() {
            f.end = Some(Instant::now());
            f.error = error;
            if let Ok(mut s) = self.slot.facts.lock() {
                *s = Some(f);
            }
        }
    }
}

impl<B> Body for RequestTap<B>
where
    B: Body<Data = Bytes> + Unpin + Default,
    B::Error: std::error::Error + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &r {
            Some(Ok(frame)) => {
                if let Some(f) = this.facts.as_mut() {
                    let n = f.note(frame);
                    this.slot.bytes.fetch_add(n as u64, Relaxed);
                }
                if this.keep.is_some() {
                    this.kept(frame);
                }
                // Trailers are always the last frame.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.hand_over(None);
                }
            }
            Some(Err(e)) => {
                let msg = format!("client request body: {}", crate::error_chain(e));
                this.hand_over(Some(msg));
            }
            None => this.hand_over(None),
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default> Drop for RequestTap<B> {
    fn drop(&mut self) {
        self.hand_over(None);
        if let Some(k) = self.keep.take() {
            // The receiver may be gone (the exchange got its answer): then nothing is kept.
            let _ = k.tx.send((k.frames, std::mem::take(&mut self.inner)));
        }
    }
}

pub struct ResponseTap<B> {
    inner: B,
    exchange: Option<Box<Exchange>>,
    emitter: Emitter,
    /// Set when the inner body reported its end through `is_end_stream`: hyper then drops the
    /// body without polling it again, and that drop is a normal end, not a client abort.
    ended: AtomicBool,
}

impl<B> ResponseTap<B> {
    /// `exchange.response_body` must be set (it holds the capture).
    pub fn new(inner: B, exchange: Box<Exchange>, emitter: Emitter) -> Self {
        ResponseTap {
            inner,
            exchange: Some(exchange),
            emitter,
            ended: AtomicBool::new(false),
        }
    }

    fn finish(&mut self, error: Option<(ErrorKind, String)>) {
        if let Some(mut x) = self.exchange.take() {
            let now = Instant::now();
            x.end = Some(now);
            if let Some(b) = x.response_body.as_mut() {
                b.end = Some(now);
            }
            if let Some((k, m)) = error {
                x.fail(k, m);
            }
            self.emitter.send(Record::Http(x));
        }
    }
}

impl<B> Body for ResponseTap<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &r {
            Some(Ok(frame)) => {
                if let Some(b) = this
                    .exchange
                    .as_mut()
                    .and_then(|x| x.response_body.as_mut())
                {
                    b.note(frame);
                }
                // Trailers are always the last frame.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Some(Err(e)) => {
                let msg = format!("upstream response body: {}", crate::error_chain(e));
                this.finish(Some((body_error_kind(e), msg)));
            }
            None => this.finish(None),
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended.store(true, Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a failed upstream body says: bytes that break the framing (a bad chunk-size line, say)
/// are a protocol error; anything else (the connection cut short or reset) is the upstream
/// closing.
fn body_error_kind(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let malformed = crate::causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        })
    });
    if malformed {
        ErrorKind::Protocol
    } else {
        ErrorKind::UpstreamClosed
    }
}

impl<B> ResponseTap<B> {
    /// A client may stop reading once it has `content-length` bytes, before the upstream's
    /// end-of-stream arrives (HTTP/2 sends it in a frame of its own): that exchange is complete.
    fn all_declared_bytes_seen(&self) -> bool {
        let Some(x) = self.exchange.as_ref() else {
            return false;
        };
        let declared = x
            .response
            .as_ref()
            .and_then(|r| r.headers.get_str(&http::header::CONTENT_LENGTH))
            .and_then(|v| v.parse::<u64>().ok());
        let seen = x.response_body.as_ref().map(|b| b.capture.size());
        declared.is_some() && declared == seen
    }
}

impl<B> Drop for ResponseTap<B> {
    fn drop(&mut self) {
        if self.exchange.is_some() {
            let err = (!self.ended.load(Relaxed) && !self.all_declared_bytes_seen()).then(|| {
                if STOPPING.load(Relaxed) {
                    (
                        ErrorKind::Proxy,
                        "the proxy stopped before the response body ended (--grace over)"
                            .to_string(),
                    )
                } else {
                    (
                        ErrorKind::ClientClosed,
                        "client closed the connection before the response body ended".to_string(),
                    )
                }
            });
            self.finish(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::capture::Capture;
    use crate::upstream::ClientBody;
    use http_body_util::BodyExt;

    fn facts() -> BodyFacts {
        BodyFacts::new(Capture::new(crate::record::capture::CaptureMode::None, 0))
    }

    fn replay_of(chunks: &[&'static [u8]], trailers: bool) -> ClientBody {
        let mut frames: std::collections::VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c)))
            .collect();
        if trailers {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            frames.push_back(Frame::trailers(t));
        }
        ClientBody::Replay(frames, None)
    }

    async fn drain(tap: &mut RequestTap<ClientBody>) -> (Vec<u8>, bool) {
        let (mut data, mut trailers) = (Vec::new(), false);
        while let Some(frame) = tap.frame().await {
            let frame = frame.unwrap();
            if let Some(d) = frame.data_ref() {
                data.extend_from_slice(d);
            }
            trailers |= frame.is_trailers();
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn a_dropped_tap_hands_back_what_it_passed_on() {
        let slot = Arc::new(RequestBodySlot::default());
        let mut tap = RequestTap::new(replay_of(&[b"ab", b"cd"], true), facts(), slot.clone());
        let rx = tap.keep_for_replay();
        assert_eq!(drain(&mut tap).await, (b"abcd".to_vec(), true));
        drop(tap);
        let (frames, rest) = rx.await.expect("kept");
        assert!(matches!(rest, ClientBody::Replay(ref f, None) if f.is_empty()));
        // Sent again, the body is the same, frame for frame, trailers last.
        let mut again = RequestTap::new(ClientBody::Replay(frames.into(), None), facts(), slot);
        assert!(!again.is_end_stream());
        assert_eq!(again.size_hint().exact(), Some(4));
        assert_eq!(drain(&mut again).await, (b"abcd".to_vec(), true));
        assert!(again.is_end_stream());
    }

    #[tokio::test]
    async fn the_unread_rest_comes_back_with_the_tap() {
        let slot = Arc::new(RequestBodySlot::default());
        let mut tap = RequestTap::new(replay_of(&[b"one", b"two"], false), facts(), slot);
        let rx = tap.keep_for_replay();
        let first = tap.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"one"[..]));
        drop(tap); // the HTTP client let go after the first frame: the server refused the stream
        let (frames, rest) = rx.await.expect("kept");
        assert_eq!(frames.len(), 1);
        let ClientBody::Replay(unread, None) = rest else {
            panic!("the inner body comes back")
        };
        assert_eq!(unread.len(), 1, "`two` was never read");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_kept() {
        static BIG: [u8; REPLAY_LIMIT] = [7; REPLAY_LIMIT];
        let slot = Arc::new(RequestBodySlot::default());
        let mut tap = RequestTap::new(replay_of(&[b"x", &BIG], false), facts(), slot);
        let rx = tap.keep_for_replay();
        assert_eq!(drain(&mut tap).await.0.len(), REPLAY_LIMIT + 1);
        drop(tap);
        assert!(rx.await.is_err(), "nothing to send again");
    }

    #[tokio::test]
    async fn nothing_is_kept_once_the_answer_came() {
        let slot = Arc::new(RequestBodySlot::default());
        let mut tap = RequestTap::new(replay_of(&[b"a", b"b"], false), facts(), slot);
        let rx = tap.keep_for_replay();
        tap.frame().await.unwrap().unwrap();
        drop(rx); // the response head arrived
        tap.frame().await.unwrap().unwrap();
        assert!(tap.keep.is_none(), "the kept frames are let go");
    }
}
