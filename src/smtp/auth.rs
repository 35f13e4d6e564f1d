//! AUTH PLAIN/LOGIN credentials: a users file of `user:argon2id-PHC-hash` lines, checked off the
//! async runtime (argon2 is deliberately slow), and `bccguard passwd` to make such a line.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

#[derive(Clone, Default)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
}

impl Users {
    pub fn load(path: &Path) -> anyhow::Result<Users> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading users file {}", path.display()))?;
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .with_context(|| format!("{}:{}: expected `user:hash`", path.display(), n + 1))?;
            PasswordHash::new(hash).map_err(|e| {
                anyhow::anyhow!("{}:{}: `{user}` has no valid argon2 hash ({e}); make one with `bccguard passwd`", path.display(), n + 1)
            })?;
            hashes.insert(user.to_string(), hash.to_string());
        }
        Ok(Users {
            hashes: Arc::new(hashes),
        })
    }

    /// Verifies a password without blocking the runtime. Unknown users cost the same as known ones
    /// so timing does not reveal which accounts exist.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let known = self.hashes.get(user).cloned();
        let hash = known.clone().unwrap_or_else(|| dummy_hash().to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok && known.is_some()
    }
}

/// A real hash of a random password, to burn the same work for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("unknown-user-placeholder").unwrap_or_default())
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// `bccguard passwd`: password on stdin (first line), hash on stdout.
pub fn run_passwd() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("bccguard passwd: reading stdin: {e}");
        return ExitCode::from(2);
    }
    let password = input.lines().next().unwrap_or("");
    if password.is_empty() {
        eprintln!("bccguard passwd: empty password on stdin");
        return ExitCode::from(2);
    }
    match hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bccguard passwd: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_round_trip_and_unknown_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(
            &path,
            format!("alice:{}\n", hash_password("s3cret").unwrap()),
        )
        .unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "s3cret").await);
        assert!(!users.verify("alice", "wrong").await);
        assert!(!users.verify("bob", "s3cret").await);
    }

    #[test]
    fn malformed_users_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "# comment\nalice:notahash\n").unwrap();
        let err = format!("{:#}", Users::load(&path).err().unwrap());
        assert!(err.contains(":2:"), "{err}");
    }
}
