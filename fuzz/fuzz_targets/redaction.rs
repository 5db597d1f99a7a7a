//! Redaction rules (proxy/src/redact/) on arbitrary header values and URLs: never panics;
//! idempotent (a second pass changes nothing and reports nothing new, as a collector that
//! redacts again relies on); only secret-bearing headers change; outside the query a URL stays
//! byte-identical; and secrets planted in well-formed credentials never survive.
#![no_main]

use base64::Engine as _;
use flowtap::redact::{Redactor, RedactorConfig};
use flowtap_schema::Header;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Header names the input can pick: every rule, an extra one, and one that is never redacted.
const NAMES: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-amz-security-token",
    "x-extra-secret",
    "user-agent",
    "Authorization",
];

/// Every fixed text the planted credentials and their redacted forms are made of.
const TEMPLATES: &str = "AWS4-HMAC-SHA256 Credential=/20240101/eu-west-3/s3/aws4_request, \
    SignedHeaders=host;x-amz-date, Signature=<redacted> Basic Bearer Digest response= \
    <redacted user= len= sha256=> a=b; sid= Path=/ https://h.example/p?u=&token=&X-Amz-Signature= \
    %3Credacted%20len%3D%20sha256%3D%3E";

fn redactors() -> &'static [Redactor; 2] {
    static R: OnceLock<[Redactor; 2]> = OnceLock::new();
    R.get_or_init(|| {
        [
            Redactor::default(),
            Redactor::new(&RedactorConfig {
                extra_headers: vec!["X-Extra-Secret".into()],
                extra_query: vec!["session".into()],
                reveal: vec!["cookie".into()],
                reveal_all: false,
            }),
        ]
    })
}

/// A planted secret: long enough and plain enough that finding it in the output means a leak,
/// not a coincidence with the placeholder text.
fn plantable(s: &str) -> bool {
    s.len() >= 8 && s.bytes().all(|b| b.is_ascii_alphanumeric()) && !"redacted".contains(s)
}

fn check_headers(r: &Redactor, headers: Vec<Header>) -> Vec<Header> {
    let original = headers.clone();
    let mut once = headers;
    let mut redacted = Vec::new();
    r.headers(&mut once, "request.headers", &mut redacted);
    assert_eq!(once.len(), original.len());
    for (before, after) in original.iter().zip(&once) {
        assert_eq!(before.name, after.name, "names never change");
        let reported = redacted.contains(&format!("request.headers.{}", before.name));
        if before.value != after.value {
            assert!(reported, "{} changed but is not in `redacted`", before.name);
        }
        if before.name == "user-agent" {
            assert_eq!(before.value, after.value, "user-agent is not a secret");
        }
    }
    let mut twice = once.clone();
    let mut again = Vec::new();
    r.headers(&mut twice, "request.headers", &mut again);
    assert_eq!(twice, once, "second pass changed {:?}", original);
    assert!(again.is_empty(), "second pass reported {again:?} for {original:?}");
    once
}

fn check_url(r: &Redactor, url: &str) {
    let mut redacted = Vec::new();
    let Some(out) = r.url(url, &mut redacted) else {
        assert!(redacted.is_empty());
        return;
    };
    assert_eq!(redacted, ["request.url"]);
    let cut = url.find('?').expect("a changed URL has a query");
    assert_eq!(&out[..=cut], &url[..=cut], "before the query");
    if let Some(frag) = url[cut..].find('#') {
        let tail = &url[cut + frag..];
        assert!(out.ends_with(tail), "fragment of {url:?} changed: {out:?}");
    }
    assert_eq!(r.url(&out, &mut Vec::new()), None, "second pass changed {out:?}");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let r = &redactors()[usize::from(data[0] & 1)];
    let which = usize::from(data[0] >> 1) % NAMES.len();
    let text = String::from_utf8_lossy(&data[1..]).into_owned();

    // 1. The value as it came, under the chosen header and under every header at once.
    check_headers(r, vec![Header::new(NAMES[which], text.clone())]);
    check_headers(r, NAMES.iter().map(|n| Header::new(*n, text.clone())).collect());

    // 2. The text as a URL query, and with a scheme in front.
    check_url(r, &format!("https://h.example/p?{text}"));
    check_url(r, &text);

    // 3. Planted secrets in well-formed credentials: the secret must not survive. The user /
    //    key id around it is reduced to ASCII letters and digits, so the secret can only show
    //    up in the output by leaking, not by colliding with the kept parts or the templates.
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let (left, right) = text.split_at(mid);
    let secret = right.trim();
    let user: String = left.chars().filter(char::is_ascii_alphanumeric).collect();
    if plantable(secret) && !user.contains(secret) && !TEMPLATES.contains(secret) {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        let sigv4 = format!(
            "AWS4-HMAC-SHA256 Credential={user}/20240101/eu-west-3/s3/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={secret}"
        );
        for (name, value) in [
            ("authorization", format!("Basic {basic}")),
            ("proxy-authorization", format!("Basic {basic}")),
            ("authorization", format!("Bearer {secret}")),
            ("authorization", sigv4),
            ("authorization", format!("Digest response={secret}")),
            ("x-api-key", secret.to_string()),
            ("cookie", format!("a=b; sid={secret}")),
            ("set-cookie", format!("sid={secret}; Path=/")),
        ] {
            let out = check_headers(&redactors()[0], vec![Header::new(name, value.clone())]);
            assert!(
                !out[0].value.contains(secret),
                "{secret:?} survived in {name}: {value:?} -> {:?}",
                out[0].value
            );
        }
        let url = format!("https://h.example/p?u={user}&token={secret}&X-Amz-Signature={secret}");
        let out = redactors()[0]
            .url(&url, &mut Vec::new())
            .expect("a URL with a token changes");
        assert!(
            !out.replacen(&format!("u={user}&"), "", 1).contains(secret),
            "{secret:?} survived in {url:?} -> {out:?}"
        );
    }
});
