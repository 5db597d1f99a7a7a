//! The HTTP client of OTLP/HTTP: hyper with rustls (ring), trusting the system roots plus
//! `--otlp-ca`, plain `http://` allowed. The exporter crate's own choices would bring
//! reqwest and aws-lc-rs, which the rest of flowtap does without.

use super::config::OtlpSettings;
use opentelemetry_http::hyper::HyperClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

pub fn client(s: &OtlpSettings) -> Result<HyperClient<Connector>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if s.tls {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if let Some(pem) = &s.ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("--otlp-ca: not a PEM certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("--otlp-ca: unusable certificate: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("OTLP TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(HyperClient::new(connector, s.timeout, None))
}
