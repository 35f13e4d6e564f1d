//! Groups from an LDAP / Active Directory server (`[[policy.directory]]`, the `ldap3` crate over
//! rustls). Each directory has one refresh thread with its own small runtime, so policy
//! evaluation never waits on the network: it reads the last good member set. A failed refresh
//! keeps serving that set, marks the directory down (`/healthz` note, `bccguard_directory_up`
//! gauge) and retries sooner than the TTL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::pem::PemObject;

use crate::config::org::DirectoryConfig;

/// The Active Directory "in chain" matching rule: membership through nested groups.
pub const AD_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

/// A failed refresh is retried after this long (or the TTL, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectoryLabels {
    pub directory: String,
}

/// Directory series; `metrics::Metrics::new` registers clones (they share their values).
#[derive(Default)]
pub struct DirectoryMetrics {
    pub up: Family<DirectoryLabels, Gauge>,
    pub lookups: Family<DirectoryLabels, Counter>,
    pub failures: Family<DirectoryLabels, Counter>,
}

pub static METRICS: LazyLock<DirectoryMetrics> = LazyLock::new(DirectoryMetrics::default);

/// Live directories, for `/healthz` notes (weak: a reload drops the old ones).
static LIVE: LazyLock<Mutex<Vec<Weak<State>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// What one directory knows right now.
#[derive(Debug)]
struct State {
    name: String,
    url: String,
    /// Search filter -> lower-cased member identities (mail and login values). Keyed by the
    /// filter, not the group name, so a reload can safely start from the previous answers.
    members: RwLock<HashMap<String, Arc<HashSet<String>>>>,
    up: AtomicBool,
    answered: AtomicBool,
    status: Mutex<Status>,
}

#[derive(Debug, Default)]
struct Status {
    last_error: Option<String>,
    last_good: Option<Instant>,
    down_since: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Query {
    group: String,
    filter: String,
}

/// One configured directory and its refresh thread.
#[derive(Debug)]
pub struct Directory {
    cfg: DirectoryConfig,
    password: Option<String>,
    state: Arc<State>,
    queries: Mutex<Vec<Query>>,
    started: AtomicBool,
}

/// A group whose members come from a directory search.
#[derive(Debug)]
pub struct DirectoryGroup {
    state: Arc<State>,
    filter: String,
}

impl DirectoryGroup {
    pub fn contains(&self, identity: &str) -> bool {
        let id = identity.trim().trim_matches(['<', '>']).to_lowercase();
        let members = self.state.members.read().unwrap_or_else(|p| p.into_inner());
        members.get(&self.filter).is_some_and(|m| m.contains(&id))
    }

    pub fn describe(&self) -> String {
        let n = self
            .state
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.filter)
            .map(|m| m.len());
        let state = match (n, self.state.up.load(Ordering::Relaxed)) {
            (None, _) => "no answer yet".to_string(),
            (Some(n), true) => format!("{n} members"),
            (Some(n), false) => format!("{n} members, last good answer; directory down"),
        };
        format!("directory '{}' {} ({state})", self.state.name, self.filter)
    }
}

/// The filter as sent: with `nested`, `memberOf=` tests become AD in-chain tests.
pub fn effective_filter(filter: &str, nested: bool) -> String {
    if nested {
        filter.replace("memberOf=", &format!("memberOf:{AD_IN_CHAIN}:="))
    } else {
        filter.to_string()
    }
}

impl Directory {
    pub fn new(cfg: &DirectoryConfig) -> Result<Arc<Directory>, String> {
        let url = cfg.url.trim();
        let loopback = ["ldap://127.0.0.1", "ldap://localhost", "ldap://[::1]"]
            .iter()
            .any(|p| url.starts_with(p));
        if !(url.starts_with("ldaps://") || url.starts_with("ldap://")) {
            return Err(format!("url `{url}` must start with ldaps:// or ldap://"));
        }
        // A bind password must not cross the network in clear text.
        if url.starts_with("ldap://") && !cfg.starttls && !loopback && cfg.bind_dn.is_some() {
            return Err(format!(
                "url `{url}` is plain LDAP: use ldaps:// or set starttls = true"
            ));
        }
        if cfg.ttl_seconds == 0 || cfg.timeout_seconds == 0 {
            return Err("ttl_seconds and timeout_seconds must be at least 1".into());
        }
        if cfg.base_dn.trim().is_empty() {
            return Err("base_dn must not be empty".into());
        }
        let password = match (&cfg.bind_dn, &cfg.bind_password_file) {
            (Some(_), Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("bind_password_file {}: {e}", f.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            (Some(_), None) => return Err("bind_dn needs bind_password_file".into()),
            (None, Some(_)) => return Err("bind_password_file needs bind_dn".into()),
            (None, None) => None,
        };
        if let Some(ca) = &cfg.ca_file {
            tls_config(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        }
        let state = Arc::new(State {
            name: cfg.name.clone(),
            url: cfg.url.trim().to_string(),
            members: RwLock::new(HashMap::new()),
            up: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
        });
        Ok(Arc::new(Directory {
            cfg: cfg.clone(),
            password,
            state,
            queries: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
        }))
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Relaxed)
    }

    /// Registers a group search; call before [`Directory::start`].
    pub fn group(&self, group: &str, filter: &str, nested: bool) -> Result<DirectoryGroup, String> {
        let f = filter.trim();
        if !(f.starts_with('(') && f.ends_with(')')) {
            return Err(format!(
                "filter `{filter}` must be an LDAP filter in parentheses"
            ));
        }
        let filter = effective_filter(f, nested);
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Query {
                group: group.to_string(),
                filter: filter.clone(),
            });
        Ok(DirectoryGroup {
            state: self.state.clone(),
            filter,
        })
    }

    /// Starts the refresh thread and waits (at most the timeout) for its first answer.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let queries = self
            .queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if queries.is_empty() {
            return;
        }
        {
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            // A reload must not forget the last good answer while the directory is down: start
            // from the previous policy's sets for the same directory (same filters only).
            if let Some(prev) = live
                .iter()
                .filter_map(Weak::upgrade)
                .rfind(|p| p.name == self.state.name && p.url == self.state.url)
            {
                let prev_members = prev.members.read().unwrap_or_else(|p| p.into_inner());
                let mut members = self
                    .state
                    .members
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                for q in &queries {
                    if let Some(m) = prev_members.get(&q.filter) {
                        members.insert(q.filter.clone(), m.clone());
                    }
                }
                let prev_status = prev.status.lock().unwrap_or_else(|p| p.into_inner());
                let mut st = self.state.status.lock().unwrap_or_else(|p| p.into_inner());
                st.last_good = prev_status.last_good;
            }
            live.push(Arc::downgrade(&self.state));
        }
        let labels = DirectoryLabels {
            directory: self.cfg.name.clone(),
        };
        METRICS.up.get_or_create(&labels).set(0);
        let _ = METRICS.lookups.get_or_create(&labels);
        let _ = METRICS.failures.get_or_create(&labels);
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let weak = Arc::downgrade(&self.state);
        let cfg = self.cfg.clone();
        let password = self.password.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("directory-{}", cfg.name))
            .spawn(move || refresh_loop(weak, cfg, password, queries, first_tx));
        match spawned {
            Ok(_) => {
                let _ = first_rx.recv_timeout(Duration::from_secs(self.cfg.timeout_seconds + 1));
            }
            Err(e) => {
                tracing::error!(directory = %self.cfg.name, "cannot start the directory thread: {e}")
            }
        }
    }
}

fn refresh_loop(
    weak: Weak<State>,
    cfg: DirectoryConfig,
    password: Option<String>,
    queries: Vec<Query>,
    first: std::sync::mpsc::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(directory = %cfg.name, "no runtime for directory lookups: {e}");
            return;
        }
    };
    let labels = DirectoryLabels {
        directory: cfg.name.clone(),
    };
    let ttl = Duration::from_secs(cfg.ttl_seconds);
    let mut first = Some(first);
    loop {
        let Some(state) = weak.upgrade() else { return };
        let result = rt.block_on(fetch_all(&cfg, password.as_deref(), &queries));
        METRICS.lookups.get_or_create(&labels).inc();
        let wait = match result {
            Ok(found) => {
                *state.members.write().unwrap_or_else(|p| p.into_inner()) = found;
                let was_down =
                    !state.up.swap(true, Ordering::SeqCst) && state.answered.load(Ordering::SeqCst);
                state.answered.store(true, Ordering::SeqCst);
                let mut st = state.status.lock().unwrap_or_else(|p| p.into_inner());
                st.last_good = Some(Instant::now());
                st.last_error = None;
                st.down_since = None;
                if was_down {
                    tracing::info!(directory = %cfg.name, "directory reachable again");
                }
                METRICS.up.get_or_create(&labels).set(1);
                ttl
            }
            Err(why) => {
                METRICS.failures.get_or_create(&labels).inc();
                METRICS.up.get_or_create(&labels).set(0);
                let was_up = state.up.swap(false, Ordering::SeqCst);
                let mut st = state.status.lock().unwrap_or_else(|p| p.into_inner());
                if was_up || st.down_since.is_none() {
                    st.down_since = Some(Instant::now());
                    tracing::warn!(directory = %cfg.name, "directory lookup failed, keeping the last good answer: {why}");
                }
                st.last_error = Some(why);
                ttl.min(RETRY_AFTER_FAILURE)
            }
        };
        drop(state);
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        // Sleep in short steps so a dropped policy (reload) ends the thread promptly.
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if weak.strong_count() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200).min(wait));
        }
    }
}

/// One connection: bind, one search per group, unbind. Any failure fails the whole round, so a
/// half-answered round never replaces good sets.
async fn fetch_all(
    cfg: &DirectoryConfig,
    password: Option<&str>,
    queries: &[Query],
) -> Result<HashMap<String, Arc<HashSet<String>>>, String> {
    let timeout = Duration::from_secs(cfg.timeout_seconds);
    let work = async {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(cfg.starttls);
        if let Some(ca) = &cfg.ca_file {
            settings = settings.set_config(tls_config(ca)?);
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, cfg.url.trim())
            .await
            .map_err(|e| format!("connect {}: {e}", cfg.url))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("LDAP connection ended: {e}");
            }
        });
        if let (Some(dn), Some(pw)) = (&cfg.bind_dn, password) {
            ldap.with_timeout(timeout)
                .simple_bind(dn, pw)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {dn}: {e}"))?;
        }
        let mut attrs = vec![cfg.mail_attribute.clone()];
        if let Some(l) = &cfg.login_attribute {
            attrs.push(l.clone());
        }
        let mut out = HashMap::new();
        for q in queries {
            let (entries, _) = ldap
                .with_timeout(timeout)
                .search(&cfg.base_dn, Scope::Subtree, &q.filter, attrs.clone())
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("search for group '{}': {e}", q.group))?;
            let mut members = HashSet::new();
            for raw in entries {
                // ldap3 panics on malformed BER from the server: contain it to this entry.
                let entry = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    SearchEntry::construct(raw)
                }))
                .map_err(|_| format!("search for group '{}': malformed entry", q.group))?;
                for a in &attrs {
                    for v in entry.attrs.get(a).into_iter().flatten() {
                        members.insert(v.trim().to_lowercase());
                    }
                }
            }
            out.insert(q.filter.clone(), Arc::new(members));
        }
        let _ = ldap.unbind().await;
        driver.abort();
        Ok(out)
    };
    match tokio::time::timeout(timeout * 2, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", (timeout * 2).as_secs())),
    }
}

fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `/healthz` notes: one line per directory that is down (the relay still works with the last
/// good answer, so this degrades rather than fails readiness).
pub fn health_notes() -> Vec<String> {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|w| w.strong_count() > 0);
    let mut notes = Vec::new();
    for s in live.iter().filter_map(Weak::upgrade) {
        if s.up.load(Ordering::Relaxed) {
            continue;
        }
        let st = s.status.lock().unwrap_or_else(|p| p.into_inner());
        let why = st
            .last_error
            .clone()
            .unwrap_or_else(|| "no answer yet".into());
        let serving = match st.last_good {
            Some(t) => format!(
                "using its last good answer from {} s ago",
                t.elapsed().as_secs()
            ),
            None => "no answer yet, so its groups are empty".to_string(),
        };
        notes.push(format!(
            "degraded: directory '{}' unreachable ({why}); {serving}",
            s.name
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> DirectoryConfig {
        DirectoryConfig {
            name: "corp".into(),
            url: url.into(),
            starttls: false,
            bind_dn: None,
            bind_password_file: None,
            base_dn: "dc=example,dc=org".into(),
            mail_attribute: "mail".into(),
            login_attribute: None,
            ttl_seconds: 60,
            timeout_seconds: 1,
            ca_file: None,
        }
    }

    #[test]
    fn nested_filter_uses_the_ad_chain_rule() {
        assert_eq!(
            effective_filter("(memberOf=cn=press,ou=groups,dc=example,dc=org)", true),
            "(memberOf:1.2.840.113556.1.4.1941:=cn=press,ou=groups,dc=example,dc=org)"
        );
        assert_eq!(effective_filter("(memberOf=x)", false), "(memberOf=x)");
    }

    #[test]
    fn clear_text_binds_are_refused() {
        let mut c = cfg("ldap://ldap.example.org");
        c.bind_dn = Some("cn=relay".into());
        c.bind_password_file = Some("/nonexistent".into());
        assert!(Directory::new(&c).unwrap_err().contains("starttls"));
        assert!(Directory::new(&cfg("http://x")).is_err());
    }

    #[test]
    fn unreachable_directory_leaves_groups_empty_and_reports() {
        // Port 9 on loopback: nothing listens, the connect fails fast.
        let d = Directory::new(&cfg("ldap://127.0.0.1:9")).unwrap();
        let g = d.group("press", "(memberOf=cn=press)", false).unwrap();
        d.start();
        assert!(!d.is_up());
        assert!(!g.contains("a@example.org"));
        assert!(health_notes()
            .iter()
            .any(|n| n.contains("'corp'") && n.contains("no answer yet")));
    }
}
