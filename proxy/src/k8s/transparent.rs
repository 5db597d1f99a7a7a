//! What the transparent sidecar needs of a pod, checked before any patch is written: where it
//! cannot be right, attach refuses (with every reason at once); where it works with a caveat,
//! attach says so.
//!
//! Refused: a pod on the node's network (the rules would change the node), a Windows pod (no
//! iptables), a container that runs as the proxy's uid (its connections would escape capture),
//! one that declares a port the sidecar listens on, a service mesh's sidecar (its own redirect
//! rules, and Istio's ports are flowtap's), and containers or volumes with the sidecar's names
//! that an earlier attach did not add (the Kustomize component was applied, or a namesake).
//! With `--apply`, also the cluster: Kubernetes before 1.29 (no native sidecars: the proxy
//! container would block the pod's start), a namespace whose Pod Security level rejects the
//! init container's NET_ADMIN, and a missing or incomplete CA Secret.

use super::kubectl::Kubectl;
use super::manifests::secret_data;
use super::record::Record;
use super::settings::PROXY_VARS;
use super::sidecar::{listen_ports, SidecarConfig, SidecarParts};
use super::workload::{containers, Container};
use crate::tls::ca::{CA_CERT_FILE, CA_KEY_FILE};
use serde_json::{Map, Value};

/// Containers a service mesh injects; their presence means the mesh's redirect rules.
const MESH_CONTAINERS: &[&str] = &["istio-proxy", "istio-init", "linkerd-proxy", "linkerd-init"];
/// Pod annotations and labels (key, value) that ask a mesh to inject its sidecar.
const MESH_INJECT: &[(&str, &str)] = &[
    ("sidecar.istio.io/inject", "true"),
    ("linkerd.io/inject", "enabled"),
];

/// What the checks found.
#[derive(Debug, Default)]
pub struct Findings {
    pub refusals: Vec<String>,
    pub notes: Vec<String>,
}

/// Checks the pod template for the sidecar `parts` built from `config`. `previous` is the record
/// of an earlier transparent attach: what it added is the sidecar's own, not a clash.
pub fn check(
    template: &Map<String, Value>,
    previous: Option<&Record>,
    config: &SidecarConfig,
    parts: &SidecarParts,
    selected: &[Container<'_>],
) -> Findings {
    let mut f = Findings::default();
    let spec = template.get("spec").and_then(Value::as_object);
    let spec_field = |key: &str| spec.and_then(|s| s.get(key));
    let ours = |name: &str| previous.is_some_and(|p| p.init_containers.contains_key(name));
    let our_volume = |name: &str| previous.is_some_and(|p| p.volumes.contains_key(name));

    if spec_field("hostNetwork").and_then(Value::as_bool) == Some(true) {
        f.refusals.push(
            "the pod uses hostNetwork: true; the init container's iptables rules would \
             redirect the node's own connections"
                .to_string(),
        );
    }
    if spec_field("os")
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str)
        == Some("windows")
    {
        f.refusals
            .push("the pod runs on Windows, which has no iptables".to_string());
    }

    // Every container of the pod but the sidecar's own (from an earlier attach).
    let init: Vec<Container<'_>> = list(spec_field("initContainers"))
        .into_iter()
        .filter(|(n, _)| !ours(n))
        .collect();
    let app = containers(template);
    let sidecar_names: Vec<&str> = parts
        .init_containers
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    for (name, _) in init.iter().chain(app.iter()) {
        if sidecar_names.contains(name) {
            f.refusals.push(format!(
                "it already has a container named {name} that flowtap k8s attach did not add \
                 (deploy/sidecar/component applied?); remove it, or keep the workload on the \
                 component"
            ));
        }
        if MESH_CONTAINERS.contains(name) {
            f.refusals.push(format!(
                "it has the service-mesh container {name}: the mesh's redirect rules and \
                 flowtap's would take the same connections (and Istio uses ports 15000/15001 \
                 too)"
            ));
        }
    }
    let volumes = list(spec_field("volumes"));
    for v in &parts.volumes {
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if volumes.iter().any(|(n, _)| *n == name) && !our_volume(name) {
            f.refusals.push(format!(
                "it already has a volume named {name} that flowtap k8s attach did not add"
            ));
        }
    }
    let meta = template.get("metadata");
    for (key, value) in MESH_INJECT {
        for field in ["annotations", "labels"] {
            let set = meta
                .and_then(|m| m.get(field))
                .and_then(|a| a.get(*key))
                .and_then(Value::as_str);
            if set == Some(*value) {
                f.refusals.push(format!(
                    "its pod {field} ask for a service-mesh sidecar ({key}: \"{value}\"): the \
                     mesh's redirect rules and flowtap's would take the same connections"
                ));
            }
        }
    }

    // Containers that run beside the application: its containers and native sidecars.
    let running: Vec<&Container<'_>> = app
        .iter()
        .chain(init.iter().filter(|(_, c)| is_native_sidecar(c)))
        .collect();
    let uid = config.proxy_uid();
    let pod_uid = spec_field("securityContext")
        .and_then(|s| s.get("runAsUser"))
        .and_then(Value::as_u64);
    let ports = listen_ports(parts, config);
    for (name, c) in &running {
        let runs_as = c
            .get("securityContext")
            .and_then(|s| s.get("runAsUser"))
            .and_then(Value::as_u64)
            .or(pod_uid);
        if runs_as == Some(u64::from(uid)) {
            f.refusals.push(format!(
                "container {name} runs as uid {uid}, the proxy's: its connections would not be \
                 redirected (give flowtap another uid with --proxy-uid)"
            ));
        }
        for p in list_values(c.get("ports")) {
            let port = p.get("containerPort").and_then(Value::as_u64);
            if let Some(port) = port.filter(|p| ports.iter().any(|l| u64::from(*l) == *p)) {
                f.refusals.push(format!(
                    "container {name} declares port {port}, where the flowtap sidecar listens"
                ));
            }
        }
    }

    // Caveats.
    let regular: Vec<&str> = init
        .iter()
        .filter(|(_, c)| !is_native_sidecar(c))
        .map(|(n, _)| *n)
        .collect();
    if !regular.is_empty() {
        f.notes.push(format!(
            "init container(s) {} run before flowtap-init, as before: their connections are \
             not captured",
            regular.join(", ")
        ));
    }
    for (name, _) in init.iter().filter(|(_, c)| is_native_sidecar(c)) {
        f.notes.push(format!(
            "init container {name} is a sidecar (restartPolicy: Always): its new connections \
             to ports {} are captured once the rules are in, and it does not get the CA trust \
             (attach sets it on the application's containers)",
            config.redirect_ports()
        ));
    }
    let unselected: Vec<&str> = app
        .iter()
        .filter(|(n, _)| !selected.iter().any(|(s, _)| s == n))
        .map(|(n, _)| *n)
        .collect();
    if !unselected.is_empty() {
        f.notes.push(format!(
            "container(s) {} are not selected with -c: their connections are redirected all \
             the same (the rules are the pod's), but they do not get the CA trust",
            unselected.join(", ")
        ));
    }
    for (name, c) in selected {
        let set: Vec<&str> = list_values(c.get("env"))
            .into_iter()
            .filter_map(|e| {
                let var = e.get("name").and_then(Value::as_str)?;
                let has_value = e.get("valueFrom").is_some()
                    || e.get("value")
                        .and_then(Value::as_str)
                        .is_some_and(|v| !v.is_empty());
                (PROXY_VARS.contains(&var) && has_value).then_some(var)
            })
            .collect();
        if !set.is_empty() {
            f.notes.push(format!(
                "container {name} sets {}: its requests go to that proxy, which the sidecar \
                 sees only as connections to the proxy (if its port is redirected at all)",
                set.join(", ")
            ));
        }
    }
    f
}

/// Native sidecars (restartPolicy: Always on an init container) are on by default from here.
const NATIVE_SIDECAR_VERSION: (u32, u32) = (1, 29);
/// The namespace label with the enforced Pod Security level, and the levels that reject
/// NET_ADMIN and NET_RAW (baseline allows neither; restricted also forbids root).
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
const POD_SECURITY_REJECTING: &[&str] = &["baseline", "restricted"];

/// What the cluster said, through kubectl (`--apply`).
#[derive(Debug, Default)]
pub struct ClusterFindings {
    pub refusals: Vec<String>,
    pub notes: Vec<String>,
    /// The CA certificate in the Secret, when it is there and complete.
    pub ca_pem: Option<String>,
}

/// Asks the cluster what the sidecar needs: the server's version, the namespace's Pod Security
/// level, and the CA Secret in the workload's namespace.
pub fn check_cluster(kubectl: &Kubectl<'_>, namespace: &str, secret: &str) -> ClusterFindings {
    let mut f = ClusterFindings::default();
    match kubectl.server_version() {
        Ok(v) if v < NATIVE_SIDECAR_VERSION => f.refusals.push(format!(
            "the API server is Kubernetes {}.{}; the flowtap container is a native sidecar (an \
             init container with restartPolicy: Always), on by default from {}.{}: before \
             that it would keep the pod from ever starting",
            v.0, v.1, NATIVE_SIDECAR_VERSION.0, NATIVE_SIDECAR_VERSION.1
        )),
        Ok(_) => {}
        Err(e) => f.notes.push(format!(
            "cannot tell the Kubernetes version ({e}); the sidecar needs {}.{} or later",
            NATIVE_SIDECAR_VERSION.0, NATIVE_SIDECAR_VERSION.1
        )),
    }
    match kubectl.get("namespace", namespace, None) {
        Ok(ns) => {
            let level = ns
                .pointer("/metadata/labels")
                .and_then(|l| l.get(POD_SECURITY_ENFORCE))
                .and_then(Value::as_str);
            if let Some(level) = level.filter(|l| POD_SECURITY_REJECTING.contains(l)) {
                f.refusals.push(format!(
                    "namespace {namespace} enforces the Pod Security level {level:?} \
                     ({POD_SECURITY_ENFORCE}), which rejects the flowtap-init container \
                     (root with NET_ADMIN and NET_RAW): the pods would not be created"
                ));
            }
        }
        Err(e) => f.notes.push(format!(
            "cannot read namespace {namespace} ({e}); if it enforces the Pod Security level \
             baseline or restricted, the pods are rejected (flowtap-init needs NET_ADMIN)"
        )),
    }
    match read_secret(kubectl, namespace, secret) {
        Ok(pem) => f.ca_pem = Some(pem),
        Err(reason) => f.refusals.push(reason),
    }
    f
}

/// The CA certificate of the Secret the sidecar mounts, checked to hold both files; the
/// error is a reason to refuse, saying how to make the Secret.
pub fn read_secret(kubectl: &Kubectl<'_>, namespace: &str, name: &str) -> Result<String, String> {
    let make = format!(
        "make it with: flowtap k8s ca-secret --ca-dir DIR --name {name} -n {namespace} | \
         kubectl apply --server-side -f -"
    );
    let secret = kubectl.get("secret", name, Some(namespace)).map_err(|e| {
        format!(
            "the sidecar needs the CA Secret {name} in namespace {namespace}, and it cannot be \
             read ({e}); {make}"
        )
    })?;
    let mut pem = None;
    for key in [CA_CERT_FILE, CA_KEY_FILE] {
        match secret_data(&secret, key).filter(|d| !d.is_empty()) {
            Some(data) if key == CA_CERT_FILE => pem = String::from_utf8(data).ok(),
            Some(_) => {}
            None => {
                return Err(format!(
                    "the CA Secret {name} in namespace {namespace} has no {key}, which the \
                     sidecar needs; {make}"
                ))
            }
        }
    }
    pem.ok_or_else(|| {
        format!("the CA Secret {name} in namespace {namespace}: its {CA_CERT_FILE} is not PEM text")
    })
}

/// The sidecar's pod annotations (Prometheus scraping its /metrics), unless the pod announces
/// its own metrics already: those are the application's, and stay. `original(key)` is the
/// value before any attach.
pub fn pod_annotations(
    parts: &SidecarParts,
    original: impl Fn(&str) -> Option<String>,
    notes: &mut Vec<String>,
) -> Vec<(String, String)> {
    let taken: Vec<String> = parts
        .pod_annotations
        .iter()
        .filter_map(|(k, _)| original(k).map(|v| format!("{k}: {v:?}")))
        .collect();
    if taken.is_empty() {
        return parts.pod_annotations.clone();
    }
    notes.push(format!(
        "the pod already has {}: kept for the application, so flowtap's own /metrics is not \
         announced to Prometheus",
        taken.join(", ")
    ));
    Vec::new()
}

fn is_native_sidecar(c: &Map<String, Value>) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

fn list(v: Option<&Value>) -> Vec<Container<'_>> {
    list_values(v)
        .into_iter()
        .filter_map(|c| {
            let c = c.as_object()?;
            Some((c.get("name")?.as_str()?, c))
        })
        .collect()
}

fn list_values(v: Option<&Value>) -> Vec<&Value> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}
