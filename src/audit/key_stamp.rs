//! The id of the HMAC key the log is written under, kept beside the log (`<log>.key-id`), so a
//! key file that now holds *another* key is noticed at start, as a missing one is: pseudonyms
//! must never silently change key (issue 11 item 5). A log without a stamp (new, or from before
//! stamps) takes the key in force at its first start.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::file::sync_dir;
use super::pseudonym::HmacKey;

/// What the stamp says about `key`.
#[derive(Debug, PartialEq, Eq)]
pub enum Stamp {
    Same,
    Absent,
    /// The log was written under the key with this id.
    Other(String),
}

pub fn path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_os_string();
    s.push(".key-id");
    PathBuf::from(s)
}

pub fn read(log: &Path, key: &HmacKey) -> io::Result<Stamp> {
    match fs::read_to_string(path(log)) {
        Ok(text) if text.trim() == key.key_id() => Ok(Stamp::Same),
        Ok(text) => Ok(Stamp::Other(text.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Stamp::Absent),
        Err(e) => Err(e),
    }
}

/// Writes the stamp durably (temp file, fsync, rename, fsync of the folder).
pub fn write(log: &Path, key: &HmacKey) -> io::Result<()> {
    let target = path(log);
    let mut tmp = target.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{}\n", key.key_id()).as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &target)?;
    sync_dir(target.parent().unwrap_or(Path::new("")));
    Ok(())
}

/// The start of a key id for messages (enough to tell two keys apart, not a secret anyway).
pub fn short(key_id: &str) -> &str {
    key_id.get(..16).unwrap_or(key_id)
}
