//! The objects flowtap creates: the CA Secret for the proxy, the trust ConfigMap for an
//! attached workload. Emitted as JSON, which kubectl reads like YAML.

use super::trust::{TrustFiles, BUNDLE_KEY, CA_KEY, TRUSTSTORE_KEY};
use super::workload::WorkloadRef;
use crate::tls::ca::{CA_CERT_FILE, CA_KEY_FILE};
use base64::Engine;
use serde_json::{json, Value};

/// `app.kubernetes.io/managed-by` on what flowtap makes.
const MANAGER: &str = "flowtap";
/// Longest object name (DNS subdomain).
const MAX_NAME: usize = 253;

/// The Secret the proxy Deployment mounts as its CA directory (keys are file names).
pub fn ca_secret(name: &str, namespace: &str, cert_pem: &[u8], key_pem: &[u8]) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "flowtap",
                "app.kubernetes.io/component": "ca",
                "app.kubernetes.io/managed-by": MANAGER,
            },
        },
        "type": "Opaque",
        "data": {
            CA_CERT_FILE: b64(cert_pem),
            CA_KEY_FILE: b64(key_pem),
        },
    })
}

/// The bytes of a Secret's key (its `data` is base64); None when absent or not base64.
pub fn secret_data(secret: &Value, key: &str) -> Option<Vec<u8>> {
    let b64 = secret.get("data")?.get(key)?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The ConfigMap of one attached workload: `flowtap-ca-KIND-NAME`, so that detaching one
/// workload never takes the bundle from another.
pub fn trust_configmap_name(workload: &WorkloadRef) -> String {
    let name = format!("flowtap-ca-{}-{}", workload.kind.resource(), workload.name);
    if name.len() <= MAX_NAME {
        return name;
    }
    // Too long: cut, and keep it unique with a digest of the full name.
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let tag: String = digest[..5].iter().map(|b| format!("{b:02x}")).collect();
    let cut = name[..MAX_NAME - tag.len() - 1].trim_end_matches(['-', '.']);
    format!("{cut}-{tag}")
}

/// The trust ConfigMap. `owner` is the workload's uid when known (read from the cluster): the
/// ConfigMap is then garbage-collected with the workload.
pub fn trust_configmap(
    name: &str,
    namespace: &str,
    workload: &WorkloadRef,
    owner_uid: Option<&str>,
    files: &TrustFiles,
) -> Value {
    let mut cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "flowtap",
                "app.kubernetes.io/component": "ca-bundle",
                "app.kubernetes.io/managed-by": MANAGER,
            },
            "annotations": {
                "flowtap.dev/workload": workload.to_string(),
                "flowtap.dev/ca-sha256": files.sha256,
            },
        },
        "data": {
            BUNDLE_KEY: files.bundle_pem,
            CA_KEY: files.ca_pem,
        },
        "binaryData": {
            TRUSTSTORE_KEY: base64::engine::general_purpose::STANDARD.encode(&files.truststore),
        },
    });
    if let Some(uid) = owner_uid {
        cm["metadata"]["ownerReferences"] = json!([{
            "apiVersion": workload.kind.api_version(),
            "kind": workload.kind.object_kind(),
            "name": workload.name,
            "uid": uid,
        }]);
    }
    cm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_names_stay_valid() {
        let short = WorkloadRef::parse("deploy/velero").expect("ref");
        assert_eq!(trust_configmap_name(&short), "flowtap-ca-deployment-velero");
        let long = WorkloadRef::parse(&format!("sts/{}", "a.".repeat(120) + "b")).expect("ref");
        let name = trust_configmap_name(&long);
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert!(super::super::workload::is_dns_subdomain(&name), "{name}");
    }
}
