//! Recipient pseudonyms: the HMAC key file (created 0600 on first start) and the keyed
//! HMAC-SHA256 of a normalised address, so the audit log never becomes a second copy of who
//! received what, while an admin holding the key can still ask "was X a recipient?".

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of a pseudonymised recipient in a record.
pub const PREFIX: &str = "hmac:";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or created; may heal (permissions, mount) without a restart.
    #[error("audit HMAC key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is there but is not a key: an admin must fix it.
    #[error("audit HMAC key file {path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// The secret behind the pseudonyms.
#[derive(Clone)]
pub struct HmacKey(Vec<u8>);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

/// Shortest key accepted from a file (bytes); we create 32.
const MIN_KEY_BYTES: usize = 16;

impl HmacKey {
    pub fn from_bytes(bytes: Vec<u8>) -> HmacKey {
        HmacKey(bytes)
    }

    /// Reads an existing key file (hex). Warns, but goes on, when group or others may read it:
    /// refusing to start would stop all mail for a permission slip, and the key only guards
    /// pseudonyms, not the mail itself.
    pub fn load(path: &Path) -> Result<HmacKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = fs::read_to_string(path).map_err(io)?;
        let meta = fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "audit HMAC key file is readable by group or others; chmod 600 it"
            );
        }
        let bytes = hex::decode(text.trim()).map_err(|e| KeyError::Invalid {
            path: path.to_path_buf(),
            why: format!("not a hex key ({e})"),
        })?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::Invalid {
                path: path.to_path_buf(),
                why: format!(
                    "key is {} bytes, at least {MIN_KEY_BYTES} are needed",
                    bytes.len()
                ),
            });
        }
        Ok(HmacKey(bytes))
    }

    /// Loads the key, creating it (32 random bytes, hex, mode 0600) when the file is missing.
    pub fn load_or_create(path: &Path) -> Result<HmacKey, KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut key = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match created {
            Ok(f) => f,
            // Another process made it between our read and create: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Self::load(path),
            Err(e) => return Err(io(e)),
        };
        file.write_all(format!("{}\n", hex::encode(&key)).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::file::sync_dir(dir);
        }
        tracing::info!(path = %path.display(), "created audit HMAC key file");
        Ok(HmacKey(key))
    }

    fn keyed(&self) -> Hmac<Sha256> {
        // new_from_slice only fails for fixed-size MACs; HMAC takes any key length.
        match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    /// `hmac:<hex>` for one address, normalised first.
    pub fn pseudonym(&self, address: &str) -> String {
        let mut mac = self.keyed();
        mac.update(normalise(address).as_bytes());
        format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Names the key without revealing it: hex HMAC-SHA256 of `bccguard-key-id` under it.
    pub fn key_id(&self) -> String {
        let mut mac = self.keyed();
        mac.update(b"bccguard-key-id");
        hex::encode(mac.finalize().into_bytes())
    }

    /// A pseudonymiser for many addresses: the key's pads are worked out once, and ring's
    /// assembly SHA-256 does the hashing (same HMAC-SHA256, so the same pseudonyms).
    pub fn batch(&self) -> Batch {
        Batch(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0))
    }
}

/// See [`HmacKey::batch`].
pub struct Batch(ring::hmac::Key);

impl Batch {
    /// The raw MAC of a normalised address (its pseudonym is `hmac:` + the hex of this; hex
    /// keeps byte order, so sorting these sorts the pseudonyms).
    pub fn raw(&self, address: &str) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.0, normalise(address).as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub fn pseudonym(&self, address: &str) -> String {
        format!("{PREFIX}{}", hex::encode(self.raw(address)))
    }
}

/// The form an address is hashed in: trimmed, without angle brackets, domain lower-cased.
/// The local part keeps its case (RFC 5321 says it is the receiving domain's business).
pub fn normalise(address: &str) -> String {
    let a = address.trim();
    let a = a
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(a)
        .trim();
    match a.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_domain_only() {
        assert_eq!(normalise(" <Bob@Example.ORG> "), "Bob@example.org");
        assert_eq!(normalise("\"a@b\"@X.y"), "\"a@b\"@x.y");
    }

    #[test]
    fn pseudonym_is_keyed_and_domain_insensitive() {
        let k1 = HmacKey::from_bytes(vec![1; 32]);
        let k2 = HmacKey::from_bytes(vec![2; 32]);
        let p = k1.pseudonym("bob@example.org");
        assert!(p.starts_with(PREFIX) && p.len() == PREFIX.len() + 64);
        assert_eq!(p, k1.pseudonym("bob@EXAMPLE.org"));
        assert_ne!(p, k1.pseudonym("Bob@example.org"));
        assert_ne!(p, k2.pseudonym("bob@example.org"));
        assert!(!p.contains("bob"));
        assert_eq!(k1.batch().pseudonym("bob@EXAMPLE.org"), p, "batch = single");
        assert_ne!(k1.key_id(), k2.key_id());
        assert_eq!(k1.key_id().len(), 64);
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.key");
        let k = HmacKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = HmacKey::load_or_create(&path).unwrap();
        assert_eq!(k.pseudonym("a@b.c"), again.pseudonym("a@b.c"));
        fs::write(&path, "zz").unwrap();
        assert!(matches!(
            HmacKey::load(&path),
            Err(KeyError::Invalid { .. })
        ));
        fs::write(&path, "abcd").unwrap();
        assert!(matches!(
            HmacKey::load(&path),
            Err(KeyError::Invalid { .. })
        ));
    }
}
