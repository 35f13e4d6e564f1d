//! Delivery: one complete message through the stages, in order — policy decides, the plan says
//! what leaves, the audit log records the decision, the relay hands it on — then one outcome
//! step ([`outcome`]) records metrics, the summary log line and the audit outcome whatever path
//! the message took. The client's reply is computed only at the end, so a `250` always means
//! the upstream accepted the message exactly as policy said.

pub mod outcome;

use crate::audit::{header_digest, AuditLog};
use crate::config::{Action, Mode};
use crate::generated;
use crate::message::{Client, Envelope, Message, Refused};
use crate::metrics::Observe;
use crate::policy::Policy;
use crate::relay::{Upstream, UpstreamSession};
use crate::reply::Reply;
use crate::rewrite::plan::{plan, Plan, Refusal, Route, Send};
use crate::rewrite::Rewriter;
use outcome::{Copies, Outcome, Sent};

/// Attempts per split copy within the session before it counts as failed: a copy whose
/// transaction broke is usually fine on a fresh connection a moment later.
const COPY_ATTEMPTS: u32 = 3;
const COPY_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// Messages up to this size are judged inline on the session's task.
const JUDGED_INLINE_UP_TO: usize = 256 * 1024;

/// Runs the policy and rewrite work for one message. Their cost is linear in the message (a
/// 25 MB header of two million addresses takes seconds), and a runtime worker busy that long
/// stalls every session it serves: with as many such messages as cores, nobody else got an
/// answer for seconds (bench `hugeheader`, NOOP probe). So a large message's worker hands its
/// other tasks to a fresh thread first (`block_in_place`); small ones run inline.
fn cpu_heavy<T>(message_len: usize, work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if message_len > JUDGED_INLINE_UP_TO && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// What every message's delivery uses and no session owns.
pub struct Stages {
    pub upstream: Upstream,
    pub audit: std::sync::Arc<AuditLog>,
    pub metrics: Observe,
    pub hostname: String,
    /// Durable spool for copies still failing temporarily after the in-session attempts.
    pub spool: Option<std::sync::Arc<crate::spool::Spool>>,
}

/// The policy and rewriter of one configuration snapshot (one per message, so a reload in the
/// middle cannot give a split's copies other settings than the decision's).
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub policy: &'a Policy,
    pub rewriter: &'a Rewriter,
}

/// One message of one transaction: who sent it, its envelope, and the MAIL parameters the
/// upstream transaction was opened with (reused by split copies).
pub struct Job<'a> {
    pub client: &'a Client,
    pub envelope: &'a Envelope,
    pub upstream_params: &'a str,
}

/// The reply for a message whose audit record could not be made durable.
pub fn audit_unavailable() -> Reply {
    Reply::new(
        451,
        (4, 3, 0),
        "Message not accepted: the relay cannot write its audit log; please try again later",
    )
}

/// Runs the message through the stages on the transaction open in `held` and returns the reply
/// for the client. Whatever happens, the outcome step runs exactly once.
pub async fn deliver(
    stages: &Stages,
    rules: Rules<'_>,
    job: Job<'_>,
    received: Result<Message, Box<Refused>>,
    held: &mut Option<UpstreamSession>,
) -> Reply {
    match received {
        Ok(message) => {
            let outcome = run(stages, rules, &job, &message, held).await;
            outcome::finish(stages, &job, Some(&message), outcome).await
        }
        Err(refused) => {
            reset_upstream(held).await;
            let outcome =
                Outcome::refused(None, Refusal::unreadable(&refused.why), &refused.why.reason);
            outcome::finish_unparsed(stages, &job, &refused.raw, outcome).await
        }
    }
}

async fn run(
    stages: &Stages,
    rules: Rules<'_>,
    job: &Job<'_>,
    message: &Message,
    held: &mut Option<UpstreamSession>,
) -> Outcome {
    // Rules may name the AUTH user and groups (issue 15).
    let auth_user = job.client.auth_user.as_deref();
    let size = message.raw().len();
    let decided = cpu_heavy(size, || {
        rules.policy.decide_as(message, job.envelope, auth_user)
    });
    let mut decision = match decided {
        Ok(d) => d,
        Err(unreadable) => {
            reset_upstream(held).await;
            return Outcome::refused(None, Refusal::unreadable(&unreadable), &unreadable.reason);
        }
    };
    if decision.mode == Mode::Monitor && decision.action != Action::Accept {
        tracing::info!(
            rule = decision.rule.as_deref().unwrap_or("-"),
            would = decision.action.as_str(),
            visible = decision.visible.len(),
            visible_external = decision.visible_external,
            "monitor mode: delivering unchanged"
        );
    }
    let sends = match cpu_heavy(size, || {
        plan(rules.rewriter, &decision, message, job.envelope)
    }) {
        Plan::Refuse(refusal) => {
            reset_upstream(held).await;
            let reason = decision.reason.clone();
            return Outcome::refused(Some(decision), refusal, &reason);
        }
        Plan::Send(sends) => sends,
    };

    // Phase one of the audit: nothing is handed on unless the decision is on disk.
    let audited = outcome::must_audit(stages, &decision);
    let visible_count = decision.visible.len();
    let decision_seq = if audited {
        // The list moves into the record (no copy); nothing after this reads more than its length.
        let visible = std::mem::take(&mut decision.visible);
        match outcome::record_decision(stages, job, message, &decision, visible).await {
            Ok(seq) => Some(seq),
            Err(()) => {
                reset_upstream(held).await;
                let mut failed = Outcome::audit_failed(decision);
                failed.visible_count = Some(visible_count);
                return failed;
            }
        }
    } else {
        None
    };

    let received_field = generated::received_field(job.client, &stages.hostname);
    let mut outcome = match sends.first().map(|s| &s.route) {
        Some(Route::Transaction) => forward(held, &received_field, &sends[0])
            .await
            .with_decision(decision),
        _ => split(
            stages,
            job,
            message,
            held,
            &received_field,
            &sends,
            decision_seq,
        )
        .await
        .with_decision(decision),
    };
    outcome.decision_seq = decision_seq;
    outcome.visible_count = Some(visible_count);
    if outcome.reply.is_positive() && notice_wanted(&outcome) {
        if let Some(d) = &outcome.decision {
            let notice = generated::notice::sender_notice(
                &stages.hostname,
                &job.envelope.sender,
                d,
                message.header_fields_bytes(),
            );
            send_generated(
                stages,
                held,
                &job.envelope.sender,
                &notice,
                "notice to the sender",
            )
            .await;
        }
    }
    outcome
}

/// A notice goes to the sender only after a rewrite or split that was carried out.
fn notice_wanted(o: &Outcome) -> bool {
    o.decision.as_ref().is_some_and(|d| {
        d.notify_sender && matches!(d.effective_action(), Action::Rewrite | Action::Split)
    })
}

/// Sends the one prepared message on the open upstream transaction.
async fn forward(held: &mut Option<UpstreamSession>, received: &str, send: &Send<'_>) -> Outcome {
    let digest = header_digest(&send.message.header);
    let Some(up) = held.as_mut() else {
        return Outcome::sent(
            Reply::new(451, (4, 4, 1), "Upstream unavailable"),
            Sent::Nothing,
        );
    };
    let parts = [
        received.as_bytes(),
        &send.message.header,
        &send.message.body,
    ];
    match up.data(&parts).await {
        Ok(r) if r.is_positive() => {
            let reply = Reply::new(
                250,
                (2, 0, 0),
                format!(
                    "Message accepted by upstream: {}",
                    r.text.replace('\n', " ")
                ),
            );
            Outcome::sent(
                reply,
                Sent::Accepted {
                    digest,
                    upstream: r,
                },
            )
        }
        Ok(r) => Outcome::sent(r.clone(), Sent::Refused { upstream: Some(r) }),
        Err(e) => {
            tracing::warn!("{e}");
            *held = None;
            Outcome::sent(e.reply(), Sent::Refused { upstream: None })
        }
    }
}

/// One single-recipient transaction per copy. A copy that fails with a temporary error is
/// retried on a fresh connection; once any copy is out, a copy still failing temporarily goes
/// to the durable spool (on disk before the client's 250), and only permanent failures (or a
/// full spool) are reported to the sender. With no copy out, the client keeps the message (4xx).
async fn split(
    stages: &Stages,
    job: &Job<'_>,
    message: &Message,
    held: &mut Option<UpstreamSession>,
    received: &str,
    copies: &[Send<'_>],
    decision_seq: Option<u64>,
) -> Outcome {
    reset_upstream(held).await;
    // A copy spooled now is settled later: its delivery or bounce becomes an outcome of this
    // message's decision.
    let audit_link = decision_seq.map(|decision_seq| crate::spool::AuditLink {
        decision_seq,
        session: job.client.session_id.clone(),
    });
    let mut accepted = 0usize;
    let mut failures: Vec<(String, Reply)> = Vec::new();
    let mut pending = Vec::new();
    let mut attempts_per_copy = COPY_ATTEMPTS;
    let mut last = None;
    for copy in copies {
        let Route::Single(rcpt) = &copy.route else {
            continue;
        };
        let parts = [
            received.as_bytes(),
            &copy.message.header,
            &copy.message.body,
        ];
        let mut attempt = 0;
        let reply = loop {
            attempt += 1;
            let reply = match stages
                .upstream
                .send_single(
                    held,
                    &job.envelope.sender,
                    job.upstream_params,
                    rcpt,
                    &parts,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(attempt, "split copy: {e}");
                    e.reply()
                }
            };
            if !reply.is_transient() || attempt >= attempts_per_copy {
                break reply;
            }
            tokio::time::sleep(COPY_RETRY_DELAY * attempt).await;
        };
        if reply.is_positive() {
            accepted += 1;
            last = Some((header_digest(&copy.message.header), reply));
        } else if reply.is_transient() {
            // The upstream is failing right now: later copies get one try each before the
            // spool, so a long split does not keep the client waiting for every retry.
            attempts_per_copy = 1;
            pending.push((rcpt.clone(), parts, reply, attempt));
        } else {
            failures.push((rcpt.clone(), reply));
        }
    }
    // Once a copy is out the message cannot be refused any more: a copy still failing
    // temporarily goes to the durable spool (fsynced before the 250); only what cannot be
    // spooled is reported to the sender. With no copy out, the client keeps the message (4xx).
    let mut spooled = 0usize;
    for (rcpt, parts, reply, attempts) in pending {
        if let (true, Some(spool)) = (last.is_some(), stages.spool.as_ref()) {
            let mut job = crate::spool::SpoolJob::from_parts(
                &job.envelope.sender,
                job.upstream_params,
                &rcpt,
                &parts,
            );
            job.attempts = attempts;
            job.last_error = Some(reply.to_string());
            job.audit = audit_link.clone();
            match spool.enqueue(job).await {
                Ok(id) => {
                    tracing::info!(%id, "split copy spooled for retry");
                    spooled += 1;
                    continue;
                }
                Err(e) => tracing::error!("split copy not spooled: {e}"),
            }
        }
        failures.push((rcpt, reply));
    }
    let total = copies.len();
    let Some((digest, upstream)) = last else {
        // Nothing left: the client still holds the message. Retry makes sense unless all were permanent.
        let reply = failures
            .iter()
            .find(|(_, r)| r.is_transient())
            .or_else(|| failures.first())
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Reply::new(451, (4, 4, 0), "No copy could be delivered"));
        return Outcome::sent(
            reply.clone(),
            Sent::Refused {
                upstream: Some(reply),
            },
        )
        .copies(Copies {
            failed: failures.len(),
            ..Copies::default()
        });
    };
    if !failures.is_empty() {
        // Some copies are out and cannot be recalled: accept, and tell the sender which failed.
        let details: Vec<(String, String)> = failures
            .iter()
            .map(|(r, reply)| (r.clone(), reply.to_string()))
            .collect();
        let report = generated::dsn::failure_report(
            &stages.hostname,
            &job.envelope.sender,
            message.header_fields_bytes(),
            &details,
        );
        send_generated(
            stages,
            held,
            &job.envelope.sender,
            &report,
            "delivery report for failed split copies",
        )
        .await;
    }
    let text = if failures.is_empty() && spooled > 0 {
        format!(
            "Message split into {total} copies; {accepted} accepted, {spooled} queued for retry"
        )
    } else if failures.is_empty() {
        format!("Message split into {total} copies, one per recipient; all accepted by upstream")
    } else {
        format!(
            "Message split into {total} copies; {accepted} accepted, {} failed (a delivery report goes to the sender)",
            failures.len()
        )
    };
    Outcome::sent(
        Reply::new(250, (2, 0, 0), text),
        Sent::Accepted { digest, upstream },
    )
    .copies(Copies {
        accepted,
        spooled,
        failed: failures.len(),
    })
}

/// Sends a message the relay wrote itself, from the null sender so it can never bounce back.
/// The client's message is already delivered, so this never changes its reply; a report the
/// upstream does not take now goes to the spool rather than being lost.
async fn send_generated(
    stages: &Stages,
    held: &mut Option<UpstreamSession>,
    to: &str,
    message: &[u8],
    what: &str,
) {
    if to.is_empty() {
        return; // Never answer a bounce with a bounce.
    }
    let why = match stages
        .upstream
        .send_single(held, "", "", to, &[message])
        .await
    {
        Ok(r) if r.is_positive() => {
            tracing::info!("{what} sent");
            return;
        }
        Ok(r) if r.is_permanent() => {
            tracing::error!(reply = %r, "{what} refused by upstream");
            return;
        }
        Ok(r) => r.to_string(),
        Err(e) => e.to_string(),
    };
    let Some(spool) = stages.spool.as_ref() else {
        tracing::error!("{what} not sent: {why}");
        return;
    };
    let mut job = crate::spool::SpoolJob::from_parts("", "", to, &[message]);
    job.last_error = Some(why.clone());
    match spool.enqueue(job).await {
        Ok(id) => tracing::info!(%id, "{what} spooled for retry ({why})"),
        Err(e) => tracing::error!("{what} not sent ({why}) and not spooled: {e}"),
    }
}

/// Cancels the upstream's half of the transaction after a local refusal.
async fn reset_upstream(held: &mut Option<UpstreamSession>) {
    if let Some(up) = held.as_mut() {
        match up.rset().await {
            Ok(r) if r.is_positive() => {}
            _ => *held = None,
        }
    }
}
