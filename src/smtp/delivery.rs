//! What happens to a complete message: policy decides, rewrite applies, the relay forwards,
//! the audit log records — in that order, and the client's reply is computed only at the end,
//! so a `250` always means the upstream accepted the message exactly as policy said.

use std::borrow::Cow;

use super::session::Session;
use crate::audit::{header_digest, AuditEvent};
use crate::config::{Action, Mode};
use crate::metrics::RejectReason;
use crate::policy::Decision;
use crate::relay::UpstreamError;
use crate::reply::Reply;
use crate::rewrite::{Outgoing, RewriteError};

/// The reply for a message whose audit record could not be made durable.
fn audit_unavailable() -> Reply {
    Reply::new(
        451,
        (4, 3, 0),
        "Message not accepted: the relay cannot write its audit log; please try again later",
    )
}

pub async fn deliver(s: &mut Session, raw: Vec<u8>) -> Reply {
    let live = s.shared.live();
    let Some(tx) = s.tx.as_ref() else {
        return Reply::new(503, (5, 5, 1), "No transaction");
    };
    let sender = tx.from.clone();
    let rcpts = tx.rcpts.clone();
    let header = crate::message::header::split(&raw).ok();
    let original_header = header.as_ref().map_or(&raw[..], |h| &raw[..h.body_offset]);
    // What every audit record of this message shares; each path fills in the outcome.
    let base_event = AuditEvent {
        session: s.id.clone(),
        client: s.peer.to_string(),
        auth_user: s.auth_user.clone(),
        sender: sender.clone(),
        message_id: header.as_ref().and_then(message_id),
        rule: None,
        action: Action::Accept,
        mode: Mode::Enforce,
        reason: String::new(),
        visible: Vec::new(),
        visible_external: 0,
        external_domains: 0,
        envelope_recipients: rcpts.len(),
        upstream: None,
        header_digest_original: header_digest(original_header),
        header_digest_forwarded: None,
    };

    let decision = match live.policy.decide(&sender, &rcpts, &raw) {
        Ok(d) => d,
        Err(unreadable) => {
            // A header we cannot read for sure could hide recipients: refuse, never guess low.
            let reply = Reply::new(550, (5, 6, 0), format!("Message refused: {unreadable}"));
            let event = AuditEvent {
                rule: Some("unreadable-header".to_string()),
                action: Action::Reject,
                reason: unreadable.to_string(),
                ..base_event
            };
            reset_upstream(s).await;
            return match record(&s.shared.clone(), event).await {
                Ok(_) => reply,
                Err(e) => {
                    tracing::error!("audit write failed: {e}");
                    audit_unavailable()
                }
            };
        }
    };

    let effective = decision.effective_action();
    let audited = s.shared.audit.wants(decision.action, decision.mode);
    if audited && !s.shared.audit.is_writable() {
        tracing::error!("audit log not writable: refusing message temporarily");
        reset_upstream(s).await;
        return audit_unavailable();
    }
    if decision.mode == Mode::Monitor && decision.action != Action::Accept {
        tracing::info!(
            rule = decision.rule.as_deref().unwrap_or("-"),
            would = decision.action.as_str(),
            visible = decision.visible.len(),
            visible_external = decision.visible_external,
            "monitor mode: delivering unchanged"
        );
    }

    // `Sent::Nothing` when the relay refused the message itself (the audit record then carries
    // no upstream reply).
    let (reply, sent) = match effective {
        Action::Reject => {
            reset_upstream(s).await;
            let text = decision
                .reject_text
                .clone()
                .unwrap_or_else(|| decision.reason.clone());
            (Reply::new(550, (5, 7, 1), text), Sent::Nothing)
        }
        Action::Accept => match live.rewriter.pass_through(&raw) {
            Ok(out) => forward(s, &out).await,
            Err(e) => (refused(s, e).await, Sent::Nothing),
        },
        Action::Rewrite => match live.rewriter.hide_recipients(&raw, &sender, &decision) {
            Ok(out) => forward(s, &out).await,
            Err(e) => (refused(s, e).await, Sent::Nothing),
        },
        Action::Split => split(s, &raw, &sender, &rcpts, &decision).await,
    };
    let refused_here = matches!(sent, Sent::Nothing) && effective != Action::Reject;
    let (upstream_reply, forwarded_digest) = match sent {
        Sent::Nothing => (None, None),
        Sent::Refused => (Some(reply.to_string()), None),
        Sent::Accepted(digest) => (Some(reply.to_string()), Some(digest)),
    };

    if d_notify(&decision, effective) && reply.is_positive() {
        notify_intervention(s, &sender, &raw, &decision).await;
    }
    s.shared
        .metrics
        .message(decision.action, decision.rule.as_deref(), decision.mode);
    if !reply.is_positive() {
        s.shared.metrics.rejected(match effective {
            Action::Reject => RejectReason::Policy,
            _ if reply.is_transient() => RejectReason::UpstreamTemp,
            _ => RejectReason::UpstreamPerm,
        });
    }
    tracing::info!(
        action = effective.as_str(),
        rule = decision.rule.as_deref().unwrap_or("-"),
        visible = decision.visible.len(),
        visible_external = decision.visible_external,
        rcpts = rcpts.len(),
        size = raw.len(),
        reply = %reply,
        "message done"
    );

    if !audited {
        return reply;
    }
    let event = AuditEvent {
        rule: decision.rule.clone(),
        action: decision.action,
        mode: decision.mode,
        reason: if refused_here {
            // e.g. a DKIM signature the rewrite would break: say what the client was told.
            format!(
                "{} Not carried out; the client was told: {reply}",
                decision.reason
            )
        } else {
            decision.reason.clone()
        },
        visible: decision.visible.clone(),
        visible_external: decision.visible_external,
        external_domains: decision.external_domains,
        upstream: upstream_reply,
        header_digest_forwarded: forwarded_digest,
        ..base_event
    };
    match record(&s.shared.clone(), event).await {
        Ok(_) => reply,
        Err(e) => {
            tracing::error!("audit write failed after the upstream answered: {e}");
            if reply.is_positive() {
                // Already delivered: a 4xx now would only make the client send it twice.
                reply
            } else {
                audit_unavailable()
            }
        }
    }
}

/// What reached the upstream for one message.
enum Sent {
    /// Refused here; the upstream never saw the content.
    Nothing,
    /// The upstream answered the content with a refusal (or the transfer failed).
    Refused,
    /// Accepted; the digest of the header section as forwarded.
    Accepted(String),
}

async fn refused(s: &mut Session, e: RewriteError) -> Reply {
    reset_upstream(s).await;
    match e {
        RewriteError::DkimRefused(text) => Reply::new(550, (5, 7, 1), text),
        other => Reply::new(550, (5, 6, 0), format!("Message refused: {other}")),
    }
}

/// Cancels the upstream's half of the transaction after a local refusal.
async fn reset_upstream(s: &mut Session) {
    if let Some(up) = s.upstream.as_mut() {
        match up.rset().await {
            Ok(r) if r.is_positive() => {}
            _ => s.upstream = None,
        }
    }
}

/// RFC 5321 4.4 trace field for this hop. No `for` clause: it would name a recipient.
fn received_header(s: &Session) -> String {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    format!(
        "Received: from {} ([{}])\r\n\tby {} (bccguard) with {} id {}.{};\r\n\t{}\r\n",
        sanitize(s.helo.as_deref().unwrap_or("unknown")),
        s.peer.ip(),
        s.shared.cfg.server.hostname,
        s.protocol_name(),
        s.id,
        s.messages,
        date
    )
}

fn sanitize(helo: &str) -> Cow<'_, str> {
    if helo.bytes().all(|b| b.is_ascii_graphic()) {
        Cow::Borrowed(helo)
    } else {
        Cow::Owned(helo.chars().filter(|c| c.is_ascii_graphic()).collect())
    }
}

/// Sends one prepared message on the open upstream transaction.
async fn forward(s: &mut Session, out: &Outgoing<'_>) -> (Reply, Sent) {
    let received = received_header(s);
    let digest = header_digest(&out.header);
    let Some(up) = s.upstream.as_mut() else {
        return (
            Reply::new(451, (4, 4, 1), "Upstream unavailable"),
            Sent::Nothing,
        );
    };
    match up.data(&[received.as_bytes(), &out.header, out.body]).await {
        Ok(r) => {
            let accepted = r.is_positive();
            let reply = if accepted {
                Reply::new(
                    250,
                    (2, 0, 0),
                    format!(
                        "Message accepted by upstream: {}",
                        r.text.replace('\n', " ")
                    ),
                )
            } else {
                r
            };
            (
                reply,
                if accepted {
                    Sent::Accepted(digest)
                } else {
                    Sent::Refused
                },
            )
        }
        Err(e) => {
            tracing::warn!("{e}");
            s.upstream = None;
            (e.reply(), Sent::Refused)
        }
    }
}

/// One copy per envelope recipient, each a transaction of its own with `To:` that recipient.
async fn split(
    s: &mut Session,
    raw: &[u8],
    sender: &str,
    rcpts: &[String],
    d: &Decision,
) -> (Reply, Sent) {
    let live = s.shared.live();
    // Prepare every copy's header first: a DKIM refusal must stop the message before any copy leaves.
    let mut copies = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        match live.rewriter.for_recipient(raw, rcpt, d) {
            Ok(out) => copies.push((rcpt.clone(), out)),
            Err(e) => return (refused(s, e).await, Sent::Nothing),
        }
    }
    reset_upstream(s).await;
    let params =
        s.tx.as_ref()
            .map(|t| t.upstream_params.clone())
            .unwrap_or_default();
    let received = received_header(s);
    let mut accepted = 0usize;
    let mut failures: Vec<(String, Reply)> = Vec::new();
    let mut last_digest = None;
    for (rcpt, out) in &copies {
        match send_single(
            s,
            sender,
            &params,
            rcpt,
            &[received.as_bytes(), &out.header, out.body],
        )
        .await
        {
            Ok(r) if r.is_positive() => {
                accepted += 1;
                last_digest = Some(header_digest(&out.header));
            }
            Ok(r) => failures.push((rcpt.clone(), r)),
            Err(e) => {
                tracing::warn!("{e}");
                s.upstream = None;
                failures.push((rcpt.clone(), e.reply()));
            }
        }
    }
    let total = copies.len();
    if accepted == 0 {
        // Nothing left: the client still holds the message. Retry makes sense unless all were permanent.
        let reply = failures
            .iter()
            .find(|(_, r)| r.is_transient())
            .or_else(|| failures.first())
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Reply::new(451, (4, 4, 0), "No copy could be delivered"));
        return (reply, Sent::Refused);
    }
    if !failures.is_empty() {
        // Some copies are out and cannot be recalled: accept, and tell the sender which failed.
        notify_failures(s, sender, raw, &failures).await;
    }
    let text = if failures.is_empty() {
        format!("Message split into {total} copies, one per recipient; all accepted by upstream")
    } else {
        format!(
            "Message split into {total} copies; {accepted} accepted, {} failed (a delivery report goes to the sender)",
            failures.len()
        )
    };
    let sent = last_digest.map_or(Sent::Refused, Sent::Accepted);
    (Reply::new(250, (2, 0, 0), text), sent)
}

/// One complete single-recipient transaction on the upstream (reconnecting if the session is
/// gone): split copies and the relay's own reports both go this way.
async fn send_single(
    s: &mut Session,
    sender: &str,
    params: &str,
    rcpt: &str,
    parts: &[&[u8]],
) -> Result<Reply, UpstreamError> {
    if s.upstream.as_ref().is_none_or(|u| !u.usable()) {
        // Fresh, not pooled: a stale pooled session would fail a copy that could have gone out.
        s.upstream = Some(s.shared.upstream.connect().await?);
    }
    let Some(up) = s.upstream.as_mut() else {
        return Err(UpstreamError::Transport {
            addr: s.shared.upstream.address(),
            why: "no session".into(),
        });
    };
    let r = up.mail_from(sender, params).await?;
    if !r.is_positive() {
        return Ok(r);
    }
    let r = up.rcpt_to(rcpt).await?;
    if !r.is_positive() {
        let _ = up.rset().await?;
        return Ok(r);
    }
    up.data(parts).await
}

/// Sends a delivery status notification for failed split copies to the envelope sender.
async fn notify_failures(s: &mut Session, sender: &str, raw: &[u8], failures: &[(String, Reply)]) {
    let header = original_header(raw);
    let details: Vec<(String, String)> = failures
        .iter()
        .map(|(r, reply)| (r.clone(), reply.to_string()))
        .collect();
    let report =
        crate::relay::dsn::failure_report(&s.shared.cfg.server.hostname, sender, header, &details);
    send_generated(
        s,
        sender,
        &report,
        "delivery report for failed split copies",
    )
    .await;
}

/// Tells the sender that their message went out altered, and why (per-rule `notify_sender`).
async fn notify_intervention(s: &mut Session, sender: &str, raw: &[u8], d: &Decision) {
    let notice = s.shared.live().rewriter.sender_notice(
        &s.shared.cfg.server.hostname,
        sender,
        d,
        original_header(raw),
    );
    send_generated(s, sender, &notice, "notice to the sender").await;
}

fn original_header(raw: &[u8]) -> &[u8] {
    crate::message::header::split(raw)
        .map(|h| &raw[..h.header_end])
        .unwrap_or(&raw[..0])
}

/// Sends a message the relay wrote itself, from the null sender so it can never bounce back.
/// Best effort: the client's message is already delivered, so a failure is only logged.
async fn send_generated(s: &mut Session, to: &str, message: &[u8], what: &str) {
    if to.is_empty() {
        return; // Never answer a bounce with a bounce.
    }
    let result = send_single(s, "", "", to, &[message]).await;
    match result {
        Ok(r) if r.is_positive() => tracing::info!("{what} sent"),
        Ok(r) => tracing::error!(reply = %r, "{what} refused by upstream"),
        Err(e) => {
            s.upstream = None;
            tracing::error!("{what} not sent: {e}");
        }
    }
}

/// The Message-ID field's value, for the audit record.
fn message_id(header: &crate::message::header::HeaderSection<'_>) -> Option<String> {
    let field = header.fields.iter().find(|f| f.name_is("Message-ID"))?;
    let text = String::from_utf8_lossy(field.value);
    let id: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!id.is_empty()).then_some(id)
}

fn d_notify(d: &Decision, effective: Action) -> bool {
    d.notify_sender && matches!(effective, Action::Rewrite | Action::Split)
}

/// Writes one audit record, timing the durable write for the metrics.
async fn record(
    s: &super::server::Shared,
    event: AuditEvent,
) -> Result<u64, crate::audit::AuditError> {
    let started = std::time::Instant::now();
    let result = s.audit.record(event).await;
    s.metrics.audit_write(started.elapsed(), result.is_ok());
    if result.is_err() {
        s.metrics.rejected(RejectReason::AuditUnavailable);
    }
    result
}
