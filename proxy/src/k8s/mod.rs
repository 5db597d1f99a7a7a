//! `flowtap k8s ...`: attach a Kubernetes workload to the proxy, detach it, print the CA Secret.
//! (Being built for the Kubernetes issue.)

#[derive(clap::Subcommand, Debug)]
pub enum K8sCommand {}

pub fn run(cmd: K8sCommand) -> anyhow::Result<()> {
    match cmd {}
}
