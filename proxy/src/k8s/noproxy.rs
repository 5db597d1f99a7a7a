//! The proxy URL as workloads use it, the NO_PROXY list that keeps cluster traffic off the
//! proxy, and both converted to the JVM's system properties.
//!
//! NO_PROXY dialects differ (research/standards.md, section 5.1): a leading-dot suffix
//! (`.svc`) is understood by every runtime that reads the variable, CIDRs only by some, and
//! the JVM reads none of it: it takes `http.nonProxyHosts`, `|`-separated globs.

use super::{flag, K8sError};
use std::net::IpAddr;

/// The reference Kubernetes expands, in an env value, to the API server's service IP.
pub const API_SERVER_IP: &str = "$(KUBERNETES_SERVICE_HOST)";
/// Cloud instance metadata (AWS, GCP, Azure): node-local, so it must never go through a proxy
/// on another node, which would answer with that node's identity.
const METADATA_IP: &str = "169.254.169.254";

/// `--proxy http://HOST:PORT`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyUrl {
    /// As given, without a trailing slash: the value of HTTP_PROXY and HTTPS_PROXY.
    pub url: String,
    /// Host without brackets.
    pub host: String,
    pub port: u16,
    /// Whether the URL carries `user:pass@`.
    pub has_credentials: bool,
}

impl ProxyUrl {
    pub fn parse(s: &str) -> Result<Self, K8sError> {
        let bad = |m: &str| flag("--proxy", format!("{s:?}: {m}"));
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            bad("must start with http:// (flowtap listens for plain HTTP proxy requests)")
        })?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad("must be http://HOST:PORT, without a path"));
        }
        let (has_credentials, hostport) = match authority.rsplit_once('@') {
            Some((_, hp)) => (true, hp),
            None => (false, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once(']')
                .ok_or_else(|| bad("unbalanced [ in the host"))?;
            (h, p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            None => return Err(bad("give the port, e.g. http://flowtap.flowtap.svc:8080")),
        };
        Ok(ProxyUrl {
            url: format!("http://{authority}"),
            host: host.to_string(),
            port,
            has_credentials,
        })
    }

    /// The namespace in a service host name `NAME.NAMESPACE[.svc[.DOMAIN]]`.
    pub fn service_namespace(&self) -> Option<&str> {
        if self.host.parse::<IpAddr>().is_ok() {
            return None;
        }
        let mut labels = self.host.split('.');
        let _service = labels.next()?;
        let namespace = labels.next()?;
        match labels.next() {
            None | Some("svc") => Some(namespace),
            Some(_) => None,
        }
    }
}

/// The NO_PROXY entries: loopback, the API server (by name and by its service IP), every
/// service and cluster name, cloud metadata, then `extra` as given; duplicates dropped.
pub fn no_proxy_entries(cluster_domain: &str, extra: &[String]) -> Result<Vec<String>, K8sError> {
    let domain = cluster_domain.trim_matches('.');
    if domain.is_empty() || domain.contains([',', ' ', '/']) {
        return Err(flag(
            "--cluster-domain",
            format!("{cluster_domain:?} is not a DNS domain"),
        ));
    }
    let mut entries: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        API_SERVER_IP,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        &format!("kubernetes.default.svc.{domain}"),
        ".svc",
        &format!(".{domain}"),
        METADATA_IP,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for item in extra.iter().flat_map(|e| e.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if item.contains(char::is_whitespace) || item.contains("$(") {
            return Err(flag(
                "--no-proxy",
                format!("{item:?}: entries are host names, .suffixes, IPs or CIDRs"),
            ));
        }
        if !entries.iter().any(|e| e == item) {
            entries.push(item.to_string());
        }
    }
    Ok(entries)
}

/// `http.nonProxyHosts` for the JVM from NO_PROXY entries, and the entries that could not be
/// expressed. Conversions: `.x` and `*.x` -> `*.x`; a bare `x` -> `x|*.x` (every NO_PROXY
/// dialect but .NET's matches subdomains); `host:port` -> `host` (the JVM has no ports here);
/// IPv6 literals in brackets; IPv4 CIDRs on an octet boundary -> `a.b.*`.
pub fn java_non_proxy_hosts(entries: &[String]) -> (String, Vec<String>) {
    let mut out: Vec<String> = Vec::new();
    let mut dropped = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for entry in entries {
        let e = entry.as_str();
        if e == "*" || e.starts_with("$(") {
            push(e.to_string());
        } else if let Some((net, bits)) = e.split_once('/') {
            match ipv4_glob(net, bits) {
                Some(glob) => push(glob),
                None => dropped.push(e.to_string()),
            }
        } else if let Ok(ip) = e.trim_matches(['[', ']']).parse::<IpAddr>() {
            push(match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            });
        } else {
            let host = match e.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => h,
                _ => e,
            };
            if let Some(suffix) = host.strip_prefix("*.").or_else(|| host.strip_prefix('.')) {
                push(format!("*.{suffix}"));
            } else {
                push(host.to_string());
                push(format!("*.{host}"));
            }
        }
    }
    (out.join("|"), dropped)
}

/// `10.0.0.0/8` -> `10.*`; `/32` -> the address; other prefix lengths have no glob.
fn ipv4_glob(net: &str, bits: &str) -> Option<String> {
    let ip: std::net::Ipv4Addr = net.parse().ok()?;
    let octets = match bits.parse::<u8>().ok()? {
        0 => return Some("*".to_string()),
        8 => 1,
        16 => 2,
        24 => 3,
        32 => return Some(ip.to_string()),
        _ => return None,
    };
    let kept: Vec<String> = ip.octets()[..octets]
        .iter()
        .map(|o| o.to_string())
        .collect();
    Some(format!("{}.*", kept.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn proxy_urls() {
        let p = ProxyUrl::parse("http://flowtap.flowtap.svc:8080/").expect("url");
        assert_eq!(p.url, "http://flowtap.flowtap.svc:8080");
        assert_eq!((p.host.as_str(), p.port), ("flowtap.flowtap.svc", 8080));
        assert_eq!(p.service_namespace(), Some("flowtap"));
        let p = ProxyUrl::parse("http://u:p@[fd00::1]:3128").expect("v6");
        assert_eq!(
            (p.host.as_str(), p.port, p.has_credentials),
            ("fd00::1", 3128, true)
        );
        assert_eq!(p.service_namespace(), None);
        for (host, ns) in [
            ("flowtap.tools", Some("tools")),
            ("flowtap.tools.svc.cluster.local", Some("tools")),
            ("flowtap", None),
            ("proxy.example.com", None),
            ("10.0.0.7", None),
        ] {
            let p = ProxyUrl::parse(&format!("http://{host}:8080")).expect("url");
            assert_eq!(p.service_namespace(), ns, "{host}");
        }
        for bad in [
            "flowtap:8080",
            "https://flowtap:8080",
            "http://flowtap",
            "http://flowtap:0",
            "http://flowtap:8080/x",
            "http://:8080",
        ] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_proxy_covers_the_cluster() {
        let e = no_proxy_entries(
            "cluster.local",
            &strings(&["minio.backup", ".corp,10.0.0.0/8", ".svc"]),
        )
        .expect("entries");
        for want in [
            "localhost",
            "127.0.0.1",
            "::1",
            "$(KUBERNETES_SERVICE_HOST)",
            "kubernetes.default.svc",
            ".svc",
            ".cluster.local",
            "169.254.169.254",
            "minio.backup",
            ".corp",
            "10.0.0.0/8",
        ] {
            assert!(e.iter().any(|x| x == want), "{want} in {e:?}");
        }
        assert_eq!(e.iter().filter(|x| *x == ".svc").count(), 1);
        assert!(no_proxy_entries("", &[]).is_err());
        assert!(no_proxy_entries("cluster.local", &strings(&["a b"])).is_err());
    }

    #[test]
    fn java_form() {
        let (hosts, dropped) = java_non_proxy_hosts(&strings(&[
            "localhost",
            "127.0.0.1",
            "::1",
            "$(KUBERNETES_SERVICE_HOST)",
            ".svc",
            "*.corp",
            "minio.backup",
            "s3.local:9000",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.1.7/32",
            "fd00::/8",
            "*",
        ]));
        assert_eq!(
            hosts,
            "localhost|*.localhost|127.0.0.1|[::1]|$(KUBERNETES_SERVICE_HOST)|*.svc|*.corp|\
             minio.backup|*.minio.backup|s3.local|*.s3.local|10.*|192.168.1.7|*"
        );
        assert_eq!(dropped, ["172.16.0.0/12", "fd00::/8"]);
    }
}
