//! The transparent sidecar as `attach --transparent` adds it: the containers and volumes of the
//! Kustomize component in deploy/sidecar/component, built into the binary and filled in.
//!
//! One source of truth: `sidecar.yaml` (the component's patch) gives the init container
//! `flowtap-init`, the native sidecar `flowtap`, their volumes and the pod annotations, and the
//! component's `configMapGenerator` literals give the default settings. The component reads
//! those settings from the ConfigMap `flowtap-sidecar`; attach has no such ConfigMap, so each
//! reference to it (`envFrom`, `configMapKeyRef`) becomes plain `env` values from the flags.
//! The proxy uid also stands in the `flowtap` container's `runAsUser`/`runAsGroup`, and the CA
//! Secret's name in the Secret volume.

use super::cli::{OnOff, SidecarArgs, DEFAULT_CA_SECRET};
use super::{flag, K8sError};
use crate::access::Cidr;
use serde_json::{json, Value};

/// The component's patch and kustomization, as in the repository.
const COMPONENT_PATCH: &str = include_str!("../../../deploy/sidecar/component/sidecar.yaml");
const COMPONENT_KUSTOMIZATION: &str =
    include_str!("../../../deploy/sidecar/component/kustomization.yaml");
/// Where the built-in component came from, for messages.
const COMPONENT: &str = "deploy/sidecar/component (built into flowtap)";
/// The ConfigMap the component's containers read their settings from.
const SETTINGS_CONFIGMAP: &str = "flowtap-sidecar";

/// The component's containers, by name.
pub const INIT_CONTAINER: &str = "flowtap-init";
pub const PROXY_CONTAINER: &str = "flowtap";
/// Images as deploy/ names them, tagged with this flowtap's version (deploy/base and
/// deploy/sidecar/example tag them the same).
pub const DEFAULT_IMAGE: &str = concat!("flowtap:", env!("CARGO_PKG_VERSION"));
pub const DEFAULT_INIT_IMAGE: &str = concat!("flowtap-init:", env!("CARGO_PKG_VERSION"));

/// The settings, as the component's ConfigMap names them.
const PROXY_UID: &str = "FLOWTAP_PROXY_UID";
const PROXY_PORT: &str = "FLOWTAP_PROXY_PORT";
const REDIRECT_PORTS: &str = "FLOWTAP_REDIRECT_PORTS";
const EXCLUDE_CIDRS: &str = "FLOWTAP_EXCLUDE_CIDRS";
const IPV6: &str = "FLOWTAP_IPV6";
const MODE: &str = "FLOWTAP_MODE";
/// iptables' multiport match takes at most 15 ports (init-redirect.sh checks the same).
const MAX_REDIRECT_PORTS: usize = 15;

/// The settings of one sidecar, checked: the component's defaults with the flags over them.
#[derive(Clone, Debug)]
pub struct SidecarConfig {
    image: String,
    init_image: String,
    ca_secret: String,
    /// The ConfigMap's keys and values, in the component's order.
    values: Vec<(String, String)>,
    default_uid: u32,
}

/// What the sidecar adds to a pod template.
#[derive(Clone, Debug)]
pub struct SidecarParts {
    pub pod_annotations: Vec<(String, String)>,
    pub init_containers: Vec<Value>,
    pub volumes: Vec<Value>,
}

/// The component's settings: the `flowtap-sidecar` literals of its kustomization.
pub fn component_defaults() -> Result<Vec<(String, String)>, K8sError> {
    let doc: Value = serde_yaml_ng::from_str(COMPONENT_KUSTOMIZATION).map_err(broken)?;
    let literals = doc
        .get("configMapGenerator")
        .and_then(Value::as_array)
        .and_then(|gens| {
            gens.iter()
                .find(|g| g.get("name").and_then(Value::as_str) == Some(SETTINGS_CONFIGMAP))
        })
        .and_then(|g| g.get("literals"))
        .and_then(Value::as_array)
        .ok_or_else(|| broken(format!("no configMapGenerator {SETTINGS_CONFIGMAP}")))?;
    literals
        .iter()
        .map(|l| {
            l.as_str()
                .and_then(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| broken(format!("literal {l} is not KEY=VALUE")))
        })
        .collect()
}

fn broken(message: impl std::fmt::Display) -> K8sError {
    K8sError::Manifest {
        what: COMPONENT.to_string(),
        message: message.to_string(),
    }
}

impl SidecarConfig {
    /// The settings from the flags over the component's defaults; a bad flag is named.
    pub fn new(args: &SidecarArgs, ca_secret: &str) -> Result<Self, K8sError> {
        let mut values = component_defaults()?;
        let default_uid = get(&values, PROXY_UID)?
            .parse::<u32>()
            .map_err(|e| broken(format!("{PROXY_UID}: {e}")))?;
        let proxy_port = get(&values, PROXY_PORT)?;
        if let Some(uid) = &args.proxy_uid {
            set(&mut values, PROXY_UID, check_uid(uid)?.to_string());
        }
        if !args.redirect_ports.is_empty() {
            set(
                &mut values,
                REDIRECT_PORTS,
                check_ports(&args.redirect_ports, &proxy_port)?,
            );
        }
        if !args.exclude_cidrs.is_empty() {
            set(
                &mut values,
                EXCLUDE_CIDRS,
                check_cidrs(&args.exclude_cidrs)?,
            );
        }
        if let Some(ipv6) = args.ipv6 {
            set(&mut values, IPV6, ipv6.as_str().to_string());
        }
        let ipv6 = get(&values, IPV6)?;
        let mode = get(&values, MODE)?;
        let v4 = format!("transparent@127.0.0.1:{proxy_port}");
        let v6 = format!("transparent@[::1]:{proxy_port}");
        let mut modes: Vec<&str> = mode.split(',').filter(|m| *m != v6).collect();
        if !modes.contains(&v4.as_str()) {
            return Err(broken(format!(
                "{MODE}={mode} has no {v4}, where {PROXY_PORT} sends the connections"
            )));
        }
        match ipv6.as_str() {
            "on" => modes.push(&v6),
            "off" => {}
            other => {
                return Err(broken(format!(
                    "{IPV6}={other}: attach knows on and off (auto would need a listener \
                     that may not be there)"
                )))
            }
        }
        let mode = modes.join(",");
        set(&mut values, MODE, mode);
        for (flag_name, image) in [("--image", &args.image), ("--init-image", &args.init_image)] {
            if image.is_empty() || image.contains(char::is_whitespace) {
                return Err(flag(
                    flag_name,
                    format!("{image:?} is not an image reference"),
                ));
            }
        }
        Ok(SidecarConfig {
            image: args.image.clone(),
            init_image: args.init_image.clone(),
            ca_secret: ca_secret.to_string(),
            values,
            default_uid,
        })
    }

    fn value(&self, key: &str) -> &str {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// The uid the flowtap container runs as, whose connections are never redirected.
    pub fn proxy_uid(&self) -> u32 {
        self.value(PROXY_UID).parse().unwrap_or(self.default_uid)
    }

    pub fn redirect_ports(&self) -> &str {
        self.value(REDIRECT_PORTS)
    }

    pub fn exclude_cidrs(&self) -> &str {
        self.value(EXCLUDE_CIDRS)
    }

    pub fn ipv6(&self) -> bool {
        self.value(IPV6) == "on"
    }

    pub fn images(&self) -> (&str, &str) {
        (&self.image, &self.init_image)
    }

    pub fn ca_secret(&self) -> &str {
        &self.ca_secret
    }

    /// The component's patch, filled in for this workload.
    pub fn parts(&self) -> Result<SidecarParts, K8sError> {
        let patch: Value = serde_yaml_ng::from_str(COMPONENT_PATCH).map_err(broken)?;
        let template = patch
            .pointer("/spec/template")
            .ok_or_else(|| broken("no spec.template"))?;
        let pod_annotations = template
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut init_containers = Vec::new();
        for c in list(template, "/spec/initContainers")? {
            init_containers.push(self.fill_container(c)?);
        }
        let mut volumes = Vec::new();
        for v in list(template, "/spec/volumes")? {
            let mut v = v.clone();
            if let Some(secret) = v.pointer_mut("/secret/secretName") {
                if secret == DEFAULT_CA_SECRET {
                    *secret = json!(self.ca_secret);
                }
            }
            volumes.push(v);
        }
        let parts = SidecarParts {
            pod_annotations,
            init_containers,
            volumes,
        };
        // Every reference to the ConfigMap must have been replaced.
        let text =
            serde_json::to_string(&(&parts.init_containers, &parts.volumes)).unwrap_or_default();
        if text.contains(SETTINGS_CONFIGMAP) {
            return Err(broken(format!(
                "a reference to {SETTINGS_CONFIGMAP} that attach does not know how to fill"
            )));
        }
        Ok(parts)
    }

    fn fill_container(&self, c: &Value) -> Result<Value, K8sError> {
        let mut c = c
            .as_object()
            .cloned()
            .ok_or_else(|| broken("an init container is not an object"))?;
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        let image = match name {
            INIT_CONTAINER => &self.init_image,
            PROXY_CONTAINER => &self.image,
            other => return Err(broken(format!("unknown container {other:?}"))),
        };
        c.insert("image".to_string(), json!(image));

        // envFrom the settings ConfigMap -> its values as env, before the container's own.
        let mut env: Vec<Value> = Vec::new();
        if let Some(Value::Array(from)) = c.remove("envFrom") {
            let (ours, rest): (Vec<Value>, Vec<Value>) = from.into_iter().partition(|f| {
                f.pointer("/configMapRef/name").and_then(Value::as_str) == Some(SETTINGS_CONFIGMAP)
            });
            if !ours.is_empty() {
                env.extend(
                    self.values
                        .iter()
                        .filter(|(_, v)| !v.is_empty())
                        .map(|(k, v)| json!({"name": k, "value": v})),
                );
            }
            if !rest.is_empty() {
                c.insert("envFrom".to_string(), Value::Array(rest));
            }
        }
        // configMapKeyRef to the settings -> the value.
        for e in c
            .get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let key = e
                .pointer("/valueFrom/configMapKeyRef")
                .filter(|r| r.get("name").and_then(Value::as_str) == Some(SETTINGS_CONFIGMAP))
                .and_then(|r| r.get("key"))
                .and_then(Value::as_str);
            match key {
                Some(key) => {
                    let value = self.value(key);
                    if !value.is_empty() {
                        env.push(json!({"name": e["name"], "value": value}));
                    }
                }
                None => env.push(e),
            }
        }
        if !env.is_empty() {
            c.insert("env".to_string(), Value::Array(env));
        }
        // The proxy uid, wherever the component wrote its default.
        if let Some(Value::Object(sc)) = c.get_mut("securityContext") {
            for key in ["runAsUser", "runAsGroup"] {
                if sc.get(key).and_then(Value::as_u64) == Some(u64::from(self.default_uid)) {
                    sc.insert(key.to_string(), json!(self.proxy_uid()));
                }
            }
        }
        Ok(Value::Object(c))
    }
}

fn get(values: &[(String, String)], key: &str) -> Result<String, K8sError> {
    values
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| broken(format!("no {key} among its settings")))
}

fn set(values: &mut [(String, String)], key: &str, value: String) {
    if let Some(entry) = values.iter_mut().find(|(k, _)| k == key) {
        entry.1 = value;
    }
}

fn list<'a>(template: &'a Value, pointer: &str) -> Result<&'a Vec<Value>, K8sError> {
    template
        .pointer(pointer)
        .and_then(Value::as_array)
        .ok_or_else(|| broken(format!("no list at {pointer}")))
}

fn check_uid(s: &str) -> Result<u32, K8sError> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err(flag(
            "--proxy-uid",
            "0: root's connections (and maybe the application's) would escape capture; \
             give flowtap a dedicated uid",
        )),
        Ok(uid) => Ok(uid),
        Err(_) => Err(flag("--proxy-uid", format!("{s:?} is not a numeric uid"))),
    }
}

fn check_ports(given: &[String], proxy_port: &str) -> Result<String, K8sError> {
    let mut ports: Vec<u16> = Vec::new();
    for p in given.iter().flat_map(|p| p.split(',')) {
        let p = p.trim();
        let port = p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| flag("--redirect-ports", format!("{p:?} is not a port")))?;
        if port.to_string() == proxy_port {
            return Err(flag(
                "--redirect-ports",
                format!("{port} is the sidecar's own transparent port"),
            ));
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() > MAX_REDIRECT_PORTS {
        return Err(flag(
            "--redirect-ports",
            format!(
                "{} ports; iptables' multiport match takes at most {MAX_REDIRECT_PORTS}",
                ports.len()
            ),
        ));
    }
    Ok(ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

fn check_cidrs(given: &[String]) -> Result<String, K8sError> {
    let mut out: Vec<String> = Vec::new();
    for c in given.iter().flat_map(|c| c.split(',')) {
        let c = c.trim();
        if c.is_empty() {
            continue;
        }
        Cidr::parse(c).map_err(|m| flag("--exclude-cidrs", m))?;
        if !out.iter().any(|o| o == c) {
            out.push(c.to_string());
        }
    }
    Ok(out.join(","))
}

impl OnOff {
    fn as_str(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

/// The ports the `flowtap` container listens on in the pod (its declared ports and the
/// transparent one), which no application container may use.
pub fn listen_ports(parts: &SidecarParts, config: &SidecarConfig) -> Vec<u16> {
    let mut ports: Vec<u16> = parts
        .init_containers
        .iter()
        .filter_map(|c| c.get("ports").and_then(Value::as_array))
        .flatten()
        .filter_map(|p| p.get("containerPort").and_then(Value::as_u64))
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    if let Ok(p) = config.value(PROXY_PORT).parse::<u16>() {
        ports.push(p);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SidecarArgs {
        SidecarArgs {
            image: DEFAULT_IMAGE.to_string(),
            init_image: DEFAULT_INIT_IMAGE.to_string(),
            redirect_ports: vec![],
            exclude_cidrs: vec![],
            ipv6: None,
            proxy_uid: None,
        }
    }

    fn env(c: &Value) -> Vec<(String, String)> {
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or("(valueFrom)").to_string(),
                )
            })
            .collect()
    }

    fn value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_component_filled_with_its_defaults() {
        let config = SidecarConfig::new(&args(), DEFAULT_CA_SECRET).expect("config");
        let parts = config.parts().expect("parts");
        let names: Vec<&str> = parts
            .init_containers
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER]);
        let (init, proxy) = (&parts.init_containers[0], &parts.init_containers[1]);
        assert_eq!(init["image"], DEFAULT_INIT_IMAGE);
        assert_eq!(proxy["image"], DEFAULT_IMAGE);
        assert!(init.get("envFrom").is_none());
        let ienv = env(init);
        assert_eq!(value(&ienv, PROXY_UID), Some("10001"));
        assert_eq!(value(&ienv, REDIRECT_PORTS), Some("80,443"));
        assert_eq!(value(&ienv, EXCLUDE_CIDRS), None, "empty: left out");
        assert_eq!(value(&ienv, "FLOWTAP_CA_FROM"), Some("/flowtap/ca-secret"));
        let penv = env(proxy);
        assert_eq!(
            value(&penv, MODE),
            Some("regular,transparent@127.0.0.1:15001")
        );
        assert_eq!(proxy["securityContext"]["runAsUser"], 10001);
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(listen_ports(&parts, &config), [15000, 15001]);
        let secret = parts
            .volumes
            .iter()
            .find(|v| v.get("secret").is_some())
            .expect("secret volume");
        assert_eq!(secret["secret"]["secretName"], DEFAULT_CA_SECRET);
        // YAML's 0400 is octal, as kubectl reads it.
        assert_eq!(secret["secret"]["defaultMode"], 0o400);
        assert!(parts
            .pod_annotations
            .contains(&("prometheus.io/port".to_string(), "15000".to_string())));
    }

    #[test]
    fn flags_over_the_defaults() {
        let mut a = args();
        a.proxy_uid = Some("2000".into());
        a.redirect_ports = vec!["80,443".into(), "8443".into(), "443".into()];
        a.exclude_cidrs = vec!["10.96.0.0/12,fd00::/8".into()];
        a.ipv6 = Some(OnOff::On);
        a.image = "registry.example.com/flowtap:1".into();
        let config = SidecarConfig::new(&a, "my-ca").expect("config");
        let parts = config.parts().expect("parts");
        let ienv = env(&parts.init_containers[0]);
        assert_eq!(value(&ienv, PROXY_UID), Some("2000"));
        assert_eq!(value(&ienv, REDIRECT_PORTS), Some("80,443,8443"));
        assert_eq!(value(&ienv, EXCLUDE_CIDRS), Some("10.96.0.0/12,fd00::/8"));
        assert_eq!(value(&ienv, IPV6), Some("on"));
        let proxy = &parts.init_containers[1];
        assert_eq!(
            value(&env(proxy), MODE),
            Some("regular,transparent@127.0.0.1:15001,transparent@[::1]:15001")
        );
        assert_eq!(proxy["securityContext"]["runAsUser"], 2000);
        assert_eq!(proxy["securityContext"]["runAsGroup"], 2000);
        assert_eq!(proxy["image"], "registry.example.com/flowtap:1");
        assert!(parts
            .volumes
            .iter()
            .any(|v| v.pointer("/secret/secretName") == Some(&json!("my-ca"))));
    }

    #[test]
    fn bad_flags_are_named() {
        type Change = fn(&mut SidecarArgs);
        let cases: [(Change, &str); 6] = [
            (|a| a.proxy_uid = Some("0".into()), "--proxy-uid"),
            (|a| a.proxy_uid = Some("x".into()), "--proxy-uid"),
            (
                |a| a.redirect_ports = vec!["80,0".into()],
                "--redirect-ports",
            ),
            (
                |a| a.redirect_ports = vec!["15001".into()],
                "--redirect-ports",
            ),
            (
                |a| {
                    a.redirect_ports = vec![(1..=16)
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")]
                },
                "--redirect-ports",
            ),
            (
                |a| a.exclude_cidrs = vec!["10.0.0.0/33".into()],
                "--exclude-cidrs",
            ),
        ];
        for (change, name) in cases {
            let mut a = args();
            change(&mut a);
            let err = SidecarConfig::new(&a, DEFAULT_CA_SECRET).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn default_images_match_deploy() {
        let base = include_str!("../../../deploy/base/kustomization.yaml");
        let example = include_str!("../../../deploy/sidecar/example/kustomization.yaml");
        let tag = format!("newTag: {}", env!("CARGO_PKG_VERSION"));
        assert!(base.contains(&tag), "deploy/base tags flowtap {tag}");
        assert!(example.contains(&tag), "the sidecar example tags {tag}");
    }
}
