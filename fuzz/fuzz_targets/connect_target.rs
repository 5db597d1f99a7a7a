//! `CONNECT host:port` targets (proxy/src/connect.rs `parse_target`): never panics; what it
//! accepts has a host and a port in 1..=65535, and printing it back parses to the same target.
#![no_main]

use flowtap::connect::parse_target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((host, port)) = parse_target(s) else {
        return;
    };
    assert!(port != 0, "port 0 accepted from {s:?}");
    // Brackets only around an IPv6 literal (`-[::1]:8443` once gave host `-[`; fixed in af66bd6).
    let bracketed_v6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    assert!(
        bracketed_v6 || !host.contains(['[', ']']),
        "stray brackets in host {host:?} from {s:?}"
    );
    assert!(!host.is_empty(), "empty host accepted from {s:?}");
    assert!(!host.contains('@'), "userinfo accepted from {s:?}");
    assert!(
        !host.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
        "whitespace or control byte in host {host:?} from {s:?}"
    );
    let again = parse_target(&format!("{host}:{port}"))
        .unwrap_or_else(|e| panic!("{host}:{port} (from {s:?}) does not parse again: {e}"));
    assert_eq!(again, (host, port), "round trip of {s:?}");
});
