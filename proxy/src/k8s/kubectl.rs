//! The `--apply` side: every read and write goes through the user's `kubectl`, with their
//! kubeconfig and credentials, so flowtap holds no Kubernetes client of its own.
//!
//! Objects are applied server-side (`kubectl apply --server-side`): a client-side apply would
//! copy the whole object into the last-applied annotation, which a bundle of public roots
//! (hundreds of KiB) overflows, and which for the CA Secret would be one more copy of the key.

use super::cli::KubectlArgs;
use super::K8sError;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// Field manager name for server-side apply.
const FIELD_MANAGER: &str = "flowtap";

pub struct Kubectl<'a> {
    args: &'a KubectlArgs,
}

impl<'a> Kubectl<'a> {
    pub fn new(args: &'a KubectlArgs) -> Self {
        Kubectl { args }
    }

    /// `kubectl get RESOURCE/NAME [-n NS] -o json`.
    pub fn get(
        &self,
        resource: &str,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Value, K8sError> {
        let mut args = vec!["get".to_string(), format!("{resource}/{name}")];
        push_namespace(&mut args, namespace);
        args.extend(["-o".to_string(), "json".to_string()]);
        let out = self.run(&args, None)?;
        serde_json::from_slice(&out).map_err(|e| K8sError::Kubectl {
            args: args.join(" "),
            message: format!("did not print JSON: {e}"),
        })
    }

    /// The API server's version, (major, minor), from `kubectl version -o json`.
    pub fn server_version(&self) -> Result<(u32, u32), K8sError> {
        let args = ["version".to_string(), "-o".to_string(), "json".to_string()];
        let out = self.run(&args, None)?;
        let number = |v: &Value, key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(|s| s.trim_end_matches('+'))
                .and_then(|s| s.parse::<u32>().ok())
        };
        serde_json::from_slice::<Value>(&out)
            .ok()
            .and_then(|v| {
                let server = v.get("serverVersion")?;
                Some((number(server, "major")?, number(server, "minor")?))
            })
            .ok_or_else(|| K8sError::Kubectl {
                args: args.join(" "),
                message: "printed no serverVersion with a major and minor number".to_string(),
            })
    }

    /// `kubectl apply --server-side -f -` with the objects on stdin (a YAML stream of JSON
    /// documents).
    pub fn apply(&self, objects: &[Value]) -> Result<(), K8sError> {
        let args: Vec<String> = [
            "apply",
            "--server-side",
            "--field-manager",
            FIELD_MANAGER,
            "--force-conflicts",
            "-f",
            "-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        self.run(&args, Some(yaml_stream(objects).as_bytes()))?;
        Ok(())
    }

    /// `kubectl patch RESOURCE/NAME -n NS --type strategic --patch JSON`.
    pub fn patch(
        &self,
        resource: &str,
        name: &str,
        namespace: &str,
        patch: &Value,
    ) -> Result<(), K8sError> {
        let mut args = vec!["patch".to_string(), format!("{resource}/{name}")];
        push_namespace(&mut args, Some(namespace));
        args.extend([
            "--type".to_string(),
            "strategic".to_string(),
            "--patch".to_string(),
            patch.to_string(),
        ]);
        self.run(&args, None)?;
        Ok(())
    }

    /// `kubectl delete configmap NAME -n NS --ignore-not-found`.
    pub fn delete(&self, resource: &str, name: &str, namespace: &str) -> Result<(), K8sError> {
        let mut args = vec!["delete".to_string(), format!("{resource}/{name}")];
        push_namespace(&mut args, Some(namespace));
        args.push("--ignore-not-found".to_string());
        self.run(&args, None)?;
        Ok(())
    }

    fn run(&self, args: &[String], stdin: Option<&[u8]>) -> Result<Vec<u8>, K8sError> {
        let mut full: Vec<String> = Vec::new();
        if let Some(ctx) = &self.args.context {
            full.extend(["--context".to_string(), ctx.clone()]);
        }
        full.extend(args.iter().cloned());
        // Shown in messages; a patch can be long.
        let shown: String = {
            let s = args.join(" ");
            if s.chars().count() > 120 {
                format!("{}...", s.chars().take(117).collect::<String>())
            } else {
                s
            }
        };
        let fail = |message: String| K8sError::Kubectl {
            args: shown.clone(),
            message,
        };
        let mut child = Command::new(&self.args.kubectl)
            .args(&full)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", self.args.kubectl.display())))?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)
                .map_err(|e| fail(format!("cannot write to its stdin: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(fail(format!("failed ({}): {}", out.status, stderr.trim())));
        }
        Ok(out.stdout)
    }
}

fn push_namespace(args: &mut Vec<String>, namespace: Option<&str>) {
    if let Some(ns) = namespace {
        args.extend(["-n".to_string(), ns.to_string()]);
    }
}

/// Objects as a YAML stream of pretty JSON documents (JSON is YAML; kubectl reads both).
pub fn yaml_stream(objects: &[Value]) -> String {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(o).unwrap_or_default());
        out.push('\n');
    }
    out
}
