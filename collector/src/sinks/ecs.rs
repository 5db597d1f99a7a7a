//! A record as an Elasticsearch document with Elastic Common Schema field names.
//!
//! The ECS fields are what Kibana and a user's queries know (`@timestamp`, `http.*`, `url.*`,
//! `source.*`, `destination.*`, `tls.*`, `event.*`, `user_agent.original`, `error.*`,
//! `observer.*`); the whole record is kept as it is under `flowtap`, so nothing is lost in the
//! mapping.

use flowtap_schema::Flow;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// The ECS version the field names follow.
pub const ECS_VERSION: &str = "9.0.0";

/// `logs-flowtap-default` -> ("logs", "flowtap", "default"): the data stream naming scheme
/// `{type}-{dataset}-{namespace}`; None for a name that does not follow it.
pub fn data_stream_parts(name: &str) -> Option<(String, String, String)> {
    let (kind, rest) = name.split_once('-')?;
    let (dataset, namespace) = rest.rsplit_once('-')?;
    if kind.is_empty() || dataset.is_empty() || namespace.is_empty() {
        return None;
    }
    Some((kind.into(), dataset.into(), namespace.into()))
}

/// The document for one record, to be indexed into the data stream `stream`.
pub fn document(f: &Flow, stream: Option<&(String, String, String)>) -> Value {
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), json!(f.start));
    doc.insert("ecs".into(), json!({"version": ECS_VERSION}));
    doc.insert("message".into(), json!(message(f)));

    let failed = f.error.is_some();
    let status = f.response.as_ref().map(|r| r.status).filter(|s| *s > 0);
    let mut event = json!({
        "kind": "event",
        "category": ["web", "network"],
        "type": if failed { json!(["access", "error"]) } else { json!(["access"]) },
        "outcome": if failed || status.is_some_and(|s| s >= 500) { "failure" } else { "success" },
        "id": f.id,
        "start": f.start,
        "module": "flowtap",
    });
    if let Some(ms) = f.duration_ms {
        event["duration"] = json!((ms * 1_000_000.0).round() as i64);
    }
    if let Some((kind, dataset, namespace)) = stream {
        event["dataset"] = json!(dataset);
        doc.insert(
            "data_stream".into(),
            json!({"type": kind, "dataset": dataset, "namespace": namespace}),
        );
    }
    doc.insert("event".into(), event);

    let mut http = Map::new();
    if let Some(req) = &f.request {
        let mut request = json!({"method": req.method});
        if let Some(n) = req.body_size {
            request["body"] = json!({"bytes": n});
        }
        if let Some(referrer) = header(&req.headers, "referer") {
            request["referrer"] = json!(referrer);
        }
        http.insert("request".into(), request);
        if let Some(v) = version(&req.http_version) {
            http.insert("version".into(), json!(v));
        }
        if let Some(url) = url_fields(&req.url) {
            doc.insert("url".into(), url);
        }
        if let Some(ua) = header(&req.headers, "user-agent") {
            doc.insert("user_agent".into(), json!({"original": ua}));
        }
    }
    if let Some(resp) = &f.response {
        let mut response = json!({"status_code": resp.status});
        if let Some(n) = resp.body_size {
            response["body"] = json!({"bytes": n});
        }
        http.insert("response".into(), response);
    }
    if !http.is_empty() {
        doc.insert("http".into(), Value::Object(http));
    }

    let mut network = json!({"transport": "tcp"});
    if f.kind == "http" {
        network["protocol"] = json!("http");
    } else if !f.upgrade.is_empty() {
        network["protocol"] = json!(f.upgrade.to_ascii_lowercase());
    }
    if let Some(c) = &f.client {
        let mut source = json!({"port": c.port});
        if let Ok(ip) = c.ip.parse::<IpAddr>() {
            source["ip"] = json!(ip.to_string());
            source["address"] = json!(ip.to_string());
            network["type"] = json!(if ip.is_ipv4() { "ipv4" } else { "ipv6" });
        }
        if let Some(up) = f.bytes_up {
            source["bytes"] = json!(up);
        }
        doc.insert("source".into(), source);
    }
    if let Some(s) = &f.server {
        let mut dest = json!({"port": s.port, "address": s.host});
        if s.host.parse::<IpAddr>().is_err() && !s.host.is_empty() {
            dest["domain"] = json!(s.host);
        }
        if let Ok(ip) = s.ip.parse::<IpAddr>() {
            dest["ip"] = json!(ip.to_string());
        }
        if let Some(down) = f.bytes_down {
            dest["bytes"] = json!(down);
        }
        doc.insert("destination".into(), dest);
    }
    if let (Some(up), Some(down)) = (f.bytes_up, f.bytes_down) {
        network["bytes"] = json!(up + down);
    }
    doc.insert("network".into(), network);

    if let Some(t) = &f.tls {
        let mut tls = json!({"version_protocol": "tls", "established": true});
        if let Some(v) = t.client_version.strip_prefix("TLSv") {
            tls["version"] = json!(v);
        }
        if !t.alpn.is_empty() {
            tls["next_protocol"] = json!(t.alpn);
        }
        if !t.sni.is_empty() {
            tls["client"] = json!({"server_name": t.sni});
        }
        doc.insert("tls".into(), tls);
    }
    if let Some(e) = &f.error {
        doc.insert(
            "error".into(),
            json!({"type": e.kind, "message": e.message}),
        );
    }
    if !f.source.is_empty() {
        doc.insert(
            "observer".into(),
            json!({"name": f.source, "type": "proxy", "product": "flowtap", "vendor": "flowtap"}),
        );
    }
    doc.insert(
        "flowtap".into(),
        serde_json::to_value(f).unwrap_or(Value::Null),
    );
    Value::Object(doc)
}

/// "GET https://example.org/ 200", "CONNECT example.org:443 tunnel": Discover's one-line view.
fn message(f: &Flow) -> String {
    match (&f.request, &f.response, &f.error) {
        (Some(req), Some(resp), _) => format!("{} {} {}", req.method, req.url, resp.status),
        (Some(req), None, Some(e)) => format!("{} {} {}", req.method, req.url, e.kind),
        (Some(req), None, None) => format!("{} {}", req.method, req.url),
        _ => {
            let host = f
                .server
                .as_ref()
                .map_or(String::new(), |s| format!("{}:{}", s.host, s.port));
            format!("{} {host}", f.kind)
        }
    }
}

/// "HTTP/1.1" -> "1.1", "HTTP/2.0" -> "2" (ECS `http.version`).
fn version(v: &str) -> Option<&str> {
    match v {
        "HTTP/2.0" | "HTTP/2" => Some("2"),
        "HTTP/3.0" | "HTTP/3" => Some("3"),
        _ => v.strip_prefix("HTTP/"),
    }
}

fn header<'a>(headers: &'a [flowtap_schema::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// `url.*` from a full URL: full, scheme, domain, port (explicit or the scheme's), path, query
/// (without `?`; empty when `?` ends the URL), fragment.
fn url_fields(full: &str) -> Option<Value> {
    let mut url = json!({"full": full, "original": full});
    let (scheme, rest) = full.split_once("://")?;
    url["scheme"] = json!(scheme.to_ascii_lowercase());
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    url["domain"] = json!(host);
    let port = port.and_then(|p| p.parse::<u16>().ok()).or(match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    });
    if let Some(p) = port {
        url["port"] = json!(p);
    }
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((a, b)) => (a, Some(b)),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (before_fragment, None),
    };
    url["path"] = json!(if path.is_empty() { "/" } else { path });
    if let Some(q) = query {
        url["query"] = json!(q);
    }
    if let Some(fr) = fragment {
        url["fragment"] = json!(fr);
    }
    Some(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtap_schema::{Endpoint, Header, Request, Response, Server, Tls};

    #[test]
    fn ecs_fields() {
        let f = Flow {
            schema_version: 1,
            kind: "http".into(),
            id: "0192f0c4-7c1e-7cc3-9a51-6f1d2b1e8a10".into(),
            start: "2024-08-12T09:23:28.535123Z".into(),
            duration_ms: Some(47.21),
            client: Some(Endpoint {
                ip: "10.76.3.78".into(),
                port: 57318,
            }),
            server: Some(Server {
                host: "s3.example.org".into(),
                port: 443,
                ip: "203.0.113.7".into(),
            }),
            tls: Some(Tls {
                client_version: "TLSv1.3".into(),
                alpn: "h2".into(),
                sni: "s3.example.org".into(),
                ..Default::default()
            }),
            request: Some(Request {
                method: "GET".into(),
                url: "https://s3.example.org/bucket?list-type=2".into(),
                http_version: "HTTP/2.0".into(),
                headers: vec![Header::new("user-agent", "aws-sdk-go-v2/1.21.0")],
                body_size: Some(0),
                ..Default::default()
            }),
            response: Some(Response {
                status: 200,
                body_size: Some(354),
                ..Default::default()
            }),
            source: "proxy-a".into(),
            ..Default::default()
        };
        let parts = data_stream_parts("logs-flowtap-default");
        let d = document(&f, parts.as_ref());
        assert_eq!(d["@timestamp"], "2024-08-12T09:23:28.535123Z");
        assert_eq!(d["http"]["request"]["method"], "GET");
        assert_eq!(d["http"]["response"]["status_code"], 200);
        assert_eq!(d["http"]["version"], "2");
        assert_eq!(
            d["url"]["full"],
            "https://s3.example.org/bucket?list-type=2"
        );
        assert_eq!(d["url"]["domain"], "s3.example.org");
        assert_eq!(d["url"]["port"], 443);
        assert_eq!(d["url"]["path"], "/bucket");
        assert_eq!(d["url"]["query"], "list-type=2");
        assert_eq!(d["source"]["ip"], "10.76.3.78");
        assert_eq!(d["destination"]["port"], 443);
        assert_eq!(d["destination"]["ip"], "203.0.113.7");
        assert_eq!(d["tls"]["version"], "1.3");
        assert_eq!(d["event"]["duration"], 47_210_000);
        assert_eq!(d["event"]["dataset"], "flowtap");
        assert_eq!(d["data_stream"]["namespace"], "default");
        assert_eq!(d["user_agent"]["original"], "aws-sdk-go-v2/1.21.0");
        assert_eq!(d["observer"]["name"], "proxy-a");
        assert_eq!(d["flowtap"]["id"], f.id);
    }

    #[test]
    fn urls() {
        let u = url_fields("http://[::1]:8080/a?#x").expect("url");
        assert_eq!(u["domain"], "::1");
        assert_eq!(u["port"], 8080);
        assert_eq!(u["query"], "");
        assert_eq!(u["fragment"], "x");
        let u = url_fields("http://example.org").expect("url");
        assert_eq!(u["path"], "/");
        assert_eq!(u["port"], 80);
        assert!(u.get("query").is_none());
    }
}
