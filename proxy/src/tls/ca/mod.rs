//! The proxy's certificate authority: the CA certificate and key on disk, and the leaf
//! certificates minted from them for intercepted hosts.
//!
//! Files in the CA directory:
//! - `ca.pem`: the CA certificate (mode 0644), the file clients are told to trust;
//! - `ca-key.pem`: its PKCS#8 private key (mode 0600, never readable by "others").
//!
//! Leaves share one ECDSA P-256 key generated when the CA is loaded, so a new host
//! costs one signature. The key never leaves the process and is never logged.
//!
//! Where things are: this file holds the CA itself (creating, loading, minting leaves);
//! `files.rs` the CA directory on disk (modes, checks, writing new files), `host.rs` the
//! host names leaves are minted for, and `bundle.rs` the system CA bundle.

mod bundle;
mod files;
mod host;

use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::crypto::{CryptoProvider, SecureRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use time::{Duration, OffsetDateTime};

pub use bundle::system_bundle_path;
pub(crate) use host::{parse_host, HostName};

use files::{
    check_key_matches, check_key_mode, key_format_hint, read_to_string, write_new, CaFiles,
};

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Validity of a new CA certificate (about ten years).
const CA_VALIDITY: Duration = Duration::days(3650);
/// How far back a certificate's notBefore is set, to tolerate clients with slow clocks.
const BACKDATE: Duration = Duration::days(2);
/// Leaves end this long after minting; with the backdating the whole span stays under
/// 200 days (Apple and browsers refuse longer-lived server certificates).
const LEAF_LIFETIME: Duration = Duration::days(180);
/// The longest value a CN may hold (RFC 5280 ub-common-name).
const MAX_CN_LEN: usize = 64;

/// Why the CA could not be loaded or created, or a leaf could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create the CA directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },

    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },

    #[error(
        "the CA key {path} is readable by every user on this machine (mode {mode:04o}); \
         run `chmod 600 {path}` and start again (for a Kubernetes Secret volume, \
         set defaultMode to 0400, or 0440 with an fsGroup)"
    )]
    KeyReadableByOthers { path: PathBuf, mode: u32 },

    #[error(
        "{missing} is missing but {present} exists; restore {missing}, \
         or remove {present} to have a new CA created (clients must then trust the new one)"
    )]
    HalfPresent { present: PathBuf, missing: PathBuf },

    #[error("no CA in {dir} (neither ca.pem nor ca-key.pem); create one with `flowtap ca init`")]
    NotFound { dir: PathBuf },

    #[error(
        "{path} already exists; refusing to overwrite a CA that clients may trust \
         (remove it first if you really want a new CA)"
    )]
    AlreadyExists { path: PathBuf },

    #[error("{path} does not hold a usable PEM CA certificate: {reason}")]
    InvalidCert { path: PathBuf, reason: String },

    #[error("{path} does not hold a usable PEM private key (PKCS#8 expected): {reason}")]
    InvalidKey { path: PathBuf, reason: String },

    #[error(
        "the CA key {key} does not belong to the CA certificate {cert}; put the matching pair back"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("cannot generate {what}: {reason}")]
    Generate { what: &'static str, reason: String },

    #[error("cannot mint a certificate for host {host:?}: {reason}")]
    InvalidHost { host: String, reason: &'static str },

    #[error("cannot mint a certificate for host {host:?}: {source}")]
    Mint { host: String, source: rcgen::Error },

    #[error("cannot build the TLS server configuration for host {host:?}: {source}")]
    Tls { host: String, source: rustls::Error },
}

/// The proxy's CA: signs one leaf certificate per intercepted host.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The CA's name, key identifier and signing key.
    issuer: Issuer<'static, KeyPair>,
    /// The one key pair shared by every leaf; its public half goes into the leaves.
    leaf_key: KeyPair,
    /// The same key, as rustls signs handshakes with it.
    leaf_signer: Arc<dyn SigningKey>,
    random: &'static dyn SecureRandom,
}

impl fmt::Debug for CertificateAuthority {
    // Keys are left out on purpose.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads DIR/ca.pem + DIR/ca-key.pem, or creates them when both are absent
    /// (DIR created with mode 0700, key file 0600, cert 0644).
    ///
    /// Refuses a key file readable by "others"; group-readable is allowed (a Kubernetes
    /// Secret mounted with `defaultMode: 0440` and an `fsGroup` must work).
    /// One of the two files present but not the other is an error naming the missing one.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let files = CaFiles::new(dir);
        match files.presence()? {
            (true, true) => Self::load_files(&files),
            (false, false) => match Self::create_files(&files) {
                // Another process created it between our check and our create: use theirs.
                Err(CaError::AlreadyExists { .. }) => Self::load_files(&files),
                other => other,
            },
            (cert, _) => Err(files.half_present(cert)),
        }
    }

    /// `flowtap ca init`: creates a new CA in DIR; an error if DIR already holds
    /// `ca.pem` or `ca-key.pem`.
    pub fn init(dir: &Path) -> Result<Self, CaError> {
        let files = CaFiles::new(dir);
        match files.presence()? {
            (false, false) => Self::create_files(&files),
            (true, _) => Err(CaError::AlreadyExists { path: files.cert }),
            (false, true) => Err(CaError::AlreadyExists { path: files.key }),
        }
    }

    /// Loads the CA in DIR, which must exist.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let files = CaFiles::new(dir);
        match files.presence()? {
            (true, true) => Self::load_files(&files),
            (false, false) => Err(CaError::NotFound {
                dir: dir.to_path_buf(),
            }),
            (cert, _) => Err(files.half_present(cert)),
        }
    }

    /// A new CA that lives only in memory: for tests and throwaway runs.
    pub fn ephemeral() -> Result<Self, CaError> {
        let (cert_pem, _key_pem, issuer) = generate_ca(random())?;
        Self::from_parts(cert_pem, issuer)
    }

    /// The CA certificate in PEM, as written to `ca.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Mints a leaf for `host`: a DNS name, or an IPv4/IPv6 literal (with or without
    /// `[brackets]`), which gets an IP SAN. The chain is `[leaf, ca]`.
    pub fn mint_leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.mint(&parse_host(host)?)
    }

    /// Mints a leaf for an already parsed host (see [`parse_host`]).
    pub(crate) fn mint(&self, host: &HostName<'_>) -> Result<Arc<CertifiedKey>, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        params.serial_number = Some(self.serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;

        let mut dn = DistinguishedName::new();
        let (san, cn) = match host {
            HostName::Ip(ip) => (SanType::IpAddress(*ip), ip.to_string()),
            HostName::Dns(name) => {
                let ia5 = Ia5String::try_from(name.as_ref()).map_err(|_| CaError::InvalidHost {
                    host: name.to_string(),
                    reason: "not an ASCII host name",
                })?;
                (SanType::DnsName(ia5), name.to_string())
            }
        };
        // The SAN is what clients check; the CN is a courtesy and has a length limit.
        if cn.len() <= MAX_CN_LEN {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];

        let leaf = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|source| CaError::Mint {
                host: host.to_string(),
                source,
            })?;
        tracing::info!(host = %host, "minted leaf certificate");
        Ok(Arc::new(CertifiedKey::new(
            vec![leaf.der().clone(), self.cert_der.clone()],
            Arc::clone(&self.leaf_signer),
        )))
    }

    /// A random, positive, 16-byte serial number.
    fn serial(&self) -> Result<SerialNumber, CaError> {
        let mut bytes = [0u8; 16];
        fill_random(self.random, &mut bytes, "a certificate serial number")?;
        bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and never shorter than 16 bytes
        Ok(SerialNumber::from_slice(&bytes))
    }

    fn load_files(files: &CaFiles) -> Result<Self, CaError> {
        check_key_mode(&files.key)?;
        let key_pem = read_to_string(&files.key)?;
        let cert_pem = read_to_string(&files.cert)?;

        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::InvalidKey {
            path: files.key.clone(),
            reason: key_format_hint(&key_pem, &files.key).unwrap_or_else(|| e.to_string()),
        })?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            CaError::InvalidCert {
                path: files.cert.clone(),
                reason: e.to_string(),
            }
        })?;
        check_key_matches(files, &cert_der, &key)?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::InvalidCert {
                path: files.cert.clone(),
                reason: e.to_string(),
            })?;
        // A certificate without the key usage extension may sign; one with it must say so.
        let usages = issuer.key_usages();
        if !usages.is_empty() && !usages.contains(&KeyUsagePurpose::KeyCertSign) {
            return Err(CaError::InvalidCert {
                path: files.cert.clone(),
                reason: "it is not a CA certificate (its key usage lacks keyCertSign)".to_string(),
            });
        }
        Self::from_parts(cert_pem, issuer)
    }

    fn create_files(files: &CaFiles) -> Result<Self, CaError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&files.dir)
            .map_err(|source| CaError::CreateDir {
                path: files.dir.clone(),
                source,
            })?;
        let (cert_pem, key_pem, issuer) = generate_ca(random())?;

        // The key first: a crash in between leaves the key without a certificate, which
        // load_or_create reports, rather than a certificate nobody can sign with.
        write_new(&files.key, 0o600, key_pem.as_bytes())?;
        if let Err(e) = write_new(&files.cert, 0o644, cert_pem.as_bytes()) {
            // Best effort: do not leave half a CA behind.
            let _ = fs::remove_file(&files.key);
            return Err(e);
        }
        tracing::info!(dir = %files.dir.display(), "created a new CA");
        Self::from_parts(cert_pem, issuer)
    }

    fn from_parts(cert_pem: String, issuer: Issuer<'static, KeyPair>) -> Result<Self, CaError> {
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| CaError::Generate {
                what: "the CA certificate",
                reason: e.to_string(),
            })?;
        let leaf_key = KeyPair::generate().map_err(|e| CaError::Generate {
            what: "the leaf key",
            reason: e.to_string(),
        })?;
        let leaf_signer = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                leaf_key.serialize_der(),
            )))
            .map_err(|e| CaError::Generate {
                what: "the leaf key",
                reason: e.to_string(),
            })?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
            leaf_key,
            leaf_signer,
            random: random(),
        })
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn random() -> &'static dyn SecureRandom {
    provider().secure_random
}

fn fill_random(
    random: &dyn SecureRandom,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), CaError> {
    random.fill(buf).map_err(|_| CaError::Generate {
        what,
        reason: "the system random number generator failed".to_string(),
    })
}

/// A new self-signed CA: (cert PEM, key PEM, issuer).
fn generate_ca(
    random: &dyn SecureRandom,
) -> Result<(String, String, Issuer<'static, KeyPair>), CaError> {
    let generate = |e: rcgen::Error| CaError::Generate {
        what: "the CA",
        reason: e.to_string(),
    };
    let mut suffix = [0u8; 4];
    fill_random(random, &mut suffix, "the CA name")?;
    let mut serial = [0u8; 16];
    fill_random(random, &mut serial, "the CA serial number")?;
    serial[0] = (serial[0] & 0x7f) | 0x40;

    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("flowtap CA {}", hex(&suffix)));
    dn.push(DnType::OrganizationName, "flowtap");
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(SerialNumber::from_slice(&serial));

    let key = KeyPair::generate().map_err(generate)?; // ECDSA P-256
    let cert = params.self_signed(&key).map_err(generate)?;
    let key_pem = key.serialize_pem();
    let issuer = Issuer::new(params, key);
    Ok((cert.pem(), key_pem, issuer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use files::tests::TempDir;
    use std::net::IpAddr;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        X509Certificate::from_der(der).expect("parse certificate").1
    }

    fn subject_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .expect("subject key identifier")
    }

    fn authority_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .expect("authority key identifier")
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let san = cert
            .subject_alternative_name()
            .expect("valid SAN")
            .expect("SAN present");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => format!(
                        "IP:{}",
                        IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("v4"))
                    ),
                    16 => format!(
                        "IP:{}",
                        IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("v6"))
                    ),
                    _ => panic!("bad IP SAN length"),
                },
                other => format!("other:{other:?}"),
            })
            .collect()
    }

    /// Checks everything the issue asks of a leaf, and returns its SANs.
    fn check_leaf(ca: &CertificateAuthority, leaf: &CertifiedKey, cn: &str) -> Vec<String> {
        assert_eq!(leaf.cert.len(), 2, "chain is [leaf, ca]");
        assert_eq!(&leaf.cert[1], ca.cert_der());
        let ca_cert = parse(ca.cert_der());
        let cert = parse(&leaf.cert[0]);

        let now = OffsetDateTime::now_utc();
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        assert!(
            not_after - not_before < Duration::days(200),
            "span under 200 days"
        );
        assert!(
            not_before <= now - Duration::days(1),
            "backdated at least a day"
        );
        assert!(not_after > now + Duration::days(90), "valid for a while");

        assert_eq!(authority_key_id(&cert), subject_key_id(&ca_cert));
        assert_eq!(cert.issuer(), ca_cert.subject());
        let eku = cert.extended_key_usage().expect("valid EKU").expect("EKU");
        assert!(eku.value.server_auth);
        let is_ca = cert
            .basic_constraints()
            .expect("valid basic constraints")
            .is_some_and(|bc| bc.value.ca);
        assert!(!is_ca, "a leaf is not a CA");
        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok().map(str::to_string));
        assert_eq!(subject_cn.as_deref(), Some(cn));
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        sans(&cert)
    }

    #[test]
    fn ca_certificate_is_a_ca() {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        let cert = parse(ca.cert_der());
        let bc = cert
            .basic_constraints()
            .expect("valid basic constraints")
            .expect("basic constraints");
        assert!(bc.critical);
        assert!(bc.value.ca);
        let ku = cert
            .key_usage()
            .expect("valid key usage")
            .expect("key usage");
        assert!(ku.value.key_cert_sign());
        assert!(ku.value.crl_sign());
        assert!(ku.value.digital_signature());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .expect("CN");
        assert!(cn.starts_with("flowtap CA "), "{cn}");
        let o = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .expect("O");
        assert_eq!(o, "flowtap");
        let validity = cert.validity();
        let span = validity.not_after.to_datetime() - validity.not_before.to_datetime();
        assert!(span >= Duration::days(3650), "{span}");
        let spki = cert.public_key();
        assert_eq!(
            spki.algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .expect("curve");
        assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
        assert_eq!(subject_key_id(&cert).len(), 20);
    }

    #[test]
    fn a_certificate_that_cannot_sign_is_refused() {
        let tmp = TempDir::new();
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["leaf.example".to_string()]).expect("params");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("cert");
        write_new(&tmp.path().join(CA_CERT_FILE), 0o644, cert.pem().as_bytes()).expect("cert");
        write_new(
            &tmp.path().join(CA_KEY_FILE),
            0o600,
            key.serialize_pem().as_bytes(),
        )
        .expect("key");
        let err = CertificateAuthority::load(tmp.path()).expect_err("not a CA");
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn leaf_for_a_dns_name() {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        let leaf = ca.mint_leaf("Example.COM.").expect("leaf");
        assert_eq!(check_leaf(&ca, &leaf, "example.com"), ["DNS:example.com"]);
    }

    #[test]
    fn leaf_for_ip_literals() {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        for (host, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("[0:0::0001]", "::1"),
        ] {
            let leaf = ca.mint_leaf(host).expect("leaf");
            assert_eq!(
                check_leaf(&ca, &leaf, want),
                [format!("IP:{want}")],
                "{host}"
            );
        }
    }

    #[test]
    fn leaves_from_a_reloaded_ca_chain_to_it() {
        let tmp = TempDir::new();
        let created = CertificateAuthority::init(tmp.path()).expect("init");
        let loaded = CertificateAuthority::load(tmp.path()).expect("load");
        let leaf = loaded.mint_leaf("reloaded.example").expect("leaf");
        check_leaf(&loaded, &leaf, "reloaded.example");
        assert_eq!(
            authority_key_id(&parse(&leaf.cert[0])),
            subject_key_id(&parse(created.cert_der()))
        );
    }

    #[test]
    fn leaves_share_one_key_but_not_serials() {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        let a = ca.mint_leaf("a.example").expect("a");
        let b = ca.mint_leaf("a.example").expect("b");
        assert!(Arc::ptr_eq(&a.key, &b.key));
        let (a, b) = (parse(&a.cert[0]), parse(&b.cert[0]));
        assert_eq!(a.public_key().raw, b.public_key().raw);
        assert_ne!(a.raw_serial(), b.raw_serial());
        assert_eq!(a.raw_serial().len(), 16);
    }

    #[test]
    fn long_names_get_no_common_name() {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        let host = format!("{}.{}.example", "a".repeat(40), "b".repeat(40));
        let leaf = ca.mint_leaf(&host).expect("leaf");
        let cert = parse(&leaf.cert[0]);
        assert!(cert.subject().iter_common_name().next().is_none());
        assert_eq!(sans(&cert), [format!("DNS:{host}")]);
    }
}
