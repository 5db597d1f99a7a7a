//! Sinks: where records go. `--sink` specs are parsed here and each sink is started.
//!
//! ```text
//! files          jsonl:DIR   acking: rotated JSON-lines files, fsynced before the ack
//! stdout         stdout      acking: JSON lines for a log shipper
//! queued         the bounded queue, batching and retry loop shared by the network sinks
//! http           the HTTPS client of the network sinks (rustls, ring)
//! loki           loki:URL             Loki push API
//! elasticsearch  elasticsearch:URL    _bulk into a data stream, documents from ecs
//! otlp           otlp, otlp:URL       spans, by the proxy's own OTLP exporter
//! ```

pub mod ecs;
pub mod elasticsearch;
pub mod files;
pub mod http;
pub mod loki;
pub mod otlp;
pub mod queued;
pub mod stdout;

use crate::config::Config;
use crate::hub::{AckingSink, Hub, OutputSink, QueuedSink};
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Files(PathBuf),
    Stdout,
    Loki(String),
    Elasticsearch(String),
    /// The OTLP endpoint, when given in the spec (else from --otlp-endpoint / OTEL_*).
    Otlp(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub kind: SinkKind,
    /// The spec as given, for messages.
    pub raw: String,
}

const SPEC_HELP: &str = "expected jsonl:DIR, stdout, loki:URL, elasticsearch:URL, otlp or otlp:URL";

impl SinkSpec {
    pub fn parse(s: &str) -> Result<SinkSpec, String> {
        let (name, rest) = match s.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (s, None),
        };
        let url = |r: Option<&str>| -> Result<String, String> {
            let r = r.unwrap_or("");
            if !(r.starts_with("http://") || r.starts_with("https://")) {
                return Err(format!(
                    "{s:?}: the URL must start with http:// or https://"
                ));
            }
            r.parse::<::http::Uri>()
                .map_err(|e| format!("{s:?}: {e}"))?;
            Ok(r.trim_end_matches('/').to_string())
        };
        let kind = match (name, rest) {
            ("jsonl", Some(dir)) if !dir.is_empty() => SinkKind::Files(PathBuf::from(dir)),
            ("jsonl", _) => return Err(format!("{s:?}: jsonl needs a directory (jsonl:DIR)")),
            ("stdout", None) => SinkKind::Stdout,
            ("loki", r) => SinkKind::Loki(url(r)?),
            ("elasticsearch" | "es", r) => SinkKind::Elasticsearch(url(r)?),
            ("otlp", None) => SinkKind::Otlp(None),
            ("otlp", r) => SinkKind::Otlp(Some(url(r)?)),
            _ => return Err(format!("{s:?}: {SPEC_HELP}")),
        };
        Ok(SinkSpec {
            kind,
            raw: s.to_string(),
        })
    }

    pub fn is_files(&self) -> bool {
        matches!(self.kind, SinkKind::Files(_))
    }

    /// The sink's name in metrics and logs: its kind, numbered when a kind is used twice.
    fn label(&self, index_of_kind: usize) -> String {
        let base = match self.kind {
            SinkKind::Files(_) => "jsonl",
            SinkKind::Stdout => "stdout",
            SinkKind::Loki(_) => "loki",
            SinkKind::Elasticsearch(_) => "elasticsearch",
            SinkKind::Otlp(_) => "otlp",
        };
        if index_of_kind == 0 {
            base.to_string()
        } else {
            format!("{base}-{}", index_of_kind + 1)
        }
    }
}

/// Everything the sinks started: the hub to submit to, the files written so far (to seed the
/// dedup set), and the tasks to wait for at shutdown.
pub struct Started {
    pub hub: Hub,
    pub existing_files: Vec<PathBuf>,
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens and starts every sink (must run inside the tokio runtime).
pub fn start(config: &Config, metrics: &Arc<Metrics>) -> Result<Started, String> {
    let mut started = Started {
        hub: Hub {
            acking: Vec::new(),
            queued: Vec::new(),
            outputs: Vec::new(),
            closed: false,
        },
        existing_files: Vec::new(),
        threads: Vec::new(),
        tasks: Vec::new(),
    };
    let client = if config
        .sinks
        .iter()
        .any(|s| matches!(s.kind, SinkKind::Loki(_) | SinkKind::Elasticsearch(_)))
    {
        Some(http::Client::new(config.sink_ca.as_deref()).map_err(|e| format!("--sink-ca: {e}"))?)
    } else {
        None
    };
    for (i, spec) in config.sinks.iter().enumerate() {
        let same_kind_before = config.sinks[..i]
            .iter()
            .filter(|s| std::mem::discriminant(&s.kind) == std::mem::discriminant(&spec.kind))
            .count();
        let name = spec.label(same_kind_before);
        let stats = metrics.add_sink(&name);
        let ctx = |e: String| format!("--sink {}: {e}", spec.raw);
        match &spec.kind {
            SinkKind::Files(dir) => {
                let (tx, existing, thread) =
                    files::start(dir, config.rotate_size, stats).map_err(ctx)?;
                started.existing_files = existing;
                started.threads.push(thread);
                started.hub.acking.push(AckingSink { name, tx });
            }
            SinkKind::Stdout => {
                let (tx, thread) = stdout::start(stats).map_err(ctx)?;
                started.threads.push(thread);
                started.hub.acking.push(AckingSink { name, tx });
            }
            SinkKind::Loki(url) => {
                let Some(client) = client.clone() else {
                    continue;
                };
                let push = loki::Loki::new(client, url, config).map_err(ctx)?;
                let (tx, task) = queued::start(push, stats.clone(), config.sink_queue, loki::BATCH);
                started.tasks.push(task);
                started.hub.queued.push(QueuedSink { tx, stats });
            }
            SinkKind::Elasticsearch(url) => {
                let Some(client) = client.clone() else {
                    continue;
                };
                let push = elasticsearch::Elastic::new(client, url, config).map_err(ctx)?;
                let (tx, task) =
                    queued::start(push, stats.clone(), config.sink_queue, elasticsearch::BATCH);
                started.tasks.push(task);
                started.hub.queued.push(QueuedSink { tx, stats });
            }
            SinkKind::Otlp(url) => {
                let (tx, thread) =
                    otlp::start(url.as_deref(), &config.otlp, stats.clone()).map_err(ctx)?;
                started.threads.push(thread);
                started.hub.outputs.push(OutputSink { tx, stats });
            }
        }
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            SinkSpec::parse("jsonl:/var/lib/flowtap").map(|s| s.kind),
            Ok(SinkKind::Files("/var/lib/flowtap".into()))
        );
        assert_eq!(
            SinkSpec::parse("stdout").map(|s| s.kind),
            Ok(SinkKind::Stdout)
        );
        assert_eq!(
            SinkSpec::parse("loki:http://loki:3100/").map(|s| s.kind),
            Ok(SinkKind::Loki("http://loki:3100".into()))
        );
        assert_eq!(
            SinkSpec::parse("elasticsearch:https://es:9200").map(|s| s.kind),
            Ok(SinkKind::Elasticsearch("https://es:9200".into()))
        );
        assert_eq!(
            SinkSpec::parse("otlp").map(|s| s.kind),
            Ok(SinkKind::Otlp(None))
        );
        assert_eq!(
            SinkSpec::parse("otlp:http://otel:4317").map(|s| s.kind),
            Ok(SinkKind::Otlp(Some("http://otel:4317".into())))
        );
        assert!(SinkSpec::parse("loki:loki:3100").is_err());
        assert!(SinkSpec::parse("jsonl").is_err());
        assert!(SinkSpec::parse("kafka:x").is_err());
    }
}
