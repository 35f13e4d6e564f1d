//! AUTH flood limits (anvil / fail2ban style): a global bound on concurrent password hashes, a
//! per-client bound on queued hashes, failure counters per client address and per username with
//! growing delays, and temporary blocks.
//!
//! One guard lives for the whole process ([`AuthGuard::process_wide`]) so a SIGHUP reload does not
//! hand a blocked attacker a clean slate; the limits themselves are re-read on reload.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AuthConfig;

/// Entries kept per table; beyond it expired entries are pruned and, if none expired, new keys
/// go untracked (the other table and the hash bound still apply) instead of growing memory.
const MAX_TRACKED: usize = 65_536;
/// Usernames are tracked by at most this many bytes: a peer chooses them.
const MAX_USER_KEY: usize = 256;
/// A username block spares the addresses that user logged in from within this long, so an
/// attack on an account does not lock its owner out of their usual places.
const KNOWN_CLIENT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Known addresses remembered per user (oldest dropped first).
const MAX_KNOWN_CLIENTS: usize = 16;

/// The limits, from `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    pub client_concurrent_checks: usize,
    pub failure_window: Duration,
    pub free_failures: u32,
    pub max_delay: Duration,
    pub client_block_after: u32,
    pub user_block_after: u32,
    pub block: Duration,
}

impl AuthLimits {
    pub fn from_config(cfg: &AuthConfig) -> AuthLimits {
        AuthLimits {
            client_concurrent_checks: cfg.client_concurrent_checks.max(1),
            failure_window: Duration::from_secs(cfg.failure_window_seconds.max(1)),
            free_failures: cfg.free_failures,
            max_delay: Duration::from_secs(cfg.max_failure_delay_seconds),
            client_block_after: cfg.client_block_after_failures,
            user_block_after: cfg.user_block_after_failures,
            block: Duration::from_secs(cfg.block_seconds),
        }
    }

    /// Delay before answering the `n`-th failure in the window (1-based): none for the first
    /// `free_failures`, then 1 s, 2 s, 4 s ... capped at `max_delay`.
    pub fn delay_for(&self, n: u32) -> Duration {
        if n <= self.free_failures {
            return Duration::ZERO;
        }
        let exp = (n - self.free_failures - 1).min(20);
        Duration::from_secs(1u64 << exp).min(self.max_delay)
    }
}

/// The hash concurrency for a configured value: 0 = one per core.
pub fn hash_slots(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Who is blocked, for the log and the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedBy {
    Client,
    User,
}

#[derive(Default)]
struct Record {
    /// Failure times inside the window (oldest first), at most the largest threshold + 1 kept.
    failures: Vec<Instant>,
    blocked_until: Option<Instant>,
    /// User records only: addresses with a recent successful login as this user.
    known: Vec<(ClientKey, Instant)>,
}

impl Record {
    fn prune(&mut self, now: Instant, window: Duration) {
        self.failures.retain(|t| now.duration_since(*t) < window);
        if self.blocked_until.is_some_and(|until| until <= now) {
            self.blocked_until = None;
        }
    }

    fn is_blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| until > now)
    }

    /// Records one failure; returns the count in the window.
    fn fail(&mut self, now: Instant, limits: &AuthLimits, block_after: u32) -> u32 {
        self.prune(now, limits.failure_window);
        self.failures.push(now);
        let cap = (block_after.max(limits.free_failures) as usize).saturating_add(8);
        if self.failures.len() > cap {
            let excess = self.failures.len() - cap;
            self.failures.drain(..excess);
        }
        let n = u32::try_from(self.failures.len()).unwrap_or(u32::MAX);
        if block_after > 0 && n >= block_after {
            self.blocked_until = Some(now + limits.block);
        }
        n
    }

    fn idle(&self, now: Instant) -> bool {
        self.failures.is_empty() && !self.is_blocked(now) && !self.knows_any(now)
    }

    fn knows_any(&self, now: Instant) -> bool {
        self.known
            .iter()
            .any(|(_, t)| now.duration_since(*t) < KNOWN_CLIENT_TTL)
    }

    fn knows(&self, client: ClientKey, now: Instant) -> bool {
        self.known
            .iter()
            .any(|(c, t)| *c == client && now.duration_since(*t) < KNOWN_CLIENT_TTL)
    }

    fn remember(&mut self, client: ClientKey, now: Instant) {
        self.known
            .retain(|(c, t)| *c != client && now.duration_since(*t) < KNOWN_CLIENT_TTL);
        if self.known.len() >= MAX_KNOWN_CLIENTS {
            self.known.remove(0);
        }
        self.known.push((client, now));
    }
}

struct Tables {
    limits: AuthLimits,
    clients: HashMap<ClientKey, Record>,
    users: HashMap<String, Record>,
    /// Per-client queue slots; an entry lives while a check of that client is queued or running.
    pending: HashMap<ClientKey, Arc<Semaphore>>,
}

/// A client address as counted: IPv4 (IPv4-mapped IPv6 included) by address, IPv6 by /64,
/// since one host usually controls a whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

fn user_key(user: &str) -> &str {
    if user.len() <= MAX_USER_KEY {
        return user;
    }
    let mut end = MAX_USER_KEY;
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    &user[..end]
}

/// Makes room for one more key, or says there is none.
fn room_for<K: Eq + Hash>(map: &mut HashMap<K, Record>, key: &K, now: Instant) -> bool {
    if map.len() < MAX_TRACKED || map.contains_key(key) {
        return true;
    }
    map.retain(|_, r| !r.idle(now));
    map.len() < MAX_TRACKED
}

/// Failure counts after one failed check, and how long to wait before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub client_failures: u32,
    pub user_failures: u32,
    pub delay: Duration,
}

pub struct AuthGuard {
    hashes: Arc<Semaphore>,
    hash_slots: usize,
    tables: Mutex<Tables>,
}

impl AuthGuard {
    pub fn new(hash_slots: usize, limits: AuthLimits) -> AuthGuard {
        let hash_slots = hash_slots.max(1);
        AuthGuard {
            hashes: Arc::new(Semaphore::new(hash_slots)),
            hash_slots,
            tables: Mutex::new(Tables {
                limits,
                clients: HashMap::new(),
                users: HashMap::new(),
                pending: HashMap::new(),
            }),
        }
    }

    /// The guard shared by every users-file generation of this process; later calls (reloads)
    /// update the limits but keep counters and blocks. The hash bound is fixed at first use.
    pub fn process_wide(cfg: &AuthConfig) -> Arc<AuthGuard> {
        static GUARD: OnceLock<Arc<AuthGuard>> = OnceLock::new();
        let limits = AuthLimits::from_config(cfg);
        let guard = GUARD.get_or_init(|| {
            Arc::new(AuthGuard::new(
                hash_slots(cfg.max_concurrent_checks),
                limits.clone(),
            ))
        });
        guard.tables().limits = limits;
        guard.clone()
    }

    pub fn hash_slots(&self) -> usize {
        self.hash_slots
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // The tables stay consistent at every await-free step, so a poisoned lock is still usable.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is this client, or this username for this client, blocked right now? A blocked username
    /// stays open to the addresses its owner recently logged in from.
    pub fn blocked(&self, client: ClientKey, user: &str) -> Option<BlockedBy> {
        let now = Instant::now();
        let t = self.tables();
        if t.clients.get(&client).is_some_and(|r| r.is_blocked(now)) {
            return Some(BlockedBy::Client);
        }
        if t.users
            .get(user_key(user))
            .is_some_and(|r| r.is_blocked(now) && !r.knows(client, now))
        {
            return Some(BlockedBy::User);
        }
        None
    }

    /// Waits for this client's turn to queue a hash (at most `client_concurrent_checks` each),
    /// so one address with many connections cannot fill the global queue ahead of others.
    pub async fn client_slot(&self, client: ClientKey) -> Option<OwnedSemaphorePermit> {
        let slots = {
            let mut t = self.tables();
            let n = t.limits.client_concurrent_checks;
            if t.pending.len() >= MAX_TRACKED {
                t.pending.retain(|_, s| Arc::strong_count(s) > 1);
            }
            t.pending
                .entry(client)
                .or_insert_with(|| Arc::new(Semaphore::new(n)))
                .clone()
        };
        let permit = slots.acquire_owned().await.ok();
        permit
    }

    /// Drops the client's queue entry once nobody uses it.
    pub fn release_client_slot(&self, client: ClientKey, permit: Option<OwnedSemaphorePermit>) {
        drop(permit);
        let mut t = self.tables();
        if t.pending
            .get(&client)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            t.pending.remove(&client);
        }
    }

    /// One of the process's hash slots (the memory and CPU bound).
    pub async fn hash_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.hashes.clone().acquire_owned().await.ok()
    }

    /// Counts a failed check against the client and the username, blocking either at its limit.
    pub fn failed(&self, client: ClientKey, user: &str) -> Failure {
        let now = Instant::now();
        let mut t = self.tables();
        let limits = t.limits.clone();
        let client_failures = if room_for(&mut t.clients, &client, now) {
            t.clients
                .entry(client)
                .or_default()
                .fail(now, &limits, limits.client_block_after)
        } else {
            0
        };
        let key = user_key(user);
        let user_failures = if room_for(&mut t.users, &key.to_string(), now) {
            t.users
                .entry(key.to_string())
                .or_default()
                .fail(now, &limits, limits.user_block_after)
        } else {
            0
        };
        Failure {
            client_failures,
            user_failures,
            delay: limits.delay_for(client_failures.max(user_failures)),
        }
    }

    /// A correct password: the username's failures are forgotten unless it is blocked (the
    /// client's are not, so one known account cannot wash out guessing against others), and
    /// the client becomes a known address of the user.
    pub fn succeeded(&self, client: ClientKey, user: &str) {
        let now = Instant::now();
        let mut t = self.tables();
        let key = user_key(user).to_string();
        if !room_for(&mut t.users, &key, now) {
            return;
        }
        let r = t.users.entry(key).or_default();
        if !r.is_blocked(now) {
            r.failures.clear();
        }
        r.remember(client, now);
    }

    /// Clients currently blocked (for tests and logs).
    pub fn blocked_clients(&self) -> usize {
        let now = Instant::now();
        self.tables()
            .clients
            .values()
            .filter(|r| r.is_blocked(now))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AuthLimits {
        AuthLimits {
            client_concurrent_checks: 2,
            failure_window: Duration::from_secs(600),
            free_failures: 1,
            max_delay: Duration::from_secs(16),
            client_block_after: 5,
            user_block_after: 8,
            block: Duration::from_secs(600),
        }
    }

    #[test]
    fn delays_grow_then_cap() {
        let l = limits();
        let d: Vec<u64> = (1..=8).map(|n| l.delay_for(n).as_secs()).collect();
        assert_eq!(d, [0, 1, 2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn client_blocked_after_limit_and_other_clients_not() {
        let g = AuthGuard::new(2, limits());
        let bad = ClientKey::of("192.0.2.7".parse().unwrap());
        let good = ClientKey::of("192.0.2.8".parse().unwrap());
        for i in 0..4 {
            // Different usernames: only the client counter reaches its limit.
            g.failed(bad, &format!("user{i}"));
            assert_eq!(g.blocked(bad, "x"), None, "after {} failures", i + 1);
        }
        let f = g.failed(bad, "user4");
        assert_eq!(f.client_failures, 5);
        assert_eq!(g.blocked(bad, "alice"), Some(BlockedBy::Client));
        assert_eq!(g.blocked(good, "alice"), None);
        assert_eq!(g.blocked_clients(), 1);
    }

    #[test]
    fn username_blocked_across_clients_and_success_resets_it() {
        let g = AuthGuard::new(2, limits());
        for i in 0..7u8 {
            g.failed(ClientKey::of(IpAddr::from([198, 51, 100, i])), "alice");
        }
        let c = ClientKey::of("203.0.113.1".parse().unwrap());
        assert_eq!(g.blocked(c, "alice"), None);
        g.succeeded(c, "alice");
        for i in 0..7u8 {
            g.failed(ClientKey::of(IpAddr::from([198, 51, 100, i])), "alice");
        }
        assert_eq!(g.blocked(c, "alice"), None, "success reset the count");
        let stranger = ClientKey::of("203.0.113.2".parse().unwrap());
        g.failed(stranger, "alice");
        assert_eq!(g.blocked(stranger, "alice"), Some(BlockedBy::User));
        assert_eq!(g.blocked(stranger, "bob"), None);
        assert_eq!(
            g.blocked(c, "alice"),
            None,
            "the owner's usual address is not locked out"
        );
        g.succeeded(c, "alice");
        assert_eq!(
            g.blocked(stranger, "alice"),
            Some(BlockedBy::User),
            "a block is not lifted by a success"
        );
    }

    #[test]
    fn ipv6_counted_per_64_and_mapped_v4_as_v4() {
        let a = ClientKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ClientKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::of("::ffff:192.0.2.1".parse().unwrap()),
            ClientKey::of("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn long_usernames_share_a_bounded_key() {
        let long = "é".repeat(400);
        assert!(user_key(&long).len() <= MAX_USER_KEY);
    }

    #[tokio::test]
    async fn one_client_holds_at_most_its_share_of_slots() {
        let g = Arc::new(AuthGuard::new(1, limits()));
        let c = ClientKey::of("192.0.2.1".parse().unwrap());
        let a = g.client_slot(c).await;
        let b = g.client_slot(c).await;
        assert!(a.is_some() && b.is_some());
        let g2 = g.clone();
        let third = tokio::spawn(async move { g2.client_slot(c).await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "third check of one client must wait");
        // Another client is not held up.
        let other = ClientKey::of("192.0.2.2".parse().unwrap());
        assert!(g.client_slot(other).await.is_some());
        g.release_client_slot(c, a);
        assert!(third.await.unwrap());
        g.release_client_slot(c, b);
    }
}
