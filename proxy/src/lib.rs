//! flowtap: a TLS-intercepting HTTP(S) proxy whose product is one structured record per exchange.
//!
//! The path of one connection, and the module that handles each step:
//!
//! ```text
//! listener   accept, count, spawn; graceful drain on SIGTERM
//! conn       one client connection: its facts (id, address) and the HTTP/1 server on the socket
//! http       the per-connection service: CONNECT, absolute-form forwarding, the proxy's own pages
//! connect    CONNECT: reply 200, peek the first bytes, then intercept TLS, serve HTTP, or relay
//! tls        ClientHello -> upstream handshake with the same ALPN -> leaf for the SNI -> finish
//! upstream   DNS, TCP, TLS to the origin; hyper h1/h2 client connections and their pools
//! tunnel     opaque byte relay with counters (ignored hosts, non-HTTP protocols, upgrades)
//! record     taps on both bodies and the exchange facts, finished exactly once
//! output     bounded queue -> writer thread -> JSON lines / text outputs
//! ```
//!
//! Recording never holds up traffic: the hot path only clones header maps and counts bytes; the
//! record is built, redacted and encoded on the writer thread, behind a bounded queue that drops
//! (and counts) records rather than slowing an exchange.

pub mod access;
pub mod config;
pub mod conn;
pub mod connect;
pub mod convert;
mod delegate;
pub mod glibc;
pub mod http;
pub mod k8s;
pub mod listener;
pub mod metrics;
pub mod mode;
pub mod output;
pub mod record;
pub mod redact;
pub mod tls;
pub mod tunnel;
pub mod upstream;

/// An error and its causes, outermost first.
pub fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| c.source())
}

/// An error with its causes (`outer: inner: …`): transport errors keep the useful part (what
/// was malformed, which system call failed) in their sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    causes(e)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Decodes `%XX`; a `%` not followed by two hex digits stays as is, `+` stays `+`.
pub fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}
