//! The `flowtap` command: parse and validate the configuration, then run what was asked.

use anyhow::Context;
use clap::Parser;
use flowtap::config::{
    default_ca_dir, CaCommand, Cli, Command, ConfigError, ProxyArgs, ProxyConfig, SetupError,
};
use flowtap::http::Shared;
use flowtap::metrics::Metrics;
use flowtap::output::{self, WriterSettings, QUEUE_CAPTURE_BYTES, QUEUE_RECORDS};
use flowtap::record::capture::CaptureMode;
use flowtap::redact::Redactor;
use flowtap::tls::ca::{system_bundle_path, CertificateAuthority};
use flowtap::tls::leaf::LeafCache;
use flowtap::upstream::UpstreamTls;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc, linked with its `override` feature: it defines `malloc`, `free` and the rest, so
/// std's `System` allocator (and everything else in the process) uses it, with no allocator
/// code of ours. The proxy allocates and frees small objects on several threads for every
/// exchange; glibc's malloc was 10-15 % of the CPU under load. `System` calls plain `malloc` when
/// the alignment asked is at most 16 and at most the size, which is mimalloc's fast path; the
/// `mimalloc` crate's `GlobalAlloc` sent everything to `mi_malloc_aligned`, 2.8 % more
/// instructions per exchange (bench/README.md).
use libmimalloc_sys as _;

/// Leaf certificates kept in memory: one per intercepted host name.
const LEAF_CACHE_HOSTS: usize = 10_000;
/// Time the writer gets to write what is queued when the proxy stops.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the runtime gets to drop the tasks still running after the grace period.
const RUNTIME_STOP_TIMEOUT: Duration = Duration::from_millis(500);
/// Exit code for a bad command line or configuration (EX_USAGE).
const EXIT_USAGE: i32 = 64;

fn main() {
    // clap's own errors (a bad value, an unknown flag) exit like every configuration error;
    // --help and --version print and exit 0.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { EXIT_USAGE } else { 0 });
    });
    // Before any thread: on AMD CPUs the proxy executes itself once more with glibc's `rep movsb`
    // turned off (see `flowtap::glibc`); this returns only if there was nothing to do or it failed.
    let tuned = match &cli.command {
        Command::Proxy(_) => flowtap::glibc::reexec_tuned(),
        _ => Ok(()),
    };
    init_tracing();
    if let Err(e) = tuned {
        tracing::warn!(error = %e, "cannot restart with glibc's rep movsb turned off; large bodies will cost more CPU on this AMD CPU");
    } else if std::env::var_os(flowtap::glibc::MARK).is_some() {
        tracing::debug!(
            tunable = flowtap::glibc::TUNABLE,
            "restarted with glibc's rep movsb turned off (AMD CPU)"
        );
    }
    let result = match cli.command {
        Command::Proxy(args) => run_proxy(*args),
        Command::Ca(CaCommand::Export(a)) => ca_export(a),
        Command::Ca(CaCommand::Init(a)) => CertificateAuthority::init(&a.dir)
            .map(|_| eprintln!("created a new CA in {}", a.dir.display()))
            .map_err(anyhow::Error::from),
        Command::Convert(a) => flowtap::convert::run(a),
        Command::K8s(c) => flowtap::k8s::run(c),
    };
    if let Err(e) = result {
        eprintln!("flowtap: {e:#}");
        let usage = e.is::<ConfigError>() || e.is::<SetupError>();
        std::process::exit(if usage { EXIT_USAGE } else { 1 });
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn ca_export(a: flowtap::config::CaExportArgs) -> anyhow::Result<()> {
    let dir = a.ca_dir.unwrap_or_else(default_ca_dir);
    let ca = CertificateAuthority::load_or_create(&dir)?;
    let mut out = Vec::new();
    if a.bundle {
        let path = a
            .system_bundle
            .or_else(system_bundle_path)
            .context("no system CA bundle found; name one with --system-bundle")?;
        let system = std::fs::read(&path)
            .with_context(|| format!("--system-bundle {}: cannot read", path.display()))?;
        out.extend_from_slice(&system);
        if !system.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(ca.cert_pem().as_bytes());
    std::io::stdout().write_all(&out)?;
    Ok(())
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let config = ProxyConfig::from_args(args)?;
    // Each proxied connection holds two descriptors; the usual soft limit of 1024 would cap
    // the proxy at a few hundred clients.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    if config.redact.reveal_all || !config.redact.reveal.is_empty() {
        tracing::warn!(
            reveal = ?config.redact.reveal,
            all = config.redact.reveal_all,
            "redaction is turned off for some secrets: records will contain them"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let ca = Arc::new(CertificateAuthority::load_or_create(&config.ca_dir)?);
    let upstream_tls = UpstreamTls::new(
        &config.upstream_ca,
        config.insecure_upstream,
        config.upstream_client_cert.clone(),
    )
    .map_err(SetupError)?;
    let queue = match config.capture {
        CaptureMode::None => QUEUE_RECORDS,
        _ => (QUEUE_CAPTURE_BYTES / (2 * config.body_limit.max(1))).clamp(64, QUEUE_RECORDS),
    };
    let settings = WriterSettings {
        redactor: Redactor::new(&config.redact),
        verbose: config.verbose,
        stdout_line_limit: config.stdout_line_limit,
        collector: config.collector.clone(),
        otlp: config.otlp.clone(),
    };
    let writer =
        output::start(&config.outputs, settings, queue, metrics.clone()).map_err(SetupError)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flowtap-worker")
        .build()
        .context("cannot start the async runtime")?;
    let emitter = writer.emitter.clone();
    let metrics_at_exit = metrics.clone();
    runtime.block_on(async move {
        // Bind everything before serving anything: a bad address fails the start, whole.
        let mut listeners = Vec::with_capacity(config.modes.len());
        for m in &config.modes {
            let l = tokio::net::TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("--mode {:?}: cannot listen on {}", m.kind, m.listen))?;
            listeners.push((l, m.kind.clone()));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let grace = config.grace;
        let ca_path = config.ca_dir.join("ca.pem");
        let shared = Arc::new(Shared {
            config,
            upstream_tls,
            leaves: LeafCache::new(ca.clone(), LEAF_CACHE_HOSTS),
            ca_pem: ca.cert_pem().to_string(),
            emitter,
            metrics,
            shutdown: stop_rx.clone(),
            pool: Default::default(),
            tracker: Arc::new(flowtap::listener::Tracker::default()),
        });
        let mut servers = Vec::new();
        for (l, kind) in listeners {
            tracing::info!(
                addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                mode = %mode_name(&kind),
                ca = %ca_path.display(),
                "listening"
            );
            servers.push(tokio::spawn(flowtap::listener::run(
                l,
                kind,
                shared.clone(),
                stop_rx.clone(),
            )));
        }
        reopen_on_sigusr1();
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections");
        let _ = stop_tx.send(true);
        for s in servers {
            let _ = s.await;
        }
        flowtap::listener::drain(&shared, grace).await;
        anyhow::Ok(())
    })?;
    // Exchanges still open after the grace period are cut here: dropping their tasks finishes
    // their records (the taps write them on drop), and only then is the writer flushed.
    flowtap::record::tap::STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
    writer.finish(FINAL_FLUSH_TIMEOUT);
    output::report_drops(&metrics_at_exit);
    tracing::info!("stopped");
    Ok(())
}

/// SIGUSR1 (as for nginx's logs): the file outputs open their paths again before their next
/// write, so a rotation that moved a file away is followed by a new file.
fn reopen_on_sigusr1() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    tracing::info!(
                        "SIGUSR1: output files are opened again before their next write"
                    );
                    output::reopen_files();
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGUSR1; output files will not be reopened")
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn mode_name(kind: &flowtap::mode::ModeKind) -> String {
    match kind {
        flowtap::mode::ModeKind::Regular => "regular".into(),
        flowtap::mode::ModeKind::Transparent => "transparent".into(),
        flowtap::mode::ModeKind::Reverse(r) => {
            format!("reverse:{}://{}", r.scheme(), r.authority())
        }
    }
}
