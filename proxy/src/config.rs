//! Command line and environment -> a validated [`ProxyConfig`], checked whole before anything binds.

use crate::output::OutputSpec;
use crate::record::capture::{parse_size, CaptureMode};
use crate::redact::RedactorConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};
use regex::Regex;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where clients reach the proxy when nothing else is said: every interface, the port mitmproxy
/// users already know.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Records on stdout stay under this size by default: container runtimes split longer log lines
/// (Docker and containerd at 16 KiB), which would break `kubectl logs | jq`.
pub const DEFAULT_STDOUT_LINE_LIMIT: &str = "16KiB";

#[derive(Parser, Debug)]
#[command(
    name = "flowtap",
    version,
    about = "See what an application says over HTTP(S): an intercepting proxy that writes one record per exchange"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy.
    Proxy(Box<ProxyArgs>),
    /// Manage the certificate authority that signs the intercepted hosts' certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Convert records between JSON lines, protobuf and HAR.
    Convert(crate::convert::ConvertArgs),
    /// Attach a Kubernetes workload to the proxy, or detach it.
    #[command(subcommand)]
    K8s(crate::k8s::K8sCommand),
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), or with --bundle the system bundle followed by it.
    Export(CaExportArgs),
    /// Create a new CA in DIR without starting a proxy.
    Init(CaInitArgs),
}

#[derive(Args, Debug)]
pub struct CaExportArgs {
    /// Directory holding ca.pem and ca-key.pem (created with a new CA when empty).
    #[arg(long, env = "FLOWTAP_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Print the system CA bundle first, then the flowtap CA: the file an application mounts to
    /// trust both.
    #[arg(long, env = "FLOWTAP_BUNDLE")]
    pub bundle: bool,
    /// The system bundle to start from (default: the first of the usual Debian, RHEL, Alpine,
    /// openSUSE paths that exists).
    #[arg(long, env = "FLOWTAP_SYSTEM_BUNDLE", value_name = "PATH")]
    pub system_bundle: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CaInitArgs {
    /// Directory to create the CA in; it must not hold one already.
    #[arg(long, env = "FLOWTAP_CA_DIR", value_name = "DIR")]
    pub dir: PathBuf,
}

/// What to do when flowtap's TLS handshake with a server fails (`--upstream-tls-errors`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpstreamTlsErrors {
    /// Relay the client's TLS untouched: the client decides, as without the proxy.
    Relay,
    /// Intercept the client and answer each request 502, with an upstream_tls record.
    Fail,
}

/// What to do with a server that asks for a client certificate (`--client-cert-servers`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientCertServers {
    /// Relay the client's TLS untouched, so the client presents its own certificate.
    Relay,
    /// Intercept anyway; flowtap presents no certificate (for servers that only ask).
    Intercept,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureArg {
    None,
    Text,
    All,
}

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on (for modes without their own @ADDR).
    #[arg(long, env = "FLOWTAP_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// How clients reach the proxy (repeatable, each on its own address): regular,
    /// transparent, reverse:URL; append @PORT or @ADDR:PORT to listen elsewhere than --listen.
    #[arg(
        long = "mode",
        env = "FLOWTAP_MODE",
        value_delimiter = ',',
        default_value = "regular",
        value_name = "MODE"
    )]
    pub modes: Vec<String>,
    /// Directory holding ca.pem and ca-key.pem; a CA is created there on first start.
    /// Default: ~/.flowtap
    #[arg(long, env = "FLOWTAP_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Where records go (repeatable, or comma-separated): jsonl (stdout), jsonl:PATH, text
    /// (stdout), text:PATH, pb:PATH, har:PATH, otlp, otlp:URL, grpc://HOST:PORT,
    /// grpcs://HOST:PORT.
    #[arg(
        long = "output",
        env = "FLOWTAP_OUTPUT",
        value_delimiter = ',',
        default_value = "jsonl",
        value_name = "SPEC"
    )]
    pub outputs: Vec<String>,
    /// Extra PEM bundle of CAs trusted for upstream servers, added to the system roots (repeatable).
    #[arg(
        long,
        env = "FLOWTAP_UPSTREAM_CA",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub upstream_ca: Vec<PathBuf>,
    /// Do not verify upstream certificates (shown as tls.upstream_verified=false in every record).
    #[arg(long, env = "FLOWTAP_INSECURE_UPSTREAM")]
    pub insecure_upstream: bool,
    /// Egress proxy every upstream connection goes through, http://[USER:PASS@]HOST[:PORT]
    /// (CONNECT for TLS and tunnels, absolute-form requests for plain HTTP). Not read from
    /// HTTP_PROXY/HTTPS_PROXY, which an attached workload points at flowtap itself.
    #[arg(
        long,
        env = "FLOWTAP_UPSTREAM_PROXY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub upstream_proxy: Option<String>,
    /// Hosts reached directly rather than through --upstream-proxy (repeatable, or
    /// comma-separated, as NO_PROXY): `*`, NAME or .NAME (with its subdomains), IP, CIDR.
    #[arg(
        long,
        env = "FLOWTAP_UPSTREAM_NO_PROXY",
        value_delimiter = ',',
        value_name = "HOSTS"
    )]
    pub upstream_no_proxy: Vec<String>,
    /// PEM certificate (chain) flowtap presents to servers that ask for a client certificate
    /// (mutual TLS), so their exchanges are intercepted and recorded; the key is in the same file
    /// or in --upstream-client-key.
    #[arg(long, env = "FLOWTAP_UPSTREAM_CLIENT_CERT", value_name = "FILE")]
    pub upstream_client_cert: Option<PathBuf>,
    /// PEM private key of --upstream-client-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "FLOWTAP_UPSTREAM_CLIENT_KEY", value_name = "FILE")]
    pub upstream_client_key: Option<PathBuf>,
    /// Servers that ask for a client certificate during TLS (mutual TLS), when flowtap has none
    /// of its own (--upstream-client-cert): relay the client's TLS untouched, so it presents its
    /// own certificate (a tunnel record with tls.client_cert_requested), or intercept anyway,
    /// presenting none (for servers that ask but do not require one, such as the Kubernetes API
    /// server).
    #[arg(
        long,
        env = "FLOWTAP_CLIENT_CERT_SERVERS",
        value_enum,
        default_value = "relay"
    )]
    pub client_cert_servers: ClientCertServers,
    /// When flowtap's own TLS handshake with a server fails (a certificate it does not trust or
    /// finds invalid, no TLS version or cipher suite in common): relay the client's TLS untouched,
    /// so the client decides as without the proxy (a tunnel record with tls.upstream_error), or
    /// fail, answering each request 502 with an upstream_tls record.
    #[arg(
        long,
        env = "FLOWTAP_UPSTREAM_TLS_ERRORS",
        value_enum,
        default_value = "relay"
    )]
    pub upstream_tls_errors: UpstreamTlsErrors,
    /// Hosts matching this regex are not intercepted: their bytes are relayed untouched and a
    /// tunnel record is written (repeatable; not split at commas, which regexes use, so the
    /// variable holds one regex: join alternatives with |).
    #[arg(long, env = "FLOWTAP_IGNORE_HOSTS", value_name = "REGEX")]
    pub ignore_hosts: Vec<String>,
    /// Which bodies to capture into records: none, text (textual bodies only) or all (binary as base64).
    #[arg(
        long,
        env = "FLOWTAP_CAPTURE_BODIES",
        value_enum,
        default_value = "none"
    )]
    pub capture_bodies: CaptureArg,
    /// Bytes of each body kept in a record (e.g. 64KiB, 1MiB).
    #[arg(
        long,
        env = "FLOWTAP_BODY_LIMIT",
        default_value = "64KiB",
        value_name = "SIZE"
    )]
    pub body_limit: String,
    /// Longest record line written to stdout; captured bodies are cut to fit and marked truncated.
    #[arg(long, env = "FLOWTAP_STDOUT_LINE_LIMIT", default_value = DEFAULT_STDOUT_LINE_LIMIT, value_name = "SIZE")]
    pub stdout_line_limit: String,
    /// Seconds in-flight exchanges get to finish after SIGTERM/SIGINT.
    #[arg(
        long,
        env = "FLOWTAP_GRACE",
        default_value = "5",
        value_name = "SECONDS"
    )]
    pub grace: f64,
    /// Seconds allowed to connect to an upstream (DNS, TCP and TLS).
    #[arg(
        long,
        env = "FLOWTAP_UPSTREAM_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS"
    )]
    pub upstream_timeout: f64,
    /// Seconds an upstream has to start its response once the whole request has been sent (the
    /// clock starts when the request body ends: a long upload is never cut); then 502.
    #[arg(
        long,
        env = "FLOWTAP_RESPONSE_TIMEOUT",
        default_value = "300",
        value_name = "SECONDS"
    )]
    pub response_timeout: f64,
    /// Text output shows headers too.
    #[arg(short, long, env = "FLOWTAP_VERBOSE")]
    pub verbose: bool,
    /// Also redact this header's value, in fingerprint form (repeatable).
    #[arg(
        long,
        env = "FLOWTAP_REDACT_HEADER",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub redact_header: Vec<String>,
    /// Also redact this URL query parameter's value, in fingerprint form (repeatable).
    #[arg(
        long,
        env = "FLOWTAP_REDACT_QUERY",
        value_delimiter = ',',
        value_name = "PARAM"
    )]
    pub redact_query: Vec<String>,
    /// Turn redaction off for this header or query parameter, or `all` (repeatable).
    #[arg(
        long,
        env = "FLOWTAP_REVEAL",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub reveal: Vec<String>,
    /// Most client connections open at once; more are answered 503.
    #[arg(
        long,
        env = "FLOWTAP_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,
    /// Largest request head (request line plus headers); larger ones get 431.
    #[arg(
        long,
        env = "FLOWTAP_MAX_HEADER_SIZE",
        default_value = "64KiB",
        value_name = "SIZE"
    )]
    pub max_header_size: String,
    /// Most header fields in one request; more get 431.
    #[arg(
        long,
        env = "FLOWTAP_MAX_HEADERS",
        default_value_t = 128,
        value_name = "N"
    )]
    pub max_headers: usize,
    /// Seconds a client gets to send a complete request head (also the longest an HTTP/1
    /// connection may sit idle between requests); then 408.
    #[arg(
        long,
        env = "FLOWTAP_REQUEST_HEADER_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS"
    )]
    pub request_header_timeout: f64,
    /// Seconds a tunnel or upgraded connection may pass no byte in either direction.
    #[arg(
        long,
        env = "FLOWTAP_IDLE_TIMEOUT",
        default_value = "600",
        value_name = "SECONDS"
    )]
    pub idle_timeout: f64,
    /// Concurrent streams one HTTP/2 client connection may open.
    #[arg(
        long,
        env = "FLOWTAP_MAX_STREAMS",
        default_value_t = 256,
        value_name = "N"
    )]
    pub max_streams: u32,
    #[command(flatten)]
    pub access: crate::access::AccessArgs,
    #[command(flatten)]
    pub collector: crate::output::grpc::CollectorArgs,
    #[command(flatten)]
    pub otlp: crate::output::otlp::OtlpArgs,
}

/// The validated configuration of `flowtap proxy`.
#[derive(Debug)]
pub struct ProxyConfig {
    pub modes: Vec<crate::mode::ModeSpec>,
    pub ca_dir: PathBuf,
    pub outputs: Vec<OutputSpec>,
    pub upstream_ca: Vec<PathBuf>,
    pub insecure_upstream: bool,
    pub upstream_proxy: Option<crate::upstream::via::UpstreamProxy>,
    /// `--upstream-client-cert` with its key, loaded and checked.
    pub upstream_client_cert: Option<Arc<rustls::sign::CertifiedKey>>,
    pub client_cert_servers: ClientCertServers,
    pub upstream_tls_errors: UpstreamTlsErrors,
    pub ignore_hosts: Vec<Regex>,
    pub capture: CaptureMode,
    pub body_limit: usize,
    pub stdout_line_limit: usize,
    pub grace: Duration,
    pub upstream_timeout: Duration,
    pub response_timeout: Duration,
    pub verbose: bool,
    pub redact: RedactorConfig,
    pub limits: Limits,
    pub access: crate::access::Access,
    pub collector: crate::output::grpc::CollectorArgs,
    pub otlp: crate::output::otlp::OtlpArgs,
}

/// A configuration problem, naming the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid {flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

/// A configuration problem found while setting up what it configures (an output, the upstream
/// CA bundle); the message names the flag. It exits like a [`ConfigError`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

pub fn bad(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

fn seconds(flag: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(bad(
            flag,
            format!("{v} is not a number of seconds between 0 and 86400"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn nonzero(flag: &'static str, v: f64) -> Result<Duration, ConfigError> {
    let d = seconds(flag, v)?;
    if d.is_zero() {
        return Err(bad(flag, "must be more than 0"));
    }
    Ok(d)
}

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub request_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_size: 64 << 10,
            max_headers: 128,
            request_header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_streams: 256,
        }
    }
}

/// `~/.flowtap`, or `./.flowtap` when there is no home directory.
pub fn default_ca_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".flowtap")
}

impl ProxyConfig {
    pub fn from_args(a: ProxyArgs) -> Result<Self, ConfigError> {
        let outputs = a
            .outputs
            .iter()
            .map(|s| OutputSpec::parse(s).map_err(|m| bad("--output", m)))
            .collect::<Result<Vec<_>, _>>()?;
        let ignore_hosts = a
            .ignore_hosts
            .iter()
            .map(|r| Regex::new(r).map_err(|e| bad("--ignore-hosts", format!("{r:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        for f in &a.upstream_ca {
            if !f.is_file() {
                return Err(bad(
                    "--upstream-ca",
                    format!("{} is not a readable file", f.display()),
                ));
            }
        }
        let no_proxy = crate::upstream::via::NoProxy::parse(&a.upstream_no_proxy)
            .map_err(|m| bad("--upstream-no-proxy", m))?;
        if a.upstream_proxy.is_none() && !a.upstream_no_proxy.is_empty() {
            return Err(bad("--upstream-no-proxy", "given without --upstream-proxy"));
        }
        let upstream_proxy = a
            .upstream_proxy
            .as_deref()
            .map(|u| crate::upstream::via::UpstreamProxy::parse(u, no_proxy))
            .transpose()
            .map_err(|m| bad("--upstream-proxy", m))?;
        let upstream_client_cert = match (&a.upstream_client_cert, &a.upstream_client_key) {
            (Some(cert), key) => Some(
                crate::upstream::client_cert::load(cert, key.as_deref())
                    .map_err(|(flag, m)| bad(flag.name(), m))?,
            ),
            (None, Some(_)) => {
                return Err(bad(
                    "--upstream-client-key",
                    "given without --upstream-client-cert",
                ))
            }
            (None, None) => None,
        };
        let body_limit = parse_size(&a.body_limit).map_err(|m| bad("--body-limit", m))?;
        let stdout_line_limit =
            parse_size(&a.stdout_line_limit).map_err(|m| bad("--stdout-line-limit", m))?;
        if stdout_line_limit < 1024 {
            return Err(bad("--stdout-line-limit", "must be at least 1KiB"));
        }
        let modes = a
            .modes
            .iter()
            .map(|m| crate::mode::parse(m, a.listen).map_err(|e| bad("--mode", e)))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, m) in modes.iter().enumerate() {
            if modes[..i].iter().any(|o| o.listen == m.listen) {
                return Err(bad(
                    "--mode",
                    format!("two modes listen on {}: give each its own @ADDR", m.listen),
                ));
            }
        }
        Ok(ProxyConfig {
            modes,
            ca_dir: a.ca_dir.unwrap_or_else(default_ca_dir),
            outputs,
            upstream_ca: a.upstream_ca,
            insecure_upstream: a.insecure_upstream,
            upstream_proxy,
            upstream_client_cert,
            client_cert_servers: a.client_cert_servers,
            upstream_tls_errors: a.upstream_tls_errors,
            ignore_hosts,
            capture: match a.capture_bodies {
                CaptureArg::None => CaptureMode::None,
                CaptureArg::Text => CaptureMode::Text,
                CaptureArg::All => CaptureMode::All,
            },
            body_limit,
            stdout_line_limit,
            grace: seconds("--grace", a.grace)?,
            upstream_timeout: nonzero("--upstream-timeout", a.upstream_timeout)?,
            response_timeout: nonzero("--response-timeout", a.response_timeout)?,
            verbose: a.verbose,
            redact: RedactorConfig {
                extra_headers: a.redact_header,
                extra_query: a.redact_query,
                reveal_all: a.reveal.iter().any(|r| r.eq_ignore_ascii_case("all")),
                reveal: a
                    .reveal
                    .into_iter()
                    .filter(|r| !r.eq_ignore_ascii_case("all"))
                    .collect(),
            },
            limits: Limits {
                max_connections: match a.max_connections {
                    0 => return Err(bad("--max-connections", "must be at least 1")),
                    n => n,
                },
                max_header_size: match parse_size(&a.max_header_size) {
                    Ok(n) if n >= 1024 => n,
                    Ok(_) => return Err(bad("--max-header-size", "must be at least 1KiB")),
                    Err(m) => return Err(bad("--max-header-size", m)),
                },
                max_headers: match a.max_headers {
                    0 => return Err(bad("--max-headers", "must be at least 1")),
                    n => n,
                },
                request_header_timeout: nonzero(
                    "--request-header-timeout",
                    a.request_header_timeout,
                )?,
                idle_timeout: nonzero("--idle-timeout", a.idle_timeout)?,
                max_streams: match a.max_streams {
                    0 => return Err(bad("--max-streams", "must be at least 1")),
                    n => n,
                },
            },
            access: crate::access::Access::from_args(a.access)?,
            collector: a.collector,
            otlp: a.otlp,
        })
    }

    /// Whether `host` (a name or IP literal, without port) is excluded from interception.
    pub fn is_ignored(&self, host: &str) -> bool {
        self.ignore_hosts.iter().any(|r| r.is_match(host))
    }
}
