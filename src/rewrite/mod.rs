//! Rewrite: applies a decision to the message bytes — strips `Bcc`, hides To/Cc, builds per-recipient
//! copies, re-signs DKIM if configured. Only the header section is ever rebuilt; the body is borrowed.
//! INTERFACE STUB — the policy/rewrite helper implements this.

use std::borrow::Cow;

use crate::config::PolicyConfig;
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

pub struct Rewriter {
    _cfg: PolicyConfig,
}

impl Rewriter {
    pub fn new(cfg: &PolicyConfig) -> anyhow::Result<Rewriter> {
        Ok(Rewriter { _cfg: cfg.clone() })
    }

    /// Unchanged except that any `Bcc` field is removed.
    pub fn pass_through<'a>(&self, raw: &'a [u8]) -> Result<Outgoing<'a>, RewriteError> {
        let h = crate::message::header::split(raw).map_err(|e| RewriteError::Unreadable(e.to_string()))?;
        Ok(Outgoing { header: Cow::Borrowed(&raw[..h.body_offset]), body: &raw[h.body_offset..] })
    }

    pub fn hide_recipients<'a>(&self, raw: &'a [u8], sender: &str, d: &Decision) -> Result<Outgoing<'a>, RewriteError> {
        let _ = (sender, d);
        self.pass_through(raw)
    }

    pub fn for_recipient<'a>(&self, raw: &'a [u8], rcpt: &str, d: &Decision) -> Result<Outgoing<'a>, RewriteError> {
        let _ = (rcpt, d);
        self.pass_through(raw)
    }
}
