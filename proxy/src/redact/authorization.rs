//! `authorization` and `proxy-authorization` values: keep the scheme and what identifies the
//! credential (SigV4's `Credential` and `SignedHeaders`, Basic's user, a JWT's listed header
//! fields and claims), drop what proves it.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use super::form::{is_redacted_form, push_fingerprint, push_kept_value};
use super::{is_token_byte, redact_whole};

/// Header fields of a JWT that are kept, in output order.
const JWT_HEADER_KEPT: [&str; 2] = ["alg", "kid"];
/// JWT claims that are kept, in output order: who issued it, for whom, for what, until when.
const JWT_CLAIMS_KEPT: [&str; 6] = ["iss", "sub", "aud", "azp", "exp", "iat"];

/// Longest bearer token decoded as a JWT; longer ones are fingerprinted without decoding.
/// Real JWTs are a few KiB (identity providers cap tokens with group claims around 16 KiB).
const MAX_JWT_LEN: usize = 64 * 1024;
/// Longest Basic credential decoded; longer ones are fingerprinted (user:password is short).
const MAX_BASIC_LEN: usize = 4 * 1024;
/// Longest authorization scheme name accepted as a scheme (real ones are under 32 bytes).
const MAX_SCHEME_LEN: usize = 64;
/// Longest SigV4 `Credential` kept (`AKID/DATE/REGION/SERVICE/aws4_request` is under 128).
const MAX_SIGV4_CREDENTIAL: usize = 256;
/// Longest SigV4 `SignedHeaders` kept (a `;`-list of header names).
const MAX_SIGV4_SIGNED_HEADERS: usize = 4096;

/// Base64 for Basic credentials: standard alphabet, padding optional.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
/// Base64url for JWT segments: unpadded by spec, padding tolerated.
const JWT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The scheme family of an `authorization` value, decided before any rendering.
enum Credentials<'a> {
    SigV4(&'a str),
    Basic(&'a str),
    Bearer(&'a str),
    /// Already in a `<redacted …>` form.
    Redacted(&'a str),
    Other,
}

pub(super) fn redact_authorization(value: &str) -> String {
    let v = value.trim();
    if v.is_empty() || is_redacted_form(v) {
        return value.to_owned();
    }
    let Some((scheme, creds)) = v
        .split_once([' ', '\t'])
        .filter(|(scheme, _)| is_scheme(scheme))
    else {
        return redact_whole(v);
    };
    let creds = creds.trim();
    let kind = if is_redacted_form(creds) {
        Credentials::Redacted(creds)
    } else if scheme
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("aws4-"))
    {
        Credentials::SigV4(creds)
    } else if scheme.eq_ignore_ascii_case("basic") {
        Credentials::Basic(creds)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Credentials::Bearer(creds)
    } else {
        Credentials::Other
    };
    let mut out = String::with_capacity(scheme.len() + 64);
    out.push_str(scheme);
    out.push(' ');
    match kind {
        Credentials::SigV4(params) => push_sigv4(&mut out, params),
        Credentials::Basic(token) => push_basic(&mut out, token),
        Credentials::Bearer(token) => {
            if !push_jwt(&mut out, token) {
                push_fingerprint(&mut out, token.as_bytes());
            }
        }
        Credentials::Redacted(form) => out.push_str(form),
        Credentials::Other => out.push_str("<redacted>"),
    }
    out
}

/// `Credential=…, SignedHeaders=…, Signature=<redacted>`: the known components in canonical
/// order, each only if present; unknown components are dropped.
fn push_sigv4(out: &mut String, params: &str) {
    let (mut credential, mut signed_headers, mut signature) = (None, None, false);
    for part in params.split(',') {
        let Some((key, val)) = part.split_once('=') else {
            continue;
        };
        let (key, val) = (key.trim(), val.trim());
        if key.eq_ignore_ascii_case("credential") {
            credential = credential.or(Some(val));
        } else if key.eq_ignore_ascii_case("signedheaders") {
            signed_headers = signed_headers.or(Some(val));
        } else if key.eq_ignore_ascii_case("signature") {
            signature = true;
        }
    }
    if credential.is_none() && signed_headers.is_none() && !signature {
        out.push_str("<redacted>");
        return;
    }
    let mut sep = "";
    let mut component = |out: &mut String, key: &str, val: Option<&str>| {
        out.push_str(sep);
        out.push_str(key);
        out.push('=');
        out.push_str(val.unwrap_or("<redacted>"));
        sep = ", ";
    };
    if let Some(c) = credential {
        let ok = c.len() <= MAX_SIGV4_CREDENTIAL
            && !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
        component(out, "Credential", ok.then_some(c));
    }
    if let Some(h) = signed_headers {
        let ok = h.len() <= MAX_SIGV4_SIGNED_HEADERS
            && !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b';' | b'-' | b'_' | b'.'));
        component(out, "SignedHeaders", ok.then_some(h));
    }
    if signature {
        component(out, "Signature", None);
    }
}

/// `<redacted user=…>`, or the fingerprint when the credential is not `base64(user:password)`.
fn push_basic(out: &mut String, token: &str) {
    if token.len() <= MAX_BASIC_LEN {
        if let Ok(bytes) = BASIC_B64.decode(token) {
            let text = String::from_utf8_lossy(&bytes);
            if let Some((user, _password)) = text.split_once(':') {
                out.push_str("<redacted user=");
                push_kept_value(out, user);
                out.push('>');
                return;
            }
        }
    }
    push_fingerprint(out, token.as_bytes());
}

/// `<redacted jwt alg=… kid=… iss=… sub=… aud=… azp=… exp=… iat=…>` when `token` is a JWS in
/// compact form with JSON header (with `alg`) and claims; returns false (writing nothing)
/// otherwise.
fn push_jwt(out: &mut String, token: &str) -> bool {
    if token.len() > MAX_JWT_LEN {
        return false;
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(header), Some(claims)) = (decode_json_object(header), decode_json_object(claims))
    else {
        return false;
    };
    if !header.get("alg").is_some_and(serde_json::Value::is_string) {
        return false;
    }
    out.push_str("<redacted jwt");
    let kept = JWT_HEADER_KEPT
        .iter()
        .map(|k| (k, header.get(*k)))
        .chain(JWT_CLAIMS_KEPT.iter().map(|k| (k, claims.get(*k))));
    for (key, value) in kept {
        if let Some(rendered) = value.and_then(render_claim) {
            out.push(' ');
            out.push_str(key);
            out.push('=');
            push_kept_value(out, &rendered);
        }
    }
    out.push('>');
    true
}

fn decode_json_object(segment: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let bytes = JWT_B64.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Strings, numbers and booleans as text; arrays of those joined with `,`; anything else
/// (objects, null, nested arrays) is not rendered.
fn render_claim(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(scalar).collect();
            (!items.is_empty()).then(|| items.join(","))
        }
        other => scalar(other),
    }
}

fn is_scheme(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SCHEME_LEN && s.bytes().all(is_token_byte)
}
