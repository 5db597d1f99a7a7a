//! A minimal TLS-intercepting forward proxy built on the `hudsucker` crate, used by
//! `bench/` as a contender next to flowtap and mitmdump.
//!
//! It does what the benchmark asks of every proxy and nothing more: intercept CONNECT
//! with leaf certificates minted by an rcgen CA (written to `CA_DIR/ca.pem` on first
//! start, reused after), verify upstream TLS against one CA file (the bench's throw-away
//! upstream CA), speak HTTP/1.1 and HTTP/2 on both sides, and write one log line per
//! exchange to a file through a writer task (off the request path, like flowtap's).
//!
//! Usage: hudsucker-proxy --listen 127.0.0.1:PORT --ca-dir DIR --upstream-ca FILE --log FILE

use hudsucker::{
    certificate_authority::RcgenAuthority,
    hyper::{Request, Response},
    rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose},
    rustls::{self, crypto::aws_lc_rs, ClientConfig, RootCertStore},
    Body, HttpContext, HttpHandler, Proxy, RequestOrResponse,
};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::exit,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc;

/// Leaf certificates kept by the authority; the bench uses one host name.
const CERT_CACHE_SIZE: u64 = 1_000;
/// Listen backlog: (d) opens a connection per request and (f) opens 10,000 at once.
const LISTEN_BACKLOG: u32 = 8_192;
/// Log lines waiting for the writer task before the proxy drops them rather than wait.
const LOG_QUEUE: usize = 65_536;

struct Args {
    listen: SocketAddr,
    ca_dir: PathBuf,
    upstream_ca: PathBuf,
    log: PathBuf,
}

fn usage(msg: &str) -> ! {
    eprintln!("hudsucker-proxy: {msg}");
    eprintln!("usage: hudsucker-proxy --listen ADDR --ca-dir DIR --upstream-ca FILE --log FILE");
    exit(2)
}

fn parse_args() -> Args {
    let mut listen = None;
    let mut ca_dir = None;
    let mut upstream_ca = None;
    let mut log = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse()
                        .unwrap_or_else(|_| usage(&format!("--listen: bad address {value:?}"))),
                )
            }
            "--ca-dir" => ca_dir = Some(PathBuf::from(value)),
            "--upstream-ca" => upstream_ca = Some(PathBuf::from(value)),
            "--log" => log = Some(PathBuf::from(value)),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    Args {
        listen: listen.unwrap_or_else(|| usage("--listen is required")),
        ca_dir: ca_dir.unwrap_or_else(|| usage("--ca-dir is required")),
        upstream_ca: upstream_ca.unwrap_or_else(|| usage("--upstream-ca is required")),
        log: log.unwrap_or_else(|| usage("--log is required")),
    }
}

/// Loads DIR/ca.pem + DIR/ca-key.pem, or makes and writes them.
fn load_or_create_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, Box<dyn std::error::Error>> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    if cert_path.exists() && key_path.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?;
        return Ok(Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(&cert_path)?,
            key,
        )?);
    }
    std::fs::create_dir_all(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "hudsucker-proxy bench CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    std::fs::write(&key_path, key.serialize_pem())?;
    // Written last: the bench waits for ca.pem to know the CA is ready.
    let tmp = dir.join("ca.pem.tmp");
    std::fs::write(&tmp, cert.pem())?;
    std::fs::rename(&tmp, &cert_path)?;
    Ok(Issuer::new(params, key))
}

fn upstream_tls(ca_file: &Path) -> Result<ClientConfig, Box<dyn std::error::Error>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// One line per exchange: time, client, method, URL, status.
#[derive(Clone)]
struct LogHandler {
    tx: mpsc::Sender<String>,
    request: Option<(String, String)>,
}

impl HttpHandler for LogHandler {
    async fn handle_request(&mut self, _ctx: &HttpContext, req: Request<Body>) -> RequestOrResponse {
        self.request = Some((req.method().to_string(), req.uri().to_string()));
        req.into()
    }

    async fn handle_response(&mut self, ctx: &HttpContext, res: Response<Body>) -> Response<Body> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let (method, url) = self.request.take().unwrap_or_default();
        let line = format!(
            "{}.{:06} {} {} {} {} {:?}\n",
            now.as_secs(),
            now.subsec_micros(),
            ctx.client_addr,
            method,
            url,
            res.status().as_u16(),
            res.version(),
        );
        // Never hold up traffic for the log: drop the line when the queue is full.
        let _ = self.tx.try_send(line);
        res
    }
}

async fn write_log(path: PathBuf, mut rx: mpsc::Receiver<String>) {
    let file = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hudsucker-proxy: cannot create log {}: {e}", path.display());
            exit(1)
        }
    };
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    while let Some(line) = rx.recv().await {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let _ = rustls::crypto::CryptoProvider::install_default(aws_lc_rs::default_provider());

    let issuer = load_or_create_ca(&args.ca_dir).unwrap_or_else(|e| {
        eprintln!("hudsucker-proxy: CA in {}: {e}", args.ca_dir.display());
        exit(1)
    });
    let ca = RcgenAuthority::new(issuer, CERT_CACHE_SIZE, aws_lc_rs::default_provider());

    let tls = upstream_tls(&args.upstream_ca).unwrap_or_else(|e| {
        eprintln!("hudsucker-proxy: --upstream-ca {}: {e}", args.upstream_ca.display());
        exit(1)
    });
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    let socket = match args.listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux.
        s.set_nodelay(true)?;
        s.bind(args.listen)?;
        s.listen(LISTEN_BACKLOG)
    })
    .unwrap_or_else(|e| {
        eprintln!("hudsucker-proxy: listen on {}: {e}", args.listen);
        exit(1)
    });

    let (tx, rx) = mpsc::channel(LOG_QUEUE);
    let writer = tokio::spawn(write_log(args.log, rx));

    let proxy = Proxy::builder()
        .with_listener(socket)
        .with_ca(ca)
        .with_http_connector(connector)
        .with_http_handler(LogHandler { tx, request: None })
        .with_graceful_shutdown(shutdown_signal())
        .build()
        .unwrap_or_else(|e| {
            eprintln!("hudsucker-proxy: {e}");
            exit(1)
        });
    eprintln!("hudsucker-proxy: listening on {}", args.listen);
    if let Err(e) = proxy.start().await {
        eprintln!("hudsucker-proxy: {e}");
        exit(1)
    }
    // The handler (and its sender) is dropped with the proxy: the writer drains and ends.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}
