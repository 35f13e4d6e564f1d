//! Durable spool for split copies the upstream could not take during the client's session.
//!
//! This module owns the spool folder (`[spool] path`, mode 0700) and everything in it: one file
//! per copy (envelope sender, MAIL parameters, one recipient, the message exactly as it is to be
//! sent, and its retry state; format in [`file`]), the in-memory index of those files, and the
//! background task that retries them ([`Spool::run`]).
//!
//! Guarantees:
//! - [`Spool::enqueue`] returns `Ok` only once the copy is on disk (temp file, fsync, rename,
//!   fsync of the folder), so the relay may then answer 250.
//! - A copy leaves the spool only when the upstream answered 2xx, or when it was replaced by a
//!   delivery report to its sender (5xx, or still undelivered after `max_lifetime_seconds`);
//!   that report is itself a spooled copy from `<>`. A copy from `<>` is never bounced: it is
//!   dropped with an error log when it cannot be delivered.
//! - Delivery is at-least-once: a crash between the upstream's 2xx and the deletion of the file
//!   sends that copy once more after the restart. Nothing is lost.
//! - A file that is not a complete, intact entry (crash while writing, disk damage) is moved to
//!   `corrupt/` and never sent; half-written temp files are removed at start.
//! - One relay process per folder (an exclusive `flock` on `lock`): replicas behind a load
//!   balancer each need their own spool folder.
//!
//! `bccguard spool flush` asks a running relay to retry everything now by creating the file
//! `flush` in the folder; the retry task looks for it every second.

pub mod file;
mod upstream;

pub use upstream::start_for_serve;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::audit::{AuditLog, AuditOutcome, OutcomeResult};
use crate::config::SpoolConfig;
use crate::metrics::{Metrics, SpoolEvent, SpoolStatus};
use crate::reply::Reply;
pub use file::AuditLink;
use file::{Envelope, ReadError, State};

/// Name of the trigger file `bccguard spool flush` creates.
pub const FLUSH_TRIGGER: &str = "flush";
/// Name of the lock file that keeps a second relay off the same folder.
pub const LOCK_FILE: &str = "lock";
/// How often the retry task looks for the flush trigger (and refreshes the gauges).
const TICK: Duration = Duration::from_secs(1);
/// Upper bound on one delivery try, whatever the sender does (DATA reply alone may take 10 min).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// On shutdown, tries in flight get this long before they are abandoned (and retried later).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The original header returned in a delivery report is cut at this size.
const REPORT_HEADER_MAX: usize = 64 * 1024;

/// Sends one single-recipient copy upstream. The relay implements it for its upstream
/// connection; tests use scripted fakes.
pub trait CopySender: Send + Sync + 'static {
    /// One whole transaction: `MAIL FROM:<from>params`, `RCPT TO:<rcpt>`, DATA with `data`.
    /// `Ok` carries the upstream's deciding reply (the first non-2xx, or the reply to DATA);
    /// `Err` is a transport failure or timeout, treated as temporary.
    fn send_copy(
        &self,
        from: &str,
        params: &str,
        rcpt: &str,
        data: &[u8],
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// One copy to spool.
#[derive(Debug, Clone)]
pub struct SpoolJob {
    /// Envelope sender (empty for `<>`).
    pub from: String,
    /// MAIL FROM parameters as sent after `<from>` (e.g. ` BODY=8BITMIME SMTPUTF8`), or empty.
    pub params: String,
    pub rcpt: String,
    /// The message exactly as it is to be sent (edited header + body), not dot-stuffed.
    pub data: Vec<u8>,
    /// Tries already made in the session (shown in `spool list`).
    pub attempts: u32,
    /// The last failure, e.g. the upstream's reply or "connection lost".
    pub last_error: Option<String>,
    /// The audit decision of the message this copy belongs to, if it has one.
    pub audit: Option<AuditLink>,
}

impl SpoolJob {
    /// A job whose message is the concatenation of `parts` (e.g. trace header, header, body).
    pub fn from_parts(from: &str, params: &str, rcpt: &str, parts: &[&[u8]]) -> SpoolJob {
        SpoolJob {
            from: from.to_string(),
            params: params.to_string(),
            rcpt: rcpt.to_string(),
            data: parts.concat(),
            attempts: 0,
            last_error: None,
            audit: None,
        }
    }
}

/// Name of a spooled copy (also its file name without `.copy`); sorts by spooling time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SpoolId(pub String);

impl std::fmt::Display for SpoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool full: {entries} copies / {bytes} bytes held, limit {max_entries} / {max_bytes}"
    )]
    Full {
        entries: usize,
        bytes: u64,
        max_entries: usize,
        max_bytes: u64,
    },
    #[error("cannot spool: {0}")]
    Invalid(&'static str),
    #[error("writing spool file in {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("spool write did not finish: {0}")]
    Task(String),
}

impl SpoolError {
    /// What the client is told when a copy could not be spooled (nothing acknowledged yet).
    pub fn reply(&self) -> Reply {
        Reply::new(
            451,
            (4, 3, 0),
            "Message could not be queued for retry; not accepted, please try again later",
        )
    }
}

/// One spooled copy as `spool list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpoolEntryInfo {
    pub id: SpoolId,
    pub from: String,
    pub rcpt: String,
    pub size: u64,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Tries in the session plus tries from the spool.
    pub attempts: u32,
    /// Unix milliseconds.
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
}

impl SpoolEntryInfo {
    fn new(envelope: &Envelope, state: &State) -> SpoolEntryInfo {
        SpoolEntryInfo {
            id: SpoolId(envelope.id.clone()),
            from: envelope.from.clone(),
            rcpt: envelope.rcpt.clone(),
            size: envelope.size,
            created_ms: envelope.created_ms,
            attempts: envelope.prior_attempts.saturating_add(state.attempts),
            next_attempt_ms: state.next_attempt_ms,
            last_error: state.last_error.clone(),
        }
    }
}

struct Meta {
    envelope: Envelope,
    state: State,
    file_len: u64,
    /// A try is in flight: not picked again.
    busy: bool,
}

#[derive(Default)]
struct Index {
    entries: BTreeMap<String, Meta>,
    bytes: u64,
    /// Space promised to writes still under way, so concurrent enqueues cannot overshoot.
    reserved_entries: usize,
    reserved_bytes: u64,
}

/// The spool: open once per process, share as `Arc<Spool>`, start [`Spool::run`] once.
pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    hostname: String,
    metrics: Option<Arc<Metrics>>,
    /// Where a linked copy's delivery or bounce is recorded (see [`AuditLink`]).
    audit: Option<Arc<AuditLog>>,
    index: Arc<Mutex<Index>>,
    wake: Arc<Notify>,
    /// Damaged entries moved aside by `open`, counted once metrics are attached.
    quarantined_at_open: u64,
    /// Held for the life of the Spool: the flock on `lock`.
    _lock: File,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("dir", &self.dir).finish()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Time, then a per-process sequence (ids made in one millisecond still sort in spooling order),
/// then randomness (no clash with ids from before a restart).
fn new_id(created_ms: u64) -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xff_ffff;
    let rnd = rand::random::<u64>() & 0xff_ffff_ffff;
    format!("{created_ms:013}-{seq:06x}{rnd:010x}")
}

/// Header section of `data` for a delivery report, cut at a line end if very large.
fn report_header(data: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(data, b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| memchr::memmem::find(data, b"\n\n").map(|p| p + 1))
        .unwrap_or(data.len());
    let header = &data[..end];
    if header.len() <= REPORT_HEADER_MAX {
        return header;
    }
    let cut = memchr::memrchr(b'\n', &header[..REPORT_HEADER_MAX]).map_or(0, |p| p + 1);
    &header[..cut]
}

fn lock_folder(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening spool lock {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        anyhow::bail!(
            "spool folder {} is in use by another bccguard process ({e}); each relay needs a \
             spool folder of its own",
            dir.display()
        );
    }
    Ok(f)
}

/// Whether a relay holds the folder's lock right now (for `spool flush`).
pub fn relay_running(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0
}

/// What [`scan`] finds: the entries, oldest first, and damaged files with why.
pub type ScanResult = (Vec<SpoolEntryInfo>, Vec<(PathBuf, String)>);

/// Every entry in `dir`, read without the lock (for `spool list` while the relay runs): the
/// good ones, and the damaged ones with why.
pub fn scan(dir: &Path) -> io::Result<ScanResult> {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for path in entry_files(dir)? {
        match file::read_head(&path) {
            Ok(head) => good.push(SpoolEntryInfo::new(&head.envelope, &head.state)),
            // Delivered while we were listing.
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bad.push((path, e.to_string())),
        }
    }
    good.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((good, bad))
}

/// Paths of `*.copy` files with an id we could have made.
fn entry_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        let path = ent.path();
        let is_entry = path.extension().is_some_and(|e| e == file::ENTRY_EXT)
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(file::valid_id);
        if is_entry && ent.file_type()?.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// What `config check` verifies without touching anything: the folder (or the nearest existing
/// parent it would be created in) is a writable directory.
pub fn preflight(cfg: &SpoolConfig) -> anyhow::Result<()> {
    let mut at = cfg.path.as_path();
    loop {
        if at.exists() {
            anyhow::ensure!(at.is_dir(), "spool.path: {} is not a folder", at.display());
            let c = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())
                .context("spool.path contains a NUL byte")?;
            // SAFETY: access() only reads the NUL-terminated path we pass.
            let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
            anyhow::ensure!(
                rc == 0,
                "spool.path: {} is not writable by this user ({})",
                at.display(),
                io::Error::last_os_error()
            );
            return Ok(());
        }
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Ok(()), // relative path under the current folder
        }
    }
}

impl Spool {
    /// Opens (creating, mode 0700) the spool folder, takes its lock, removes temp files left by a
    /// crash, moves damaged entries to `corrupt/`, and indexes the entries waiting.
    pub fn open(cfg: &SpoolConfig) -> anyhow::Result<Spool> {
        let dir = cfg.path.clone();
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating spool folder {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on spool folder {}", dir.display()))?;
        let lock = lock_folder(&dir)?;

        let mut removed_tmp = 0;
        for ent in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = ent?.path();
            if path.extension().is_some_and(|e| e == file::TMP_EXT) {
                fs::remove_file(&path)
                    .with_context(|| format!("removing temp file {}", path.display()))?;
                removed_tmp += 1;
            }
        }
        if removed_tmp > 0 {
            file::sync_dir(&dir)?;
            tracing::warn!(
                count = removed_tmp,
                "spool: removed unfinished temp files (their messages were never acknowledged)"
            );
        }

        let mut index = Index::default();
        let mut quarantined = 0u64;
        for path in entry_files(&dir).with_context(|| format!("reading {}", dir.display()))? {
            match file::read_head(&path) {
                Ok(head) => {
                    let mut state = head.state;
                    if head.state_lost {
                        tracing::warn!(file = %path.display(), "spool: retry state torn; retrying now");
                    }
                    if head.state_lost || state.next_attempt_ms == 0 {
                        state.next_attempt_ms = now_ms();
                    }
                    index.bytes += head.file_len;
                    index.entries.insert(
                        head.envelope.id.clone(),
                        Meta {
                            envelope: head.envelope,
                            state,
                            file_len: head.file_len,
                            busy: false,
                        },
                    );
                }
                Err(ReadError::Corrupt(why)) => {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let to = file::quarantine(&dir, &name)
                        .with_context(|| format!("moving damaged {} aside", path.display()))?;
                    tracing::error!(file = %to.display(), %why, "spool: damaged entry moved aside, not sent");
                    quarantined += 1;
                }
                Err(ReadError::Io(e)) => {
                    return Err(e).with_context(|| format!("reading {}", path.display()))
                }
            }
        }
        if !index.entries.is_empty() {
            tracing::info!(
                copies = index.entries.len(),
                bytes = index.bytes,
                folder = %dir.display(),
                "spool: copies waiting from before the restart"
            );
        }
        let spool = Spool {
            dir,
            cfg: cfg.clone(),
            hostname: "localhost".to_string(),
            metrics: None,
            audit: None,
            index: Arc::new(Mutex::new(index)),
            wake: Arc::new(Notify::new()),
            quarantined_at_open: quarantined,
            _lock: lock,
        };
        Ok(spool)
    }

    /// The host name delivery reports say they come from (`[server] hostname`).
    pub fn with_reporting_host(mut self, hostname: &str) -> Spool {
        self.hostname = hostname.to_string();
        self
    }

    /// Records what becomes of linked copies as outcomes of their decisions in `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Spool {
        self.audit = Some(audit);
        self
    }

    /// Exports depth, bytes, oldest age and events to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Spool {
        for _ in 0..self.quarantined_at_open {
            metrics.spool_event(SpoolEvent::Quarantined);
        }
        self.metrics = Some(metrics);
        self.publish_gauges();
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves consistent-enough data (plain fields).
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn event(&self, e: SpoolEvent) {
        if let Some(m) = &self.metrics {
            m.spool_event(e);
        }
    }

    fn publish_gauges(&self) {
        if let Some(m) = &self.metrics {
            let st = self.status();
            m.spool_state(st.entries, self.index().bytes, st.oldest_age);
        }
    }

    /// For `ProbeHealth::spool`: the status callback and `health_max_age_seconds` (None = off).
    pub fn health_probe(self: &Arc<Self>) -> (crate::metrics::SpoolStatusFn, Option<Duration>) {
        let spool = self.clone();
        let max = self.cfg.health_max_age_seconds;
        (
            Arc::new(move || spool.status()),
            (max > 0).then(|| Duration::from_secs(max)),
        )
    }

    /// Copies waiting and the age of the oldest (for `/healthz`).
    pub fn status(&self) -> SpoolStatus {
        let idx = self.index();
        let oldest = idx.entries.values().map(|m| m.envelope.created_ms).min();
        SpoolStatus {
            entries: idx.entries.len(),
            oldest_age: oldest
                .map(|c| Duration::from_millis(now_ms().saturating_sub(c)))
                .unwrap_or_default(),
        }
    }

    /// The copies waiting, oldest first.
    pub fn list(&self) -> Vec<SpoolEntryInfo> {
        self.index()
            .entries
            .values()
            .map(|m| SpoolEntryInfo::new(&m.envelope, &m.state))
            .collect()
    }

    /// Makes every waiting copy due now and wakes the retry task.
    pub fn flush(&self) {
        let now = now_ms();
        for m in self.index().entries.values_mut() {
            m.state.next_attempt_ms = m.state.next_attempt_ms.min(now);
        }
        self.wake.notify_one();
    }

    /// Makes `job` durable; returns once it is on disk, or Err (spool full, disk error).
    /// The first retry is `backoff_initial_seconds` from now (the session has just tried).
    pub async fn enqueue(&self, job: SpoolJob) -> Result<SpoolId, SpoolError> {
        let first = now_ms().saturating_add(self.cfg.backoff_initial_seconds.saturating_mul(1000));
        self.enqueue_at(job, first, true).await
    }

    async fn enqueue_at(
        &self,
        job: SpoolJob,
        first_attempt_ms: u64,
        limited: bool,
    ) -> Result<SpoolId, SpoolError> {
        if job.rcpt.is_empty() {
            return Err(SpoolError::Invalid("no recipient"));
        }
        let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if bad(&job.from) || bad(&job.params) || bad(&job.rcpt) {
            return Err(SpoolError::Invalid("line break or NUL in the envelope"));
        }
        let created_ms = now_ms();
        let envelope = Envelope {
            id: new_id(created_ms),
            from: job.from,
            params: job.params,
            rcpt: job.rcpt,
            created_ms,
            size: job.data.len() as u64,
            prior_attempts: job.attempts,
            audit: job.audit,
        };
        let state = State {
            attempts: 0,
            next_attempt_ms: first_attempt_ms,
            last_error: job.last_error,
        };
        let io_err = |source| SpoolError::Io {
            dir: self.dir.display().to_string(),
            source,
        };
        let len = file::file_len(&envelope).map_err(io_err)?;
        {
            let mut idx = self.index();
            let entries = idx.entries.len() + idx.reserved_entries;
            let bytes = idx.bytes + idx.reserved_bytes;
            // Reports replacing a bounced copy bypass the limits: they free more than they take.
            if limited
                && (entries + 1 > self.cfg.max_entries
                    || bytes.saturating_add(len) > self.cfg.max_bytes)
            {
                return Err(SpoolError::Full {
                    entries,
                    bytes,
                    max_entries: self.cfg.max_entries,
                    max_bytes: self.cfg.max_bytes,
                });
            }
            idx.reserved_entries += 1;
            idx.reserved_bytes += len;
        }
        // The blocking task finishes the bookkeeping itself, so a caller that gives up waiting
        // (client gone) still leaves a consistent index: the file is then delivered anyway.
        let dir = self.dir.clone();
        let index = self.index.clone();
        let wake = self.wake.clone();
        let id = envelope.id.clone();
        let data = job.data;
        let written = tokio::task::spawn_blocking(move || {
            let result = file::write_new(&dir, &envelope, &state, &data);
            let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
            idx.reserved_entries -= 1;
            idx.reserved_bytes -= len;
            if let Ok(file_len) = result {
                idx.bytes += file_len;
                idx.entries.insert(
                    envelope.id.clone(),
                    Meta {
                        envelope,
                        state,
                        file_len,
                        busy: false,
                    },
                );
                wake.notify_one();
            }
            result
        })
        .await;
        match written {
            Ok(Ok(_)) => {
                self.event(SpoolEvent::Enqueued);
                self.publish_gauges();
                Ok(SpoolId(id))
            }
            Ok(Err(e)) => Err(io_err(e)),
            Err(e) => Err(SpoolError::Task(e.to_string())),
        }
    }

    /// Retries due copies until `shutdown` turns true (or its sender is dropped): deletes a copy
    /// on 2xx, bounces it on 5xx or after the lifetime, otherwise waits with exponential backoff.
    pub async fn run<S: CopySender>(
        self: Arc<Self>,
        sender: S,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let sender = Arc::new(sender);
        let mut tasks: JoinSet<()> = JoinSet::new();
        let trigger = self.dir.join(FLUSH_TRIGGER);
        let mut next_tick = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            if tokio::time::Instant::now() >= next_tick {
                next_tick = tokio::time::Instant::now() + TICK;
                if tokio::fs::try_exists(&trigger).await.unwrap_or(false) {
                    let _ = tokio::fs::remove_file(&trigger).await;
                    tracing::info!("spool: flush requested; retrying every copy now");
                    self.flush();
                }
                self.publish_gauges();
            }
            let slots = self.cfg.parallel.saturating_sub(tasks.len());
            let (due, next_due) = self.take_due(slots);
            for id in due {
                tasks.spawn(self.clone().attempt(sender.clone(), id));
            }
            let now = now_ms();
            // With every slot taken, a due copy waits for a try to finish (join_next below).
            let until_due = match next_due {
                Some(t) if tasks.len() < self.cfg.parallel => {
                    Duration::from_millis(t.saturating_sub(now))
                }
                _ => TICK,
            };
            let sleep =
                tokio::time::sleep_until(next_tick.min(tokio::time::Instant::now() + until_due));
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!("spool: a delivery try failed to finish: {e}");
                    }
                }
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                "spool: tries still in flight at shutdown abandoned; retried after restart"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Tries abandoned above leave their entries marked busy; they are on disk and the next
        // open indexes them afresh.
    }

    /// Marks up to `slots` due copies busy and returns them, plus when the next idle copy is due.
    fn take_due(&self, slots: usize) -> (Vec<String>, Option<u64>) {
        let now = now_ms();
        let mut idx = self.index();
        let mut due: Vec<(&String, u64)> = idx
            .entries
            .iter()
            .filter(|(_, m)| !m.busy && m.state.next_attempt_ms <= now)
            .map(|(id, m)| (id, m.state.next_attempt_ms))
            .collect();
        due.sort_by_key(|&(_, t)| t);
        let picked: Vec<String> = due
            .into_iter()
            .take(slots)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &picked {
            if let Some(m) = idx.entries.get_mut(id) {
                m.busy = true;
            }
        }
        let next = idx
            .entries
            .values()
            .filter(|m| !m.busy)
            .map(|m| m.state.next_attempt_ms)
            .min();
        (picked, next)
    }

    async fn attempt<S: CopySender>(self: Arc<Self>, sender: Arc<S>, id: String) {
        let path = file::entry_path(&self.dir, &id);
        let loaded = tokio::task::spawn_blocking(move || file::read_full(&path)).await;
        let (head, data) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(ReadError::Corrupt(why))) => {
                let dir = self.dir.clone();
                let name = format!("{id}.{}", file::ENTRY_EXT);
                let moved =
                    tokio::task::spawn_blocking(move || file::quarantine(&dir, &name)).await;
                tracing::error!(%id, %why, ?moved, "spool: damaged entry moved aside, not sent");
                self.event(SpoolEvent::Quarantined);
                self.forget(&id);
                return;
            }
            Ok(Err(ReadError::Io(e))) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(%id, "spool: entry file gone (removed by hand?); forgetting it");
                self.forget(&id);
                return;
            }
            Ok(Err(e)) => {
                self.defer(&id, format!("reading spool file: {e}"), None)
                    .await;
                return;
            }
            Err(e) => {
                self.defer(&id, format!("reading spool file: {e}"), None)
                    .await;
                return;
            }
        };
        let env = head.envelope;
        let send = sender.send_copy(&env.from, &env.params, &env.rcpt, &data);
        let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, send).await {
            Ok(r) => r,
            Err(_) => Err(format!("no result within {} s", ATTEMPT_TIMEOUT.as_secs())),
        };
        match result {
            Ok(r) if r.is_positive() => {
                let dir = self.dir.clone();
                let rid = id.clone();
                let removed = tokio::task::spawn_blocking(move || file::remove(&dir, &rid)).await;
                match removed {
                    Ok(Ok(())) => {}
                    // Forgotten anyway: retrying would send it again now; after a restart the
                    // file is picked up and sent once more (the at-least-once case).
                    Ok(Err(e)) => tracing::error!(%id, "spool: delivered but not deleted: {e}"),
                    Err(e) => tracing::error!(%id, "spool: delivered but not deleted: {e}"),
                }
                tracing::info!(%id, rcpt = %env.rcpt, reply = %r, "spool: copy delivered");
                self.event(SpoolEvent::Delivered);
                self.forget(&id);
                self.record_settled(&id, &env, OutcomeResult::Delivered, &r.to_string())
                    .await;
            }
            Ok(r) if r.is_permanent() => self.bounce(&id, &env, &data, r.to_string()).await,
            Ok(r) => self.defer(&id, r.to_string(), Some((&env, &data))).await,
            Err(why) => self.defer(&id, why, Some((&env, &data))).await,
        }
    }

    fn forget(&self, id: &str) {
        let mut idx = self.index();
        if let Some(m) = idx.entries.remove(id) {
            idx.bytes = idx.bytes.saturating_sub(m.file_len);
        }
        drop(idx);
        self.publish_gauges();
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let initial = self.cfg.backoff_initial_seconds;
        let secs = initial
            .saturating_mul(1u64 << attempts.min(40))
            .min(self.cfg.backoff_max_seconds);
        Duration::from_secs(secs)
    }

    /// A temporary failure: bounce if the lifetime is over, else schedule the next try.
    /// `msg` is None when the message itself could not be read (then it cannot expire yet).
    async fn defer(&self, id: &str, why: String, msg: Option<(&Envelope, &[u8])>) {
        let now = now_ms();
        let lifetime_ms = self.cfg.max_lifetime_seconds.saturating_mul(1000);
        let (state, expired) = {
            let mut idx = self.index();
            let Some(m) = idx.entries.get_mut(id) else {
                return;
            };
            let expires_ms = m.envelope.created_ms.saturating_add(lifetime_ms);
            m.state.attempts = m.state.attempts.saturating_add(1);
            m.state.last_error = Some(why.clone());
            let delay = self.backoff(m.state.attempts).as_millis() as u64;
            // One last try when the lifetime ends, so expiry is on time.
            m.state.next_attempt_ms = now.saturating_add(delay).min(expires_ms.max(now));
            (m.state.clone(), now >= expires_ms)
        };
        if expired {
            if let Some((env, data)) = msg {
                let days = self.cfg.max_lifetime_seconds as f64 / 86_400.0;
                let reason = format!(
                    "554 5.4.7 Delivery time expired: not delivered within {days:.1} days; last error: {why}"
                );
                self.bounce(id, env, data, reason).await;
                return;
            }
        }
        tracing::info!(%id, attempts = state.attempts, error = %why, "spool: copy deferred");
        self.event(SpoolEvent::Deferred);
        self.store_state(id, state).await;
    }

    /// Persists retry state, then lets the entry be picked again.
    async fn store_state(&self, id: &str, state: State) {
        let path = file::entry_path(&self.dir, id);
        let written = tokio::task::spawn_blocking(move || file::update_state(&path, &state)).await;
        match written {
            Ok(Ok(())) => {}
            // Only bookkeeping is lost: after a restart the copy is simply retried at once.
            Ok(Err(e)) => tracing::warn!(%id, "spool: retry state not saved: {e}"),
            Err(e) => tracing::warn!(%id, "spool: retry state not saved: {e}"),
        }
        if let Some(m) = self.index().entries.get_mut(id) {
            m.busy = false;
        }
    }

    /// Replaces the copy by a delivery report to its sender (itself spooled, from `<>`).
    async fn bounce(&self, id: &str, env: &Envelope, data: &[u8], reason: String) {
        if env.from.is_empty() {
            tracing::error!(%id, rcpt = %env.rcpt, %reason, "spool: undeliverable copy from <> dropped (a report is never bounced)");
            self.remove_entry(id, SpoolEvent::Dropped).await;
            return;
        }
        let report = crate::generated::dsn::failure_report(
            &self.hostname,
            &env.from,
            report_header(data),
            &[(env.rcpt.clone(), reason.clone())],
        );
        let job = SpoolJob {
            from: String::new(),
            params: String::new(),
            rcpt: env.from.clone(),
            data: report,
            attempts: 0,
            last_error: None,
            audit: None,
        };
        match self.enqueue_at(job, now_ms(), false).await {
            Ok(report_id) => {
                tracing::warn!(%id, rcpt = %env.rcpt, %reason, %report_id, "spool: copy bounced; report to the sender queued");
                self.remove_entry(id, SpoolEvent::Bounced).await;
                let detail = format!("bounced, report {report_id} queued: {reason}");
                self.record_settled(id, env, OutcomeResult::Refused, &detail)
                    .await;
            }
            Err(e) => {
                // Keep the copy: the bounce is tried again at its next turn.
                tracing::error!(%id, "spool: cannot queue the delivery report: {e}");
                let state = {
                    let mut idx = self.index();
                    let Some(m) = idx.entries.get_mut(id) else {
                        return;
                    };
                    m.state.attempts = m.state.attempts.saturating_add(1);
                    m.state.last_error = Some(reason);
                    m.state.next_attempt_ms =
                        now_ms().saturating_add(self.backoff(m.state.attempts).as_millis() as u64);
                    m.state.clone()
                };
                self.store_state(id, state).await;
            }
        }
    }

    /// A linked copy left the spool: one more outcome of its decision (the audit log drops
    /// addresses quoted in `detail`). The copy is gone either way (delivered or replaced by a
    /// report), so a failure to record is logged, not retried;
    /// `audit verify` still shows the decision's own outcome (`spooled`).
    async fn record_settled(&self, id: &str, env: &Envelope, result: OutcomeResult, detail: &str) {
        let (Some(log), Some(link)) = (self.audit.as_ref(), env.audit.as_ref()) else {
            return;
        };
        let written = log
            .record_outcome(AuditOutcome {
                decision_seq: link.decision_seq,
                session: link.session.clone(),
                upstream: Some(format!("spooled copy {id}: {detail}")),
                header_digest_forwarded: None,
                result,
            })
            .await;
        if let Err(e) = written {
            tracing::error!(%id, decision_seq = link.decision_seq, "spool: audit outcome not written: {e}");
        }
    }

    async fn remove_entry(&self, id: &str, event: SpoolEvent) {
        let dir = self.dir.clone();
        let rid = id.to_string();
        match tokio::task::spawn_blocking(move || file::remove(&dir, &rid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(%id, "spool: cannot delete entry: {e}"),
            Err(e) => tracing::error!(%id, "spool: cannot delete entry: {e}"),
        }
        self.event(event);
        self.forget(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_header_stops_at_the_blank_line() {
        assert_eq!(
            report_header(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(report_header(b"A: 1\n\nbody"), b"A: 1\n");
        let big = "X: yyyyyyyyyy\r\n".repeat(10_000);
        let h = report_header(big.as_bytes());
        assert!(h.len() <= REPORT_HEADER_MAX && h.ends_with(b"\r\n"));
    }

    #[test]
    fn preflight_names_an_unusable_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        let mut cfg = SpoolConfig {
            path: file.join("spool"),
            ..SpoolConfig::default()
        };
        let err = preflight(&cfg).unwrap_err().to_string();
        assert!(err.contains("is not a folder"), "{err}");
        cfg.path = dir.path().join("a/b/spool");
        preflight(&cfg).unwrap();
        assert!(
            !dir.path().join("a").exists(),
            "preflight must not create anything"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpoolConfig {
            path: dir.path().join("s"),
            backoff_initial_seconds: 60,
            backoff_max_seconds: 3600,
            ..SpoolConfig::default()
        };
        let s = Spool::open(&cfg).unwrap();
        let secs: Vec<u64> = (0..9).map(|a| s.backoff(a).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(s.backoff(u32::MAX).as_secs(), 3600);
    }
}
