//! An egress ("parent") proxy that the proxy's own upstream connections go through, for networks
//! where every outbound connection must (`--upstream-proxy`), and the hosts reached directly
//! instead (`--upstream-no-proxy`).
//!
//! TLS servers, tunnels and HTTP/2 with prior knowledge are reached through a `CONNECT` tunnel;
//! plain HTTP/1.1 requests go to the egress proxy in absolute form, as browsers send them, since
//! egress proxies commonly allow `CONNECT` to port 443 only.

use super::{connect_tcp, tracked::Tracked, ConnectError};
use crate::access::Cidr;
use base64::Engine as _;
use flowtap_schema::ErrorKind;
use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest answer head to a `CONNECT` the proxy reads (they are a line or two).
const MAX_CONNECT_HEAD: usize = 16 << 10;

/// The egress proxy and which hosts skip it.
pub struct UpstreamProxy {
    /// As given, brackets kept for IPv6.
    pub host: String,
    pub port: u16,
    /// `Basic …` for `Proxy-Authorization`, when the URL carries credentials (marked sensitive).
    pub auth: Option<HeaderValue>,
    pub no_proxy: NoProxy,
}

impl std::fmt::Debug for UpstreamProxy {
    /// Never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamProxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|_| "<set>"))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl UpstreamProxy {
    /// `http://[USER:PASS@]HOST[:PORT]` (the port defaults to 80; user and password may be
    /// percent-encoded). The error message never repeats the credentials.
    pub fn parse(url: &str, no_proxy: NoProxy) -> Result<Self, String> {
        let Some(rest) = url
            .get(..7)
            .filter(|s| s.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])
        else {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            return Err(if scheme.is_empty() {
                "expected http://[USER:PASS@]HOST[:PORT]".to_string()
            } else {
                format!(
                    "scheme {scheme}:// is not supported: expected http://[USER:PASS@]HOST[:PORT]"
                )
            });
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if hostport.contains(['/', '?', '#']) {
            return Err("expected http://[USER:PASS@]HOST[:PORT], without a path".to_string());
        }
        let authority: http::uri::Authority = hostport
            .parse()
            .map_err(|_| format!("{hostport:?} is not HOST[:PORT]"))?;
        if authority.host().is_empty() {
            return Err("no host: expected http://[USER:PASS@]HOST[:PORT]".to_string());
        }
        if hostport.ends_with(':') {
            return Err(format!("{hostport:?}: empty port"));
        }
        let auth = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let mut plain = crate::percent_decode(user.as_bytes());
                plain.push(b':');
                plain.extend(crate::percent_decode(pass.as_bytes()));
                let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
                let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| "the credentials do not make a header".to_string())?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(UpstreamProxy {
            host: authority.host().to_string(),
            port: authority.port_u16().unwrap_or(80),
            auth,
            no_proxy,
        })
    }

    /// Whether a connection to `host` (at `addr`, when known) goes through this proxy.
    pub fn applies(&self, host: &str, addr: Option<IpAddr>) -> bool {
        !self.no_proxy.matches(host, addr)
    }

    /// `HOST:PORT` of the proxy, as messages name it.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A TCP connection to the proxy itself (for requests in absolute form); the error names it.
    pub async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<(Tracked, SocketAddr, Option<Duration>, Duration), ConnectError> {
        connect_tcp(&self.host, self.port, None, timeout)
            .await
            .map_err(|e| ConnectError::new(e.kind, format!("upstream proxy: {}", e.message)))
    }

    /// A tunnel to `host:port` through the proxy (`CONNECT`), within `timeout` in all: the
    /// stream, the proxy's name lookup time, and the time to connect and get the tunnel.
    pub async fn tunnel(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(Tracked, Option<Duration>, Duration), ConnectError> {
        let t0 = Instant::now();
        let (mut stream, _, dns, _) = self.connect(timeout).await?;
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let left = timeout.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, self.handshake(&mut stream, &authority)).await {
            Err(_) => Err(ConnectError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "upstream proxy {} did not answer CONNECT {authority} within {timeout:?}",
                    self.name()
                ),
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => {
                let connect = t0.elapsed().saturating_sub(dns.unwrap_or_default());
                Ok((stream, dns, connect))
            }
        }
    }

    async fn handshake(&self, stream: &mut Tracked, authority: &str) -> Result<(), ConnectError> {
        let broken = |e: std::io::Error| {
            ConnectError::new(
                ErrorKind::UpstreamConnect,
                format!(
                    "upstream proxy {} closed CONNECT {authority}: {e}",
                    self.name()
                ),
            )
        };
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &self.auth {
            request.push_str("Proxy-Authorization: ");
            request.push_str(auth.to_str().unwrap_or_default());
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.map_err(broken)?;
        let head = read_head(stream).await.map_err(broken)?;
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line).trim().to_string();
        let mut parts = line.splitn(3, ' ');
        let (version, status) = (parts.next().unwrap_or_default(), parts.next());
        let status: Option<u16> = status.and_then(|s| s.parse().ok());
        match status {
            Some(200..=299) if version.starts_with("HTTP/1.") => Ok(()),
            Some(code) if version.starts_with("HTTP/1.") => Err(ConnectError::new(
                ErrorKind::UpstreamConnect,
                format!(
                    "upstream proxy {} refused CONNECT {authority}: {line}{}",
                    self.name(),
                    auth_hint(code)
                ),
            )),
            _ => Err(ConnectError::new(
                ErrorKind::UpstreamConnect,
                format!(
                    "upstream proxy {} answered CONNECT {authority} with something other than HTTP/1.x: {:?}",
                    self.name(),
                    line.chars().take(80).collect::<String>()
                ),
            )),
        }
    }
}

/// What to add to a message about the proxy's `status`: for a 407, where the credentials come from.
pub fn auth_hint(status: u16) -> &'static str {
    if status == 407 {
        " (check the credentials in --upstream-proxy)"
    } else {
        ""
    }
}

/// Reads the answer head to a `CONNECT` and not one byte more (a server that speaks first, as
/// HTTP/2 servers may, must find its bytes still in the socket for the next reader).
async fn read_head(stream: &mut Tracked) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection ended before an answer",
            ));
        }
        // The end of the head may straddle what was already taken and what is peeked.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let end = head[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4);
        let take = match end {
            Some(end) => n - (head.len() - end),
            None => n,
        };
        head.truncate(head.len() - n + take);
        stream.read_exact(&mut buf[..take]).await?;
        if end.is_some() {
            return Ok(head);
        }
        if head.len() > MAX_CONNECT_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an answer head over {} KiB", MAX_CONNECT_HEAD >> 10),
            ));
        }
    }
}

/// Hosts reached directly, not through the egress proxy (`--upstream-no-proxy`, the syntax of
/// `NO_PROXY`): `*`, a name (it and its subdomains; a leading `.` or `*.` means the same), an
/// address or a CIDR range (matching targets given by address, and transparent mode's original
/// destinations). A `:PORT` after a name is ignored.
#[derive(Debug, Default, Clone)]
pub struct NoProxy {
    all: bool,
    names: Vec<String>,
    ranges: Vec<Cidr>,
}

impl NoProxy {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut n = NoProxy::default();
        for entry in entries.iter().flat_map(|e| e.as_ref().split(',')) {
            let e = entry.trim();
            if e.is_empty() {
                continue;
            }
            if e == "*" {
                n.all = true;
                continue;
            }
            let bracketed = e.strip_prefix('[').and_then(|r| r.split_once(']'));
            let ip_part = bracketed.map_or(e, |(ip, _)| ip);
            if ip_part.parse::<IpAddr>().is_ok()
                || (ip_part.contains('/')
                    && ip_part
                        .split('/')
                        .next()
                        .is_some_and(|a| a.parse::<IpAddr>().is_ok()))
            {
                n.ranges.push(Cidr::parse(ip_part)?);
                continue;
            }
            let name = e.trim_start_matches("*.").trim_start_matches('.');
            let name = match name.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => name,
            };
            if name.is_empty() || name.contains(['/', '@', ' ', '*']) {
                return Err(format!("{e:?} is not a host name, address or CIDR range"));
            }
            n.names
                .push(name.trim_end_matches('.').to_ascii_lowercase());
        }
        Ok(n)
    }

    pub fn matches(&self, host: &str, addr: Option<IpAddr>) -> bool {
        if self.all {
            return true;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ips = [bare.parse::<IpAddr>().ok(), addr];
        if ips
            .iter()
            .flatten()
            .any(|ip| self.ranges.iter().any(|r| r.contains(*ip)))
        {
            return true;
        }
        let h = bare.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|n| {
            h == *n
                || (h.len() > n.len()
                    && h.ends_with(n.as_str())
                    && h.as_bytes()[h.len() - n.len() - 1] == b'.')
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(s: &str) -> NoProxy {
        NoProxy::parse(&[s]).unwrap()
    }

    #[test]
    fn no_proxy_names_addresses_and_ranges() {
        let n = np("example.com, .corp.internal,*.svc, 10.0.0.0/8, ::1, [fd00::1], api.local:8443");
        for (host, addr, direct) in [
            ("example.com", None, true),
            ("EXAMPLE.com.", None, true),
            ("www.example.com", None, true),
            ("badexample.com", None, false),
            ("corp.internal", None, true),
            ("a.b.corp.internal", None, true),
            ("x.svc", None, true),
            ("10.1.2.3", None, true),
            ("11.1.2.3", None, false),
            ("[::1]", None, true),
            ("fd00::1", None, true),
            ("api.local", None, true),
            ("s3.amazonaws.com", None, false),
            // transparent mode: the name from SNI, the original destination's address
            ("s3.amazonaws.com", Some("10.9.9.9".parse().unwrap()), true),
        ] {
            assert_eq!(n.matches(host, addr), direct, "{host} {addr:?}");
        }
        assert!(np("*").matches("anything", None));
        assert!(!NoProxy::default().matches("localhost", None));
        assert!(NoProxy::parse(&["a b"]).is_err());
        assert!(NoProxy::parse(&["10.0.0.0/40"]).is_err());
    }

    #[test]
    fn parses_the_url_and_never_repeats_credentials() {
        let p = UpstreamProxy::parse("http://u%40x:p%3Ass@proxy.corp:3128/", NoProxy::default())
            .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        let expected = base64::engine::general_purpose::STANDARD.encode("u@x:p:ss");
        assert_eq!(
            p.auth.as_ref().unwrap().to_str().unwrap(),
            format!("Basic {expected}")
        );
        assert!(p.auth.as_ref().unwrap().is_sensitive());
        assert!(!format!("{p:?}").contains(&expected));
        let p = UpstreamProxy::parse("HTTP://[::1]", NoProxy::default()).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.auth.is_none()),
            ("[::1]", 80, true)
        );
        for bad in [
            "https://p:1",
            "socks5://p:1",
            "p:3128",
            "http://",
            "http://u:pw@",
            "http://p:1/x",
            "http://p:",
        ] {
            let e = UpstreamProxy::parse(bad, NoProxy::default()).unwrap_err();
            assert!(!e.contains("pw"), "{bad}: {e}");
        }
    }

    /// The tunnel handshake reads the proxy's answer and not a byte more: what the server sends
    /// first (as HTTP/2 servers may) is still there for the next reader. A refusal names the
    /// proxy, the target and the status.
    #[tokio::test]
    async fn connect_reads_exactly_the_answer_head() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for answer in [
                &b"HTTP/1.1 200 Connection established\r\nX-A: 1\r\n\r\nSERVER-FIRST"[..],
                &b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"[..],
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while !got.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
                let text = String::from_utf8(got).unwrap();
                assert!(
                    text.starts_with("CONNECT example.com:443 HTTP/1.1\r\n"),
                    "{text}"
                );
                assert!(
                    text.contains("Proxy-Authorization: Basic dTpw\r\n"),
                    "{text}"
                );
                // The answer in small pieces: the end of the head straddles two reads.
                for piece in answer.chunks(7) {
                    s.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let p = UpstreamProxy::parse(&format!("http://u:p@127.0.0.1:{port}"), NoProxy::default())
            .unwrap();
        let (mut s, _, _) = p
            .tunnel("example.com", 443, Duration::from_secs(5))
            .await
            .unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"SERVER-FIRST");
        let Err(e) = p.tunnel("example.com", 443, Duration::from_secs(5)).await else {
            panic!("a 407 made a tunnel");
        };
        assert_eq!(e.kind, ErrorKind::UpstreamConnect);
        assert_eq!(
            e.message,
            format!("upstream proxy 127.0.0.1:{port} refused CONNECT example.com:443: HTTP/1.1 407 Proxy Authentication Required (check the credentials in --upstream-proxy)")
        );
        server.await.unwrap();
    }
}
