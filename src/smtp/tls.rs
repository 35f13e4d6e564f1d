//! Server-side TLS: loads the certificate chain and key named in `[tls]` into a rustls config,
//! with session resumption for returning clients (stateless tickets for TLS 1.2 and 1.3, and a
//! server-side session cache for TLS 1.2 clients without ticket support).
//!
//! The ticket keys and the session cache are process-wide, so a SIGHUP certificate reload does
//! not cost every client a full handshake; they are rebuilt only when the lifetime changes.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::crypto::GetRandomFailed;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::{HandshakeKind, ServerConnection, TicketRotator};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Longest accepted lifetime: ticket keys rotate at half of it, and the ring ticketer underneath
/// rotates every 6 h.
const MAX_LIFETIME: u32 = 12 * 60 * 60;
/// TLS 1.2 sessions remembered server-side (a few hundred bytes each).
const SESSION_CACHE_ENTRIES: usize = 4096;

pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(&cfg.certificate)
        .with_context(|| format!("reading TLS certificate {}", cfg.certificate.display()))?;
    let key_pem = std::fs::read(&cfg.private_key)
        .with_context(|| format!("reading TLS private key {}", cfg.private_key.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", cfg.certificate.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cfg.certificate.display());
    }
    let key: PrivateKeyDer<'static> =
        PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| {
            format!(
                "{} holds no usable PEM private key",
                cfg.private_key.display()
            )
        })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and private key do not match or are unsupported")?;
    let lifetime = u32::try_from(cfg.session_ticket_lifetime_seconds)
        .unwrap_or(u32::MAX)
        .min(MAX_LIFETIME);
    match resumption(lifetime)? {
        Some(r) => {
            config.ticketer = r.ticketer;
            config.session_storage = r.cache;
        }
        None => {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Did this completed handshake resume an earlier session?
pub fn resumed(conn: &ServerConnection) -> bool {
    conn.handshake_kind() == Some(HandshakeKind::Resumed)
}

#[derive(Clone)]
struct Resumption {
    lifetime: u32,
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

/// The process's resumption state for `lifetime` seconds (0 = none), kept across reloads.
fn resumption(lifetime: u32) -> anyhow::Result<Option<Resumption>> {
    static CURRENT: Mutex<Option<Resumption>> = Mutex::new(None);
    if lifetime == 0 {
        return Ok(None);
    }
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = current.as_ref().filter(|r| r.lifetime == lifetime) {
        return Ok(Some(r.clone()));
    }
    // A ticket is accepted for at most two rotation periods: rotate at half the lifetime.
    let rotator = TicketRotator::new(lifetime.div_ceil(2), new_ticket_keys)
        .context("creating TLS session ticket keys")?;
    let r = Resumption {
        lifetime,
        ticketer: Arc::new(Advertised {
            inner: rotator,
            lifetime,
        }),
        cache: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
    };
    *current = Some(r.clone());
    Ok(Some(r))
}

/// Fresh random ticket keys (ring's AEAD ticketer).
fn new_ticket_keys() -> Result<Box<dyn ProducesTickets>, GetRandomFailed> {
    rustls::crypto::ring::Ticketer::new()
        .map(|inner| Box::new(Shared(inner)) as Box<dyn ProducesTickets>)
        .map_err(|_| GetRandomFailed)
}

#[derive(Debug)]
struct Shared(Arc<dyn ProducesTickets>);

impl ProducesTickets for Shared {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

/// The rotator, telling clients the configured lifetime instead of its rotation period.
#[derive(Debug)]
struct Advertised {
    inner: TicketRotator,
    lifetime: u32,
}

impl ProducesTickets for Advertised {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.lifetime
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.inner.decrypt(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The test trusts the certificate it just made; only the resumption is under test.
    #[derive(Debug)]
    struct AcceptAny;

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    fn tls_config(dir: &std::path::Path, lifetime: u64) -> TlsConfig {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() {
            let status = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                ])
                .args(["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl");
            assert!(status.success());
        }
        TlsConfig {
            certificate: cert,
            private_key: key,
            session_ticket_lifetime_seconds: lifetime,
        }
    }

    /// One handshake over a real socket, a byte each way (TLS 1.3 tickets follow the handshake);
    /// returns whether the server resumed.
    async fn handshake(acceptor: &TlsAcceptor, client: &Arc<ClientConfig>) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let r = resumed(tls.get_ref().1);
            tls.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.unwrap();
            r
        });
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.unwrap();
        tls.write_all(b"y").await.unwrap();
        tls.flush().await.unwrap();
        server.await.unwrap()
    }

    fn client(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cfg = ClientConfig::builder_with_protocol_versions(versions)
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
        Arc::new(cfg)
    }

    #[tokio::test]
    async fn returning_clients_resume_across_a_certificate_reload() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let acceptor = acceptor(&tls_config(dir.path(), 3600)).unwrap();
            let c = client(versions);
            assert!(
                !handshake(&acceptor, &c).await,
                "first visit is a full handshake"
            );
            assert!(
                handshake(&acceptor, &c).await,
                "{versions:?}: second visit resumes"
            );
            // SIGHUP builds a new acceptor: tickets issued before still resume.
            let reloaded = acceptor_again(dir.path());
            assert!(
                handshake(&reloaded, &c).await,
                "{versions:?}: resumes after reload"
            );
        }
    }

    fn acceptor_again(dir: &std::path::Path) -> TlsAcceptor {
        acceptor(&tls_config(dir, 3600)).unwrap()
    }

    #[tokio::test]
    async fn lifetime_zero_turns_resumption_off() {
        let dir = tempfile::tempdir().unwrap();
        let acceptor = acceptor(&tls_config(dir.path(), 0)).unwrap();
        let c = client(&[&rustls::version::TLS13]);
        assert!(!handshake(&acceptor, &c).await);
        assert!(
            !handshake(&acceptor, &c).await,
            "no resumption when lifetime is 0"
        );
    }
}
