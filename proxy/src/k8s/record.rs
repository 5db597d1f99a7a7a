//! The annotation attach leaves on the workload: every field it set, with the value that field
//! had before (`null`: it was absent). Detach reads it back; a second attach starts from it,
//! so attaching twice records the true originals, not the first attach's values.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The workload annotation holding the record (JSON).
pub const RECORD_ANNOTATION: &str = "flowtap.dev/attached";
/// Version of the record's layout.
const RECORD_VERSION: u32 = 1;

/// How the workload reaches flowtap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The proxy variables point at a shared proxy (`--proxy URL`).
    #[default]
    Proxy,
    /// A flowtap sidecar in each pod, the pod's connections redirected to it (`--transparent`).
    Transparent,
}

impl Variant {
    fn is_proxy(&self) -> bool {
        *self == Variant::Proxy
    }

    /// How a person would name it: the flag that picks it.
    pub fn describe(self) -> &'static str {
        match self {
            Variant::Proxy => "the shared proxy (--proxy)",
            Variant::Transparent => "the transparent sidecar (--transparent)",
        }
    }
}

/// What attach changed, and what was there before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    /// Absent in records of the proxy variant (they predate the field).
    #[serde(default, skip_serializing_if = "Variant::is_proxy")]
    pub variant: Variant,
    /// The proxy URL the workload was attached to (empty for the transparent variant).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy: String,
    /// The trust ConfigMap, deleted on detach.
    pub config_map: String,
    /// Pod template labels and annotations set, by key, with the value each had before.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub pod_annotations: BTreeMap<String, Option<String>>,
    /// Pod volumes set, by name, with the volume that had that name before.
    #[serde(default)]
    pub volumes: BTreeMap<String, Option<Value>>,
    /// Per container, by name.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Init containers added (the sidecar's), by name, with the one that had that name before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub init_containers: BTreeMap<String, Option<Value>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    /// Variables set, by name, with the variable (value or valueFrom) they replaced.
    #[serde(default)]
    pub env: BTreeMap<String, Option<Value>>,
    /// Mounts set, by mountPath, with the mount they replaced.
    #[serde(default)]
    pub volume_mounts: BTreeMap<String, Option<Value>>,
}

impl Record {
    pub fn new(variant: Variant, proxy: &str, config_map: &str) -> Self {
        Record {
            version: RECORD_VERSION,
            variant,
            proxy: proxy.to_string(),
            config_map: config_map.to_string(),
            ..Record::default()
        }
    }

    /// Reads the record from the annotation's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let record: Record = serde_json::from_str(text).map_err(|e| {
            format!("the {RECORD_ANNOTATION} annotation is not a flowtap record: {e}")
        })?;
        if record.version != RECORD_VERSION {
            return Err(format!(
                "the {RECORD_ANNOTATION} annotation has version {}; this flowtap reads {RECORD_VERSION}",
                record.version
            ));
        }
        Ok(record)
    }

    pub fn to_annotation(&self) -> String {
        // A map of plain data always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_absent_as_null() {
        let mut r = Record::new(Variant::Proxy, "http://p:8080", "cm");
        r.pod_labels.insert("flowtap.dev/attached".into(), None);
        let c = r.containers.entry("app".into()).or_default();
        c.env.insert("HTTP_PROXY".into(), None);
        c.env.insert(
            "JAVA_TOOL_OPTIONS".into(),
            Some(serde_json::json!({"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g"})),
        );
        let text = r.to_annotation();
        assert!(text.contains(r#""HTTP_PROXY":null"#), "{text}");
        assert_eq!(Record::parse(&text).expect("parse"), r);
        assert!(Record::parse("{}").is_err());
        assert!(Record::parse(&text.replace(r#""version":1"#, r#""version":9"#)).is_err());
        // The proxy variant's record is as it was before the transparent one existed.
        assert!(
            !text.contains("variant") && !text.contains("initContainers"),
            "{text}"
        );
    }

    #[test]
    fn transparent_record() {
        let mut r = Record::new(Variant::Transparent, "", "cm");
        r.init_containers.insert("flowtap".into(), None);
        let text = r.to_annotation();
        assert!(text.contains(r#""variant":"transparent""#), "{text}");
        assert!(
            text.contains(r#""initContainers":{"flowtap":null}"#),
            "{text}"
        );
        assert!(!text.contains(r#""proxy""#), "{text}");
        assert_eq!(Record::parse(&text).expect("parse"), r);
    }
}
