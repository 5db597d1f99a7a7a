//! Who may use the proxy: client address ranges (public addresses refused unless allowed) and
//! optional `Proxy-Authorization: Basic` credentials, compared in constant time.

use crate::config::{bad, ConfigError};
use base64::Engine;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// Accept clients from public (non-private, non-loopback) addresses too.
    #[arg(long, env = "FLOWTAP_ALLOW_PUBLIC_CLIENTS")]
    pub allow_public_clients: bool,
    /// Accept clients only from these ranges (repeatable, e.g. 10.0.0.0/8, ::1/128).
    #[arg(
        long,
        env = "FLOWTAP_ALLOW_CLIENTS",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_clients: Vec<String>,
    /// Require these credentials from clients (Proxy-Authorization: Basic); answered with 407.
    #[arg(
        long,
        env = "FLOWTAP_PROXY_AUTH",
        value_name = "USER:PASS",
        hide_env_values = true
    )]
    pub proxy_auth: Option<String>,
    /// Read the USER:PASS for --proxy-auth from this file (first line).
    #[arg(
        long,
        env = "FLOWTAP_PROXY_AUTH_FILE",
        value_name = "PATH",
        conflicts_with = "proxy_auth"
    )]
    pub proxy_auth_file: Option<PathBuf>,
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        // An IPv4-mapped range (::ffff:a.b.c.d/96+) is the IPv4 range it maps: clients are
        // compared in their canonical (IPv4) form.
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), ip) => {
                // An IPv4 client is compared in its IPv4-mapped IPv6 form, so `::/0` and
                // `::ffff:0:0/96` contain it as they should.
                let ip = match ip {
                    IpAddr::V6(v6) => v6,
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                };
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Loopback, private (RFC 1918, RFC 4193), link-local and shared (RFC 6598, used by some
/// Kubernetes networks) addresses: the ones a proxy on a cluster network expects its clients on.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The validated access policy.
#[derive(Debug, Clone, Default)]
pub struct Access {
    allow_public: bool,
    allowed: Vec<Cidr>,
    /// The exact `Proxy-Authorization` value that is accepted.
    expected_auth: Option<Vec<u8>>,
}

/// Why a client was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PublicAddress,
    NotInAllowedRanges,
    TooManyConnections,
}

impl Access {
    pub fn from_args(a: AccessArgs) -> Result<Self, ConfigError> {
        let allowed = a
            .allow_clients
            .iter()
            .map(|c| Cidr::parse(c).map_err(|m| bad("--allow-clients", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let creds = match (a.proxy_auth, a.proxy_auth_file) {
            (Some(c), _) => Some((c, "--proxy-auth")),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| bad("--proxy-auth-file", format!("{}: {e}", p.display())))?;
                Some((
                    text.lines().next().unwrap_or("").to_string(),
                    "--proxy-auth-file",
                ))
            }
            (None, None) => None,
        };
        let expected_auth = match creds {
            None => None,
            Some((c, flag)) => {
                let Some((user, _)) = c.split_once(':') else {
                    return Err(bad(flag, "expected USER:PASS"));
                };
                if user.is_empty() {
                    return Err(bad(flag, "the user name is empty"));
                }
                let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_bytes());
                Some(format!("Basic {b64}").into_bytes())
            }
        };
        Ok(Access {
            allow_public: a.allow_public_clients,
            allowed,
            expected_auth,
        })
    }

    /// Whether a client at `ip` may connect at all.
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        if !self.allowed.is_empty() {
            return if self.allowed.iter().any(|c| c.contains(ip)) {
                Ok(())
            } else {
                Err(Refusal::NotInAllowedRanges)
            };
        }
        if self.allow_public || is_private(ip) {
            Ok(())
        } else {
            Err(Refusal::PublicAddress)
        }
    }

    pub fn requires_auth(&self) -> bool {
        self.expected_auth.is_some()
    }

    /// Whether `header` (the request's Proxy-Authorization value) carries the credentials.
    /// Constant time in the length of the expected value; the scheme name is case-insensitive.
    pub fn authorized(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected_auth else {
            return true;
        };
        let Some(got) = header else { return false };
        let scheme_len = "Basic ".len();
        if got.len() != expected.len()
            || !got[..scheme_len].eq_ignore_ascii_case(&expected[..scheme_len])
        {
            return false;
        }
        let mut diff = 0u8;
        for (a, b) in got[scheme_len..].iter().zip(&expected[scheme_len..]) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("10.1.2.3")));
        assert!(!Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("10.1.2.3")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::ffff:127.0.0.0/104")
            .unwrap()
            .contains(ip("127.0.0.1")));
        assert!(Cidr::parse("nonsense").is_err());
    }

    #[test]
    fn private_and_public() {
        for p in [
            "127.0.0.1",
            "10.3.4.5",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in ["8.8.8.8", "1.1.1.1", "2001:db8::1", "100.128.0.1"] {
            assert!(!is_private(ip(p)), "{p}");
        }
        let a = Access::default();
        assert_eq!(a.admit(ip("8.8.8.8")), Err(Refusal::PublicAddress));
        assert!(a.admit(ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn allowed_ranges_narrow() {
        let a = Access::from_args(AccessArgs {
            allow_clients: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.admit(ip("127.0.0.1")), Err(Refusal::NotInAllowedRanges));
        assert!(a.admit(ip("10.9.9.9")).is_ok());
    }

    #[test]
    fn auth() {
        let a = Access::from_args(AccessArgs {
            proxy_auth: Some("alice:s3cr3t".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(a.requires_auth());
        assert!(a.authorized(Some(b"Basic YWxpY2U6czNjcjN0")));
        assert!(a.authorized(Some(b"basic YWxpY2U6czNjcjN0")));
        assert!(!a.authorized(Some(b"Basic YWxpY2U6czNjcjN1")));
        assert!(!a.authorized(Some(b"Basic")));
        assert!(!a.authorized(None));
        assert!(Access::from_args(AccessArgs {
            proxy_auth: Some("nocolon".into()),
            ..Default::default()
        })
        .is_err());
    }
}
