//! A PKCS#12 truststore the JVM loads as `-Djavax.net.ssl.trustStoreType=PKCS12`: certificate
//! bags only, each marked with Oracle's trusted-key-usage attribute (without it the JDK skips a
//! certificate that has no key), in a plain `data` content, without a MAC.
//!
//! No MAC and no encryption on purpose: the file holds public certificates only, its integrity
//! is the ConfigMap's, and a MAC would have to pick a digest that every JDK in use can verify
//! (HmacPBESHA256 needs 8u301 / 11.0.12; SHA-1 would need one more crate). The JDK reads a
//! store without MAC data, whatever password it is given.
//!
//! Encoding follows RFC 7292 (PFX, AuthenticatedSafe, SafeBag, CertBag) in DER.

/// id-data (PKCS #7).
const OID_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
/// certBag (PKCS #12).
const OID_CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
/// x509Certificate (PKCS #9 certTypes).
const OID_X509_CERT: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
/// friendlyName (PKCS #9): the alias keytool shows.
const OID_FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
/// Oracle's trusted key usage: the JDK's mark for a trusted certificate entry.
const OID_ORACLE_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113894, 746875, 1, 1];
/// anyExtendedKeyUsage: trusted for every purpose.
const OID_ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_BMP_STRING: u8 = 0x1e;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_EXPLICIT_0: u8 = 0xa0;

/// The truststore for `(alias, DER certificate)` pairs; aliases must be unique.
pub fn truststore(certs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let bags: Vec<Vec<u8>> = certs.iter().map(|(a, der)| cert_bag(a, der)).collect();
    let safe_contents = tlv(TAG_SEQUENCE, &bags.concat());
    let authenticated_safe = tlv(TAG_SEQUENCE, &data_content_info(&safe_contents));
    let version = tlv(TAG_INTEGER, &[3]);
    tlv(
        TAG_SEQUENCE,
        &[version, data_content_info(&authenticated_safe)].concat(),
    )
}

/// ContentInfo { id-data, \[0\] EXPLICIT OCTET STRING }.
fn data_content_info(content: &[u8]) -> Vec<u8> {
    let octets = tlv(TAG_OCTET_STRING, content);
    tlv(
        TAG_SEQUENCE,
        &[oid(OID_DATA), tlv(TAG_EXPLICIT_0, &octets)].concat(),
    )
}

/// SafeBag { certBag, \[0\] EXPLICIT CertBag, SET OF attributes }.
fn cert_bag(alias: &str, der: &[u8]) -> Vec<u8> {
    let cert_value = tlv(TAG_EXPLICIT_0, &tlv(TAG_OCTET_STRING, der));
    let bag = tlv(TAG_SEQUENCE, &[oid(OID_X509_CERT), cert_value].concat());
    let name: Vec<u8> = alias.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let attributes = set_of(vec![
        attribute(OID_FRIENDLY_NAME, tlv(TAG_BMP_STRING, &name)),
        attribute(
            OID_ORACLE_TRUSTED_KEY_USAGE,
            oid(OID_ANY_EXTENDED_KEY_USAGE),
        ),
    ]);
    tlv(
        TAG_SEQUENCE,
        &[oid(OID_CERT_BAG), tlv(TAG_EXPLICIT_0, &bag), attributes].concat(),
    )
}

/// Attribute { type, SET OF value } with one value.
fn attribute(kind: &[u64], value: Vec<u8>) -> Vec<u8> {
    tlv(TAG_SEQUENCE, &[oid(kind), set_of(vec![value])].concat())
}

/// DER SET OF: elements sorted by their encoding.
fn set_of(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
    elements.sort();
    tlv(TAG_SET, &elements.concat())
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut push_base128 = |mut v: u64| {
        let mut bytes = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            bytes.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
        }
        bytes.reverse();
        body.extend_from_slice(&bytes);
    };
    if let [first, second, rest @ ..] = arcs {
        push_base128(first * 40 + second);
        for arc in rest {
            push_base128(*arc);
        }
    }
    tlv(TAG_OID, &body)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_encode_as_der() {
        assert_eq!(
            oid(OID_DATA),
            [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]
        );
        assert_eq!(
            oid(OID_ANY_EXTENDED_KEY_USAGE),
            [0x06, 0x04, 0x55, 0x1d, 0x25, 0x00]
        );
        // 2.16.840.1.113894.746875.1.1, as the JDK writes it.
        assert_eq!(
            oid(OID_ORACLE_TRUSTED_KEY_USAGE),
            [0x06, 0x0c, 0x60, 0x86, 0x48, 0x01, 0x86, 0xf9, 0x66, 0xad, 0xca, 0x7b, 0x01, 0x01]
        );
    }

    #[test]
    fn long_lengths() {
        assert_eq!(tlv(0x04, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn store_structure() {
        let store = truststore(&[("a".to_string(), vec![0x30, 0x00])]);
        assert_eq!(store[0], TAG_SEQUENCE);
        // version 3 right after the outer header
        assert_eq!(store[2..5], [0x02, 0x01, 0x03]);
    }
}
