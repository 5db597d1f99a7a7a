//! The gRPC facts of an HTTP record, read back from what the record already holds: the method
//! (the request path of a call whose `content-type` is `application/grpc`), and the status the
//! client got (`grpc-status` and `grpc-message` in the trailers, or in the headers of a
//! trailers-only response, or derived from a non-200 HTTP status as gRPC clients derive it).
//! The text view and the OpenTelemetry spans both read them here.

use flowtap_schema::{Header, Request, Response};
use std::borrow::Cow;

/// gRPC status codes by number (grpc/doc/statuscodes.md).
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Whether the request is a gRPC call: `application/grpc`, `application/grpc+proto` and the
/// like (gRPC over HTTP/2, "Requests"). gRPC-Web (`application/grpc-web`) is not: its status
/// travels inside the body.
pub fn is_call(request: &Request) -> bool {
    Header::find(&request.headers, "content-type").is_some_and(|ct| {
        let ct = ct.trim_start();
        ct.get(..16)
            .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
            && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';' | b' '))
    })
}

/// `package.Service/Method` from the call's URL (path `/package.Service/Method`); when the
/// path does not have that shape, the path as it came (`Err`).
pub fn method(url: &str) -> Result<&str, &str> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .find('/')
        .map_or("", |slash| &after_scheme[slash..]);
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let named = path.strip_prefix('/').and_then(|full| {
        let (service, name) = full.split_once('/')?;
        (!service.is_empty() && !name.is_empty() && !name.contains('/')).then_some(full)
    });
    named.ok_or(path)
}

/// A gRPC status as the response gave it.
#[derive(Debug, PartialEq, Eq)]
pub struct Status<'a> {
    /// The code's name (`NOT_FOUND`), or the field as it came when it is not a known number.
    pub code: &'a str,
    /// Whether `code` is `OK`.
    pub ok: bool,
    /// `grpc-message`, percent-decoded (gRPC over HTTP/2, "Responses"); a bad escape is kept.
    pub message: Option<Cow<'a, str>>,
    /// Whether it came from `grpc-status` (true) or was derived from the HTTP status (false).
    pub explicit: bool,
}

/// The status of the call: `grpc-status` in the trailers, else in the headers (a call that
/// failed at once), else, for a non-200 answer, the code a gRPC client derives from the HTTP
/// status (grpc/doc/http-grpc-status-mapping.md). `None` for a 200 without a status (the
/// stream ended early; the record's `error` says how).
pub fn status(response: &Response) -> Option<Status<'_>> {
    let field = |name: &str| {
        Header::find(&response.trailers, name).or_else(|| Header::find(&response.headers, name))
    };
    if let Some(code) = field("grpc-status") {
        let known = code.trim().parse::<usize>().ok().and_then(|c| CODES.get(c));
        let message = field("grpc-message").filter(|m| !m.is_empty()).map(|m| {
            match crate::percent_decode(m.as_bytes()) {
                bytes if bytes == m.as_bytes() => Cow::Borrowed(m),
                bytes => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
            }
        });
        return Some(Status {
            code: known.copied().unwrap_or(code),
            ok: known == Some(&"OK"),
            message,
            explicit: true,
        });
    }
    let code = match response.status {
        200 => return None,
        400 => "INTERNAL",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "UNIMPLEMENTED",
        429 | 502..=504 => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    Some(Status {
        code,
        ok: false,
        message: None,
        explicit: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ct: &str) -> Request {
        Request {
            method: "POST".into(),
            url: "https://api.example:443/pkg.v1.Echo/Say?x=1".into(),
            headers: vec![Header::new("content-type", ct)],
            ..Default::default()
        }
    }

    fn response(status: u32, headers: Vec<Header>, trailers: Vec<Header>) -> Response {
        Response {
            status,
            headers,
            trailers,
            ..Default::default()
        }
    }

    #[test]
    fn calls_by_content_type() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(is_call(&request(ct)), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_call(&request(ct)), "{ct}");
        }
        assert!(!is_call(&Request::default()));
    }

    #[test]
    fn method_from_the_path() {
        assert_eq!(
            method("https://api.example:443/pkg.v1.Echo/Say?x=1"),
            Ok("pkg.v1.Echo/Say")
        );
        assert_eq!(method("http://[::1]:9000/Echo/Say"), Ok("Echo/Say"));
        assert_eq!(method("/a.B/C"), Ok("a.B/C"));
        for (bad, path) in [
            ("https://h/", "/"),
            ("https://h/only?q", "/only"),
            ("https://h/a/b/c", "/a/b/c"),
            ("https://h//m", "//m"),
            ("https://h/s/", "/s/"),
            ("https://h", ""),
        ] {
            assert_eq!(method(bad), Err(path), "{bad}");
        }
    }

    #[test]
    fn status_from_trailers_then_headers_then_http() {
        let s = response(
            200,
            vec![Header::new("grpc-status", "0")],
            vec![
                Header::new("grpc-status", "5"),
                Header::new("grpc-message", "caf%C3%A9 100%25 %zz"),
            ],
        );
        let got = status(&s).unwrap();
        assert_eq!(got.code, "NOT_FOUND");
        assert!(!got.ok && got.explicit);
        assert_eq!(got.message.as_deref(), Some("café 100% %zz"));

        let only = response(200, vec![Header::new("grpc-status", "0")], vec![]);
        let got = status(&only).unwrap();
        assert!(got.ok && got.code == "OK" && got.message.is_none());

        let odd = response(200, vec![], vec![Header::new("grpc-status", "99")]);
        assert_eq!(status(&odd).unwrap().code, "99");
        assert!(!status(&odd).unwrap().ok);

        assert_eq!(status(&response(200, vec![], vec![])), None);
        for (http, want) in [
            (404, "UNIMPLEMENTED"),
            (503, "UNAVAILABLE"),
            (429, "UNAVAILABLE"),
            (401, "UNAUTHENTICATED"),
            (403, "PERMISSION_DENIED"),
            (400, "INTERNAL"),
            (500, "UNKNOWN"),
        ] {
            let r = response(http, vec![], vec![]);
            let got = status(&r).unwrap();
            assert_eq!(
                (got.code, got.ok, got.explicit),
                (want, false, false),
                "{http}"
            );
        }
    }
}
