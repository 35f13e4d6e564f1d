//! Recipient traces a rewrite must not leave behind (SPEC section 2, issue 13.5): fields that
//! copy envelope recipients, the `for` clause of `Received:`, a DKIM `z=` copy of the recipient
//! fields, and where the new `To:` goes so it does not land inside a Resent block.

use std::ops::Range;

use crate::message::header::{HeaderField, HeaderSection};

/// Fields that exist only to name envelope recipients (or, `Mail-Followup-To`, the whole
/// recipient list for a "reply to all"). Removed whole from rewritten and split messages.
pub(super) const TRACE_FIELDS: &[&str] = &[
    "x-original-to",
    "delivered-to",
    "apparently-to",
    "x-envelope-to",
    "envelope-to",
    "x-envelope-recipient",
    "x-rcpt-to",
    "x-original-recipient",
    "original-recipient",
    "x-forwarded-to",
    "x-ms-exchange-organization-originalenveloperecipients",
    "mail-followup-to",
];

/// Fields whose copy in a DKIM `z=` tag names recipients.
const Z_RECIPIENT_FIELDS: &[&str] = &["to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"];

/// Keywords that start a clause of a `Received:` field (RFC 5321 4.4).
const RECEIVED_CLAUSES: &[&str] = &["from", "by", "via", "with", "id", "for"];

/// Byte offset of `field`'s value (just past the colon) inside the field's own bytes.
fn value_start(field_bytes: &[u8]) -> usize {
    field_bytes
        .iter()
        .position(|&b| b == b':')
        .map_or(field_bytes.len(), |i| i + 1)
}

fn eq_ci(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn contains_ci(hay: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Word,
    Comment,
    Semicolon,
}

/// Splits a structured value into top-level words, comments and semicolons (positions relative to
/// `v`). Quoted strings and `<...>` stay inside their word; an unterminated one runs to the end.
fn items(v: &[u8]) -> Vec<(Item, Range<usize>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        if is_ws(b) {
            i += 1;
        } else if b == b';' {
            out.push((Item::Semicolon, i..i + 1));
            i += 1;
        } else if b == b'(' {
            let start = i;
            let mut depth = 0usize;
            while i < v.len() {
                match v[i] {
                    b'\\' => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            out.push((Item::Comment, start..i.min(v.len())));
        } else {
            let start = i;
            while i < v.len() && !is_ws(v[i]) && v[i] != b';' && v[i] != b'(' {
                let close = match v[i] {
                    b'"' => Some(b'"'),
                    b'<' => Some(b'>'),
                    _ => None,
                };
                i += 1;
                if let Some(close) = close {
                    while i < v.len() && v[i] != close {
                        if v[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
            }
            out.push((Item::Word, start..i.min(v.len())));
        }
    }
    out
}

/// A `Received:` field (whole, with its line end) without its `for` clause(s), every other byte
/// kept; `None` when it has none. The clause runs from the whitespace before `for` to the last
/// word or comment before the `;` (or the next clause keyword).
pub(super) fn received_without_for(field: &[u8]) -> Option<Vec<u8>> {
    let vs = value_start(field);
    let value = &field[vs..];
    let items = items(value);
    let mut cut: Vec<Range<usize>> = Vec::new();
    let mut k = 0;
    while k < items.len() {
        let (kind, r) = (items[k].0, items[k].1.clone());
        if kind == Item::Semicolon {
            break; // the date follows
        }
        if kind == Item::Word && eq_ci(&value[r.clone()], "for") {
            let mut end = r.end;
            let mut j = k + 1;
            while j < items.len() {
                let (kj, rj) = (items[j].0, items[j].1.clone());
                let keyword = kj == Item::Word
                    && RECEIVED_CLAUSES
                        .iter()
                        .any(|w| eq_ci(&value[rj.clone()], w));
                if kj == Item::Semicolon || keyword {
                    break;
                }
                end = rj.end;
                j += 1;
            }
            let mut start = r.start;
            while start > 0 && is_ws(value[start - 1]) {
                start -= 1;
            }
            cut.push(vs + start..vs + end);
            k = j;
        } else {
            k += 1;
        }
    }
    if cut.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut cursor = 0;
    for r in cut {
        out.extend_from_slice(&field[cursor..r.start]);
        cursor = r.end;
    }
    out.extend_from_slice(&field[cursor..]);
    Some(out)
}

/// Whether any of `recipients` (addr-specs) appears in `bytes`, letter case ignored.
pub(super) fn names_any<'r>(bytes: &[u8], mut recipients: impl Iterator<Item = &'r str>) -> bool {
    recipients.any(|r| contains_ci(bytes, r))
}

/// The `z=` tag of a DKIM-Signature (or ARC-Message-Signature) value: its range in `value`
/// (from the tag name through its `;`, or from the previous `;` when it is the last tag).
fn z_tag(value: &[u8]) -> Option<(Range<usize>, Range<usize>)> {
    let mut start = 0;
    let mut prev_semi = None;
    loop {
        let end = value[start..]
            .iter()
            .position(|&b| b == b';')
            .map_or(value.len(), |i| start + i);
        let tag = &value[start..end];
        if let Some(eq) = tag.iter().position(|&b| b == b'=') {
            let name: Vec<u8> = tag[..eq].iter().copied().filter(|&b| !is_ws(b)).collect();
            if name == b"z" {
                let content = start + eq + 1..end;
                let whole = if end < value.len() {
                    // "z=...;" and the whitespace after the `;`.
                    let mut e = end + 1;
                    while e < value.len() && is_ws(value[e]) {
                        e += 1;
                    }
                    let mut s = start;
                    while s < end && is_ws(value[s]) {
                        s += 1;
                    }
                    s..e
                } else {
                    // Last tag: drop the `;` before it too (and any trailing folding).
                    let s = prev_semi.unwrap_or(start);
                    let mut e = end;
                    while e > s && is_ws(value[e - 1]) {
                        e -= 1;
                    }
                    s..e
                };
                return Some((whole, content));
            }
        }
        if end >= value.len() {
            return None;
        }
        prev_semi = Some(end);
        start = end + 1;
    }
}

/// dkim-quoted-printable (RFC 6376 2.11) decoded, folding whitespace dropped.
fn dkim_qp_decode(v: &[u8]) -> Vec<u8> {
    let v: Vec<u8> = v.iter().copied().filter(|&b| !is_ws(b)).collect();
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'=' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(n) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(n);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// Whether a signature field's `z=` copies a recipient field or a value naming a recipient.
pub(super) fn z_names_recipients<'r>(
    field: &HeaderField<'_>,
    recipients: impl Iterator<Item = &'r str> + Clone,
) -> bool {
    let Some((_, content)) = z_tag(field.value) else {
        return false;
    };
    let decoded = dkim_qp_decode(&field.value[content]);
    decoded.split(|&b| b == b'|').any(|copy| {
        let name = copy.split(|&b| b == b':').next().unwrap_or_default();
        Z_RECIPIENT_FIELDS
            .iter()
            .chain(TRACE_FIELDS)
            .any(|n| eq_ci(name, n))
            || (eq_ci(name, "received") && contains_ci(copy, "for"))
            || names_any(copy, recipients.clone())
    })
}

/// The whole signature field (with its line end) without its `z=` tag; other bytes unchanged.
pub(super) fn without_z_tag(field_bytes: &[u8]) -> Vec<u8> {
    let vs = value_start(field_bytes);
    let Some((whole, _)) = z_tag(&field_bytes[vs..]) else {
        return field_bytes.to_vec();
    };
    let mut out = field_bytes[..vs + whole.start].to_vec();
    out.extend_from_slice(&field_bytes[vs + whole.end..]);
    out
}

/// Where the single new `To:` goes: where the first `To`/`Cc` is, unless that is inside the
/// Resent blocks; else right after the last `Resent-*` field; else at the end of the header.
///
/// RFC 5322 3.6.6: each resend prepends a block of `Resent-*` fields that must stay together, and
/// the message's own originator/destination fields come after all of them. A `To:` inside the
/// blocks would be read as part of a resend (or split one in two), so when the first To/Cc sits
/// between `Resent-*` fields (or there is only a `Resent-To`/`Resent-Cc`), the `To:` goes right
/// after the last `Resent-*` field: the first position that belongs to the original message.
pub(super) fn to_anchor(h: &HeaderSection<'_>) -> usize {
    let is_resent =
        |f: &HeaderField<'_>| f.name.len() > 7 && f.name[..7].eq_ignore_ascii_case(b"resent-");
    let first_resent = h.fields.iter().position(is_resent);
    let last_resent = h.fields.iter().rposition(is_resent);
    let inside =
        |i: usize| matches!((first_resent, last_resent), (Some(a), Some(b)) if a < i && i < b);
    let first_to = h
        .fields
        .iter()
        .enumerate()
        .find(|(i, f)| (f.name_is("to") || f.name_is("cc")) && !inside(*i));
    match (first_to, last_resent) {
        (Some((_, f)), _) => f.range.start,
        (None, Some(last)) => h.fields[last].range.end,
        (None, None) => h.header_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::header::split;

    #[test]
    fn received_for_clause_is_cut_and_nothing_else() {
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"Received: from a (a [192.0.2.1])\r\n\tby mx (Postfix) with ESMTPS id 4X\r\n\tfor <bob@y.net>; Tue, 1 Jan 2030 00:00:00 +0000\r\n",
                b"Received: from a (a [192.0.2.1])\r\n\tby mx (Postfix) with ESMTPS id 4X; Tue, 1 Jan 2030 00:00:00 +0000\r\n",
            ),
            (
                b"Received: from x by y with esmtp (Exim 4.96) (envelope-from <a@x>) id 1r FOR bob@y.net (orig); Tue\n",
                b"Received: from x by y with esmtp (Exim 4.96) (envelope-from <a@x>) id 1r; Tue\n",
            ),
            (
                b"Received: by y for <\"odd; one\"@y.net>, <c@z> id 7; Tue\r\n",
                b"Received: by y id 7; Tue\r\n",
            ),
        ];
        for (input, want) in cases {
            let got = received_without_for(input).expect("has a for clause");
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        }
        assert!(
            received_without_for(b"Received: from a by b (for real) with x; Tue\r\n").is_none()
        );
        assert!(received_without_for(b"Received: from a by b; for Tue\r\n").is_none());
    }

    #[test]
    fn z_tag_detection_and_removal() {
        let raw = b"DKIM-Signature: v=1; d=x.org; s=s; h=from:to;\r\n\tz=From:a@x.org|To:b=40y.net|Subject:hi; bh=A; b=B\r\n\r\n";
        let h = split(raw).unwrap();
        assert!(z_names_recipients(&h.fields[0], std::iter::empty()));
        assert_eq!(
            without_z_tag(raw.split_at(h.header_end).0),
            b"DKIM-Signature: v=1; d=x.org; s=s; h=from:to;\r\n\tbh=A; b=B\r\n".to_vec()
        );
        let last = b"DKIM-Signature: v=1; b=B;\r\n\tz=Subject:mail=20for=20b=40y.net\r\n\r\n";
        let h = split(last).unwrap();
        assert!(!z_names_recipients(&h.fields[0], ["c@z.net"].into_iter()));
        assert!(z_names_recipients(&h.fields[0], ["B@Y.net"].into_iter()));
        assert_eq!(
            without_z_tag(last.split_at(h.header_end).0),
            b"DKIM-Signature: v=1; b=B\r\n".to_vec()
        );
        let none = b"DKIM-Signature: v=1; b=B\r\n\r\n";
        let h = split(none).unwrap();
        assert!(!z_names_recipients(&h.fields[0], ["b@y.net"].into_iter()));
    }

    #[test]
    fn new_to_stays_out_of_resent_blocks() {
        let at = |raw: &[u8]| {
            let h = split(raw).unwrap();
            let i = to_anchor(&h);
            String::from_utf8_lossy(&raw[i..])
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(at(b"From: a\r\nTo: b\r\n\r\n"), "To: b");
        assert_eq!(
            at(b"Resent-From: r\r\nResent-To: s\r\nResent-Date: d\r\nFrom: a\r\nCc: b\r\n\r\n"),
            "Cc: b"
        );
        assert_eq!(
            at(b"Resent-From: r\r\nResent-To: s\r\nFrom: a\r\nSubject: q\r\n\r\n"),
            "From: a"
        );
        assert_eq!(
            at(b"Resent-From: r\r\nTo: x\r\nResent-To: s\r\nFrom: a\r\nSubject: q\r\n\r\n"),
            "From: a"
        );
        assert_eq!(
            at(b"Resent-From: r\r\nResent-To: s\r\nReceived: x\r\nResent-From: t\r\nFrom: a\r\nTo: b\r\n\r\n"),
            "To: b"
        );
        assert_eq!(at(b"From: a\r\nSubject: s\r\n\r\n"), "");
    }
}
