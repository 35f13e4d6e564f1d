//! Server-side TLS: loads the certificate chain and key named in `[tls]` into a rustls config.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

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
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and private key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
