//! `--upstream-client-cert` / `--upstream-client-key`: a certificate flowtap presents to servers
//! that ask for one during TLS (mutual TLS), so their exchanges can be intercepted and recorded
//! rather than relayed opaquely. Loaded and checked once, before anything is bound.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// Which flag a loading error is about.
#[derive(Debug, PartialEq, Eq)]
pub enum Flag {
    Cert,
    Key,
}

impl Flag {
    /// The command-line flag, as error messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            Flag::Cert => "--upstream-client-cert",
            Flag::Key => "--upstream-client-key",
        }
    }
}

/// The certificate chain in `cert` and the private key in `key` (or, without `key`, the key in
/// the same file as the certificates), checked to belong together.
pub fn load(cert: &Path, key: Option<&Path>) -> Result<Arc<CertifiedKey>, (Flag, String)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| (Flag::Cert, format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err((
            Flag::Cert,
            format!("{}: no PEM certificate in the file", cert.display()),
        ));
    }
    let (key_flag, key_path) = match key {
        Some(k) => (Flag::Key, k),
        None => (Flag::Cert, cert),
    };
    let der = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        let hint = if key.is_none() {
            " (give the key's file with --upstream-client-key)"
        } else {
            ""
        };
        (
            key_flag,
            format!("{}: no usable private key: {e}{hint}", key_path.display()),
        )
    })?;
    let provider = crate::tls::crypto_provider();
    let signer = provider.key_provider.load_private_key(der).map_err(|e| {
        (
            Flag::Key,
            format!("{}: unsupported private key: {e}", key_path.display()),
        )
    })?;
    let certified = CertifiedKey::new(certs, signer);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err((
            Flag::Key,
            format!(
                "{}: the private key does not belong to the certificate in {}",
                key_path.display(),
                cert.display()
            ),
        )),
        // Unknown: this key type cannot tell its public key; the server will judge.
        _ => Ok(Arc::new(certified)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test (removed again by the test).
    fn scratch(test: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("flowtap-cc-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_a_pair_from_two_files_or_one() {
        let dir = scratch("load");
        let (c, k) = pair(&dir, "a");
        let loaded = load(&c, Some(&k)).unwrap();
        assert_eq!(loaded.cert.len(), 1);
        let both = dir.join("both.pem");
        let text = std::fs::read_to_string(&c).unwrap() + &std::fs::read_to_string(&k).unwrap();
        std::fs::write(&both, text).unwrap();
        assert!(load(&both, None).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_what_cannot_work() {
        let dir = scratch("refuse");
        let (c, k) = pair(&dir, "a");
        let (_, other) = pair(&dir, "b");
        let (flag, msg) = load(&c, Some(&other)).unwrap_err();
        assert_eq!(flag, Flag::Key);
        assert!(msg.contains("does not belong"), "{msg}");
        let (flag, msg) = load(&c, None).unwrap_err();
        assert_eq!(flag, Flag::Cert);
        assert!(msg.contains("--upstream-client-key"), "{msg}");
        let (flag, msg) = load(&k, Some(&k)).unwrap_err();
        assert_eq!(flag, Flag::Cert);
        assert!(msg.contains("no PEM certificate"), "{msg}");
        let (flag, _) = load(&dir.join("missing.pem"), Some(&k)).unwrap_err();
        assert_eq!(flag, Flag::Cert);
        let (flag, _) = load(&c, Some(&c)).unwrap_err();
        assert_eq!(flag, Flag::Key);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
