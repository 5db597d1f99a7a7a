//! Opaque relay: bytes copied both ways untouched, counted for the tunnel record.

use crate::http::Shared;
use crate::record::{ConnInfo, Record, ServerFacts, TlsFacts, TunnelRecord};
use crate::upstream::connect_tcp;
use flowtap_schema::ErrorKind;
use std::io;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copy buffer per direction: big enough for bulk transfers, small enough for many idle tunnels.
const RELAY_BUF: usize = 16 << 10;

/// What a relay moved, and how it ended.
pub struct Pumped {
    pub up: u64,
    pub down: u64,
    pub error: Option<(ErrorKind, String)>,
}

async fn copy_counted<R, W>(mut r: R, mut w: W, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}

/// Relays between `client` and `server` until both directions end.
pub async fn pump<C, S>(client: C, server: S) -> Pumped
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let (mut up, mut down) = (0u64, 0u64);
    let (a, b) = tokio::join!(
        copy_counted(cr, sw, &mut up),
        copy_counted(sr, cw, &mut down)
    );
    let error = match (a, b) {
        (Err(e), _) => Some((ErrorKind::ClientClosed, format!("client side: {e}"))),
        (_, Err(e)) => Some((ErrorKind::UpstreamClosed, format!("server side: {e}"))),
        _ => None,
    };
    Pumped { up, down, error }
}

/// Connects to `host:port` and relays `client` to it; writes one tunnel record.
pub async fn relay<C>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    client: C,
    host: String,
    port: u16,
    tls: Option<Arc<TlsFacts>>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let start = SystemTime::now();
    let started = Instant::now();
    let mut server = ServerFacts {
        host,
        port,
        ip: None,
    };
    let (pumped, error) =
        match connect_tcp(&server.host, port, shared.config.upstream_timeout).await {
            Ok((stream, addr, _, _)) => {
                server.ip = Some(addr.ip());
                let p = pump(client, stream).await;
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
