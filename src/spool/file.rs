//! One spooled copy on disk: the file format, the durable create (temp file, fsync, rename,
//! fsync of the folder), the in-place update of its retry state, and the verified read.
//!
//! Layout of `<id>.copy`:
//! ```text
//! bccguard-spool 1\n                      magic and format version
//! <512-byte state block>                  sha256(json) hex, space, json, space padding, \n
//! <envelope json>\n                       id, from, params, rcpt, created_ms, size, prior_attempts
//! <size bytes of message>                 exactly as it is to be sent
//! \n<sha256 hex of envelope line + message>\n
//! ```
//! The envelope and message never change after the rename and are covered by the trailer hash,
//! so a damaged or truncated file is recognised and never sent. The state block (attempts, next
//! try, last error) is rewritten in place: it has its own hash, and a torn update only loses
//! retry bookkeeping (the copy is then retried at once), never the message.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8] = b"bccguard-spool 1\n";
pub const STATE_LEN: usize = 512;
/// `\n` + 64 hex digits + `\n`.
pub const TRAILER_LEN: usize = 66;
/// Extension of a complete entry.
pub const ENTRY_EXT: &str = "copy";
/// Extension of a file still being written; never read, removed at start.
pub const TMP_EXT: &str = "tmp";
/// Longest envelope line accepted when reading (addresses and MAIL parameters are far shorter).
const MAX_ENVELOPE_LINE: usize = 64 * 1024;
/// Longest last-error text kept in the state block.
const MAX_ERROR_CHARS: usize = 300;

/// The audit decision a spooled copy belongs to: its later delivery or bounce is recorded as
/// another outcome of that decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditLink {
    pub decision_seq: u64,
    pub session: String,
}

/// The immutable part of an entry: who it goes to and from, and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    /// Envelope sender as given to MAIL FROM (empty = null sender `<>`).
    pub from: String,
    /// MAIL FROM parameters exactly as sent after `<from>` (e.g. ` SIZE=123 BODY=8BITMIME`).
    pub params: String,
    pub rcpt: String,
    /// When the copy entered the spool, Unix milliseconds.
    pub created_ms: u64,
    /// Message length in bytes.
    pub size: u64,
    /// Delivery attempts made before the copy was spooled (in the client's session).
    pub prior_attempts: u32,
    /// Absent in files written before links existed, and for generated reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditLink>,
}

/// The mutable part: retry bookkeeping.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Tries made from the spool.
    pub attempts: u32,
    /// When the next try is due, Unix milliseconds.
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
}

/// Why an entry file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a complete, intact entry (crash while writing, disk damage, a foreign file).
    #[error("damaged spool file: {0}")]
    Corrupt(String),
}

/// What reading an entry's head gives: everything but the message.
#[derive(Debug, Clone)]
pub struct Head {
    pub envelope: Envelope,
    pub state: State,
    /// The state block did not verify (torn in-place update): `state` is a fresh default.
    pub state_lost: bool,
    pub file_len: u64,
}

/// Is `name` a spool id we made (digits, hex and one dash)? Keeps odd files out of path joins.
pub fn valid_id(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

pub fn entry_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{ENTRY_EXT}"))
}

fn tmp_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!(".{id}.{TMP_EXT}"))
}

/// Bytes an entry of this envelope and message size takes on disk.
pub fn file_len(envelope: &Envelope) -> io::Result<u64> {
    Ok(
        (MAGIC.len() + STATE_LEN + envelope_line(envelope)?.len() + TRAILER_LEN) as u64
            + envelope.size,
    )
}

fn envelope_line(envelope: &Envelope) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// Printable, one line, bounded: the error text comes from the upstream.
fn clean_error(e: &str) -> String {
    e.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR_CHARS)
        .collect()
}

pub fn encode_state(state: &State) -> [u8; STATE_LEN] {
    let mut state = State {
        last_error: state.last_error.as_deref().map(clean_error),
        ..state.clone()
    };
    let mut block = [b' '; STATE_LEN];
    loop {
        // Serialising plain numbers and a String cannot fail; an empty object is the fallback.
        let json = serde_json::to_vec(&state).unwrap_or_else(|_| b"{}".to_vec());
        if 64 + 1 + json.len() < STATE_LEN {
            let hash = sha256_hex(&[&json]);
            block[..64].copy_from_slice(hash.as_bytes());
            block[65..65 + json.len()].copy_from_slice(&json);
            block[STATE_LEN - 1] = b'\n';
            return block;
        }
        // Escapes made it too long: shorten the error until it fits.
        let err = state.last_error.take().unwrap_or_default();
        let keep = err.chars().count() / 2;
        state.last_error = (keep > 0).then(|| err.chars().take(keep).collect());
    }
}

pub fn decode_state(block: &[u8]) -> Option<State> {
    if block.len() != STATE_LEN || block[STATE_LEN - 1] != b'\n' || block[64] != b' ' {
        return None;
    }
    let body = &block[65..STATE_LEN - 1];
    let end = body.iter().rposition(|&b| b != b' ')? + 1;
    let json = &body[..end];
    if sha256_hex(&[json]).as_bytes() != &block[..64] {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Fsyncs a folder so a rename or unlink in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a new entry durably: temp file, write, fsync, rename to `<id>.copy`, fsync the folder.
/// Returns the file's length. On error nothing is left under the final name.
pub fn write_new(dir: &Path, envelope: &Envelope, state: &State, data: &[u8]) -> io::Result<u64> {
    let tmp = tmp_path(dir, &envelope.id);
    let result = (|| {
        let line = envelope_line(envelope)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&encode_state(state))?;
        f.write_all(&line)?;
        f.write_all(data)?;
        let hash = sha256_hex(&[&line, data]);
        f.write_all(b"\n")?;
        f.write_all(hash.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        let len = f.metadata()?.len();
        fs::rename(&tmp, entry_path(dir, &envelope.id))?;
        sync_dir(dir)?;
        Ok(len)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Rewrites the state block in place and syncs it.
pub fn update_state(path: &Path, state: &State) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&encode_state(state), MAGIC.len() as u64)?;
    f.sync_data()
}

/// Deletes an entry and syncs the folder, so a delivered copy does not come back after a crash.
pub fn remove(dir: &Path, id: &str) -> io::Result<()> {
    match fs::remove_file(entry_path(dir, id)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

/// Moves a damaged entry to `corrupt/` (kept for the admin, never sent).
pub fn quarantine(dir: &Path, file_name: &str) -> io::Result<PathBuf> {
    let aside = dir.join("corrupt");
    fs::create_dir_all(&aside)?;
    let to = aside.join(file_name);
    fs::rename(dir.join(file_name), &to)?;
    sync_dir(&aside)?;
    sync_dir(dir)?;
    Ok(to)
}

fn parse_prefix(buf: &[u8], file_len: u64) -> Result<(Head, usize), ReadError> {
    let corrupt = |why: &str| ReadError::Corrupt(why.to_string());
    if buf.len() < MAGIC.len() + STATE_LEN || &buf[..MAGIC.len()] != MAGIC {
        return Err(corrupt("no spool header (not a spool file or cut short)"));
    }
    let block = &buf[MAGIC.len()..MAGIC.len() + STATE_LEN];
    let decoded = decode_state(block);
    let state_lost = decoded.is_none();
    let rest = &buf[MAGIC.len() + STATE_LEN..];
    let nl = memchr::memchr(b'\n', rest).ok_or_else(|| corrupt("envelope line cut short"))?;
    let envelope: Envelope = serde_json::from_slice(&rest[..nl])
        .map_err(|e| ReadError::Corrupt(format!("envelope unreadable: {e}")))?;
    let line_len = nl + 1;
    let expected = (MAGIC.len() + STATE_LEN + line_len + TRAILER_LEN) as u64 + envelope.size;
    if expected != file_len {
        return Err(ReadError::Corrupt(format!(
            "length {file_len} bytes, expected {expected} (cut short or extended)"
        )));
    }
    let head = Head {
        envelope,
        state: decoded.unwrap_or_default(),
        state_lost,
        file_len,
    };
    Ok((head, MAGIC.len() + STATE_LEN + line_len))
}

/// Reads everything but the message: cheap, for the index and `spool list`. Checks structure and
/// length, not the message hash (that is checked by [`read_full`] before every send).
pub fn read_head(path: &Path) -> Result<Head, ReadError> {
    let mut f = File::open(path)?;
    let file_len = f.metadata()?.len();
    // Envelope lines are short: a small first read is enough for nearly every entry, which
    // keeps a restart over thousands of large entries cheap.
    let mut buf = Vec::with_capacity(MAGIC.len() + STATE_LEN + 4096);
    (&mut f)
        .take((MAGIC.len() + STATE_LEN + 4096) as u64)
        .read_to_end(&mut buf)?;
    if memchr::memchr(b'\n', buf.get(MAGIC.len() + STATE_LEN..).unwrap_or(&[])).is_none() {
        f.take((MAX_ENVELOPE_LINE - 4096) as u64)
            .read_to_end(&mut buf)?;
    }
    parse_prefix(&buf, file_len).map(|(head, _)| head)
}

/// Reads and verifies a whole entry; the message is returned only if its hash matches.
pub fn read_full(path: &Path) -> Result<(Head, Vec<u8>), ReadError> {
    let mut buf = fs::read(path)?;
    let (head, data_start) = parse_prefix(&buf, buf.len() as u64)?;
    let data_end = data_start + head.envelope.size as usize;
    let trailer = &buf[data_end..];
    let line = &buf[MAGIC.len() + STATE_LEN..data_start];
    let hash = sha256_hex(&[line, &buf[data_start..data_end]]);
    if trailer.len() != TRAILER_LEN
        || trailer[0] != b'\n'
        || trailer[TRAILER_LEN - 1] != b'\n'
        || &trailer[1..65] != hash.as_bytes()
    {
        return Err(ReadError::Corrupt("message hash does not match".into()));
    }
    buf.truncate(data_end);
    buf.drain(..data_start);
    Ok((head, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: &str, data: &[u8]) -> Envelope {
        Envelope {
            id: id.into(),
            from: "a@example.org".into(),
            params: " BODY=8BITMIME".into(),
            rcpt: "b@example.net".into(),
            created_ms: 1,
            size: data.len() as u64,
            prior_attempts: 2,
            audit: None,
        }
    }

    #[test]
    fn long_envelope_lines_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"x\r\n";
        let mut e = env("0002-cd", data);
        e.params = format!(" ENVID={}", "a".repeat(9000));
        write_new(dir.path(), &e, &State::default(), data).unwrap();
        let head = read_head(&entry_path(dir.path(), "0002-cd")).unwrap();
        assert_eq!(head.envelope, e);
    }

    #[test]
    fn state_block_round_trips_and_detects_tearing() {
        let s = State {
            attempts: 3,
            next_attempt_ms: 42,
            last_error: Some("451 4.4.1 \"busy\"\r\nx".repeat(40)),
        };
        let block = encode_state(&s);
        let back = decode_state(&block).expect("decodes");
        assert_eq!(back.attempts, 3);
        assert!(!back.last_error.unwrap().contains('\n'));
        let mut torn = block;
        torn[70] ^= 1;
        assert!(decode_state(&torn).is_none());
    }

    #[test]
    fn entry_round_trips_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"Subject: x\r\n\r\nbody\r\n.\r\n";
        let e = env("0001-ab", data);
        let len = write_new(dir.path(), &e, &State::default(), data).unwrap();
        assert_eq!(len, file_len(&e).unwrap());
        let p = entry_path(dir.path(), "0001-ab");
        let (head, got) = read_full(&p).unwrap();
        assert_eq!(head.envelope, e);
        assert_eq!(got, data);

        let st = State {
            attempts: 1,
            next_attempt_ms: 9,
            last_error: Some("timeout".into()),
        };
        update_state(&p, &st).unwrap();
        assert_eq!(read_head(&p).unwrap().state, st);
        assert_eq!(read_full(&p).unwrap().1, data);

        // One flipped message byte: the hash catches it.
        let mut raw = fs::read(&p).unwrap();
        let at = raw.len() - TRAILER_LEN - 3;
        raw[at] ^= 0x20;
        fs::write(&p, &raw).unwrap();
        assert!(matches!(read_full(&p), Err(ReadError::Corrupt(_))));
        // Cut short: the length check catches it without reading the message.
        raw.truncate(raw.len() - 10);
        fs::write(&p, &raw).unwrap();
        assert!(matches!(read_head(&p), Err(ReadError::Corrupt(_))));
    }
}
