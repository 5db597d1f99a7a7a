//! Each `flowtap k8s` command from start to end: read the inputs, decide, then print, write
//! files (`--out`) or apply through kubectl (`--apply`).

use super::cli::{AttachArgs, CaSecretArgs, DetachArgs, KubectlArgs};
use super::kubectl::{yaml_stream, Kubectl};
use super::noproxy::{no_proxy_entries, ProxyUrl};
use super::record::{Record, RECORD_ANNOTATION};
use super::settings::{Inputs, DEFAULT_BUNDLE_PATHS, MOUNT_DIR};
use super::workload::{self, is_dns_subdomain, WorkloadRef};
use super::{flag, manifests, patch, settings, trust, K8sError};
use crate::config::default_ca_dir;
use crate::tls::ca::{system_bundle_path, CertificateAuthority, CA_CERT_FILE, CA_KEY_FILE};
use base64::Engine;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Namespace of a workload when neither -n nor its manifest names one.
const DEFAULT_NAMESPACE: &str = "default";
/// File names written by --out.
const CONFIGMAP_FILE: &str = "configmap.json";
const PATCH_FILE: &str = "patch.json";

/// `flowtap k8s ca-secret`.
pub fn ca_secret(a: CaSecretArgs) -> Result<(), K8sError> {
    check_name("--name", &a.name)?;
    check_name("--namespace", &a.namespace)?;
    let dir = a.ca_dir.unwrap_or_else(default_ca_dir);
    // Checks the pair (present, matching, key not world-readable) before it is copied anywhere.
    CertificateAuthority::load(&dir)?;
    let cert = read(&dir.join(CA_CERT_FILE))?;
    let key = read(&dir.join(CA_KEY_FILE))?;
    let secret = manifests::ca_secret(&a.name, &a.namespace, &cert, &key);
    if a.kubectl.apply {
        Kubectl::new(&a.kubectl).apply(std::slice::from_ref(&secret))?;
        eprintln!("applied secret/{} in namespace {}", a.name, a.namespace);
        return Ok(());
    }
    print(&format!("{}\n", pretty(&secret)))
}

/// `flowtap k8s attach`.
pub fn attach(a: Box<AttachArgs>) -> Result<(), K8sError> {
    let target = WorkloadRef::parse(&a.workload)?;
    let proxy = ProxyUrl::parse(&a.proxy)?;
    let no_proxy = no_proxy_entries(&a.cluster_domain, &a.no_proxy)?;
    let bundle_paths = bundle_paths(&a.bundle_path)?;
    if let Some(ns) = &a.namespace {
        check_name("--namespace", ns)?;
    }
    check_offline(&a.file, &a.kubectl)?;
    let kubectl = Kubectl::new(&a.kubectl);

    let object = read_workload(&kubectl, a.file.as_deref(), &target, a.namespace.as_deref())?;
    let template = workload::pod_template(&object, &target)?;
    let namespace = namespace(a.namespace.as_deref(), &object);
    let previous = previous_record(&object, &target)?;
    let selected = select_containers(template, &a.containers, &target)?;

    let (ca_pem, ca_source) = read_ca(&a, &proxy, &kubectl)?;
    let system_path = match &a.system_bundle {
        Some(p) => p.clone(),
        None => system_bundle_path().ok_or_else(|| {
            flag(
                "--system-bundle",
                "no system CA bundle on this machine; name one (e.g. the workload image's own)",
            )
        })?,
    };
    let system = read(&system_path)?;
    let files = trust::build(&ca_pem, &ca_source, &system, &system_path)?;

    let cm_name = manifests::trust_configmap_name(&target);
    let owner_uid = match a.file {
        Some(_) => None,
        None => object.pointer("/metadata/uid").and_then(Value::as_str),
    };
    let configmap = manifests::trust_configmap(&cm_name, namespace, &target, owner_uid, &files);
    let inputs = Inputs {
        proxy: &proxy,
        no_proxy: &no_proxy,
        config_map: &cm_name,
        ca_sha256: &files.sha256,
        bundle_paths: &bundle_paths,
        java: a.java,
    };
    let decided = settings::decide(&inputs, &selected, |c, v| {
        patch::original_env(template, previous.as_ref(), c, v)
    });
    let mut notes = decided.notes.clone();
    if let Some(note) = host_network_note(template, &proxy) {
        notes.push(note);
    }
    let attached = patch::attach(
        &target,
        template,
        previous.as_ref(),
        &decided,
        Record::new(&proxy.url, &cm_name),
        &mut notes,
    );
    if previous.is_some() {
        notes.push(format!(
            "{target} was already attached (to {}); the patch updates it in place",
            previous
                .as_ref()
                .map(|p| p.proxy.as_str())
                .unwrap_or_default()
        ));
    }
    let summary = format!(
        "{target} in namespace {namespace}: {} container(s) to {}, trusting {} public roots \
         + the flowtap CA (mounted at {MOUNT_DIR})",
        selected.len(),
        proxy.url,
        files.system_certs
    );
    let patch_cmd =
        format!("kubectl patch {target} -n {namespace} --type strategic --patch-file {PATCH_FILE}");

    if a.kubectl.apply {
        let mut patch = attached;
        lock_version(&mut patch, &object);
        kubectl.apply(std::slice::from_ref(&configmap))?;
        kubectl.patch(target.kind.resource(), &target.name, namespace, &patch)?;
        report(&notes);
        eprintln!("attached {summary}");
        eprintln!("pods restart to pick it up: kubectl rollout status {target} -n {namespace}");
        return Ok(());
    }
    report(&notes);
    if let Some(dir) = &a.out {
        write_json(dir, CONFIGMAP_FILE, &configmap)?;
        write_json(dir, PATCH_FILE, &attached)?;
        eprintln!(
            "wrote {CONFIGMAP_FILE} and {PATCH_FILE} in {}: {summary}",
            dir.display()
        );
        eprintln!("apply with: kubectl apply --server-side -f {CONFIGMAP_FILE} && {patch_cmd}");
        return Ok(());
    }
    eprintln!("{summary}");
    print(&format!(
        "# 1. ConfigMap {cm_name}: kubectl apply --server-side -f FILE\n{}\
         # 2. Strategic merge patch: {patch_cmd}\n{}",
        yaml_stream(std::slice::from_ref(&configmap)),
        yaml_stream(std::slice::from_ref(&attached)),
    ))
}

/// `flowtap k8s detach`.
pub fn detach(a: DetachArgs) -> Result<(), K8sError> {
    let target = WorkloadRef::parse(&a.workload)?;
    if let Some(ns) = &a.namespace {
        check_name("--namespace", ns)?;
    }
    check_offline(&a.file, &a.kubectl)?;
    let kubectl = Kubectl::new(&a.kubectl);
    let object = read_workload(&kubectl, a.file.as_deref(), &target, a.namespace.as_deref())?;
    let template = workload::pod_template(&object, &target)?;
    let namespace = namespace(a.namespace.as_deref(), &object);
    let Some(record) = previous_record(&object, &target)? else {
        eprintln!("{target} in namespace {namespace} is not attached (no {RECORD_ANNOTATION} annotation); nothing to do");
        return Ok(());
    };
    let patch = patch::detach(&target, template, &record);
    let cm = &record.config_map;

    if a.kubectl.apply {
        let mut patch = patch;
        lock_version(&mut patch, &object);
        kubectl.patch(target.kind.resource(), &target.name, namespace, &patch)?;
        kubectl.delete("configmap", cm, namespace)?;
        eprintln!("detached {target} in namespace {namespace}; deleted configmap/{cm}");
        eprintln!("pods restart to drop it: kubectl rollout status {target} -n {namespace}");
        return Ok(());
    }
    let patch_cmd =
        format!("kubectl patch {target} -n {namespace} --type strategic --patch-file {PATCH_FILE}");
    let delete_cmd = format!("kubectl delete configmap/{cm} -n {namespace} --ignore-not-found");
    if let Some(dir) = &a.out {
        write_json(dir, PATCH_FILE, &patch)?;
        eprintln!("wrote {PATCH_FILE} in {}", dir.display());
        eprintln!("apply with: {patch_cmd} && {delete_cmd}");
        return Ok(());
    }
    print(&format!(
        "# Strategic merge patch: {patch_cmd}\n# then: {delete_cmd}\n{}",
        yaml_stream(std::slice::from_ref(&patch))
    ))
}

fn check_name(flag_name: &'static str, name: &str) -> Result<(), K8sError> {
    if is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(flag(
            flag_name,
            format!("{name:?} is not a valid Kubernetes name"),
        ))
    }
}

fn check_offline(file: &Option<PathBuf>, kubectl: &KubectlArgs) -> Result<(), K8sError> {
    if file.is_some() && kubectl.apply {
        return Err(flag(
            "--apply",
            "reads the workload from the cluster; -f FILE is for working offline \
             (drop one of them)",
        ));
    }
    Ok(())
}

fn bundle_paths(given: &[String]) -> Result<Vec<String>, K8sError> {
    if given.is_empty() {
        return Ok(DEFAULT_BUNDLE_PATHS.iter().map(|s| s.to_string()).collect());
    }
    let mut out: Vec<String> = Vec::new();
    for p in given {
        if !p.starts_with('/') || p.ends_with('/') || p.starts_with(MOUNT_DIR) {
            return Err(flag(
                "--bundle-path",
                format!("{p:?}: an absolute file path outside {MOUNT_DIR} is expected"),
            ));
        }
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn read_workload(
    kubectl: &Kubectl<'_>,
    file: Option<&Path>,
    target: &WorkloadRef,
    namespace: Option<&str>,
) -> Result<Value, K8sError> {
    match file {
        Some(f) => workload::from_file(f, target, namespace),
        None => kubectl.get(target.kind.resource(), &target.name, namespace),
    }
}

fn namespace<'a>(given: Option<&'a str>, object: &'a Value) -> &'a str {
    given
        .or_else(|| workload::namespace_of(object))
        .unwrap_or(DEFAULT_NAMESPACE)
}

fn previous_record(object: &Value, target: &WorkloadRef) -> Result<Option<Record>, K8sError> {
    workload::annotation(object, RECORD_ANNOTATION)
        .map(|text| {
            Record::parse(text).map_err(|message| K8sError::Manifest {
                what: target.to_string(),
                message,
            })
        })
        .transpose()
}

fn select_containers<'a>(
    template: &'a serde_json::Map<String, Value>,
    wanted: &[String],
    target: &WorkloadRef,
) -> Result<Vec<workload::Container<'a>>, K8sError> {
    let all = workload::containers(template);
    if all.is_empty() {
        return Err(K8sError::Manifest {
            what: target.to_string(),
            message: "its pod template has no containers".to_string(),
        });
    }
    if wanted.is_empty() {
        return Ok(all);
    }
    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
    for w in wanted {
        if !names.contains(&w.as_str()) {
            return Err(flag(
                "--container",
                format!(
                    "{target} has no container {w:?}; it has {}",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(n, _)| wanted.iter().any(|w| w == n))
        .collect())
}

/// The flowtap CA certificate: --ca-cert, else the `ca.pem` key of the CA Secret.
fn read_ca(
    a: &AttachArgs,
    proxy: &ProxyUrl,
    kubectl: &Kubectl<'_>,
) -> Result<(String, String), K8sError> {
    if let Some(path) = &a.ca_cert {
        let bytes = read(path)?;
        let text = String::from_utf8(bytes).map_err(|_| K8sError::Manifest {
            what: path.display().to_string(),
            message: "is not a PEM text file".to_string(),
        })?;
        return Ok((text, path.display().to_string()));
    }
    let (ns, name) = match a.ca_secret.as_deref().map(|s| s.split_once('/')) {
        Some(Some((ns, name))) => (ns.to_string(), name.to_string()),
        Some(None) => (
            proxy
                .service_namespace()
                .map(str::to_string)
                .ok_or_else(|| {
                    flag(
                        "--ca-secret",
                        "give NAMESPACE/NAME: the --proxy host names no namespace",
                    )
                })?,
            a.ca_secret.clone().unwrap_or_default(),
        ),
        None => (
            proxy
                .service_namespace()
                .map(str::to_string)
                .ok_or_else(|| {
                    flag(
                        "--ca-cert",
                        "give --ca-cert FILE or --ca-secret NAMESPACE/NAME: the --proxy host \
                     is not a service name NAME.NAMESPACE.svc",
                    )
                })?,
            super::cli::DEFAULT_CA_SECRET.to_string(),
        ),
    };
    check_name("--ca-secret", &ns)?;
    check_name("--ca-secret", &name)?;
    let secret = kubectl.get("secret", &name, Some(&ns))?;
    let what = format!("secret/{name} in namespace {ns}");
    let b64 = secret
        .get("data")
        .and_then(|d| d.get(CA_CERT_FILE))
        .and_then(Value::as_str)
        .ok_or_else(|| K8sError::Manifest {
            what: what.clone(),
            message: format!("has no {CA_CERT_FILE} key"),
        })?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| K8sError::Manifest {
            what: what.clone(),
            message: format!("its {CA_CERT_FILE} is not base64 PEM text"),
        })?;
    Ok((pem, what))
}

/// A pod on the host's network resolves service names only with ClusterFirstWithHostNet.
fn host_network_note(
    template: &serde_json::Map<String, Value>,
    proxy: &ProxyUrl,
) -> Option<String> {
    let spec = template.get("spec")?;
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    let dns = spec.get("dnsPolicy").and_then(Value::as_str);
    let by_name = proxy.host.parse::<std::net::IpAddr>().is_err();
    (host_network && by_name && dns != Some("ClusterFirstWithHostNet")).then(|| {
        format!(
            "the pod uses hostNetwork: it resolves {} only with dnsPolicy: \
             ClusterFirstWithHostNet (or give --proxy the service IP)",
            proxy.host
        )
    })
}

/// Makes the API server refuse the patch if the workload changed since it was read, so the
/// recorded originals are the ones the patch replaces.
fn lock_version(patch: &mut Value, object: &Value) {
    if let Some(rv) = object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        patch["metadata"]["resourceVersion"] = Value::String(rv.to_string());
    }
}

fn report(notes: &[String]) {
    for n in notes {
        eprintln!("note: {n}");
    }
}

fn read(path: &Path) -> Result<Vec<u8>, K8sError> {
    std::fs::read(path).map_err(|source| K8sError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_json(dir: &Path, name: &str, value: &Value) -> Result<(), K8sError> {
    let path = dir.join(name);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(&path, format!("{}\n", pretty(value)))
    };
    write().map_err(|source| K8sError::Write {
        path: path.clone(),
        source,
    })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn print(text: &str) -> Result<(), K8sError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|source| K8sError::Write {
            path: PathBuf::from("(stdout)"),
            source,
        })
}
