//! Strategic merge patches (what `kubectl patch --type strategic` and the API server apply) for
//! attach and detach.
//!
//! Lists in a pod template merge by key: containers and volumes by `name`, env by `name`,
//! volumeMounts by `mountPath`. An element in the patch merges into the element with the same
//! key, so replacing one means also sending `null` for every field it had that the new one
//! lacks (a `value` must drop a `valueFrom`); removing one is `{"$patch": "delete"}`.
//! Attach records each original element (see `record`) and detach writes it back.
//!
//! The transparent sidecar's init containers are whole elements: replacing one also deletes
//! the entries of its keyed lists (env, mounts, ports) the new one lacks. They go after the
//! pod's own init containers (`$setElementOrder`; a patch would put new elements first), so
//! those run before the redirect rules, as they did before.

use super::record::{ContainerRecord, Record, RECORD_ANNOTATION};
use super::settings::{EnvValue, Settings};
use super::workload::{containers, WorkloadRef};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The current pod template, indexed for lookups.
struct Current<'a> {
    template: &'a Map<String, Value>,
}

impl<'a> Current<'a> {
    fn meta(&self, field: &str, key: &str) -> Option<String> {
        self.template
            .get("metadata")?
            .get(field)?
            .get(key)?
            .as_str()
            .map(str::to_string)
    }

    fn volume(&self, name: &str) -> Option<&'a Map<String, Value>> {
        find(self.template.get("spec")?.get("volumes")?, "name", name)
    }

    fn container(&self, name: &str) -> Option<&'a Map<String, Value>> {
        containers(self.template)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
    }

    fn init_container(&self, name: &str) -> Option<&'a Map<String, Value>> {
        find(
            self.template.get("spec")?.get("initContainers")?,
            "name",
            name,
        )
    }

    /// Names of the init containers, in order.
    fn init_container_names(&self) -> Vec<&'a str> {
        self.template
            .get("spec")
            .and_then(|s| s.get("initContainers"))
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Lists inside a container that merge by a key (the others are replaced whole by a patch).
const KEYED_LISTS: &[(&str, &str)] = &[
    ("env", "name"),
    ("volumeMounts", "mountPath"),
    ("volumeDevices", "devicePath"),
    ("ports", "containerPort"),
];

fn find<'a>(list: &'a Value, key: &str, wanted: &str) -> Option<&'a Map<String, Value>> {
    list.as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|m| m.get(key).and_then(Value::as_str) == Some(wanted))
}

fn env_entry<'a>(c: &'a Map<String, Value>, name: &str) -> Option<&'a Map<String, Value>> {
    find(c.get("env")?, "name", name)
}

fn mount_entry<'a>(c: &'a Map<String, Value>, path: &str) -> Option<&'a Map<String, Value>> {
    find(c.get("volumeMounts")?, "mountPath", path)
}

/// The env entry a container had before any attach: from the record, else as it is now.
pub fn original_env(
    template: &Map<String, Value>,
    record: Option<&Record>,
    container: &str,
    var: &str,
) -> Option<Value> {
    if let Some(before) = record
        .and_then(|r| r.containers.get(container))
        .and_then(|c| c.env.get(var))
    {
        return before.clone();
    }
    Current { template }
        .container(container)
        .and_then(|c| env_entry(c, var))
        .map(|m| Value::Object(m.clone()))
}

/// A pod template annotation as it was before any attach: from the record, else as it is now.
pub fn original_pod_annotation(
    template: &Map<String, Value>,
    record: Option<&Record>,
    key: &str,
) -> Option<String> {
    match record.and_then(|r| r.pod_annotations.get(key)) {
        Some(before) => before.clone(),
        None => Current { template }.meta("annotations", key),
    }
}

/// A patch element that turns `current` into `desired`: `desired`, plus `null` for each field
/// of `current` that `desired` lacks, recursively through nested objects and the elements of
/// keyed lists (`KEYED_LISTS`), whose elements `desired` lacks are deleted.
fn replace_element(current: Option<&Map<String, Value>>, desired: &Map<String, Value>) -> Value {
    let mut out = desired.clone();
    if let Some(current) = current {
        for (k, v) in current {
            match (out.get_mut(k), v) {
                (None, _) => {
                    out.insert(k.clone(), Value::Null);
                }
                (Some(Value::Object(d)), Value::Object(c)) => {
                    let d = std::mem::take(d);
                    out.insert(k.clone(), replace_element(Some(c), &d));
                }
                (Some(Value::Array(d)), Value::Array(c)) => {
                    if let Some((_, key)) = KEYED_LISTS.iter().find(|(list, _)| list == k) {
                        *d = replace_keyed_list(key, c, d);
                    }
                }
                _ => {}
            }
        }
    }
    Value::Object(out)
}

/// The patch for a keyed list: each desired element replacing its namesake, then a delete for
/// each current element the desired list lacks.
fn replace_keyed_list(key: &str, current: &[Value], desired: &[Value]) -> Vec<Value> {
    let id = |v: &Value| v.get(key).cloned();
    let mut out: Vec<Value> = desired
        .iter()
        .map(|d| {
            let now = current
                .iter()
                .find(|c| id(c).is_some() && id(c) == id(d))
                .and_then(Value::as_object);
            match d.as_object() {
                Some(d) => replace_element(now, d),
                None => d.clone(),
            }
        })
        .collect();
    for c in current {
        if let Some(k) = id(c) {
            if !desired.iter().any(|d| id(d).as_ref() == Some(&k)) {
                out.push(json!({ key: k, "$patch": "delete" }));
            }
        }
    }
    out
}

/// The patch element that puts back `original` (None: the element was absent) in a list
/// keyed by `key`; None when nothing is to be done.
fn restore_element(
    key: &str,
    id: &str,
    current: Option<&Map<String, Value>>,
    original: Option<&Value>,
) -> Option<Value> {
    match (original.and_then(Value::as_object), current) {
        (Some(orig), _) => Some(replace_element(current, orig)),
        (None, Some(_)) => Some(json!({ key: id, "$patch": "delete" })),
        (None, None) => None,
    }
}

/// Builds the attach patch for the workload, whose pod template is `template`, from the
/// settings and any record a previous attach left; the patch stores `record`, filled in.
pub fn attach(
    target: &WorkloadRef,
    template: &Map<String, Value>,
    previous: Option<&Record>,
    settings: &Settings,
    mut record: Record,
    notes: &mut Vec<String>,
) -> Value {
    let now = Current { template };
    let mut labels = Map::new();
    let mut annotations = Map::new();
    meta_changes(
        "labels",
        &now,
        &settings.pod_labels,
        previous.map(|p| &p.pod_labels),
        &mut record.pod_labels,
        &mut labels,
    );
    meta_changes(
        "annotations",
        &now,
        &settings.pod_annotations,
        previous.map(|p| &p.pod_annotations),
        &mut record.pod_annotations,
        &mut annotations,
    );

    let mut volumes = Vec::new();
    for vol in &settings.volumes {
        let name = vol["name"].as_str().unwrap_or_default();
        let original = match previous.and_then(|p| p.volumes.get(name)) {
            Some(before) => before.clone(),
            None => now.volume(name).map(|m| Value::Object(m.clone())),
        };
        if let Some(vol) = vol.as_object() {
            volumes.push(replace_element(now.volume(name), vol));
        }
        record.volumes.insert(name.to_string(), original);
    }
    if let Some(prev) = previous {
        for (name, original) in &prev.volumes {
            if !record.volumes.contains_key(name) {
                volumes.extend(restore_element(
                    "name",
                    name,
                    now.volume(name),
                    original.as_ref(),
                ));
            }
        }
    }

    let mut patched_containers = Vec::new();
    for (name, _) in containers(template) {
        let wanted = settings.containers.iter().find(|(n, _)| n == name);
        let before = previous.and_then(|p| p.containers.get(name));
        if wanted.is_none() && before.is_none() {
            continue;
        }
        let Some(current) = now.container(name) else {
            continue;
        };
        let mut rec = ContainerRecord::default();
        let mut env = Vec::new();
        let mut mounts = Vec::new();
        if let Some((_, want)) = wanted {
            for (var, value) in &want.env {
                let original = match before.and_then(|b| b.env.get(var)) {
                    Some(b) => b.clone(),
                    None => env_entry(current, var).map(|m| Value::Object(m.clone())),
                };
                let value = match value {
                    EnvValue::Set(v) => v.clone(),
                    EnvValue::Append(v) => match original
                        .as_ref()
                        .and_then(|o| o.get("value"))
                        .and_then(Value::as_str)
                    {
                        Some(prefix) if !prefix.trim().is_empty() => {
                            format!("{} {v}", prefix.trim_end())
                        }
                        _ => v.clone(),
                    },
                };
                let desired = json!({"name": var, "value": value});
                if let Some(desired) = desired.as_object() {
                    env.push(replace_element(env_entry(current, var), desired));
                }
                rec.env.insert(var.clone(), original);
            }
            for mount in &want.mounts {
                let path = mount["mountPath"].as_str().unwrap_or_default();
                let original = match before.and_then(|b| b.volume_mounts.get(path)) {
                    Some(b) => b.clone(),
                    None => mount_entry(current, path).map(|m| Value::Object(m.clone())),
                };
                if let Some(m) = mount.as_object() {
                    mounts.push(replace_element(mount_entry(current, path), m));
                }
                rec.volume_mounts.insert(path.to_string(), original);
            }
        }
        if let Some(before) = before {
            for (var, original) in &before.env {
                if !rec.env.contains_key(var) {
                    env.extend(restore_element(
                        "name",
                        var,
                        env_entry(current, var),
                        original.as_ref(),
                    ));
                }
            }
            for (path, original) in &before.volume_mounts {
                if !rec.volume_mounts.contains_key(path) {
                    mounts.extend(restore_element(
                        "mountPath",
                        path,
                        mount_entry(current, path),
                        original.as_ref(),
                    ));
                }
            }
        }
        patched_containers.push(container_patch(name, env, mounts));
        if wanted.is_some() {
            record.containers.insert(name.to_string(), rec);
        }
    }
    if let Some(prev) = previous {
        for name in prev.containers.keys() {
            if now.container(name).is_none() {
                notes.push(format!(
                    "container {name} was attached but is no longer in {target}; nothing to restore there"
                ));
            }
        }
    }

    let init_containers = init_container_changes(&now, previous, settings, &mut record);
    let mut pod_spec = json!({
        "volumes": volumes,
        "containers": patched_containers,
        "initContainers": init_containers,
    });
    if let Some(order) = init_container_order(&now, settings) {
        pod_spec["$setElementOrder/initContainers"] = order;
    }
    let template_patch = json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": pod_spec,
    });
    let mut patch = json!({
        "metadata": {"annotations": {RECORD_ANNOTATION: record.to_annotation()}},
    });
    nest(&mut patch, target, template_patch);
    patch
}

/// The sidecar's init containers, each replacing what has its name (recorded as it was before
/// any attach), and the ones an earlier attach added that this one does not, put back.
fn init_container_changes(
    now: &Current<'_>,
    previous: Option<&Record>,
    settings: &Settings,
    record: &mut Record,
) -> Vec<Value> {
    let mut out = Vec::new();
    for c in &settings.init_containers {
        let (Some(name), Some(desired)) = (c["name"].as_str(), c.as_object()) else {
            continue;
        };
        let original = match previous.and_then(|p| p.init_containers.get(name)) {
            Some(before) => before.clone(),
            None => now.init_container(name).map(|m| Value::Object(m.clone())),
        };
        out.push(replace_element(now.init_container(name), desired));
        record.init_containers.insert(name.to_string(), original);
    }
    for (name, original) in previous.into_iter().flat_map(|p| &p.init_containers) {
        if !record.init_containers.contains_key(name) {
            out.extend(restore_element(
                "name",
                name,
                now.init_container(name),
                original.as_ref(),
            ));
        }
    }
    out
}

/// The init containers' order when the pod has its own: those first, then the sidecar's.
fn init_container_order(now: &Current<'_>, settings: &Settings) -> Option<Value> {
    let ours: Vec<&str> = settings
        .init_containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let theirs: Vec<&str> = now
        .init_container_names()
        .into_iter()
        .filter(|n| !ours.contains(n))
        .collect();
    if ours.is_empty() || theirs.is_empty() {
        return None;
    }
    Some(Value::Array(
        theirs
            .iter()
            .chain(ours.iter())
            .map(|n| json!({"name": n}))
            .collect(),
    ))
}

/// The detach patch: every recorded element put back, the record removed.
pub fn detach(target: &WorkloadRef, template: &Map<String, Value>, record: &Record) -> Value {
    let now = Current { template };
    let mut labels = Map::new();
    for (key, original) in &record.pod_labels {
        labels.insert(
            key.clone(),
            original.clone().map_or(Value::Null, Value::String),
        );
    }
    let mut annotations = Map::new();
    for (key, original) in &record.pod_annotations {
        annotations.insert(
            key.clone(),
            original.clone().map_or(Value::Null, Value::String),
        );
    }
    let volumes: Vec<Value> = record
        .volumes
        .iter()
        .filter_map(|(name, orig)| restore_element("name", name, now.volume(name), orig.as_ref()))
        .collect();
    let mut patched_containers = Vec::new();
    for (name, _) in containers(template) {
        let (Some(rec), Some(current)) = (record.containers.get(name), now.container(name)) else {
            continue;
        };
        let env = rec
            .env
            .iter()
            .filter_map(|(var, orig)| {
                restore_element("name", var, env_entry(current, var), orig.as_ref())
            })
            .collect();
        let mounts = rec
            .volume_mounts
            .iter()
            .filter_map(|(path, orig)| {
                restore_element("mountPath", path, mount_entry(current, path), orig.as_ref())
            })
            .collect();
        patched_containers.push(container_patch(name, env, mounts));
    }
    let init_containers: Vec<Value> = record
        .init_containers
        .iter()
        .filter_map(|(name, orig)| {
            restore_element("name", name, now.init_container(name), orig.as_ref())
        })
        .collect();
    let template_patch = json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {
            "volumes": volumes,
            "containers": patched_containers,
            "initContainers": init_containers,
        },
    });
    let mut patch = json!({"metadata": {"annotations": {RECORD_ANNOTATION: null}}});
    nest(&mut patch, target, template_patch);
    patch
}

/// Labels or annotations of the pod template: set the wanted ones (recording what they were),
/// put back the ones a previous attach set and this one does not.
fn meta_changes(
    field: &str,
    now: &Current<'_>,
    wanted: &[(String, String)],
    previous: Option<&BTreeMap<String, Option<String>>>,
    record: &mut BTreeMap<String, Option<String>>,
    patch: &mut Map<String, Value>,
) {
    for (key, value) in wanted {
        let original = match previous.and_then(|p| p.get(key)) {
            Some(before) => before.clone(),
            None => now.meta(field, key),
        };
        record.insert(key.clone(), original);
        patch.insert(key.clone(), Value::String(value.clone()));
    }
    for (key, original) in previous.into_iter().flatten() {
        if !record.contains_key(key) {
            patch.insert(
                key.clone(),
                original.clone().map_or(Value::Null, Value::String),
            );
        }
    }
}

fn container_patch(name: &str, env: Vec<Value>, mounts: Vec<Value>) -> Value {
    let mut c = json!({"name": name});
    if !env.is_empty() {
        c["env"] = Value::Array(env);
    }
    if !mounts.is_empty() {
        c["volumeMounts"] = Value::Array(mounts);
    }
    c
}

/// Puts the template patch at the workload kind's template path, dropping empty parts.
fn nest(patch: &mut Value, target: &WorkloadRef, template_patch: Value) {
    let mut template_patch = template_patch;
    prune_empty(&mut template_patch);
    let mut at = patch;
    for key in target.kind.template_path() {
        at = &mut at[*key];
    }
    *at = template_patch;
}

/// Removes empty objects and arrays (a `{}` or `[]` in a patch does nothing, but reads badly).
fn prune_empty(v: &mut Value) {
    if let Value::Object(map) = v {
        for child in map.values_mut() {
            prune_empty(child);
        }
        map.retain(|_, child| match child {
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn replacing_drops_the_fields_the_new_element_lacks() {
        let current =
            obj(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}));
        let desired = obj(json!({"name": "X", "value": "v"}));
        assert_eq!(
            replace_element(Some(&current), &desired),
            json!({"name": "X", "value": "v", "valueFrom": null})
        );
        let current = obj(json!({"name": "v", "configMap": {"name": "a", "items": [1]}}));
        let desired = obj(json!({"name": "v", "configMap": {"name": "b"}}));
        assert_eq!(
            replace_element(Some(&current), &desired),
            json!({"name": "v", "configMap": {"name": "b", "items": null}})
        );
    }

    #[test]
    fn replacing_a_container_deletes_the_list_entries_it_lacks() {
        let current = obj(json!({"name": "c", "image": "a", "env": [
            {"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
            {"name": "OLD", "value": "1"},
        ], "ports": [{"containerPort": 1}], "args": ["x", "y"]}));
        let desired = obj(
            json!({"name": "c", "image": "b", "env": [{"name": "A", "value": "v"}],
                                 "args": ["z"]}),
        );
        assert_eq!(
            replace_element(Some(&current), &desired),
            json!({"name": "c", "image": "b", "args": ["z"], "ports": null, "env": [
                {"name": "A", "value": "v", "valueFrom": null},
                {"name": "OLD", "$patch": "delete"},
            ]})
        );
    }

    #[test]
    fn restoring() {
        let cur = obj(json!({"name": "A", "value": "new"}));
        assert_eq!(
            restore_element("name", "A", Some(&cur), None),
            Some(json!({"name": "A", "$patch": "delete"}))
        );
        assert_eq!(restore_element("name", "A", None, None), None);
        let orig = json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}});
        assert_eq!(
            restore_element("name", "A", Some(&cur), Some(&orig)),
            Some(
                json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}, "value": null})
            )
        );
    }

    #[test]
    fn empty_parts_are_pruned() {
        let mut v = json!({"metadata": {"labels": {}}, "spec": {"volumes": [], "containers": [{"name": "a"}]}});
        prune_empty(&mut v);
        assert_eq!(v, json!({"spec": {"containers": [{"name": "a"}]}}));
    }
}
