//! The flags of `flowtap k8s ca-secret | attach | detach`.

use super::sidecar::{DEFAULT_IMAGE, DEFAULT_INIT_IMAGE};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Name of the Secret holding the CA, in deploy/ and in `ca-secret`.
pub const DEFAULT_CA_SECRET: &str = "flowtap-ca";
/// Namespace of the proxy in deploy/.
pub const DEFAULT_PROXY_NAMESPACE: &str = "flowtap";
/// Kubernetes' default cluster domain (kubelet `clusterDomain`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Subcommand, Debug)]
pub enum K8sCommand {
    /// Print the Secret manifest holding an existing CA (ca.pem, ca-key.pem) for deploy/.
    CaSecret(CaSecretArgs),
    /// Route a workload's HTTP(S) through the proxy: a ConfigMap with the CA bundle and a patch
    /// that mounts it and sets the proxy and trust variables (or, with --transparent, adds a
    /// flowtap sidecar the pod's connections are redirected to). Printed, or applied with
    /// --apply.
    Attach(Box<AttachArgs>),
    /// Undo `attach`: the patch that puts back every value attach replaced, and the ConfigMap
    /// to delete. Printed, or applied with --apply.
    Detach(DetachArgs),
}

/// How `kubectl` is run by `--apply` (and to read objects when no file is given).
#[derive(Args, Debug, Clone)]
pub struct KubectlArgs {
    /// Apply through kubectl instead of printing.
    #[arg(long, env = "FLOWTAP_K8S_APPLY")]
    pub apply: bool,
    /// The kubectl program.
    #[arg(
        long,
        env = "FLOWTAP_KUBECTL",
        default_value = "kubectl",
        value_name = "PATH"
    )]
    pub kubectl: PathBuf,
    /// kubeconfig context for kubectl (default: the current context).
    #[arg(long, env = "FLOWTAP_K8S_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
}

#[derive(Args, Debug)]
pub struct CaSecretArgs {
    /// Directory holding ca.pem and ca-key.pem (made by `flowtap ca init`). Default: ~/.flowtap
    #[arg(long, env = "FLOWTAP_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Name of the Secret.
    #[arg(long, env = "FLOWTAP_K8S_CA_SECRET", default_value = DEFAULT_CA_SECRET)]
    pub name: String,
    /// Namespace of the Secret: the proxy's namespace.
    #[arg(short, long, env = "FLOWTAP_K8S_NAMESPACE", default_value = DEFAULT_PROXY_NAMESPACE)]
    pub namespace: String,
    #[command(flatten)]
    pub kubectl: KubectlArgs,
}

/// Whether attach adds the JVM settings (JAVA_TOOL_OPTIONS, truststore).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum JavaMode {
    /// To containers that look like JVMs (image name, JAVA_* variables).
    Auto,
    /// To every selected container.
    On,
    /// To none.
    Off,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The workload: deployment/NAME, statefulset/NAME, daemonset/NAME or cronjob/NAME.
    #[arg(value_name = "KIND/NAME")]
    pub workload: String,
    /// Namespace of the workload (default: the manifest's, else kubectl's current one).
    #[arg(short, long, env = "FLOWTAP_K8S_NAMESPACE")]
    pub namespace: Option<String>,
    /// The proxy as the workload reaches it, e.g. http://flowtap.flowtap.svc:8080
    #[arg(
        long,
        env = "FLOWTAP_K8S_PROXY",
        value_name = "URL",
        required_unless_present = "transparent",
        conflicts_with = "transparent"
    )]
    pub proxy: Option<String>,
    /// Instead of a shared proxy: a flowtap sidecar in each pod (deploy/sidecar/component), with
    /// the pod's outgoing TCP to --redirect-ports redirected to it by an init container; the
    /// containers get the CA trust and no proxy variables. Needs Kubernetes 1.29+ and the CA
    /// Secret in the workload's namespace (flowtap k8s ca-secret -n NAMESPACE).
    #[arg(long, env = "FLOWTAP_K8S_TRANSPARENT")]
    pub transparent: bool,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    /// Read the workload from this manifest (YAML or JSON, several documents allowed) instead
    /// of the cluster; the output is then computed offline.
    #[arg(
        short = 'f',
        long = "filename",
        env = "FLOWTAP_K8S_FILENAME",
        value_name = "FILE"
    )]
    pub file: Option<PathBuf>,
    /// Only these containers (repeatable; default: every container of the pod).
    #[arg(
        short,
        long = "container",
        env = "FLOWTAP_K8S_CONTAINER",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub containers: Vec<String>,
    /// More NO_PROXY entries (repeatable, comma-separated): hosts, .domain suffixes, IPs, CIDRs.
    #[arg(
        long,
        env = "FLOWTAP_K8S_NO_PROXY",
        value_delimiter = ',',
        value_name = "LIST",
        conflicts_with = "transparent"
    )]
    pub no_proxy: Vec<String>,
    /// The cluster's DNS domain (kubelet clusterDomain), excluded from the proxy.
    #[arg(
        long,
        env = "FLOWTAP_K8S_CLUSTER_DOMAIN",
        default_value = DEFAULT_CLUSTER_DOMAIN,
        conflicts_with = "transparent"
    )]
    pub cluster_domain: String,
    /// The flowtap CA certificate (PEM) the workload must trust (instead of --ca-secret; with
    /// --transparent, the certificate of the Secret the sidecar mounts).
    #[arg(long, env = "FLOWTAP_K8S_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Read the CA certificate from this Secret ([NAMESPACE/]NAME, key ca.pem) through kubectl.
    /// Default: flowtap-ca in the namespace named by the --proxy host (NAME.NAMESPACE.svc).
    /// With --transparent: the Secret the sidecar mounts, in the workload's namespace
    /// (default flowtap-ca).
    #[arg(long, env = "FLOWTAP_K8S_CA_SECRET", value_name = "[NS/]NAME")]
    pub ca_secret: Option<String>,
    /// The public roots to put before the flowtap CA in the bundle (default: this machine's
    /// system bundle). Pass the workload image's own bundle to keep private CAs it trusts.
    #[arg(long, env = "FLOWTAP_SYSTEM_BUNDLE", value_name = "PATH")]
    pub system_bundle: Option<PathBuf>,
    /// Paths the combined bundle is mounted over (repeatable; default: the Debian/Ubuntu,
    /// Alpine and RHEL bundle files).
    #[arg(
        long,
        env = "FLOWTAP_K8S_BUNDLE_PATH",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub bundle_path: Vec<String>,
    /// JVM settings: auto (containers that look like Java), on, off.
    #[arg(long, env = "FLOWTAP_K8S_JAVA", value_enum, default_value = "auto")]
    pub java: JavaMode,
    /// Write configmap.json and patch.json into DIR instead of printing them.
    #[arg(
        long,
        env = "FLOWTAP_K8S_OUT",
        value_name = "DIR",
        conflicts_with = "apply"
    )]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub kubectl: KubectlArgs,
}

/// on or off.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// The settings of the transparent sidecar (`attach --transparent`, refused without it). Those
/// without a default here take the one of deploy/sidecar/component (its ConfigMap
/// flowtap-sidecar).
#[derive(Args, Debug, Clone)]
pub struct SidecarArgs {
    /// Image of the flowtap sidecar container (deploy/Dockerfile).
    #[arg(
        long,
        env = "FLOWTAP_K8S_IMAGE",
        value_name = "IMAGE",
        default_value = DEFAULT_IMAGE
    )]
    pub image: String,
    /// Image of the flowtap-init container (deploy/sidecar/Dockerfile.init).
    #[arg(
        long,
        env = "FLOWTAP_K8S_INIT_IMAGE",
        value_name = "IMAGE",
        default_value = DEFAULT_INIT_IMAGE
    )]
    pub init_image: String,
    /// Destination ports whose TCP is redirected to the sidecar (repeatable, comma-separated,
    /// at most 15). Default: the component's, 80,443.
    #[arg(
        long,
        env = "FLOWTAP_K8S_REDIRECT_PORTS",
        value_delimiter = ',',
        value_name = "PORTS"
    )]
    pub redirect_ports: Vec<String>,
    /// Destinations never redirected, besides loopback and the API server (repeatable,
    /// comma-separated IPs or CIDRs, IPv4 and IPv6): telemetry backends, or the service CIDR to
    /// see only what leaves the cluster. Default: none.
    #[arg(
        long,
        env = "FLOWTAP_K8S_EXCLUDE_CIDRS",
        value_delimiter = ',',
        value_name = "CIDRS"
    )]
    pub exclude_cidrs: Vec<String>,
    /// IPv6 too: ip6tables rules and a transparent listener on [::1]. Default: the
    /// component's, off.
    #[arg(long, env = "FLOWTAP_K8S_IPV6", value_enum)]
    pub ipv6: Option<OnOff>,
    /// uid the flowtap container runs as: its connections are never redirected, so no other
    /// container of the pod may run as it. Default: the component's, 10001.
    #[arg(long, env = "FLOWTAP_K8S_PROXY_UID", value_name = "UID")]
    pub proxy_uid: Option<String>,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// The workload: deployment/NAME, statefulset/NAME, daemonset/NAME or cronjob/NAME.
    #[arg(value_name = "KIND/NAME")]
    pub workload: String,
    /// Namespace of the workload (default: the manifest's, else kubectl's current one).
    #[arg(short, long, env = "FLOWTAP_K8S_NAMESPACE")]
    pub namespace: Option<String>,
    /// Read the attached workload from this manifest instead of the cluster.
    #[arg(
        short = 'f',
        long = "filename",
        env = "FLOWTAP_K8S_FILENAME",
        value_name = "FILE"
    )]
    pub file: Option<PathBuf>,
    /// Write patch.json into DIR instead of printing it.
    #[arg(
        long,
        env = "FLOWTAP_K8S_OUT",
        value_name = "DIR",
        conflicts_with = "apply"
    )]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub kubectl: KubectlArgs,
}
