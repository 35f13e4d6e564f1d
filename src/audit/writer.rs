//! The one thread that appends to the audit log: group commit (everything queued is written
//! with one `write` and one `sync_data`, then each caller gets its seq), torn-tail repair on
//! (re)open, rotation, the single-writer lock, and the writability flag the relay reads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::bound;
use super::file::{scan_tail, sync_dir};
use super::key_stamp::{self, Stamp};
use super::pseudonym::{HmacKey, KeyError};
use super::reader;
use super::record::{KeyRecord, Kind, GENESIS};
use super::{AuditError, AuditEvent, AuditOutcome};
use crate::config::{AuditConfig, RecipientStorage};

/// How often an idle writer re-checks an unwritable log (and that the file it holds is still
/// the one at the configured path).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Most records in one group commit.
const MAX_BATCH: usize = 4096;

/// Counters the relay's metrics read; updated only by the writer thread.
#[derive(Debug, Default)]
pub struct Stats {
    pub writable: AtomicBool,
    pub records: AtomicU64,
    pub fsyncs: AtomicU64,
    pub write_errors: AtomicU64,
    pub last_write_micros: AtomicU64,
    pub last_batch: AtomicU64,
    pub last_seq: AtomicU64,
    /// The HMAC key once the writer has loaded it, so callers can summarise huge recipient
    /// lists on their side instead of in the writer thread.
    pub key: std::sync::OnceLock<HmacKey>,
}

/// What a caller asked to append.
// Size is no concern: every entry travels inside a boxed `Pending`.
#[allow(clippy::large_enum_variant)]
pub enum Entry {
    /// A `decision` or `record` line.
    Event {
        event: AuditEvent,
        kind: Kind,
        policy_version: Arc<str>,
        /// Made by the caller for a huge list; `event.visible` then holds only its first entries.
        summary: Option<bound::Precomputed>,
    },
    Outcome(AuditOutcome),
}

pub struct Pending {
    pub entry: Entry,
    pub reply: oneshot::Sender<Result<u64, AuditError>>,
}

pub enum Msg {
    Record(Box<Pending>),
    Probe(oneshot::Sender<bool>),
}

struct Current {
    file: File,
    len: u64,
    dev: u64,
    ino: u64,
}

pub struct Writer {
    cfg: AuditConfig,
    stats: Arc<Stats>,
    key: Option<HmacKey>,
    lock: Option<File>,
    current: Option<Current>,
    /// Last record written (seq 0 / GENESIS before the first); `None` until known.
    head: Option<(u64, String)>,
    last_probe: Instant,
    /// A new key was started on a log with records: the `key` line still to be written
    /// (before any other record), with its reason.
    key_record_due: Option<String>,
    /// `<log>.key-id` must be (re)written with the key in force.
    stamp_due: bool,
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// `time` for a record: RFC 3339, UTC, microseconds (fixed width, so it sorts as text).
pub fn now_rfc3339() -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_string())
}

/// Timestamp part of rotated and torn file names.
pub fn now_compact() -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&fmt)
        .unwrap_or_else(|_| "19700101T000000Z".to_string())
}

fn append_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Copies `file[from..]` to a new `<path>.torn-<time>` file (kept for inspection), then cuts it
/// off the log.
fn move_torn(path: &Path, file: &mut File, from: u64) -> io::Result<PathBuf> {
    let stamp = now_compact();
    let mut n = 0u32;
    let (mut out, torn_path) = loop {
        let candidate = if n == 0 {
            append_suffix(path, &format!(".torn-{stamp}"))
        } else {
            append_suffix(path, &format!(".torn-{stamp}-{n}"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(f) => break (f, candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(e),
        }
    };
    file.seek(SeekFrom::Start(from))?;
    io::copy(file, &mut out)?;
    out.sync_all()?;
    sync_dir(parent_of(path));
    file.set_len(from)?;
    file.sync_all()?;
    Ok(torn_path)
}

fn copy_err(e: &AuditError) -> AuditError {
    match e {
        AuditError::Io { path, source } => AuditError::Io {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => AuditError::Unavailable(other.to_string()),
    }
}

impl Writer {
    pub fn new(cfg: AuditConfig, stats: Arc<Stats>) -> Writer {
        Writer {
            cfg,
            stats,
            key: None,
            lock: None,
            current: None,
            head: None,
            last_probe: Instant::now(),
            key_record_due: None,
            stamp_due: false,
        }
    }

    fn io_err(&self, source: io::Error) -> AuditError {
        AuditError::Io {
            path: self.cfg.path.display().to_string(),
            source,
        }
    }

    pub fn head(&self) -> Option<&(u64, String)> {
        self.head.as_ref()
    }

    /// (Re)opens the current file from what is on disk: key, lock, file, torn-tail repair,
    /// chain head. On error the log stays closed and unwritable.
    pub fn reopen(&mut self) -> Result<(), AuditError> {
        self.current = None;
        if self.cfg.recipients == RecipientStorage::Hmac && self.key.is_none() {
            let key = self.load_key()?;
            self.check_stamp(&key)?;
            let _ = self.stats.key.set(key.clone());
            self.key = Some(key);
        }
        let path = self.cfg.path.clone();
        let dir = parent_of(&path).to_path_buf();
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(&dir).map_err(|e| self.io_err(e))?;
        }
        if self.lock.is_none() {
            // Two writers would fork the chain; the lock file outlives rotation, the log does not.
            let lock_path = append_suffix(&path, ".lock");
            let lock = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
                .map_err(|source| AuditError::Io {
                    path: lock_path.display().to_string(),
                    source,
                })?;
            match lock.try_lock() {
                Ok(()) => self.lock = Some(lock),
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(AuditError::Locked(lock_path.display().to_string()))
                }
                Err(fs::TryLockError::Error(source)) => {
                    return Err(AuditError::Io {
                        path: lock_path.display().to_string(),
                        source,
                    })
                }
            }
        }
        let existed = fs::symlink_metadata(&path).is_ok();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| self.io_err(e))?;
        let meta = file.metadata().map_err(|e| self.io_err(e))?;
        if !meta.is_file() {
            return Err(self.io_err(io::Error::other("not a regular file")));
        }
        if !existed {
            sync_dir(&dir);
        }
        let tail = scan_tail(&file).map_err(|e| self.io_err(e))?;
        if tail.good_end < meta.len() {
            let cut = meta.len() - tail.good_end;
            let torn = move_torn(&path, &mut file, tail.good_end).map_err(|e| self.io_err(e))?;
            tracing::warn!(
                path = %path.display(),
                bytes = cut,
                moved_to = %torn.display(),
                "audit log ended in an incomplete or unreadable record (a write torn by a crash?); \
                 moved it aside and continuing the chain from the last complete record"
            );
        }
        let head = match tail.last {
            Some(h) => h,
            // Empty file: we just rotated, or the file was moved away; continue what we know,
            // else what the newest rotated file ends with, else start the chain.
            None => match self.head.clone() {
                Some(h) => h,
                None => reader::newest_rotated_head(&path)
                    .map_err(|e| self.io_err(e))?
                    .unwrap_or((0, GENESIS.to_string())),
            },
        };
        self.stats.last_seq.store(head.0, Ordering::Relaxed);
        self.head = Some(head);
        self.current = Some(Current {
            file,
            len: tail.good_end,
            dev: meta.dev(),
            ino: meta.ino(),
        });
        if self.key_record_due.is_some() {
            if let Err(e) = self.write_key_record() {
                self.current = None;
                return Err(e);
            }
        }
        if let Err(e) = self.write_stamp() {
            self.current = None;
            return Err(e);
        }
        Ok(())
    }

    /// Loads the HMAC key. A missing key file is created only when the log has no records
    /// yet, or when the admin asked for a new key (`audit.new_key`); then a `key` line is due.
    fn load_key(&mut self) -> Result<HmacKey, AuditError> {
        let file = &self.cfg.hmac_key_file;
        match HmacKey::load(file) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return Ok(other?),
        }
        let has_records = log_has_records(&self.cfg.path).map_err(|e| self.io_err(e))?;
        if has_records && !self.cfg.new_key {
            return Err(AuditError::KeyMissing {
                key_file: file.display().to_string(),
                log: self.cfg.path.display().to_string(),
            });
        }
        let key = HmacKey::load_or_create(file)?;
        if has_records {
            tracing::warn!(
                key_file = %file.display(),
                key_id = %key.key_id(),
                "audit HMAC key file was missing; started a new key as audit.new_key asks \
                 (records made under the old key can no longer be searched by recipient)"
            );
            self.key_record_due = Some(format!(
                "key file {} was missing; a new key was started (audit.new_key = true)",
                file.display()
            ));
        }
        Ok(key)
    }

    /// Compares the key with the one the log was written under (`<log>.key-id`, see
    /// [`key_stamp`]): another key on a log with records is refused unless `audit.new_key`
    /// asks for it (then a `key` line is due). The stamp is (re)written once the key line, if
    /// any, is on disk ([`Writer::write_stamp`]).
    fn check_stamp(&mut self, key: &HmacKey) -> Result<(), AuditError> {
        let path = self.cfg.path.clone();
        let stamp_err = |source| AuditError::Io {
            path: key_stamp::path(&path).display().to_string(),
            source,
        };
        match key_stamp::read(&path, key).map_err(stamp_err)? {
            Stamp::Same => {}
            Stamp::Absent => self.stamp_due = true,
            Stamp::Other(log_key) => {
                let has_records = log_has_records(&path).map_err(|e| self.io_err(e))?;
                if has_records && !self.cfg.new_key {
                    return Err(super::key_replaced(&self.cfg, key, &log_key));
                }
                if has_records && self.key_record_due.is_none() {
                    tracing::warn!(
                        key_file = %self.cfg.hmac_key_file.display(),
                        key_id = %key.key_id(),
                        "audit HMAC key file holds another key than the log's; started it as \
                         audit.new_key asks (records made under the old key can no longer be \
                         searched by recipient)"
                    );
                    self.key_record_due = Some(format!(
                        "key file {} holds another key than the log was written with (key_id {}…); \
                         a new key was started (audit.new_key = true)",
                        self.cfg.hmac_key_file.display(),
                        key_stamp::short(&log_key)
                    ));
                }
                self.stamp_due = true;
            }
        }
        Ok(())
    }

    /// Records the key in force beside the log, after its `key` line (if one was due).
    fn write_stamp(&mut self) -> Result<(), AuditError> {
        let Some(key) = self.key.as_ref().filter(|_| self.stamp_due) else {
            return Ok(());
        };
        key_stamp::write(&self.cfg.path, key).map_err(|source| AuditError::Io {
            path: key_stamp::path(&self.cfg.path).display().to_string(),
            source,
        })?;
        self.stamp_due = false;
        Ok(())
    }

    /// Appends the due `key` line (write + sync) to the freshly opened file.
    fn write_key_record(&mut self) -> Result<(), AuditError> {
        let (Some(reason), Some(key)) = (self.key_record_due.clone(), self.key.as_ref()) else {
            return Ok(());
        };
        let (seq, prev) = self.head.clone().unwrap_or((0, GENESIS.to_string()));
        let mut r = KeyRecord {
            time: now_rfc3339(),
            seq: seq + 1,
            kind: Kind::Key,
            key_id: key.key_id(),
            key_file: bound::cap(&self.cfg.hmac_key_file.display().to_string(), 4096),
            reason,
            prev,
            hash: String::new(),
        };
        let line = r
            .seal()
            .map_err(|e| AuditError::Unavailable(format!("cannot encode record: {e}")))?;
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        let result = cur.file.write_all(&line).and_then(|()| {
            self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            cur.file.sync_data()
        });
        if let Err(e) = result {
            let _ = cur.file.set_len(cur.len);
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            return Err(self.io_err(e));
        }
        cur.len += line.len() as u64;
        self.stats.records.fetch_add(1, Ordering::Relaxed);
        self.stats.last_seq.store(seq + 1, Ordering::Relaxed);
        self.head = Some((seq + 1, r.hash));
        self.key_record_due = None;
        Ok(())
    }

    /// Makes sure `current` is open and still the file at the configured path.
    fn ensure_open(&mut self) -> Result<(), AuditError> {
        if let Some(cur) = &self.current {
            match fs::metadata(&self.cfg.path) {
                Ok(m) if m.dev() == cur.dev && m.ino() == cur.ino => return Ok(()),
                _ => tracing::warn!(
                    path = %self.cfg.path.display(),
                    "audit log file was moved or removed behind our back; opening a new one that continues the chain"
                ),
            }
        }
        self.reopen()
    }

    fn set_writable(&self, ok: bool, why: Option<&AuditError>) {
        let was = self.stats.writable.swap(ok, Ordering::SeqCst);
        match (was, ok) {
            (false, true) => {
                tracing::info!(path = %self.cfg.path.display(), "audit log is writable again")
            }
            (true, false) => tracing::error!(
                path = %self.cfg.path.display(),
                "audit log not writable ({}); messages that need a record get 451 until it is fixed",
                why.map(ToString::to_string).unwrap_or_default()
            ),
            _ => {}
        }
    }

    pub fn probe(&mut self) {
        self.last_probe = Instant::now();
        let mut result = self.ensure_open();
        if result.is_ok() && !self.stats.writable.load(Ordering::SeqCst) {
            // Re-opening succeeds on a full disk too: before saying "writable" again, prove
            // that data can be written and synced.
            result = self.write_test();
        }
        match result {
            Ok(()) => self.set_writable(true, None),
            Err(e) => {
                self.current = None;
                self.set_writable(false, Some(&e));
            }
        }
    }

    /// Writes and syncs 4 KiB to `<path>.probe`, then removes it. A directory we may not create
    /// files in does not count as a failure: the log itself only needs its open file.
    pub fn write_test(&self) -> Result<(), AuditError> {
        let probe = append_suffix(&self.cfg.path, ".probe");
        let attempt = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .and_then(|mut f| {
                f.write_all(&[0u8; 4096])?;
                f.sync_data()
            });
        let _ = fs::remove_file(&probe);
        match attempt {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
            Err(source) => Err(AuditError::Io {
                path: probe.display().to_string(),
                source,
            }),
        }
    }

    /// The sealed line for one pending entry.
    fn make_line(
        &self,
        p: &Pending,
        seq: u64,
        prev: &str,
        time: &str,
    ) -> Result<(Vec<u8>, String), AuditError> {
        match &p.entry {
            Entry::Event {
                event,
                kind,
                policy_version,
                summary,
            } => bound::event_line(
                event,
                &bound::Context {
                    summary: summary.as_ref(),
                    storage: self.cfg.recipients,
                    key: self.key.as_ref(),
                    policy_version,
                    kind: *kind,
                    seq,
                    prev,
                    time,
                },
            ),
            Entry::Outcome(o) => bound::outcome_line(o, seq, prev, time),
        }
    }

    /// Writes a batch with one write and one `sync_data`, then answers every caller.
    fn commit(&mut self, batch: Vec<Pending>) {
        if let Err(e) = self.ensure_open() {
            self.set_writable(false, Some(&e));
            for p in batch {
                let _ = p.reply.send(Err(copy_err(&e)));
            }
            return;
        }
        let (mut seq, mut prev) = self.head.clone().unwrap_or((0, GENESIS.to_string()));
        let time = now_rfc3339();
        let mut buf = Vec::with_capacity(batch.len() * 1024);
        let mut outcome: Vec<Result<u64, AuditError>> = Vec::with_capacity(batch.len());
        for p in &batch {
            match self.make_line(p, seq + 1, &prev, &time) {
                Ok((line, hash)) => {
                    seq += 1;
                    prev = hash;
                    buf.extend_from_slice(&line);
                    outcome.push(Ok(seq));
                }
                Err(e) => outcome.push(Err(e)),
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let started = Instant::now();
        let mut result = Ok(());
        if !buf.is_empty() {
            result = cur.file.write_all(&buf).and_then(|()| {
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                cur.file.sync_data()
            });
        }
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats
            .last_write_micros
            .store(micros, Ordering::Relaxed);
        match result {
            Ok(()) => {
                cur.len += buf.len() as u64;
                let written = outcome.iter().filter(|o| o.is_ok()).count() as u64;
                self.stats.records.fetch_add(written, Ordering::Relaxed);
                self.stats.last_batch.store(written, Ordering::Relaxed);
                self.stats.last_seq.store(seq, Ordering::Relaxed);
                self.head = Some((seq, prev));
                self.set_writable(true, None);
                for (p, o) in batch.into_iter().zip(outcome) {
                    let _ = p.reply.send(o);
                }
            }
            Err(e) => {
                // Cut back what may have landed; either way re-read the tail from disk before
                // the next write, so the chain continues from what is really there.
                let _ = cur.file.set_len(cur.len);
                self.current = None;
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let err = self.io_err(e);
                self.set_writable(false, Some(&err));
                for p in batch {
                    let _ = p.reply.send(Err(copy_err(&err)));
                }
            }
        }
    }

    /// Starts a new file once the current one has grown past `rotate_bytes`. The old one is
    /// renamed `<path>.<YYYYMMDDTHHMMSSZ>.<last seq>`; the new file's first record chains to it.
    fn maybe_rotate(&mut self) {
        let limit = self.cfg.rotate_bytes;
        let (Some(cur), Some((seq, _))) = (&self.current, &self.head) else {
            return;
        };
        if limit == 0 || cur.len <= limit {
            return;
        }
        let path = self.cfg.path.clone();
        // Seq zero-padded so `ls` lists the files in chain order.
        let target = append_suffix(&path, &format!(".{}.{seq:012}", now_compact()));
        if fs::symlink_metadata(&target).is_ok() {
            tracing::warn!(target = %target.display(), "rotation target exists; not rotating");
            return;
        }
        if let Err(e) = fs::rename(&path, &target) {
            tracing::warn!(path = %path.display(), "could not rotate audit log: {e}");
            return;
        }
        sync_dir(parent_of(&path));
        tracing::info!(rotated_to = %target.display(), "audit log rotated");
        match self.reopen() {
            Ok(()) => self.set_writable(true, None),
            Err(e) => self.set_writable(false, Some(&e)),
        }
    }

    /// The thread body: runs until every `AuditLog` handle is gone.
    pub fn run(mut self, rx: Receiver<Msg>) {
        // However the thread ends (even by a panic), the relay must stop counting on the log.
        struct Unwritable(Arc<Stats>);
        impl Drop for Unwritable {
            fn drop(&mut self) {
                self.0.writable.store(false, Ordering::SeqCst);
            }
        }
        let _guard = Unwritable(Arc::clone(&self.stats));
        loop {
            let first = match rx.recv_timeout(PROBE_INTERVAL) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.probe();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut records = Vec::new();
            let mut probes = Vec::new();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(m) = next {
                match m {
                    Msg::Record(p) => records.push(*p),
                    Msg::Probe(tx) => probes.push(tx),
                }
                taken += 1;
                next = if taken < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !records.is_empty() {
                self.commit(records);
                self.maybe_rotate();
            }
            if !probes.is_empty() || self.last_probe.elapsed() >= PROBE_INTERVAL {
                self.probe();
            }
            let ok = self.stats.writable.load(Ordering::SeqCst);
            for p in probes {
                let _ = p.send(ok);
            }
        }
    }
}

/// Whether a failed open is the admin's mistake (stop) rather than a condition that may heal.
pub fn is_fatal(e: &AuditError) -> bool {
    matches!(
        e,
        AuditError::Key(KeyError::Invalid { .. })
            | AuditError::KeyMissing { .. }
            | AuditError::KeyReplaced { .. }
    )
}

/// Whether the log at `path` (current file or rotated files) holds at least one record.
pub fn log_has_records(path: &Path) -> io::Result<bool> {
    if !reader::rotated_files(path)?.is_empty() {
        return Ok(true);
    }
    match File::open(path) {
        Ok(f) => Ok(f.metadata()?.is_file() && scan_tail(&f)?.last.is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, Mode};

    fn cfg(dir: &Path) -> AuditConfig {
        AuditConfig {
            path: dir.join("audit.jsonl"),
            recipients: RecipientStorage::Plain,
            hmac_key_file: dir.join("audit.key"),
            log_accepts: false,
            rotate_bytes: 0,
            new_key: false,
        }
    }

    fn pending(i: usize) -> (Pending, oneshot::Receiver<Result<u64, AuditError>>) {
        let (reply, rx) = oneshot::channel();
        let event = AuditEvent {
            session: format!("s{i}"),
            client: "c".into(),
            auth_user: None,
            sender: "a@example.org".into(),
            message_id: None,
            rule: None,
            action: Action::Reject,
            mode: Mode::Enforce,
            reason: "r".into(),
            visible: ["x@example.net"].into_iter().collect(),
            visible_external: 1,
            external_domains: 1,
            envelope_recipients: 1,
            upstream: None,
            header_digest_original: "d".into(),
            header_digest_forwarded: None,
        };
        let p = Pending {
            entry: Entry::Event {
                event,
                kind: Kind::Record,
                policy_version: Arc::from("pv"),
                summary: None,
            },
            reply,
        };
        (p, rx)
    }

    #[test]
    fn scan_tail_finds_last_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let rec = format!("{{\"seq\":7,\"hash\":\"{}\"}}\n", "a".repeat(64));
        for (content, end, seq) in [
            (String::new(), 0, None),
            (rec.clone(), rec.len(), Some(7)),
            (format!("{rec}{{\"seq\":8,\"ha"), rec.len(), Some(7)),
            (format!("{rec}garbage\n\0\0"), rec.len(), Some(7)),
            ("junk\n".to_string(), 0, None),
        ] {
            fs::write(&p, &content).unwrap();
            let t = scan_tail(&File::open(&p).unwrap()).unwrap();
            assert_eq!(t.good_end, end as u64, "{content:?}");
            assert_eq!(t.last.map(|l| l.0), seq, "{content:?}");
        }
    }

    #[test]
    fn failed_write_answers_err_and_next_batch_continues_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let mut w = Writer::new(cfg(dir.path()), Arc::clone(&stats));
        w.reopen().unwrap();
        let (p, mut rx) = pending(1);
        w.commit(vec![p]);
        assert_eq!(rx.try_recv().unwrap().unwrap(), 1);
        // Swap in a read-only handle to the same file: the next write fails.
        let ro = File::open(&w.cfg.path).unwrap();
        w.current.as_mut().unwrap().file = ro;
        let (p2, mut rx2) = pending(2);
        let (p3, mut rx3) = pending(3);
        w.commit(vec![p2, p3]);
        assert!(rx2.try_recv().unwrap().is_err());
        assert!(rx3.try_recv().unwrap().is_err());
        assert!(!stats.writable.load(Ordering::SeqCst));
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 1);
        let (p4, mut rx4) = pending(4);
        w.commit(vec![p4]);
        assert_eq!(
            rx4.try_recv().unwrap().unwrap(),
            2,
            "seq not burnt by the failure"
        );
        assert!(stats.writable.load(Ordering::SeqCst));
        assert_eq!(reader::verify(&w.cfg.path).unwrap().records, 2);
    }
}
