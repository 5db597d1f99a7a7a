//! Redaction: rewrites secrets in recorded header values and URLs before a record leaves the
//! proxy, keeping what identifies the credential (who, which key, which token) and dropping
//! what proves it (passwords, signatures, token bytes).
//!
//! It runs once per recorded exchange, at record assembly, on the record's copy of the
//! headers and URL: the traffic itself is never touched. The rules are data: `HEADER_RULES`
//! and `QUERY_RULES` are small sorted tables the code looks names up in (binary search, no
//! regexes); [`RedactorConfig`] adds header names and query parameters (fingerprint form) and
//! names to reveal. The common case (no secret header, no query) allocates nothing.
//!
//! Output forms. `<redacted …>` is one grammar everywhere:
//! `"<redacted" *(" " item) ">"`, an item is `jwt` or `key=value`, a value is either bare
//! (printable ASCII without space, `"`, `\`, `<`, `>`) or a JSON string literal (`"a b>c"`).
//! Kept values longer than [`MAX_KEPT_VALUE`] bytes are cut and end in `...`.
//! The fingerprint `len=N sha256=XXXXXXXX` is the byte length of the secret and the first
//! 8 hex digits of its SHA-256, so the same token can be recognised across records.
//!
//! | where | input | recorded as |
//! |---|---|---|
//! | `authorization`, `proxy-authorization` | `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc…` | `AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=host;x-amz-date, Signature=<redacted>` (any `AWS4-*` scheme, e.g. SigV4a) |
//! | | `Basic YWxpY2U6czNjcjN0` | `Basic <redacted user=alice>` (no `:` or bad base64: `Basic <redacted len=N sha256=…>`) |
//! | | `Bearer <JWT>` | `Bearer <redacted jwt alg=RS256 kid=k1 iss=https://issuer sub=alice aud=api,web azp=cli exp=1700000000 iat=1690000000>` (only those present; `aud` arrays joined with `,`) |
//! | | `Bearer <other token>` | `Bearer <redacted len=40 sha256=1a2b3c4d>` |
//! | | `Digest username=…` (any other scheme) | `Digest <redacted>` |
//! | | `sometoken` (no scheme) | `<redacted len=9 sha256=…>` |
//! | `cookie` | `session=abc; theme=dark` | `session=<redacted>; theme=<redacted>` (empty values stay empty) |
//! | `set-cookie` (lines joined by `\n`) | `id=abc; Path=/; Secure; Foo=bar` | `id=<redacted>; Path=/; Secure` (keeps Path, Domain, Expires, Max-Age, SameSite, Priority, Secure, HttpOnly, Partitioned; drops others) |
//! | `x-api-key`, `x-amz-security-token`, `x-goog-api-key`, `x-auth-token`, extra headers | `k3y…` | `<redacted len=N sha256=…>` |
//! | URL query: `X-Amz-Signature`, `X-Amz-Security-Token`, `X-Goog-Signature`, `sig`, `signature`, `token`, `access_token`, `api_key`, `key`, extra params (names case-insensitive) | `token=abc` | `token=%3Credacted%20len%3D3%20sha256%3Dba7816bf%3E` (the header form, percent-encoded) |
//!
//! Fingerprints are taken over the secret as the application sent it, minus the transport
//! encoding: a header value with surrounding whitespace trimmed, a Basic or Bearer credential
//! as sent (still base64), a query value after `%XX` decoding (`+` kept), so a token sent
//! once in a header and once in a URL gets the same fingerprint.
//!
//! `X-Amz-Credential` and `X-Goog-Credential` query values are kept whole on purpose: they are
//! `AKID/DATE/REGION/SERVICE/aws4_request`, an identifier with no secret part (the OTel HTTP
//! conventions redact them; we keep them because knowing which key signed is the point).
//!
//! Everything outside the matched values stays byte-identical: header order, other headers,
//! other query parameters (not re-encoded), parameter order, path, fragment. A value already
//! in a redacted form (which a real credential never is: `<`, `>` and spaces are not valid in
//! base64, token68, a SigV4 signature or a query value) is left as is, so redaction is
//! idempotent: a collector may redact records from a proxy again.

use std::cmp::Ordering;
use std::fmt::Write as _;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use flowtap_schema::Header;
use sha2::{Digest as _, Sha256};

/// What to do with the value of a secret-bearing header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderRule {
    /// `Scheme credentials`: keep the scheme and what identifies the credential.
    Authorization,
    /// `a=1; b=2`: keep the names.
    Cookie,
    /// One cookie per line: keep the name and the known attributes.
    SetCookie,
    /// The whole value is a secret: `<redacted len=N sha256=XXXXXXXX>`.
    Fingerprint,
}

/// What to do with the value of a query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueryRule {
    /// The value is a secret: fingerprint it.
    Fingerprint,
    /// Looks like a secret but is an identifier: keep it (listed so the decision is visible).
    Keep,
}

/// Secret-bearing headers, sorted by (lower-case) name for binary search.
static HEADER_RULES: &[(&str, HeaderRule)] = &[
    ("authorization", HeaderRule::Authorization),
    ("cookie", HeaderRule::Cookie),
    ("proxy-authorization", HeaderRule::Authorization),
    ("set-cookie", HeaderRule::SetCookie),
    ("x-amz-security-token", HeaderRule::Fingerprint),
    ("x-api-key", HeaderRule::Fingerprint),
    ("x-auth-token", HeaderRule::Fingerprint),
    ("x-goog-api-key", HeaderRule::Fingerprint),
];

/// Query parameters, sorted by lower-case name; matched case-insensitively.
static QUERY_RULES: &[(&str, QueryRule)] = &[
    ("access_token", QueryRule::Fingerprint),
    ("api_key", QueryRule::Fingerprint),
    ("key", QueryRule::Fingerprint),
    ("sig", QueryRule::Fingerprint),
    ("signature", QueryRule::Fingerprint),
    ("token", QueryRule::Fingerprint),
    ("x-amz-credential", QueryRule::Keep),
    ("x-amz-security-token", QueryRule::Fingerprint),
    ("x-amz-signature", QueryRule::Fingerprint),
    ("x-goog-credential", QueryRule::Keep),
    ("x-goog-signature", QueryRule::Fingerprint),
];

/// How a `set-cookie` attribute is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attribute {
    /// `Name=value`, value kept.
    Valued,
    /// `Name`, a flag: any value is dropped.
    Flag,
}

/// `set-cookie` attributes that are kept, sorted by lower-case name; all others are dropped.
static COOKIE_ATTRIBUTES: &[(&str, Attribute)] = &[
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

/// Keys a `<redacted …>` form may carry (see the module docs).
static REDACTED_KEYS: &[&str] = &[
    "alg", "aud", "azp", "exp", "iat", "iss", "kid", "len", "sha256", "sub", "user",
];

/// Header fields of a JWT that are kept, in output order.
const JWT_HEADER_KEPT: [&str; 2] = ["alg", "kid"];
/// JWT claims that are kept, in output order: who issued it, for whom, for what, until when.
const JWT_CLAIMS_KEPT: [&str; 6] = ["iss", "sub", "aud", "azp", "exp", "iat"];

/// Longest kept identifier (user name, JWT claim), in bytes: identifiers are short, and a
/// record must not grow by whatever a peer puts in a claim.
pub const MAX_KEPT_VALUE: usize = 256;
/// Longest bearer token decoded as a JWT; longer ones are fingerprinted without decoding.
/// Real JWTs are a few KiB (identity providers cap tokens with group claims around 16 KiB).
const MAX_JWT_LEN: usize = 64 * 1024;
/// Longest Basic credential decoded; longer ones are fingerprinted (user:password is short).
const MAX_BASIC_LEN: usize = 4 * 1024;
/// Longest authorization scheme name accepted as a scheme (real ones are under 32 bytes).
const MAX_SCHEME_LEN: usize = 64;
/// Longest cookie name kept; a longer "name" is more likely data than a name.
const MAX_COOKIE_NAME: usize = 256;
/// Longest SigV4 `Credential` kept (`AKID/DATE/REGION/SERVICE/aws4_request` is under 128).
const MAX_SIGV4_CREDENTIAL: usize = 256;
/// Longest SigV4 `SignedHeaders` kept (a `;`-list of header names).
const MAX_SIGV4_SIGNED_HEADERS: usize = 4096;
/// Bytes of SHA-256 shown in a fingerprint: enough to tell tokens apart, too few to matter.
const FINGERPRINT_BYTES: usize = 4;

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

/// Runtime additions to the tables. Names are matched case-insensitively.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedactorConfig {
    /// More headers whose whole value is a secret (fingerprint form).
    pub extra_headers: Vec<String>,
    /// More query parameters whose value is a secret (fingerprint form).
    pub extra_query: Vec<String>,
    /// Header or query parameter names whose rule is turned off.
    pub reveal: Vec<String>,
    /// Turn every rule off.
    pub reveal_all: bool,
}

/// The redaction rules in force: the static tables plus a [`RedactorConfig`].
#[derive(Clone, Debug)]
pub struct Redactor {
    active: bool,
    /// Lower-case, sorted, deduplicated.
    extra_headers: Vec<String>,
    extra_query: Vec<String>,
    reveal: Vec<String>,
}

impl Default for Redactor {
    /// Secure by default: every built-in rule on.
    fn default() -> Self {
        Redactor::new(&RedactorConfig::default())
    }
}

impl Redactor {
    pub fn new(cfg: &RedactorConfig) -> Self {
        Redactor {
            active: !cfg.reveal_all,
            extra_headers: name_set(&cfg.extra_headers),
            extra_query: name_set(&cfg.extra_query),
            reveal: name_set(&cfg.reveal),
        }
    }

    /// A redactor that redacts nothing.
    pub fn disabled() -> Self {
        Redactor::new(&RedactorConfig {
            reveal_all: true,
            ..RedactorConfig::default()
        })
    }

    /// Whether any rule can apply.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Rewrites the values of secret-bearing headers in place. For each rewritten header pushes
    /// `format!("{prefix}.{name}")` (e.g. prefix "request.headers") onto `redacted`.
    pub fn headers(&self, headers: &mut [Header], prefix: &str, redacted: &mut Vec<String>) {
        if !self.active {
            return;
        }
        for header in headers.iter_mut() {
            let Some(rule) = self.header_rule(&header.name) else {
                continue;
            };
            let value = redact_value(rule, &header.value);
            if value != header.value {
                header.value = value;
                push_unique(redacted, format!("{prefix}.{}", header.name));
            }
        }
    }

    /// Returns the URL with secret query values replaced, or None when nothing changed (zero
    /// allocation on the common path); pushes "request.url" onto `redacted` when it changes.
    pub fn url(&self, url: &str, redacted: &mut Vec<String>) -> Option<String> {
        if !self.active {
            return None;
        }
        // '?' and '#' are ASCII, so these indices are char boundaries.
        let query_start = url.find('?')? + 1;
        let query_end = url[query_start..]
            .find('#')
            .map_or(url.len(), |i| query_start + i);
        let query = &url[query_start..query_end];
        if !query.split('&').any(|p| self.secret_param(p).is_some()) {
            return None;
        }
        let mut out = String::with_capacity(url.len() + 32);
        out.push_str(&url[..query_start]);
        for (i, param) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match self.secret_param(param) {
                Some((name, value)) => {
                    out.push_str(name);
                    out.push('=');
                    push_url_fingerprint(&mut out, value);
                }
                None => out.push_str(param),
            }
        }
        out.push_str(&url[query_end..]);
        push_unique(redacted, "request.url".to_owned());
        Some(out)
    }

    fn header_rule(&self, name: &str) -> Option<HeaderRule> {
        let rule = lookup(HEADER_RULES, name)
            .or_else(|| contains(&self.extra_headers, name).then_some(HeaderRule::Fingerprint))?;
        (!contains(&self.reveal, name)).then_some(rule)
    }

    fn query_rule(&self, name: &str) -> Option<QueryRule> {
        let rule = match lookup(QUERY_RULES, name) {
            Some(QueryRule::Fingerprint) => QueryRule::Fingerprint,
            _ if contains(&self.extra_query, name) => QueryRule::Fingerprint,
            other => other?,
        };
        (!contains(&self.reveal, name)).then_some(rule)
    }

    /// `Some((name, value))` when this `name=value` query parameter holds a secret to replace.
    fn secret_param<'a>(&self, param: &'a str) -> Option<(&'a str, &'a str)> {
        let (name, value) = param.split_once('=')?;
        let secret = self.query_rule(name)? == QueryRule::Fingerprint
            && !value.is_empty()
            && !is_url_redacted_form(value);
        secret.then_some((name, value))
    }
}

/// Lower-cased, sorted, deduplicated, empty names dropped.
fn name_set(names: &[String]) -> Vec<String> {
    let mut set: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// Compares as if both were ASCII lower-case, without allocating.
fn cmp_ignore_ascii_case(a: &str, b: &str) -> Ordering {
    let lower = |c: u8| c.to_ascii_lowercase();
    a.bytes().map(lower).cmp(b.bytes().map(lower))
}

fn lookup<R: Copy>(table: &[(&str, R)], name: &str) -> Option<R> {
    table
        .binary_search_by(|(entry, _)| cmp_ignore_ascii_case(entry, name))
        .ok()
        .map(|i| table[i].1)
}

fn contains(set: &[String], name: &str) -> bool {
    !set.is_empty()
        && set
            .binary_search_by(|entry| cmp_ignore_ascii_case(entry, name))
            .is_ok()
}

fn push_unique(redacted: &mut Vec<String>, field: String) {
    if !redacted.contains(&field) {
        redacted.push(field);
    }
}

/// The new value of a header under `rule` (equal to `value` when nothing needs hiding).
fn redact_value(rule: HeaderRule, value: &str) -> String {
    match rule {
        HeaderRule::Authorization => redact_authorization(value),
        HeaderRule::Cookie => redact_cookie(value),
        HeaderRule::SetCookie => redact_set_cookie(value),
        HeaderRule::Fingerprint => redact_whole(value),
    }
}

/// The whole (trimmed) value is a secret.
fn redact_whole(value: &str) -> String {
    let v = value.trim();
    if v.is_empty() || is_redacted_form(v) {
        return value.to_owned();
    }
    let mut out = String::new();
    push_fingerprint(&mut out, v.as_bytes());
    out
}

/// The scheme family of an `authorization` value, decided before any rendering.
enum Credentials<'a> {
    SigV4(&'a str),
    Basic(&'a str),
    Bearer(&'a str),
    /// Already in a `<redacted …>` form.
    Redacted(&'a str),
    Other,
}

fn redact_authorization(value: &str) -> String {
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

/// `name=<redacted>; …` for each cookie; a pair without a valid name is `<redacted>`.
fn redact_cookie(value: &str) -> String {
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
fn redact_set_cookie(value: &str) -> String {
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

/// An HTTP token (RFC 9110 tchar).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_scheme(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SCHEME_LEN && s.bytes().all(is_token_byte)
}

fn is_cookie_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_COOKIE_NAME && s.bytes().all(is_token_byte)
}

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
fn push_fingerprint(out: &mut String, secret: &[u8]) {
    out.push_str("<redacted ");
    write_fingerprint_fields(out, secret, "=", " ");
    out.push('>');
}

/// The fingerprint form with `<`, `>`, `=` and space percent-encoded:
/// `%3Credacted%20len%3DN%20sha256%3DXXXXXXXX%3E`, over the `%XX`-decoded value.
fn push_url_fingerprint(out: &mut String, value: &str) {
    let decoded = percent_decode(value.as_bytes());
    out.push_str("%3Credacted%20");
    write_fingerprint_fields(out, &decoded, "%3D", "%20");
    out.push_str("%3E");
}

/// Decodes `%XX`; a `%` not followed by two hex digits stays as is, `+` stays `+`.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
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

/// Appends a kept identifier: bare when it is printable ASCII without space, `"`, `\`, `<`,
/// `>`, else a JSON string literal; cut to [`MAX_KEPT_VALUE`] bytes with `...` appended.
fn push_kept_value(out: &mut String, value: &str) {
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
fn is_redacted_form(s: &str) -> bool {
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
fn is_url_redacted_form(value: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    fn fp(secret: &str) -> String {
        let mut out = String::new();
        push_fingerprint(&mut out, secret.as_bytes());
        out
    }

    fn url_fp(value: &str) -> String {
        let mut out = String::new();
        push_url_fingerprint(&mut out, value);
        out
    }

    /// Redacts one header with the default rules: (new value, redacted list).
    fn one(name: &str, value: &str) -> (String, Vec<String>) {
        one_with(&Redactor::default(), name, value)
    }

    fn one_with(r: &Redactor, name: &str, value: &str) -> (String, Vec<String>) {
        let mut headers = vec![Header::new(name, value)];
        let mut redacted = Vec::new();
        r.headers(&mut headers, "request.headers", &mut redacted);
        (headers.remove(0).value, redacted)
    }

    /// Redacting the output again changes nothing and reports nothing.
    fn assert_fixed_point(name: &str, value: &str) {
        let (again, redacted) = one(name, value);
        assert_eq!(again, value, "not idempotent for {name}: {value:?}");
        assert!(redacted.is_empty());
    }

    #[test]
    fn tables_are_sorted_lower_case() {
        fn check<R>(table: &[(&str, R)]) {
            for w in table.windows(2) {
                assert!(w[0].0 < w[1].0, "{} !< {}", w[0].0, w[1].0);
            }
            for (name, _) in table {
                assert_eq!(*name, name.to_ascii_lowercase());
            }
        }
        check(HEADER_RULES);
        check(QUERY_RULES);
        check(COOKIE_ATTRIBUTES);
    }

    #[test]
    fn sigv4_keeps_identity_drops_signature() {
        let sig = "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024";
        let input = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240812/us-east-1/s3/aws4_request, \
             SignedHeaders=amz-sdk-invocation-id;amz-sdk-request;host;x-amz-content-sha256;x-amz-date, \
             Signature={sig}"
        );
        let (out, redacted) = one("authorization", &input);
        assert_eq!(
            out,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240812/us-east-1/s3/aws4_request, \
             SignedHeaders=amz-sdk-invocation-id;amz-sdk-request;host;x-amz-content-sha256;x-amz-date, \
             Signature=<redacted>"
        );
        assert!(!out.contains(&sig[..8]));
        assert_eq!(redacted, ["request.headers.authorization"]);
        assert_fixed_point("authorization", &out);

        // A credential that is not AKID/DATE/… is not kept; unknown components are dropped.
        let (out, _) = one(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=a b, Extra=hunter2, Signature=abc",
        );
        assert_eq!(
            out,
            "AWS4-HMAC-SHA256 Credential=<redacted>, Signature=<redacted>"
        );
        let (out, _) = one("authorization", "AWS4-HMAC-SHA256 hunter2");
        assert_eq!(out, "AWS4-HMAC-SHA256 <redacted>");
    }

    #[test]
    fn basic_keeps_user() {
        let token = STANDARD.encode("alice:s3cr3t");
        let (out, redacted) = one("proxy-authorization", &format!("Basic {token}"));
        assert_eq!(out, "Basic <redacted user=alice>");
        assert!(!out.contains("s3cr3t") && !out.contains(&token));
        assert_eq!(redacted, ["request.headers.proxy-authorization"]);
        assert_fixed_point("proxy-authorization", &out);

        // A user name with a space and '>' is quoted; the password may contain ':'.
        let token = STANDARD.encode("Alice <A> \"B\":pa:ss");
        let (out, _) = one("authorization", &format!("basic {token}"));
        assert_eq!(out, r#"basic <redacted user="Alice <A> \"B\"">"#);
        assert!(!out.contains("pa:ss"));
        assert_fixed_point("authorization", &out);

        // Not base64, or no ':' -> fingerprint of the credential as sent.
        let (out, _) = one("authorization", "Basic !!notbase64!!");
        assert_eq!(out, format!("Basic {}", fp("!!notbase64!!")));
        let nocolon = STANDARD.encode("justakey");
        let (out, _) = one("authorization", &format!("Basic {nocolon}"));
        assert_eq!(out, format!("Basic {}", fp(&nocolon)));
        assert!(!out.contains("justakey"));
    }

    fn jwt(header: &str, claims: &str, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn bearer_jwt_keeps_listed_claims() {
        let sig = "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let token = jwt(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT","jku":"https://evil"}"#,
            r#"{"iss":"https://issuer","sub":"alice","aud":["api","web"],"azp":"cli",
                "exp":1700000000,"iat":1690000000,"email":"alice@example.com",
                "session_secret":"hunter2","nested":{"a":1}}"#,
            sig,
        );
        let (out, _) = one("authorization", &format!("Bearer {token}"));
        assert_eq!(
            out,
            "Bearer <redacted jwt alg=RS256 kid=k1 iss=https://issuer sub=alice aud=api,web \
             azp=cli exp=1700000000 iat=1690000000>"
        );
        for secret in [sig, "hunter2", "alice@example.com", "evil", &token[..20]] {
            assert!(!out.contains(secret), "{secret} leaked");
        }
        assert_fixed_point("authorization", &out);

        // Awkward values are quoted; a plain string aud; missing claims are omitted.
        let token = jwt(
            r#"{"alg":"ES256"}"#,
            "{\"sub\":\"Alice Smith >\\\"x\\\"\\n\",\"aud\":\"api\",\"exp\":1.5e9}",
            "c2ln",
        );
        let (out, _) = one("authorization", &format!("Bearer {token}"));
        assert_eq!(
            out,
            r#"Bearer <redacted jwt alg=ES256 sub="Alice Smith >\"x\"\u000a" aud=api exp=1500000000.0>"#
        );
        assert_fixed_point("authorization", &out);

        // A huge claim is cut.
        let token = jwt(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"{}"}}"#, "a".repeat(10_000)),
            "c2ln",
        );
        let (out, _) = one("authorization", &format!("Bearer {token}"));
        assert_eq!(
            out,
            format!(
                "Bearer <redacted jwt alg=HS256 sub={}...>",
                "a".repeat(MAX_KEPT_VALUE)
            )
        );
    }

    #[test]
    fn bearer_opaque_and_broken_jwt_are_fingerprinted() {
        let token = "gho_16C7e42F292c6912E7710c838347Ae178B4a";
        let (out, _) = one("authorization", &format!("Bearer {token}"));
        assert_eq!(out, format!("Bearer {}", fp(token)));
        assert!(out.starts_with("Bearer <redacted len=40 sha256="));
        assert!(!out.contains("16C7e42F"));
        assert_fixed_point("authorization", &out);

        // Known answer: SHA-256("abc") = ba7816bf…
        assert_eq!(
            one("authorization", "Bearer abc").0,
            "Bearer <redacted len=3 sha256=ba7816bf>"
        );

        // Three dots but broken base64 / not JSON / no alg -> opaque.
        for token in [
            "eyJhbGciOiJIUzI1NiJ9.@@@.sig",
            "bm90anNvbg.bm90anNvbg.sig",
            &jwt("{}", "{}", "sig"),
            &jwt(r#"{"alg":"HS256"}"#, "{}", "sig.extra"),
        ] {
            let (out, _) = one("authorization", &format!("Bearer {token}"));
            assert_eq!(out, format!("Bearer {}", fp(token)));
        }
    }

    #[test]
    fn other_schemes_and_no_scheme() {
        let (out, _) = one(
            "authorization",
            r#"Digest username="alice", realm="x", nonce="n", response="6629fae49393a05397450978507c4ef1""#,
        );
        assert_eq!(out, "Digest <redacted>");
        assert_fixed_point("authorization", &out);

        let (out, _) = one("authorization", "  sk-live-0123456789  ");
        assert_eq!(out, fp("sk-live-0123456789"));
        assert_fixed_point("authorization", &out);

        // Empty stays empty and is not reported.
        let (out, redacted) = one("authorization", "");
        assert_eq!(out, "");
        assert!(redacted.is_empty());
    }

    #[test]
    fn cookie_keeps_names() {
        let (out, redacted) = one(
            "cookie",
            "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark",
        );
        assert_eq!(out, "session=<redacted>; theme=<redacted>");
        assert!(!out.contains("8f14e45f") && !out.contains("dark"));
        assert_eq!(redacted, ["request.headers.cookie"]);
        assert_fixed_point("cookie", &out);

        // Joined repeated fields, a pair without a name, an empty value.
        let (out, _) = one("cookie", "a=1; b=2, c=3; naked; <bad>=x; cleared=");
        assert_eq!(
            out,
            "a=<redacted>; b=<redacted>; c=<redacted>; <redacted>; <redacted>; cleared="
        );
        assert_fixed_point("cookie", &out);
    }

    #[test]
    fn set_cookie_keeps_name_and_attributes() {
        let input =
            "sid=38afes7a8; Path=/; Domain=example.com; Expires=Wed, 21 Oct 2026 07:28:00 GMT; \
                     Max-Age=3600; Secure; HttpOnly; SameSite=Lax; Comment=hunter2\n\
                     csrf=c5f7d2e1; path=/app; secure=yes; Partitioned";
        let (out, redacted) = one("set-cookie", input);
        assert_eq!(
            out,
            "sid=<redacted>; Path=/; Domain=example.com; Expires=Wed, 21 Oct 2026 07:28:00 GMT; \
             Max-Age=3600; Secure; HttpOnly; SameSite=Lax\n\
             csrf=<redacted>; path=/app; secure; Partitioned"
        );
        for secret in ["38afes7a8", "c5f7d2e1", "hunter2"] {
            assert!(!out.contains(secret));
        }
        assert_eq!(redacted, ["request.headers.set-cookie"]);
        assert_fixed_point("set-cookie", &out);
    }

    #[test]
    fn fingerprint_headers() {
        for name in [
            "x-api-key",
            "x-amz-security-token",
            "x-goog-api-key",
            "x-auth-token",
        ] {
            let key = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";
            let (out, redacted) = one(name, key);
            assert_eq!(out, fp(key));
            assert!(out.starts_with("<redacted len=39 sha256="));
            assert_eq!(redacted, [format!("request.headers.{name}")]);
            assert_fixed_point(name, &out);
        }
        // Untouched headers, and no report.
        let (out, redacted) = one("user-agent", "curl/8.5.0");
        assert_eq!(out, "curl/8.5.0");
        assert!(redacted.is_empty());
    }

    #[test]
    fn headers_keeps_order_and_reports_each_once() {
        let r = Redactor::default();
        let mut headers = vec![
            Header::new("host", "example.com"),
            Header::new("authorization", "Bearer abc"),
            Header::new("accept", "*/*"),
            Header::new("x-api-key", "k"),
        ];
        let mut redacted = vec!["request.url".to_owned()];
        r.headers(&mut headers, "request.headers", &mut redacted);
        r.headers(&mut headers, "request.headers", &mut redacted);
        let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["host", "authorization", "accept", "x-api-key"]);
        assert_eq!(headers[0].value, "example.com");
        assert_eq!(headers[2].value, "*/*");
        assert_eq!(
            redacted,
            [
                "request.url",
                "request.headers.authorization",
                "request.headers.x-api-key"
            ]
        );
    }

    #[test]
    fn url_query_values() {
        let r = Redactor::default();
        let sig = "8a2f3c1e9d4b7a6f5e0c2d1b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f";
        let sts = "IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJH";
        let url = format!(
            "https://bucket.s3.amazonaws.com/backups/db%20dump.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240812%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20240812T092328Z&X-Amz-Expires=3600&x-amz-security-token={sts}\
             &X-Amz-SignedHeaders=host&X-AMZ-SIGNATURE={sig}"
        );
        let mut redacted = Vec::new();
        let out = r.url(&url, &mut redacted).expect("changed");
        let sts_decoded = "IQoJb3JpZ2luX2VjEJr///////wEaCXVzLWVhc3QtMSJH";
        assert_eq!(
            out,
            format!(
                "https://bucket.s3.amazonaws.com/backups/db%20dump.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240812%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20240812T092328Z&X-Amz-Expires=3600&x-amz-security-token={}\
                 &X-Amz-SignedHeaders=host&X-AMZ-SIGNATURE={}",
                url_fp(sts),
                url_fp(sig)
            )
        );
        // Fingerprint over the decoded value: it matches the header fingerprint of the token.
        assert_eq!(
            url_fp(sts),
            fp(sts_decoded)
                .replace('<', "%3C")
                .replace('>', "%3E")
                .replace('=', "%3D")
                .replace(' ', "%20")
        );
        assert!(!out.contains(&sig[..16]) && !out.contains(&sts[..16]));
        assert_eq!(redacted, ["request.url"]);
        assert_eq!(r.url(&out, &mut redacted), None, "idempotent");

        let out = r
            .url(
                "http://api.example/v1?Token=abc&q=a+b%2Fc&Key=AIzaSy0&page=2&key=",
                &mut redacted,
            )
            .expect("changed");
        assert_eq!(
            out,
            "http://api.example/v1?Token=%3Credacted%20len%3D3%20sha256%3Dba7816bf%3E&q=a+b%2Fc\
             &Key={}&page=2&key="
                .replace("{}", &url_fp("AIzaSy0"))
        );
        assert_eq!(redacted, ["request.url"], "reported once");
    }

    #[test]
    fn url_common_paths_return_none() {
        let r = Redactor::default();
        let mut redacted = Vec::new();
        for url in [
            "https://example.com/",
            "https://example.com/path/only",
            "https://example.com/?",
            "https://example.com/?list-type=2&prefix=backups%2F",
            "https://example.com/?token&keyword=x&tokens=y",
            "https://example.com/p#token=frag",
        ] {
            assert_eq!(r.url(url, &mut redacted), None, "{url}");
        }
        assert!(redacted.is_empty());
        // The fragment is kept byte-identical.
        assert_eq!(
            r.url("https://e/?sig=abc#x", &mut redacted).as_deref(),
            Some("https://e/?sig=%3Credacted%20len%3D3%20sha256%3Dba7816bf%3E#x")
        );
    }

    #[test]
    fn reveal_and_extras() {
        let cfg = RedactorConfig {
            extra_headers: vec!["X-Session-Token".into()],
            extra_query: vec!["Auth".into()],
            reveal: vec!["Cookie".into(), "TOKEN".into()],
            reveal_all: false,
        };
        let r = Redactor::new(&cfg);
        assert!(r.is_active());
        assert_eq!(one_with(&r, "cookie", "a=1").0, "a=1");
        assert_eq!(one_with(&r, "set-cookie", "a=1").0, "a=<redacted>");
        assert_eq!(one_with(&r, "x-session-token", "abc").0, fp("abc"));
        let mut redacted = Vec::new();
        assert_eq!(
            r.url("https://e/?token=abc&AUTH=abc", &mut redacted)
                .as_deref(),
            Some("https://e/?token=abc&AUTH=%3Credacted%20len%3D3%20sha256%3Dba7816bf%3E")
        );
        // An extra query parameter overrides a "keep" entry; reveal wins over extras.
        let r = Redactor::new(&RedactorConfig {
            extra_query: vec!["x-amz-credential".into(), "x-custom".into()],
            extra_headers: vec!["x-custom".into()],
            reveal: vec!["x-custom".into()],
            ..RedactorConfig::default()
        });
        assert!(r
            .url("https://e/?X-Amz-Credential=AKID&x-custom=1", &mut redacted)
            .is_some_and(|u| u.starts_with("https://e/?X-Amz-Credential=%3Credacted")
                && u.ends_with("&x-custom=1")));
        assert_eq!(one_with(&r, "x-custom", "abc").0, "abc");

        for r in [
            Redactor::disabled(),
            Redactor::new(&RedactorConfig {
                reveal_all: true,
                extra_headers: vec!["x-custom".into()],
                ..RedactorConfig::default()
            }),
        ] {
            assert!(!r.is_active());
            let (out, redacted) = one_with(&r, "authorization", "Basic YWxpY2U6czNjcjN0");
            assert_eq!(out, "Basic YWxpY2U6czNjcjN0");
            assert!(redacted.is_empty());
            assert_eq!(r.url("https://e/?sig=abc", &mut Vec::new()), None);
        }
    }

    #[test]
    fn redacted_form_grammar() {
        for ok in [
            "<redacted>",
            "<redacted len=3 sha256=ba7816bf>",
            "<redacted user=alice>",
            r#"<redacted user="a \"b\" > c">"#,
            "<redacted jwt>",
            "<redacted jwt alg=RS256 aud=a,b exp=1>",
        ] {
            assert!(is_redacted_form(ok), "{ok}");
        }
        for bad in [
            "",
            "<redacted",
            "<redacted> ",
            "<redacted >",
            "<redacted foo=1>",
            "<redacted len=>",
            "<redacted user=\"open>",
            "<redacted user=a> secret",
            "<redacted alg=x jwt>",
            "<redacted user=a>>",
        ] {
            assert!(!is_redacted_form(bad), "{bad}");
        }
        assert!(is_url_redacted_form(
            "%3Credacted%20len%3D3%20sha256%3Dba7816bf%3E"
        ));
        assert!(!is_url_redacted_form(
            "%3Credacted%20len%3D%20sha256%3Dba7816bf%3E"
        ));
        assert!(!is_url_redacted_form(
            "%3Credacted%20len%3D3%20sha256%3Dba7816bf%3Ex"
        ));
    }

    /// A few hundred generated garbage values through every rule: no panic, and a second pass
    /// changes nothing.
    #[test]
    fn garbage_never_panics_and_is_idempotent() {
        const PIECES: &[&str] = &[
            "Bearer ",
            "Basic ",
            "Digest ",
            "AWS4-HMAC-SHA256 ",
            "Credential=",
            "Signature=",
            "SignedHeaders=",
            ", ",
            "<redacted",
            ">",
            " ",
            "\t",
            "\n",
            "\r",
            ";",
            "=",
            ",",
            ".",
            "%",
            "%3C",
            "%zz",
            "&",
            "?",
            "#",
            "\"",
            "\\",
            "eyJhbGciOiJIUzI1NiJ9",
            "e30",
            "YTpi",
            "token=",
            "KEY=",
            "sig=",
            "é",
            "\u{0}",
            "\u{7f}",
            "\u{1F600}",
            "\u{FFFD}",
            "Path=/",
            "Secure",
            "jwt",
            "user=",
            "len=",
            "sha256=",
        ];
        let names = [
            "authorization",
            "proxy-authorization",
            "cookie",
            "set-cookie",
            "x-api-key",
            "x-extra",
        ];
        let r = Redactor::new(&RedactorConfig {
            extra_headers: vec!["x-extra".into()],
            ..RedactorConfig::default()
        });
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..600 {
            let mut s = String::new();
            for _ in 0..next() % 24 {
                match next() % 3 {
                    0 => s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]),
                    1 => s.push(char::from((next() % 95) as u8 + 0x20)),
                    _ => s.push(char::from_u32((next() % 0x3000) as u32).unwrap_or('x')),
                }
            }
            let mut headers: Vec<Header> = names.iter().map(|n| Header::new(*n, &s)).collect();
            let mut redacted = Vec::new();
            r.headers(&mut headers, "h", &mut redacted);
            let first = headers.clone();
            r.headers(&mut headers, "h", &mut redacted);
            assert_eq!(headers, first, "input {s:?}");

            let url = format!("https://h/p?{s}");
            let once = r.url(&url, &mut redacted);
            if let Some(once) = once {
                assert_eq!(r.url(&once, &mut redacted), None, "input {s:?}");
            }
        }
        // Huge values.
        let huge = "A".repeat(1 << 20);
        for value in [
            format!("Bearer {huge}"),
            format!("Basic {huge}"),
            huge.clone(),
        ] {
            let (out, _) = one_with(&r, "authorization", &value);
            assert!(out.len() < 100);
        }
        assert!(r
            .url(&format!("https://h/?token={huge}"), &mut Vec::new())
            .is_some());
    }
}
