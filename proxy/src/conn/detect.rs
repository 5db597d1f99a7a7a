//! What does a client speak first? Decided from the first bytes of a stream.

/// The protocol inside a CONNECT tunnel, decided from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS handshake record (content type 22, version 3.x).
    Tls,
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (cleartext, prior knowledge).
    H2Prior,
    /// Anything else, or nothing within the peek timeout: relayed as bytes.
    Opaque,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Classifies `buf`; `None` means "need more bytes to tell".
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Protocol::Tls),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Protocol::H2Prior)
        } else {
            None
        };
    }
    // An HTTP method is a token of upper-case letters followed by a space.
    for (i, &b) in buf.iter().enumerate().take(24) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Opaque),
        }
    }
    if buf.len() >= 24 {
        Some(Protocol::Opaque)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::H2Prior)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
        assert_eq!(classify(b"\x00\x01"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b""), None);
    }
}
