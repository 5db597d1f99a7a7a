//! Command line and environment -> a validated [`Config`], checked whole before anything binds.

use crate::sinks::SinkSpec;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// gRPC port proxies stream to, when nothing else is said.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9700";
/// Port of /metrics and /healthz: apart from the gRPC port so probes need no HTTP/2.
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9701";
/// Where records go when no --sink is given: rotated JSON-lines files.
pub const DEFAULT_SINK: &str = "jsonl:flowtap-records";
/// Records waiting in each network sink's queue: about a minute of a busy cluster's records,
/// so a short Loki or Elasticsearch outage costs retries, not records.
pub const DEFAULT_SINK_QUEUE: usize = 100_000;

#[derive(Parser, Debug)]
#[command(
    name = "flowtap-collector",
    version,
    about = "Receives flowtap records over gRPC and writes them to files, stdout, Loki and Elasticsearch"
)]
pub struct Args {
    /// Address for the proxies' gRPC streams.
    #[arg(long, env = "FLOWTAP_COLLECTOR_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Address for /metrics and /healthz (plain HTTP).
    #[arg(long, env = "FLOWTAP_COLLECTOR_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN, value_name = "ADDR")]
    pub admin_listen: SocketAddr,
    /// Where records go (repeatable): jsonl:DIR, stdout, loki:URL, elasticsearch:URL, otlp[:URL].
    #[arg(
        long = "sink",
        env = "FLOWTAP_COLLECTOR_SINK",
        value_delimiter = ',',
        default_value = DEFAULT_SINK,
        value_name = "SPEC"
    )]
    pub sinks: Vec<String>,
    /// Start a new file when the current one reaches this size (files also rotate every hour).
    #[arg(long, env = "FLOWTAP_COLLECTOR_ROTATE_SIZE", value_name = "SIZE")]
    pub rotate_size: Option<String>,
    /// Bearer token every proxy must send (its --collector-token).
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Certificate chain (PEM) for gRPC over TLS (proxies use grpcs://).
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Loki tenant, sent as X-Scope-OrgID.
    #[arg(long, env = "FLOWTAP_COLLECTOR_LOKI_TENANT", value_name = "TENANT")]
    pub loki_tenant: Option<String>,
    /// Loki push encoding: JSON gzipped, plain JSON, or snappy-compressed protobuf.
    #[arg(long, env = "FLOWTAP_COLLECTOR_LOKI_FORMAT", value_enum, default_value_t = LokiFormat::JsonGzip)]
    pub loki_format: LokiFormat,
    /// Value of the `job` label on every Loki stream.
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_LOKI_JOB",
        default_value = "flowtap",
        value_name = "NAME"
    )]
    pub loki_job: String,
    /// Elasticsearch data stream the records go to ({type}-{dataset}-{namespace}).
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_ES_DATA_STREAM",
        default_value = "logs-flowtap-default",
        value_name = "NAME"
    )]
    pub es_data_stream: String,
    /// Elasticsearch API key (the base64 "id:key" form), sent as `Authorization: ApiKey …`.
    #[arg(
        long,
        env = "FLOWTAP_COLLECTOR_ES_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub es_api_key: Option<String>,
    /// Extra CA certificate (PEM) trusted for https:// Loki and Elasticsearch URLs.
    #[arg(long, env = "FLOWTAP_COLLECTOR_SINK_CA", value_name = "FILE")]
    pub sink_ca: Option<PathBuf>,
    /// Records each network sink may queue; over it, new records are dropped for that sink
    /// (and counted) rather than slow the others.
    #[arg(long, env = "FLOWTAP_COLLECTOR_SINK_QUEUE", default_value_t = DEFAULT_SINK_QUEUE, value_name = "RECORDS")]
    pub sink_queue: usize,
    /// The `otlp` sink: the proxy's `--otlp-*` flags and the standard `OTEL_*` variables.
    #[command(flatten)]
    pub otlp: flowtap::output::otlp::OtlpArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LokiFormat {
    /// `application/json`, `Content-Encoding: gzip`.
    JsonGzip,
    /// `application/json`, uncompressed.
    Json,
    /// `application/x-protobuf` (logproto.PushRequest), snappy-compressed.
    Protobuf,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub sinks: Vec<SinkSpec>,
    pub rotate_size: Option<u64>,
    pub token: Option<String>,
    /// PEM certificate chain and key.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub loki_tenant: Option<String>,
    pub loki_format: LokiFormat,
    pub loki_job: String,
    pub es_data_stream: String,
    pub es_api_key: Option<String>,
    pub sink_ca: Option<Vec<u8>>,
    pub sink_queue: usize,
    pub otlp: flowtap::output::otlp::OtlpArgs,
}

/// A configuration problem, naming the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn bad(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

impl Config {
    pub fn from_args(a: Args) -> Result<Config, ConfigError> {
        let sinks = a
            .sinks
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| SinkSpec::parse(s.trim()).map_err(|m| bad("--sink", m)))
            .collect::<Result<Vec<_>, _>>()?;
        if sinks.is_empty() {
            return Err(bad("--sink", "at least one sink is needed"));
        }
        if sinks.iter().filter(|s| s.is_files()).count() > 1 {
            return Err(bad("--sink", "only one jsonl:DIR sink"));
        }
        let rotate_size = match &a.rotate_size {
            None => None,
            Some(s) => {
                let n = parse_size(s).map_err(|m| bad("--rotate-size", m))?;
                if n < 1 << 20 {
                    return Err(bad("--rotate-size", "must be at least 1MiB"));
                }
                Some(n)
            }
        };
        let token = a.token.map(|t| t.trim().to_string());
        if token.as_deref() == Some("") {
            return Err(bad("--token", "is empty"));
        }
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => {
                let cert = read_pem(c).map_err(|m| bad("--tls-cert", m))?;
                let key = read_pem(k).map_err(|m| bad("--tls-key", m))?;
                Some((cert, key))
            }
            _ => None,
        };
        if tls.is_none() && token.is_some() && !a.listen.ip().is_loopback() {
            tracing::warn!(
                "--token without --tls-cert: proxies send the token unencrypted over grpc://"
            );
        }
        if let Some(t) = &a.loki_tenant {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("--loki-tenant", "must be printable ASCII"));
            }
        }
        if a.loki_job.is_empty() {
            return Err(bad("--loki-job", "is empty"));
        }
        let ds = &a.es_data_stream;
        if ds.is_empty()
            || ds.starts_with(['-', '_', '+', '.'])
            || ds
                .chars()
                .any(|c| c.is_ascii_uppercase() || " \"*\\<|,>/?#:".contains(c))
        {
            return Err(bad(
                "--es-data-stream",
                format!("{ds:?} is not a valid data stream name (lower case, no spaces or \\/*?\"<>|,#:)"),
            ));
        }
        let sink_ca = match &a.sink_ca {
            None => None,
            Some(p) => Some(read_pem(p).map_err(|m| bad("--sink-ca", m))?),
        };
        if a.sink_queue == 0 {
            return Err(bad("--sink-queue", "must be at least 1"));
        }
        Ok(Config {
            listen: a.listen,
            admin_listen: a.admin_listen,
            sinks,
            rotate_size,
            token,
            tls,
            loki_tenant: a.loki_tenant,
            loki_format: a.loki_format,
            loki_job: a.loki_job,
            es_data_stream: a.es_data_stream,
            es_api_key: a.es_api_key,
            sink_ca,
            sink_queue: a.sink_queue,
            otlp: a.otlp,
        })
    }
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !String::from_utf8_lossy(&data).contains("-----BEGIN ") {
        return Err(format!("{}: not a PEM file", path.display()));
    }
    Ok(data)
}

/// "64MiB", "1G", "1.5G", "1048576": bytes, read as the proxy reads its size flags (one parser,
/// flowtap's: K/KB/KiB… all powers of 1024, and its error messages).
fn parse_size(s: &str) -> Result<u64, String> {
    let n = flowtap::record::capture::parse_size(s)?;
    u64::try_from(n).map_err(|_| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64 MB"), Ok(64 << 20));
        // The proxy's syntax, decimals included (the collector took whole numbers only).
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        for s in ["", "G", "-1", "1.2.3", "12 parsecs", "1TB"] {
            let err = parse_size(s).expect_err(s);
            assert!(
                err.contains(&format!("{s:?}")) && err.contains("GiB"),
                "{err}"
            );
        }
    }

    #[test]
    fn flags_are_checked() {
        let args = |extra: &[&str]| {
            let mut v = vec!["flowtap-collector"];
            v.extend_from_slice(extra);
            Config::from_args(Args::parse_from(v))
        };
        assert!(args(&[]).is_ok());
        let e = args(&["--sink", "kafka:x"]).unwrap_err();
        assert_eq!(e.flag, "--sink");
        let e = args(&["--es-data-stream", "Logs"]).unwrap_err();
        assert_eq!(e.flag, "--es-data-stream");
        let e = args(&["--rotate-size", "1K"]).unwrap_err();
        assert_eq!(e.flag, "--rotate-size");
        let e = args(&["--sink", "jsonl:a", "--sink", "jsonl:b"]).unwrap_err();
        assert_eq!(e.flag, "--sink");
    }
}
