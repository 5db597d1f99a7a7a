//! The proxy's own pages, for origin-form requests on its port: `/healthz` for probes,
//! `/metrics` for Prometheus, `/ca.pem` so a client can fetch the CA to trust.

use super::{plain, Response, Shared};
use hyper::StatusCode;

pub fn page(shared: &Shared, path: &str) -> Option<Response> {
    let r = match path {
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let mut r = plain(
                StatusCode::OK,
                shared.metrics.render(shared.leaves.minted()),
            );
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/ca.pem" => {
            let mut r = plain(StatusCode::OK, shared.ca_pem.clone());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-pem-file"),
            );
            r
        }
        _ => return None,
    };
    Some(r)
}
