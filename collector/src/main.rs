//! `flowtap-collector`: parse and check the configuration, start the sinks, seed the dedup set
//! from the files, serve gRPC and the admin port until SIGTERM/SIGINT, then stop in order:
//! streams first (so every batch taken is acknowledged), then the sinks' queues.

use anyhow::Context;
use clap::Parser;
use flowtap_collector::admin::{self, Admin};
use flowtap_collector::config::{Args, Config};
use flowtap_collector::dedup::{Seen, SEEN_IDS};
use flowtap_collector::ingest::{self, Ingest};
use flowtap_collector::metrics::Metrics;
use flowtap_collector::sinks;
use flowtap_schema::grpc::collector_server::CollectorServer;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// Exit code for a bad command line or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Largest batch message accepted: a proxy sends at most 1 MiB per batch, or one record of up to
/// 32 MiB (captured bodies with a high --body-limit).
const MAX_MESSAGE: usize = 64 << 20;
/// HTTP/2 pings find proxies that vanished without closing their streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the streams get to acknowledge what they took once shutdown starts.
const STREAMS_GRACE: Duration = Duration::from_secs(10);
/// Time the network sinks get to deliver their queues at shutdown.
const SINKS_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    // clap's own errors (a bad value, an unknown flag) exit like every configuration error;
    // --help and --version print and exit 0.
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flowtap-collector: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("collector-worker")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowtap-collector: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowtap-collector: {e:#}");
            if e.is::<SinkSetupError>() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A sink that cannot start with its settings (a bad URL, an unwritable directory, a bad
/// `--otlp-*` value): a configuration error, found once the runtime is up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SinkSetupError(String);

async fn run(config: Config) -> anyhow::Result<()> {
    // One process-wide rustls provider, the one the proxy uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let started = sinks::start(&config, &metrics).map_err(SinkSetupError)?;
    let mut seen = Seen::new(SEEN_IDS);
    let seeded = seen.seed_from_files(&started.existing_files);
    if seeded > 0 {
        tracing::info!(
            ids = seeded,
            "remembered the ids of records already in the files"
        );
    }
    let acking_sinks = started.hub.acking.iter().map(|s| s.name.clone()).collect();

    let grpc_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", config.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("--admin-listen {}: cannot bind", config.admin_listen))?;
    let mut server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some((cert, key)) = &config.tls {
        server = server
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("--tls-cert/--tls-key: cannot build the TLS configuration")?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let ingest = Ingest::new(seen, started.hub, metrics.clone(), stop_rx.clone());
    let service = InterceptedService::new(
        CollectorServer::new(ingest.handle()).max_decoding_message_size(MAX_MESSAGE),
        ingest::auth(config.token.clone(), metrics.clone()),
    );
    tracing::info!(
        grpc = %grpc_listener.local_addr().unwrap_or(config.listen),
        admin = %admin_listener.local_addr().unwrap_or(config.admin_listen),
        tls = config.tls.is_some(),
        token = config.token.is_some(),
        sinks = ?config.sinks.iter().map(|s| s.raw.as_str()).collect::<Vec<_>>(),
        "listening"
    );
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(Admin {
            metrics: metrics.clone(),
            acking_sinks,
        }),
        stop_rx.clone(),
    ));
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(server.add_service(service).serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
        async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        },
    ));

    wait_for_signal().await;
    tracing::info!("shutting down: streams end after acknowledging what they took");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(STREAMS_GRACE, grpc).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Err(_) => tracing::warn!("streams did not end in time"),
        _ => {}
    }
    let _ = admin_task.await;
    ingest.close_sinks();
    drop(ingest);
    let drain = futures_all(started.tasks);
    if tokio::time::timeout(SINKS_GRACE, drain).await.is_err() {
        for s in metrics.sinks() {
            let left = s.queued.load(Relaxed);
            if left > 0 {
                tracing::warn!(sink = %s.name, records = left, "records still queued for this sink were not delivered");
            }
        }
    }
    // Acking sinks have nothing pending once the streams are done; their threads end when the
    // last handle on them is dropped.
    for t in started.threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
