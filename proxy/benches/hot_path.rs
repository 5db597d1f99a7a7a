//! Micro-benchmarks of the work done per exchange: building a record from its facts, encoding
//! it (JSON lines and protobuf), redaction, and minting a leaf certificate.
//! Run with `cargo bench -p flowtap`; see bench/README.md for the side-by-side benchmark.

use criterion::{criterion_group, criterion_main, Criterion};
use flowtap::record::build::to_flow;
use flowtap::record::capture::{Capture, CaptureMode};
use flowtap::record::{
    BodyFacts, ConnInfo, ConnectTimings, Exchange, HeaderList, Mode, Record, RequestBodySlot,
    RequestHead, ResponseHead, ServerFacts, TlsFacts,
};
use flowtap::redact::{Redactor, RedactorConfig};
use flowtap::tls::ca::CertificateAuthority;
use http::{HeaderMap, Method, StatusCode, Version};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The allocator the flowtap binary uses (mimalloc overriding `malloc`), so the numbers match it.
use libmimalloc_sys as _;

fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().expect("valid header"));
    }
    h
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderList {
    HeaderList::from_map(&header_map(pairs))
}

/// The response head of [`exchange`], as hyper hands it over.
const RESPONSE_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/xml"),
    ("content-length", "354"),
    ("x-amz-request-id", "4442587FB7D0A2F9"),
    ("date", "Mon, 12 Aug 2024 09:23:28 GMT"),
    ("server", "AmazonS3"),
];

/// A typical intercepted HTTPS exchange: an SDK call with a SigV4 signature and a JSON answer.
fn exchange(conn: &Arc<ConnInfo>, tls: &Arc<TlsFacts>) -> Record {
    let started = Instant::now();
    let slot = Arc::new(RequestBodySlot::default());
    *slot.facts.lock().expect("lock") = Some(BodyFacts {
        capture: Capture::new(CaptureMode::None, 0),
        trailers: None,
        end: Some(started),
        error: None,
    });
    Record::Http(Box::new(Exchange {
        conn: conn.clone(),
        tls: Some(tls.clone()),
        start: SystemTime::now(),
        started,
        server: ServerFacts {
            host: "s3.example.org".into(),
            port: 443,
            ip: Some("203.0.113.7".parse().expect("ip")),
        },
        request: RequestHead {
            method: Method::GET,
            url: "https://s3.example.org/bucket?list-type=2&prefix=backups%2F".into(),
            version: Version::HTTP_2,
            headers: headers(&[
                ("user-agent", "aws-sdk-go-v2/1.21.0 os/linux lang/go#1.21"),
                ("x-amz-date", "20240812T092328Z"),
                ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
                ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240812/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
                ("accept-encoding", "identity"),
            ]),
        },
        request_body: Some(slot),
        response: Some(ResponseHead {
            status: StatusCode::OK,
            version: Version::HTTP_2,
            headers: headers(RESPONSE_HEADERS),
        }),
        response_body: Some(BodyFacts {
            capture: Capture::new(CaptureMode::None, 0),
            trailers: None,
            end: Some(started + Duration::from_millis(47)),
            error: None,
        }),
        connect: Some(ConnectTimings {
            dns: Some(Duration::from_micros(360)),
            connect: Duration::from_micros(1900),
            tls: Some(Duration::from_micros(6200)),
        }),
        upstream_tls_version: Some("TLSv1.3"),
        upstream_ready: Some(started + Duration::from_millis(8)),
        response_at: Some(started + Duration::from_millis(46)),
        end: Some(started + Duration::from_millis(47)),
        error: None,
    }))
}

fn benches(c: &mut Criterion) {
    let conn = ConnInfo::new("10.76.3.78:57318".parse().expect("addr"), Mode::Regular);
    let tls = Arc::new(TlsFacts {
        intercepted: true,
        sni: Some("s3.example.org".into()),
        client_alpn: vec!["h2".into(), "http/1.1".into()],
        alpn: Some("h2".into()),
        client_version: Some("TLSv1.3"),
        server_version: Some("TLSv1.3"),
        upstream_verified: Some(true),
        client_cert_requested: false,
        upstream_error: None,
    });
    let redactor = Redactor::new(&RedactorConfig::default());
    let flow = to_flow(exchange(&conn, &tls), &redactor);

    let response_map = header_map(RESPONSE_HEADERS);
    c.bench_function("record/copy a response head (traffic path)", |b| {
        b.iter(|| HeaderList::from_map(black_box(&response_map)))
    });
    c.bench_function("record/build (facts -> Flow, redacted)", |b| {
        b.iter_batched(
            || exchange(&conn, &tls),
            |r| black_box(to_flow(r, &redactor)),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut buf = Vec::with_capacity(4096);
    c.bench_function("record/encode JSON line", |b| {
        b.iter(|| {
            buf.clear();
            flowtap_schema::json::encode_line(black_box(&flow), &mut buf);
        })
    });
    c.bench_function("record/encode protobuf (delimited)", |b| {
        b.iter(|| {
            buf.clear();
            flowtap_schema::delimited::encode(black_box(&flow), &mut buf);
        })
    });
    let request_headers = flow
        .request
        .as_ref()
        .map(|r| r.headers.clone())
        .unwrap_or_default();
    c.bench_function("redact/request headers (SigV4)", |b| {
        b.iter_batched(
            || request_headers.clone(),
            |mut h| {
                let mut redacted = Vec::new();
                redactor.headers(&mut h, "request.headers", &mut redacted);
                black_box((h, redacted))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let ca = CertificateAuthority::ephemeral().expect("CA");
    let mut n = 0u64;
    c.bench_function("tls/mint leaf certificate", |b| {
        b.iter(|| {
            n += 1;
            black_box(ca.mint_leaf(&format!("host{n}.example.org")).expect("leaf"))
        })
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
