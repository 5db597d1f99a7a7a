//! What attach sets on a pod, decided before any patch is written: the volume with the trust
//! files, where it is mounted, and the variables each runtime reads (research/standards.md,
//! section 5): the proxy in both spellings, NO_PROXY, the bundle for every runtime whose
//! variable replaces the default roots, the CA alone for Node (which adds), and for JVMs the
//! system properties in JAVA_TOOL_OPTIONS. The transparent variant sets the same trust and no
//! proxy settings (the pod's connections reach its sidecar without them); its containers come
//! from `sidecar`.

use super::cli::JavaMode;
use super::noproxy::{java_non_proxy_hosts, ProxyUrl};
use super::trust::{BUNDLE_KEY, CA_KEY, TRUSTSTORE_KEY, TRUSTSTORE_PASSWORD};
use super::workload::Container;
use serde_json::{json, Map, Value};

/// The pod volume holding the trust files.
pub const VOLUME_NAME: &str = "flowtap-ca";
/// Where the whole ConfigMap is mounted in each container; the variables point here.
pub const MOUNT_DIR: &str = "/etc/flowtap-ca";
/// The bundle files of the usual distributions, each replaced by the combined bundle for
/// clients that read the system file and no variable (libcurl programs, .NET, Go's fallback).
pub const DEFAULT_BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu, Alpine, distroless
    "/etc/pki/tls/certs/ca-bundle.crt",   // RHEL, Fedora, CentOS, Amazon Linux
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // what RHEL's path points to
    "/etc/ssl/cert.pem",                  // Alpine (LibreSSL/OpenSSL default file)
];
/// Pod label selecting attached pods (the optional NetworkPolicy in deploy/ admits them).
pub const ATTACHED_LABEL: &str = "flowtap.dev/attached";
/// Its value for the proxy variant: the pods the shared proxy admits.
pub const ATTACHED_PROXY: &str = "true";
/// Its value for the transparent variant: the pods do not use the shared proxy.
pub const ATTACHED_TRANSPARENT: &str = "transparent";
/// Pod annotation with the digest of the trust files: a new CA changes the pod template, so
/// the pods restart and read it.
pub const CA_HASH_ANNOTATION: &str = "flowtap.dev/ca-sha256";
/// The variable the JVM reads options from, whatever launches it.
pub const JAVA_TOOL_OPTIONS: &str = "JAVA_TOOL_OPTIONS";
/// The proxy variables, in the spellings runtimes read.
pub const PROXY_VARS: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];

/// Image names that are JVMs, or usually run one.
const JAVA_IMAGE_HINTS: &[&str] = &[
    "java",
    "jdk",
    "jre",
    "openjdk",
    "temurin",
    "corretto",
    "zulu",
    "graalvm",
    "liberica",
    "semeru",
    "maven",
    "gradle",
    "tomcat",
    "jetty",
    "wildfly",
    "keycloak",
    "kafka",
    "elasticsearch",
    "logstash",
    "cassandra",
    "zookeeper",
    "jenkins",
    "spring",
];
/// Variables that betray a JVM.
const JAVA_ENV_HINTS: &[&str] = &[
    "JAVA_HOME",
    "JAVA_TOOL_OPTIONS",
    "JAVA_OPTS",
    "JDK_JAVA_OPTIONS",
];

/// A variable's new value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    /// Replaces whatever was there.
    Set(String),
    /// Appended, after a space, to the value the variable had before attach.
    Append(String),
}

#[derive(Clone, Debug, Default)]
pub struct ContainerSettings {
    pub env: Vec<(String, EnvValue)>,
    /// Mount objects (`name`, `mountPath`, ...), keyed by `mountPath`.
    pub mounts: Vec<Value>,
}

/// Everything attach sets on the pod template.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub pod_labels: Vec<(String, String)>,
    pub pod_annotations: Vec<(String, String)>,
    pub volumes: Vec<Value>,
    pub containers: Vec<(String, ContainerSettings)>,
    /// Whole init containers added after the pod's own (the transparent sidecar's).
    pub init_containers: Vec<Value>,
    /// What a person should know: replaced values, Java decisions, what could not be done.
    pub notes: Vec<String>,
}

/// How the workload's containers reach flowtap.
#[derive(Clone, Copy, Debug)]
pub enum Route<'a> {
    /// Through the shared proxy, named by the proxy variables (and NO_PROXY's exceptions).
    Proxy {
        proxy: &'a ProxyUrl,
        no_proxy: &'a [String],
    },
    /// Redirected by the kernel to the pod's own sidecar: the containers need only the trust.
    Transparent,
}

/// The inputs that do not come from the workload.
pub struct Inputs<'a> {
    pub route: Route<'a>,
    pub config_map: &'a str,
    pub ca_sha256: &'a str,
    pub bundle_paths: &'a [String],
    pub java: JavaMode,
}

/// Decides the settings for the selected containers of a pod template. `original_env(container,
/// var)` gives a variable's entry as it was before any attach (from the record of an earlier
/// attach, else as it is now), so an earlier attach's values are never taken for the workload's.
pub fn decide<'a>(
    inputs: &Inputs<'_>,
    containers: &[Container<'a>],
    original_env: impl Fn(&str, &str) -> Option<Value>,
) -> Settings {
    let label = match inputs.route {
        Route::Proxy { .. } => ATTACHED_PROXY,
        Route::Transparent => ATTACHED_TRANSPARENT,
    };
    let mut s = Settings {
        pod_labels: vec![(ATTACHED_LABEL.to_string(), label.to_string())],
        pod_annotations: vec![(CA_HASH_ANNOTATION.to_string(), inputs.ca_sha256.to_string())],
        volumes: vec![json!({
            "name": VOLUME_NAME,
            "configMap": {"name": inputs.config_map},
        })],
        ..Settings::default()
    };
    let bundle = format!("{MOUNT_DIR}/{BUNDLE_KEY}");
    for (name, container) in containers {
        let mut env: Vec<(String, EnvValue)> = Vec::new();
        let mut set = |k: &str, v: &str| env.push((k.to_string(), EnvValue::Set(v.to_string())));
        if let Route::Proxy { proxy, no_proxy } = inputs.route {
            let no_proxy = no_proxy.join(",");
            for var in PROXY_VARS {
                set(var, &proxy.url);
            }
            set("NO_PROXY", &no_proxy);
            set("no_proxy", &no_proxy);
            set("NODE_USE_ENV_PROXY", "1");
        }
        for var in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "AWS_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        ] {
            set(var, &bundle);
        }
        set("NODE_EXTRA_CA_CERTS", &format!("{MOUNT_DIR}/{CA_KEY}"));
        for (var, value) in &env {
            let (EnvValue::Set(new) | EnvValue::Append(new)) = value;
            let before = match original_env(name, var) {
                None => continue,
                Some(entry) => match entry.get("value").and_then(Value::as_str) {
                    Some(v) if v == new => continue,
                    Some(v) => format!("{v:?}"),
                    None => "set from valueFrom".to_string(),
                },
            };
            s.notes.push(format!(
                "container {name}: {var} was {before}; flowtap replaces it while attached and \
                 detach puts it back{}",
                if PROXY_VARS.contains(&var.as_str()) {
                    " (to keep the traffic going out through that proxy, run the flowtap proxy \
                     with --upstream-proxy set to it)"
                } else {
                    ""
                }
            ));
        }
        if let Some(java) = java_settings(inputs, name, container, &original_env, &mut s.notes) {
            env.push((JAVA_TOOL_OPTIONS.to_string(), java));
        }
        let mut mounts = vec![json!({
            "name": VOLUME_NAME,
            "mountPath": MOUNT_DIR,
            "readOnly": true,
        })];
        for path in inputs.bundle_paths {
            mounts.push(json!({
                "name": VOLUME_NAME,
                "mountPath": path,
                "subPath": BUNDLE_KEY,
                "readOnly": true,
            }));
        }
        s.containers
            .push((name.to_string(), ContainerSettings { env, mounts }));
    }
    s
}

/// JAVA_TOOL_OPTIONS for a container, or None with a note saying why not.
fn java_settings(
    inputs: &Inputs<'_>,
    name: &str,
    container: &Map<String, Value>,
    original_env: &impl Fn(&str, &str) -> Option<Value>,
    notes: &mut Vec<String>,
) -> Option<EnvValue> {
    let wanted = match inputs.java {
        JavaMode::Off => false,
        JavaMode::On => true,
        JavaMode::Auto => {
            let looks = looks_like_java(container, |var| original_env(name, var).is_some());
            if !looks {
                notes.push(format!(
                    "container {name}: no sign of a JVM (image, JAVA_* variables); \
                     JAVA_TOOL_OPTIONS not set (--java on sets it anyway)"
                ));
            }
            looks
        }
    };
    if !wanted {
        return None;
    }
    let before = original_env(name, JAVA_TOOL_OPTIONS);
    if before
        .as_ref()
        .is_some_and(|e| e.get("valueFrom").is_some())
    {
        let what = match inputs.route {
            Route::Proxy { .. } => "proxy and truststore",
            Route::Transparent => "truststore",
        };
        notes.push(format!(
            "container {name}: cannot set the JVM's {what}: JAVA_TOOL_OPTIONS \
             comes from valueFrom, which a patch cannot append to; move its value into \
             env[].value, or add the options printed by --java on to its source"
        ));
        return None;
    }
    if before.is_none() && container.get("envFrom").is_some() {
        notes.push(format!(
            "container {name}: has envFrom; if that supplies JAVA_TOOL_OPTIONS, the value \
             flowtap sets replaces it while attached"
        ));
    }
    let trust = format!(
        "-Djavax.net.ssl.trustStore={MOUNT_DIR}/{TRUSTSTORE_KEY} \
         -Djavax.net.ssl.trustStoreType=PKCS12 \
         -Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}"
    );
    let Route::Proxy { proxy, no_proxy } = inputs.route else {
        return Some(EnvValue::Append(trust));
    };
    let (hosts, dropped) = java_non_proxy_hosts(no_proxy);
    if !dropped.is_empty() {
        notes.push(format!(
            "container {name}: the JVM's http.nonProxyHosts cannot express {}; list those \
             hosts by name with --no-proxy",
            dropped.join(", ")
        ));
    }
    if proxy.has_credentials {
        notes.push(format!(
            "container {name}: the JVM takes no proxy credentials from system properties; \
             Java clients will not authenticate to the proxy"
        ));
    }
    let (host, port) = (&proxy.host, proxy.port);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    Some(EnvValue::Append(format!(
        "-Dhttp.proxyHost={host} -Dhttp.proxyPort={port} \
         -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} \
         -Dhttp.nonProxyHosts={hosts} {trust}"
    )))
}

/// Whether a container looks like it runs a JVM: its image name, or a JAVA_* variable it had.
pub fn looks_like_java(container: &Map<String, Value>, had_env: impl Fn(&str) -> bool) -> bool {
    let image = container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    // The repository part only: a registry host or a tag may contain anything.
    let repo = image.split('@').next().unwrap_or("");
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    let repo = repo.rsplit_once('/').map(|(_, r)| r).unwrap_or(repo);
    JAVA_IMAGE_HINTS.iter().any(|h| repo.contains(h)) || JAVA_ENV_HINTS.iter().any(|v| had_env(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str) -> Map<String, Value> {
        json!({"name": "c", "image": image})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn java_images() {
        for image in [
            "eclipse-temurin:21-jre",
            "docker.io/library/openjdk:17",
            "quay.io/keycloak/keycloak:25.0",
            "bitnami/kafka@sha256:abc",
        ] {
            assert!(looks_like_java(&container(image), |_| false), "{image}");
        }
        for image in [
            "velero/velero:v1.14.0",
            "registry.java.corp:5000/app:1",
            "node:22",
        ] {
            assert!(!looks_like_java(&container(image), |_| false), "{image}");
        }
        assert!(looks_like_java(&container("mycorp/billing:1"), |v| v == "JAVA_HOME"));
    }
}
