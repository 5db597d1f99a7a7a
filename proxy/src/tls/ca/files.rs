//! The CA directory on disk: `ca.pem` (mode 0644) and `ca-key.pem` (mode 0600), created
//! with their modes from the start and never overwritten. Loading refuses a key readable by
//! "others" (following symlinks, as Kubernetes Secret volumes use them), a half-present CA
//! (one file without the other), and a key that does not belong to the certificate, and
//! says how to convert a key in an older PEM format.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{provider, CaError, CA_CERT_FILE, CA_KEY_FILE};

/// The two file paths of a CA directory.
pub(super) struct CaFiles {
    pub(super) dir: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

impl CaFiles {
    pub(super) fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }

    /// Whether (cert, key) exist.
    pub(super) fn presence(&self) -> Result<(bool, bool), CaError> {
        Ok((exists(&self.cert)?, exists(&self.key)?))
    }

    pub(super) fn half_present(&self, cert_present: bool) -> CaError {
        let (present, missing) = if cert_present {
            (&self.cert, &self.key)
        } else {
            (&self.key, &self.cert)
        };
        CaError::HalfPresent {
            present: present.clone(),
            missing: missing.clone(),
        }
    }
}

fn exists(path: &Path) -> Result<bool, CaError> {
    path.try_exists().map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(super) fn read_to_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Says how to convert a key in a PEM format rcgen cannot read (it reads plain PKCS#8).
pub(super) fn key_format_hint(key_pem: &str, path: &Path) -> Option<String> {
    let what = if key_pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        "it is encrypted; decrypt it (openssl asks for the passphrase) with"
    } else if key_pem.contains("-----BEGIN EC PRIVATE KEY-----")
        || key_pem.contains("-----BEGIN RSA PRIVATE KEY-----")
    {
        "it is in the SEC1/PKCS#1 format; convert it to PKCS#8 with"
    } else {
        return None;
    };
    let path = path.display();
    Some(format!(
        "{what} `openssl pkcs8 -topk8 -nocrypt -in {path} -out {path}.new`, \
         then move {path}.new over {path} and `chmod 600` it"
    ))
}

/// The key must not be readable by "others"; the group may read it.
pub(super) fn check_key_mode(path: &Path) -> Result<(), CaError> {
    // metadata() follows symlinks, as Kubernetes Secret volumes use them.
    let meta = fs::metadata(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(CaError::KeyReadableByOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuses a key that is not the one the certificate was issued for.
pub(super) fn check_key_matches(
    files: &CaFiles,
    cert_der: &CertificateDer<'static>,
    key: &KeyPair,
) -> Result<(), CaError> {
    let signer = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| CaError::InvalidKey {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
    match CertifiedKey::new(vec![cert_der.clone()], signer).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CaError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(e) => Err(CaError::InvalidCert {
            path: files.cert.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Creates `path` (which must not exist) with `mode` from the start, and writes `contents`.
pub(super) fn write_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), CaError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                CaError::AlreadyExists {
                    path: path.to_path_buf(),
                }
            } else {
                CaError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(CaError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::tls::ca::CertificateAuthority;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let path = std::env::temp_dir().join(format!(
                "flowtap-ca-test-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed),
            ));
            fs::create_dir(&path).expect("create temp dir");
            Self(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn creates_then_reuses() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("nested").join("ca");
        let ca = CertificateAuthority::load_or_create(&dir).expect("create");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        // 0644 unless the umask takes more away.
        assert_eq!(mode(&dir.join(CA_CERT_FILE)) & !0o644, 0);
        assert_eq!(
            fs::read_to_string(dir.join(CA_CERT_FILE)).expect("read cert"),
            ca.cert_pem()
        );
        let key_pem = fs::read_to_string(dir.join(CA_KEY_FILE)).expect("read key");
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));

        let again = CertificateAuthority::load_or_create(&dir).expect("reload");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.cert_der(), ca.cert_der());
        let loaded = CertificateAuthority::load(&dir).expect("load");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(
            fs::read_to_string(dir.join(CA_KEY_FILE)).expect("read key"),
            key_pem,
            "the key is not rewritten"
        );
    }

    #[test]
    fn world_readable_key_is_refused() {
        let tmp = TempDir::new();
        CertificateAuthority::init(tmp.path()).expect("init");
        let key = tmp.path().join(CA_KEY_FILE);
        chmod(&key, 0o644);
        for result in [
            CertificateAuthority::load_or_create(tmp.path()),
            CertificateAuthority::load(tmp.path()),
        ] {
            let err = result.expect_err("world-readable key must be refused");
            let message = err.to_string();
            assert!(
                message.contains(&format!("chmod 600 {}", key.display())),
                "{message}"
            );
            assert!(matches!(
                err,
                CaError::KeyReadableByOthers { mode: 0o644, .. }
            ));
        }
        chmod(&key, 0o604);
        assert!(CertificateAuthority::load(tmp.path()).is_err());
    }

    #[test]
    fn group_readable_key_is_accepted() {
        let tmp = TempDir::new();
        let ca = CertificateAuthority::init(tmp.path()).expect("init");
        let key = tmp.path().join(CA_KEY_FILE);
        for m in [0o640, 0o440, 0o400] {
            chmod(&key, m);
            let loaded = CertificateAuthority::load_or_create(tmp.path()).expect("load");
            assert_eq!(loaded.cert_pem(), ca.cert_pem());
        }
    }

    #[test]
    fn key_through_a_symlink_is_checked_on_its_target() {
        // Kubernetes Secret volumes: ca-key.pem -> ..data/ca-key.pem
        let tmp = TempDir::new();
        let data = tmp.path().join("data");
        CertificateAuthority::init(&data).expect("init");
        let mounted = tmp.path().join("mounted");
        fs::create_dir(&mounted).expect("mkdir");
        for file in [CA_CERT_FILE, CA_KEY_FILE] {
            std::os::unix::fs::symlink(data.join(file), mounted.join(file)).expect("symlink");
        }
        chmod(&data.join(CA_KEY_FILE), 0o440);
        CertificateAuthority::load(&mounted).expect("group-readable target is fine");
        chmod(&data.join(CA_KEY_FILE), 0o444);
        assert!(matches!(
            CertificateAuthority::load(&mounted),
            Err(CaError::KeyReadableByOthers { .. })
        ));
    }

    #[test]
    fn half_present_ca_is_an_error() {
        let tmp = TempDir::new();
        CertificateAuthority::init(tmp.path()).expect("init");
        let cert = tmp.path().join(CA_CERT_FILE);
        let key = tmp.path().join(CA_KEY_FILE);
        fs::remove_file(&key).expect("rm key");
        for result in [
            CertificateAuthority::load_or_create(tmp.path()),
            CertificateAuthority::load(tmp.path()),
        ] {
            let err = result.expect_err("missing key");
            assert!(
                matches!(&err, CaError::HalfPresent { missing, .. } if *missing == key),
                "{err}"
            );
            assert!(err.to_string().contains(CA_KEY_FILE));
        }
        assert!(!key.exists(), "no key was created next to an existing cert");

        fs::remove_file(&cert).expect("rm cert");
        write_new(&key, 0o600, b"not a key").expect("write key");
        let err = CertificateAuthority::load_or_create(tmp.path()).expect_err("missing cert");
        assert!(
            matches!(&err, CaError::HalfPresent { missing, .. } if *missing == cert),
            "{err}"
        );
        assert!(err.to_string().starts_with(&cert.display().to_string()));
        assert!(!cert.exists());
    }

    #[test]
    fn init_refuses_an_existing_ca() {
        let tmp = TempDir::new();
        let ca = CertificateAuthority::init(tmp.path()).expect("init");
        let err = CertificateAuthority::init(tmp.path()).expect_err("second init");
        assert!(matches!(err, CaError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(tmp.path().join(CA_CERT_FILE)).expect("read"),
            ca.cert_pem(),
            "the existing CA is untouched"
        );

        fs::remove_file(tmp.path().join(CA_CERT_FILE)).expect("rm cert");
        let err = CertificateAuthority::init(tmp.path()).expect_err("key alone");
        assert!(
            matches!(&err, CaError::AlreadyExists { path } if path.ends_with(CA_KEY_FILE)),
            "{err}"
        );
    }

    #[test]
    fn load_requires_a_ca() {
        let tmp = TempDir::new();
        let err = CertificateAuthority::load(tmp.path()).expect_err("empty dir");
        assert!(matches!(err, CaError::NotFound { .. }));
        assert!(err.to_string().contains("flowtap ca init"), "{err}");
        assert!(!tmp.path().join(CA_KEY_FILE).exists());
    }

    #[test]
    fn mismatched_or_broken_files_are_refused() {
        let tmp = TempDir::new();
        CertificateAuthority::init(tmp.path()).expect("init");
        let other = TempDir::new();
        CertificateAuthority::init(other.path()).expect("init other");
        fs::copy(other.path().join(CA_KEY_FILE), tmp.path().join(CA_KEY_FILE)).expect("swap key");
        let err = CertificateAuthority::load(tmp.path()).expect_err("mismatch");
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");

        fs::write(tmp.path().join(CA_CERT_FILE), "garbage").expect("write");
        let err = CertificateAuthority::load(tmp.path()).expect_err("bad cert");
        assert!(matches!(err, CaError::InvalidCert { .. }), "{err}");

        fs::write(tmp.path().join(CA_KEY_FILE), "garbage").expect("write");
        let err = CertificateAuthority::load(tmp.path()).expect_err("bad key");
        assert!(matches!(err, CaError::InvalidKey { .. }), "{err}");
        assert!(!err.to_string().contains("garbage"));
    }

    #[test]
    fn old_key_formats_get_a_conversion_hint() {
        let tmp = TempDir::new();
        CertificateAuthority::init(tmp.path()).expect("init");
        let key = tmp.path().join(CA_KEY_FILE);
        for label in ["EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY"] {
            fs::write(
                &key,
                format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n"),
            )
            .expect("write");
            let err = CertificateAuthority::load(tmp.path()).expect_err(label);
            assert!(matches!(err, CaError::InvalidKey { .. }), "{err}");
            assert!(
                err.to_string().contains("openssl pkcs8 -topk8 -nocrypt"),
                "{err}"
            );
        }
    }
}
