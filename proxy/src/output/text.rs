//! The human view of a record, close to mitmdump's default output.
//!
//! ```text
//! 10.0.0.7:51234: GET https://example.org/index.html HTTP/1.1
//!  << HTTP/1.1 200 OK 1.2k 47ms
//! 10.0.0.7:51240: CONNECT pinned.example:443 (tunnel, tls not intercepted) ↑1.9k ↓4.6k
//! ```
//!
//! A gRPC call's status follows its response line (`grpc NOT_FOUND: no such thing`), since
//! its HTTP status is 200 whatever happened. Verbose adds the headers, four spaces in, under
//! the line they belong to, and the trailers under ` << trailers`; bodies are never printed. Everything a peer controls is escaped on the way out: control characters become
//! `\xHH` and bidirectional overrides `\u{HHHH}`, so nothing in a record can move the cursor,
//! recolour the terminal or reorder what a person reads.

use std::fmt::Write as _;

use super::rpc;
use flowtap_schema::{Endpoint, Error, Flow, Header, Request, Response};

/// Appends the text form of one record to `out`. verbose = headers too (mitmdump -v).
pub fn format(flow: &Flow, verbose: bool, out: &mut String) {
    match flow.kind.as_str() {
        "http" => http(flow, verbose, out),
        "tunnel" => tunnel(flow, out),
        _ => other(flow, out),
    }
}

fn http(flow: &Flow, verbose: bool, out: &mut String) {
    client(flow.client.as_ref(), out);
    out.push_str(": ");
    match &flow.request {
        Some(request) => {
            push_clean(out, &request.method);
            out.push(' ');
            push_clean(out, &request.url);
            if !request.http_version.is_empty() {
                out.push(' ');
                push_clean(out, &request.http_version);
            }
            out.push('\n');
            if verbose {
                headers(&request.headers, out);
            }
        }
        None => out.push_str("<no request>\n"),
    }
    if let Some(response) = &flow.response {
        out.push_str(" <<");
        if !response.http_version.is_empty() {
            out.push(' ');
            push_clean(out, &response.http_version);
        }
        let _ = write!(out, " {}", response.status);
        let reason = match response.reason.as_str() {
            "" => reason_phrase(response.status),
            given => given,
        };
        if !reason.is_empty() {
            out.push(' ');
            push_clean(out, reason);
        }
        if let Some(size) = response.body_size {
            out.push(' ');
            out.push_str(&pretty_size(size));
        }
        if let Some(ms) = flow.duration_ms {
            out.push(' ');
            out.push_str(&pretty_ms(ms));
        }
        grpc_status(flow.request.as_ref(), response, out);
        out.push('\n');
        if verbose {
            headers(&response.headers, out);
            if !response.trailers.is_empty() {
                out.push_str(" << trailers\n");
                headers(&response.trailers, out);
            }
        }
    }
    if let Some(error) = &flow.error {
        error_line(error, out);
    }
}

fn tunnel(flow: &Flow, out: &mut String) {
    client(flow.client.as_ref(), out);
    out.push_str(": CONNECT ");
    server(flow, out);
    out.push_str(" (tunnel");
    if flow
        .tls
        .as_ref()
        .is_some_and(|tls| tls.intercepted != Some(true))
    {
        out.push_str(", tls not intercepted");
        if flow
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_cert_requested == Some(true))
        {
            out.push_str(": the server asked for a client certificate");
        }
        if let Some(e) = flow.tls.as_ref().filter(|t| !t.upstream_error.is_empty()) {
            out.push_str(": flowtap's TLS with the server failed: ");
            push_clean(out, &e.upstream_error);
        }
    }
    let _ = writeln!(
        out,
        ") ↑{} ↓{}",
        pretty_size(flow.bytes_up.unwrap_or(0)),
        pretty_size(flow.bytes_down.unwrap_or(0))
    );
    if let Some(error) = &flow.error {
        error_line(error, out);
    }
}

/// A kind this view doesn't know yet: who, what and where, so nothing goes unseen.
fn other(flow: &Flow, out: &mut String) {
    client(flow.client.as_ref(), out);
    out.push_str(": ");
    push_clean(out, &flow.kind);
    if flow.server.is_some() {
        out.push(' ');
        server(flow, out);
    }
    out.push('\n');
    if let Some(error) = &flow.error {
        error_line(error, out);
    }
}

/// ` grpc CODE[: message]` when the response carries a gRPC status: in its trailers, or in its
/// headers for a call that failed at once (a trailers-only response); for a gRPC call answered
/// with another HTTP status, the code its client derived from it (` grpc UNIMPLEMENTED (from
/// HTTP 404)`).
fn grpc_status(request: Option<&Request>, response: &Response, out: &mut String) {
    let Some(status) = rpc::status(response) else {
        return;
    };
    if !status.explicit && !request.is_some_and(rpc::is_call) {
        return;
    }
    out.push_str(" grpc ");
    push_clean(out, status.code);
    if let Some(message) = &status.message {
        out.push_str(": ");
        push_clean(out, message);
    }
    if !status.explicit {
        let _ = write!(out, " (from HTTP {})", response.status);
    }
}

fn error_line(error: &Error, out: &mut String) {
    out.push_str(" << error ");
    push_clean(out, &error.kind);
    if !error.message.is_empty() {
        out.push_str(": ");
        push_clean(out, &error.message);
    }
    out.push('\n');
}

/// `name: value`, four spaces in; a value of several lines (set-cookie) gives one line each.
fn headers(headers: &[Header], out: &mut String) {
    for header in headers {
        for line in header.value.split('\n') {
            out.push_str("    ");
            push_clean(out, &header.name);
            out.push_str(": ");
            push_clean(out, line);
            out.push('\n');
        }
    }
}

fn client(client: Option<&Endpoint>, out: &mut String) {
    match client {
        Some(c) if !c.ip.is_empty() => host_port(&c.ip, c.port, out),
        _ => out.push('-'),
    }
}

fn server(flow: &Flow, out: &mut String) {
    match &flow.server {
        Some(s) if !s.host.is_empty() => host_port(&s.host, s.port, out),
        Some(s) if !s.ip.is_empty() => host_port(&s.ip, s.port, out),
        _ => out.push('-'),
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u32, out: &mut String) {
    if host.contains(':') && !host.starts_with('[') {
        out.push('[');
        push_clean(out, host);
        out.push(']');
    } else {
        push_clean(out, host);
    }
    let _ = write!(out, ":{port}");
}

/// Appends `s` with every control character as `\xHH` and every bidirectional control as
/// `\u{HHHH}`, so that text from a peer can't drive the terminal.
fn push_clean(out: &mut String, s: &str) {
    for c in s.chars() {
        let code = c as u32;
        if c.is_control() {
            // Cc is U+0000–U+001F and U+007F–U+009F: two hex digits always suffice.
            let _ = write!(out, "\\x{code:02x}");
        } else if matches!(code, 0x200e | 0x200f | 0x2028 | 0x2029 | 0x202a..=0x202e | 0x2066..=0x2069)
        {
            let _ = write!(out, "\\u{{{code:04x}}}");
        } else {
            out.push(c);
        }
    }
}

/// Bytes as mitmproxy shows them (`human.pretty_size`): `354b`, `1.2k`, `3.0m`, `120m`.
fn pretty_size(size: u64) -> String {
    if size < 1024 {
        return format!("{size}b");
    }
    let mut s = size as f64 / 1024.0;
    for suffix in ["k", "m", "g"] {
        if s < 99.95 {
            return format!("{s:.1}{suffix}");
        }
        if s < 1024.0 {
            return format!("{s:.0}{suffix}");
        }
        s /= 1024.0;
    }
    if s < 99.95 {
        format!("{s:.1}t")
    } else {
        format!("{s:.0}t")
    }
}

/// Milliseconds: one decimal under 10 ms, whole above (`0.4ms`, `47ms`).
fn pretty_ms(ms: f64) -> String {
    if ms < 9.95 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// The reason phrase HTTP/2 doesn't send, for the statuses one meets (RFC 9110 §15).
fn reason_phrase(status: u32) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use flowtap_schema::{Request, Response, Server, Tls};

    use super::*;

    fn endpoint(ip: &str, port: u32) -> Option<Endpoint> {
        Some(Endpoint {
            ip: ip.into(),
            port,
        })
    }

    fn exchange() -> Flow {
        Flow {
            schema_version: 1,
            kind: "http".into(),
            duration_ms: Some(47.21),
            client: endpoint("10.0.0.7", 51234),
            request: Some(Request {
                method: "GET".into(),
                url: "https://example.org/index.html?q=1".into(),
                http_version: "HTTP/1.1".into(),
                headers: vec![
                    Header::new("host", "example.org"),
                    Header::new("accept", "*/*"),
                ],
                body_size: Some(0),
                ..Default::default()
            }),
            response: Some(Response {
                status: 200,
                reason: "OK".into(),
                http_version: "HTTP/1.1".into(),
                headers: vec![
                    Header::new("content-type", "text/html"),
                    Header::new("set-cookie", "a=1; Path=/\nb=2; Secure"),
                ],
                body_size: Some(1229),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn text(flow: &Flow, verbose: bool) -> String {
        let mut out = String::new();
        format(flow, verbose, &mut out);
        out
    }

    #[test]
    fn http_exchange() {
        assert_eq!(
            text(&exchange(), false),
            "10.0.0.7:51234: GET https://example.org/index.html?q=1 HTTP/1.1\n \
             << HTTP/1.1 200 OK 1.2k 47ms\n"
        );
    }

    #[test]
    fn http_exchange_verbose() {
        assert_eq!(
            text(&exchange(), true),
            "10.0.0.7:51234: GET https://example.org/index.html?q=1 HTTP/1.1\n\
             \x20   host: example.org\n\
             \x20   accept: */*\n \
             << HTTP/1.1 200 OK 1.2k 47ms\n\
             \x20   content-type: text/html\n\
             \x20   set-cookie: a=1; Path=/\n\
             \x20   set-cookie: b=2; Secure\n"
        );
    }

    #[test]
    fn http2_without_reason_and_fast() {
        let mut flow = exchange();
        flow.client = endpoint("fd00::7", 443);
        flow.duration_ms = Some(0.42);
        if let Some(r) = flow.request.as_mut() {
            r.http_version = "HTTP/2.0".into();
        }
        if let Some(r) = flow.response.as_mut() {
            (r.http_version, r.reason, r.body_size) = ("HTTP/2.0".into(), String::new(), Some(354));
        }
        assert_eq!(
            text(&flow, false),
            "[fd00::7]:443: GET https://example.org/index.html?q=1 HTTP/2.0\n \
             << HTTP/2.0 200 OK 354b 0.4ms\n"
        );
    }

    #[test]
    fn http_error_without_response() {
        let mut flow = exchange();
        flow.response = None;
        flow.error = Some(Error {
            kind: "upstream_connect".into(),
            message: "connect to 203.0.113.7:443: connection refused".into(),
        });
        assert_eq!(
            text(&flow, false),
            "10.0.0.7:51234: GET https://example.org/index.html?q=1 HTTP/1.1\n \
             << error upstream_connect: connect to 203.0.113.7:443: connection refused\n"
        );
        flow.request = None;
        flow.client = None;
        assert_eq!(
            text(&flow, false),
            "-: <no request>\n << error upstream_connect: connect to 203.0.113.7:443: connection refused\n"
        );
    }

    #[test]
    fn grpc_status_after_the_response_line() {
        let mut flow = exchange();
        flow.duration_ms = Some(1.4);
        if let Some(r) = flow.response.as_mut() {
            r.headers = vec![Header::new("content-type", "application/grpc")];
            r.trailers = vec![
                Header::new("grpc-status", "5"),
                Header::new("grpc-message", "no such thing: caf%C3%A9 100%25 %zz"),
            ];
            r.body_size = Some(0);
        }
        let want_line =
            " << HTTP/1.1 200 OK 0b 1.4ms grpc NOT_FOUND: no such thing: café 100% %zz\n";
        let short = text(&flow, false);
        assert!(short.ends_with(want_line), "{short}");
        assert_eq!(
            text(&flow, true)
                .split_once(want_line)
                .map(|(_, rest)| rest.to_string()),
            Some(
                "    content-type: application/grpc\n \
                 << trailers\n\
                 \x20   grpc-status: 5\n\
                 \x20   grpc-message: no such thing: caf%C3%A9 100%25 %zz\n"
                    .to_string()
            )
        );
        // A trailers-only response (the call failed at once) has the status in its headers; an
        // unknown code is shown as it came, and a message cannot drive the terminal.
        if let Some(r) = flow.response.as_mut() {
            r.headers = vec![
                Header::new("grpc-status", "99"),
                Header::new("grpc-message", "%1b[2J"),
            ];
            r.trailers.clear();
        }
        assert!(
            text(&flow, false).ends_with(" grpc 99: \\x1b[2J\n"),
            "{}",
            text(&flow, false)
        );
        if let Some(r) = flow.response.as_mut() {
            r.headers = vec![Header::new("grpc-status", "0")];
        }
        assert!(text(&flow, false).ends_with(" 1.4ms grpc OK\n"));
        // A gRPC call answered without a gRPC status (a 404 from a server that does not speak
        // gRPC): the code its client derived. Any other request's 404 stays plain HTTP.
        if let Some(r) = flow.response.as_mut() {
            r.status = 404;
            r.reason = "Not Found".into();
            r.headers = vec![Header::new("content-type", "text/html")];
        }
        assert!(
            text(&flow, false).ends_with(" 404 Not Found 0b 1.4ms\n"),
            "{}",
            text(&flow, false)
        );
        if let Some(q) = flow.request.as_mut() {
            q.headers = vec![Header::new("content-type", "application/grpc+proto")];
        }
        assert!(
            text(&flow, false)
                .ends_with(" 404 Not Found 0b 1.4ms grpc UNIMPLEMENTED (from HTTP 404)\n"),
            "{}",
            text(&flow, false)
        );
    }

    #[test]
    fn http_error_after_response() {
        let mut flow = exchange();
        flow.error = Some(Error {
            kind: "client_closed".into(),
            message: String::new(),
        });
        assert_eq!(
            text(&flow, false),
            "10.0.0.7:51234: GET https://example.org/index.html?q=1 HTTP/1.1\n \
             << HTTP/1.1 200 OK 1.2k 47ms\n \
             << error client_closed\n"
        );
    }

    #[test]
    fn tunnels() {
        let mut flow = Flow {
            schema_version: 1,
            kind: "tunnel".into(),
            client: endpoint("10.0.0.7", 51240),
            server: Some(Server {
                host: "pinned.example".into(),
                port: 443,
                ip: "203.0.113.9".into(),
            }),
            tls: Some(Tls {
                intercepted: Some(false),
                sni: "pinned.example".into(),
                ..Default::default()
            }),
            bytes_up: Some(1900),
            bytes_down: Some(4700),
            ..Default::default()
        };
        assert_eq!(
            text(&flow, true),
            "10.0.0.7:51240: CONNECT pinned.example:443 (tunnel, tls not intercepted) ↑1.9k ↓4.6k\n"
        );
        flow.tls.as_mut().unwrap().client_cert_requested = Some(true);
        assert_eq!(
            text(&flow, true),
            "10.0.0.7:51240: CONNECT pinned.example:443 (tunnel, tls not intercepted: the server asked for a client certificate) ↑1.9k ↓4.6k\n"
        );
        flow.tls = None;
        flow.bytes_down = None;
        flow.error = Some(Error {
            kind: "upstream_closed".into(),
            message: "reset by peer".into(),
        });
        assert_eq!(
            text(&flow, false),
            "10.0.0.7:51240: CONNECT pinned.example:443 (tunnel) ↑1.9k ↓0b\n \
             << error upstream_closed: reset by peer\n"
        );
    }

    #[test]
    fn unknown_kinds_still_show() {
        let flow = Flow {
            kind: "websocket".into(),
            client: endpoint("10.0.0.7", 1),
            ..Default::default()
        };
        assert_eq!(text(&flow, false), "10.0.0.7:1: websocket\n");
    }

    #[test]
    fn peer_text_cannot_drive_the_terminal() {
        let mut flow = exchange();
        if let Some(r) = flow.request.as_mut() {
            r.url = "https://evil.example/\x1b]0;owned\x07\x1b[2J".into();
            r.headers = vec![Header::new("x-a\tb", "v\r\u{9b}31m\u{202e}txt.exe")];
        }
        if let Some(r) = flow.response.as_mut() {
            r.reason = "OK\u{7f}".into();
        }
        let out = text(&flow, true);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(
            out,
            "10.0.0.7:51234: GET https://evil.example/\\x1b]0;owned\\x07\\x1b[2J HTTP/1.1\n\
             \x20   x-a\\x09b: v\\x0d\\x9b31m\\u{202e}txt.exe\n \
             << HTTP/1.1 200 OK\\x7f 1.2k 47ms\n\
             \x20   content-type: text/html\n\
             \x20   set-cookie: a=1; Path=/\n\
             \x20   set-cookie: b=2; Secure\n"
        );
    }

    #[test]
    fn sizes_like_mitmproxy() {
        for (size, shown) in [
            (0, "0b"),
            (354, "354b"),
            (1023, "1023b"),
            (1024, "1.0k"),
            (1536, "1.5k"),
            (102_348, "99.9k"),
            (102_400, "100k"),
            (3 << 20, "3.0m"),
            (100 << 20, "100m"),
            (5 << 30, "5.0g"),
            (2 << 40, "2.0t"),
            (2000 << 40, "2000t"),
        ] {
            assert_eq!(pretty_size(size), shown, "{size}");
        }
    }
}
