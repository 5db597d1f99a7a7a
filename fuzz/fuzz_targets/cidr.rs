//! `--allow-clients` ranges (proxy/src/access.rs `Cidr::parse`): never panics; an accepted range
//! contains its own address; membership of arbitrary addresses never panics, and a /0 contains
//! every address of its family.
#![no_main]

use flowtap::access::Cidr;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(cidr) = Cidr::parse(text) else {
        return;
    };
    let addr_text = text.split('/').next().unwrap_or_default().trim();
    let own: IpAddr = addr_text
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} accepted but its address does not parse"));
    // Also a range written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`): clients are compared in
    // the mapped form there (a bug this target found, fixed in 3514ca0).
    assert!(cidr.contains(own), "{text:?} does not contain its own address");

    let rest = &data[split.min(data.len())..];
    let mut v6 = [0u8; 16];
    for (i, b) in rest.iter().take(16).enumerate() {
        v6[i] = *b;
    }
    let probes = [
        IpAddr::V4(Ipv4Addr::new(v6[0], v6[1], v6[2], v6[3])),
        IpAddr::V6(Ipv6Addr::from(v6)),
        IpAddr::V6(Ipv4Addr::new(v6[0], v6[1], v6[2], v6[3]).to_ipv6_mapped()),
    ];
    let zero = Cidr::parse(&format!("{own}/0")).expect("a /0 of a valid address parses");
    for ip in probes {
        let inside = cidr.contains(ip);
        if inside {
            // Anything in a range is in the /0 of the same family.
            assert!(zero.contains(ip), "{ip} in {text:?} but not in {own}/0");
        }
        if ip.to_canonical().is_ipv4() == own.is_ipv4() {
            assert!(zero.contains(ip), "{own}/0 does not contain {ip}");
        }
    }
});
