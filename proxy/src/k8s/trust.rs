//! What an attached workload trusts: the public roots followed by the flowtap CA as one PEM
//! bundle (for the runtimes whose variable *replaces* the default roots), the CA alone (for
//! Node's NODE_EXTRA_CA_CERTS, which *adds*), and the same roots as a Java truststore.

use super::{pkcs12, K8sError};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The ConfigMap's keys, which are also the file names under the mount directory.
pub const BUNDLE_KEY: &str = "ca-certificates.crt";
pub const CA_KEY: &str = "flowtap-ca.pem";
pub const TRUSTSTORE_KEY: &str = "truststore.p12";
/// The truststore's password: the JDK's well-known default, since the store holds only
/// public certificates and carries no MAC (see `pkcs12`).
pub const TRUSTSTORE_PASSWORD: &str = "changeit";
/// A ConfigMap holds at most 1 MiB; keep room for its metadata.
const CONFIGMAP_DATA_LIMIT: usize = 1_000_000;
/// PEM lines are 64 base64 characters (RFC 7468).
const PEM_LINE: usize = 64;

/// The three files, and a digest of them that changes whenever any of them does.
#[derive(Debug)]
pub struct TrustFiles {
    pub bundle_pem: String,
    pub ca_pem: String,
    pub truststore: Vec<u8>,
    pub sha256: String,
    /// Certificates taken from the system bundle.
    pub system_certs: usize,
}

/// Builds the files from the CA (PEM, one or more certificates) and the system bundle (PEM).
/// Certificates are re-encoded as plain PEM, without the comments some bundles carry, and
/// the CA is not repeated when the system bundle already holds it.
pub fn build(
    ca_pem: &str,
    ca_source: &str,
    system: &[u8],
    system_source: &Path,
) -> Result<TrustFiles, K8sError> {
    let ca = certificates(ca_pem.as_bytes()).map_err(|message| K8sError::Manifest {
        what: ca_source.to_string(),
        message,
    })?;
    if ca.is_empty() {
        return Err(K8sError::Manifest {
            what: ca_source.to_string(),
            message: "holds no PEM certificate".to_string(),
        });
    }
    let roots = certificates(system).map_err(|message| K8sError::Manifest {
        what: system_source.display().to_string(),
        message,
    })?;
    if roots.is_empty() {
        return Err(K8sError::Manifest {
            what: system_source.display().to_string(),
            message: "holds no PEM certificate; name a system bundle with --system-bundle"
                .to_string(),
        });
    }
    let mut all: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, der) in roots.iter().enumerate() {
        if !all.iter().any(|(_, d)| d == der) && !ca.contains(der) {
            all.push((format!("system-{:03}", i + 1), der.clone()));
        }
    }
    let system_certs = all.len();
    for (i, der) in ca.iter().enumerate() {
        let alias = if i == 0 {
            "flowtap-ca".to_string()
        } else {
            format!("flowtap-ca-{}", i + 1)
        };
        all.push((alias, der.clone()));
    }
    let bundle_pem: String = all.iter().map(|(_, der)| pem(der)).collect();
    let ca_pem: String = ca.iter().map(|der| pem(der)).collect();
    let truststore = pkcs12::truststore(&all);

    let stored = bundle_pem.len() + ca_pem.len() + truststore.len().div_ceil(3) * 4;
    if stored > CONFIGMAP_DATA_LIMIT {
        return Err(K8sError::Manifest {
            what: system_source.display().to_string(),
            message: format!(
                "the bundle built from it needs {stored} bytes in a ConfigMap, more than \
                 the {CONFIGMAP_DATA_LIMIT} a ConfigMap can hold; pass a smaller --system-bundle"
            ),
        });
    }
    let mut digest = Sha256::new();
    for part in [bundle_pem.as_bytes(), ca_pem.as_bytes(), &truststore] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    let sha256 = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(TrustFiles {
        bundle_pem,
        ca_pem,
        truststore,
        sha256,
        system_certs,
    })
}

/// Whether two PEM texts hold the same certificates (whatever their line breaks and comments).
pub fn same_certificates(a: &str, b: &str) -> bool {
    match (certificates(a.as_bytes()), certificates(b.as_bytes())) {
        (Ok(a), Ok(b)) => !a.is_empty() && a == b,
        _ => false,
    }
}

/// The DER certificates in a PEM text; other PEM sections (keys, CRLs) are skipped.
fn certificates(pem_text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    CertificateDer::pem_slice_iter(pem_text)
        .map(|c| c.map(|c| c.to_vec()).map_err(|e| format!("bad PEM: {e}")))
        .collect()
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(PEM_LINE) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::CertificateAuthority;

    #[test]
    fn bundle_is_roots_then_ca_without_repeats() {
        let root = CertificateAuthority::ephemeral().expect("root");
        let ours = CertificateAuthority::ephemeral().expect("ours");
        let system = format!(
            "# a comment some bundles carry\n{}{}\n{}",
            root.cert_pem(),
            root.cert_pem(),
            ours.cert_pem()
        );
        let files =
            build(ours.cert_pem(), "ca", system.as_bytes(), Path::new("sys")).expect("build");
        assert_eq!(files.system_certs, 1);
        assert!(files
            .bundle_pem
            .starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(!files.bundle_pem.contains('#'));
        let certs = certificates(files.bundle_pem.as_bytes()).expect("pem");
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], root.cert_der().to_vec());
        assert_eq!(certs[1], ours.cert_der().to_vec());
        assert_eq!(
            certificates(files.ca_pem.as_bytes()).expect("pem"),
            [ours.cert_der().to_vec()]
        );
        assert_eq!(files.sha256.len(), 64);
    }

    #[test]
    fn empty_inputs_are_refused() {
        let ours = CertificateAuthority::ephemeral().expect("ours");
        assert!(build("", "ca", ours.cert_pem().as_bytes(), Path::new("s")).is_err());
        assert!(build(ours.cert_pem(), "ca", b"nothing", Path::new("s")).is_err());
    }
}
