//! The JSON v1 encoding: one object per line, snake_case keys, absent facts omitted.

use crate::{Flow, Header};

/// Appends `flow` as one JSON line (with the trailing `\n`) to `out`.
pub fn encode_line(flow: &Flow, out: &mut Vec<u8>) {
    // Serialising plain structs with string keys into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, flow);
    out.push(b'\n');
}

/// Parses one JSON record (a line without or with its newline).
pub fn decode_line(line: &[u8]) -> Result<Flow, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Joins repeated header fields the way the record contract says: `", "` for most fields,
/// `"\n"` for `set-cookie`, whose values may themselves contain commas.
pub fn join_separator(name: &str) -> &'static str {
    if name.eq_ignore_ascii_case("set-cookie") {
        "\n"
    } else {
        ", "
    }
}

/// Renders header bytes as a string: UTF-8 is kept, every invalid byte becomes `\xHH`, so nothing
/// is dropped silently and the JSON line stays valid.
pub fn escape_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            out
        }
    }
}

/// Serde adapter: `Vec<Header>` <-> `{"name": "value", ...}` keeping the order of the list.
pub mod header_map {
    use super::Header;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(headers: &[Header], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(headers.len()))?;
        for h in headers {
            map.serialize_entry(&h.name, &h.value)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Header>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Header>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of header names to string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((name, value)) = m.next_entry::<String, String>()? {
                    out.push(Header { name, value });
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_escaped_not_dropped() {
        assert_eq!(escape_bytes(b"ok\xffz\xc3"), "ok\\xFFz\\xC3");
        assert_eq!(escape_bytes("größe".as_bytes()), "größe");
    }

    #[test]
    fn encode_line_omits_absent_facts() {
        use crate::{Request, Tls};
        let flow = Flow {
            schema_version: crate::SCHEMA_VERSION,
            kind: "http".into(),
            id: "i".into(),
            start: "s".into(),
            tls: Some(Tls::default()),
            request: Some(Request {
                method: "GET".into(),
                url: "http://a/".into(),
                ..Request::default()
            }),
            ..Flow::default()
        };
        let mut out = Vec::new();
        encode_line(&flow, &mut out);
        let line = String::from_utf8(out).expect("UTF-8");
        assert_eq!(
            line,
            concat!(
                r#"{"schema_version":1,"kind":"http","id":"i","start":"s","tls":{},"#,
                r#""request":{"method":"GET","url":"http://a/","headers":{}}}"#,
                "\n"
            )
        );
        assert!(!line.contains("null") && !line.contains(r#""""#));
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn set_cookie_joins_with_newline() {
        assert_eq!(join_separator("Set-Cookie"), "\n");
        assert_eq!(join_separator("accept"), ", ");
    }
}
