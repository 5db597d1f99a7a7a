//! `--mode`: how clients reach the proxy. Several modes may run in one process, each on its own
//! listener: `regular` (explicit proxy), `transparent` (connections redirected by the kernel),
//! `reverse:URL` (in front of one upstream).

use std::net::SocketAddr;

/// Where a reverse proxy sends everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseTarget {
    pub tls: bool,
    /// `h2c://`: plain text, HTTP/2 with prior knowledge (a gRPC server, say).
    pub h2c: bool,
    pub host: String,
    pub port: u16,
}

impl ReverseTarget {
    /// The scheme as `--mode` gave it (`https`, `http` or `h2c`).
    pub fn scheme(&self) -> &'static str {
        match (self.tls, self.h2c) {
            (true, _) => "https",
            (false, true) => "h2c",
            (false, false) => "http",
        }
    }

    /// `host[:port]`, the port omitted when it is the scheme's default.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeKind {
    Regular,
    Transparent,
    Reverse(ReverseTarget),
}

/// One `--mode` and the address it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSpec {
    pub kind: ModeKind,
    pub listen: SocketAddr,
}

/// Parses `regular`, `transparent`, `reverse:URL`, each optionally followed by `@PORT` or
/// `@ADDR:PORT`; without it the mode listens on `default_listen`.
pub fn parse(spec: &str, default_listen: SocketAddr) -> Result<ModeSpec, String> {
    let (body, listen) = match spec.rsplit_once('@') {
        Some((b, at)) if !at.contains('/') => {
            let listen = if let Ok(port) = at.parse::<u16>() {
                SocketAddr::new(default_listen.ip(), port)
            } else {
                at.parse::<SocketAddr>()
                    .map_err(|_| format!("{spec:?}: {at:?} after '@' is not a port or ADDR:PORT"))?
            };
            (b, listen)
        }
        _ => (spec, default_listen),
    };
    let kind = match body {
        "regular" => ModeKind::Regular,
        "transparent" => ModeKind::Transparent,
        _ => match body.strip_prefix("reverse:") {
            Some(url) => {
                ModeKind::Reverse(parse_reverse(url).map_err(|m| format!("{spec:?}: {m}"))?)
            }
            None => {
                return Err(format!(
                    "{spec:?}: expected regular, transparent or reverse:URL (optionally @PORT)"
                ))
            }
        },
    };
    Ok(ModeSpec { kind, listen })
}

fn parse_reverse(url: &str) -> Result<ReverseTarget, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let (tls, h2c) = match uri.scheme_str() {
        Some("https") => (true, false),
        Some("http") => (false, false),
        Some("h2c") => (false, true),
        _ => {
            return Err(format!(
                "{url:?}: the URL must start with http://, https:// or h2c://"
            ))
        }
    };
    let a = uri.authority().ok_or_else(|| format!("{url:?}: no host"))?;
    if a.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!(
            "{url:?}: a path is not supported, give scheme://host[:port]"
        ));
    }
    Ok(ReverseTarget {
        tls,
        h2c,
        host: a.host().to_string(),
        port: a.port_u16().unwrap_or(if tls { 443 } else { 80 }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> SocketAddr {
        "0.0.0.0:8080".parse().unwrap()
    }

    #[test]
    fn parses_modes() {
        assert_eq!(parse("regular", d()).unwrap().kind, ModeKind::Regular);
        let t = parse("transparent@8081", d()).unwrap();
        assert_eq!(t.kind, ModeKind::Transparent);
        assert_eq!(t.listen, "0.0.0.0:8081".parse().unwrap());
        let r = parse("reverse:https://api.example.com@127.0.0.1:9000", d()).unwrap();
        assert_eq!(
            r.kind,
            ModeKind::Reverse(ReverseTarget {
                tls: true,
                h2c: false,
                host: "api.example.com".into(),
                port: 443
            })
        );
        assert_eq!(r.listen, "127.0.0.1:9000".parse().unwrap());
        let r = parse("reverse:http://[::1]:8000", d()).unwrap();
        assert_eq!(
            r.kind,
            ModeKind::Reverse(ReverseTarget {
                tls: false,
                h2c: false,
                host: "[::1]".into(),
                port: 8000
            })
        );
        let r = parse("reverse:h2c://grpc.internal:50051@9000", d()).unwrap();
        assert_eq!(
            r.kind,
            ModeKind::Reverse(ReverseTarget {
                tls: false,
                h2c: true,
                host: "grpc.internal".into(),
                port: 50051
            })
        );
        if let ModeKind::Reverse(t) = &r.kind {
            assert_eq!(
                (t.scheme(), t.authority()),
                ("h2c", "grpc.internal:50051".into())
            );
        }
        assert!(parse("socks5", d()).is_err());
        assert!(parse("reverse:ftp://x", d()).is_err());
        assert!(parse("reverse:http://x/path", d()).is_err());
        assert!(parse("regular@nope", d()).is_err());
    }
}
