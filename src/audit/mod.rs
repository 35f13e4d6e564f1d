//! Audit: the tamper-evident JSON Lines record of every intervention (SPEC section 5).
//! Beside the pipe, not in it: the delivery stage hands it an event and waits for the fsync.
//!
//! # Record format
//! One JSON object per line (LF), at most [`MAX_RECORD_BYTES`] long. Every line has `time`,
//! `seq`, `kind`, `prev` and `hash`; `kind` says what the line is:
//! - `decision`: an intervention about to be forwarded, fsynced before anything is handed to the
//!   upstream ([`AuditLog::record_decision`]); `upstream` is null, the reply is in its outcome.
//! - `outcome`: what became of a decision ([`AuditLog::record_outcome`]): `time`, `seq`, `kind`,
//!   `session`, `decision_seq` (the decision's seq), `result` (`delivered` | `refused` |
//!   `spooled` | `failed`, see [`OutcomeResult`]), `upstream`, `header_digest_forwarded`, `prev`,
//!   `hash`. A decision without an outcome means the relay stopped (or could not write) after
//!   forwarding; `verify` lists such decisions and still passes. A split copy that went to the
//!   spool adds one more outcome of its decision when it leaves the spool: `delivered`, or
//!   `refused` when it was bounced (`upstream` = `spooled copy <id>: <reply>`).
//! - `record`: a complete one-shot record, for a message refused here (nothing forwarded)
//!   ([`AuditLog::record`]). Lines written before kinds existed have no `kind`: read as `record`.
//! - `key`: a new HMAC key is in force from here on: `time`, `seq`, `kind`, `key_id` (hex
//!   HMAC-SHA256 of `bccguard-key-id` under the key; never the key), `key_file`, `reason`,
//!   `prev`, `hash`.
//!
//! `decision` and `record` lines have these members, in this fixed order:
//! `time` (RFC 3339 UTC, microseconds), `seq` (1, 2, 3… across restarts and rotation), `kind`,
//! `session`, `client`, `auth_user`, `sender` (as given: it is the organisation's own user),
//! `message_id`, `rule`, `action` (the rule's action), `mode` (`enforce`|`monitor`), `would`
//! (true in monitor mode for a non-accept action: nothing was done), `reason`, `visible_count`,
//! `visible_external`, `external_domains`, `envelope_recipients`, `recipients_mode`
//! (`hmac`|`plain`|`none`), `recipients` (the visible addresses as `hmac:<hex>` =
//! HMAC-SHA256 under the key file of the address with its domain lower-cased; or the addresses
//! for `plain`; the member is absent for `none`), `recipients_summary` (only when `recipients`
//! does not list them all), `upstream` (its reply with every word holding an `@` written
//! `[address]`: refusals quote recipients; or null), `policy_version`,
//! `header_digest_original`, `header_digest_forwarded`, `prev`, `hash`.
//! Absent optional values are `null` (except `recipients` and `recipients_summary`, which are
//! left out).
//!
//! # Bounded size
//! Up to 500 visible recipients are listed in full (if the line still fits). Beyond that, or
//! when the line would not fit, `recipients` keeps the first [`LISTED_WHEN_SUMMARISED`] (or
//! fewer) and `recipients_summary` = `{"count": N, "listed": K, "sha256": hex}`, the SHA-256
//! over all N stored entries (`hmac:<hex>` or plain address) sorted bytewise, each followed by
//! LF ([`recipients_digest`]): an admin with the address list can prove it matches. Free-text
//! values (reason, Message-ID, upstream reply...) are cut to 4 KiB, then 1 KiB, then 64 bytes
//! as needed, ending `…[cut, N bytes in all]`. So every line fits [`MAX_RECORD_BYTES`] (64 KiB).
//! Summarising keeps one 32-byte MAC per address for the sort, not a second list.
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
//! is a write torn by a crash (it was never acknowledged); a complete line that parses as a
//! record is never cut, however long (long lines are parsed as a stream); a torn line is
//! copied to `<path>.torn-<time>`, cut off, a warning is logged, and the chain continues from
//! the last complete record. A complete record with a wrong hash is left alone for `verify` to report.
//! If the file is moved or removed while open, the next batch notices (inode check) and starts
//! a new file that continues the chain.
//!
//! # Verifying
//! [`verify`] reads the file set (rotated files by seq, then the current file) and checks each
//! line's hash, `prev` = previous `hash`, `seq` = previous + 1, and that a rotated file ends at
//! the seq in its name. If the oldest file present does not start at [`GENESIS`], the report
//! says where it continues from (older files archived away) and is still intact. On a live log
//! (lock held) a transient break from a half-appended line or a rotation is re-checked. It
//! counts lines by kind and lists the decisions no outcome line refers to (not a break).
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
//! seq is used twice. `open` fails for configuration nonsense: a `path` without a file
//! name, `hmac` without a key file path, a key file that is not a hex key of 16+ bytes; and
//! when the key file is missing although the log has records ([`AuditError::KeyMissing`]:
//! pseudonyms must never silently change key). The key file is created (32 random bytes, hex,
//! mode 0600) when missing and the log has no records yet, or, with `audit.new_key = true`, on
//! a log with records: then a `key` line is written first. The id of the key in force is kept
//! beside the log (`<path>.key-id`); a key file holding another key while the log has records is
//! refused the same way ([`AuditError::KeyReplaced`]). An existing key file that group or
//! others can read is used with a warning rather than refused (refusing would stop all mail
//! for a permission slip).
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

mod bound;
mod file;
mod key_stamp;
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

pub use bound::{recipients_digest, LISTED_WHEN_SUMMARISED, MAX_RECORD_BYTES};
pub use pseudonym::{normalise as normalise_address, HmacKey, KeyError, PREFIX as HMAC_PREFIX};
pub use reader::{
    file_set, for_each_record, is_live, rotated_files, snapshot, torn_files, verify, ChainBreak,
    Entry, VerifyError, VerifyReport,
};
pub use reader::{for_each_entry, AnyEntry};
pub use record::{
    check_line, AnyRecord, KeyRecord, Kind, OutcomeRecord, OutcomeResult, RecipientSummary, Record,
    GENESIS,
};
pub use writer::{log_has_records, PROBE_INTERVAL};

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
    #[error(
        "audit HMAC key file {key_file} is missing, but the audit log {log} already has records \
         whose recipients were pseudonymised under it. Restore the key file from a backup. To \
         start a new key on purpose instead (older records can then no longer be found by \
         recipient), set audit.new_key = true (or BCCGUARD__AUDIT__NEW_KEY=true) for one start; \
         the change is recorded in the log"
    )]
    KeyMissing { key_file: String, log: String },
    #[error(
        "audit HMAC key file {key_file} holds another key (key_id {file_key}…) than the one the \
         audit log {log} was written with (key_id {log_key}…, recorded in {stamp}); its records \
         could no longer be found by recipient. Put the original key file back. To start a new \
         key on purpose instead, set audit.new_key = true (or BCCGUARD__AUDIT__NEW_KEY=true) for \
         one start; the change is recorded in the log"
    )]
    KeyReplaced {
        key_file: String,
        log: String,
        stamp: String,
        file_key: String,
        log_key: String,
    },
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
    pub visible: crate::policy::AddressSet,
    pub visible_external: usize,
    pub external_domains: usize,
    pub envelope_recipients: usize,
    /// The reply the upstream gave (None when nothing was sent).
    pub upstream: Option<String>,
    pub header_digest_original: String,
    pub header_digest_forwarded: Option<String>,
}

/// What became of a decision (see [`AuditLog::record_decision`]).
#[derive(Debug, Clone)]
pub struct AuditOutcome {
    /// The seq `record_decision` returned.
    pub decision_seq: u64,
    pub session: String,
    /// The upstream's reply (for a split: a summary of the copies), None when nothing was sent.
    pub upstream: Option<String>,
    pub header_digest_forwarded: Option<String>,
    pub result: OutcomeResult,
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

    /// Appends a complete one-shot record (`kind` `record`: the message was refused here,
    /// nothing was forwarded) and returns its seq once it is fsynced.
    pub async fn record(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_event(event, Kind::Record).await
    }

    /// Appends the decision for a message about to be forwarded (`kind` `decision`) and
    /// returns its seq once it is fsynced. Call it before anything is handed to the upstream;
    /// on Err forward nothing and answer `451 4.3.0`. `Ok` means the line is on disk.
    pub async fn record_decision(&self, event: AuditEvent) -> Result<u64, AuditError> {
        self.append_event(event, Kind::Decision).await
    }

    /// Appends what became of a decision (`kind` `outcome`) once the upstream answered (or the
    /// copies were spooled). An Err here cannot be undone for the client any more (the upstream
    /// has the message); `audit verify` then lists the decision as one without an outcome.
    pub async fn record_outcome(&self, outcome: AuditOutcome) -> Result<u64, AuditError> {
        self.append(writer::Entry::Outcome(outcome)).await
    }

    async fn append_event(&self, mut event: AuditEvent, kind: Kind) -> Result<u64, AuditError> {
        // A huge visible list is summarised here, on the blocking pool, so the writer thread
        // (which every other session waits on) only writes; the list's tail is freed early.
        let mut summary = None;
        if event.visible.len() > bound::LIST_ALL_UP_TO {
            let storage = self.cfg.recipients;
            let key = self.stats.key.get().cloned();
            let mut visible = std::mem::take(&mut event.visible);
            let (v, s) = tokio::task::spawn_blocking(move || {
                let s = bound::precompute(storage, key.as_ref(), &mut visible);
                (visible, s)
            })
            .await
            .map_err(|e| AuditError::Unavailable(format!("summarising recipients: {e}")))?;
            event.visible = v;
            summary = s;
        }
        let policy_version = Arc::clone(
            &self
                .policy_version
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        self.append(writer::Entry::Event {
            event,
            kind,
            policy_version,
            summary,
        })
        .await
    }

    async fn append(&self, entry: writer::Entry) -> Result<u64, AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Msg::Record(Box::new(writer::Pending {
            entry,
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

/// What [`AuditLog::open`] would refuse about the HMAC key, checked without creating or
/// writing anything (for `config check`): a key file that is not a key, or a missing key file
/// while the log has records and `new_key` is off. A key file that is missing on an empty log
/// is fine (it is created at start).
pub fn check_key_file(cfg: &AuditConfig) -> Result<(), AuditError> {
    if cfg.recipients != RecipientStorage::Hmac {
        return Ok(());
    }
    match HmacKey::load(&cfg.hmac_key_file) {
        Ok(key) => match key_stamp::read(&cfg.path, &key) {
            Ok(key_stamp::Stamp::Other(log_key)) if !cfg.new_key && has_records(cfg)? => {
                Err(key_replaced(cfg, &key, &log_key))
            }
            Ok(_) => Ok(()),
            Err(source) => Err(AuditError::Io {
                path: key_stamp::path(&cfg.path).display().to_string(),
                source,
            }),
        },
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            if has_records(cfg)? && !cfg.new_key {
                return Err(AuditError::KeyMissing {
                    key_file: cfg.hmac_key_file.display().to_string(),
                    log: cfg.path.display().to_string(),
                });
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn has_records(cfg: &AuditConfig) -> Result<bool, AuditError> {
    log_has_records(&cfg.path).map_err(|source| AuditError::Io {
        path: cfg.path.display().to_string(),
        source,
    })
}

/// The refusal for a key file that holds another key than the log's stamp names.
fn key_replaced(cfg: &AuditConfig, key: &HmacKey, log_key: &str) -> AuditError {
    AuditError::KeyReplaced {
        key_file: cfg.hmac_key_file.display().to_string(),
        log: cfg.path.display().to_string(),
        stamp: key_stamp::path(&cfg.path).display().to_string(),
        file_key: key_stamp::short(&key.key_id()).to_string(),
        log_key: key_stamp::short(log_key).to_string(),
    }
}

/// Hex SHA-256 of a header section, so a record proves which header went in and out.
pub fn header_digest(header: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(header))
}
