//! Building a line that can always be read back: the visible-recipient list is summarised
//! (count, digest, first entries) when it is long, and free text is cut, so no record exceeds
//! [`MAX_RECORD_BYTES`] whatever the message held. Summarising streams: it keeps one 32-byte
//! MAC (or one `&str`) per address for the sort, never a second list of strings or a JSON tree.

use super::pseudonym::{HmacKey, PREFIX};
use super::record::{Kind, OutcomeRecord, RecipientSummary, Record};
use super::{AuditError, AuditEvent, AuditOutcome};
use crate::config::{Action, Mode, RecipientStorage};
use crate::policy::AddressSet;

/// No line of the log is longer than this (LF included).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Entries kept in `recipients` when the list is summarised.
pub const LISTED_WHEN_SUMMARISED: usize = 100;

/// Lists beyond this length are always summarised.
pub const LIST_ALL_UP_TO: usize = 500;

/// A summary made before the record is built (off the writer thread): the full count and
/// [`recipients_digest`]; the event then keeps only the first entries.
#[derive(Debug, Clone)]
pub struct Precomputed {
    pub count: usize,
    pub sha256: String,
}

/// Summarises a list longer than [`LIST_ALL_UP_TO`] in place: computes the digest and cuts
/// `visible` to its first [`LISTED_WHEN_SUMMARISED`] entries, freeing the rest. None when
/// there is nothing to summarise (short list, `none` storage, or no key at hand).
pub fn precompute(
    storage: RecipientStorage,
    key: Option<&HmacKey>,
    visible: &mut AddressSet,
) -> Option<Precomputed> {
    let needs_key = storage == RecipientStorage::Hmac;
    if visible.len() <= LIST_ALL_UP_TO
        || storage == RecipientStorage::None
        || (needs_key && key.is_none())
    {
        return None;
    }
    let sha256 = recipients_digest(storage, key, visible);
    let count = visible.len();
    visible.truncate(LISTED_WHEN_SUMMARISED);
    visible.freeze();
    Some(Precomputed { count, sha256 })
}

/// One way of fitting a record, tried in order until the line fits.
struct Step {
    /// Lists every recipient when there are at most this many.
    list_all_up_to: usize,
    /// Otherwise lists this many, with a summary.
    listed: usize,
    /// Longest free-text value, bytes.
    text_cap: usize,
}

const STEPS: [Step; 3] = [
    Step {
        list_all_up_to: LIST_ALL_UP_TO,
        listed: LISTED_WHEN_SUMMARISED,
        text_cap: 4096,
    },
    Step {
        list_all_up_to: LISTED_WHEN_SUMMARISED,
        listed: LISTED_WHEN_SUMMARISED,
        text_cap: 1024,
    },
    // Always fits: a dozen values of at most 64 characters (6 bytes each escaped) and a summary.
    Step {
        list_all_up_to: 0,
        listed: 0,
        text_cap: 64,
    },
];

/// `s`, cut at a character boundary to at most `max` bytes, saying so when cut.
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[cut, {} bytes in all]", &s[..end], s.len())
}

/// An upstream reply with every word holding an `@` replaced by `[address]`: refusals quote the
/// recipient (`550 5.1.1 <b@example.net>: Recipient address rejected`), and the log must not
/// become a second copy of who was written to. Codes, queue ids and the rest of the text stay.
pub fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        out.push_str(if word.contains('@') {
            "[address]"
        } else {
            word
        });
        let space_end = after
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(after.len());
        out.push_str(&after[..space_end]);
        rest = &after[space_end..];
    }
    out
}

fn cap_opt(s: &Option<String>, max: usize) -> Option<String> {
    s.as_deref().map(|v| cap(v, max))
}

/// Hex SHA-256 over the stored forms of all `visible` addresses, sorted, each followed by LF.
/// Sorting holds 8 bytes an address (an index and a MAC prefix), never a copy of the list or
/// of its MACs; the MACs are computed again in sorted order.
pub fn recipients_digest(
    storage: RecipientStorage,
    key: Option<&HmacKey>,
    visible: &AddressSet,
) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let entry = |i: u64| visible.get(i as usize).unwrap_or_default();
    match (storage, key) {
        (RecipientStorage::Hmac, Some(key)) => {
            let batch = key.batch();
            // (first 4 MAC bytes << 32) | index: sorted, equal prefixes end up side by side.
            let mut order: Vec<u64> = visible
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let m = batch.raw(a);
                    (u64::from(u32::from_be_bytes([m[0], m[1], m[2], m[3]])) << 32) | i as u64
                })
                .collect();
            order.sort_unstable();
            let mut buf = [0u8; 5 + 64 + 1];
            buf[..5].copy_from_slice(PREFIX.as_bytes());
            buf[69] = b'\n';
            for run in order.chunk_by(|a, b| a >> 32 == b >> 32) {
                let mut macs: Vec<[u8; 32]> = run
                    .iter()
                    .map(|&k| batch.raw(entry(k & 0xffff_ffff)))
                    .collect();
                macs.sort_unstable();
                for m in &macs {
                    // 32 bytes always fit 64 hex digits.
                    if hex::encode_to_slice(m, &mut buf[5..69]).is_ok() {
                        h.update(&buf);
                    }
                }
            }
        }
        _ => {
            let mut order: Vec<u32> = (0..visible.len().min(u32::MAX as usize) as u32).collect();
            order.sort_unstable_by(|&a, &b| entry(a.into()).cmp(entry(b.into())));
            for i in order {
                h.update(entry(i.into()).as_bytes());
                h.update(b"\n");
            }
        }
    }
    hex::encode(h.finish())
}

/// What a `decision` or `record` line needs besides the event.
pub struct Context<'a> {
    /// Set when the caller summarised already (then `visible` is the first entries only).
    pub summary: Option<&'a Precomputed>,
    pub storage: RecipientStorage,
    pub key: Option<&'a HmacKey>,
    pub policy_version: &'a str,
    pub kind: Kind,
    pub seq: u64,
    pub prev: &'a str,
    pub time: &'a str,
}

/// The sealed line (LF included, at most [`MAX_RECORD_BYTES`]) and its hash.
pub fn event_line(e: &AuditEvent, c: &Context<'_>) -> Result<(Vec<u8>, String), AuditError> {
    let mode = match c.storage {
        RecipientStorage::Hmac => "hmac",
        RecipientStorage::Plain => "plain",
        RecipientStorage::None => "none",
    };
    if c.storage == RecipientStorage::Hmac && c.key.is_none() {
        return Err(AuditError::Unavailable("no HMAC key loaded".into()));
    }
    let batch = c.key.map(HmacKey::batch);
    let stored = |a: &str| match &batch {
        Some(b) => b.pseudonym(a),
        None => a.to_string(),
    };
    let count = c.summary.map_or(e.visible.len(), |s| s.count);
    let mut digest: Option<String> = c.summary.map(|s| s.sha256.clone());
    for step in &STEPS {
        let (recipients, summary) = if c.storage == RecipientStorage::None {
            (None, None)
        } else if count <= step.list_all_up_to {
            (Some(e.visible.iter().map(stored).collect()), None)
        } else {
            let sha256 = digest
                .get_or_insert_with(|| recipients_digest(c.storage, c.key, &e.visible))
                .clone();
            let listed: Vec<String> = e.visible.iter().take(step.listed).map(stored).collect();
            let summary = RecipientSummary {
                count,
                listed: listed.len(),
                sha256,
            };
            (Some(listed), Some(summary))
        };
        let t = step.text_cap;
        let mut r = Record {
            time: c.time.to_string(),
            seq: c.seq,
            kind: c.kind,
            session: cap(&e.session, t),
            client: cap(&e.client, t),
            auth_user: cap_opt(&e.auth_user, t),
            sender: cap(&e.sender, t),
            message_id: cap_opt(&e.message_id, t),
            rule: cap_opt(&e.rule, t),
            action: e.action,
            mode: e.mode,
            would: e.mode == Mode::Monitor && e.action != Action::Accept,
            reason: cap(&e.reason, t),
            visible_count: count,
            visible_external: e.visible_external,
            external_domains: e.external_domains,
            envelope_recipients: e.envelope_recipients,
            recipients_mode: mode.to_string(),
            recipients,
            recipients_summary: summary,
            upstream: cap_opt(&e.upstream.as_deref().map(without_addresses), t),
            policy_version: cap(c.policy_version, t),
            header_digest_original: cap(&e.header_digest_original, t),
            header_digest_forwarded: cap_opt(&e.header_digest_forwarded, t),
            prev: c.prev.to_string(),
            hash: String::new(),
        };
        let line = r
            .seal()
            .map_err(|e| AuditError::Unavailable(format!("cannot encode record: {e}")))?;
        if line.len() <= MAX_RECORD_BYTES {
            return Ok((line, r.hash));
        }
    }
    Err(AuditError::Unavailable(format!(
        "record does not fit {MAX_RECORD_BYTES} bytes even summarised"
    )))
}

/// The sealed `outcome` line and its hash.
pub fn outcome_line(
    o: &AuditOutcome,
    seq: u64,
    prev: &str,
    time: &str,
) -> Result<(Vec<u8>, String), AuditError> {
    // Four values of at most 4 KiB (escaped: 24 KiB): always within the bound.
    let t = 4096;
    let mut r = OutcomeRecord {
        time: time.to_string(),
        seq,
        kind: Kind::Outcome,
        session: cap(&o.session, t),
        decision_seq: o.decision_seq,
        result: o.result,
        upstream: cap_opt(&o.upstream.as_deref().map(without_addresses), t),
        header_digest_forwarded: cap_opt(&o.header_digest_forwarded, t),
        prev: prev.to_string(),
        hash: String::new(),
    };
    let line = r
        .seal()
        .map_err(|e| AuditError::Unavailable(format!("cannot encode record: {e}")))?;
    Ok((line, r.hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn cap_cuts_at_a_char_boundary_and_says_so() {
        assert_eq!(cap("short", 10), "short");
        let c = cap("ääää", 3);
        assert!(c.starts_with('ä') && c.contains("8 bytes in all"), "{c}");
    }

    #[test]
    fn upstream_replies_lose_the_addresses_they_quote() {
        assert_eq!(
            without_addresses("550 5.1.1 <gone@example.net>: Recipient address rejected"),
            "550 5.1.1 [address] Recipient address rejected"
        );
        assert_eq!(
            without_addresses("250 2.0.0 Ok: queued as 4Xyz"),
            "250 2.0.0 Ok: queued as 4Xyz"
        );
        assert_eq!(without_addresses("a@b  c\td@e"), "[address]  c\t[address]");
    }

    #[test]
    fn digest_ignores_order_and_matches_the_documented_form() {
        let key = HmacKey::from_bytes(vec![7; 32]);
        let a: AddressSet = ["b@x.org", "a@x.org"].into_iter().collect();
        let b: AddressSet = ["a@X.ORG", "b@x.org"].into_iter().collect();
        let da = recipients_digest(RecipientStorage::Hmac, Some(&key), &a);
        assert_eq!(
            da,
            recipients_digest(RecipientStorage::Hmac, Some(&key), &b)
        );
        let mut stored: Vec<String> = a.iter().map(|x| key.pseudonym(x)).collect();
        stored.sort();
        let text: String = stored.iter().map(|s| format!("{s}\n")).collect();
        assert_eq!(da, hex::encode(Sha256::digest(text.as_bytes())));
        let dp = recipients_digest(RecipientStorage::Plain, None, &a);
        assert_eq!(dp, hex::encode(Sha256::digest(b"a@x.org\nb@x.org\n")));
    }

    /// 200,000 addresses give a few MACs that share their first four bytes: the digest still
    /// equals the one over every pseudonym sorted whole.
    #[test]
    fn digest_of_a_long_list_equals_the_plain_sort() {
        let key = HmacKey::from_bytes(vec![9; 32]);
        let list: AddressSet = (0..200_000).map(|i| format!("u{i}@x.org")).collect();
        let mut stored: Vec<String> = list.iter().map(|x| key.pseudonym(x)).collect();
        let prefixes: std::collections::HashSet<&str> = stored.iter().map(|s| &s[5..13]).collect();
        assert!(prefixes.len() < stored.len(), "no shared prefix to test");
        stored.sort();
        let text: String = stored.iter().map(|s| format!("{s}\n")).collect();
        assert_eq!(
            recipients_digest(RecipientStorage::Hmac, Some(&key), &list),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        let mut plain = list.to_vec();
        plain.sort();
        let text: String = plain.iter().map(|s| format!("{s}\n")).collect();
        assert_eq!(
            recipients_digest(RecipientStorage::Plain, None, &list),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
    }
}
