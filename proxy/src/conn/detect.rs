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

/// The server name (SNI) in a TLS ClientHello, read from the first bytes of a stream without
/// consuming them, so a connection can be relayed untouched when its host is ignored.
/// `None` when the bytes are not a complete ClientHello record or carry no host name.
pub fn client_hello_sni(buf: &[u8]) -> Option<String> {
    let mut r = Reader(buf);
    // TLS record: type 22 (handshake), version, length.
    if r.u8()? != 0x16 {
        return None;
    }
    r.skip(2)?;
    let rec_len = r.u16()? as usize;
    let mut r = Reader(r.take(rec_len)?);
    // Handshake: type 1 (ClientHello), 24-bit length.
    if r.u8()? != 1 {
        return None;
    }
    let hs_len = r.u24()?;
    let mut r = Reader(r.take(hs_len)?);
    r.skip(2 + 32)?; // client version, random
    let sid = r.u8()? as usize;
    r.skip(sid)?;
    let suites = r.u16()? as usize;
    r.skip(suites)?;
    let comp = r.u8()? as usize;
    r.skip(comp)?;
    let ext_len = r.u16()? as usize;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()? as usize;
        let body = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut e = Reader(body);
        let list_len = e.u16()? as usize;
        let mut list = Reader(e.take(list_len)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let n = list.u16()? as usize;
            let name = list.take(n)?;
            if name_type == 0 {
                let s = std::str::from_utf8(name).ok()?;
                return (!s.is_empty()).then(|| s.to_ascii_lowercase());
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

#[cfg(test)]
mod sni_tests {
    use super::client_hello_sni;

    /// A ClientHello captured from `openssl s_client -servername example.com`, cut to what matters.
    fn hello(name: &str) -> Vec<u8> {
        let name = name.as_bytes();
        let mut sni = vec![0u8, 0]; // extension type server_name
        let list_len = 3 + name.len();
        sni.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        sni.extend_from_slice(&(list_len as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // compression
        body.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        body.extend_from_slice(&sni);
        let mut hs = vec![1u8];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn finds_sni() {
        assert_eq!(
            client_hello_sni(&hello("Example.COM")).as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn garbage_and_truncation_are_none() {
        let h = hello("example.com");
        for cut in 0..h.len() {
            assert_eq!(client_hello_sni(&h[..cut]), None);
        }
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), None);
    }
}
