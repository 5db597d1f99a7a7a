//! `flowtap k8s ...`: route a Kubernetes workload through the proxy and back, offline or through
//! `kubectl`.
//!
//! Beside the proxy path, not on it: nothing here runs while the proxy serves traffic.
//!
//! ```text
//! ca-secret  CA files on disk -> Secret manifest (the Deployment in deploy/ mounts it)
//! attach     workload (kubectl get, or -f FILE) + CA + system roots
//!            -> ConfigMap (combined bundle, CA alone, Java truststore)
//!            -> strategic merge patch: bundle mounted over the distro paths, trust and proxy
//!               variables per runtime, JAVA_TOOL_OPTIONS, and an annotation recording the
//!               values it replaced
//! detach     the annotation -> the patch that puts every recorded value back; ConfigMap deleted
//! ```
//!
//! `attach --transparent` makes the same ConfigMap and trust settings, no proxy variables, and
//! adds the containers of deploy/sidecar/component (an init container installing the redirect
//! rules, flowtap as a native sidecar) after checking the pod can take them.
//!
//! Files: `cli` (flags), `workload` (kinds, reading manifests), `noproxy` (NO_PROXY and its
//! Java form), `trust` (bundle, truststore via `pkcs12`), `manifests` (Secret, ConfigMap),
//! `record` (the annotation), `settings` (what attach sets), `sidecar` (the component's
//! containers, filled in), `transparent` (what the sidecar needs of a pod), `patch` (attach and
//! detach patches), `kubectl` (the `--apply` side), `run` (each command start to end).

mod cli;
mod kubectl;
mod manifests;
mod noproxy;
mod patch;
mod pkcs12;
mod record;
mod run;
mod settings;
mod sidecar;
mod transparent;
mod trust;
mod workload;

pub use cli::{AttachArgs, CaSecretArgs, DetachArgs, JavaMode, K8sCommand, OnOff, SidecarArgs};

/// Why a `flowtap k8s` command could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// A bad flag: exits with the usage status, like a bad `flowtap proxy` flag.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },

    #[error("{what}: {message}")]
    Manifest { what: String, message: String },

    #[error("{0}")]
    Ca(#[from] crate::tls::ca::CaError),

    #[error("kubectl {args}: {message}")]
    Kubectl { args: String, message: String },

    /// The workload (or its cluster) cannot take what was asked without breaking it: every
    /// reason found, one per line when there are several.
    #[error("{what}: refused:{}", match reasons.as_slice() {
        [one] => format!(" {one}"),
        all => all.iter().map(|r| format!("\n  - {r}")).collect(),
    })]
    Refused { what: String, reasons: Vec<String> },
}

pub(crate) fn flag(flag: &'static str, message: impl Into<String>) -> K8sError {
    K8sError::Config(crate::config::bad(flag, message))
}

/// Runs one `flowtap k8s` command.
pub fn run(cmd: K8sCommand) -> anyhow::Result<()> {
    let result = match cmd {
        K8sCommand::CaSecret(a) => run::ca_secret(a),
        K8sCommand::Attach(a) => run::attach(a),
        K8sCommand::Detach(a) => run::detach(a),
    };
    match result {
        Ok(()) => Ok(()),
        // Kept as its own type so that `main` exits with the usage status.
        Err(K8sError::Config(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
