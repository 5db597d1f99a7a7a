//! Leaf certificates per intercepted host, minted once and kept in a bounded cache
//! together with the rustls server configurations that present them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use tokio::sync::OnceCell;

use super::ca::{parse_host, CaError, CertificateAuthority, HostName};

/// TLS sessions remembered per host for resumption, shared by the host's configurations.
const SESSIONS_PER_HOST: usize = 64;

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Leaf certificates and their `ServerConfig`s, minted once per host.
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    provider: Arc<CryptoProvider>,
    capacity: usize,
    slots: Mutex<Slots>,
    minted: AtomicU64,
}

/// One host's leaf, with a server configuration for each common ALPN choice.
struct Leaf {
    certified: Arc<CertifiedKey>,
    sessions: Arc<dyn StoresServerSessions>,
    h2: Arc<ServerConfig>,
    http11: Arc<ServerConfig>,
    no_alpn: Arc<ServerConfig>,
}

/// A cell every caller for a host waits on, so the first one mints and the others share.
type Slot = Arc<OnceCell<Arc<Leaf>>>;

/// The cache proper. Names are keyed by `Arc<str>` so a lookup with a `&str` allocates
/// nothing, and the insertion order can share the key.
#[derive(Default)]
struct Slots {
    names: HashMap<Arc<str>, Slot>,
    ips: HashMap<IpAddr, Slot>,
    order: VecDeque<Key>,
}

enum Key {
    Name(Arc<str>),
    Ip(IpAddr),
}

impl Slots {
    fn len(&self) -> usize {
        self.names.len() + self.ips.len()
    }

    fn get(&self, host: &HostName<'_>) -> Option<&Slot> {
        match host {
            HostName::Ip(ip) => self.ips.get(ip),
            HostName::Dns(name) => self.names.get(name.as_ref()),
        }
    }

    /// Inserts an empty slot for `host`, evicting the oldest entries beyond `capacity`.
    fn insert(&mut self, host: &HostName<'_>, capacity: usize) -> Slot {
        while self.len() >= capacity {
            match self.order.pop_front() {
                Some(Key::Name(name)) => {
                    self.names.remove(&name);
                }
                Some(Key::Ip(ip)) => {
                    self.ips.remove(&ip);
                }
                None => break,
            }
        }
        let slot = Slot::default();
        match host {
            HostName::Ip(ip) => {
                self.ips.insert(*ip, Arc::clone(&slot));
                self.order.push_back(Key::Ip(*ip));
            }
            HostName::Dns(name) => {
                let name: Arc<str> = Arc::from(name.as_ref());
                self.names.insert(Arc::clone(&name), Arc::clone(&slot));
                self.order.push_back(Key::Name(name));
            }
        }
        slot
    }
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache")
            .field("capacity", &self.capacity)
            .field("minted", &self.minted())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// A cache of at most `capacity` hosts (at least one); the oldest-inserted host is
    /// evicted first.
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize) -> Self {
        Self {
            ca,
            provider: Arc::new(crate::tls::crypto_provider()),
            capacity: capacity.max(1),
            slots: Mutex::new(Slots::default()),
            minted: AtomicU64::new(0),
        }
    }

    /// A `ServerConfig` presenting the leaf for `host`, with ALPN set to exactly `alpn`
    /// (`None`: no ALPN). The leaf is minted on the first call for a host; concurrent
    /// first calls mint once. For `h2`, `http/1.1` and no ALPN, a cache hit costs an
    /// `Arc` clone; other protocols get a configuration built for the call.
    pub async fn server_config(
        &self,
        host: &str,
        alpn: Option<&[u8]>,
    ) -> Result<Arc<ServerConfig>, CaError> {
        let host = parse_host(host)?;
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match slots.get(&host) {
                Some(slot) => Arc::clone(slot),
                None => slots.insert(&host, self.capacity),
            }
        };
        let leaf = slot.get_or_try_init(|| async { self.mint(&host) }).await?;
        Ok(match alpn {
            None => Arc::clone(&leaf.no_alpn),
            Some(ALPN_H2) => Arc::clone(&leaf.h2),
            Some(ALPN_HTTP11) => Arc::clone(&leaf.http11),
            Some(other) => self.config(&host, &leaf.certified, &leaf.sessions, Some(other))?,
        })
    }

    /// How many leaves were minted so far.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    fn mint(&self, host: &HostName<'_>) -> Result<Arc<Leaf>, CaError> {
        let certified = self.ca.mint(host)?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSIONS_PER_HOST);
        Ok(Arc::new(Leaf {
            h2: self.config(host, &certified, &sessions, Some(ALPN_H2))?,
            http11: self.config(host, &certified, &sessions, Some(ALPN_HTTP11))?,
            no_alpn: self.config(host, &certified, &sessions, None)?,
            certified,
            sessions,
        }))
    }

    fn config(
        &self,
        host: &HostName<'_>,
        certified: &Arc<CertifiedKey>,
        sessions: &Arc<dyn StoresServerSessions>,
        alpn: Option<&[u8]>,
    ) -> Result<Arc<ServerConfig>, CaError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| CaError::Tls {
                host: host.to_string(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(certified))));
        config.alpn_protocols = alpn.map(|p| vec![p.to_vec()]).unwrap_or_default();
        config.session_storage = Arc::clone(sessions);
        // Our suite order (see `crypto_provider`), not the client's, picks the cipher.
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn cache(capacity: usize) -> LeafCache {
        let ca = CertificateAuthority::ephemeral().expect("ca");
        LeafCache::new(Arc::new(ca), capacity)
    }

    fn client_trusting(ca: &CertificateAuthority, alpn: &[&[u8]]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("add CA root");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// Handshakes over an in-memory pipe, exchanges a few bytes, and returns the ALPN
    /// the client saw.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
        name: ServerName<'static>,
    ) -> Option<Vec<u8>> {
        handshake_facts(server, client, name).await.0
    }

    /// As `handshake`, also returning the cipher suite.
    async fn handshake_facts(
        server: Arc<ServerConfig>,
        client: ClientConfig,
        name: ServerName<'static>,
    ) -> (Option<Vec<u8>>, Option<rustls::CipherSuite>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = async move {
            let mut tls = TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .expect("server handshake");
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.expect("server read");
            tls.write_all(&buf).await.expect("server write");
            tls.shutdown().await.expect("server shutdown");
        };
        let client = async move {
            let mut tls = TlsConnector::from(Arc::new(client))
                .connect(name, client_io)
                .await
                .expect("client handshake");
            tls.write_all(b"ping").await.expect("client write");
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.expect("client read");
            assert_eq!(&buf, b"ping");
            let session = tls.get_ref().1;
            (
                session.alpn_protocol().map(<[u8]>::to_vec),
                session.negotiated_cipher_suite().map(|s| s.suite()),
            )
        };
        let ((), alpn) = tokio::join!(server, client);
        alpn
    }

    #[tokio::test]
    async fn client_trusting_only_the_ca_negotiates_h2() {
        let cache = cache(16);
        let server = cache
            .server_config("localhost", Some(b"h2"))
            .await
            .expect("config");
        assert_eq!(server.alpn_protocols, [b"h2".to_vec()]);
        let client = client_trusting(&cache.ca, &[b"h2", b"http/1.1"]);
        let name = ServerName::try_from("localhost").expect("name");
        let alpn = handshake(server, client, name).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    }

    /// A client listing AES-256-GCM first (rustls' default order) still gets AES-128-GCM:
    /// the proxy's order decides, and it is the cheaper suite on both legs.
    #[tokio::test]
    async fn the_proxy_picks_aes_128_gcm() {
        let cache = cache(16);
        let server = cache
            .server_config("localhost", None)
            .await
            .expect("config");
        let client = client_trusting(&cache.ca, &[]);
        assert_eq!(
            client.crypto_provider().cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        let name = ServerName::try_from("localhost").expect("name");
        let (_, suite) = handshake_facts(server, client, name).await;
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));

        // Same suites on offer as rustls' defaults, only the order differs.
        let sorted = |p: rustls::crypto::CryptoProvider| {
            let mut ids: Vec<u16> = p.cipher_suites.iter().map(|s| s.suite().into()).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(
            sorted(crate::tls::crypto_provider()),
            sorted(rustls::crypto::ring::default_provider())
        );
    }

    #[tokio::test]
    async fn handshake_for_an_ip_literal() {
        let cache = cache(16);
        let server = cache
            .server_config("127.0.0.1", Some(b"http/1.1"))
            .await
            .expect("config");
        let client = client_trusting(&cache.ca, &[b"h2", b"http/1.1"]);
        let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
        let alpn = handshake(server, client, name).await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

        let server = cache.server_config("[::1]", None).await.expect("config");
        let client = client_trusting(&cache.ca, &[b"h2"]);
        let name = ServerName::IpAddress(IpAddr::from(std::net::Ipv6Addr::LOCALHOST).into());
        assert_eq!(handshake(server, client, name).await, None);
    }

    #[tokio::test]
    async fn client_refuses_a_leaf_for_another_name() {
        let cache = cache(16);
        let server = cache
            .server_config("a.example", None)
            .await
            .expect("config");
        let client = client_trusting(&cache.ca, &[]);
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("b.example").expect("name");
        let (_, client) = tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            TlsConnector::from(Arc::new(client)).connect(name, client_io)
        );
        assert!(client.is_err());
    }

    #[tokio::test]
    async fn alpn_variants_are_built_once_per_host() {
        let cache = cache(16);
        let h2 = cache
            .server_config("x.example", Some(b"h2"))
            .await
            .expect("h2");
        let h1 = cache
            .server_config("x.example", Some(b"http/1.1"))
            .await
            .expect("h1");
        let none = cache.server_config("x.example", None).await.expect("none");
        assert_eq!(h2.alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(h1.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(none.alpn_protocols.is_empty());
        for (alpn, first) in [
            (Some(&b"h2"[..]), &h2),
            (Some(b"http/1.1"), &h1),
            (None, &none),
        ] {
            let again = cache
                .server_config("X.Example.", alpn)
                .await
                .expect("again");
            assert!(Arc::ptr_eq(first, &again));
        }
        let other = cache
            .server_config("x.example", Some(b"spdy/3"))
            .await
            .expect("other");
        assert_eq!(other.alpn_protocols, [b"spdy/3".to_vec()]);
        assert_eq!(cache.minted(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_calls_mint_once() {
        let cache = Arc::new(cache(16));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move {
                    let alpn: Option<&[u8]> = if i % 2 == 0 { Some(b"h2") } else { None };
                    cache.server_config("same.host", alpn).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join").expect("config");
        }
        assert_eq!(cache.minted(), 1);
    }

    #[tokio::test]
    async fn oldest_hosts_are_evicted() {
        let cache = cache(2);
        for host in ["a.example", "b.example", "c.example"] {
            cache.server_config(host, None).await.expect("config");
        }
        assert_eq!(cache.minted(), 3);
        cache.server_config("c.example", None).await.expect("hit");
        cache.server_config("b.example", None).await.expect("hit");
        assert_eq!(cache.minted(), 3);
        cache
            .server_config("a.example", None)
            .await
            .expect("evicted");
        assert_eq!(cache.minted(), 4);
        let slots = cache.slots.lock().expect("lock");
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.order.len(), 2);
    }

    #[tokio::test]
    async fn invalid_hosts_are_refused_and_not_cached() {
        let cache = cache(16);
        let err = cache
            .server_config("bad host", None)
            .await
            .expect_err("invalid");
        assert!(matches!(err, CaError::InvalidHost { .. }));
        assert_eq!(cache.minted(), 0);
        assert_eq!(cache.slots.lock().expect("lock").len(), 0);
    }
}
