//! Reading the log back: which files make up a rotated set and in what order, verifying the
//! hash chain across them, and walking their records for `audit query`.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::file::scan_tail;
use super::record::{check_line, AnyRecord, Kind, Record, GENESIS};

/// `<base>.<YYYYMMDDTHHMMSSZ>.<seq>` → (`<base>` file name, seq).
fn split_rotated_name(name: &str) -> Option<(&str, u64)> {
    let (rest, seq) = name.rsplit_once('.')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (base, stamp) = rest.rsplit_once('.')?;
    let b = stamp.as_bytes();
    let stamp_ok = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    if !stamp_ok || base.is_empty() {
        return None;
    }
    Some((base, seq.parse().ok()?))
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Files beside `path` whose names start with `<name of path>.` and pass `pick`.
fn siblings<T>(
    path: &Path,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> io::Result<Vec<(T, PathBuf)>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir_of(path)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(s) = file_name.to_str() else {
            continue;
        };
        if let Some(rest) = s.strip_prefix(&prefix) {
            if let Some(t) = pick(rest) {
                out.push((t, path.with_file_name(s)));
            }
        }
    }
    Ok(out)
}

/// Rotated files of the log at `path`, oldest first (ordered by the last seq in their name).
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut v = siblings(path, |rest| {
        let full = format!("{name}.{rest}");
        match split_rotated_name(&full) {
            Some((base, seq)) if base == name => Some(seq),
            _ => None,
        }
    })?;
    v.sort();
    Ok(v)
}

/// Fragments the writer cut off a torn tail (`<path>.torn-*`).
pub fn torn_files(path: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = siblings(path, |rest| rest.starts_with("torn-").then_some(()))
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    v.sort();
    v
}

/// The files to read, oldest first. For the current log: its rotated files, then itself.
/// For a rotated file: the rotated files up to and including it.
pub fn file_set(path: &Path) -> io::Result<Vec<PathBuf>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some((base, seq)) = split_rotated_name(name) {
        let base_path = path.with_file_name(base);
        return Ok(rotated_files(&base_path)?
            .into_iter()
            .filter(|(s, _)| *s <= seq)
            .map(|(_, p)| p)
            .collect());
    }
    let mut v: Vec<PathBuf> = rotated_files(path)?.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        v.push(path.to_path_buf());
    }
    Ok(v)
}

/// (seq, hash) of the last record in the newest rotated file, to seed an empty current file.
pub fn newest_rotated_head(path: &Path) -> io::Result<Option<(u64, String)>> {
    for (_, p) in rotated_files(path)?.iter().rev() {
        let f = File::open(p)?;
        if let Some(h) = scan_tail(&f)?.last {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub file: PathBuf,
    /// 1-based line number within `file`.
    pub line: u64,
    pub seq: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file.display(), self.line)?;
        if let Some(s) = self.seq {
            write!(f, " (seq {s})")?;
        }
        write!(f, ": {}", self.what)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("chain broken at {0}")]
    Broken(ChainBreak),
}

/// What an intact log looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: Vec<PathBuf>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// `prev` of the first record: GENESIS when the whole history is present.
    pub start_prev: Option<String>,
    /// Torn fragments the relay moved aside (not part of the chain; listed for the admin).
    pub torn: Vec<PathBuf>,
    /// Lines by kind: decisions, outcomes, one-shot records, key changes.
    pub decisions: u64,
    pub outcomes: u64,
    pub one_shot: u64,
    /// Seqs of the `key` lines (a new HMAC key started there).
    pub key_changes: Vec<u64>,
    /// Seqs of decisions no outcome line refers to: the relay stopped (or could not write the
    /// outcome) after forwarding; on a live log also the messages still in flight.
    pub decisions_without_outcome: Vec<u64>,
}

impl VerifyReport {
    pub fn starts_at_genesis(&self) -> bool {
        self.start_prev.as_deref().is_none_or(|p| p == GENESIS)
    }
}

/// The seq a damaged line claims, if it still has one, to name it in the report.
fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    serde_json::from_slice::<SeqOnly>(line).ok().map(|s| s.seq)
}

struct Seen {
    file: PathBuf,
    line: u64,
    seq: u64,
    hash: String,
}

/// The file set of `path`, opened. Open handles do not move when the writer rotates, so the
/// set is consistent if a second listing matches the first; otherwise a rotation raced us and
/// we list again.
pub fn snapshot(path: &Path) -> io::Result<Vec<(PathBuf, File)>> {
    let mut tries = 0;
    loop {
        tries += 1;
        let files = file_set(path)?;
        let mut opened = Vec::with_capacity(files.len());
        let mut vanished = false;
        for f in &files {
            match File::open(f) {
                Ok(h) => opened.push((f.clone(), h)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 20 => {
                    vanished = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if !vanished && (file_set(path)? == files || tries >= 20) {
            return Ok(opened);
        }
    }
}

/// Whether a relay holds the writer lock of the log at `path` (it is being appended to).
pub fn is_live(path: &Path) -> bool {
    let mut lock = path.as_os_str().to_os_string();
    lock.push(".lock");
    match File::open(PathBuf::from(lock)) {
        Ok(f) => matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Verifies the chain over the file set of `path` (see [`file_set`]). On a log a relay is
/// writing, a half-appended last line or a rotation between listing and reading can look like
/// a break or a missing file: then it looks again (up to five times) before reporting one.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let mut attempt = 0;
    loop {
        let result = verify_once(path);
        attempt += 1;
        match result {
            // A rotation renames the current file for a moment: that is an I/O error too.
            Err(_) if attempt < 5 && is_live(path) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn verify_once(path: &Path) -> Result<VerifyReport, VerifyError> {
    let io_err = |p: &Path, source| VerifyError::Io {
        path: p.display().to_string(),
        source,
    };
    let opened = snapshot(path).map_err(|e| io_err(path, e))?;
    let files: Vec<PathBuf> = opened.iter().map(|(p, _)| p.clone()).collect();
    if files.is_empty() {
        return Err(io_err(
            path,
            io::Error::new(io::ErrorKind::NotFound, "no audit log file here"),
        ));
    }
    let mut report = VerifyReport {
        files: files.clone(),
        records: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        start_prev: None,
        torn: torn_files(path),
        decisions: 0,
        outcomes: 0,
        one_shot: 0,
        key_changes: Vec::new(),
        decisions_without_outcome: Vec::new(),
    };
    let mut open_decisions = std::collections::BTreeSet::new();
    let mut last: Option<Seen> = None;
    let mut before_last: Option<String> = None;
    let broken = |file: &Path, line: u64, seq: Option<u64>, what: String| {
        VerifyError::Broken(ChainBreak {
            file: file.to_path_buf(),
            line,
            seq,
            what,
        })
    };
    for (file, f) in opened {
        let file = &file;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).map_err(|e| io_err(file, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let Some(line) = buf.strip_suffix(b"\n") else {
                return Err(broken(
                    file,
                    line_no,
                    None,
                    "incomplete last line (no newline): a write torn by a crash, or a cut file; \
                     the relay moves it aside when it next opens the log"
                        .to_string(),
                ));
            };
            let c = check_line(line).map_err(|what| broken(file, line_no, seq_of(line), what))?;
            match &last {
                None => report.start_prev = Some(c.prev.clone()),
                Some(l) if c.prev != l.hash => {
                    let what = if before_last.as_deref() == Some(c.prev.as_str()) {
                        // This record continues from the one before the previous: the
                        // previous line is the foreign one.
                        return Err(broken(
                            &l.file,
                            l.line,
                            Some(l.seq),
                            format!(
                                "record was inserted: the next record ({} line {line_no}) chains to the one before it",
                                file.display()
                            ),
                        ));
                    } else if c.seq <= l.seq {
                        format!(
                            "out of order: seq {} follows seq {} and `prev` does not match the previous record's hash",
                            c.seq, l.seq
                        )
                    } else if c.seq > l.seq + 1 {
                        format!(
                            "seq jumps from {} to {}: record(s) deleted or reordered before this one",
                            l.seq, c.seq
                        )
                    } else {
                        format!(
                            "`prev` does not match the hash of the previous record ({} line {}, seq {}): a record was altered, removed or put in its place",
                            l.file.display(),
                            l.line,
                            l.seq
                        )
                    };
                    return Err(broken(file, line_no, Some(c.seq), what));
                }
                Some(l) if c.seq != l.seq + 1 => {
                    return Err(broken(
                        file,
                        line_no,
                        Some(c.seq),
                        format!(
                            "seq {} follows seq {} (expected {})",
                            c.seq,
                            l.seq,
                            l.seq + 1
                        ),
                    ));
                }
                Some(_) => {}
            }
            match c.kind {
                Kind::Decision => {
                    report.decisions += 1;
                    open_decisions.insert(c.seq);
                }
                Kind::Outcome => {
                    report.outcomes += 1;
                    // An outcome for a decision in an archived file closes nothing here.
                    if let Some(d) = c.decision_seq {
                        open_decisions.remove(&d);
                    }
                }
                Kind::Record => report.one_shot += 1,
                Kind::Key => report.key_changes.push(c.seq),
            }
            report.records += 1;
            report.first_seq.get_or_insert(c.seq);
            report.last_seq = Some(c.seq);
            report.last_hash = Some(c.hash.clone());
            before_last = last.take().map(|l| l.hash);
            last = Some(Seen {
                file: file.clone(),
                line: line_no,
                seq: c.seq,
                hash: c.hash,
            });
        }
        // A rotated file is named after its last seq: records cut off its end show here.
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some((_, named_seq)) = split_rotated_name(name) {
            let ends = last.as_ref().filter(|l| &l.file == file).map(|l| l.seq);
            if ends != Some(named_seq) {
                return Err(broken(
                    file,
                    line_no,
                    ends,
                    format!(
                        "rotated file is named for seq {named_seq} but ends at {}: records removed from its end",
                        ends.map_or("no record".to_string(), |s| format!("seq {s}"))
                    ),
                ));
            }
        }
    }
    report.decisions_without_outcome = open_decisions.into_iter().collect();
    Ok(report)
}

/// One line of the log as `query` sees it.
pub struct Entry {
    pub file: PathBuf,
    pub line: u64,
    pub record: Result<Record, String>,
}

/// Calls `f` for every `decision` and `record` line (and every line that is no record at all)
/// of every file in the set of `path`, oldest first; `outcome` and `key` lines are passed
/// over (see [`for_each_entry`] for those).
pub fn for_each_record(path: &Path, mut f: impl FnMut(Entry)) -> io::Result<()> {
    for_each_entry(path, |e| {
        let record = match e.record {
            Ok(AnyRecord::Event(r)) => Ok(*r),
            Ok(_) => return,
            Err(why) => Err(why),
        };
        f(Entry {
            file: e.file,
            line: e.line,
            record,
        })
    })
}

/// One line of the log, of any kind.
pub struct AnyEntry {
    pub file: PathBuf,
    pub line: u64,
    pub record: Result<AnyRecord, String>,
}

/// Calls `f` for every line of every file in the set of `path`, oldest first.
pub fn for_each_entry(path: &Path, mut f: impl FnMut(AnyEntry)) -> io::Result<()> {
    for (file, handle) in snapshot(path)? {
        let r = BufReader::with_capacity(256 * 1024, handle);
        for (i, line) in r.split(b'\n').enumerate() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            f(AnyEntry {
                file: file.clone(),
                line: i as u64 + 1,
                record: AnyRecord::parse(&line),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names() {
        assert_eq!(
            split_rotated_name("audit.jsonl.20240501T100000Z.42"),
            Some(("audit.jsonl", 42))
        );
        assert_eq!(split_rotated_name("audit.jsonl.lock"), None);
        assert_eq!(
            split_rotated_name("audit.jsonl.torn-20240501T100000Z"),
            None
        );
        assert_eq!(split_rotated_name("audit.jsonl.2024050T100000Z.1"), None);
    }

    #[test]
    fn file_set_orders_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join("a.jsonl");
        for n in [
            "a.jsonl.20240101T000000Z.100",
            "a.jsonl.20250101T000000Z.20",
            "a.jsonl.lock",
            "b.jsonl.20240101T000000Z.5",
        ] {
            fs::write(dir.path().join(n), "").unwrap();
        }
        fs::write(&cur, "").unwrap();
        let set = file_set(&cur).unwrap();
        let names: Vec<_> = set
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "a.jsonl.20250101T000000Z.20",
                "a.jsonl.20240101T000000Z.100",
                "a.jsonl"
            ]
        );
        let only = file_set(&dir.path().join("a.jsonl.20250101T000000Z.20")).unwrap();
        assert_eq!(only.len(), 1);
    }
}
