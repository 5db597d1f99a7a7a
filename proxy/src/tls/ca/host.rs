//! The host a leaf is minted for: an IPv4/IPv6 literal (with or without `[brackets]`) or a
//! DNS name, checked (ASCII letters, digits, '-', '_' and '.'; RFC 1035 lengths) and put in
//! canonical form (lowercase, no trailing dot) so one host gets one leaf.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::CaError;

/// A host a leaf is minted for, in canonical form: IP literals parsed, names lowercased
/// without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostName<'a> {
    Ip(IpAddr),
    Dns(Cow<'a, str>),
}

impl fmt::Display for HostName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Ip(ip) => ip.fmt(f),
            HostName::Dns(name) => f.write_str(name),
        }
    }
}

/// Parses and canonicalises a host for a leaf. Borrows when `host` is already canonical,
/// so a cache lookup with it allocates nothing.
pub(crate) fn parse_host(host: &str) -> Result<HostName<'_>, CaError> {
    let invalid = |reason| CaError::InvalidHost {
        host: host.to_string(),
        reason,
    };
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| invalid("unbalanced [brackets]"))?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| invalid("not an IPv6 address inside [brackets]"))?;
        return Ok(HostName::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(HostName::Ip(ip));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(invalid("empty host name"));
    }
    if name.len() > 253 {
        return Err(invalid("host name longer than 253 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(invalid(
            "host name holds characters other than letters, digits, '-', '_' and '.'",
        ));
    }
    if name
        .split('.')
        .any(|label| label.is_empty() || label.len() > 63)
    {
        return Err(invalid(
            "host name has an empty label or one longer than 63 characters",
        ));
    }
    Ok(HostName::Dns(
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::CertificateAuthority;

    #[test]
    fn invalid_hosts_are_refused() {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        for host in [
            "",
            ".",
            "exa mple.com",
            "a..b",
            "[::1",
            "[example.com]",
            "fe80::1%eth0",
            "bücher.example",
            "host:443",
        ] {
            let err = ca.mint_leaf(host).expect_err(host);
            assert!(matches!(err, CaError::InvalidHost { .. }), "{host}: {err}");
        }
    }

    #[test]
    fn canonical_hosts_are_borrowed() {
        assert!(matches!(
            parse_host("example.com"),
            Ok(HostName::Dns(Cow::Borrowed("example.com")))
        ));
        assert!(matches!(
            parse_host("Example.com"),
            Ok(HostName::Dns(Cow::Owned(_)))
        ));
    }
}
