//! Audit: the tamper-evident JSON Lines record of every intervention (SPEC section 5).
//! Beside the pipe, not in it: the delivery stage hands it an event and waits for the fsync.
//!
//! # Record format
//! One JSON object per line (LF), members in this fixed order:
//! `time` (RFC 3339 UTC, microseconds), `seq` (1, 2, 3… across restarts and rotation),
//! `session`, `client`, `auth_user`, `sender` (as given: it is the organisation's own user),
//! `message_id`, `rule`, `action` (the rule's action), `mode` (`enforce`|`monitor`), `would`
//! (true in monitor mode for a non-accept action: nothing was done), `reason`, `visible_count`,
//! `visible_external`, `external_domains`, `envelope_recipients`, `recipients_mode`
//! (`hmac`|`plain`|`none`), `recipients` (the visible addresses as `hmac:<hex>` =
//! HMAC-SHA256 under the key file of the address with its domain lower-cased; or the addresses
//! for `plain`; the member is absent for `none`), `upstream` (its reply, or null),
//! `policy_version`, `header_digest_original`, `header_digest_forwarded`, `prev`, `hash`.
//! Absent optional values are `null` (except `recipients`, which is left out).
//!
//! # Hash chain
//! The *canonical bytes* of a record are its line without the `hash` member: the compact JSON
//! (serde_json, no spaces, members in the order above) ending in `}`. `hash` is the lower-case
//! hex SHA-256 of those bytes; the written line is the canonical bytes with `,"hash":"<hex>"`
//! inserted before the final `}`. So a verifier strips the trailing `,"hash":"<hex>"}` member,
//! appends `}` and hashes: it depends on bytes only, not on knowing the fields. `prev` is the
//! previous record's `hash`, [`GENESIS`] (64 zeros) for the first record ever.
//!
//! # Files
//! The log at `path` rotates, when it grows past `rotate_bytes` (> 0), to
//! `<path>.<YYYYMMDDTHHMMSSZ>.<last seq, 12 digits>`; the new file's first record chains to the
//! rotated file's last. `<path>.lock` (an advisory `flock`) keeps a second process from writing
//! the same chain: the second one stays unwritable until the first lets go.
//! On open the last line is checked: an incomplete line (no LF) or one that is not a JSON record
//! is a write torn by a crash (it was never acknowledged); it is copied to
//! `<path>.torn-<time>`, cut off, a warning is logged, and the chain continues from the last
//! complete record. A complete record with a wrong hash is left alone for `verify` to report.
//! If the file is moved or removed while open, the next batch notices (inode check) and starts
//! a new file that continues the chain.
//!
//! # Verifying
//! [`verify`] reads the file set (rotated files by seq, then the current file) and checks each
//! line's hash, `prev` = previous `hash`, `seq` = previous + 1, and that a rotated file ends at
//! the seq in its name. If the oldest file present does not start at [`GENESIS`], the report
//! says where it continues from (older files archived away) and is still intact. On a live log
//! (lock held) a transient break from a half-appended line or a rotation is re-checked.
//!
//! # Durability and failures
//! A single writer thread does group commit: it takes everything queued, writes it with one
//! `write`, one `sync_data`, then answers each `record` with its seq. `record` never blocks the
//! async runtime. When the log cannot be written (directory gone or read-only, disk full, a
//! directory where the file should be, lock held by another process, key file missing and not
//! creatable), `record` returns Err, `is_writable` turns false, and the writer re-opens the log
//! every [`PROBE_INTERVAL`] (and on the next record) so it heals without a restart. Before it
//! reports "writable" again (and at open) it writes and syncs 4 KiB to `<path>.probe` and
//! removes it, so a full disk is not reported healed just because the file could be re-opened.
//! After a failed write the file is cut back and its tail re-read before the next write, so no
//! seq is used twice. `open` fails only for configuration nonsense: a `path` without a file
//! name, `hmac` without a key file path, a key file that is not a hex key of 16+ bytes.
//! The key file is created (32 random bytes, hex, mode 0600) when missing; an existing one that
//! group or others can read is used with a warning rather than refused (refusing would stop all
//! mail for a permission slip).
//!
//! # Metrics
//! [`AuditLog::stats`] (and the shortcuts [`AuditLog::fsync_count`],
//! [`AuditLog::last_write_micros`]) expose plain counters: records, fsyncs, write errors, the
//! last group commit's duration and size, the last seq. Reading them is a few atomic loads.
//!
//! # Limits
//! A hash chain cannot show that records were cut off the *end* of the newest file. The
//! relay logs the chain head (seq and hash) when it opens the log, and rotated files carry
//! their last seq in their name, which `verify` checks; compare the head with that log line
//! or with [`AuditLog::stats`] to catch a truncation. Nothing here logs an address through
//! `tracing`: the sender and the recipients go into the audit file only.

mod pseudonym;
mod reader;
mod record;
mod writer;

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use anyhow::Context;
use tokio::sync::oneshot;

use crate::config::{Action, AuditConfig, Mode, RecipientStorage};

pub use pseudonym::{normalise as normalise_address, HmacKey, KeyError, PREFIX as HMAC_PREFIX};
pub use reader::{
    file_set, for_each_record, is_live, rotated_files, snapshot, torn_files, verify, ChainBreak,
    Entry, VerifyError, VerifyReport,
};
pub use record::{check_line, Record, GENESIS};
pub use writer::PROBE_INTERVAL;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("audit log lock {0} is held by another process (a second bccguard on the same log?)")]
    Locked(String),
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
}

/// What the delivery stage knows about one message when it is done.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub session: String,
    pub client: String,
    pub auth_user: Option<String>,
    pub sender: String,
    pub message_id: Option<String>,
    pub rule: Option<String>,
    /// The rule's action (in monitor mode: what would have been done).
    pub action: Action,
    pub mode: Mode,
    pub reason: String,
    /// Visible addresses (pseudonymised or dropped per config before writing).
    pub visible: Vec<String>,
    pub visible_external: usize,
    pub external_domains: usize,
    pub envelope_recipients: usize,
    /// The reply the upstream gave (None when nothing was sent).
    pub upstream: Option<String>,
    pub header_digest_original: String,
    pub header_digest_forwarded: Option<String>,
}

/// A snapshot of the writer's counters, for metrics and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditStats {
    pub writable: bool,
    /// Records made durable since open.
    pub records: u64,
    /// `sync_data` calls on the log (one per group commit; directory syncs not counted).
    pub fsyncs: u64,
    /// Batches that failed to write or sync.
    pub write_errors: u64,
    /// Duration of the last group commit's write + `sync_data`, microseconds.
    pub last_write_micros: u64,
    /// Records in the last successful group commit.
    pub last_batch: u64,
    /// Seq of the newest record on disk (0 = none yet).
    pub last_seq: u64,
}

pub struct AuditLog {
    cfg: AuditConfig,
    stats: Arc<writer::Stats>,
    policy_version: RwLock<Arc<str>>,
    tx: Option<Sender<writer::Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl AuditLog {
    /// Opens (creating if needed) the log. Never fails for an unwritable log: the relay starts and
    /// answers 451 4.3.0 to messages that need a record, and `is_writable` reports false.
    /// Fails for configuration nonsense: no file name in `path`, no key file path in `hmac`
    /// mode, a key file that is not a key.
    pub fn open(cfg: &AuditConfig, policy_version: &str) -> anyhow::Result<AuditLog> {
        if cfg.path.file_name().is_none() {
            anyhow::bail!("audit.path `{}` does not name a file", cfg.path.display());
        }
        if cfg.recipients == RecipientStorage::Hmac && cfg.hmac_key_file.as_os_str().is_empty() {
            anyhow::bail!("audit.hmac_key_file must be set when audit.recipients = \"hmac\"");
        }
        let stats = Arc::new(writer::Stats::default());
        let mut w = writer::Writer::new(cfg.clone(), Arc::clone(&stats));
        match w.reopen().and_then(|()| w.write_test()) {
            Ok(()) => {
                stats.writable.store(true, Ordering::SeqCst);
                let (seq, hash) = w.head().cloned().unwrap_or((0, GENESIS.to_string()));
                tracing::info!(
                    path = %cfg.path.display(),
                    last_seq = seq,
                    last_hash = %hash,
                    recipients = %cfg.recipients,
                    "audit log open"
                );
            }
            Err(e) if writer::is_fatal(&e) => return Err(e).context("audit log"),
            Err(e) => tracing::error!(
                path = %cfg.path.display(),
                "audit log not writable ({e}); messages that need a record get 451 until it is fixed"
            ),
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bccguard-audit".to_string())
            .spawn(move || w.run(rx))
            .context("starting the audit writer thread")?;
        Ok(AuditLog {
            cfg: cfg.clone(),
            stats,
            policy_version: RwLock::new(Arc::from(policy_version)),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Cheap: the writer's last known state (last write, or last probe).
    pub fn is_writable(&self) -> bool {
        self.stats.writable.load(Ordering::SeqCst)
    }

    /// Whether a message with this decision gets a record.
    pub fn wants(&self, action: Action, mode: Mode) -> bool {
        let _ = mode;
        action != Action::Accept || self.cfg.log_accepts
    }

    pub fn set_policy_version(&self, version: &str) {
        let mut pv = self
            .policy_version
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *pv = Arc::from(version);
    }

    fn send(&self, msg: writer::Msg) -> Result<(), AuditError> {
        self.tx
            .as_ref()
            .ok_or_else(|| AuditError::Unavailable("audit log closed".into()))?
            .send(msg)
            .map_err(|_| AuditError::Unavailable("audit writer thread stopped".into()))
    }

    /// Appends one record and returns once it is fsynced; returns its sequence number.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let policy_version = Arc::clone(
            &self
                .policy_version
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let (reply, rx) = oneshot::channel();
        self.send(writer::Msg::Record(Box::new(writer::Pending {
            event,
            policy_version,
            reply,
        })))?;
        rx.await
            .map_err(|_| AuditError::Unavailable("audit writer thread stopped".into()))?
    }

    /// Asks the writer to re-check the log now (instead of at the next [`PROBE_INTERVAL`]) and
    /// returns whether it is writable.
    pub async fn probe(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.send(writer::Msg::Probe(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub fn stats(&self) -> AuditStats {
        let s = &self.stats;
        AuditStats {
            writable: s.writable.load(Ordering::SeqCst),
            records: s.records.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            last_write_micros: s.last_write_micros.load(Ordering::Relaxed),
            last_batch: s.last_batch.load(Ordering::Relaxed),
            last_seq: s.last_seq.load(Ordering::Relaxed),
        }
    }

    /// `sync_data` calls so far (group commit makes this smaller than the record count).
    pub fn fsync_count(&self) -> u64 {
        self.stats.fsyncs.load(Ordering::Relaxed)
    }

    /// How long the last group commit (write + `sync_data`) took, in microseconds.
    pub fn last_write_micros(&self) -> u64 {
        self.stats.last_write_micros.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &AuditConfig {
        &self.cfg
    }
}

impl Drop for AuditLog {
    /// Closes the channel and waits for the writer to finish its batch and release the lock, so
    /// a new `AuditLog` on the same path can take over at once.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Hex SHA-256 of a header section, so a record proves which header went in and out.
pub fn header_digest(header: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(header))
}
