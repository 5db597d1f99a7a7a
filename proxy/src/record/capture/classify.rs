//! Text or binary: the content type (and its charset) decides when it says something useful,
//! otherwise the bytes do (UTF-8 without control characters other than \t \r \n is text).

/// What a (decoded) body is, for the record.
pub(super) enum Class {
    /// Text, ready for the record.
    Text(String),
    /// The content type says text, but the bytes are not in a charset we can turn into text.
    DeclaredText,
    Binary,
}

/// The content type's verdict: textual, binary, or unknown (then the bytes decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Declared {
    Text,
    Binary,
    Unknown,
}

/// The parts of a `content-type` value that matter here.
pub(super) struct ContentType {
    essence: String,
    charset: Option<String>,
}

impl ContentType {
    pub(super) fn parse(value: Option<&str>) -> Self {
        let mut params = value.unwrap_or("").split(';');
        let essence = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let charset = params.find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
        });
        ContentType { essence, charset }
    }

    pub(super) fn declared(&self) -> Declared {
        let Some((kind, subtype)) = self.essence.split_once('/') else {
            return Declared::Unknown;
        };
        let textual_subtype = matches!(
            subtype,
            "xml"
                | "x-www-form-urlencoded"
                | "javascript"
                | "x-javascript"
                | "ecmascript"
                | "graphql"
                | "yaml"
                | "x-yaml"
                | "toml"
                | "csv"
                | "sql"
                | "x-sh"
        ) || subtype.contains("json") // json, x-ndjson, jsonl, x-amz-json-1.1, *+json
            || subtype.ends_with("+xml")
            || subtype.ends_with("+yaml");
        match kind {
            "text" => Declared::Text,
            _ if textual_subtype => Declared::Text,
            "image" | "audio" | "video" | "font" | "model" => Declared::Binary,
            _ => Declared::Unknown,
        }
    }

    /// Charsets whose bytes map one to one onto characters (windows-1252, as browsers read them).
    fn is_single_byte_western(&self) -> bool {
        matches!(
            self.charset.as_deref(),
            Some(
                "iso-8859-1"
                    | "iso8859-1"
                    | "latin1"
                    | "latin-1"
                    | "windows-1252"
                    | "cp1252"
                    | "us-ascii"
                    | "ascii"
            )
        )
    }
}

pub(super) fn classify(content_type: &ContentType, bytes: &[u8], truncated: bool) -> Class {
    match content_type.declared() {
        Declared::Binary => Class::Binary,
        Declared::Text => match utf8_prefix(bytes, truncated) {
            Some(text) => Class::Text(text.to_string()),
            None if content_type.is_single_byte_western() => Class::Text(windows_1252(bytes)),
            None => Class::DeclaredText,
        },
        Declared::Unknown => match utf8_prefix(bytes, truncated) {
            Some(text) if !text.chars().any(is_binary_control) => Class::Text(text.to_string()),
            _ => Class::Binary,
        },
    }
}

/// The bytes as UTF-8; when the body was truncated, a character cut at the end is dropped.
fn utf8_prefix(bytes: &[u8], truncated: bool) -> Option<&str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) if truncated && e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    }
}

fn is_binary_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\r' | '\n')
}

/// windows-1252, which browsers use for all the single-byte labels above (WHATWG Encoding).
fn windows_1252(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9f => HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::record::capture::tests::{base64, capture, text};
    use crate::record::capture::CaptureMode;

    #[test]
    fn binary_is_dropped_under_text_and_base64_under_all() {
        let png = [
            0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d,
        ];
        for ct in [Some("image/png"), Some("application/octet-stream"), None] {
            let c = capture(CaptureMode::Text, 1024, &[&png]);
            assert_eq!(c.finish(ct, None), None, "{ct:?}");
            let c = capture(CaptureMode::All, 1024, &[&png]);
            assert_eq!(c.finish(ct, None), base64(&png, false), "{ct:?}");
        }
        // Declared binary stays binary even when the bytes look like text.
        let c = capture(CaptureMode::All, 1024, &[b"GIF89a"]);
        assert_eq!(c.finish(Some("image/gif"), None), base64(b"GIF89a", false));
    }

    #[test]
    fn unknown_content_type_is_sniffed() {
        let c = capture(
            CaptureMode::Text,
            1024,
            &[b"key=value\tand\r\nmore \xc3\xa9"],
        );
        assert_eq!(
            c.finish(None, None),
            text("key=value\tand\r\nmore é", false)
        );
        assert_eq!(
            c.finish(Some("application/x-thing"), None),
            text("key=value\tand\r\nmore é", false)
        );
        let c = capture(CaptureMode::Text, 1024, &[b"\x1b[31mred"]);
        assert_eq!(c.finish(None, None), None);
        let c = capture(CaptureMode::Text, 1024, &[b"nul\0"]);
        assert_eq!(c.finish(None, None), None);
        // Textual content types keep control characters: JSON escapes them.
        assert_eq!(c.finish(Some("text/plain"), None), text("nul\0", false));
    }

    #[test]
    fn textual_content_types() {
        for ct in [
            "text/html",
            "application/json",
            "application/problem+json",
            "application/x-amz-json-1.1",
            "application/x-ndjson",
            "application/xml",
            "image/svg+xml",
            "application/x-www-form-urlencoded",
            "application/javascript",
            "application/graphql",
            "APPLICATION/JSON; charset=UTF-8",
        ] {
            let c = capture(CaptureMode::Text, 1024, &[b"\x01ok"]);
            assert_eq!(c.finish(Some(ct), None), text("\x01ok", false), "{ct}");
        }
    }

    #[test]
    fn declared_charsets() {
        let c = capture(CaptureMode::Text, 1024, &[b"caf\xe9 \x80"]);
        assert_eq!(
            c.finish(Some("text/html; charset=ISO-8859-1"), None),
            text("café €", false)
        );
        // Textual but not in a charset we read: kept, as base64.
        assert_eq!(
            c.finish(Some("text/html; charset=shift_jis"), None),
            base64(b"caf\xe9 \x80", false)
        );
    }
}
