//! The HTTP(S) client the network sinks share: hyper with rustls (ring provider), the system
//! roots plus `--sink-ca`, a timeout per request and a cap on response bodies.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

/// A whole request, connect to last response byte: a bulk request to a loaded cluster can take
/// seconds; longer means the service is stuck and the batch should be retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read: an Elasticsearch bulk response lists every item (a few hundred
/// bytes each, for batches of a few thousand records).
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Idle keep-alive connections are closed after this: services behind load balancers drop
/// idle connections after a minute or so.
const POOL_IDLE: Duration = Duration::from_secs(50);

#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Client {
    pub fn new(extra_ca_pem: Option<&[u8]>) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = extra_ca_pem {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("bad certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate: {e}"))?;
                n += 1;
            }
            if n == 0 {
                return Err("no certificate in the file".into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(Client { inner })
    }

    /// POSTs (or PUTs) `body` and reads the whole response.
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: &[(&str, HeaderValue)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(uri.clone());
        for (name, value) in headers {
            req = req.header(*name, value.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| flowtap::error_chain(&e))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| format!("no response within {}s", REQUEST_TIMEOUT.as_secs()))?
    }
}

/// Splits `user:password@` out of a URL: the URL without it, and the Basic credentials.
pub fn split_credentials(url: &str) -> Result<(Uri, Option<HeaderValue>), String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("{url}: no host"));
    };
    let Some((userinfo, hostport)) = authority
        .as_str()
        .rsplit_once('@')
        .map(|(u, h)| (u.to_string(), h.to_string()))
    else {
        return Ok((uri, None));
    };
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(percent_decode(&userinfo));
    let header = HeaderValue::from_str(&format!("Basic {basic}"))
        .map_err(|_| format!("{url}: bad credentials"))?;
    let mut parts = uri.into_parts();
    parts.authority = Some(hostport.parse().map_err(|e| format!("{url}: {e}"))?);
    let uri = Uri::from_parts(parts).map_err(|e| format!("{url}: {e}"))?;
    Ok((uri, Some(header)))
}

/// `%40` -> `@` and so on, for credentials written into a URL.
fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `base` with `path` appended (base has no trailing slash).
pub fn join(base: &Uri, path: &str) -> Result<Uri, String> {
    let prefix = base.path().trim_end_matches('/');
    let pq = match base.query() {
        Some(q) => format!("{prefix}{path}?{q}"),
        None => format!("{prefix}{path}"),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("{base}: {e}"))?);
    Uri::from_parts(parts).map_err(|e| format!("{base}: {e}"))
}

/// The start of a response body, for a log line.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let (uri, auth) = split_credentials("https://elastic:p%40ss@es.example:9200").expect("ok");
        assert_eq!(uri.to_string(), "https://es.example:9200/");
        // base64("elastic:p@ss")
        assert_eq!(
            auth.expect("basic").to_str().expect("ascii"),
            "Basic ZWxhc3RpYzpwQHNz"
        );
        let (uri, auth) = split_credentials("http://loki:3100").expect("ok");
        assert_eq!(uri.to_string(), "http://loki:3100/");
        assert!(auth.is_none());
    }

    #[test]
    fn joins_paths() {
        let base: Uri = "http://loki:3100/prefix".parse().expect("uri");
        assert_eq!(
            join(&base, "/loki/api/v1/push").expect("join").to_string(),
            "http://loki:3100/prefix/loki/api/v1/push"
        );
    }
}
