//! Rewrite: applies a decision to the message bytes — strips `Bcc`, hides To/Cc, builds per-recipient
//! copies, re-signs DKIM if configured. Only the header section is ever rebuilt; the body is borrowed,
//! and every header byte not named here passes through unchanged.
//!
//! DKIM choice for `resign`: the relay's signature is prepended and the sender's original (now
//! failing) signature is left in place. RFC 6376 section 6.1 has verifiers treat a failing
//! signature like no signature, so keeping it costs nothing, keeps the header otherwise
//! byte-identical, and leaves evidence of the original signer for anyone investigating.

pub mod dkim;
pub mod plan;
mod traces;

use std::borrow::Cow;
use std::ops::Range;

use crate::config::{DkimOnRewrite, PolicyConfig, RewriteTo};
use crate::message::header::HeaderSection;
use crate::message::Message;
use crate::policy::overrides::OrgDetail;
use crate::policy::Decision;

/// One message as it leaves: the (possibly edited) header section and the untouched body.
pub struct Outgoing<'a> {
    /// Bytes `0..body_offset` of the original (header fields + blank line), edited as policy says.
    pub header: Cow<'a, [u8]>,
    /// The body: borrowed from the received message, except where a split copy's calendar
    /// part was cut down to its invitee.
    pub body: Cow<'a, [u8]>,
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The message is DKIM-signed over To/Cc and policy says to refuse rather than break it.
    #[error("{0}")]
    DkimRefused(String),
    #[error("{0}")]
    Unreadable(String),
    /// Our own DKIM key failed to sign: the relay's fault, so the client should retry later.
    #[error("DKIM signing failed: {0}")]
    Signing(String),
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
    pub fn pass_through<'a>(&self, message: &'a Message) -> Result<Outgoing<'a>, RewriteError> {
        self.pass_through_for(message, &OrgDetail::default())
    }

    /// [`Rewriter::pass_through`] that also removes the decision's override marker.
    pub fn pass_through_for<'a>(
        &self,
        message: &'a Message,
        org: &OrgDetail,
    ) -> Result<Outgoing<'a>, RewriteError> {
        let raw = message.raw();
        let h = message.header();
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = h
            .fields
            .iter()
            .filter(|f| is_one_of(f.name, BLIND_FIELDS))
            .map(|f| (f.range.clone(), Vec::new()))
            .collect();
        edits.extend(org_edits(&h, org));
        let body = &raw[h.body_offset..];
        if edits.is_empty() {
            return Ok(Outgoing {
                header: Cow::Borrowed(&raw[..h.body_offset]),
                body: Cow::Borrowed(body),
            });
        }
        let header = apply_edits(raw, h.body_offset, edits);
        Ok(Outgoing {
            header: Cow::Owned(header),
            body: Cow::Borrowed(body),
        })
    }

    /// Every To/Cc/Resent-To/Resent-Cc replaced by one `To:` that shows nobody else.
    pub fn hide_recipients<'a>(
        &self,
        message: &'a Message,
        sender: &str,
        d: &Decision,
    ) -> Result<Outgoing<'a>, RewriteError> {
        let to = match self.rewrite_to {
            RewriteTo::Sender if safe_address(sender) => format!("<{}>", sender.trim()),
            _ => "undisclosed-recipients:;".to_string(),
        };
        self.replace_recipients(message, &to, "rewritten", d, None, false)
    }

    /// One split copy: `To:` that recipient alone.
    pub fn for_recipient<'a>(
        &self,
        message: &'a Message,
        rcpt: &str,
        d: &Decision,
    ) -> Result<Outgoing<'a>, RewriteError> {
        self.copy_for(message, rcpt, d, false)
    }

    /// One split copy of a calendar invitation: `invitation` is the message with its calendar
    /// parts already cut down to the organizer and `rcpt`, so every DKIM signature (they all
    /// cover the body) breaks and is handled per `dkim.on_rewrite`.
    pub fn for_invitee<'a>(
        &self,
        invitation: &'a Message,
        rcpt: &str,
        d: &Decision,
    ) -> Result<Outgoing<'a>, RewriteError> {
        self.copy_for(invitation, rcpt, d, true)
    }

    fn copy_for<'a>(
        &self,
        message: &'a Message,
        rcpt: &str,
        d: &Decision,
        body_edited: bool,
    ) -> Result<Outgoing<'a>, RewriteError> {
        if !safe_address(rcpt) {
            // Would let an envelope address inject header lines; the SMTP layer should never pass one.
            return Err(RewriteError::Unreadable(format!(
                "recipient address {rcpt:?} cannot be written into a header"
            )));
        }
        let to = format!("<{}>", rcpt.trim());
        self.replace_recipients(message, &to, "split", d, Some(rcpt), body_edited)
    }

    /// Replaces the recipient fields by one `To: to_value`, removes blind copies and every
    /// recipient trace (see [`traces`]), and applies the DKIM setting to signatures this breaks.
    fn replace_recipients<'a>(
        &self,
        message: &'a Message,
        to_value: &str,
        verb: &str,
        d: &Decision,
        rcpt: Option<&str>,
        body_edited: bool,
    ) -> Result<Outgoing<'a>, RewriteError> {
        let raw = message.raw();
        let h = message.header();
        let eol = line_ending(raw, &h);
        // Addresses that must not survive in trace fields: everyone visible, and a split copy's own.
        let names = || d.visible.iter().chain(rcpt.map(str::trim));
        // (range, replacement): empty replacement = field removed, empty range = insertion.
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
        // Names whose set of fields changes: every recipient field present, and `to` (always added).
        let mut altered: Vec<&str> = vec!["to"];
        let mut z_signatures = Vec::new();
        for f in &h.fields {
            let bytes = &raw[f.range.clone()];
            if let Some(name) = RECIPIENT_FIELDS
                .iter()
                .chain(traces::TRACE_FIELDS)
                .find(|n| f.name_is(n))
            {
                edits.push((f.range.clone(), Vec::new()));
                if !altered.contains(name) {
                    altered.push(name);
                }
            } else if is_one_of(f.name, BLIND_FIELDS) {
                edits.push((f.range.clone(), Vec::new()));
            } else if is_org_edited(f, &d.org) {
                // Override marker (policy::overrides): edited below, once.
                continue;
            } else if f.name_is("received") {
                let kept = traces::received_without_for(bytes);
                let text = kept.as_deref().unwrap_or(bytes);
                if traces::names_any(text, names()) {
                    // A recipient named elsewhere in the field (a comment): the field goes.
                    edits.push((f.range.clone(), Vec::new()));
                } else if let Some(kept) = kept {
                    edits.push((f.range.clone(), kept));
                } else {
                    continue;
                }
                if !altered.contains(&"received") {
                    altered.push("received");
                }
            } else if (f.name_is("dkim-signature") || f.name_is("arc-message-signature"))
                && traces::z_names_recipients(f, names())
            {
                z_signatures.push(f);
            }
        }

        let mut broken = dkim::signatures_covering(&h, &altered);
        if body_edited {
            // Every signature covers the body (bh=): all of them break.
            for f in h.fields.iter().filter(|f| f.name_is("dkim-signature")) {
                let label = dkim::signer_label(f.value);
                if !broken.contains(&label) {
                    broken.push(label);
                }
            }
        }
        for f in &z_signatures {
            let label = dkim::signer_label(f.value);
            if !broken.contains(&label) {
                broken.push(label);
            }
        }
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
        // A kept signature must not carry a copy of the hidden fields in its z= tag.
        for f in z_signatures {
            edits.push((
                f.range.clone(),
                traces::without_z_tag(&raw[f.range.clone()]),
            ));
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
        let at = traces::to_anchor(&h);
        edits.push((at..at, added));
        edits.extend(org_edits(&h, &d.org));
        let mut header = apply_edits(raw, h.body_offset, edits);
        let body = &raw[h.body_offset..];
        if resign {
            if let Some(signer) = &self.signer {
                let sig = signer
                    .sign(&header, body, eol)
                    .map_err(|e| RewriteError::Signing(format!("{e:#}")))?;
                header.splice(0..0, sig);
            } else {
                // Rewriter::new refuses `resign` without a key, so this is a wiring mistake; refuse safely.
                return Err(RewriteError::DkimRefused(DKIM_REFUSED_TEXT.to_string()));
            }
        }
        Ok(Outgoing {
            header: Cow::Owned(header),
            body: Cow::Borrowed(body),
        })
    }
}

/// DKIM signatures (`d=… s=…`) in the message whose `h=` covers a recipient field: a rewrite or
/// split breaks them. Empty for an unreadable header.
pub fn dkim_signatures_over_recipients(message: &Message) -> Vec<String> {
    dkim::signatures_covering(&message.header(), RECIPIENT_FIELDS)
}

/// Whether organisation policy edits this field (an override marker to strip or a tagged Subject).
fn is_org_edited(f: &crate::message::header::HeaderField<'_>, org: &OrgDetail) -> bool {
    org.strip_fields.iter().any(|n| f.name_is(n))
        || (org.subject_field.is_some() && f.name_is("subject"))
}

/// The edits that remove override markers (policy::overrides) from the header.
fn org_edits(h: &HeaderSection<'_>, org: &OrgDetail) -> Vec<(Range<usize>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut subject_done = false;
    for f in &h.fields {
        if org.strip_fields.iter().any(|n| f.name_is(n)) {
            out.push((f.range.clone(), Vec::new()));
        } else if let (Some(s), true, false) =
            (&org.subject_field, f.name_is("subject"), subject_done)
        {
            out.push((f.range.clone(), s.clone()));
            subject_done = true;
        }
    }
    out
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

/// Copies `raw[..body_offset]` with each edit's range replaced by its bytes (empty bytes =
/// removal, empty range = insertion). Ranges are whole fields or field boundaries, disjoint.
fn apply_edits(raw: &[u8], body_offset: usize, mut edits: Vec<(Range<usize>, Vec<u8>)>) -> Vec<u8> {
    // An insertion sorts before a removal starting at the same byte.
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    // Sized for what stays: a header of 25 MB of To/Cc becomes a few hundred bytes.
    let removed: usize = edits.iter().map(|(r, _)| r.len()).sum();
    let mut out = Vec::with_capacity((body_offset + extra + 2).saturating_sub(removed));
    let mut cursor = 0usize;
    for (r, bytes) in edits {
        let start = r.start.max(cursor);
        out.extend_from_slice(&raw[cursor..start]);
        // A last field without a line end (header-only message) must not run into the new one.
        if r.is_empty() && !bytes.is_empty() && !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&bytes);
        cursor = r.end.max(cursor);
    }
    out.extend_from_slice(&raw[cursor..body_offset]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(raw: &[u8]) -> Message {
        Message::parse(raw.to_vec()).expect("splittable header")
    }

    fn decision(rule: &str) -> Decision {
        Decision {
            action: crate::config::Action::Rewrite,
            mode: crate::config::Mode::Enforce,
            rule: Some(rule.into()),
            reason: String::new(),
            visible: Default::default(),
            visible_external: 0,
            external_domains: 0,
            bcc_header_stripped: false,
            reject_text: None,
            notify_sender: false,
            not_counted: Default::default(),
            lenient_fields: vec![],
            org: Default::default(),
            visible_attendees: vec![],
            exempted_by: None,
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
        let m = msg(raw);
        let out = rw.hide_recipients(&m, "a@x", &decision("r")).unwrap();
        assert_eq!(
            &*out.header,
            b"From: a@x\r\nTo: undisclosed-recipients:;\r\nSubject: s\r\n\r\n"
        );
        assert_eq!(&*out.body, b"body\r\n");
    }

    #[test]
    fn pass_through_borrows_without_bcc() {
        let raw = b"From: a@x\r\nTo: b@y\r\n\r\nbody";
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        let m = msg(raw);
        let out = rw.pass_through(&m).unwrap();
        assert!(matches!(out.header, Cow::Borrowed(_)));
        let raw = b"From: a@x\r\nBcc: b@y,\r\n\tc@z\r\nTo: d@w\r\n\r\nbody";
        let m = msg(raw);
        let out = rw.pass_through(&m).unwrap();
        assert_eq!(&*out.header, b"From: a@x\r\nTo: d@w\r\n\r\n");
    }

    #[test]
    fn lf_messages_keep_lf_and_header_only_messages_work() {
        let raw = b"From: a@x\nCc: b@y\n\nbody\n";
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        let m = msg(raw);
        let out = rw.for_recipient(&m, "b@y", &decision("r")).unwrap();
        assert_eq!(&*out.header, b"From: a@x\nTo: <b@y>\n\n");
        let raw = b"From: a@x";
        let m = msg(raw);
        let out = rw.for_recipient(&m, "b@y", &decision("r")).unwrap();
        assert_eq!(&*out.header, b"From: a@x\r\nTo: <b@y>\r\n");
        assert!(out.body.is_empty());
    }

    #[test]
    fn refuses_injection_through_recipient() {
        let rw = Rewriter::new(&PolicyConfig::default()).unwrap();
        assert!(rw
            .for_recipient(&msg(b"To: a@b\r\n\r\n"), "x@y>\r\nBcc: z@q", &decision("r"))
            .is_err());
        assert!(safe_address("\"a b\"@x.org"));
        assert!(!safe_address("a b@x.org"));
    }
}
