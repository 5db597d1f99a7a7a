//! Each `flowtap k8s` command from start to end: read the inputs, decide, then print, write
//! files (`--out`) or apply through kubectl (`--apply`).

use super::cli::{AttachArgs, CaSecretArgs, DetachArgs, KubectlArgs, DEFAULT_CA_SECRET};
use super::kubectl::{yaml_stream, Kubectl};
use super::noproxy::{no_proxy_entries, ProxyUrl};
use super::record::{Record, Variant, RECORD_ANNOTATION};
use super::settings::{Inputs, Route, DEFAULT_BUNDLE_PATHS, MOUNT_DIR};
use super::sidecar::{SidecarConfig, SidecarParts, DEFAULT_IMAGE, DEFAULT_INIT_IMAGE};
use super::workload::{self, is_dns_subdomain, WorkloadRef};
use super::{flag, manifests, patch, settings, transparent, trust, K8sError};
use crate::config::default_ca_dir;
use crate::tls::ca::{system_bundle_path, CertificateAuthority, CA_CERT_FILE, CA_KEY_FILE};
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

/// What attach is to do, decided from the flags alone.
enum Wanted {
    /// Proxy and trust variables pointing at a shared proxy.
    Proxy {
        proxy: ProxyUrl,
        no_proxy: Vec<String>,
    },
    /// The sidecar of deploy/sidecar/component, and the trust.
    Transparent(SidecarConfig),
}

impl Wanted {
    fn from_args(a: &AttachArgs) -> Result<Self, K8sError> {
        if !a.transparent {
            let s = &a.sidecar;
            let given = [
                ("--image", s.image != DEFAULT_IMAGE),
                ("--init-image", s.init_image != DEFAULT_INIT_IMAGE),
                ("--redirect-ports", !s.redirect_ports.is_empty()),
                ("--exclude-cidrs", !s.exclude_cidrs.is_empty()),
                ("--ipv6", s.ipv6.is_some()),
                ("--proxy-uid", s.proxy_uid.is_some()),
            ];
            if let Some((name, _)) = given.iter().find(|(_, given)| *given) {
                return Err(flag(
                    name,
                    "it is a setting of the sidecar: add --transparent",
                ));
            }
            if a.ca_cert.is_some() && a.ca_secret.is_some() {
                return Err(flag(
                    "--ca-secret",
                    "the CA comes from --ca-cert or from --ca-secret, not both",
                ));
            }
            // clap requires --proxy without --transparent.
            let proxy = ProxyUrl::parse(a.proxy.as_deref().unwrap_or_default())?;
            let no_proxy = no_proxy_entries(&a.cluster_domain, &a.no_proxy)?;
            return Ok(Wanted::Proxy { proxy, no_proxy });
        }
        let secret = match a.ca_secret.as_deref().map(|s| s.rsplit_once('/')) {
            None => DEFAULT_CA_SECRET,
            Some(Some((_, name))) => name,
            Some(None) => a.ca_secret.as_deref().unwrap_or(DEFAULT_CA_SECRET),
        };
        check_name("--ca-secret", secret)?;
        Ok(Wanted::Transparent(SidecarConfig::new(&a.sidecar, secret)?))
    }

    fn variant(&self) -> Variant {
        match self {
            Wanted::Proxy { .. } => Variant::Proxy,
            Wanted::Transparent(_) => Variant::Transparent,
        }
    }
}

/// `flowtap k8s attach`: read the workload, check what is asked against it, decide the
/// ConfigMap and the patch, then print them, write them (`--out`) or apply them (`--apply`).
pub fn attach(a: Box<AttachArgs>) -> Result<(), K8sError> {
    let target = WorkloadRef::parse(&a.workload)?;
    let wanted = Wanted::from_args(&a)?;
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
    if let Some(p) = previous.as_ref().filter(|p| p.variant != wanted.variant()) {
        return Err(refused(
            &target,
            namespace,
            vec![format!(
                "it is attached to {}; detach it first (flowtap k8s detach {target} -n {namespace})",
                p.variant.describe()
            )],
        ));
    }

    let mut notes = Vec::new();
    let (sidecar, secret_ca) = match &wanted {
        Wanted::Transparent(config) => {
            let checked = Checked {
                target: &target,
                namespace,
                template,
                previous: previous.as_ref(),
                selected: &selected,
            };
            let (plan, secret_ca) = check_sidecar(&a, config, &kubectl, &checked, &mut notes)?;
            (Some(plan), secret_ca)
        }
        Wanted::Proxy { .. } => (None, None),
    };
    let (ca_pem, ca_source) = attach_ca(&a, &wanted, &kubectl, &target, namespace, secret_ca)?;
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
    let route = match &wanted {
        Wanted::Proxy { proxy, no_proxy } => Route::Proxy { proxy, no_proxy },
        Wanted::Transparent(_) => Route::Transparent,
    };
    let inputs = Inputs {
        route,
        config_map: &cm_name,
        ca_sha256: &files.sha256,
        bundle_paths: &bundle_paths,
        java: a.java,
    };
    let mut decided = settings::decide(&inputs, &selected, |c, v| {
        patch::original_env(template, previous.as_ref(), c, v)
    });
    notes.append(&mut decided.notes);
    if let Some(plan) = &sidecar {
        let original = |key: &str| patch::original_pod_annotation(template, previous.as_ref(), key);
        let annotations = transparent::pod_annotations(&plan.parts, original, &mut notes);
        decided.pod_annotations.extend(annotations);
        decided.volumes.extend(plan.parts.volumes.iter().cloned());
        decided.init_containers = plan.parts.init_containers.clone();
    }
    let proxy_url = match &wanted {
        Wanted::Proxy { proxy, .. } => {
            notes.extend(host_network_note(template, proxy));
            proxy.url.as_str()
        }
        Wanted::Transparent(_) => "",
    };
    let mut attached = patch::attach(
        &target,
        template,
        previous.as_ref(),
        &decided,
        Record::new(wanted.variant(), proxy_url, &cm_name),
        &mut notes,
    );
    if let Some(p) = &previous {
        let to = match p.variant {
            Variant::Proxy => format!("to {}", p.proxy),
            Variant::Transparent => "with the transparent sidecar".to_string(),
        };
        notes.push(format!(
            "{target} was already attached ({to}); the patch updates it in place"
        ));
    }
    let trusting = format!(
        "trusting {} public roots + the flowtap CA (mounted at {MOUNT_DIR})",
        files.system_certs
    );
    let summary = match &sidecar {
        None => format!(
            "{target} in namespace {namespace}: {} container(s) to {proxy_url}, {trusting}",
            selected.len()
        ),
        Some(plan) => format!(
            "{target} in namespace {namespace}: the transparent sidecar ({}), {} container(s) \
             {trusting}",
            sidecar_summary(plan.config),
            selected.len()
        ),
    };
    if a.kubectl.apply {
        lock_version(&mut attached, &object);
    }
    let outcome = Outcome {
        target: &target,
        namespace,
        cm_name: &cm_name,
        configmap,
        patch: attached,
        summary,
        ca_secret: sidecar.as_ref().map(|plan| plan.config.ca_secret()),
    };
    deliver(&a, &kubectl, outcome, notes)
}

/// The workload as read, for the checks of the sidecar.
struct Checked<'a> {
    target: &'a WorkloadRef,
    namespace: &'a str,
    template: &'a serde_json::Map<String, Value>,
    previous: Option<&'a Record>,
    selected: &'a [workload::Container<'a>],
}

/// The sidecar `attach --transparent` adds, once the pod (and with --apply the cluster) can take it.
struct SidecarPlan<'c> {
    config: &'c SidecarConfig,
    parts: SidecarParts,
}

/// Checks the sidecar against the pod and, with --apply, the cluster; every reason it cannot be
/// added is reported at once. With --apply, also returns the CA certificate in the CA Secret.
fn check_sidecar<'c>(
    a: &AttachArgs,
    config: &'c SidecarConfig,
    kubectl: &Kubectl<'_>,
    w: &Checked<'_>,
    notes: &mut Vec<String>,
) -> Result<(SidecarPlan<'c>, Option<String>), K8sError> {
    let namespace = w.namespace;
    if let Some((ns, _)) = a.ca_secret.as_deref().and_then(|s| s.rsplit_once('/')) {
        if ns != namespace {
            return Err(flag(
                "--ca-secret",
                format!(
                    "the sidecar mounts the CA Secret from the workload's namespace \
                     {namespace}, not {ns}"
                ),
            ));
        }
    }
    let parts = config.parts()?;
    let found = transparent::check(w.template, w.previous, config, &parts, w.selected);
    let mut refusals = found.refusals;
    notes.extend(found.notes);
    let mut secret_ca = None;
    if a.kubectl.apply {
        let cluster = transparent::check_cluster(kubectl, namespace, config.ca_secret());
        refusals.extend(cluster.refusals);
        notes.extend(cluster.notes);
        secret_ca = cluster.ca_pem;
    }
    if !refusals.is_empty() {
        return Err(refused(w.target, namespace, refusals));
    }
    Ok((SidecarPlan { config, parts }, secret_ca))
}

/// The CA the workload is to trust, and where it came from: the shared proxy's (see
/// [`read_ca`]), or for the sidecar --ca-cert or the CA Secret it signs with (`secret_ca`, when
/// --apply read it; the two must agree).
fn attach_ca(
    a: &AttachArgs,
    wanted: &Wanted,
    kubectl: &Kubectl<'_>,
    target: &WorkloadRef,
    namespace: &str,
    secret_ca: Option<String>,
) -> Result<(String, String), K8sError> {
    let config = match wanted {
        Wanted::Proxy { proxy, .. } => return read_ca(a, proxy, kubectl),
        Wanted::Transparent(config) => config,
    };
    let Some(path) = &a.ca_cert else {
        let name = config.ca_secret();
        let pem = match secret_ca {
            Some(pem) => pem,
            None => transparent::read_secret(kubectl, namespace, name)
                .map_err(|reason| refused(target, namespace, vec![reason]))?,
        };
        return Ok((pem, format!("secret/{name} in namespace {namespace}")));
    };
    let (pem, source) = read_ca_file(path)?;
    if let Some(secret_pem) = &secret_ca {
        if !trust::same_certificates(secret_pem, &pem) {
            return Err(refused(
                target,
                namespace,
                vec![format!(
                    "--ca-cert {} is not the certificate in the CA Secret the sidecar signs \
                     with; the application would not trust it",
                    path.display()
                )],
            ));
        }
    }
    Ok((pem, source))
}

/// Why `attach` will not change the workload.
fn refused(target: &WorkloadRef, namespace: &str, reasons: Vec<String>) -> K8sError {
    K8sError::Refused {
        what: format!("{target} in namespace {namespace}"),
        reasons,
    }
}

/// What `attach` decided: the trust ConfigMap and the patch.
struct Outcome<'a> {
    target: &'a WorkloadRef,
    namespace: &'a str,
    cm_name: &'a str,
    configmap: Value,
    patch: Value,
    summary: String,
    /// The sidecar's CA Secret, when the patch adds the sidecar.
    ca_secret: Option<&'a str>,
}

/// Applies the outcome through kubectl (--apply), writes it to files (--out) or prints it.
fn deliver(
    a: &AttachArgs,
    kubectl: &Kubectl<'_>,
    o: Outcome<'_>,
    mut notes: Vec<String>,
) -> Result<(), K8sError> {
    let (target, namespace, summary) = (o.target, o.namespace, &o.summary);
    if a.kubectl.apply {
        kubectl.apply(std::slice::from_ref(&o.configmap))?;
        kubectl.patch(target.kind.resource(), &target.name, namespace, &o.patch)?;
        report(&notes);
        eprintln!("attached {summary}");
        if let Some(secret) = o.ca_secret {
            eprintln!(
                "the sidecar uses secret/{secret} in namespace {namespace}; records: kubectl logs \
                 {target} -n {namespace} -c flowtap"
            );
        }
        eprintln!("pods restart to pick it up: kubectl rollout status {target} -n {namespace}");
        return Ok(());
    }
    // What the pods need beyond the two objects (checked with --apply).
    let needs = o.ca_secret.map(|name| {
        format!(
            "the pods need the CA Secret {name} (ca.pem, ca-key.pem) in namespace {namespace}, \
             Kubernetes 1.29+ and a Pod Security level that admits NET_ADMIN; make the Secret \
             with: flowtap k8s ca-secret --ca-dir DIR --name {name} -n {namespace} | kubectl \
             apply --server-side -f -"
        )
    });
    notes.extend(needs.clone());
    report(&notes);
    let patch_cmd =
        format!("kubectl patch {target} -n {namespace} --type strategic --patch-file {PATCH_FILE}");
    if let Some(dir) = &a.out {
        write_json(dir, CONFIGMAP_FILE, &o.configmap)?;
        write_json(dir, PATCH_FILE, &o.patch)?;
        eprintln!(
            "wrote {CONFIGMAP_FILE} and {PATCH_FILE} in {}: {summary}",
            dir.display()
        );
        eprintln!("apply with: kubectl apply --server-side -f {CONFIGMAP_FILE} && {patch_cmd}");
        return Ok(());
    }
    eprintln!("{summary}");
    let first = needs
        .map(|n| format!("# 0. Before: {n}\n"))
        .unwrap_or_default();
    print(&format!(
        "{first}# 1. ConfigMap {}: kubectl apply --server-side -f FILE\n{}\
         # 2. Strategic merge patch: {patch_cmd}\n{}",
        o.cm_name,
        yaml_stream(std::slice::from_ref(&o.configmap)),
        yaml_stream(std::slice::from_ref(&o.patch)),
    ))
}

/// The sidecar's settings in a few words.
fn sidecar_summary(config: &SidecarConfig) -> String {
    let (image, init_image) = config.images();
    let excluded = match config.exclude_cidrs() {
        "" => String::new(),
        c => format!(" and {c}"),
    };
    format!(
        "{image} and {init_image}; TCP to ports {} redirected to it from every uid but {}, \
         except loopback, the API server{excluded}; IPv6 {}",
        config.redirect_ports(),
        config.proxy_uid(),
        if config.ipv6() { "too" } else { "not" }
    )
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
        if !record.init_containers.is_empty() {
            eprintln!(
                "the sidecar is gone from the pod template; the CA Secret stays in namespace \
                 {namespace} (delete it when no workload there uses it)"
            );
        }
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
        return read_ca_file(path);
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
            DEFAULT_CA_SECRET.to_string(),
        ),
    };
    check_name("--ca-secret", &ns)?;
    check_name("--ca-secret", &name)?;
    let secret = kubectl.get("secret", &name, Some(&ns))?;
    let what = format!("secret/{name} in namespace {ns}");
    let pem = secret_ca_pem(&secret, &what)?;
    Ok((pem, what))
}

/// The CA certificate (PEM) in a CA Secret's `ca.pem`.
fn secret_ca_pem(secret: &Value, what: &str) -> Result<String, K8sError> {
    let bytes = manifests::secret_data(secret, CA_CERT_FILE).ok_or_else(|| K8sError::Manifest {
        what: what.to_string(),
        message: format!("has no {CA_CERT_FILE} key with base64 data"),
    })?;
    String::from_utf8(bytes).map_err(|_| K8sError::Manifest {
        what: what.to_string(),
        message: format!("its {CA_CERT_FILE} is not PEM text"),
    })
}

fn read_ca_file(path: &Path) -> Result<(String, String), K8sError> {
    let bytes = read(path)?;
    let text = String::from_utf8(bytes).map_err(|_| K8sError::Manifest {
        what: path.display().to_string(),
        message: "is not a PEM text file".to_string(),
    })?;
    Ok((text, path.display().to_string()))
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
