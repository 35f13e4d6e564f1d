//! Strict message reception for DATA (dot-terminated, dot-stuffed) and BDAT (counted chunks).
//!
//! Hand-written because smtp-proto's receivers are lenient in exactly the ways that enable SMTP
//! smuggling (bare LF passes as content, `\r\n.\r\r\n` ends DATA). Here a message ends only at
//! CRLF "." CRLF; any lone CR or LF, a line over 1000 octets or a message over the size limit
//! marks the message as refused, and the rest is read and discarded up to the real end so the
//! session stays in step with the client. A refused message is never forwarded.

/// Longest text line RFC 5321 section 4.5.3.1.6 allows, CRLF included.
pub const MAX_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    BareLf,
    BareCr,
    LineTooLong,
    TooBig,
}

impl DataError {
    /// Label for the rejected-by-reason metric.
    pub fn metric_label(self) -> crate::metrics::RejectReason {
        use crate::metrics::RejectReason;
        match self {
            DataError::BareLf | DataError::BareCr | DataError::LineTooLong => RejectReason::BadData,
            DataError::TooBig => RejectReason::Size,
        }
    }

    pub fn reply(self, limit: usize) -> crate::reply::Reply {
        use crate::reply::Reply;
        match self {
            DataError::BareLf => Reply::new(
                550,
                (5, 6, 0),
                "Message refused: it contains a line feed without carriage return (bare LF); lines must end in CRLF",
            ),
            DataError::BareCr => Reply::new(
                550,
                (5, 6, 0),
                "Message refused: it contains a carriage return without line feed (bare CR); lines must end in CRLF",
            ),
            DataError::LineTooLong => Reply::new(
                550,
                (5, 6, 0),
                format!("Message refused: a line is longer than {MAX_LINE} octets (RFC 5321 limit)"),
            ),
            DataError::TooBig => Reply::new(
                552,
                (5, 3, 4),
                format!("Message refused: it is larger than the limit of {limit} bytes"),
            ),
        }
    }
}

/// Receives the content of one DATA command into `message` (unstuffed, CRLF kept).
#[derive(Debug)]
pub struct DataReader {
    max_size: usize,
    /// Inside an over-long line whose rest is being discarded.
    skipping_long_line: bool,
    /// The previous line ended in a real CRLF. Only then can "." CRLF end the data: after a
    /// bare LF the client and an upstream would disagree on where the message ends.
    after_crlf: bool,
    error: Option<DataError>,
}

/// Outcome of feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed {
    /// Needs more input; all of the given bytes were consumed except `consumed..`.
    More { consumed: usize },
    /// The terminating CRLF.CRLF was found; `consumed` bytes belong to this message.
    Done { consumed: usize },
}

impl DataReader {
    pub fn new(max_size: usize) -> DataReader {
        DataReader {
            max_size,
            skipping_long_line: false,
            after_crlf: true,
            error: None,
        }
    }

    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    fn fail(&mut self, e: DataError, message: &mut Vec<u8>) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        // Nothing of a refused message is kept: it will not be forwarded.
        message.clear();
        message.shrink_to(0);
    }

    /// Consumes complete lines from `input`. A partial last line is left unconsumed (the caller
    /// keeps it and calls again with more bytes), unless it is already too long to be valid.
    pub fn feed(&mut self, input: &[u8], message: &mut Vec<u8>) -> Feed {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_LINE + 1 {
                    // No line end within the limit: the line is too long whatever follows.
                    self.fail(DataError::LineTooLong, message);
                    self.skipping_long_line = true;
                    return Feed::More {
                        consumed: input.len(),
                    };
                }
                return Feed::More { consumed: pos };
            };
            let line = &rest[..=nl];
            pos += nl + 1;
            let ends_in_crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            let at_line_start = std::mem::replace(&mut self.after_crlf, ends_in_crlf);
            if self.skipping_long_line {
                // Tail of an over-long line: cannot be the end marker (that needs a line start).
                self.skipping_long_line = false;
                continue;
            }
            if at_line_start && line == b".\r\n" {
                return Feed::Done { consumed: pos };
            }
            if self.error.is_some() {
                continue;
            }
            if !ends_in_crlf {
                self.fail(DataError::BareLf, message);
                continue;
            }
            let content = &line[..line.len() - 2];
            if memchr::memchr(b'\r', content).is_some() {
                self.fail(DataError::BareCr, message);
                continue;
            }
            // RFC 5321 4.5.2: a leading dot on any other line is transparency padding.
            let unstuffed = if line.first() == Some(&b'.') {
                &line[1..]
            } else {
                line
            };
            if unstuffed.len() > MAX_LINE {
                self.fail(DataError::LineTooLong, message);
                continue;
            }
            if message.len() + unstuffed.len() > self.max_size {
                self.fail(DataError::TooBig, message);
                continue;
            }
            message.extend_from_slice(unstuffed);
        }
        Feed::More { consumed: pos }
    }
}

/// What `serve` ends up with when a client sends `raw` with DATA: the client dot-stuffs it and
/// ends its last line with CRLF (as smtplib and other clients do), and [`DataReader`] reads it
/// back. `Err` is the DATA rule the bytes break, whose [`DataError::reply`] is the client's
/// reply. Lets `bccguard check` refuse exactly what the relay refuses, with the same reply.
pub fn receive_whole(raw: &[u8], max_size: usize) -> Result<Vec<u8>, DataError> {
    let mut wire = Vec::with_capacity(raw.len() + raw.len() / 32 + 8);
    let mut line_start = true;
    for &b in raw {
        if line_start && b == b'.' {
            wire.push(b'.');
        }
        wire.push(b);
        line_start = b == b'\n';
    }
    if !raw.ends_with(b"\r\n") {
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    let mut reader = DataReader::new(max_size);
    let mut message = Vec::new();
    let ended = matches!(reader.feed(&wire, &mut message), Feed::Done { consumed } if consumed == wire.len());
    match reader.error() {
        Some(e) => Err(e),
        // Stuffed as above, only the final CRLF.CRLF can end the data; a message that ends
        // anywhere else was split by a lone LF, which serve refuses as such.
        None if !ended => Err(DataError::BareLf),
        None => Ok(message),
    }
}

/// Checks BDAT content (no dot-stuffing; chunks may split a CRLF) with the same rules as DATA.
#[derive(Debug)]
pub struct ChunkChecker {
    max_size: usize,
    line_len: usize,
    pending_cr: bool,
    error: Option<DataError>,
}

impl ChunkChecker {
    pub fn new(max_size: usize) -> ChunkChecker {
        ChunkChecker {
            max_size,
            line_len: 0,
            pending_cr: false,
            error: None,
        }
    }

    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// Appends `chunk` to `message` if the message is still valid.
    pub fn push(&mut self, chunk: &[u8], message: &mut Vec<u8>) {
        if self.error.is_some() {
            return;
        }
        if message.len() + chunk.len() > self.max_size {
            self.error = Some(DataError::TooBig);
        }
        for &b in chunk {
            if self.error.is_some() {
                break;
            }
            match (self.pending_cr, b) {
                (true, b'\n') => {
                    self.pending_cr = false;
                    self.line_len = 0;
                    continue;
                }
                (true, _) => self.error = Some(DataError::BareCr),
                (false, b'\n') => self.error = Some(DataError::BareLf),
                (false, b'\r') => self.pending_cr = true,
                _ => {}
            }
            self.line_len += 1;
            if self.line_len + 1 > MAX_LINE {
                self.error = Some(DataError::LineTooLong);
            }
        }
        if self.error.is_some() {
            message.clear();
            message.shrink_to(0);
        } else {
            message.extend_from_slice(chunk);
        }
    }

    /// Called after the LAST chunk: a message may not end in a lone CR.
    pub fn finish(&mut self) {
        if self.error.is_none() && self.pending_cr {
            self.error = Some(DataError::BareCr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> (Result<Vec<u8>, DataError>, usize) {
        let mut r = DataReader::new(10_000);
        let mut msg = Vec::new();
        let mut buf = Vec::new();
        // Feed one byte at a time to prove chunk boundaries do not matter.
        for (i, &b) in input.iter().enumerate() {
            buf.push(b);
            match r.feed(&buf, &mut msg) {
                Feed::More { consumed } => {
                    buf.drain(..consumed);
                }
                Feed::Done { .. } => {
                    return (r.error().map_or(Ok(msg), Err), i + 1);
                }
            }
        }
        panic!("no end of data in {input:?}");
    }

    #[test]
    fn plain_message_is_unstuffed_and_ends_at_crlf_dot_crlf() {
        let (msg, used) = read_all(b"Subject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n");
        assert_eq!(
            msg.unwrap(),
            b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n".to_vec()
        );
        assert_eq!(
            used, 38,
            "QUIT after the terminator is not part of the message"
        );
    }

    #[test]
    fn dot_on_first_line_ends_an_empty_message() {
        let (msg, _) = read_all(b".\r\n");
        assert_eq!(msg.unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn smuggling_terminators_do_not_end_data_and_refuse_the_message() {
        for (attack, want) in [
            (&b"a\r\n\n.\nMAIL FROM:<x>\r\n.\r\n"[..], DataError::BareLf),
            (b"a\r\n.\nMAIL FROM:<x>\r\n.\r\n", DataError::BareLf),
            (b"a\n.\n.\r\nMAIL FROM:<x>\r\n.\r\n", DataError::BareLf),
            (b"a\n.\r\nMAIL FROM:<x>\r\n.\r\n", DataError::BareLf),
            (b"a\r.\r\nMAIL FROM:<x>\r\n.\r\n", DataError::BareCr),
            (b"a\r\n.\r\r\nMAIL FROM:<x>\r\n.\r\n", DataError::BareCr),
        ] {
            let (msg, used) = read_all(attack);
            assert_eq!(msg, Err(want), "{attack:?}");
            assert_eq!(
                used,
                attack.len(),
                "must end only at the real CRLF.CRLF: {attack:?}"
            );
        }
        // Here the bytes do contain CRLF.CRLF (`a\r` then `\r\n.\r\n`): every compliant server
        // ends there, so ending there is agreement, not smuggling; the message is still refused.
        let (msg, used) = read_all(b"a\r\r\n.\r\nMAIL FROM:<x>\r\n.\r\n");
        assert_eq!(msg, Err(DataError::BareCr));
        assert_eq!(used, 7);
    }

    #[test]
    fn long_line_is_refused_even_without_newline() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\n.\r\n");
        let (msg, used) = read_all(&input);
        assert_eq!(msg, Err(DataError::LineTooLong));
        assert_eq!(used, input.len());
        let mut ok = vec![b'y'; MAX_LINE - 2];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(read_all(&ok).0.is_ok());
    }

    #[test]
    fn size_limit_is_enforced_during_data() {
        let mut r = DataReader::new(10);
        let mut msg = Vec::new();
        let feed = r.feed(b"0123456789abc\r\n.\r\n", &mut msg);
        assert_eq!(feed, Feed::Done { consumed: 18 });
        assert_eq!(r.error(), Some(DataError::TooBig));
        assert!(msg.is_empty());
    }

    #[test]
    fn receive_whole_matches_what_a_client_sends_with_data() {
        let got = receive_whole(b"Subject: x\r\n\r\n.\r\n..two\r\nlast", 1000);
        assert_eq!(
            got.unwrap(),
            b"Subject: x\r\n\r\n.\r\n..two\r\nlast\r\n".to_vec()
        );
        let cases: [(&[u8], DataError); 5] = [
            (b"To: a@x,\r b@y\r\n\r\nhi\r\n", DataError::BareCr),
            (b"To: a@x\rSubject: mac\r\rbody\r", DataError::BareCr),
            (b"To: a@x\r\n\r\nhi\r\r\n", DataError::BareCr),
            (b"To: a@x\n\nhi\n", DataError::BareLf),
            (b"To: a@x\r\n\r\n.\n.\r\n", DataError::BareLf),
        ];
        for (raw, want) in cases {
            assert_eq!(receive_whole(raw, 1000), Err(want), "{raw:?}");
        }
        let mut long = b"To: a@x\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'.', MAX_LINE - 1));
        long.extend_from_slice(b"\r\n");
        assert_eq!(receive_whole(&long, 10_000), Err(DataError::LineTooLong));
        long.remove(20);
        assert!(
            receive_whole(&long, 10_000).is_ok(),
            "998 octets + CRLF is the limit"
        );
        assert_eq!(receive_whole(&long, 100), Err(DataError::TooBig));
    }

    #[test]
    fn bdat_chunks_split_crlf_safely_and_catch_bare_lf() {
        let mut c = ChunkChecker::new(1000);
        let mut msg = Vec::new();
        c.push(b"a: b\r", &mut msg);
        c.push(b"\n\r\nbody\r\n", &mut msg);
        c.finish();
        assert_eq!(c.error(), None);
        assert_eq!(msg, b"a: b\r\n\r\nbody\r\n".to_vec());
        let mut c = ChunkChecker::new(1000);
        c.push(b"a\n.\n", &mut msg);
        assert_eq!(c.error(), Some(DataError::BareLf));
    }
}
