//! `cookie` and `set-cookie` values: keep each cookie's name (and, in `set-cookie`, the
//! attributes that say where and how long it applies), redact the values.

use super::{is_token_byte, lookup};

/// How a `set-cookie` attribute is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attribute {
    /// `Name=value`, value kept.
    Valued,
    /// `Name`, a flag: any value is dropped.
    Flag,
}

/// `set-cookie` attributes that are kept, sorted by lower-case name; all others are dropped.
pub(super) static COOKIE_ATTRIBUTES: &[(&str, Attribute)] = &[
    ("domain", Attribute::Valued),
    ("expires", Attribute::Valued),
    ("httponly", Attribute::Flag),
    ("max-age", Attribute::Valued),
    ("partitioned", Attribute::Flag),
    ("path", Attribute::Valued),
    ("priority", Attribute::Valued),
    ("samesite", Attribute::Valued),
    ("secure", Attribute::Flag),
];

/// Longest cookie name kept; a longer "name" is more likely data than a name.
const MAX_COOKIE_NAME: usize = 256;

/// `name=<redacted>; …` for each cookie; a pair without a valid name is `<redacted>`.
pub(super) fn redact_cookie(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    // Repeated cookie fields (HTTP/2 splits them) arrive joined with ", ".
    for pair in value
        .split([';', ','])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !out.is_empty() {
            out.push_str("; ");
        }
        push_cookie_pair(&mut out, pair);
    }
    out
}

fn push_cookie_pair(out: &mut String, pair: &str) {
    match pair.split_once('=') {
        Some((name, val)) if is_cookie_name(name.trim()) => {
            out.push_str(name.trim());
            out.push('=');
            if !val.trim().is_empty() {
                out.push_str("<redacted>");
            }
        }
        _ => out.push_str("<redacted>"),
    }
}

/// One cookie per line: `name=<redacted>; Path=/; Secure`; unknown attributes dropped.
pub(super) fn redact_set_cookie(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, line) in value.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut segments = line.split(';');
        let pair = segments.next().unwrap_or_default().trim();
        if !pair.is_empty() {
            push_cookie_pair(&mut out, pair);
        }
        for segment in segments {
            let (name, val) = match segment.split_once('=') {
                Some((name, val)) => (name.trim(), Some(val.trim())),
                None => (segment.trim(), None),
            };
            let Some(kind) = lookup(COOKIE_ATTRIBUTES, name) else {
                continue;
            };
            out.push_str("; ");
            out.push_str(name);
            if let (Attribute::Valued, Some(val)) = (kind, val) {
                out.push('=');
                out.push_str(val);
            }
        }
    }
    out
}

fn is_cookie_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_COOKIE_NAME && s.bytes().all(is_token_byte)
}
