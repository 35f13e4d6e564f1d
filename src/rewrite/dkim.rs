//! DKIM around a rewrite: finds signatures that cover the recipient fields we are about to change,
//! loads the relay's own signing key, and signs a rewritten message.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::message::header::HeaderSection;

/// Header fields the relay's own signature covers. Absent ones are signed too (as empty), which
/// stops anyone downstream from adding, say, a `Cc:` without breaking the signature.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The `h=` tag of a DKIM-Signature value: lower-cased field names, folding removed.
pub fn signed_header_names(value: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(value);
    for tag in text.split(';') {
        let Some((name, val)) = tag.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("h") {
            return val
                .split(':')
                .map(|n| {
                    n.chars()
                        .filter(|c| !c.is_whitespace())
                        .collect::<String>()
                        .to_ascii_lowercase()
                })
                .filter(|n| !n.is_empty())
                .collect();
        }
    }
    Vec::new()
}

/// Names of DKIM signatures (as `d=`/`s=` text) whose `h=` lists one of `altered` (lower-case names).
pub fn signatures_covering(h: &HeaderSection<'_>, altered: &[&str]) -> Vec<String> {
    h.fields
        .iter()
        .filter(|f| f.name_is("DKIM-Signature"))
        .filter(|f| {
            signed_header_names(f.value)
                .iter()
                .any(|n| altered.contains(&n.as_str()))
        })
        .map(|f| signer_label(f.value))
        .collect()
}

/// `d=example.org s=sel` for log lines.
pub(super) fn signer_label(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut d = "?".to_string();
    let mut s = "?".to_string();
    for tag in text.split(';') {
        if let Some((name, val)) = tag.split_once('=') {
            let val: String = val.chars().filter(|c| !c.is_whitespace()).collect();
            match name.trim().to_ascii_lowercase().as_str() {
                "d" => d = val,
                "s" => s = val,
                _ => {}
            }
        }
    }
    format!("d={d} s={s}")
}

/// The relay's signer, built once from the configured PEM key.
pub struct Signer {
    inner: DkimSigner<DkimKey, Done>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("d", &self.inner.template.d)
            .field("s", &self.inner.template.s)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads an RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8) private key from a PEM file.
    pub fn load(path: &Path, domain: &str, selector: &str) -> anyhow::Result<Signer> {
        let pem = std::fs::read(path).with_context(|| {
            format!(
                "key `policy.dkim.private_key`: cannot read {}",
                path.display()
            )
        })?;
        let key = parse_key(&pem).with_context(|| {
            format!(
                "key `policy.dkim.private_key`: {} is not a usable DKIM key",
                path.display()
            )
        })?;
        if domain.trim().is_empty() || selector.trim().is_empty() {
            bail!("key `policy.dkim.domain`/`policy.dkim.selector`: must not be empty");
        }
        let inner = DkimSigner::from_key(key)
            .domain(domain.trim())
            .selector(selector.trim())
            .headers(SIGNED_HEADERS.iter().copied());
        Ok(Signer { inner })
    }

    /// A complete `DKIM-Signature:` field (with its line end, in `eol` style) over header+body.
    pub fn sign(&self, header: &[u8], body: &[u8], eol: &[u8]) -> anyhow::Result<Vec<u8>> {
        // One contiguous copy: mail-auth's chained signer would read the body chunk as more
        // header fields, so header and body cannot be passed as separate slices.
        let mut whole = Vec::with_capacity(header.len() + body.len());
        whole.extend_from_slice(header);
        whole.extend_from_slice(body);
        let sig = self
            .inner
            .sign(&whole)
            .map_err(|e| anyhow!("DKIM signing failed: {e}"))?;
        let field = sig.to_header();
        Ok(if eol == b"\n" {
            field.replace("\r\n", "\n").into_bytes()
        } else {
            field.into_bytes()
        })
    }
}

fn parse_key(pem: &[u8]) -> anyhow::Result<DkimKey> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| anyhow!("no private key in the PEM file ({e})"))?;
    match der {
        PrivateKeyDer::Pkcs1(_) => Ok(DkimKey::Rsa(
            RsaKey::<Sha256>::from_key_der(der)
                .map_err(|e| anyhow!("not a usable RSA key: {e}"))?,
        )),
        PrivateKeyDer::Pkcs8(p8) => {
            // PKCS#8 holds either kind: RSA first, then Ed25519 (v1 files from OpenSSL lack the
            // public key, hence the "maybe unchecked" loader that derives it).
            let bytes = p8.secret_pkcs8_der().to_vec();
            match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(p8)) {
                Ok(k) => Ok(DkimKey::Rsa(k)),
                Err(rsa_err) => Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes)
                    .map(DkimKey::Ed25519)
                    .map_err(|ed_err| {
                        anyhow!("PKCS#8 key is neither RSA ({rsa_err}) nor Ed25519 ({ed_err})")
                    }),
            }
        }
        _ => bail!(
            "unsupported key type (DKIM needs an RSA or Ed25519 key; EC keys are not allowed)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_h_tag_with_folding_and_case() {
        let v = b" v=1; a=rsa-sha256; d=example.org; s=sel;\r\n\th=From:TO\r\n\t :Subject: cc; bh=abc; b=def";
        assert_eq!(signed_header_names(v), vec!["from", "to", "subject", "cc"]);
        assert_eq!(signer_label(v), "d=example.org s=sel");
        assert!(signed_header_names(b" v=1; d=x").is_empty());
    }

    #[test]
    fn refuses_garbage_keys() {
        assert!(parse_key(b"not a key").is_err());
        let ec = b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIm2\n-----END EC PRIVATE KEY-----\n";
        assert!(parse_key(ec).is_err());
    }

    #[test]
    fn loads_generated_ed25519_key() {
        let der = Ed25519Key::generate_pkcs8().unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        assert!(matches!(
            parse_key(pem.as_bytes()).unwrap(),
            DkimKey::Ed25519(_)
        ));
    }
}
