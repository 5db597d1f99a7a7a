//! `loki:URL`: the Loki push API, `POST /loki/api/v1/push`.
//!
//! Each record is one log line (its JSON v1 encoding, `source` included) at the record's own
//! `start` time, in a stream labelled with a few low-cardinality labels: `job`, `source`,
//! `server_host`, `method` and `status_class` (`2xx`, `4xx`, ...; `error` when no response came
//! back). Everything else stays in the line, for `| json` in LogQL. Bodies: JSON (gzipped by
//! default) or snappy-compressed protobuf (`logproto.PushRequest`), as `--loki-format` says.
//! `X-Scope-OrgID` carries `--loki-tenant`. Loki answers 204; 429 and 5xx are retried with
//! backoff (honouring `Retry-After`), other 4xx are logged and counted as rejected.

use super::http::{join, snippet, split_credentials, Client};
use super::queued::{retry_after, BatchLimits, Push, Report};
use crate::config::{Config, LokiFormat};
use crate::hub::Item;
use bytes::Bytes;
use flowtap_schema::Flow;
use http::{HeaderValue, Method, Uri};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

/// Batches as Grafana Alloy's `loki.write` cuts them: up to 1 MiB or 1 s.
pub const BATCH: BatchLimits = BatchLimits {
    max_records: 10_000,
    max_bytes: 1 << 20,
    max_wait: Duration::from_millis(500),
};
/// Loki refuses lines over `max_line_size` (256KB by default): a longer record is sent without
/// its captured bodies (marked truncated).
const MAX_LINE: usize = 250_000;
const PUSH_PATH: &str = "/loki/api/v1/push";

/// Entries (nanosecond timestamp, line) per label set.
type Streams = BTreeMap<Vec<(&'static str, String)>, Vec<(i128, String)>>;

pub struct Loki {
    client: Client,
    url: Uri,
    headers: Vec<(&'static str, HeaderValue)>,
    format: LokiFormat,
    job: String,
    label: String,
}

impl Loki {
    pub fn new(client: Client, url: &str, config: &Config) -> Result<Loki, String> {
        let (base, basic) = split_credentials(url)?;
        let url = if base.path().ends_with(PUSH_PATH) {
            base
        } else {
            join(&base, PUSH_PATH)?
        };
        let mut headers = vec![(
            "user-agent",
            HeaderValue::from_static(concat!("flowtap-collector/", env!("CARGO_PKG_VERSION"))),
        )];
        headers.push(match config.loki_format {
            LokiFormat::Protobuf => (
                "content-type",
                HeaderValue::from_static("application/x-protobuf"),
            ),
            _ => ("content-type", HeaderValue::from_static("application/json")),
        });
        if config.loki_format == LokiFormat::JsonGzip {
            headers.push(("content-encoding", HeaderValue::from_static("gzip")));
        }
        if let Some(t) = &config.loki_tenant {
            let v = HeaderValue::from_str(t).map_err(|_| "--loki-tenant: not a header value")?;
            headers.push(("x-scope-orgid", v));
        }
        if let Some(b) = basic {
            headers.push(("authorization", b));
        }
        Ok(Loki {
            client,
            label: format!("loki {}", url),
            url,
            headers,
            format: config.loki_format,
            job: config.loki_job.clone(),
        })
    }

    fn body(&self, streams: &Streams) -> Vec<u8> {
        match self.format {
            LokiFormat::Protobuf => {
                use prost::Message;
                let req = proto::PushRequest {
                    streams: streams
                        .iter()
                        .map(|(labels, entries)| proto::StreamAdapter {
                            labels: selector(labels),
                            entries: entries
                                .iter()
                                .map(|(ns, line)| proto::EntryAdapter {
                                    timestamp: Some(proto::Timestamp {
                                        seconds: ns.div_euclid(1_000_000_000) as i64,
                                        nanos: ns.rem_euclid(1_000_000_000) as i32,
                                    }),
                                    line: line.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                };
                let raw = req.encode_to_vec();
                snap::raw::Encoder::new()
                    .compress_vec(&raw)
                    .unwrap_or_default()
            }
            LokiFormat::Json | LokiFormat::JsonGzip => {
                let push = serde_json::json!({
                    "streams": streams.iter().map(|(labels, entries)| {
                        let stream: serde_json::Map<String, serde_json::Value> = labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                            .collect();
                        let values: Vec<[String; 2]> = entries
                            .iter()
                            .map(|(ns, line)| [ns.to_string(), line.clone()])
                            .collect();
                        serde_json::json!({"stream": stream, "values": values})
                    }).collect::<Vec<_>>()
                });
                let json = serde_json::to_vec(&push).unwrap_or_default();
                if self.format == LokiFormat::Json {
                    return json;
                }
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = gz.write_all(&json);
                gz.finish().unwrap_or_default()
            }
        }
    }
}

impl Push for Loki {
    fn name(&self) -> &str {
        &self.label
    }

    async fn push(&mut self, items: &[Item]) -> Report {
        let mut streams: Streams = BTreeMap::new();
        let mut rejected = 0;
        let mut sent: Vec<Item> = Vec::with_capacity(items.len());
        for item in items {
            let Some(line) = fit_line(item) else {
                tracing::error!(id = %item.flow().id, "record too large for a Loki line even without bodies; not sent to Loki");
                rejected += 1;
                continue;
            };
            streams
                .entry(labels(item.flow(), &self.job))
                .or_default()
                .push((timestamp_ns(&item.flow().start), line));
            sent.push(item.clone());
        }
        for entries in streams.values_mut() {
            entries.sort_by_key(|(ns, _)| *ns);
        }
        let mut report = Report {
            rejected,
            ..Report::default()
        };
        if streams.is_empty() {
            return report;
        }
        let body = Bytes::from(self.body(&streams));
        match self
            .client
            .send(Method::POST, &self.url, &self.headers, body)
            .await
        {
            Err(e) => {
                report.reason = e;
                report.retry = sent;
                report
            }
            Ok(r) if r.status.is_success() => report,
            Ok(r) if r.status.as_u16() == 429 || r.status.is_server_error() => {
                report.reason = format!("{}: {}", r.status, snippet(&r.body));
                report.retry_after = retry_after(&r.headers);
                report.retry = sent;
                report
            }
            Ok(r) => {
                tracing::error!(sink = %self.label, status = %r.status, response = %snippet(&r.body),
                    records = sent.len(), "Loki refused the push; the records are not retried");
                report.rejected += sent.len();
                report
            }
        }
    }
}

/// The stream labels of a record: few and of low cardinality (Loki indexes each label set as a
/// stream). Empty values are left out, as Loki treats them as absent.
fn labels(f: &Flow, job: &str) -> Vec<(&'static str, String)> {
    let host = f.server.as_ref().map(|s| s.host.as_str()).unwrap_or("");
    let method = f.request.as_ref().map(|r| r.method.as_str()).unwrap_or("");
    let status_class = match (&f.response, &f.error) {
        (Some(r), _) if r.status > 0 => format!("{}xx", r.status / 100),
        (_, Some(_)) => "error".to_string(),
        _ => String::new(),
    };
    let mut v: Vec<(&'static str, String)> = vec![
        ("job", job.to_string()),
        ("method", method.to_string()),
        ("server_host", host.to_string()),
        ("source", f.source.clone()),
        ("status_class", status_class),
    ];
    v.retain(|(_, val)| !val.is_empty());
    v
}

/// `{job="flowtap", method="GET"}`: the label set as the protobuf push wants it.
fn selector(labels: &[(&'static str, String)]) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// The record's start as nanoseconds since the epoch; now when it cannot be read.
fn timestamp_ns(start: &str) -> i128 {
    time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .unix_timestamp_nanos()
}

/// The record's line, without its bodies when it would be too long for Loki.
fn fit_line(item: &Item) -> Option<String> {
    let line = String::from_utf8_lossy(item.line());
    if line.len() <= MAX_LINE {
        return Some(line.into_owned());
    }
    let mut f = item.flow().clone();
    for body in [
        f.request.as_mut().and_then(|r| r.body.as_mut()),
        f.response.as_mut().and_then(|r| r.body.as_mut()),
    ]
    .into_iter()
    .flatten()
    {
        body.data.clear();
        body.truncated = true;
    }
    let line = serde_json::to_string(&f).ok()?;
    (line.len() <= MAX_LINE).then_some(line)
}

/// `logproto.PushRequest` of Loki's `pkg/push/push.proto`, the fields a client sends.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtap_schema::{Error, Request, Response, Server};

    #[test]
    fn labels_are_few_and_bounded() {
        let f = Flow {
            source: "proxy-a".into(),
            server: Some(Server {
                host: "api.example".into(),
                ..Default::default()
            }),
            request: Some(Request {
                method: "GET".into(),
                ..Default::default()
            }),
            response: Some(Response {
                status: 503,
                ..Default::default()
            }),
            ..Default::default()
        };
        let l = labels(&f, "flowtap");
        assert_eq!(
            selector(&l),
            r#"{job="flowtap", method="GET", server_host="api.example", source="proxy-a", status_class="5xx"}"#
        );
        let failed = Flow {
            error: Some(Error {
                kind: "upstream_connect".into(),
                message: "refused".into(),
            }),
            ..Default::default()
        };
        assert!(labels(&failed, "flowtap").contains(&("status_class", "error".to_string())));
    }

    #[test]
    fn timestamps_in_nanoseconds() {
        assert_eq!(
            timestamp_ns("2024-08-12T09:23:28.535123Z"),
            1_723_454_608_535_123_000
        );
    }
}
