//! The admin port: `GET /metrics` (Prometheus text) and `GET /healthz`.
//!
//! /healthz answers 200 `ok` while every acking sink (files, stdout) can write, and 503 naming
//! the failing sink otherwise: a collector that cannot write holds back its acknowledgements,
//! which a probe should see. Network sinks do not make it unhealthy: their outages are absorbed
//! by their queues and shown on /metrics (`flowtap_collector_sink_up`).

use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Names of the sinks whose failure makes the collector unhealthy.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub acking_sinks: Vec<String>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&admin, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn route(admin: &Admin, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            admin.metrics.render(),
        ),
        "/healthz" => {
            let failing: Vec<String> = admin
                .metrics
                .sinks()
                .iter()
                .filter(|s| admin.acking_sinks.contains(&s.name) && !s.up.load(Relaxed))
                .map(|s| s.name.clone())
                .collect();
            if failing.is_empty() {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("failing sinks: {}\n", failing.join(", ")),
                )
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
