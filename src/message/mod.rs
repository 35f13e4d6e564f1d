//! The values that flow between the stages, built once by the front end:
//! [`Message`] (the raw bytes, held once, with the header section split into fields by byte
//! offset), [`Envelope`] (sender, recipients, MAIL parameters) and [`Client`] (who sent it, how).
//! Later stages read or replace single header fields by offset while every other byte (and the
//! whole body) passes through untouched; nobody splits the header again.

pub mod header;

use std::net::SocketAddr;
use std::ops::Range;

use header::{HeaderField, HeaderSection};

/// A header that cannot be read with certainty: the message must be refused (550 5.6.0), since
/// a mangled line may be a `To:` that every reader would show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unreadable {
    pub reason: String,
}

impl Unreadable {
    /// The refusal for a header section that cannot be split into fields.
    pub fn header(e: header::HeaderError) -> Unreadable {
        Unreadable {
            reason: format!(
                "the message header cannot be read ({e}); the relay cannot tell who would see this message"
            ),
        }
    }
}

/// One field of [`Message`]'s header section, as byte ranges into the raw message.
#[derive(Debug, Clone)]
struct FieldSpan {
    name: Range<usize>,
    value: Range<usize>,
    range: Range<usize>,
}

/// A complete message as received (after DATA/BDAT), with its header section split once.
#[derive(Debug, Clone)]
pub struct Message {
    raw: Vec<u8>,
    fields: Vec<FieldSpan>,
    header_end: usize,
    body_offset: usize,
}

/// A message whose header section could not be split: refused before any stage sees it.
#[derive(Debug)]
pub struct Refused {
    pub raw: Vec<u8>,
    pub why: Unreadable,
}

impl Message {
    /// Splits the header section once. CRLF or LF line ends (files on disk often use LF).
    pub fn parse(raw: Vec<u8>) -> Result<Message, Box<Refused>> {
        let spans = match header::split(&raw) {
            Ok(h) => {
                let base = raw.as_ptr() as usize;
                let offset = |s: &[u8]| s.as_ptr() as usize - base;
                let fields = h
                    .fields
                    .iter()
                    .map(|f| FieldSpan {
                        name: offset(f.name)..offset(f.name) + f.name.len(),
                        value: offset(f.value)..offset(f.value) + f.value.len(),
                        range: f.range.clone(),
                    })
                    .collect();
                Ok((fields, h.header_end, h.body_offset))
            }
            Err(e) => Err(Unreadable::header(e)),
        };
        match spans {
            Ok((fields, header_end, body_offset)) => Ok(Message {
                raw,
                fields,
                header_end,
                body_offset,
            }),
            Err(why) => Err(Box::new(Refused { raw, why })),
        }
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The header section as fields borrowing the raw bytes (no re-scan: built from offsets).
    pub fn header(&self) -> HeaderSection<'_> {
        HeaderSection {
            fields: self
                .fields
                .iter()
                .map(|f| HeaderField {
                    name: &self.raw[f.name.clone()],
                    value: &self.raw[f.value.clone()],
                    range: f.range.clone(),
                })
                .collect(),
            header_end: self.header_end,
            body_offset: self.body_offset,
        }
    }

    /// The header fields without the blank separator line.
    pub fn header_fields_bytes(&self) -> &[u8] {
        &self.raw[..self.header_end]
    }

    /// The header section including the blank line, as received.
    pub fn header_bytes(&self) -> &[u8] {
        &self.raw[..self.body_offset]
    }

    pub fn body(&self) -> &[u8] {
        &self.raw[self.body_offset..]
    }

    /// The unfolded value of the first field called `name`, if any.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| self.raw[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| &self.raw[f.value.clone()])
    }

    /// The Message-ID field's value, whitespace collapsed (for logs and audit records).
    pub fn message_id(&self) -> Option<String> {
        let text = String::from_utf8_lossy(self.field("Message-ID")?);
        let id = text.split_whitespace().collect::<Vec<_>>().join(" ");
        (!id.is_empty()).then_some(id)
    }
}

/// What the client asked for in MAIL FROM besides the address (RFC 6152, 6531, 1870).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// Declared size; 0 = none declared.
    pub size: usize,
}

/// The SMTP envelope of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path as the client meant it (empty = null sender `<>`).
    pub sender: String,
    /// Forward paths the upstream accepted, in order.
    pub recipients: Vec<String>,
    pub params: MailParams,
}

/// Who submitted a message, and how (for the Received field, logs and audit records).
#[derive(Debug, Clone)]
pub struct Client {
    pub session_id: String,
    pub peer: SocketAddr,
    pub helo: Option<String>,
    pub auth_user: Option<String>,
    /// RFC 3848 protocol name (`ESMTPSA`, ...).
    pub protocol: &'static str,
    /// Messages completed in this session before this one (names the Received id).
    pub message_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_view_matches_a_fresh_split() {
        let raw =
            b"From: a@x\r\nTo : b@y,\r\n c@z\r\nMessage-ID:\r\n <1@x>\r\n\r\nbody\r\n".to_vec();
        let fresh: Vec<(Vec<u8>, Vec<u8>, Range<usize>)> = header::split(&raw)
            .expect("valid")
            .fields
            .iter()
            .map(|f| (f.name.to_vec(), f.value.to_vec(), f.range.clone()))
            .collect();
        let m = Message::parse(raw).expect("valid");
        let view: Vec<(Vec<u8>, Vec<u8>, Range<usize>)> = m
            .header()
            .fields
            .iter()
            .map(|f| (f.name.to_vec(), f.value.to_vec(), f.range.clone()))
            .collect();
        assert_eq!(view, fresh);
        assert_eq!(m.body(), b"body\r\n");
        assert_eq!(m.message_id().as_deref(), Some("<1@x>"));
    }

    #[test]
    fn unsplittable_header_is_refused_with_the_bytes_kept() {
        let e = Message::parse(b"From: a@x\r\nT o b@y\r\n\r\n".to_vec()).expect_err("refused");
        assert!(e.why.reason.contains("header line 2"), "{}", e.why.reason);
        assert_eq!(e.raw.len(), 22);
    }
}
