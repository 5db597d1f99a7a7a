//! Hop-by-hop header handling: what a proxy must not forward, per RFC 9110 section 7.6.1.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one hop, never forwarded. (`Trailer` is end to end: it announces
/// the trailer fields, and hyper only sends declared trailers on HTTP/1.1.)
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

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
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in listed {
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in HOP_BY_HOP.iter() {
        if keep_upgrade && (n == header::UPGRADE || n == header::CONNECTION) {
            continue;
        }
        h.remove(n);
    }
    h.remove("proxy-connection");
    h.remove("keep-alive");
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
