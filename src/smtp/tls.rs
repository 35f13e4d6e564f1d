//! Server-side TLS: loads the certificate chain and key named in `[tls]` into a rustls config.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = std::fs::read(&cfg.certificate)
        .with_context(|| format!("reading TLS certificate {}", cfg.certificate.display()))?;
    let key_pem = std::fs::read(&cfg.private_key)
        .with_context(|| format!("reading TLS private key {}", cfg.private_key.display()))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing PEM certificates in {}", cfg.certificate.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cfg.certificate.display());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing PEM private key in {}", cfg.private_key.display()))?
        .with_context(|| format!("{} holds no PEM private key", cfg.private_key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and private key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
