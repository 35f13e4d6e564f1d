//! The log's files on disk, read and synced without knowing what the writer or the reader do
//! with them: finding the last complete record at the end of a file (the torn-write repair and
//! `verify`'s live re-check both need it) and fsyncing a directory after creating or renaming.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Tail lines up to this long are read into memory to be checked; longer ones (only logs
/// written before records were bounded have them) are parsed as a stream.
const IN_MEMORY_LINE: u64 = 1024 * 1024;

/// fsyncs a directory so a created or renamed entry survives a crash; best effort.
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), "could not fsync directory: {e}");
    }
}

/// Position of the last LF in `file[..end]`, reading backwards.
fn rfind_newline(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = end;
    while pos > 0 {
        let n = (buf.len() as u64).min(pos) as usize;
        let start = pos - n as u64;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            return Ok(Some(start + i as u64));
        }
        pos = start;
    }
    Ok(None)
}

/// The end of the last complete, parseable record and that record's (seq, hash).
/// Everything after `good_end` is a torn write or garbage.
pub struct Tail {
    pub good_end: u64,
    pub last: Option<(u64, String)>,
}

#[derive(serde::Deserialize)]
struct SeqHash {
    seq: u64,
    hash: String,
}

/// Finds the last line that is a complete record. A line that parses is kept even if its hash
/// is wrong: that is tampering for `verify` to report, not a crash to repair.
pub fn scan_tail(file: &File) -> io::Result<Tail> {
    let len = file.metadata()?.len();
    let mut good_end = rfind_newline(file, len)?.map_or(0, |p| p + 1);
    loop {
        if good_end == 0 {
            return Ok(Tail {
                good_end,
                last: None,
            });
        }
        let start = rfind_newline(file, good_end - 1)?.map_or(0, |p| p + 1);
        let line_len = good_end - 1 - start;
        // Whatever its length: a complete line that is a record is never cut.
        let parsed = if line_len <= IN_MEMORY_LINE {
            let mut line = vec![0u8; line_len as usize];
            file.read_exact_at(&mut line, start)?;
            serde_json::from_slice::<SeqHash>(&line).ok()
        } else {
            parse_streaming(file, start, good_end - 1)?
        };
        if let Some(r) = parsed {
            if r.hash.len() == 64 && r.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Tail {
                    good_end,
                    last: Some((r.seq, r.hash)),
                });
            }
        }
        good_end = start;
    }
}

/// `file[pos..end]` as a reader, without moving the file's own offset.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Parses one long line as a record in constant memory: members other than `seq` and `hash`
/// (a recipient list of millions) are skipped, not stored. A read error is an error, not a
/// reason to cut the line.
fn parse_streaming(file: &File, start: u64, end: u64) -> io::Result<Option<SeqHash>> {
    let reader = io::BufReader::with_capacity(
        256 * 1024,
        RangeReader {
            file,
            pos: start,
            end,
        },
    );
    let mut de = serde_json::Deserializer::from_reader(reader);
    let parsed = <SeqHash as serde::Deserialize>::deserialize(&mut de).and_then(|r| {
        de.end()?;
        Ok(r)
    });
    match parsed {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.is_io() => Err(io::Error::other(e)),
        Err(_) => Ok(None),
    }
}
