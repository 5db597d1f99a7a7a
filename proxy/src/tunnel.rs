//! Opaque relay: bytes copied both ways untouched, counted for the tunnel record.

use crate::http::Shared;
use crate::record::{ConnInfo, Record, ServerFacts, TlsFacts, TunnelRecord};
use crate::upstream::{open, Target};
use flowtap_schema::ErrorKind;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copy buffer per direction: big enough for bulk transfers, small enough for many idle tunnels.
const RELAY_BUF: usize = 16 << 10;

/// What a relay moved, and how it ended.
pub struct Pumped {
    pub up: u64,
    pub down: u64,
    pub error: Option<(ErrorKind, String)>,
}

/// Milliseconds since `base` when either direction last moved a byte.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

async fn copy_counted<R, W>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    activity: &Activity,
    idle: Duration,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            // A TLS peer that closes without close_notify has still sent everything.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Ok(Err(e)) => return Err(e),
            // Quiet this way; the relay is idle only if the other way is quiet too.
            Err(_) if activity.idle_for() < idle => continue,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no bytes either way for {idle:?} (--idle-timeout)"),
                ));
            }
        };
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        activity.touch();
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Relaxed);
    }
}

/// Relays between `client` and `server` until both directions end (one side may half-close
/// while the other goes on), until either fails (then both are closed at once), or until
/// neither moves a byte for `idle`.
pub async fn pump<C, S>(client: C, server: S, idle: Duration) -> Pumped
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let a = copy_counted(cr, sw, &up, &activity, idle);
    let b = copy_counted(sr, cw, &down, &activity, idle);
    tokio::pin!(a, b);
    let (ra, rb) = tokio::select! {
        ra = &mut a => match ra {
            Ok(()) => (Ok(()), b.await),
            Err(e) => (Err(e), Ok(())),
        },
        rb = &mut b => match rb {
            Ok(()) => (a.await, Ok(())),
            Err(e) => (Ok(()), Err(e)),
        },
    };
    let timed_out = |r: &io::Result<()>| matches!(r, Err(e) if e.kind() == io::ErrorKind::TimedOut);
    let error = match (ra, rb) {
        (a, b) if timed_out(&a) || timed_out(&b) => Some((
            ErrorKind::Limit,
            format!("tunnel idle for {idle:?} (--idle-timeout); closed"),
        )),
        (Err(e), _) => Some((ErrorKind::ClientClosed, format!("client side: {e}"))),
        (_, Err(e)) => Some((ErrorKind::UpstreamClosed, format!("server side: {e}"))),
        _ => None,
    };
    Pumped {
        up: up.load(Relaxed),
        down: down.load(Relaxed),
        error,
    }
}

/// Connects to `target` and relays `client` to it; writes one tunnel record.
pub async fn relay<C>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    client: C,
    target: Target,
    tls: Option<Arc<TlsFacts>>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let start = SystemTime::now();
    let started = Instant::now();
    let mut server = ServerFacts {
        host: target.host.clone(),
        port: target.port,
        ip: target.addr,
    };
    let timeout = shared.config.upstream_timeout;
    let via =
        (shared.config.upstream_proxy.as_ref()).filter(|v| v.applies(&target.host, target.addr));
    let (pumped, error) = match open(&target, via, timeout).await {
        Ok((stream, ip, _, _)) => {
            // Through an egress proxy the server's address is not known.
            server.ip = ip;
            let p = pump(client, stream, shared.config.limits.idle_timeout).await;
            let e = p.error.clone();
            (Some(p), e)
        }
        Err(e) => (None, Some((e.kind, e.message))),
    };
    let record = TunnelRecord {
        conn,
        tls,
        start,
        started,
        end: Instant::now(),
        server,
        bytes_up: pumped.as_ref().map_or(0, |p| p.up),
        bytes_down: pumped.as_ref().map_or(0, |p| p.down),
        upgrade: None,
        error,
    };
    shared.emitter.send(Record::Tunnel(Box::new(record)));
}
