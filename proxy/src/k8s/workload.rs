//! The workloads attach works on: which kinds, where their pod template sits, and reading one
//! from a manifest file (YAML or JSON, one or more documents).

use super::{flag, K8sError};
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

/// A kind of workload with a pod template.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
}

impl Kind {
    /// Parses what kubectl accepts for these kinds: `deployment`, `deployments`, `deploy`,
    /// `deployment.apps`, `Deployment`, ...
    pub fn parse(s: &str) -> Option<Kind> {
        let lower = s.to_ascii_lowercase();
        let base = lower
            .strip_suffix(".apps")
            .or_else(|| lower.strip_suffix(".batch"))
            .unwrap_or(&lower);
        match base {
            "deployment" | "deployments" | "deploy" => Some(Kind::Deployment),
            "statefulset" | "statefulsets" | "sts" => Some(Kind::StatefulSet),
            "daemonset" | "daemonsets" | "ds" => Some(Kind::DaemonSet),
            "cronjob" | "cronjobs" | "cj" => Some(Kind::CronJob),
            _ => None,
        }
    }

    /// The `kind` field of the object.
    pub fn object_kind(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::CronJob => "CronJob",
        }
    }

    /// The `apiVersion` of the object.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::CronJob => "batch/v1",
            _ => "apps/v1",
        }
    }

    /// The resource name kubectl takes (`kubectl get deployment/NAME`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::CronJob => "cronjob",
        }
    }

    /// Path from the object to its pod template (the object with `metadata` and `spec`).
    pub fn template_path(self) -> &'static [&'static str] {
        match self {
            Kind::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }
}

/// `KIND/NAME` as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRef {
    pub kind: Kind,
    pub name: String,
}

impl WorkloadRef {
    pub fn parse(s: &str) -> Result<Self, K8sError> {
        let (kind, name) = s.split_once('/').ok_or_else(|| {
            flag(
                "KIND/NAME",
                format!("{s:?}: expected KIND/NAME, e.g. deployment/velero"),
            )
        })?;
        let kind = Kind::parse(kind).ok_or_else(|| {
            flag(
                "KIND/NAME",
                format!(
                    "{s:?}: {kind:?} is not a workload attach knows; use deployment, \
                     statefulset, daemonset or cronjob"
                ),
            )
        })?;
        if !is_dns_subdomain(name) {
            return Err(flag(
                "KIND/NAME",
                format!("{s:?}: {name:?} is not a valid object name"),
            ));
        }
        Ok(WorkloadRef {
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.resource(), self.name)
    }
}

/// Whether `s` is a valid Kubernetes object name (RFC 1123 subdomain).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Finds the workload in a manifest file: the document (or `List` item) whose kind and name
/// match, and whose namespace matches when one is asked for.
pub fn from_file(
    path: &Path,
    target: &WorkloadRef,
    namespace: Option<&str>,
) -> Result<Value, K8sError> {
    let text = std::fs::read_to_string(path).map_err(|source| K8sError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let what = || format!("{}", path.display());
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde::Deserialize::deserialize(doc).map_err(|e| K8sError::Manifest {
            what: what(),
            message: format!("not YAML or JSON: {e}"),
        })?;
        flatten_lists(value, &mut docs);
    }
    let mut found = docs.into_iter().filter(|doc| {
        doc.get("kind").and_then(Value::as_str) == Some(target.kind.object_kind())
            && doc.pointer("/metadata/name").and_then(Value::as_str) == Some(&target.name)
            && namespace.is_none_or(|ns| {
                doc.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .is_none_or(|n| n == ns)
            })
    });
    let first = found.next().ok_or_else(|| K8sError::Manifest {
        what: what(),
        message: format!(
            "no {} named {:?} in it",
            target.kind.object_kind(),
            target.name
        ),
    })?;
    if found.next().is_some() {
        return Err(K8sError::Manifest {
            what: what(),
            message: format!(
                "more than one {} named {:?}; give -n NAMESPACE",
                target.kind.object_kind(),
                target.name
            ),
        });
    }
    Ok(first)
}

/// Documents of a stream, with `kind: List` expanded into its items and empty documents
/// (a trailing `---`) left out.
fn flatten_lists(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Null => {}
        Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
            if let Some(Value::Array(items)) = map.remove("items") {
                for item in items {
                    flatten_lists(item, out);
                }
            }
        }
        other => out.push(other),
    }
}

/// Checks that `object` is the workload asked for, and returns its pod template.
pub fn pod_template<'a>(
    object: &'a Value,
    target: &WorkloadRef,
) -> Result<&'a Map<String, Value>, K8sError> {
    let kind = object.get("kind").and_then(Value::as_str);
    if kind != Some(target.kind.object_kind()) {
        return Err(K8sError::Manifest {
            what: target.to_string(),
            message: format!("the object read is a {}", kind.unwrap_or("(no kind)")),
        });
    }
    let mut at = object;
    for key in target.kind.template_path() {
        at = at.get(key).ok_or_else(|| K8sError::Manifest {
            what: target.to_string(),
            message: format!(
                "no pod template at .{}",
                target.kind.template_path().join(".")
            ),
        })?;
    }
    at.as_object().ok_or_else(|| K8sError::Manifest {
        what: target.to_string(),
        message: "the pod template is not an object".to_string(),
    })
}

/// A container of a pod template: its name and its object.
pub type Container<'a> = (&'a str, &'a Map<String, Value>);

/// The containers of a pod template, by name, in order.
pub fn containers(template: &Map<String, Value>) -> Vec<Container<'_>> {
    template
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    let c = c.as_object()?;
                    Some((c.get("name")?.as_str()?, c))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The namespace in the object's metadata, if any.
pub fn namespace_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
}

/// The annotations of the object's metadata.
pub fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_as_kubectl_spells_them() {
        for (s, k) in [
            ("deployment", Kind::Deployment),
            ("deploy", Kind::Deployment),
            ("deployments.apps", Kind::Deployment),
            ("Deployment", Kind::Deployment),
            ("sts", Kind::StatefulSet),
            ("statefulset", Kind::StatefulSet),
            ("ds", Kind::DaemonSet),
            ("cronjob.batch", Kind::CronJob),
        ] {
            assert_eq!(Kind::parse(s), Some(k), "{s}");
        }
        assert_eq!(Kind::parse("pod"), None);
        assert_eq!(Kind::parse("job"), None);
    }

    #[test]
    fn workload_refs() {
        let r = WorkloadRef::parse("deploy/velero").expect("ref");
        assert_eq!(r.kind, Kind::Deployment);
        assert_eq!(r.to_string(), "deployment/velero");
        for bad in [
            "velero",
            "pod/x",
            "deployment/",
            "deployment/Velero",
            "deployment/a_b",
        ] {
            assert!(WorkloadRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_document_in_a_stream() {
        let dir = std::env::temp_dir().join(format!("flowtap-k8s-wl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("m.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Service\nmetadata: {name: app}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: a}\n\
             spec: {template: {spec: {containers: [{name: c, image: x}]}}}\n---\n",
        )
        .expect("write");
        let target = WorkloadRef::parse("deployment/app").expect("ref");
        let obj = from_file(&path, &target, None).expect("found");
        assert_eq!(namespace_of(&obj), Some("a"));
        let t = pod_template(&obj, &target).expect("template");
        assert_eq!(containers(t)[0].0, "c");
        assert!(from_file(&path, &target, Some("b")).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
