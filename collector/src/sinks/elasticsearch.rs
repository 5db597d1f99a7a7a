//! `elasticsearch:URL`: `POST /_bulk` into a data stream.
//!
//! Each record is a `create` action with `_id` = the record id (data streams accept only
//! `create`; a fixed id makes a repeated create answer 409 instead of storing a duplicate),
//! followed by its ECS document (`ecs`). The body is NDJSON (`Content-Type:
//! application/x-ndjson`), ending in a newline. Responses, as the bulk API documents them:
//! - 200 with `errors: false`: all written;
//! - 200 with `errors: true`: per item, in request order: 200/201 written; 409 already there
//!   (written by an earlier attempt: counted as written and as already present); 429 and 5xx
//!   sent again, alone; anything else (400 mapping conflicts, ...) refused for good: logged with
//!   the id and Elasticsearch's reason, counted as rejected;
//! - 429 and 5xx for the whole request, or no response: the whole batch again, with backoff;
//! - 401/403: logged as a configuration error and retried (the queue absorbs the wait);
//! - any other status: the batch is refused, logged and counted.

use super::ecs;
use super::http::{join, snippet, split_credentials, Client};
use super::queued::{retry_after, BatchLimits, Push, Report};
use crate::config::Config;
use crate::hub::Item;
use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// A few MB per bulk request, as Elastic recommends (the server refuses over 100 MB).
pub const BATCH: BatchLimits = BatchLimits {
    max_records: 2_000,
    max_bytes: 5 << 20,
    max_wait: Duration::from_millis(500),
};
/// Item errors logged one by one per response; the rest are summed up in one line.
const ITEM_ERRORS_LOGGED: usize = 5;

pub struct Elastic {
    client: Client,
    url: Uri,
    headers: Vec<(&'static str, HeaderValue)>,
    index: String,
    stream: Option<(String, String, String)>,
    label: String,
}

impl Elastic {
    pub fn new(client: Client, url: &str, config: &Config) -> Result<Elastic, String> {
        let (base, basic) = split_credentials(url)?;
        let url = join(&base, "/_bulk")?;
        let mut headers = vec![
            (
                "user-agent",
                HeaderValue::from_static(concat!("flowtap-collector/", env!("CARGO_PKG_VERSION"))),
            ),
            (
                "content-type",
                HeaderValue::from_static("application/x-ndjson"),
            ),
        ];
        match (&config.es_api_key, basic) {
            (Some(key), _) => headers.push((
                "authorization",
                HeaderValue::from_str(&format!("ApiKey {key}"))
                    .map_err(|_| "--es-api-key: not a header value")?,
            )),
            (None, Some(b)) => headers.push(("authorization", b)),
            (None, None) => {}
        }
        Ok(Elastic {
            client,
            label: format!("elasticsearch {url}"),
            url,
            headers,
            index: config.es_data_stream.clone(),
            stream: ecs::data_stream_parts(&config.es_data_stream),
        })
    }

    fn body(&self, items: &[Item]) -> Vec<u8> {
        let mut out = Vec::with_capacity(items.len() * 2048);
        for item in items {
            let f = item.flow();
            let action = if f.id.is_empty() {
                serde_json::json!({"create": {"_index": self.index}})
            } else {
                serde_json::json!({"create": {"_index": self.index, "_id": f.id}})
            };
            let _ = serde_json::to_writer(&mut out, &action);
            out.push(b'\n');
            let _ = serde_json::to_writer(&mut out, &ecs::document(f, self.stream.as_ref()));
            out.push(b'\n');
        }
        out
    }

    /// Sorts the items of a 200 response with `errors: true`.
    fn per_item(&self, items: &[Item], resp: &BulkResponse) -> Report {
        if resp.items.len() != items.len() {
            return Report::retry_all(
                items,
                format!(
                    "bulk response lists {} items for {} documents",
                    resp.items.len(),
                    items.len()
                ),
                None,
            );
        }
        let mut report = Report::default();
        let mut logged = 0;
        let mut retry_reasons: HashMap<String, usize> = HashMap::new();
        for (item, result) in items.iter().zip(&resp.items) {
            let Some(r) = result.values().next() else {
                report.retry.push(item.clone());
                continue;
            };
            match r.status {
                200 | 201 => {}
                409 => report.already_present += 1,
                429 | 500..=599 => {
                    *retry_reasons.entry(r.error_type()).or_default() += 1;
                    report.retry.push(item.clone());
                }
                status => {
                    report.rejected += 1;
                    if logged < ITEM_ERRORS_LOGGED {
                        logged += 1;
                        tracing::error!(sink = %self.label, id = %item.flow().id, status,
                            error = %r.error_type(), reason = %r.error_reason(),
                            "Elasticsearch refused a record (mapping conflict or bad document); it stays in the other sinks");
                    }
                }
            }
        }
        if report.rejected > logged {
            tracing::error!(sink = %self.label, more = report.rejected - logged,
                "more records refused by Elasticsearch in the same bulk request");
        }
        let mut reasons: Vec<String> = retry_reasons
            .into_iter()
            .map(|(k, n)| format!("{n}x {k}"))
            .collect();
        reasons.sort();
        report.reason = format!("bulk items to retry: {}", reasons.join(", "));
        report
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<HashMap<String, ItemResult>>,
}

#[derive(Deserialize)]
struct ItemResult {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl ItemResult {
    fn error_type(&self) -> String {
        self.error
            .as_ref()
            .and_then(|e| e.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("unknown")
            .to_string()
    }

    fn error_reason(&self) -> String {
        self.error
            .as_ref()
            .and_then(|e| e.get("reason"))
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string()
    }
}

impl Push for Elastic {
    fn name(&self) -> &str {
        &self.label
    }

    async fn push(&mut self, items: &[Item]) -> Report {
        let body = Bytes::from(self.body(items));
        let reply = match self
            .client
            .send(Method::POST, &self.url, &self.headers, body)
            .await
        {
            Ok(r) => r,
            Err(e) => return Report::retry_all(items, e, None),
        };
        let status = reply.status.as_u16();
        match status {
            200 => match serde_json::from_slice::<BulkResponse>(&reply.body) {
                Ok(resp) if !resp.errors => Report::default(),
                Ok(resp) => self.per_item(items, &resp),
                Err(e) => Report::retry_all(
                    items,
                    format!("unreadable bulk response ({e}): {}", snippet(&reply.body)),
                    None,
                ),
            },
            429 | 500..=599 => Report::retry_all(
                items,
                format!("{}: {}", reply.status, snippet(&reply.body)),
                retry_after(&reply.headers),
            ),
            401 | 403 => {
                tracing::error!(sink = %self.label, status, response = %snippet(&reply.body),
                    "Elasticsearch refused the credentials (--es-api-key or user:password in the URL)");
                Report::retry_all(items, format!("{}", reply.status), None)
            }
            _ => {
                tracing::error!(sink = %self.label, status, response = %snippet(&reply.body),
                    records = items.len(), "Elasticsearch refused the bulk request; the records are not retried");
                Report::reject_all(items)
            }
        }
    }
}
