//! CONNECT host:port: answer 200, then look at the first bytes the client sends through the
//! tunnel and decide: intercept TLS, serve plain HTTP, or relay bytes.

use crate::conn::detect::{classify, client_hello_sni, Protocol};
use crate::conn::prefixed::Prefixed;
use crate::conn::{serve_http, HttpProtocol};
use crate::http::{plain, PlainUpstream, Response, Route, Scheme, Session};
use crate::mode::ReverseTarget;
use crate::record::{Record, ServerFacts, TlsFacts, TunnelRecord};
use crate::upstream::Target;
use bytes::{Bytes, BytesMut};
use flowtap_schema::ErrorKind;
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncReadExt;

/// How long to wait for the client's first bytes inside a tunnel. Clients of server-first
/// protocols (SMTP, SSH) send nothing until the server speaks: after this they are relayed.
const PEEK_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bytes read to decide the protocol; a ClientHello usually arrives whole in the first read.
const PEEK_BYTES: usize = 4096;

/// Parses a CONNECT target: `host:port` or `[v6]:port`, the port required. The host must be
/// an IP literal or a DNS name (letters, digits, `-`, `_`, `.`); userinfo is refused.
/// Errors never repeat a userinfo part (it may hold a password).
pub fn parse_target(authority: &str) -> Result<(String, u16), String> {
    let shown = without_userinfo(authority);
    if authority.contains('@') {
        return Err(format!(
            "CONNECT target {shown:?} must not carry user information"
        ));
    }
    let a: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("invalid CONNECT target {shown:?}"))?;
    let port = a
        .port_u16()
        .ok_or_else(|| format!("CONNECT target {shown:?} has no port"))?;
    if port == 0 {
        return Err(format!("CONNECT target {shown:?} has port 0"));
    }
    let host = a.host();
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => is_dns_name_or_ipv4(host),
    };
    if !valid {
        return Err(format!(
            "CONNECT target {shown:?}: {host:?} is not a host name or IP address"
        ));
    }
    Ok((host.to_string(), port))
}

fn is_dns_name_or_ipv4(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The authority with any `user:password@` removed, for messages and records.
pub fn without_userinfo(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

pub async fn handle(session: Arc<Session>, req: hyper::Request<Incoming>) -> Response {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let (host, port) = match parse_target(&authority) {
        Ok(t) => t,
        Err(msg) => {
            let shown = without_userinfo(&authority);
            record_tunnel_error(
                &session,
                began_now(),
                shown,
                0,
                ErrorKind::Protocol,
                &msg,
                None,
            );
            return plain(StatusCode::BAD_REQUEST, format!("flowtap: {msg}\n"));
        }
    };
    let on_upgrade = hyper::upgrade::on(req);
    let guard = session.shared.tracker.guard();
    tokio::spawn(async move {
        let _guard = guard;
        match on_upgrade.await {
            Ok(upgraded) => {
                inspect(
                    session,
                    TokioIo::new(upgraded),
                    Entry::Connect { host, port },
                )
                .await
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    hyper::Response::new(http_body_util::Either::Right(
        http_body_util::Full::default(),
    ))
}

/// When something began: the wall-clock time for the record, the monotonic one for its duration.
pub type Began = (SystemTime, Instant);

pub fn began_now() -> Began {
    (SystemTime::now(), Instant::now())
}

/// Writes a tunnel record for a CONNECT that failed before any byte was relayed; `began` is when
/// the attempt began (its duration is how long the client waited).
pub fn record_tunnel_error(
    session: &Session,
    began: Began,
    host: &str,
    port: u16,
    kind: ErrorKind,
    message: &str,
    tls: Option<Arc<TlsFacts>>,
) {
    session
        .shared
        .emitter
        .send(Record::Tunnel(Box::new(TunnelRecord {
            conn: session.conn.clone(),
            tls,
            start: began.0,
            started: began.1,
            end: Instant::now(),
            server: ServerFacts {
                host: host.to_string(),
                port,
                ip: None,
            },
            bytes_up: 0,
            bytes_down: 0,
            upgrade: None,
            error: Some((kind, message.to_string())),
        })));
}

/// How a stream reached the proxy, which decides where its bytes go.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Inside `CONNECT host:port`.
    Connect { host: String, port: u16 },
    /// Redirected by the kernel; the client meant `ip:port`.
    Transparent { ip: std::net::IpAddr, port: u16 },
    /// Everything goes to one upstream; `local` is the address the client dialled.
    Reverse {
        target: ReverseTarget,
        local: Option<std::net::IpAddr>,
    },
}

/// Reads the first bytes and hands the stream to TLS interception, the HTTP server, or the relay.
pub async fn inspect<IO>(session: Arc<Session>, mut io: IO, entry: Entry)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(PEEK_BYTES);
    let deadline = tokio::time::Instant::now() + PEEK_TIMEOUT;
    let protocol = loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => break Protocol::Opaque,
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return, // closed without a byte
            Ok(Ok(0)) | Ok(Err(_)) => break classify(&buf).unwrap_or(Protocol::Opaque),
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    if p != Protocol::Tls || client_hello_complete(&buf) {
                        break p;
                    }
                }
                if buf.len() >= PEEK_BYTES {
                    break classify(&buf).unwrap_or(Protocol::Opaque);
                }
            }
        }
    };
    let sni = (protocol == Protocol::Tls)
        .then(|| client_hello_sni(&buf))
        .flatten();
    let first = Bytes::from(buf);
    let io = Prefixed::new(first.clone(), io);
    let shared = session.shared.clone();
    let conn = session.conn.clone();

    // Where the bytes go, named as the client named it.
    let (target, ignored, plan_sni) = match &entry {
        Entry::Connect { host, port } => {
            let ignored = shared.config.is_ignored(host)
                || sni.as_deref().is_some_and(|s| shared.config.is_ignored(s));
            (Target::new(host.clone(), *port, false), ignored, true)
        }
        Entry::Transparent { ip, port } => {
            let mut t = Target::new(sni.clone().unwrap_or_else(|| ip.to_string()), *port, false);
            t.addr = Some(*ip);
            let ignored = shared.config.is_ignored(&ip.to_string())
                || sni.as_deref().is_some_and(|s| shared.config.is_ignored(s));
            (t, ignored, true)
        }
        Entry::Reverse { target: r, .. } => {
            (Target::new(r.host.clone(), r.port, r.tls), false, false)
        }
    };
    let reverse = matches!(entry, Entry::Reverse { .. });
    let plain = match &entry {
        Entry::Reverse { target: r, .. } if r.h2c => PlainUpstream::H2c,
        Entry::Reverse { .. } => PlainUpstream::Http1,
        _ => PlainUpstream::AsClient,
    };
    let no_sni_name = match &entry {
        Entry::Reverse { local, .. } => local.map(|ip| ip.to_canonical().to_string()),
        _ => None,
    };
    match (protocol, ignored) {
        (Protocol::Tls, false) => {
            let plan = crate::tls::Plan {
                target: Target {
                    // Intercepted TLS goes upstream as TLS, except a reverse proxy's upstream,
                    // which speaks what its URL says.
                    tls: if reverse { target.tls } else { true },
                    ..target
                },
                use_client_sni: plan_sni,
                rewrite_host: reverse,
                no_sni_name,
                plain,
                // A reverse proxy's clients talk to flowtap, not to the upstream's TLS.
                replay: (!reverse).then_some(first),
            };
            crate::tls::intercept(shared, conn, io, plan).await
        }
        (Protocol::Http1 | Protocol::H2Prior, false) => {
            let scheme = if target.tls {
                Scheme::Https
            } else {
                Scheme::Http
            };
            let default_port = if target.tls { 443 } else { 80 };
            let route = Route::Fixed {
                authority: authority_string(&target.host, target.port, default_port),
                target,
                scheme,
                failed: None,
                host_from_request: matches!(entry, Entry::Transparent { .. }),
                rewrite_host: reverse,
                plain,
            };
            let s = Session::new(shared, conn, None, route);
            let proto = if protocol == Protocol::H2Prior {
                HttpProtocol::H2
            } else {
                HttpProtocol::H1
            };
            serve_http(s, io, proto).await;
        }
        (p, _) => {
            let tls = (p == Protocol::Tls).then(|| {
                Arc::new(TlsFacts {
                    intercepted: false,
                    sni: sni.clone(),
                    ..Default::default()
                })
            });
            crate::tunnel::relay(shared, conn, io, target, tls).await
        }
    }
}

/// Whether `buf` holds a whole TLS record (so the ClientHello's SNI can be read from it).
fn client_hello_complete(buf: &[u8]) -> bool {
    buf.len() >= 5 && buf.len() >= 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize
}

/// `host` or `host:port` when the port is not the scheme's default.
pub fn authority_string(host: &str, port: u16, default: u16) -> String {
    if port == default {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("example.com:443").unwrap(),
            ("example.com".into(), 443)
        );
        assert_eq!(parse_target("[::1]:8443").unwrap(), ("[::1]".into(), 8443));
        assert!(parse_target("example.com").is_err());
        assert!(parse_target("example.com:0").is_err());
        assert!(parse_target("example.com:99999").is_err());
        assert!(parse_target("user@example.com:443").is_err());
        assert!(parse_target("").is_err());
        assert!(parse_target("a b:1").is_err());
        assert!(parse_target("-[::1]:8443").is_err());
        assert!(parse_target("a[b]:80").is_err());
        assert!(parse_target("[not-v6]:80").is_err());
        assert!(parse_target("my_host.internal:8080").is_ok());
        let e = parse_target("alice:s3cr3t@localhost:443").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
