//! The `<redacted …>` grammar (see the parent module's docs): the fingerprint of a secret,
//! identifiers kept inside the form, and recognising a value that is already in that form, so
//! redaction is idempotent.

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

/// Keys a `<redacted …>` form may carry (see the module docs).
static REDACTED_KEYS: &[&str] = &[
    "alg", "aud", "azp", "exp", "iat", "iss", "kid", "len", "sha256", "sub", "user",
];

/// Longest kept identifier (user name, JWT claim), in bytes: identifiers are short, and a
/// record must not grow by whatever a peer puts in a claim.
pub const MAX_KEPT_VALUE: usize = 256;
/// Bytes of SHA-256 shown in a fingerprint: enough to tell tokens apart, too few to matter.
const FINGERPRINT_BYTES: usize = 4;

/// A byte a `<redacted …>` value may hold unquoted.
fn is_bare_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !matches!(b, b'"' | b'\\' | b'<' | b'>')
}

/// `len=N sha256=XXXXXXXX` of `secret`.
fn write_fingerprint_fields(out: &mut String, secret: &[u8], eq: &str, space: &str) {
    let digest = Sha256::digest(secret);
    let _ = write!(out, "len{eq}{}{space}sha256{eq}", secret.len());
    for b in &digest[..FINGERPRINT_BYTES] {
        let _ = write!(out, "{b:02x}");
    }
}

/// `<redacted len=N sha256=XXXXXXXX>`.
pub(super) fn push_fingerprint(out: &mut String, secret: &[u8]) {
    out.push_str("<redacted ");
    write_fingerprint_fields(out, secret, "=", " ");
    out.push('>');
}

/// The fingerprint form with `<`, `>`, `=` and space percent-encoded:
/// `%3Credacted%20len%3DN%20sha256%3DXXXXXXXX%3E`, over the `%XX`-decoded value.
pub(super) fn push_url_fingerprint(out: &mut String, value: &str) {
    let decoded = crate::percent_decode(value.as_bytes());
    out.push_str("%3Credacted%20");
    write_fingerprint_fields(out, &decoded, "%3D", "%20");
    out.push_str("%3E");
}

/// Appends a kept identifier: bare when it is printable ASCII without space, `"`, `\`, `<`,
/// `>`, else a JSON string literal; cut to [`MAX_KEPT_VALUE`] bytes with `...` appended.
pub(super) fn push_kept_value(out: &mut String, value: &str) {
    let mut cut = value.len().min(MAX_KEPT_VALUE);
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    let (value, ellipsis) = if cut < value.len() {
        (&value[..cut], "...")
    } else {
        (value, "")
    };
    if !value.is_empty() && value.bytes().all(is_bare_byte) {
        out.push_str(value);
        out.push_str(ellipsis);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push_str(ellipsis);
    out.push('"');
}

/// Whether `s` is exactly a `<redacted …>` form of the grammar in the module docs.
pub(super) fn is_redacted_form(s: &str) -> bool {
    let Some(mut rest) = s.strip_prefix("<redacted") else {
        return false;
    };
    let mut first = true;
    loop {
        if rest == ">" {
            return true;
        }
        let Some(item) = rest.strip_prefix(' ') else {
            return false;
        };
        let key_len = item
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        let (key, after) = item.split_at(key_len);
        rest = match after.strip_prefix('=') {
            Some(value) if REDACTED_KEYS.contains(&key) => match skip_value(value) {
                Some(after_value) => after_value,
                None => return false,
            },
            None if first && key == "jwt" => after,
            _ => return false,
        };
        first = false;
    }
}

/// The rest after one bare or JSON-quoted value, or None when there is none.
fn skip_value(s: &str) -> Option<&str> {
    if let Some(body) = s.strip_prefix('"') {
        let mut escaped = false;
        // '"' and '\\' are ASCII and never part of a multi-byte char.
        for (i, b) in body.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return body.get(i + 1..),
                _ => {}
            }
        }
        return None;
    }
    let n = s.bytes().take_while(|b| is_bare_byte(*b)).count();
    (n > 0).then(|| &s[n..])
}

/// Whether a query value is already `%3Credacted%20len%3DN%20sha256%3DXXXXXXXX%3E`.
pub(super) fn is_url_redacted_form(value: &str) -> bool {
    let Some(rest) = value.strip_prefix("%3Credacted%20len%3D") else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Some(rest) = rest[digits..].strip_prefix("%20sha256%3D") else {
        return false;
    };
    digits > 0
        && rest.len() == 2 * FINGERPRINT_BYTES + 3
        && rest.ends_with("%3E")
        && rest.as_bytes()[..2 * FINGERPRINT_BYTES]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}
