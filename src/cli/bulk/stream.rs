//! Reads messages one at a time from a file (one message) or an mbox (many), and hands each
//! through the same DATA reader `serve` uses, line by line: memory stays at one message at most
//! (`server.max_message_size`; a bigger one is dropped as it is read and reported as too big),
//! whatever the size of the file.
//!
//! mbox: every line starting with `From ` begins a message (mboxo and mboxrd writers quote such
//! lines in bodies as `>From `); the `From ` line itself and the blank line a writer puts before
//! the next one are not part of the message; `>From `, `>>From ` ... lose one `>` (mboxrd, and
//! mboxo's single level). Line ends may be LF or CRLF: a client sends every line end as CRLF.

use std::io::{self, BufRead};

use crate::smtp::data::{DataError, DataReader, Feed};

/// Lines longer than this are handed on in pieces (DATA refuses anything over 1000 octets, so a
/// piece this size is already too long and its content is not needed).
const PIECE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The whole input is one message (an .eml file, a Maildir entry, stdin).
    Single,
    /// `From `-separated messages.
    Mbox,
}

/// One message out of a stream.
pub struct Item {
    /// 1-based position in the stream.
    pub index: u64,
    /// Byte offset of its first line (the `From ` line in an mbox).
    pub offset: u64,
    /// What DATA would hold, or the DATA rule the message breaks (same as `receive_whole`).
    pub received: Result<Vec<u8>, DataError>,
}

pub struct Messages<R> {
    input: R,
    layout: Layout,
    max_size: usize,
    /// Bytes read from `input` so far.
    pos: u64,
    /// The next line, read ahead: a `From ` line that starts the next mbox message.
    ahead: Option<Vec<u8>>,
    piece: Vec<u8>,
    /// The previous piece ended a line.
    at_line_start: bool,
    index: u64,
    done: bool,
}

impl<R: BufRead> Messages<R> {
    pub fn new(input: R, layout: Layout, max_size: usize) -> Messages<R> {
        Messages {
            input,
            layout,
            max_size,
            pos: 0,
            ahead: None,
            piece: Vec::with_capacity(1024),
            at_line_start: true,
            index: 0,
            done: false,
        }
    }

    /// Bytes of the input read so far (for progress).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next line, or up to [`PIECE`] bytes of it; empty at the end of the input.
    fn read_piece(&mut self) -> io::Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.piece);
        out.clear();
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                break;
            }
            let take = &buf[..buf.len().min(PIECE - out.len())];
            let (n, line_ends) = match memchr::memchr(b'\n', take) {
                Some(nl) => (nl + 1, true),
                None => (take.len(), false),
            };
            out.extend_from_slice(&take[..n]);
            self.input.consume(n);
            self.pos += n as u64;
            if line_ends || out.len() >= PIECE {
                break;
            }
        }
        Ok(out)
    }

    /// The next message; `None` at the end of the input.
    pub fn next_message(&mut self) -> io::Result<Option<Item>> {
        if self.done {
            return Ok(None);
        }
        let mut offset = self.pos;
        let mut first = self.ahead.take();
        if let Some(line) = &first {
            offset -= line.len() as u64;
        }
        if self.layout == Layout::Mbox {
            if first.is_none() {
                // Blank lines before the first `From ` line are no message.
                loop {
                    offset = self.pos;
                    let line = self.read_piece()?;
                    if line.is_empty() {
                        self.done = true;
                        return Ok(None);
                    }
                    if !is_blank(&line) {
                        first = Some(line);
                        break;
                    }
                }
            }
            // The `From ` separator line (or, in a file that does not start with one, the
            // first line of the message, kept).
            if let Some(line) = first.take() {
                self.at_line_start = line.ends_with(b"\n");
                if !is_from_line(&line) {
                    first = Some(line);
                }
            }
        }
        let mut builder = Builder::new(self.max_size);
        if let Some(line) = first {
            builder.push(&line, true);
            self.at_line_start = line.ends_with(b"\n");
            self.piece = line;
        }
        // mbox writers put one blank line before the next `From `: held back until the next
        // line shows whether it was content or the separator.
        let mut held_blank: Option<Vec<u8>> = None;
        loop {
            let piece = self.read_piece()?;
            if piece.is_empty() {
                self.done = true;
                break;
            }
            let starts_line = self.at_line_start;
            self.at_line_start = piece.ends_with(b"\n");
            if self.layout == Layout::Mbox && starts_line {
                if is_from_line(&piece) {
                    self.ahead = Some(piece);
                    break;
                }
                if let Some(blank) = held_blank.take() {
                    builder.push(&blank, true);
                }
                if is_blank(&piece) {
                    held_blank = Some(piece);
                    continue;
                }
                let unquoted = if is_quoted_from(&piece) {
                    &piece[1..]
                } else {
                    &piece[..]
                };
                builder.push(unquoted, true);
            } else {
                builder.push(&piece, starts_line);
            }
            self.piece = piece;
        }
        self.index += 1;
        Ok(Some(Item {
            index: self.index,
            offset,
            received: builder.finish(),
        }))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

fn is_from_line(line: &[u8]) -> bool {
    line.starts_with(b"From ")
}

/// `>From `, `>>From ` ...: a body line an mbox writer quoted.
fn is_quoted_from(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    quotes > 0 && line[quotes..].starts_with(b"From ")
}

/// Feeds one message to a [`DataReader`] as a client would send it: LF line ends as CRLF,
/// dot-stuffed, then CRLF.CRLF. Same result as `receive_whole` on the whole message.
struct Builder {
    reader: DataReader,
    message: Vec<u8>,
    /// Bytes converted to wire form and not yet consumed by the reader.
    pending: Vec<u8>,
    /// Last byte pushed (for CRLF: an LF after a CR stays as it is).
    prev: u8,
    /// The data ended before the real end (cannot happen after stuffing, but DATA says so).
    ended_early: bool,
    pushed: bool,
}

impl Builder {
    fn new(max_size: usize) -> Builder {
        Builder {
            reader: DataReader::new(max_size),
            message: Vec::new(),
            pending: Vec::with_capacity(2 * 1024),
            prev: b'\n',
            ended_early: false,
            pushed: false,
        }
    }

    fn push(&mut self, piece: &[u8], starts_line: bool) {
        if piece.is_empty() || self.ended_early {
            return;
        }
        self.pushed = true;
        if starts_line && piece[0] == b'.' {
            self.pending.push(b'.');
        }
        for &b in piece {
            if b == b'\n' && self.prev != b'\r' {
                self.pending.push(b'\r');
            }
            self.pending.push(b);
            self.prev = b;
        }
        self.feed();
    }

    fn feed(&mut self) {
        match self.reader.feed(&self.pending, &mut self.message) {
            Feed::More { consumed } => {
                self.pending.drain(..consumed);
            }
            Feed::Done { .. } => {
                self.ended_early = true;
                self.pending.clear();
            }
        }
    }

    fn finish(mut self) -> Result<Vec<u8>, DataError> {
        if self.ended_early {
            return Err(self.reader.error().unwrap_or(DataError::BareLf));
        }
        // As a client sends it: the last line ends in CRLF, then the end marker.
        // After the LF -> CRLF conversion, the bytes end in CRLF exactly when the last one is LF.
        if !(self.pushed && self.prev == b'\n') {
            self.pending.extend_from_slice(b"\r\n");
        }
        self.pending.extend_from_slice(b".\r\n");
        let ended = matches!(
            self.reader.feed(&self.pending, &mut self.message),
            Feed::Done { consumed } if consumed == self.pending.len()
        );
        match self.reader.error() {
            Some(e) => Err(e),
            None if !ended => Err(DataError::BareLf),
            None => Ok(self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::data::receive_whole;

    fn all(input: &[u8], layout: Layout, max: usize) -> Vec<Result<Vec<u8>, DataError>> {
        let mut m = Messages::new(input, layout, max);
        let mut out = Vec::new();
        while let Some(item) = m.next_message().unwrap() {
            out.push(item.received);
        }
        out
    }

    fn crlf(raw: &[u8]) -> Vec<u8> {
        crate::cli::check::client_line_ends(raw)
    }

    #[test]
    fn single_matches_receive_whole() {
        let long = format!("Subject: x\n\n{}\n", "a".repeat(1200));
        let huge = format!("Subject: x\n\n{}\n", "b\n".repeat(600));
        let cases: Vec<&[u8]> = vec![
            b"Subject: a\n\nbody\n",
            b"Subject: a\r\n\r\nbody",
            b"Subject: a\n\n.\n..\n.x\n",
            b"Subject: a\n\nbare\rcr\n",
            b"Subject: a\r\n\r\nbare cr at end\r",
            b"",
            b"\n",
            long.as_bytes(),
            huge.as_bytes(),
        ];
        for raw in cases {
            let got = all(raw, Layout::Single, 1000);
            assert_eq!(got.len(), 1);
            assert_eq!(
                got[0],
                receive_whole(&crlf(raw), 1000),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn mbox_splits_unquotes_and_drops_separator_blank() {
        let mbox = b"From a@x Mon Jan  1 00:00:00 2024\nSubject: one\n\nhello\n>From here\n>>From there\n\nFrom b@x Mon Jan  1 00:00:00 2024\r\nSubject: two\r\n\r\n.dot\r\n\r\n\r\nFrom c@x\nSubject: three\n";
        let got = all(mbox, Layout::Mbox, 1 << 20);
        assert_eq!(
            got,
            vec![
                Ok(b"Subject: one\r\n\r\nhello\r\nFrom here\r\n>From there\r\n".to_vec()),
                Ok(b"Subject: two\r\n\r\n.dot\r\n\r\n".to_vec()),
                Ok(b"Subject: three\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn too_big_is_reported_and_the_next_message_still_read() {
        let mut mbox = b"From a\nSubject: big\n\n".to_vec();
        for _ in 0..10_000 {
            mbox.extend_from_slice(b"0123456789012345678901234567890123456789\n");
        }
        mbox.extend_from_slice(b"\nFrom b\nSubject: small\n\nok\n");
        let got = all(&mbox, Layout::Mbox, 100_000);
        assert_eq!(
            got,
            vec![
                Err(DataError::TooBig),
                Ok(b"Subject: small\r\n\r\nok\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn a_line_longer_than_a_piece_is_refused_as_too_long() {
        let mut mbox = b"From a\nSubject: long\n\n".to_vec();
        mbox.extend(std::iter::repeat_n(b'x', 3 * PIECE + 5));
        mbox.extend_from_slice(b"\nFrom b\nSubject: next\n");
        let got = all(&mbox, Layout::Mbox, 1 << 30);
        assert_eq!(
            got,
            vec![
                Err(DataError::LineTooLong),
                Ok(b"Subject: next\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn offsets_point_at_the_from_lines() {
        let mbox = b"From a\nS: 1\n\nFrom b\nS: 2\n";
        let mut m = Messages::new(&mbox[..], Layout::Mbox, 1000);
        let a = m.next_message().unwrap().unwrap();
        let b = m.next_message().unwrap().unwrap();
        assert!(m.next_message().unwrap().is_none());
        assert_eq!((a.index, a.offset), (1, 0));
        assert_eq!((b.index, b.offset), (2, 13));
        assert_eq!(&mbox[13..19], b"From b");
    }
}
