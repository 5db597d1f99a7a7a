//! TLS interception: read the ClientHello, open the upstream offering the same ALPN protocols,
//! then finish the client's handshake with a leaf for its SNI and the protocol upstream chose.

pub mod ca;
pub mod leaf;

use crate::config::{ClientCertServers, UpstreamTlsErrors};
use crate::conn::prefixed::Prefixed;
use crate::conn::{serve_http, HttpProtocol};
use crate::connect::{authority_string, began_now, record_tunnel_error};
use crate::http::{PlainUpstream, Route, Scheme, Session, Shared};
use crate::record::{ConnInfo, TlsFacts};
use crate::upstream::{self, Target, ALPN_H1, ALPN_H2};

use bytes::Bytes;
use flowtap_schema::ErrorKind;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

/// Time a client gets to send its ClientHello and to finish the handshake.
const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto every TLS session of the proxy uses: ring, with AES-128-GCM ahead of AES-256-GCM
/// and ChaCha20-Poly1305 on both legs (rustls' own order puts AES-256 first). AES-128-GCM is
/// TLS 1.3's mandatory suite and what Go, BoringSSL and browsers prefer on CPUs with AES
/// instructions; it needs 10 rounds per block instead of 14, and bulk crypto is most of an
/// intercepted body's cost (twice: once per leg). The suites on offer are unchanged.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as cs, default_provider};
    let mut provider = default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        [
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ]
        .iter()
        .position(|p| p.suite() == s.suite())
        .unwrap_or(usize::MAX)
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}

fn version_name(v: Option<rustls::ProtocolVersion>) -> Option<&'static str> {
    match v? {
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => Some("TLS"),
    }
}

/// What an intercepted connection is for.
pub struct Plan {
    /// Where requests go. `tls: false` only for a reverse proxy in front of a plain-HTTP server.
    pub target: Target,
    /// Verify the upstream against the client's SNI (explicit and transparent proxying); a
    /// reverse proxy verifies its configured host instead.
    pub use_client_sni: bool,
    /// Reverse mode: Host rewritten to the upstream's name.
    pub rewrite_host: bool,
    /// Name for the leaf when the client sends no SNI (reverse mode: the address it dialled).
    pub no_sni_name: Option<String>,
    /// How a plain-text `target` is spoken to (reverse mode).
    pub plain: PlainUpstream,
    /// The client's first bytes (its ClientHello), to relay its TLS untouched after all when the
    /// server asks for a client certificate (`--client-cert-servers`) or flowtap's handshake with
    /// it fails (`--upstream-tls-errors`); `None` in reverse mode, whose clients end their TLS at
    /// flowtap.
    pub replay: Option<Bytes>,
}

pub async fn intercept<IO>(shared: Arc<Shared>, conn: Arc<ConnInfo>, io: Prefixed<IO>, plan: Plan)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Plan {
        mut target,
        use_client_sni,
        rewrite_host,
        no_sni_name,
        plain,
        replay,
    } = plan;
    let host = target.host.clone();
    let port = target.port;
    // A session only to write records for failures before there is an HTTP session.
    let early = Session::new(shared.clone(), conn.clone(), None, Route::Forward);
    let began = began_now();
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let msg = format!("not a valid TLS ClientHello: {e}");
            record_tunnel_error(&early, began, &host, port, ErrorKind::Protocol, &msg, None);
            return;
        }
        Err(_) => {
            let msg = "no complete TLS ClientHello within the timeout".to_string();
            record_tunnel_error(&early, began, &host, port, ErrorKind::Limit, &msg, None);
            return;
        }
    };
    let (sni, offered) = {
        let hello = start.client_hello();
        let offered: Vec<Vec<u8>> = hello
            .alpn()
            .map(|it| it.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        (hello.server_name().map(str::to_string), offered)
    };
    // Offer upstream only what flowtap can speak, in the client's order.
    let upstream_offer: Vec<Vec<u8>> = offered
        .iter()
        .filter(|p| p.as_slice() == ALPN_H2 || p.as_slice() == ALPN_H1)
        .cloned()
        .collect();

    if use_client_sni {
        target.sni = sni.clone();
    }
    // A kept upstream connection whose protocol the client offered: answer the client with it
    // and skip the upstream handshake (the request then takes that connection from the pool).
    let kept: Option<Option<Vec<u8>>> = if target.tls {
        shared.pool.alpn(&target, &upstream_offer)
    } else {
        None
    };
    // A plain-HTTP upstream (reverse mode) is connected per request; the client may speak h2.
    let upstream = if target.tls && kept.is_none() {
        Some(
            upstream::connect(
                &shared.upstream_tls,
                &target,
                &upstream_offer,
                shared.config.upstream_timeout,
                shared.config.upstream_proxy.as_ref(),
            )
            .await,
        )
    } else {
        None
    };
    let chosen: Option<Vec<u8>> = match &upstream {
        Some(Ok(c)) => c.alpn.clone(),
        // No upstream: finish the handshake anyway so each request can get a 502 that says why.
        Some(Err(_)) => upstream_offer
            .iter()
            .find(|p| p.as_slice() == ALPN_H1)
            .or(upstream_offer.first())
            .cloned(),
        None => match kept {
            Some(alpn) => alpn,
            None => upstream_offer.first().cloned(),
        },
    };

    // The client's own TLS goes to the server untouched, rather than through flowtap, when the
    // server asks for a client certificate (mutual TLS) and flowtap has none to present
    // (--upstream-client-cert), or when flowtap's own handshake with it failed (a certificate
    // flowtap does not trust, no version or cipher suite in common): the client then decides, as
    // without the proxy. Possible while the ClientHello is all that was read from the client.
    let client_alpn: Vec<String> = offered
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let asked = matches!(&upstream, Some(Ok(c)) if c.client_cert_requested);
    let tls_error = match &upstream {
        Some(Err(e)) if e.kind == ErrorKind::UpstreamTls => Some(e.message.clone()),
        _ => None,
    };
    let relay = (asked
        && !shared.upstream_tls.has_client_cert()
        && shared.config.client_cert_servers == ClientCertServers::Relay)
        || (tls_error.is_some() && shared.config.upstream_tls_errors == UpstreamTlsErrors::Relay);
    if let (true, Some(hello)) = (relay, &replay) {
        if start.io.read_only_prefix() {
            drop(upstream);
            if asked {
                tracing::info!(%host, port, "the server asked for a client certificate: relaying the client's TLS untouched (--client-cert-servers)");
            } else {
                tracing::info!(%host, port, error = tls_error.as_deref().unwrap_or_default(), "relaying the client's TLS untouched (--upstream-tls-errors)");
            }
            let facts = TlsFacts {
                intercepted: false,
                sni,
                client_alpn,
                client_cert_requested: asked,
                upstream_error: tls_error,
                ..Default::default()
            };
            let client = Prefixed::new(hello.clone(), start.io.into_inner());
            crate::tunnel::relay(shared, conn, client, target, Some(Arc::new(facts))).await;
            return;
        }
    }

    let leaf_host = sni.clone().or(no_sni_name).unwrap_or_else(|| host.clone());
    let config = match shared
        .leaves
        .server_config(&leaf_host, chosen.as_deref())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot mint a certificate for {leaf_host:?}: {e}");
            record_tunnel_error(&early, began, &host, port, ErrorKind::Proxy, &msg, None);
            return;
        }
    };
    let mut facts = TlsFacts {
        intercepted: true,
        sni: sni.clone(),
        client_alpn,
        alpn: chosen
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_version: None,
        server_version: upstream
            .as_ref()
            .and_then(|u| u.as_ref().ok())
            .and_then(|c| c.tls_version),
        upstream_verified: target.tls.then_some(shared.upstream_tls.verified),
        client_cert_requested: asked,
        upstream_error: None,
    };
    let stream =
        match tokio::time::timeout(CLIENT_HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
            Ok(Ok(s)) => s,
            failed => {
                let (why, alone) = match failed {
                    Ok(Err(e)) => (
                        e.to_string(),
                        format!(
                        "TLS handshake with the client failed (does it trust the flowtap CA?): {e}"
                    ),
                    ),
                    _ => (
                        "not finished in time".to_string(),
                        "the client did not finish the TLS handshake in time".to_string(),
                    ),
                };
                // The upstream failed first (while the client waited for its handshake, which it
                // may have given up on): that is the cause to show.
                let (kind, msg) = match &upstream {
                    Some(Err(e)) => (
                        e.kind,
                        format!(
                            "{}; the client's TLS handshake then failed: {why}",
                            e.message
                        ),
                    ),
                    _ => (ErrorKind::ClientTls, alone),
                };
                let facts = Some(Arc::new(facts));
                record_tunnel_error(&early, began, &host, port, kind, &msg, facts);
                return;
            }
        };
    facts.client_version = version_name(stream.get_ref().1.protocol_version());
    let h2 = chosen.as_deref() == Some(ALPN_H2);

    let (failed, connection) = match upstream {
        Some(Ok(c)) => (None, Some(c)),
        Some(Err(e)) => (Some(e), None),
        None => (None, None),
    };
    let (scheme, default_port) = if target.tls {
        (Scheme::Https, 443)
    } else {
        (Scheme::Http, 80)
    };
    let route = Route::Fixed {
        target: target.clone(),
        scheme,
        authority: authority_string(&host, port, default_port),
        failed,
        host_from_request: false,
        rewrite_host,
        plain,
    };
    let session = Session::new(shared, conn, Some(Arc::new(facts)), route);
    if let Some(c) = connection {
        session.adopt(target, c);
    }
    let proto = if h2 {
        HttpProtocol::H2
    } else {
        HttpProtocol::H1
    };
    serve_http(session, stream, proto).await;
}
