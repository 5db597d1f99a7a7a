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
//!
//! Where things are: this file holds the rules in force ([`Redactor`], the header and query
//! tables) and applies them; `authorization.rs` renders `authorization` values (SigV4, Basic,
//! JWT bearer tokens), `cookie.rs` `cookie` and `set-cookie`, and `form.rs` the `<redacted …>`
//! grammar: fingerprints, kept values, and recognising a value that is already redacted.

mod authorization;
mod cookie;
mod form;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

use flowtap_schema::Header;

use authorization::redact_authorization;
use cookie::{redact_cookie, redact_set_cookie};
pub use form::MAX_KEPT_VALUE;
use form::{is_redacted_form, is_url_redacted_form, push_fingerprint, push_url_fingerprint};

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

/// An HTTP token (RFC 9110 tchar).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
