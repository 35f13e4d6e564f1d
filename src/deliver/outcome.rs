//! The outcome step: whatever path a message took (refused here, refused upstream, delivered,
//! split), it ends here exactly once — metrics, the one summary log line a Postfix admin can
//! grep, and the audit record of what happened — so no early return can skip any of them.

use super::{audit_unavailable, Job, Stages};
use crate::audit::{header_digest, AuditEvent};
use crate::config::{Action, Mode};
use crate::message::Message;
use crate::metrics::RejectReason;
use crate::policy::{AddressSet, Decision};
use crate::reply::Reply;
use crate::rewrite::plan::{Refusal, RefusalCause};

/// What reached the upstream for one message.
#[derive(Debug)]
pub enum Sent {
    /// Refused here; the upstream never saw the content.
    Nothing,
    /// The upstream refused the content, or the transfer failed (`upstream` = None).
    Refused { upstream: Option<Reply> },
    /// Accepted: the digest of the header section as forwarded (the last copy's for a split).
    Accepted { digest: String, upstream: Reply },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copies {
    pub accepted: usize,
    pub spooled: usize,
    pub failed: usize,
}

#[derive(Debug)]
pub struct Outcome {
    /// None when the message was refused before policy could decide (unreadable header).
    pub decision: Option<Decision>,
    /// Set when the relay itself refused the message.
    pub refusal: Option<RefusalCause>,
    /// Why, when there is no decision to say it.
    pub reason: String,
    pub reply: Reply,
    pub sent: Sent,
    /// The decision record could not be made durable (the reply is 451 4.3.0).
    pub audit_failed: bool,
    /// Seq of the durable decision record written before forwarding.
    pub decision_seq: Option<u64>,
    /// Split copies: accepted now, spooled for retry (durable), failed for good.
    pub copies: Option<Copies>,
    /// Length of the decision's visible list when the list itself was moved into the decision
    /// record (the decision then holds an empty list).
    pub visible_count: Option<usize>,
}

impl Outcome {
    pub fn refused(decision: Option<Decision>, refusal: Refusal, reason: &str) -> Outcome {
        Outcome {
            decision,
            refusal: Some(refusal.cause),
            reason: reason.to_string(),
            reply: refusal.reply,
            sent: Sent::Nothing,
            audit_failed: false,
            decision_seq: None,
            copies: None,
            visible_count: None,
        }
    }

    pub fn audit_failed(decision: Decision) -> Outcome {
        Outcome {
            decision: Some(decision),
            refusal: None,
            reason: String::new(),
            reply: audit_unavailable(),
            sent: Sent::Nothing,
            audit_failed: true,
            decision_seq: None,
            copies: None,
            visible_count: None,
        }
    }

    pub fn sent(reply: Reply, sent: Sent) -> Outcome {
        Outcome {
            decision: None,
            refusal: None,
            reason: String::new(),
            reply,
            sent,
            audit_failed: false,
            decision_seq: None,
            copies: None,
            visible_count: None,
        }
    }

    pub fn with_decision(mut self, d: Decision) -> Outcome {
        self.decision = Some(d);
        self
    }

    pub fn copies(mut self, copies: Copies) -> Outcome {
        self.copies = Some(copies);
        self
    }

    fn reject_reason(&self) -> Option<RejectReason> {
        if self.reply.is_positive() {
            return None;
        }
        Some(match self.refusal {
            Some(RefusalCause::Policy) => RejectReason::Policy,
            Some(RefusalCause::Dkim) => RejectReason::Dkim,
            Some(RefusalCause::Unreadable) => RejectReason::Unreadable,
            Some(RefusalCause::Signing) => RejectReason::Internal,
            None if self.audit_failed => RejectReason::AuditUnavailable,
            None if self.reply.is_transient() => RejectReason::UpstreamTemp,
            None => RejectReason::UpstreamPerm,
        })
    }

    /// The action actually carried out (a refusal here is a reject whatever the rule said).
    fn done(&self) -> Action {
        match (&self.decision, self.refusal) {
            (_, Some(_)) => Action::Reject,
            (Some(d), None) => d.effective_action(),
            (None, None) => Action::Accept,
        }
    }
}

/// The audit event every record of this message starts from. `visible` is the decision's list,
/// moved in by the caller: a header can show millions of addresses, and a copy here would double
/// the largest structure of the message in flight (issue 11 item 4).
fn base_event(
    job: &Job<'_>,
    message_id: Option<String>,
    header: &[u8],
    d: Option<&Decision>,
    visible: AddressSet,
) -> AuditEvent {
    AuditEvent {
        session: job.client.session_id.clone(),
        client: job.client.peer.to_string(),
        auth_user: job.client.auth_user.clone(),
        sender: job.envelope.sender.clone(),
        message_id,
        // A message an exemption let through is filed under the rule that exempted it.
        rule: d.and_then(|d| d.rule.clone().or_else(|| d.exempted_by.clone())),
        action: d.map_or(Action::Reject, |d| d.action),
        mode: d.map_or(Mode::Enforce, |d| d.mode),
        reason: d.map_or_else(String::new, |d| d.reason.clone()),
        visible,
        visible_external: d.map_or(0, |d| d.visible_external),
        external_domains: d.map_or(0, |d| d.external_domains),
        envelope_recipients: job.envelope.recipients.len(),
        upstream: None,
        header_digest_original: header_digest(header),
        header_digest_forwarded: None,
    }
}

/// Whether a message with this decision gets an audit record: every intervention (and every
/// accept with `log_accepts`), and always a message an exemption let through or one that asked
/// for an override: each is someone choosing to let a recipient list be shown.
pub fn must_audit(stages: &Stages, d: &Decision) -> bool {
    stages.audit.wants(d.action, d.mode) || d.exempted_by.is_some() || d.org.override_use.is_some()
}

/// Phase one: the decision is durable before anything is handed to the upstream. Takes the
/// decision's visible list (see [`base_event`]); only its length is needed afterwards.
pub async fn record_decision(
    stages: &Stages,
    job: &Job<'_>,
    message: &Message,
    d: &Decision,
    visible: AddressSet,
) -> Result<u64, ()> {
    let event = base_event(
        job,
        message.message_id(),
        message.header_fields_bytes(),
        Some(d),
        visible,
    );
    let started = std::time::Instant::now();
    let written = stages.audit.record_decision(event).await;
    stages
        .metrics
        .audit_write(started.elapsed(), written.is_ok());
    written.map_err(|e| {
        tracing::error!("audit decision not durable, refusing the message temporarily: {e}");
        stages.metrics.rejected(RejectReason::AuditUnavailable);
    })
}

/// Ends a message whose header was split: metrics, log line, audit.
pub async fn finish(
    stages: &Stages,
    job: &Job<'_>,
    message: Option<&Message>,
    outcome: Outcome,
) -> Reply {
    let (id, header, size) = message.map_or((None, &[][..], 0), |m| {
        (m.message_id(), m.header_fields_bytes(), m.len())
    });
    conclude(stages, job, id, header, size, outcome).await
}

/// Ends a message refused before its header could be split.
pub async fn finish_unparsed(
    stages: &Stages,
    job: &Job<'_>,
    raw: &[u8],
    outcome: Outcome,
) -> Reply {
    conclude(stages, job, None, raw, raw.len(), outcome).await
}

async fn conclude(
    stages: &Stages,
    job: &Job<'_>,
    message_id: Option<String>,
    header: &[u8],
    size: usize,
    mut outcome: Outcome,
) -> Reply {
    // The one-shot record below is the list's last reader: it takes the list, the log line
    // needs only its length.
    let visible_count = outcome
        .visible_count
        .or_else(|| outcome.decision.as_ref().map(|d| d.visible.len()))
        .unwrap_or(0);
    let visible = outcome
        .decision
        .as_mut()
        .map(|d| std::mem::take(&mut d.visible))
        .unwrap_or_default();
    let d = outcome.decision.as_ref();
    let (action, rule, mode) = match d {
        Some(d) => (d.action, d.rule.as_deref(), d.mode),
        None => (Action::Reject, Some("unreadable-header"), Mode::Enforce),
    };
    stages.metrics.message(action, rule, mode);
    if let Some(reason) = outcome.reject_reason() {
        if !outcome.audit_failed {
            stages.metrics.rejected(reason);
        }
    }

    // The audit record: a refusal here is one complete record; a forwarded message its outcome.
    let audited = match d {
        Some(d) => must_audit(stages, d),
        None => true,
    };
    if let (Some(decision_seq), false) = (outcome.decision_seq, outcome.audit_failed) {
        let (upstream, header_digest_forwarded, result) = match &outcome.sent {
            Sent::Accepted { digest, .. } => (
                Some(outcome.reply.to_string()),
                Some(digest.clone()),
                // Some split copies wait in the durable spool: accepted, not yet delivered.
                if outcome.copies.is_some_and(|c| c.spooled > 0) {
                    crate::audit::OutcomeResult::Spooled
                } else {
                    crate::audit::OutcomeResult::Delivered
                },
            ),
            Sent::Refused { upstream } => (
                Some(upstream.as_ref().unwrap_or(&outcome.reply).to_string()),
                None,
                if outcome.reply.is_transient() {
                    crate::audit::OutcomeResult::Failed
                } else {
                    crate::audit::OutcomeResult::Refused
                },
            ),
            Sent::Nothing => (None, None, crate::audit::OutcomeResult::Failed),
        };
        let written = stages
            .audit
            .record_outcome(crate::audit::AuditOutcome {
                decision_seq,
                session: job.client.session_id.clone(),
                upstream,
                header_digest_forwarded,
                result,
            })
            .await;
        if let Err(e) = written {
            // The upstream has it: `audit verify` lists the decision as one without an outcome.
            tracing::error!("audit outcome not written (decision seq {decision_seq}): {e}");
        }
    } else if audited && !outcome.audit_failed {
        let mut event = base_event(job, message_id.clone(), header, d, visible);
        if d.is_none() {
            event.rule = Some("unreadable-header".to_string());
            event.reason = outcome.reason.clone();
        }
        let refused_against_rule =
            outcome.refusal.is_some() && d.is_some_and(|d| d.effective_action() != Action::Reject);
        if refused_against_rule {
            // e.g. a DKIM signature the rewrite would break: say what the client was told.
            event.reason = format!(
                "{} Not carried out; the client was told: {}",
                event.reason, outcome.reply
            );
        }
        match &outcome.sent {
            Sent::Nothing => {}
            Sent::Refused { upstream } => {
                event.upstream = Some(upstream.as_ref().unwrap_or(&outcome.reply).to_string())
            }
            Sent::Accepted { digest, .. } => {
                event.upstream = Some(outcome.reply.to_string());
                event.header_digest_forwarded = Some(digest.clone());
            }
        }
        let started = std::time::Instant::now();
        let written = stages.audit.record(event).await;
        stages
            .metrics
            .audit_write(started.elapsed(), written.is_ok());
        if let Err(e) = written {
            if outcome.reply.is_positive() {
                // Already delivered: a 4xx now would only make the client send it twice.
                tracing::error!("audit write failed after the upstream answered: {e}");
            } else {
                tracing::error!("audit write failed: {e}");
                stages.metrics.rejected(RejectReason::AuditUnavailable);
                outcome.reply = audit_unavailable();
            }
        }
    }

    let upstream = match &outcome.sent {
        Sent::Accepted { upstream, .. } => Some(upstream),
        Sent::Refused { upstream } => upstream.as_ref(),
        Sent::Nothing => None,
    };
    let copies = outcome.copies.unwrap_or_default();
    tracing::info!(
        client = %job.client.peer.ip(),
        auth_user = job.client.auth_user.as_deref().unwrap_or("-"),
        from = %job.envelope.sender,
        msgid = message_id.as_deref().unwrap_or("-"),
        action = outcome.done().as_str(),
        decided = action.as_str(),
        mode = mode.as_str(),
        rule = rule.unwrap_or("-"),
        visible = visible_count,
        visible_external = d.map_or(0, |d| d.visible_external),
        rcpts = job.envelope.recipients.len(),
        copies_ok = copies.accepted,
        copies_spooled = copies.spooled,
        copies_failed = copies.failed,
        size,
        upstream = upstream.map_or_else(|| "-".to_string(), |r| r.to_string()),
        queue_id = upstream.and_then(|r| queue_id(&r.text)).unwrap_or("-"),
        reply = %outcome.reply,
        "message done"
    );
    outcome.reply
}

/// The upstream's queue id from a reply like Postfix's `250 2.0.0 Ok: queued as 4Xyz`.
fn queue_id(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("queued as ")?;
    rest.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_id_from_common_replies() {
        assert_eq!(queue_id("2.0.0 Ok: queued as 4Xyz12"), Some("4Xyz12"));
        assert_eq!(queue_id("Ok"), None);
    }
}
