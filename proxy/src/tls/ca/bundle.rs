//! Where this machine's system CA bundle is, when no `--system-bundle` names one: `flowtap ca
//! export --bundle` and the Kubernetes trust setup join it with the proxy's CA into one file,
//! for clients that read a single bundle.

use std::path::{Path, PathBuf};

/// Usual locations of the system CA bundle, most common first.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt", // Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",   // RHEL, Fedora, CentOS
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // RHEL 7+
    "/etc/ssl/cert.pem",                  // Alpine, macOS
    "/etc/ssl/ca-bundle.pem",             // openSUSE
];

/// First existing of the usual system CA bundle paths.
pub fn system_bundle_path() -> Option<PathBuf> {
    SYSTEM_BUNDLES
        .iter()
        .map(Path::new)
        .find(|path| path.is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_bundle_is_a_file_when_found() {
        if let Some(path) = system_bundle_path() {
            assert!(path.is_file());
            assert!(SYSTEM_BUNDLES.iter().any(|p| Path::new(p) == path));
        }
    }
}
