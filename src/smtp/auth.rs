//! AUTH PLAIN/LOGIN credentials: a users file of `user:argon2id-PHC-hash` lines, checked off the
//! async runtime (argon2 is deliberately slow), a verified-credential cache so returning clients
//! skip the hash, the flood limits of [`super::auth_guard`] around every check, and
//! `bccguard passwd` to make such a line.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::auth_guard::{AuthGuard, BlockedBy, ClientKey};
use crate::config::AuthConfig;
use crate::metrics::Observe;

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
    /// so timing does not reveal which accounts exist. No limits: see [`AuthService::verify`].
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.check(user, password, None).await
    }

    /// [`Users::verify`] holding `permit` until the hash is done, inside the blocking thread, so
    /// the concurrency bound holds even if the waiting task is dropped.
    async fn check(
        &self,
        user: &str,
        password: &str,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> bool {
        let known = self.hashes.get(user).cloned();
        let hash = known.clone().unwrap_or_else(|| dummy_hash().to_string());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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

/// Dovecot `auth_cache` for successes only: HMAC-SHA256(per-cache random key, user NUL password)
/// -> expiry. A digest, never the password, stays in memory; a failure is never stored, so a
/// wrong password always pays the full hash.
struct CredentialCache {
    ttl: Duration,
    key: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl CredentialCache {
    fn new(ttl: Duration) -> CredentialCache {
        CredentialCache {
            ttl,
            key: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        // new_from_slice only fails for key sizes HMAC cannot take; 32 bytes always fits.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn hit(&self, user: &str, password: &str) -> bool {
        if !self.enabled() {
            return false;
        }
        let d = self.digest(user, password);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&d) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                entries.remove(&d);
                false
            }
            None => false,
        }
    }

    fn remember(&self, user: &str, password: &str) {
        if !self.enabled() {
            return;
        }
        let d = self.digest(user, password);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // Only verified credentials get here, so the map is bounded by the number of users;
        // still sweep expired entries now and then.
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, expiry| *expiry > now);
        }
        entries.insert(d, now + self.ttl);
    }
}

/// The answer to one AUTH attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    Ok,
    /// Wrong user or password; any delay has already been served.
    Failed,
    /// The client address or the username is temporarily blocked; nothing was checked.
    Blocked,
}

/// What the session asks: one users-file generation with its cache, and the process-wide limits.
/// A reload builds a new `AuthService`, and so an empty cache.
#[derive(Clone)]
pub struct AuthService {
    users: Users,
    cache: Arc<CredentialCache>,
    guard: Arc<AuthGuard>,
}

impl AuthService {
    /// For `Live::build`: the users file under `[auth]`, with the process-wide guard.
    pub fn load(path: &Path, cfg: &AuthConfig) -> anyhow::Result<AuthService> {
        Ok(AuthService::new(
            Users::load(path)?,
            cfg,
            AuthGuard::process_wide(cfg),
        ))
    }

    pub fn new(users: Users, cfg: &AuthConfig, guard: Arc<AuthGuard>) -> AuthService {
        AuthService {
            users,
            cache: Arc::new(CredentialCache::new(Duration::from_secs(
                cfg.cache_ttl_seconds,
            ))),
            guard,
        }
    }

    /// Checks one AUTH attempt from `client`. Blocked clients and users are refused before any
    /// work; a cached success costs one HMAC; anything else waits for a hash slot (this client's
    /// share first), pays the full argon2 check and, on failure, the growing delay.
    pub async fn verify(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
        observe: &Observe,
    ) -> AuthVerdict {
        let key = ClientKey::of(client);
        if let Some(by) = self.guard.blocked(key, user) {
            return self.refuse_blocked(key, user, by, observe);
        }
        if self.cache.hit(user, password) {
            observe.auth_cache(true);
            observe.auth_result("ok");
            self.guard.succeeded(key, user);
            return AuthVerdict::Ok;
        }
        if self.cache.enabled() {
            observe.auth_cache(false);
        }
        let client_slot = self.guard.client_slot(key).await;
        // Attempts queued behind this client's own failures may find it blocked by now.
        if let Some(by) = self.guard.blocked(key, user) {
            self.guard.release_client_slot(key, client_slot);
            return self.refuse_blocked(key, user, by, observe);
        }
        let hash_slot = self.guard.hash_slot().await;
        let ok = self.users.check(user, password, hash_slot).await;
        self.guard.release_client_slot(key, client_slot);
        if ok {
            self.cache.remember(user, password);
            self.guard.succeeded(key, user);
            observe.auth_result("ok");
            return AuthVerdict::Ok;
        }
        let failure = self.guard.failed(key, user);
        observe.auth_result("failed");
        // One line per failure, client-supplied text escaped (fail2ban-friendly).
        tracing::warn!(
            client = %client,
            user = %loggable(user),
            client_failures = failure.client_failures,
            user_failures = failure.user_failures,
            delay_ms = failure.delay.as_millis() as u64,
            "authentication failed"
        );
        if !failure.delay.is_zero() {
            tokio::time::sleep(failure.delay).await;
        }
        AuthVerdict::Failed
    }

    fn refuse_blocked(
        &self,
        key: ClientKey,
        user: &str,
        by: BlockedBy,
        observe: &Observe,
    ) -> AuthVerdict {
        observe.auth_result("blocked");
        let by = match by {
            BlockedBy::Client => "client",
            BlockedBy::User => "user",
        };
        tracing::info!(client = %key, user = %loggable(user), blocked = by, "authentication refused: temporarily blocked");
        AuthVerdict::Blocked
    }

    /// The limits shared by every generation (for tests and diagnostics).
    pub fn guard(&self) -> &Arc<AuthGuard> {
        &self.guard
    }
}

/// RFC 4954 temporary failure for a blocked client or user: try again later, nothing checked.
pub fn blocked_reply() -> crate::reply::Reply {
    crate::reply::Reply::new(
        454,
        (4, 7, 0),
        "Temporary authentication failure: too many failed logins, try again later",
    )
}

/// A client-supplied name cut to a length fit for one log line. Control characters are escaped
/// by the log formatter itself (`crate::logging`), for every field in every format, so this only
/// bounds the size: a 1 MB "username" must not make a 1 MB log line.
pub fn loggable(s: &str) -> String {
    const MAX: usize = 128;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
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

    fn service(ttl: u64, guard: Arc<AuthGuard>) -> (tempfile::TempDir, AuthService) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(
            &path,
            format!("alice:{}\n", hash_password("s3cret").unwrap()),
        )
        .unwrap();
        let cfg = AuthConfig {
            cache_ttl_seconds: ttl,
            ..AuthConfig::default()
        };
        let users = Users::load(&path).unwrap();
        (dir, AuthService::new(users, &cfg, guard))
    }

    fn guard() -> Arc<AuthGuard> {
        Arc::new(AuthGuard::new(
            2,
            crate::smtp::auth_guard::AuthLimits::from_config(&AuthConfig {
                free_failures: 10,
                ..AuthConfig::default()
            }),
        ))
    }

    fn metrics() -> (Arc<crate::metrics::Metrics>, Observe) {
        let m = Arc::new(crate::metrics::Metrics::new());
        (m.clone(), Observe::new(Some(m)))
    }

    fn series(m: &crate::metrics::Metrics, line: &str) -> String {
        m.encode()
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn cache_hit_is_fast_and_failures_are_never_cached() {
        let (_dir, svc) = service(3600, guard());
        let (m, obs) = metrics();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            svc.verify(ip, "alice", "wrong", &obs).await,
            AuthVerdict::Failed
        );
        // A failed password stays a miss, however often it is tried.
        assert_eq!(
            svc.verify(ip, "alice", "wrong", &obs).await,
            AuthVerdict::Failed
        );
        assert_eq!(
            svc.verify(ip, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
        // The repeat login is a cache hit (counted below); its cost is measured in bench/run's
        // tls rows, not timed here, where a loaded CI box would make it flaky.
        assert_eq!(
            svc.verify(ip, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
        // Same password, other user; same user, other password: not hits.
        assert_eq!(
            svc.verify(ip, "bob", "s3cret", &obs).await,
            AuthVerdict::Failed
        );
        assert_eq!(
            svc.verify(ip, "alice", "s3cret ", &obs).await,
            AuthVerdict::Failed
        );
        assert_eq!(
            series(&m, "bccguard_auth_cache_total{result=\"hit\"}"),
            "bccguard_auth_cache_total{result=\"hit\"} 1"
        );
        assert_eq!(
            series(&m, "bccguard_auth_cache_total{result=\"miss\"}"),
            "bccguard_auth_cache_total{result=\"miss\"} 5"
        );
        assert_eq!(
            series(&m, "bccguard_auth_attempts_total{result=\"failed\"}"),
            "bccguard_auth_attempts_total{result=\"failed\"} 4"
        );
    }

    #[tokio::test]
    async fn reload_empties_the_cache_and_ttl_zero_disables_it() {
        let g = guard();
        let (_dir, svc) = service(3600, g.clone());
        let (m, obs) = metrics();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            svc.verify(ip, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
        assert_eq!(
            svc.verify(ip, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
        // What Live::build does on SIGHUP: a new users generation.
        let (_dir2, reloaded) = service(3600, g.clone());
        assert_eq!(
            reloaded.verify(ip, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
        assert_eq!(
            series(&m, "bccguard_auth_cache_total{result=\"hit\"}"),
            "bccguard_auth_cache_total{result=\"hit\"} 1"
        );
        let (_dir3, uncached) = service(0, g);
        let (m, obs) = metrics();
        for _ in 0..2 {
            assert_eq!(
                uncached.verify(ip, "alice", "s3cret", &obs).await,
                AuthVerdict::Ok
            );
        }
        assert_eq!(
            series(&m, "bccguard_auth_cache_total{result=\"hit\"}"),
            "bccguard_auth_cache_total{result=\"hit\"} 0"
        );
    }

    #[tokio::test]
    async fn blocked_client_is_refused_even_with_the_right_password() {
        let g = Arc::new(AuthGuard::new(
            2,
            crate::smtp::auth_guard::AuthLimits::from_config(&AuthConfig {
                free_failures: 10,
                client_block_after_failures: 3,
                ..AuthConfig::default()
            }),
        ));
        let (_dir, svc) = service(3600, g);
        let obs = Observe::default();
        let bad: IpAddr = "198.51.100.9".parse().unwrap();
        let good: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            svc.verify(good, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
        for user in ["alice", "bob", "carol"] {
            assert_eq!(
                svc.verify(bad, user, "guess", &obs).await,
                AuthVerdict::Failed
            );
        }
        // Blocked before the cache: a blocked client learns nothing, not even from a cached hit.
        assert_eq!(
            svc.verify(bad, "alice", "s3cret", &obs).await,
            AuthVerdict::Blocked
        );
        assert_eq!(
            svc.verify(good, "alice", "s3cret", &obs).await,
            AuthVerdict::Ok
        );
    }

    #[test]
    fn logged_names_are_bounded() {
        assert_eq!(
            loggable("alice\nx"),
            "alice\nx",
            "escaping is the log formatter's job"
        );
        assert_eq!(loggable(&"x".repeat(1000)).len(), 131);
        assert_eq!(loggable(&"é".repeat(200)).chars().count(), 131);
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
