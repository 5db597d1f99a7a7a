//! The first bytes inside a tunnel (proxy/src/conn/detect.rs): `classify` and
//! `client_hello_sni` never panic; a decision made on a prefix does not change when more bytes
//! arrive; an SNI is non-empty, lower case and survives trailing bytes after the record.
#![no_main]

use flowtap::conn::detect::{classify, client_hello_sni};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    for cut in 0..data.len().min(64) {
        if let Some(early) = classify(&data[..cut]) {
            assert_eq!(
                Some(early),
                whole,
                "decided {early:?} on {cut} bytes, {whole:?} on all of {data:?}"
            );
        }
    }
    if let Some(sni) = client_hello_sni(data) {
        assert!(!sni.is_empty());
        assert_eq!(sni, sni.to_ascii_lowercase());
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        assert_eq!(client_hello_sni(&longer).as_deref(), Some(sni.as_str()));
    }
});
