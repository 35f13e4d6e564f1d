//! Splits a raw message's top-level header section into fields by byte offset.
//! Each field keeps its exact bytes (folds and the terminating CRLF included) so a stage can
//! drop or replace one field and copy every other byte through untouched.

use std::ops::Range;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// A line in the header section that is neither a field nor a continuation. A mail parser
    /// would silently drop it; since it may be a mangled `To:`, we refuse to guess.
    #[error("header line {line} is not a valid header field (no colon or bad field name)")]
    MalformedLine { line: usize },
    #[error("the message starts with a continuation line")]
    LeadingContinuation,
    /// A CR not followed by LF (or CR-only line ends, as old Mac tools save). `serve` refuses
    /// such data outright, and readers disagree on whether a bare CR ends a line, so the
    /// header cannot be split for sure.
    #[error("header line {line} contains a carriage return without line feed (bare CR)")]
    BareCr { line: usize },
    /// Every field costs a fixed record however short it is; a header of millions of empty
    /// fields would make memory a multiple of the message that a peer chooses.
    #[error("the header section has more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// Most fields a header section may have (mail seen in practice has a few dozen; a loop is
/// stopped by MTAs at 50 to 100 Received fields).
pub const MAX_FIELDS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct HeaderField<'a> {
    /// Field name as written (no trailing whitespace before the colon).
    pub name: &'a [u8],
    /// Everything after the colon up to (not including) the final CRLF, folds included.
    pub value: &'a [u8],
    /// The whole field in the raw message, including folds and its final line ending.
    pub range: Range<usize>,
}

impl HeaderField<'_> {
    pub fn name_is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

#[derive(Debug, Clone)]
pub struct HeaderSection<'a> {
    pub fields: Vec<HeaderField<'a>>,
    /// Offset just past the last field (where the blank separator line starts, if any).
    pub header_end: usize,
    /// Offset of the first body byte (after the blank line); `raw.len()` when there is no body.
    pub body_offset: usize,
}

/// Splits the header section. Accepts CRLF or LF line ends (files on disk often use LF); a bare
/// CR anywhere in the header section is refused.
pub fn split(raw: &[u8]) -> Result<HeaderSection<'_>, HeaderError> {
    let mut fields: Vec<HeaderField<'_>> = Vec::new();
    let mut value_starts: Vec<usize> = Vec::new();
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < raw.len() {
        line_no += 1;
        let line_end = memchr::memchr(b'\n', &raw[pos..]).map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..line_end];
        let content = trim_eol(line);
        if memchr::memchr(b'\r', content).is_some() {
            return Err(HeaderError::BareCr { line: line_no });
        }
        if content.is_empty() {
            return Ok(HeaderSection {
                fields,
                header_end: pos,
                body_offset: line_end,
            });
        }
        if content[0] == b' ' || content[0] == b'\t' {
            let Some(last) = fields.last_mut() else {
                return Err(HeaderError::LeadingContinuation);
            };
            last.range.end = line_end;
            let value_start = value_starts.last().copied().unwrap_or(pos);
            last.value = &raw[value_start..line_end - (line.len() - content.len())];
        } else {
            let Some(colon) = content.iter().position(|&b| b == b':') else {
                return Err(HeaderError::MalformedLine { line: line_no });
            };
            let name = trim_trailing_ws(&content[..colon]);
            if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                return Err(HeaderError::MalformedLine { line: line_no });
            }
            if fields.len() == MAX_FIELDS {
                return Err(HeaderError::TooManyFields);
            }
            value_starts.push(pos + colon + 1);
            fields.push(HeaderField {
                name,
                value: &content[colon + 1..],
                range: pos..line_end,
            });
        }
        pos = line_end;
    }
    Ok(HeaderSection {
        fields,
        header_end: raw.len(),
        body_offset: raw.len(),
    })
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_trailing_ws(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_folded_and_obsolete_fields() {
        let raw = b"From: a@x\r\nTo : b@y,\r\n c@z\r\nSubject: hi\r\n\r\nbody\r\n";
        let h = split(raw).expect("valid");
        assert_eq!(h.fields.len(), 3);
        assert!(h.fields[1].name_is("to"));
        assert_eq!(h.fields[1].value, b" b@y,\r\n c@z");
        assert_eq!(&raw[h.fields[1].range.clone()], b"To : b@y,\r\n c@z\r\n");
        assert_eq!(&raw[h.body_offset..], b"body\r\n");
        assert_eq!(h.header_end, raw.len() - 8);
    }

    #[test]
    fn refuses_more_fields_than_the_bound() {
        let mut raw = b"X: y\r\n".repeat(MAX_FIELDS);
        raw.extend_from_slice(b"\r\nbody\r\n");
        assert_eq!(split(&raw).expect("at the bound").fields.len(), MAX_FIELDS);
        let mut raw = b"X: y\r\n".repeat(MAX_FIELDS + 1);
        raw.extend_from_slice(b"\r\nbody\r\n");
        assert_eq!(split(&raw).unwrap_err(), HeaderError::TooManyFields);
    }

    #[test]
    fn refuses_line_without_colon() {
        assert_eq!(
            split(b"From: a@x\r\nT o b@y\r\n\r\n").unwrap_err(),
            HeaderError::MalformedLine { line: 2 }
        );
    }

    #[test]
    fn refuses_bare_cr_and_cr_only_line_ends() {
        assert_eq!(
            split(b"From: a@x\r\nTo: b@y\rCc: c@z\r\n\r\n").unwrap_err(),
            HeaderError::BareCr { line: 2 }
        );
        assert_eq!(
            split(b"From: a@x\rTo: b@y\r\rbody\r").unwrap_err(),
            HeaderError::BareCr { line: 1 }
        );
        // A CR inside a fold is as bare as anywhere else.
        assert_eq!(
            split(b"To: a@x,\r\n \rb@y\r\n\r\n").unwrap_err(),
            HeaderError::BareCr { line: 2 }
        );
        // The body is not the splitter's business.
        assert!(split(b"To: a@x\r\n\r\nbody\rmore\r\n").is_ok());
    }

    #[test]
    fn header_only_message() {
        let h = split(b"To: a@b\r\n").expect("valid");
        assert_eq!(h.body_offset, 9);
        assert_eq!(h.fields.len(), 1);
    }
}
