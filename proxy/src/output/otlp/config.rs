//! `--otlp-*` flags and the standard `OTEL_*` variables -> one validated [`OtlpSettings`],
//! decided before anything binds. Precedence, highest first: the `otlp:URL` output spec (for
//! the endpoint), a flag or its `FLOWTAP_OTLP_*` variable, the traces-specific `OTEL_*`
//! variable, the general `OTEL_*` variable, the spec's default.
//!
//! The exporter crate reads some variables itself (`OTEL_EXPORTER_OTLP_{,TRACES_}HEADERS`,
//! `_TIMEOUT`, `_COMPRESSION`, `_INSECURE`); what is decided here is passed to it explicitly,
//! which takes precedence over those.

use opentelemetry::trace::{TraceFlags, TraceId};
use opentelemetry::KeyValue;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Spans waiting for the export thread, by default (`OTEL_BSP_MAX_QUEUE_SIZE`'s default).
/// Past this, spans are dropped and counted rather than held: the exporter may be down.
pub const DEFAULT_QUEUE_SPANS: usize = 2048;
/// Most spans in one export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`'s default).
pub const DEFAULT_BATCH_SPANS: usize = 512;
/// Time one export request may take (`OTEL_EXPORTER_OTLP_TIMEOUT`'s default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest queue accepted: each queued span holds a record's attributes in memory.
const MAX_QUEUE_SPANS: usize = 1 << 20;

/// Flags of the OTLP exporter (each also read from a `FLOWTAP_OTLP_*` variable, and falling
/// back to the standard `OTEL_*` variables).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OtlpArgs {
    /// OTLP endpoint of the otlp output (`--output otlp`, or the collector's `--sink otlp`), a
    /// base URL as in OTEL_EXPORTER_OTLP_ENDPOINT
    /// (http/protobuf appends /v1/traces unless the path already ends with it).
    /// Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, then
    /// http://localhost:4318 (http/protobuf) or http://localhost:4317 (grpc).
    #[arg(long, env = "FLOWTAP_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf.
    /// Default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL, then http/protobuf.
    #[arg(long, env = "FLOWTAP_OTLP_PROTOCOL", value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// Record these request and response headers as span attributes
    /// (http.request.header.NAME), or `all`; values are redacted as in the records
    /// (repeatable). Off by default.
    #[arg(
        long,
        env = "FLOWTAP_OTLP_HEADERS",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub otlp_headers: Vec<String>,
    /// Extra header sent with every export request, KEY=VALUE (repeatable), added to those of
    /// OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(
        long,
        env = "FLOWTAP_OTLP_EXPORT_HEADERS",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub otlp_export_header: Vec<String>,
    /// service.name of the spans. Default: OTEL_SERVICE_NAME, service.name in
    /// OTEL_RESOURCE_ATTRIBUTES, then flowtap.
    #[arg(long, env = "FLOWTAP_OTLP_SERVICE_NAME", value_name = "NAME")]
    pub otlp_service_name: Option<String>,
    /// Seconds one export request may take. Default: OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    /// OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds), then 10.
    #[arg(long, env = "FLOWTAP_OTLP_TIMEOUT", value_name = "SECONDS")]
    pub otlp_timeout: Option<f64>,
    /// Compression of export requests: gzip or none. Default: OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    /// OTEL_EXPORTER_OTLP_COMPRESSION, then none.
    #[arg(long, env = "FLOWTAP_OTLP_COMPRESSION", value_name = "ALGORITHM")]
    pub otlp_compression: Option<String>,
    /// PEM file of CAs trusted for an https endpoint, besides the system roots.
    /// Default: OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, env = "FLOWTAP_OTLP_CA", value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    /// Spans held while the endpoint is slow or down; past this they are dropped and counted.
    /// Default: OTEL_BSP_MAX_QUEUE_SIZE, then 2048.
    #[arg(long, env = "FLOWTAP_OTLP_QUEUE", value_name = "SPANS")]
    pub otlp_queue: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" | "http" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which recorded headers become span attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HeaderCapture {
    #[default]
    None,
    All,
    /// Lower-case names.
    Named(Vec<String>),
}

impl HeaderCapture {
    pub fn wants(&self, name: &str) -> bool {
        match self {
            HeaderCapture::None => false,
            HeaderCapture::All => true,
            HeaderCapture::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

/// `OTEL_TRACES_SAMPLER` (+ `OTEL_TRACES_SAMPLER_ARG`); the default follows the caller's
/// sampled flag and samples every trace the proxy starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBased(Root),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl Sampler {
    /// Whether to export a span of `trace_id` whose caller sent `parent` flags (if any).
    pub fn samples(self, trace_id: TraceId, parent: Option<TraceFlags>) -> bool {
        match self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => ratio_samples(trace_id, r),
            Sampler::ParentBased(root) => match parent {
                Some(flags) => flags.is_sampled(),
                None => match root {
                    Root::AlwaysOn => true,
                    Root::AlwaysOff => false,
                    Root::Ratio(r) => ratio_samples(trace_id, r),
                },
            },
        }
    }
}

/// The TraceIdRatioBased rule: the trace id's low 63 bits against `ratio` of their range.
fn ratio_samples(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

/// Everything the OTLP output needs, validated.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    pub protocol: Protocol,
    /// The full URL requests go to (http/protobuf: with its `/v1/traces` path), or `None` to
    /// let the exporter take `OTEL_EXPORTER_OTLP_*ENDPOINT` or the default.
    pub endpoint: Option<String>,
    /// For messages: where the data goes.
    pub endpoint_shown: String,
    /// Whether that is a TLS endpoint (which then trusts the system roots and `ca_pem`).
    pub tls: bool,
    pub export_headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: Option<bool>,
    pub ca_pem: Option<Vec<u8>>,
    pub queue: usize,
    pub batch: usize,
    pub headers: HeaderCapture,
    pub sampler: Sampler,
    pub resource: Vec<KeyValue>,
}

/// Reads a variable; empty counts as unset (as the OTel spec says).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn first(env: Env, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| env(n).map(|v| (*n, v)))
}

/// Resolves the settings of one `otlp[:URL]` output; errors name the flag or variable (the caller
/// names the output).
pub fn resolve(
    a: &OtlpArgs,
    spec_endpoint: Option<&str>,
    env: Env,
) -> Result<OtlpSettings, String> {
    let protocol = match &a.otlp_protocol {
        Some(p) => Protocol::parse(p).ok_or_else(|| bad_protocol("--otlp-protocol", p))?,
        None => match first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        ) {
            Some((var, p)) => Protocol::parse(&p).ok_or_else(|| bad_protocol(var, &p))?,
            None => Protocol::HttpProtobuf,
        },
    };

    // The caller names the output spec in its errors; --otlp-endpoint is named here.
    let given = spec_endpoint
        .map(|e| ("", e.to_string()))
        .or_else(|| a.otlp_endpoint.clone().map(|e| ("--otlp-endpoint: ", e)));
    let (endpoint, endpoint_shown) = match given {
        Some((flag, url)) => {
            let url = endpoint_url(&url, protocol).map_err(|m| format!("{flag}{m}"))?;
            (Some(url.clone()), url)
        }
        None => (None, default_endpoint_shown(protocol, env)),
    };
    // TLS when the URL says https, or (gRPC) when it has no scheme and is not marked insecure.
    let tls = endpoint_shown.starts_with("https://")
        || (!endpoint_shown.contains("://")
            && !first(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
                    "OTEL_EXPORTER_OTLP_INSECURE",
                ],
            )
            .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("true")));

    let mut export_headers = Vec::new();
    for kv in &a.otlp_export_header {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| format!("--otlp-export-header {kv:?}: expected KEY=VALUE"))?;
        let k = k.trim().to_ascii_lowercase();
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v.trim()).is_err()
        {
            return Err(format!("--otlp-export-header {kv:?}: not a valid header"));
        }
        export_headers.push((k, v.trim().to_string()));
    }
    // The exporter adds the OTEL_* headers after ours: refuse a clash rather than let the
    // variable silently win over the flag.
    if let Some((var, list)) = first(
        env,
        &[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
    ) {
        for item in list.split(',') {
            let name = item
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if export_headers.iter().any(|(k, _)| *k == name) {
                return Err(format!(
                    "--otlp-export-header: {name} is also set in {var}; set it in one place"
                ));
            }
        }
    }

    let timeout = match a.otlp_timeout {
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(format!(
                "--otlp-timeout: {s} is not between 0 and 3600 seconds"
            ))
        }
        None => match first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
        ) {
            Some((var, ms)) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| format!("{var}: {ms:?} is not a number of milliseconds"))?,
            None => DEFAULT_TIMEOUT,
        },
    };
    let gzip = match a.otlp_compression.as_deref().map(str::trim) {
        None => None,
        Some("gzip") => Some(true),
        Some("none") => Some(false),
        Some(other) => return Err(format!("--otlp-compression: {other:?} is not gzip or none")),
    };

    let ca_path = a.otlp_ca.clone().map(|p| ("--otlp-ca", p)).or_else(|| {
        first(
            env,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ],
        )
        .map(|(v, p)| (v, PathBuf::from(p)))
    });
    let ca_pem = match ca_path {
        Some((flag, p)) => {
            let pem = std::fs::read(&p)
                .map_err(|e| format!("{flag} {}: cannot read: {e}", p.display()))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(format!("{flag} {}: no PEM certificate in it", p.display()));
            }
            Some(pem)
        }
        None => None,
    };

    let queue = match a.otlp_queue {
        Some(n) => Some(("--otlp-queue", n)),
        None => {
            parse_count(env, "OTEL_BSP_MAX_QUEUE_SIZE")?.map(|n| ("OTEL_BSP_MAX_QUEUE_SIZE", n))
        }
    };
    let queue = match queue {
        Some((flag, n)) if n == 0 || n > MAX_QUEUE_SPANS => {
            return Err(format!(
                "{flag}: {n} is not between 1 and {MAX_QUEUE_SPANS}"
            ))
        }
        Some((_, n)) => n,
        None => DEFAULT_QUEUE_SPANS,
    };
    let batch = parse_count(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
        .unwrap_or(DEFAULT_BATCH_SPANS)
        .clamp(1, queue);

    let headers = header_capture(&a.otlp_headers)?;
    let sampler = sampler(env)?;
    let resource = resource(a.otlp_service_name.as_deref(), env);
    Ok(OtlpSettings {
        protocol,
        endpoint,
        endpoint_shown,
        tls,
        export_headers,
        timeout,
        gzip,
        ca_pem,
        queue,
        batch,
        headers,
        sampler,
        resource,
    })
}

fn bad_protocol(flag: &str, p: &str) -> String {
    let hint = if p.trim().eq_ignore_ascii_case("http/json") {
        " (http/json is not supported)"
    } else {
        ""
    };
    format!("{flag}: {p:?} is not grpc or http/protobuf{hint}")
}

fn parse_count(env: Env, var: &str) -> Result<Option<usize>, String> {
    env(var)
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{var}: {v:?} is not a number"))
        })
        .transpose()
}

/// A flag's endpoint as the URL requests go to: http/protobuf gets `/v1/traces` appended to a
/// base URL (as for OTEL_EXPORTER_OTLP_ENDPOINT); gRPC uses it as given.
fn endpoint_url(url: &str, protocol: Protocol) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?}: expected an http:// or https:// URL")),
    }
    if uri.host().is_none() {
        return Err(format!("{url:?}: no host"));
    }
    match protocol {
        Protocol::Grpc => Ok(url.to_string()),
        Protocol::HttpProtobuf => {
            let path = uri.path().trim_end_matches('/');
            if path.ends_with("/v1/traces") || uri.query().is_some() {
                Ok(url.to_string())
            } else {
                let base = url.trim_end_matches('/');
                Ok(format!("{base}/v1/traces"))
            }
        }
    }
}

/// For messages only: the endpoint the exporter will pick from the environment.
fn default_endpoint_shown(protocol: Protocol, env: Env) -> String {
    if let Some(u) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return u;
    }
    match (env("OTEL_EXPORTER_OTLP_ENDPOINT"), protocol) {
        (Some(u), Protocol::HttpProtobuf) => format!("{}/v1/traces", u.trim_end_matches('/')),
        (Some(u), Protocol::Grpc) => u,
        (None, Protocol::HttpProtobuf) => "http://localhost:4318/v1/traces".into(),
        (None, Protocol::Grpc) => "http://localhost:4317".into(),
    }
}

fn header_capture(names: &[String]) -> Result<HeaderCapture, String> {
    let names: Vec<String> = names
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(HeaderCapture::None);
    }
    if names.iter().any(|n| n == "all" || n == "*") {
        return Ok(HeaderCapture::All);
    }
    for n in &names {
        if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
            return Err(format!("--otlp-headers: {n:?} is not a header name"));
        }
    }
    Ok(HeaderCapture::Named(names))
}

fn sampler(env: Env) -> Result<Sampler, String> {
    let Some(name) = env("OTEL_TRACES_SAMPLER") else {
        return Ok(Sampler::ParentBased(Root::AlwaysOn));
    };
    let ratio = || -> Result<f64, String> {
        match env("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG: {a:?} is not a ratio in [0, 1]")),
        }
    };
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::Ratio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: {other:?} is not one of always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
            ))
        }
    })
}

/// Downward-API variables (as the deploy manifests set them) and the attribute each gives.
const K8S_VARS: [(&str, &[&str]); 3] = [
    ("k8s.pod.name", &["K8S_POD_NAME", "POD_NAME"]),
    (
        "k8s.namespace.name",
        &["K8S_NAMESPACE_NAME", "POD_NAMESPACE"],
    ),
    ("k8s.node.name", &["K8S_NODE_NAME", "NODE_NAME"]),
];

/// Resource attributes, later entries winning: Kubernetes downward-API variables and a
/// generated `service.instance.id`, then OTEL_RESOURCE_ATTRIBUTES, then the service name
/// (flag, OTEL_SERVICE_NAME, the attribute, `flowtap`).
fn resource(service_flag: Option<&str>, env: Env) -> Vec<KeyValue> {
    let mut attrs: BTreeMap<String, String> = BTreeMap::new();
    for (key, vars) in K8S_VARS {
        if let Some((_, v)) = vars.iter().find_map(|n| env(n).map(|v| (n, v))) {
            attrs.insert(key.to_string(), v.trim().to_string());
        }
    }
    let instance = match (attrs.get("k8s.namespace.name"), attrs.get("k8s.pod.name")) {
        (Some(ns), Some(pod)) => format!("{ns}.{pod}"),
        _ => uuid::Uuid::now_v7().to_string(),
    };
    attrs.insert("service.instance.id".into(), instance);
    if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
        match parse_resource_attributes(&list) {
            Some(kvs) => attrs.extend(kvs),
            None => tracing::warn!(
                "OTEL_RESOURCE_ATTRIBUTES is not a list of key=value with percent-encoding; ignored"
            ),
        }
    }
    let service = service_flag
        .map(str::to_string)
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .or_else(|| attrs.get("service.name").cloned())
        .unwrap_or_else(|| "flowtap".into());
    attrs.insert("service.name".into(), service);
    attrs
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect()
}

/// `k1=v1,k2=v2` with `%XX` escapes; `None` (the whole list ignored) on a malformed entry.
pub fn parse_resource_attributes(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (k, v) = entry.split_once('=')?;
        let k = percent_decode(k.trim())?;
        if k.is_empty() {
            return None;
        }
        out.push((k, percent_decode(v.trim())?));
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn attr(s: &OtlpSettings, key: &str) -> Option<String> {
        s.resource
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = resolve(&OtlpArgs::default(), None, &env_of(&[])).unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint, None);
        assert_eq!(s.endpoint_shown, "http://localhost:4318/v1/traces");
        assert!(!s.tls);
        assert_eq!(s.queue, DEFAULT_QUEUE_SPANS);
        assert_eq!(s.headers, HeaderCapture::None);
        assert_eq!(s.sampler, Sampler::ParentBased(Root::AlwaysOn));
        assert_eq!(attr(&s, "service.name").as_deref(), Some("flowtap"));
        assert!(attr(&s, "service.instance.id").is_some());
    }

    #[test]
    fn protocol_and_endpoint_precedence() {
        let env = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ]);
        let s = resolve(&OtlpArgs::default(), None, &env).unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.endpoint_shown, "http://collector:4317");
        let https = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
        ]);
        assert!(resolve(&OtlpArgs::default(), None, &https).unwrap().tls);
        let bare = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ]);
        assert!(resolve(&OtlpArgs::default(), None, &bare).unwrap().tls);
        let insecure = env_of(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        assert!(!resolve(&OtlpArgs::default(), None, &insecure).unwrap().tls);
        let a = OtlpArgs {
            otlp_protocol: Some("http/protobuf".into()),
            otlp_endpoint: Some("http://flag:4318/".into()),
            ..Default::default()
        };
        let s = resolve(&a, None, &env).unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint.as_deref(), Some("http://flag:4318/v1/traces"));
        let s = resolve(&a, Some("http://spec:9/otlp/v1/traces"), &env).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://spec:9/otlp/v1/traces"));
        let bad = OtlpArgs {
            otlp_protocol: Some("http/json".into()),
            ..Default::default()
        };
        let e = resolve(&bad, None, &env).unwrap_err();
        assert!(
            e.contains("--otlp-protocol") && e.contains("not supported"),
            "{e}"
        );
        let e = resolve(&a, Some("collector:4317"), &env).unwrap_err();
        assert!(e.starts_with("\"collector:4317\": expected an http"), "{e}");
    }

    #[test]
    fn export_header_clash_is_refused() {
        let env = env_of(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-scope-orgid=a,authorization=b",
        )]);
        let a = OtlpArgs {
            otlp_export_header: vec!["X-Scope-OrgID=t1".into()],
            ..Default::default()
        };
        assert!(resolve(&a, None, &env)
            .unwrap_err()
            .contains("x-scope-orgid"));
        let ok = resolve(&a, None, &env_of(&[])).unwrap();
        assert_eq!(
            ok.export_headers,
            vec![("x-scope-orgid".into(), "t1".into())]
        );
        let a = OtlpArgs {
            otlp_export_header: vec!["novalue".into()],
            ..Default::default()
        };
        assert!(resolve(&a, None, &env_of(&[])).is_err());
    }

    #[test]
    fn resource_precedence_and_k8s() {
        let env = env_of(&[
            ("POD_NAME", "web-1"),
            ("POD_NAMESPACE", "shop"),
            ("NODE_NAME", "n1"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,deployment.environment.name=prod%2Ceu,k8s.node.name=n2",
            ),
        ]);
        let s = resolve(&OtlpArgs::default(), None, &env).unwrap();
        assert_eq!(attr(&s, "service.name").as_deref(), Some("from-attrs"));
        assert_eq!(attr(&s, "k8s.pod.name").as_deref(), Some("web-1"));
        assert_eq!(attr(&s, "k8s.node.name").as_deref(), Some("n2"));
        assert_eq!(
            attr(&s, "service.instance.id").as_deref(),
            Some("shop.web-1")
        );
        assert_eq!(
            attr(&s, "deployment.environment.name").as_deref(),
            Some("prod,eu")
        );
        let env2 = env_of(&[
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=x"),
        ]);
        let s = resolve(&OtlpArgs::default(), None, &env2).unwrap();
        assert_eq!(attr(&s, "service.name").as_deref(), Some("svc"));
        let a = OtlpArgs {
            otlp_service_name: Some("flag".into()),
            ..Default::default()
        };
        let s = resolve(&a, None, &env2).unwrap();
        assert_eq!(attr(&s, "service.name").as_deref(), Some("flag"));
        assert_eq!(parse_resource_attributes("a=%zz"), None);
    }

    #[test]
    fn samplers() {
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let s = sampler(&env_of(&[])).unwrap();
        assert!(s.samples(t, None));
        assert!(s.samples(t, Some(TraceFlags::SAMPLED)));
        assert!(!s.samples(t, Some(TraceFlags::NOT_SAMPLED)));
        let on = sampler(&env_of(&[("OTEL_TRACES_SAMPLER", "always_on")])).unwrap();
        assert!(on.samples(t, Some(TraceFlags::NOT_SAMPLED)));
        let r = sampler(&env_of(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ]))
        .unwrap();
        assert!(!r.samples(t, None));
        assert!(sampler(&env_of(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")])).is_err());
    }

    #[test]
    fn header_capture_names() {
        assert_eq!(header_capture(&[]).unwrap(), HeaderCapture::None);
        assert_eq!(header_capture(&["all".into()]).unwrap(), HeaderCapture::All);
        let n = header_capture(&["Content-Type".into(), "x-req".into()]).unwrap();
        assert!(n.wants("content-type") && !n.wants("authorization"));
        assert!(header_capture(&["bad name".into()]).is_err());
    }
}
