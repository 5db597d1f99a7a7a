//! Hop-by-hop header handling: what a proxy must not forward, per RFC 9110 section 7.6.1.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one hop, never forwarded. (`Trailer` is end to end: it announces
/// the trailer fields, and hyper only sends declared trailers on HTTP/1.1.)
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
];
/// Their places in `HOP_BY_HOP`, for the bit set `strip_hop_by_hop` keeps.
const CONNECTION_BIT: u8 = 1 << 0;
const TE_BIT: u8 = 1 << 2;
const UPGRADE_BIT: u8 = 1 << 4;

/// Whether the request asks to switch protocols (WebSocket and friends).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Removes hop-by-hop headers (and the ones `Connection` names). With `keep_upgrade`, the
/// `Connection: upgrade` / `Upgrade` pair is kept so the next hop sees the upgrade request.
/// `te: trailers` survives: gRPC needs it end to end.
///
/// Runs twice per exchange on the traffic path, so it first finds which of the fixed names
/// are present in one pass over the names (comparing names, no hashing) and looks up only
/// those: a head with none of them, as most requests are, is left alone after that pass.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u8;
    for name in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Names a `Connection` field lists are hop-by-hop too. Those in the fixed set
        // (`keep-alive`, `upgrade`) need no name built for them.
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| {
                !HOP_BY_HOP
                    .iter()
                    .any(|n| n.as_str().eq_ignore_ascii_case(t))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in listed {
            h.remove(n);
        }
    }
    let te_trailers = present & TE_BIT != 0
        && h.get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    let mut remove = present;
    if keep_upgrade {
        remove &= !(CONNECTION_BIT | UPGRADE_BIT);
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if remove & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if te_trailers {
        h.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hop_by_hop_name_alone_is_stripped_and_a_clean_head_is_kept() {
        let clean = [("host", "a"), ("accept", "*/*"), ("x-keep", "1")];
        let mut h = HeaderMap::new();
        for (n, v) in clean {
            h.append(n, v.parse().unwrap());
        }
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        for name in [
            "connection",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "keep-alive",
        ] {
            let mut h = before.clone();
            h.append(name, "x".parse().unwrap());
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h, before, "{name} was forwarded");
        }
    }

    #[test]
    fn strips_listed_and_standard() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-foo".parse().unwrap());
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "Basic abc".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("accept").unwrap(), "*/*");
    }

    #[test]
    fn listed_names_match_in_any_case_and_across_fields() {
        let mut h = HeaderMap::new();
        h.append("connection", "Keep-Alive, X-One".parse().unwrap());
        h.append("connection", "x-two ,CLOSE".parse().unwrap());
        h.append("x-one", "1".parse().unwrap());
        h.append("x-two", "2".parse().unwrap());
        h.append("close", "3".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("te", "gzip".parse().unwrap());
        h.append("x-three", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(left, [("x-three", "kept")]);
    }

    #[test]
    fn upgrade_keeps_only_the_pair() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade, x-hop".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("te", "trailers, deflate".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        let mut left: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("connection", "upgrade"),
                ("te", "trailers"),
                ("upgrade", "websocket")
            ]
        );
    }

    #[test]
    fn keeps_upgrade_pair() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }
}
