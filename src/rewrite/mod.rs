//! Rewrite: applies a decision to the message bytes — strips `Bcc`, hides To/Cc, builds per-recipient
//! copies, re-signs DKIM if configured. Only the header section is ever rebuilt; the body is borrowed,
//! and every header byte not named here passes through unchanged.
//!
//! DKIM choice for `resign`: the relay's signature is prepended and the sender's original (now
//! failing) signature is left in place. RFC 6376 section 6.1 has verifiers treat a failing
//! signature like no signature, so keeping it costs nothing, keeps the header otherwise
//! byte-identical, and leaves evidence of the original signer for anyone investigating.

pub mod dkim;
pub mod notice;

use std::borrow::Cow;
use std::ops::Range;

use crate::config::{DkimOnRewrite, PolicyConfig, RewriteTo};
use crate::message::header::{split, HeaderSection};
use crate::policy::Decision;

/// One message as it leaves: the (possibly edited) header section and the untouched body.
pub struct Outgoing<'a> {
    /// Bytes `0..body_offset` of the original (header fields + blank line), edited as policy says.
    pub header: Cow<'a, [u8]>,
    pub body: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The message is DKIM-signed over To/Cc and policy says to refuse rather than break it.
    #[error("{0}")]
    DkimRefused(String),
    #[error("{0}")]
    Unreadable(String),
}

/// The 550 text for a DKIM refusal: one ASCII line, says what to do.
pub const DKIM_REFUSED_TEXT: &str = "Message not sent: it is DKIM-signed over its To/Cc fields, \
which this relay must hide. Put the recipients in Bcc and send it again, or ask IT to let the relay re-sign.";

/// Fields removed from every message: a blind copy must stay blind.
const BLIND_FIELDS: &[&str] = &["bcc", "resent-bcc"];
/// Fields that show recipients to every reader (SPEC section 2).
const RECIPIENT_FIELDS: &[&str] = &["to", "cc", "resent-to", "resent-cc"];

#[derive(Debug)]
pub struct Rewriter {
    rewrite_to: RewriteTo,
    trace_header: Option<String>,
    on_dkim: DkimOnRewrite,
    signer: Option<dkim::Signer>,
}

impl Rewriter {
    /// Builds the rewriter; with `dkim.on_rewrite = "resign"` the key is loaded here, once.
    pub fn new(cfg: &PolicyConfig) -> anyhow::Result<Rewriter> {
        let signer = match cfg.dkim.on_rewrite {
            DkimOnRewrite::Resign => {
                let (Some(key), Some(domain), Some(selector)) =
                    (&cfg.dkim.private_key, &cfg.dkim.domain, &cfg.dkim.selector)
                else {
                    anyhow::bail!(
                        "key `policy.dkim.on_rewrite`: \"resign\" needs policy.dkim.private_key, domain and selector"
                    );
                };
                Some(dkim::Signer::load(key, domain, selector)?)
            }
            _ => None,
        };
        Ok(Rewriter {
            rewrite_to: cfg.rewrite_to,
            trace_header: cfg.trace_header.clone(),
            on_dkim: cfg.dkim.on_rewrite,
            signer,
        })
    }

    /// Unchanged except that any `Bcc` (and `Resent-Bcc`) field is removed.
    pub fn pass_through<'a>(&self, raw: &'a [u8]) -> Result<Outgoing<'a>, RewriteError> {
        let h = split_header(raw)?;
        let removed: Vec<Range<usize>> = h
            .fields
            .iter()
            .filter(|f| is_one_of(f.name, BLIND_FIELDS))
            .map(|f| f.range.clone())
            .collect();
        let body = &raw[h.body_offset..];
        if removed.is_empty() {
            return Ok(Outgoing {
                header: Cow::Borrowed(&raw[..h.body_offset]),
                body,
            });
        }
        let header = splice(raw, &h, &removed, None);
        Ok(Outgoing {
            header: Cow::Owned(header),
            body,
        })
    }

    /// Every To/Cc/Resent-To/Resent-Cc replaced by one `To:` that shows nobody else.
    pub fn hide_recipients<'a>(
        &self,
        raw: &'a [u8],
        sender: &str,
        d: &Decision,
    ) -> Result<Outgoing<'a>, RewriteError> {
        let to = match self.rewrite_to {
            RewriteTo::Sender if safe_address(sender) => format!("<{}>", sender.trim()),
            _ => "undisclosed-recipients:;".to_string(),
        };
        self.replace_recipients(raw, &to, "rewritten", d)
    }

    /// One split copy: `To:` that recipient alone.
    pub fn for_recipient<'a>(
        &self,
        raw: &'a [u8],
        rcpt: &str,
        d: &Decision,
    ) -> Result<Outgoing<'a>, RewriteError> {
        if !safe_address(rcpt) {
            // Would let an envelope address inject header lines; the SMTP layer should never pass one.
            return Err(RewriteError::Unreadable(format!(
                "recipient address {rcpt:?} cannot be written into a header"
            )));
        }
        self.replace_recipients(raw, &format!("<{}>", rcpt.trim()), "split", d)
    }

    /// The short notice to the sender after a rewrite or split (see [`notice`]).
    pub fn sender_notice(
        &self,
        hostname: &str,
        sender: &str,
        d: &Decision,
        original_header: &[u8],
    ) -> Vec<u8> {
        notice::sender_notice(hostname, sender, d, original_header)
    }

    fn replace_recipients<'a>(
        &self,
        raw: &'a [u8],
        to_value: &str,
        verb: &str,
        d: &Decision,
    ) -> Result<Outgoing<'a>, RewriteError> {
        let h = split_header(raw)?;
        let eol = line_ending(raw, &h);
        let mut removed = Vec::new();
        let mut anchor = None;
        // Names whose set of fields changes: every recipient field present, and `to` (always added).
        let mut altered: Vec<&str> = vec!["to"];
        for f in &h.fields {
            if let Some(name) = RECIPIENT_FIELDS.iter().find(|n| f.name_is(n)) {
                anchor.get_or_insert(f.range.start);
                removed.push(f.range.clone());
                if !altered.contains(name) {
                    altered.push(name);
                }
            } else if is_one_of(f.name, BLIND_FIELDS) {
                removed.push(f.range.clone());
            }
        }

        let broken = dkim::signatures_covering(&h, &altered);
        let mut resign = false;
        if !broken.is_empty() {
            match self.on_dkim {
                DkimOnRewrite::Reject => {
                    return Err(RewriteError::DkimRefused(DKIM_REFUSED_TEXT.to_string()))
                }
                DkimOnRewrite::Forward => tracing::warn!(
                    signatures = %broken.join(", "),
                    rule = d.rule.as_deref().unwrap_or("-"),
                    "forwarding a {verb} message whose DKIM signature covers To/Cc: the signature is now broken"
                ),
                DkimOnRewrite::Resign => resign = true,
            }
        }

        let mut added = Vec::with_capacity(to_value.len() + 64);
        added.extend_from_slice(b"To: ");
        added.extend_from_slice(to_value.as_bytes());
        added.extend_from_slice(eol);
        if let Some(name) = &self.trace_header {
            let rule = d.rule.as_deref().unwrap_or("-");
            added.extend_from_slice(format!("{name}: {verb} by bccguard rule '{rule}'").as_bytes());
            added.extend_from_slice(eol);
        }
        let at = anchor.unwrap_or(h.header_end);
        let mut header = splice(raw, &h, &removed, Some((at, &added)));
        let body = &raw[h.body_offset..];
        if resign {
            if let Some(signer) = &self.signer {
                let sig = signer
                    .sign(&header, body, eol)
                    .map_err(|e| RewriteError::Unreadable(format!("{e:#}")))?;
                header.splice(0..0, sig);
            } else {
                // Rewriter::new refuses `resign` without a key, so this is a wiring mistake; refuse safely.
                return Err(RewriteError::DkimRefused(DKIM_REFUSED_TEXT.to_string()));
            }
        }
        Ok(Outgoing {
            header: Cow::Owned(header),
            body,
        })
    }
}

/// DKIM signatures (`d=… s=…`) in the message whose `h=` covers a recipient field: a rewrite or
/// split breaks them. Empty for an unreadable header.
pub fn dkim_signatures_over_recipients(raw: &[u8]) -> Vec<String> {
    split(raw)
        .map(|h| dkim::signatures_covering(&h, RECIPIENT_FIELDS))
        .unwrap_or_default()
}

fn split_header(raw: &[u8]) -> Result<HeaderSection<'_>, RewriteError> {
    split(raw).map_err(|e| RewriteError::Unreadable(e.to_string()))
}

fn is_one_of(name: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// The message's own line-ending style, from its first field (CRLF when there is nothing to go by).
fn line_ending(raw: &[u8], h: &HeaderSection<'_>) -> &'static [u8] {
    match h.fields.first().map(|f| &raw[f.range.clone()]) {
        Some(field) if field.ends_with(b"\r\n") => b"\r\n",
        Some(field) if field.ends_with(b"\n") => b"\n",
        _ => b"\r\n",
    }
}

/// An address we can write between `<` and `>` in a header: printable, no line breaks.
fn safe_address(a: &str) -> bool {
    let a = a.trim();
    if a.is_empty() || !a.contains('@') || a.chars().any(|c| c.is_control() || c == '<' || c == '>')
    {
        return false;
    }
    // A space is only possible inside a quoted local part.
    !a.contains(' ') || a.starts_with('"')
}

/// Copies `raw[..body_offset]` leaving out `removed` (sorted, disjoint field ranges) and
/// putting `insert` at byte `at` (a field boundary).
fn splice(
    raw: &[u8],
    h: &HeaderSection<'_>,
    removed: &[Range<usize>],
    insert: Option<(usize, &[u8])>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(h.body_offset + insert.map_or(0, |(_, b)| b.len()));
    let mut cursor = 0usize;
    let mut pending = insert;
    for r in removed {
        if let Some((at, bytes)) = pending {
            if at <= r.start {
                out.extend_from_slice(&raw[cursor..at]);
                out.extend_from_slice(bytes);
                cursor = at;
                pending = None;
            }
        }
        out.extend_from_slice(&raw[cursor..r.start]);
        cursor = r.end;
    }
    if let Some((at, bytes)) = pending {
        let at = at.max(cursor);
        out.extend_from_slice(&raw[cursor..at]);
        // A last field without a line end (header-only message) must not run into the new one.
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(bytes);
        cursor = at;
    }
    out.extend_from_slice(&raw[cursor..h.body_offset]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(rule: &str) -> Decision {
        Decision {
            action: crate::config::Action::Rewrite,
            mode: crate::config::Mode::Enforce,
            rule: Some(rule.into()),
            reason: String::new(),
            visible: vec![],
            visible_external: 0,
            external_domains: 0,
            bcc_header_stripped: false,
            reject_text: None,
            notify_sender: false,
            not_counted: vec![],
            lenient_fields: vec![],
            visible_attendees: vec![],
        }
    }

    #[test]
    fn rewriter_can_be_shared_between_sessions() {
        fn shared<T: Send + Sync>() {}
        shared::<Rewriter>();
    }

    #[test]
    fn hides_all_recipient_fields_at_first_position() {
        let raw = b"From: a@x\r\nTo: b@y,\r\n c@z\r\nSubject: s\r\ncc: d@w\r\nBcc: e@v\r\nRESENT-TO: f@u\r\n\r\nbody\r\n";
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        let out = rw.hide_recipients(raw, "a@x", &decision("r")).unwrap();
        assert_eq!(
            &*out.header,
            b"From: a@x\r\nTo: undisclosed-recipients:;\r\nSubject: s\r\n\r\n"
        );
        assert_eq!(out.body, b"body\r\n");
    }

    #[test]
    fn pass_through_borrows_without_bcc() {
        let raw = b"From: a@x\r\nTo: b@y\r\n\r\nbody";
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        let out = rw.pass_through(raw).unwrap();
        assert!(matches!(out.header, Cow::Borrowed(_)));
        let raw = b"From: a@x\r\nBcc: b@y,\r\n\tc@z\r\nTo: d@w\r\n\r\nbody";
        let out = rw.pass_through(raw).unwrap();
        assert_eq!(&*out.header, b"From: a@x\r\nTo: d@w\r\n\r\n");
    }

    #[test]
    fn lf_messages_keep_lf_and_header_only_messages_work() {
        let raw = b"From: a@x\nCc: b@y\n\nbody\n";
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        let out = rw.for_recipient(raw, "b@y", &decision("r")).unwrap();
        assert_eq!(&*out.header, b"From: a@x\nTo: <b@y>\n\n");
        let raw = b"From: a@x";
        let out = rw.for_recipient(raw, "b@y", &decision("r")).unwrap();
        assert_eq!(&*out.header, b"From: a@x\r\nTo: <b@y>\r\n");
        assert!(out.body.is_empty());
    }

    #[test]
    fn refuses_injection_through_recipient() {
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        assert!(rw
            .for_recipient(b"To: a@b\r\n\r\n", "x@y>\r\nBcc: z@q", &decision("r"))
            .is_err());
        assert!(safe_address("\"a b\"@x.org"));
        assert!(!safe_address("a b@x.org"));
    }
}
