//! RFC 2047 encoded words as the lenient readers find them, for the address reader's
//! alternative readings ([`super::address`]).
//!
//! Python's `email` (policy.default) takes an encoded word to run from `=?` to the first `?=`
//! (raw specials and even spaces inside included) and accepts it when it has exactly the three
//! fields `charset?B|Q?text`; Thunderbird-style readers decode such words before they look for
//! quotes, comments and commas. This module finds words by that rule and decodes them to UTF-8.
//! Charsets only matter for non-ASCII text, which never changes where an address is, so any
//! ASCII-compatible charset is read as UTF-8 or Latin-1.

use base64::Engine;

/// Finds encoded words in one field value. Every `?=` is located once up front, so a field
/// full of `=?` stays linear to scan (plus a binary search per candidate word).
pub struct Finder<'a> {
    v: &'a [u8],
    /// Offsets of every `?=` in `v`, ascending.
    closes: Vec<usize>,
}

impl<'a> Finder<'a> {
    pub fn new(v: &'a [u8]) -> Finder<'a> {
        Finder {
            v,
            closes: memchr::memmem::find_iter(v, b"?=").collect(),
        }
    }

    /// The first `?=` at or after `from`.
    fn next_close(&self, from: usize) -> Option<usize> {
        let i = self.closes.partition_point(|&c| c < from);
        self.closes.get(i).copied()
    }

    /// The encoded word starting at `start` (which must hold `=?`): its end offset (exclusive)
    /// and decoded text, or `None` when no valid word starts there.
    pub fn word_at(&self, start: usize) -> Option<(usize, Vec<u8>)> {
        if !self.v.get(start..)?.starts_with(b"=?") {
            return None;
        }
        let mut close = self.next_close(start + 2)?;
        // Python: a `?=` right after the encoding letter may be a Q escape (`Q?=22...`).
        let tok = &self.v[start + 2..close];
        let rest = &self.v[close + 2..];
        if rest.len() > 1
            && rest[0].is_ascii_hexdigit()
            && rest[1].is_ascii_hexdigit()
            && tok.iter().filter(|&&b| b == b'?').count() < 2
        {
            close = self.next_close(close + 2)?;
        }
        let tok = &self.v[start + 2..close];
        let decoded = decode_token(tok)?;
        Some((close + 2, decoded))
    }
}

/// Decodes `charset?enc?text` (the inside of an encoded word).
fn decode_token(tok: &[u8]) -> Option<Vec<u8>> {
    let mut parts = tok.split(|&b| b == b'?');
    let (charset, enc, text) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || charset.is_empty() {
        return None;
    }
    let bytes = match enc {
        b"B" | b"b" => lenient_base64(text)?,
        b"Q" | b"q" => decode_q(text),
        _ => return None,
    };
    let charset = String::from_utf8_lossy(charset).to_ascii_lowercase();
    let charset = charset.split('*').next().unwrap_or_default();
    let single_byte = charset.starts_with("iso-8859")
        || charset.starts_with("windows-")
        || charset.starts_with("cp")
        || charset == "latin1";
    Some(if single_byte {
        bytes
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .into_bytes()
    } else {
        String::from_utf8_lossy(&bytes).into_owned().into_bytes()
    })
}

fn decode_q(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'_' => out.push(b' '),
            b'=' if text.len() >= i + 3
                && text[i + 1].is_ascii_hexdigit()
                && text[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&text[i + 1..i + 3]).unwrap_or("3F");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The field value with every encoded word replaced by its decoded text (white space between
/// two adjacent words dropped, RFC 2047 section 6.2), or `None` when it holds none.
pub fn decode_all(v: &[u8]) -> Option<Vec<u8>> {
    let f = Finder::new(v);
    let mut out = Vec::with_capacity(v.len());
    let mut any = false;
    let mut i = 0;
    // Where the white space after the last decoded word starts in `out`, if nothing else
    // followed it yet.
    let mut pending_ws: Option<usize> = None;
    while i < v.len() {
        if v[i] == b'=' {
            if let Some((end, text)) = f.word_at(i) {
                if let Some(ws) = pending_ws.take() {
                    out.truncate(ws);
                }
                out.extend_from_slice(&text);
                any = true;
                i = end;
                pending_ws = Some(out.len());
                continue;
            }
        }
        if !matches!(v[i], b' ' | b'\t' | b'\r' | b'\n') {
            pending_ws = None;
        }
        out.push(v[i]);
        i += 1;
    }
    any.then_some(out)
}

/// Decoded texts of every encoded word in `v` together with their raw bytes, one at a time.
pub fn words(v: &[u8]) -> impl Iterator<Item = (std::ops::Range<usize>, Vec<u8>)> + '_ {
    let f = Finder::new(v);
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(k) = memchr::memmem::find(&v[i..], b"=?") {
            let start = i + k;
            match f.word_at(start) {
                Some((end, text)) => {
                    i = end;
                    return Some((start..end, text));
                }
                None => i = start + 1,
            }
        }
        None
    })
}

/// Base64 as mail readers decode it: whitespace skipped, padding optional, stray trailing bits
/// tolerated (what a reader shows is what counts, not what the encoder should have written).
pub(crate) fn lenient_base64(text: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(clean).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_b_and_q_words() {
        assert_eq!(
            decode_all(b" =?UTF-8?B?SsO2cmc=?= <j@x>").as_deref(),
            Some(" Jörg <j@x>".as_bytes())
        );
        assert_eq!(
            decode_all(b"=?utf-8?Q?Smith=2C_John?= <j@x>").as_deref(),
            Some(&b"Smith, John <j@x>"[..])
        );
        assert_eq!(
            decode_all(b"=?iso-8859-1?q?M=FCller?=").as_deref(),
            Some("Müller".as_bytes())
        );
        assert_eq!(decode_all(b"plain a@x"), None);
    }

    #[test]
    fn adjacent_words_join_and_raw_specials_stay_inside() {
        assert_eq!(
            decode_all(b"=?utf-8?q?a?= \r\n =?utf-8?q?b?= c").as_deref(),
            Some(&b"ab c"[..])
        );
        // Python's rule: the word runs to the first `?=`, a raw quote and comma included.
        assert_eq!(
            decode_all(b"=?utf-8?Q?\"Doe,_J?= <j@x>").as_deref(),
            Some(&b"\"Doe, J <j@x>"[..])
        );
        // `Q?=22` is an escape, not the end of the word.
        let w: Vec<_> = words(b"=?utf-8?Q?=22x?= y").collect();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].1, b"\"x");
        assert_eq!(w[0].0, 0..16);
    }

    #[test]
    fn invalid_words_are_left_alone() {
        assert_eq!(decode_all(b"=?utf-8?X?abc?= =?utf-8?Q?a?b?= =?x"), None);
        assert!(words(&b"=?".repeat(100_000)).next().is_none());
    }
}
